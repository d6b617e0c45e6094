//! The agent's layers, enforced: every `crate::…` path in agent/src points to the same or a lower
//! layer (support < bundle < node < transport < cli), and the module graph has no cycle at all.
//! Also: the builder uses only the agent's `bundle` and `support` layers, and no agent source
//! file grows past what one can read in a sitting.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const LAYERS: [&str; 5] = ["support", "bundle", "node", "transport", "cli"];
/// Roughly one sitting; unit-test files are exempt.
const MAX_LINES: usize = 650;

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// Module path of a source file: agent/src/node/pkg/mod.rs -> "node::pkg".
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    match parts.as_slice() {
        [one] if one == "lib" || one == "main" => None,
        _ => Some(parts.join("::")),
    }
}

/// Every `crate::a::b…` path in `text`, including the names inside `crate::a::{b, c::d}`.
fn crate_paths(text: &str, root: &str) -> Vec<String> {
    let mut out = Vec::new();
    let pat = format!("{root}::");
    let mut rest = text;
    while let Some(at) = rest.find(&pat) {
        let before = rest[..at].chars().last();
        rest = &rest[at + pat.len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        let end = rest
            .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
            .unwrap_or(rest.len());
        let path = rest[..end].trim_end_matches(':').to_string();
        if rest[end..].starts_with('{') && rest[..end].ends_with("::") {
            let close = rest[end..].find('}').map_or(rest.len(), |i| end + i);
            for item in rest[end + 1..close].split(',') {
                let item = item.split_whitespace().next().unwrap_or("");
                if !item.is_empty() && item != "self" {
                    out.push(format!("{path}::{item}"));
                }
            }
        }
        out.push(path);
    }
    out
}

/// The longest known module that `path` starts with.
fn resolve(path: &str, modules: &BTreeSet<String>) -> Option<String> {
    let segs: Vec<&str> = path.split("::").collect();
    (1..=segs.len())
        .rev()
        .map(|k| segs[..k].join("::"))
        .find(|m| modules.contains(m))
}

fn layer(module: &str) -> usize {
    let top = module.split("::").next().unwrap();
    LAYERS
        .iter()
        .position(|l| *l == top)
        .unwrap_or_else(|| panic!("module {module} is in no layer; put it in one of {LAYERS:?}"))
}

struct Graph {
    edges: BTreeMap<String, BTreeSet<String>>,
}

fn agent_graph() -> Graph {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("agent/src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let named: Vec<(String, PathBuf)> = files
        .iter()
        .filter_map(|f| module_of(&src, f).map(|m| (m, f.clone())))
        .collect();
    let modules: BTreeSet<String> = named.iter().map(|(m, _)| m.clone()).collect();
    let mut edges = BTreeMap::new();
    for (m, f) in &named {
        let text = std::fs::read_to_string(f).unwrap();
        let deps: BTreeSet<String> = crate_paths(&text, "crate")
            .iter()
            .filter_map(|p| resolve(p, &modules))
            // A module may name itself or its own parents' items (`super`-like paths).
            .filter(|d| d != m && !m.starts_with(&format!("{d}::")))
            .collect();
        edges.insert(m.clone(), deps);
    }
    Graph { edges }
}

#[test]
fn agent_imports_point_only_downwards() {
    let g = agent_graph();
    let mut upward = Vec::new();
    for (m, deps) in &g.edges {
        for d in deps {
            if layer(d) > layer(m) {
                upward.push(format!("{m} -> {d}"));
            }
        }
    }
    assert!(
        upward.is_empty(),
        "imports that point up a layer ({}): {upward:#?}",
        LAYERS.join(" < ")
    );
}

#[test]
fn agent_module_graph_has_no_cycle() {
    let g = agent_graph();
    // Depth-first search with colours; report the first cycle found as a path.
    fn visit(
        m: &str,
        g: &Graph,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(m.to_string(), 1);
        stack.push(m.to_string());
        for d in g.edges.get(m).into_iter().flatten() {
            match state.get(d.as_str()).copied().unwrap_or(0) {
                1 => {
                    let from = stack.iter().position(|s| s == d).unwrap();
                    let mut cycle = stack[from..].to_vec();
                    cycle.push(d.clone());
                    return Some(cycle);
                }
                0 => {
                    if let Some(c) = visit(d, g, state, stack) {
                        return Some(c);
                    }
                }
                _ => {}
            }
        }
        stack.pop();
        state.insert(m.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for m in g.edges.keys() {
        if state.get(m.as_str()).copied().unwrap_or(0) == 0 {
            if let Some(c) = visit(m, &g, &mut state, &mut Vec::new()) {
                panic!("import cycle: {}", c.join(" -> "));
            }
        }
    }
}

#[test]
fn cli_is_imported_by_nothing_below_it() {
    let g = agent_graph();
    for (m, deps) in &g.edges {
        if !m.starts_with("cli") {
            assert!(
                !deps.iter().any(|d| d.starts_with("cli")),
                "{m} imports the command line"
            );
        }
    }
}

#[test]
fn builder_uses_only_bundle_and_support() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("builder/src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut wrong = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        for p in crate_paths(&text, "edgepatch") {
            let top = p.split("::").next().unwrap_or("");
            // The center reads node reports, whose document lives with the transport for now.
            let allowed = ["bundle", "support", "VERSION", "transport::report"];
            if !allowed
                .iter()
                .any(|a| p == *a || p.starts_with(&format!("{a}::")) || top == *a)
            {
                wrong.push(format!("{}: edgepatch::{p}", f.display()));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "builder reaches into the agent: {wrong:#?}"
    );
}

#[test]
fn agent_files_fit_in_one_sitting() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("agent/src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut long = Vec::new();
    for f in files {
        if f.file_name().is_some_and(|n| n == "tests.rs") {
            continue;
        }
        let text = std::fs::read_to_string(&f).unwrap();
        // Unit tests at the end of a file do not count.
        let code = text.split("\n#[cfg(test)]\nmod tests").next().unwrap_or("");
        let n = code.lines().count();
        let first = text.lines().next().unwrap_or("");
        assert!(
            first.starts_with("//!"),
            "{} must start with a //! line saying what it is for",
            f.display()
        );
        if n > MAX_LINES {
            long.push(format!("{}: {n} lines", f.display()));
        }
    }
    assert!(
        long.is_empty(),
        "files to split along their seams: {long:#?}"
    );
}
