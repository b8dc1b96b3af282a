//! The module layout (design.md §2): no import circles between the top-level modules of
//! the library, and `core` a leaf. Reads `src/**/*.rs`, takes every `crate::<module>`
//! reference outside doc comments, comments and `#[cfg(test)]` modules (and `tests.rs`
//! files), and checks the graph of top-level modules.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

type Graph = BTreeMap<String, BTreeSet<String>>;

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The top-level module a file under `src/` belongs to; `None` for the crate roots and
/// the binaries (they are not modules of the library).
fn top_module(rel: &Path) -> Option<String> {
    let mut parts = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned());
    let first = parts.next()?;
    if first == "bin" || first == "lib.rs" || first == "main.rs" {
        return None;
    }
    Some(first.trim_end_matches(".rs").to_string())
}

/// The lines of `src` outside `#[cfg(test)]` modules, with comments cut off.
fn code_lines(src: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut skip_until: Option<String> = None;
    let mut cfg_test = false;
    for line in src.lines() {
        if let Some(end) = &skip_until {
            if line.trim_end() == end {
                skip_until = None;
            }
            continue;
        }
        let t = line.trim_start();
        if t.starts_with("#[cfg(test)]") {
            cfg_test = true;
            continue;
        }
        if cfg_test {
            cfg_test = false;
            let head = t
                .trim_start_matches("pub(crate) ")
                .trim_start_matches("pub ");
            if head.starts_with("mod ") {
                if head.trim_end().ends_with('{') {
                    let indent = &line[..line.len() - t.len()];
                    skip_until = Some(format!("{indent}}}"));
                }
                continue;
            }
        }
        let code = match line.find("//") {
            Some(i) => &line[..i],
            None => line,
        };
        out.push(code.to_string());
    }
    out
}

fn ident_at(s: &str) -> &str {
    let end = s
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    &s[..end]
}

/// The top-level modules `code` names as `crate::<module>` (or inside `crate::{…}`).
fn references(code: &str, out: &mut BTreeSet<String>) {
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        let before = rest[..i].chars().next_back();
        rest = &rest[i + "crate::".len()..];
        if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            continue; // e.g. `k2proxy_crate::` or `$crate::`-like names
        }
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for item in group[..end].split(',') {
                let id = ident_at(item.trim());
                if !id.is_empty() && id != "self" {
                    out.insert(id.to_string());
                }
            }
        } else {
            let id = ident_at(rest);
            if !id.is_empty() {
                out.insert(id.to_string());
            }
        }
    }
}

fn graph() -> Graph {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut g = Graph::new();
    for f in files {
        let rel = f.strip_prefix(&src).expect("under src");
        let Some(me) = top_module(rel) else { continue };
        g.entry(me.clone()).or_default();
        if f.file_name().is_some_and(|n| n == "tests.rs") {
            continue;
        }
        let text = fs::read_to_string(&f).unwrap_or_else(|e| panic!("read {}: {e}", f.display()));
        let mut refs = BTreeSet::new();
        references(&code_lines(&text).join("\n"), &mut refs);
        refs.remove(&me);
        g.entry(me).or_default().extend(refs);
    }
    g
}

/// One cycle of `g`, as a path that starts and ends at the same module.
fn find_cycle(g: &Graph) -> Option<Vec<String>> {
    fn visit(
        g: &Graph,
        n: &str,
        state: &mut BTreeMap<String, u8>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(n.to_string(), 1);
        path.push(n.to_string());
        for m in g.get(n).into_iter().flatten() {
            match state.get(m.as_str()).copied().unwrap_or(0) {
                1 => {
                    let from = path.iter().position(|p| p == m).expect("on the path");
                    let mut cycle = path[from..].to_vec();
                    cycle.push(m.clone());
                    return Some(cycle);
                }
                0 => {
                    if let Some(c) = visit(g, m, state, path) {
                        return Some(c);
                    }
                }
                _ => {}
            }
        }
        path.pop();
        state.insert(n.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for n in g.keys() {
        if state.get(n.as_str()).copied().unwrap_or(0) == 0 {
            if let Some(c) = visit(g, n, &mut state, &mut Vec::new()) {
                return Some(c);
            }
        }
    }
    None
}

fn render(g: &Graph) -> String {
    g.iter()
        .map(|(k, v)| {
            format!(
                "  {k} -> {}",
                v.iter().cloned().collect::<Vec<_>>().join(", ")
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn no_import_cycle_between_top_level_modules() {
    let g = graph();
    for m in ["core", "surface", "pipeline", "provider", "proxy"] {
        assert!(g.contains_key(m), "module `{m}` not found in src/");
    }
    if let Some(cycle) = find_cycle(&g) {
        panic!(
            "import cycle between top-level modules: {}\nthe graph:\n{}",
            cycle.join(" -> "),
            render(&g)
        );
    }
}

#[test]
fn core_imports_nothing_from_the_crate() {
    let g = graph();
    let deps = g.get("core").expect("src/core");
    assert!(
        deps.is_empty(),
        "core must be a leaf, but imports: {}",
        deps.iter().cloned().collect::<Vec<_>>().join(", ")
    );
}

#[test]
fn the_scanner_sees_references_and_skips_tests_and_comments() {
    let src = "//! see crate::proxy\nuse crate::{core, sse::SseDecoder};\nfn f() { crate::pool::x(); } // crate::mock\n#[cfg(test)]\nmod tests {\n    use crate::mock::Thing;\n}\nfn g() {}\n";
    let mut refs = BTreeSet::new();
    references(&code_lines(src).join("\n"), &mut refs);
    let want: BTreeSet<String> = ["core", "pool", "sse"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(refs, want);
    let mut g = Graph::new();
    g.entry("a".into()).or_default().insert("b".into());
    g.entry("b".into()).or_default().insert("a".into());
    assert_eq!(
        find_cycle(&g),
        Some(vec!["a".to_string(), "b".to_string(), "a".to_string()])
    );
}

#[test]
fn providers_see_neither_the_proxy_nor_the_config_and_only_the_proxy_sees_pingora() {
    let g = graph();
    let deps = g.get("provider").expect("src/provider");
    for banned in ["proxy", "config", "mock"] {
        assert!(
            !deps.contains(banned),
            "provider must not import `{banned}` (its settings are its own, its I/O goes through SideCalls); it imports: {}",
            deps.iter().cloned().collect::<Vec<_>>().join(", ")
        );
    }
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let outside: Vec<String> = files
        .iter()
        .filter(|f| {
            let rel = f.strip_prefix(&src).expect("under src");
            !(rel.starts_with("proxy") || rel.starts_with("bin") || rel == Path::new("main.rs"))
        })
        .filter(|f| {
            let text = fs::read_to_string(f).expect("read");
            code_lines(&text).iter().any(|l| l.contains("pingora::"))
        })
        .map(|f| f.display().to_string())
        .collect();
    assert!(outside.is_empty(), "Pingora outside src/proxy: {outside:?}");
}
