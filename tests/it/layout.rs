//! The layout's one rule, checked from the source: imports point one way, the way a message
//! travels. Every file's `crate::`, `super::` and child-module paths are read (comments, strings
//! and `#[cfg(test)]` modules left out), each resolved to the file of the module it names.
//! No two files may import each other through any chain, and a top-level module may import only
//! modules of a lower layer than its own.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// The top-level modules of `src/`, lowest first. A module may import only from the layers
/// below its own; a new module must be placed here.
const LAYERS: &[&[&str]] = &[
    // The vocabulary every stage speaks.
    &["types"],
    // Leaves: settings, COPY encoding, systemd's socket.
    &["config", "pgcopy", "chain", "systemd"],
    // Telemetry, the partition state shared by the poll thread and the writers, and the schema
    // registry's client.
    &["events", "tracker", "registry"],
    // What committed rows say about the audited data: suspicious changes, which the sink counts.
    &["suspicious"],
    // The stages, downstream first: the source hands on to the transform, which hands on to the
    // sink; the source reads stored positions through the sink.
    &["transform"],
    &["sink"],
    &["source"],
    // Wiring only.
    &["pipeline"],
    // What reads the trail, and what serves it and watches the service.
    &["migrate", "rejections", "query"],
    // The trail's integrity: verify, digests, erasure (which finds a record as `query` does).
    &["integrity"],
    &["http", "api"],
    &["service"],
    &["logging", "demo"],
    &["main"],
];

/// Source files by module path (`sink::fence`), with their code.
type Tree = BTreeMap<String, String>;

fn read_tree(dir: &Path) -> Tree {
    let mut tree = Tree::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).expect("src/ is readable") {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let relative = path.strip_prefix(dir).expect("under src/");
                let mut parts: Vec<String> = relative
                    .with_extension("")
                    .iter()
                    .map(|p| p.to_string_lossy().into_owned())
                    .collect();
                if parts.last().is_some_and(|p| p == "mod") {
                    parts.pop();
                }
                let module = parts.join("::");
                if module == "lib" {
                    continue; // declares the modules, imports none
                }
                let text = std::fs::read_to_string(&path).expect("a source file");
                tree.insert(module, text);
            }
        }
    }
    tree
}

