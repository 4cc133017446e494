//! The direction of dependencies inside `src/` (ARCHITECTURE.md "Layers"), checked on the source text.
//!
//! - Every top-level module belongs to a layer; it may use modules of its own layer or below, never above
//!   (nothing below `config` reaches `config`, `control` or `runtime`).
//! - The graph of top-level modules has no cycle, and neither has the graph of files (a parent module's
//!   declarations and re-exports of its own children are structure, not dependencies, and are not counted).
//!
//! Paths are read from `use` items and from inline `crate::…` / `super::…` paths outside comments and string
//! literals.

#![allow(clippy::unwrap_used)] // test code

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Layers from the bottom; a module may use modules of its own layer and the layers before it.
const LAYERS: &[&[&str]] = &[
    &["modality", "tensor", "clock", "npy", "util", "issues", "telemetry"],
    &["preprocess", "encode"],
    &["ring", "sources", "window", "events", "labels", "evidence"],
    &["publish"],
    &["control"],
    &["config"],
    &["runtime", "bench", "devices", "zeroshot"],
    &["cli", "demo"],
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&module))
}

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every `.rs` file under `src/`, as its module path (`["encode", "engine"]`; `mod.rs` is its folder's module).
fn modules() -> BTreeMap<Vec<String>, PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    let mut files = Vec::new();
    walk(&src_dir(), &mut files);
    files
        .into_iter()
        .filter_map(|f| {
            let rel = f.strip_prefix(src_dir()).unwrap().with_extension("");
            let mut parts: Vec<String> = rel.iter().map(|p| p.to_string_lossy().into_owned()).collect();
            match parts.last().map(String::as_str) {
                Some("mod") => {
                    parts.pop();
                }
                Some("lib" | "main") if parts.len() == 1 => return None,
                _ => {}
            }
            Some((parts, f))
        })
        .collect()
}

