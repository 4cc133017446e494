#!/usr/bin/env bash
# CPU and memory cost of event evidence (docs/BENCHMARKS.md "Event evidence"): the demo's configuration (every
# modality replayed at its recording's rate, the bundled tiny models) run against a local mosquitto for SECS
# seconds, without and with [evidence], ROUNDS times alternately. Prints user+sys CPU seconds, the share of one
# core, peak RSS, and from the last stats/1 message the events, evidence bytes written and each history ring's
# bytes per second.
# With BUSY=1 both runs also get a prompt that is always over its threshold and 3 s events, so every sensor has an
# event every ~3 s: the cost of writing evidence continuously rather than of the demo's few events.
# Usage: [BUSY=1] tools/bench_evidence.sh [SECS] [ROUNDS]   (needs a release build and mosquitto, mosquitto_sub)
set -euo pipefail
secs=${1:-60}
rounds=${2:-2}
root=$(cd "$(dirname "$0")/.." && pwd)
bin=${SENSEBIND_BIN:-${CARGO_TARGET_DIR:-$root/target}/release/sensebind}
tmp=$(mktemp -d)
port=$((20000 + RANDOM % 20000))
printf 'listener %s 127.0.0.1\nallow_anonymous true\n' "$port" >"$tmp/mosquitto.conf"
mosquitto -c "$tmp/mosquitto.conf" >/dev/null 2>&1 &
broker=$!
trap 'kill $broker 2>/dev/null; rm -rf "$tmp"' EXIT
sleep 0.5
sed -e "s|\.\./|$root/|g" -e "s|mqtt://127.0.0.1:1883|mqtt://127.0.0.1:$port|" "$root/configs/demo.toml" >"$tmp/off.toml"
printf '\n[runtime]\nstate_dir = "%s/state-off"\n' "$tmp" >>"$tmp/off.toml"
if [[ ${BUSY:-0} == 1 ]]; then
  printf '\n[events]\nmax_event_secs = 3.0\n\n[[prompts]]\nid = "always"\ntext = "anything"\nthreshold = 0.0\n' >>"$tmp/off.toml"
fi
sed -e "s|state-off|state-on|" "$tmp/off.toml" >"$tmp/on.toml"
printf '\n[evidence]\nenabled = true\npublish_snapshots = ["vision", "depth", "thermal"]\n' >>"$tmp/on.toml"
# demo.toml has a [runtime] table already: merge the appended one into it.
for f in "$tmp/off.toml" "$tmp/on.toml"; do
  python3 - "$f" <<'PY'
import sys, re
p = sys.argv[1]; s = open(p).read()
extra = re.search(r'\n\[runtime\]\nstate_dir = "[^"]*"\n', s[s.index('[runtime]') + 1:])
line = extra.group(0).split('\n')[2]
s = s[:s.index('[runtime]') + 1] + s[s.index('[runtime]') + 1:].replace(extra.group(0), '\n')
s = s.replace('[runtime]\n', '[runtime]\n' + line + '\n', 1)
open(p, 'w').write(s)
PY
done
for r in $(seq "$rounds"); do
  for mode in off on; do
    mosquitto_sub -p "$port" -t 'sensebind/demo/stats' >"$tmp/stats-$mode" &
    sub=$!
    /usr/bin/time -f '%U %S %M' -o "$tmp/time" "$bin" run --config "$tmp/$mode.toml" --duration "$secs" 2>"$tmp/log-$mode"
    sleep 0.5
    kill $sub 2>/dev/null || true
    read -r user sys rss <"$tmp/time"
    python3 - "$mode" "$user" "$sys" "$rss" "$secs" "$tmp/stats-$mode" <<'PY'
import json, sys
mode, user, sys_, rss, secs, path = sys.argv[1:]
cpu = float(user) + float(sys_)
last = json.loads(open(path).read().strip().splitlines()[-1])
up = last["uptime_s"]
ev = last.get("evidence")
line = f"{mode:3} cpu {cpu:6.2f} s = {100 * cpu / float(secs):5.1f} % of one core, peak RSS {int(rss) / 1024:6.1f} MiB, events {last['events']['started_total']}"
if ev:
    rates = ", ".join(f"{k} {v['bytes_total'] / up / 1e6:.2f} MB/s" for k, v in sorted(ev["history"].items()))
    held = sum(v["bytes"] for v in ev["history"].values()) / 2**20
    line += f", evidence {ev['bytes_written_total'] / 1e6:.1f} MB in {ev['files_total']} files, write {ev['write_ms_total']} ms, skipped {ev['skipped_total']}, errors {ev['errors_total']}, history held {held:.0f} MiB ({rates})"
print(line)
PY
  done
done