/// The code of a file without comments, string and char literals, and its test module.
fn code_only(text: &str) -> String {
    let text = text.split("#[cfg(test)]").next().unwrap_or("");
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            i += 2;
            while i + 1 < chars.len() && !(chars[i] == '*' && chars[i + 1] == '/') {
                i += 1;
            }
            i += 2;
        } else if c == 'r' && matches!(next, Some('"') | Some('#')) && !ident_before(&chars, i) {
            // A raw string: r"..." or r#"..."#.
            let mut j = i + 1;
            let mut hashes = 0;
            while chars.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            if chars.get(j) != Some(&'"') {
                out.push(c);
                i += 1;
                continue;
            }
            j += 1;
            let close: Vec<char> = std::iter::once('"')
                .chain(std::iter::repeat_n('#', hashes))
                .collect();
            while j < chars.len() && !chars[j..].starts_with(&close) {
                j += 1;
            }
            i = j + close.len();
            out.push_str("\"\"");
        } else if c == '"' {
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                i += if chars[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
            out.push_str("\"\"");
        } else if c == '\'' && (next == Some('\\') || chars.get(i + 2) == Some(&'\'')) {
            // A char literal ('x', '\n'); a lifetime ('a) has no closing quote.
            i += 1;
            while i < chars.len() && chars[i] != '\'' {
                i += if chars[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

fn ident_before(chars: &[char], i: usize) -> bool {
    i > 0 && (chars[i - 1].is_alphanumeric() || chars[i - 1] == '_')
}

/// Every path that starts at `at` in `code` (`a::b::c`, or `a::{b, c::d}` expanded), as segments.
fn paths_at(code: &[char], at: usize) -> Vec<Vec<String>> {
    fn ident(code: &[char], i: &mut usize) -> Option<String> {
        let start = *i;
        while *i < code.len() && (code[*i].is_alphanumeric() || code[*i] == '_') {
            *i += 1;
        }
        (*i > start).then(|| code[start..*i].iter().collect())
    }
    fn skip_ws(code: &[char], i: &mut usize) {
        while *i < code.len() && code[*i].is_whitespace() {
            *i += 1;
        }
    }
    fn path(code: &[char], i: &mut usize) -> Vec<Vec<String>> {
        let mut segments = Vec::new();
        loop {
            skip_ws(code, i);
            if code.get(*i) == Some(&'{') {
                *i += 1;
                let mut all = Vec::new();
                loop {
                    skip_ws(code, i);
                    match code.get(*i) {
                        Some('}') | None => {
                            *i += 1;
                            break;
                        }
                        Some(',') => *i += 1,
                        _ => {
                            let before = *i;
                            for tail in path(code, i) {
                                all.push([segments.clone(), tail].concat());
                            }
                            if *i == before {
                                *i += 1; // `*`, `as x` and the like
                            }
                        }
                    }
                }
                return all;
            }
            match ident(code, i) {
                Some(segment) => segments.push(segment),
                None => return vec![segments],
            }
            if code.get(*i) == Some(&':') && code.get(*i + 1) == Some(&':') {
                *i += 2;
            } else {
                return vec![segments];
            }
        }
    }
    let mut i = at;
    path(code, &mut i)
}

/// The modules each file imports: `module -> imported modules`, both as module paths.
fn imports(tree: &Tree) -> BTreeMap<String, BTreeSet<String>> {
    let known: BTreeSet<&str> = tree.keys().map(String::as_str).collect();
    // The longest known module that a path from the crate root names.
    let resolve = |segments: &[String]| -> Option<String> {
        (1..=segments.len())
            .rev()
            .map(|n| segments[..n].join("::"))
            .find(|m| known.contains(m.as_str()))
    };
    let mut graph = BTreeMap::new();
    for (module, text) in tree {
        let code: Vec<char> = code_only(text).chars().collect();
        let parts: Vec<String> = module.split("::").map(String::from).collect();
        let mut edges = BTreeSet::new();
        let mut i = 0;
        while i < code.len() {
            if !ident_before(&code, i) && (i < 2 || code[i - 2..i] != [':', ':']) {
                let rest: String = code[i..code.len().min(i + 12)].iter().collect();
                let (skip, base): (usize, Option<Vec<String>>) = if rest.starts_with("crate::") {
                    (7, Some(Vec::new()))
                } else if rest.starts_with("cdc_audit::") {
                    (11, Some(Vec::new()))
                } else if rest.starts_with("super::") {
                    // The parent of `a::b` (a/b.rs) is `a`; of `a` (a/mod.rs), the root.
                    (7, Some(parts[..parts.len() - 1].to_vec()))
                } else {
                    (0, None)
                };
                let found = match base {
                    Some(base) => paths_at(&code, i + skip)
                        .into_iter()
                        .map(|p| [base.clone(), p].concat())
                        .collect(),
                    // A child module named by its bare name (`decode::x` in transform/mod.rs).
                    None if code[i].is_alphabetic() => paths_at(&code, i)
                        .into_iter()
                        .filter(|p| p.len() > 1)
                        .map(|p| [parts.clone(), p].concat())
                        .filter(|p| known.contains(p[..parts.len() + 1].join("::").as_str()))
                        .collect(),
                    None => Vec::new(),
                };
                for p in found {
                    if let Some(target) = resolve(&p) {
                        if &target != module {
                            edges.insert(target);
                        }
                    }
                }
            }
            i += 1;
        }
        graph.insert(module.clone(), edges);
    }
    graph
}

/// A chain of imports that comes back to where it started, if there is one.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|n| n == node) {
            let mut cycle = path[at..].to_vec();
            cycle.push(node.to_string());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|node| visit(node, graph, &mut Vec::new(), &mut done))
}

fn layer_of(module: &str) -> Option<usize> {
    let top = module.split("::").next().unwrap_or(module);
    LAYERS.iter().position(|layer| layer.contains(&top))
}

/// Imports that go sideways or up the layers, as `from -> to` lines.
fn against_the_flow(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<String> {
    let mut wrong = Vec::new();
    for (from, targets) in graph {
        let top = |m: &str| m.split("::").next().unwrap_or(m).to_string();
        for to in targets.iter().filter(|to| top(to) != top(from)) {
            match (layer_of(from), layer_of(to)) {
                (Some(a), Some(b)) if b < a => {}
                _ => wrong.push(format!("{from} -> {to}")),
            }
        }
    }
    wrong
}

#[test]
fn imports_point_one_way_and_never_in_a_circle() {
    let tree = read_tree(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
    let unplaced: Vec<&String> = tree.keys().filter(|m| layer_of(m).is_none()).collect();
    assert!(
        unplaced.is_empty(),
        "modules without a layer in tests/it/layout.rs: {unplaced:?}"
    );
    let graph = imports(&tree);
    assert!(
        graph["pipeline"].contains("source") && graph["sink::writer"].contains("sink::fence"),
        "the reader finds the imports it checks: {graph:#?}"
    );
    assert!(
        graph["types"].is_empty(),
        "the shared vocabulary imports no module of the crate: {:?}",
        graph["types"]
    );
    if let Some(cycle) = find_cycle(&graph) {
        panic!("an import circle: {}", cycle.join(" -> "));
    }
    let wrong = against_the_flow(&graph);
    assert!(
        wrong.is_empty(),
        "imports against the layers of tests/it/layout.rs:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn the_checker_sees_circles_and_imports_against_the_flow() {
    let tree: Tree = [
        ("types", "use std::fmt;"),
        (
            "sink",
            "mod fence;\nmod writer;\npub use writer::Writer; // crate::source::x",
        ),
        (
            "sink::fence",
            "use crate::types::Batch;\nlet s = \"crate::pipeline\";",
        ),
        ("sink::error", ""),
        ("sink::writer", "use super::{fence::write, error};"),
        ("source", "use crate::{sink::Pool, types::{Tp, Batch}};"),
        (
            "transform",
            "pub fn f() { crate::source::g() }\n#[cfg(test)]\nuse crate::sink;",
        ),
    ]
    .into_iter()
    .map(|(m, code)| (m.to_string(), code.to_string()))
    .collect();
    let graph = imports(&tree);
    let set = |items: &[&str]| items.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
    assert_eq!(
        graph["sink"],
        set(&["sink::writer"]),
        "comments are not imports"
    );
    assert_eq!(
        graph["sink::fence"],
        set(&["types"]),
        "strings are not imports"
    );
    assert_eq!(graph["sink::writer"], set(&["sink::error", "sink::fence"]));
    assert_eq!(graph["source"], set(&["sink", "types"]));
    assert_eq!(
        graph["transform"],
        set(&["source"]),
        "tests are not imports"
    );
    assert_eq!(find_cycle(&graph), None);
    assert_eq!(against_the_flow(&graph), vec!["transform -> source"]);

    let mut circular = graph.clone();
    circular.insert("sink::fence".into(), set(&["sink::writer"]));
    let cycle = find_cycle(&circular).expect("fence -> writer -> fence is a circle");
    assert_eq!(cycle.first(), cycle.last());
    assert!(cycle.contains(&"sink::fence".to_string()) && cycle.len() == 3);
}