/// The text with comments, string and char literals blanked out.
fn code_only(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < b.len() {
        if b[i..].starts_with(b"//") {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i..].starts_with(b"/*") {
            let mut depth = 0;
            while i < b.len() {
                if b[i..].starts_with(b"/*") {
                    depth += 1;
                    i += 2;
                } else if b[i..].starts_with(b"*/") {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
        } else if b[i] == b'r' && (b[i + 1..].starts_with(b"\"") || b[i + 1..].starts_with(b"#")) {
            // Raw string: r"…", r#"…"#.
            let hashes = b[i + 1..].iter().take_while(|&&c| c == b'#').count();
            let open = i + 1 + hashes;
            if b.get(open) != Some(&b'"') {
                out.push('r');
                i += 1;
                continue;
            }
            let close: Vec<u8> = std::iter::once(b'"').chain(std::iter::repeat_n(b'#', hashes)).collect();
            i = open + 1;
            while i < b.len() && !b[i..].starts_with(&close) {
                i += 1;
            }
            i += close.len();
            out.push_str("\"\"");
        } else if b[i] == b'"' {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
            i += 1;
            out.push_str("\"\"");
        } else if b[i] == b'\'' && i + 2 < b.len() && (b[i + 2] == b'\'' || b[i + 1] == b'\\') {
            // A char literal ('a', '\n', '\''); lifetimes ('a) are left alone.
            i += if b[i + 1] == b'\\' { 3 } else { 2 };
            while i < b.len() && b[i] != b'\'' {
                i += 1;
            }
            i += 1;
            out.push_str("' '");
        } else {
            let len = text[i..].chars().next().map_or(1, char::len_utf8);
            out.push_str(&text[i..i + len]);
            i += len;
        }
    }
    out
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Paths in `code` that start with `root::` (`crate` or `super`), each as its segments after the root;
/// `root::{a::b, c}` gives `a::b` and `c`.
fn paths_from(code: &str, root: &str) -> Vec<Vec<String>> {
    fn group(s: &str, prefix: &[String], out: &mut Vec<Vec<String>>) {
        // `s` is the inside of `{…}`: comma-separated trees at depth 0.
        let mut depth = 0;
        let mut start = 0;
        let mut parts = Vec::new();
        for (i, c) in s.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    parts.push(&s[start..i]);
                    start = i + 1;
                }
                _ => {}
            }
        }
        parts.push(&s[start..]);
        for p in parts {
            tree(p.trim(), prefix, out);
        }
    }
    fn tree(s: &str, prefix: &[String], out: &mut Vec<Vec<String>>) {
        if s.is_empty() {
            return;
        }
        let mut segs: Vec<String> = prefix.to_vec();
        let mut rest = s;
        loop {
            if let Some(inner) = rest.strip_prefix('{') {
                let end = inner.rfind('}').unwrap_or(inner.len());
                group(&inner[..end], &segs, out);
                return;
            }
            let ident: String = rest.chars().take_while(|&c| is_ident(c)).collect();
            if ident.is_empty() {
                break;
            }
            if ident != "self" {
                segs.push(ident.clone());
            }
            rest = rest[ident.len()..].trim_start();
            match rest.strip_prefix("::") {
                Some(r) => rest = r.trim_start(),
                None => break,
            }
        }
        out.push(segs);
    }
    let mut out = Vec::new();
    let pat = format!("{root}::");
    let mut from = 0;
    while let Some(at) = code[from..].find(&pat) {
        let start = from + at;
        from = start + pat.len();
        if code[..start].chars().next_back().is_some_and(is_ident) {
            continue;
        }
        let rest = &code[from..];
        let end = if rest.starts_with('{') {
            let mut depth = 0;
            rest.char_indices()
                .find(|&(_, c)| {
                    match c {
                        '{' => depth += 1,
                        '}' => depth -= 1,
                        _ => {}
                    }
                    depth == 0
                })
                .map_or(rest.len(), |(i, _)| i + 1)
        } else {
            rest.find(|c: char| !(is_ident(c) || c == ':')).unwrap_or(rest.len())
        };
        tree(&rest[..end], &[], &mut out);
    }
    out
}

/// The module file a path lands in: the longest prefix of `path` that is a module.
fn resolve(path: &[String], modules: &BTreeMap<Vec<String>, PathBuf>) -> Option<Vec<String>> {
    (1..=path.len())
        .rev()
        .map(|n| path[..n].to_vec())
        .find(|p| modules.contains_key(p))
}

/// Edges between module files: `(from, to)`, parent-to-own-child edges left out.
fn file_edges() -> BTreeSet<(Vec<String>, Vec<String>)> {
    let modules = modules();
    let mut edges = BTreeSet::new();
    for (module, file) in &modules {
        let code = code_only(&std::fs::read_to_string(file).unwrap());
        let mut targets: Vec<Vec<String>> = paths_from(&code, "crate");
        // `super::x` from `a::b` (file a/b.rs) is `a::x`; from a/mod.rs it would be the crate root (unused).
        let parent: Vec<String> = module[..module.len() - 1].to_vec();
        for p in paths_from(&code, "super") {
            targets.push(parent.iter().cloned().chain(p).collect());
        }
        for t in targets {
            let Some(to) = resolve(&t, &modules).or_else(|| (!parent.is_empty()).then(|| parent.clone())) else {
                continue;
            };
            let own_child = to.len() > module.len() && to.starts_with(module);
            if to != *module && !own_child {
                edges.insert((module.clone(), to));
            }
        }
    }
    edges
}

