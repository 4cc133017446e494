#!/usr/bin/env bash
# Runs `sensebind demo` for DURATION seconds and samples its resident memory every INTERVAL seconds.
# Prints "seconds rss_kib" lines, then the demo's last line. For docs/BENCHMARKS.md ("RSS over a demo run").
#   tools/rss_watch.sh 600 10 > scratch/rss.txt
# SENSEBIND_DEMO_ARGS adds demo flags (e.g. "--mqtt mqtt://127.0.0.1:1883" to leave out the embedded broker).
# OUT names the demo log (default /tmp/sensebind-demo-rss.out).
set -euo pipefail
cd "$(dirname "$0")/.."
duration=${1:-600}
interval=${2:-10}
bin=${SENSEBIND:-target/release/sensebind}
"$bin" demo --duration "$duration" ${SENSEBIND_DEMO_ARGS:-} > "${OUT:-/tmp/sensebind-demo-rss.out}" 2>&1 &
pid=$!
start=$(date +%s)
while kill -0 "$pid" 2>/dev/null; do
  rss=$(awk '/^VmRSS/ {print $2}' "/proc/$pid/status" 2>/dev/null || true)
  [[ -n "$rss" ]] && echo "$(( $(date +%s) - start )) $rss"
  sleep "$interval"
done
wait "$pid"
tail -1 "${OUT:-/tmp/sensebind-demo-rss.out}"