fn find_cycle<N: Ord + Clone>(edges: &BTreeSet<(N, N)>) -> Option<Vec<N>> {
    let mut next: BTreeMap<&N, Vec<&N>> = BTreeMap::new();
    for (a, b) in edges {
        next.entry(a).or_default().push(b);
    }
    // 0 = unvisited, 1 = on the stack, 2 = done.
    fn visit<'a, N: Ord + Clone>(
        n: &'a N,
        next: &BTreeMap<&'a N, Vec<&'a N>>,
        state: &mut BTreeMap<&'a N, u8>,
        stack: &mut Vec<&'a N>,
    ) -> Option<Vec<N>> {
        state.insert(n, 1);
        stack.push(n);
        for &m in next.get(n).map(Vec::as_slice).unwrap_or_default() {
            match state.get(m).copied().unwrap_or(0) {
                1 => {
                    let at = stack.iter().position(|x| *x == m).unwrap_or(0);
                    let mut cycle: Vec<N> = stack[at..].iter().map(|x| (*x).clone()).collect();
                    cycle.push(m.clone());
                    return Some(cycle);
                }
                0 => {
                    if let Some(c) = visit(m, next, state, stack) {
                        return Some(c);
                    }
                }
                _ => {}
            }
        }
        stack.pop();
        state.insert(n, 2);
        None
    }
    let mut state = BTreeMap::new();
    let nodes: Vec<&N> = next.keys().copied().collect();
    for n in nodes {
        if state.get(n).copied().unwrap_or(0) == 0 {
            let mut stack = Vec::new();
            if let Some(c) = visit(n, &next, &mut state, &mut stack) {
                return Some(c);
            }
        }
    }
    None
}

fn top_level_edges() -> BTreeSet<(String, String)> {
    file_edges()
        .into_iter()
        .map(|(a, b)| (a[0].clone(), b[0].clone()))
        .filter(|(a, b)| a != b)
        .collect()
}

#[test]
fn every_top_level_module_has_a_layer() {
    let tops: BTreeSet<String> = modules().keys().map(|m| m[0].clone()).collect();
    let missing: Vec<&String> = tops.iter().filter(|m| layer_of(m).is_none()).collect();
    assert!(
        missing.is_empty(),
        "add these modules to LAYERS (and ARCHITECTURE.md): {missing:?}"
    );
}

#[test]
fn no_module_uses_a_layer_above_its_own() {
    let wrong: Vec<String> = file_edges()
        .into_iter()
        .filter(|(a, b)| matches!((layer_of(&a[0]), layer_of(&b[0])), (Some(la), Some(lb)) if lb > la))
        .map(|(a, b)| format!("{} uses {}", a.join("::"), b.join("::")))
        .collect();
    assert!(
        wrong.is_empty(),
        "dependencies pointing up a layer:\n  {}",
        wrong.join("\n  ")
    );
}

#[test]
fn top_level_modules_have_no_import_cycle() {
    let edges = top_level_edges();
    assert!(find_cycle(&edges).is_none(), "cycle: {:?}", find_cycle(&edges));
}

#[test]
fn module_files_have_no_import_cycle() {
    let edges = file_edges();
    let cycle = find_cycle(&edges).map(|c| c.iter().map(|m| m.join("::")).collect::<Vec<_>>());
    assert!(cycle.is_none(), "cycle: {cycle:?}");
}

#[test]
fn the_checker_sees_grouped_nested_and_inline_paths() {
    let code = code_only(
        "use crate::{a::b, c::{d, e::F}};\n// crate::commented\nlet s = \"crate::quoted\";\nx = crate::g::h(1);\nuse super::i;",
    );
    let crate_paths = paths_from(&code, "crate");
    let firsts: Vec<&str> = crate_paths.iter().map(|p| p[0].as_str()).collect();
    assert_eq!(firsts, ["a", "c", "c", "g"]);
    assert_eq!(crate_paths[2], ["c", "e", "F"]);
    assert_eq!(paths_from(&code, "super"), [["i"]]);
    let edges: BTreeSet<(u8, u8)> = [(1, 2), (2, 3), (3, 1)].into_iter().collect();
    assert!(find_cycle(&edges).is_some());
    let acyclic: BTreeSet<(u8, u8)> = [(1, 2), (2, 3), (1, 3)].into_iter().collect();
    assert!(find_cycle(&acyclic).is_none());
}
