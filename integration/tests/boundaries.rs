//! Architecture rules that the build itself can check.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet, HashMap};

use musicfs_integration::workspace_root;

/// Package name -> names of its dependencies, from Cargo.lock.
fn lock_graph() -> HashMap<String, Vec<String>> {
    let text = std::fs::read_to_string(workspace_root().join("Cargo.lock")).unwrap();
    let lock: toml::Value = toml::from_str(&text).unwrap();
    let mut graph = HashMap::new();
    for p in lock["package"].as_array().unwrap() {
        let name = p["name"].as_str().unwrap().to_string();
        let deps = p
            .get("dependencies")
            .and_then(|d| d.as_array())
            .map(|d| {
                d.iter()
                    .map(|s| s.as_str().unwrap().split(' ').next().unwrap().to_string())
                    .collect()
            })
            .unwrap_or_default();
        graph
            .entry(name)
            .or_insert_with(Vec::new)
            .extend::<Vec<String>>(deps);
    }
    graph
}

fn closure(graph: &HashMap<String, Vec<String>>, root: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut stack = vec![root.to_string()];
    while let Some(p) = stack.pop() {
        if seen.insert(p.clone()) {
            stack.extend(graph.get(&p).cloned().unwrap_or_default());
        }
    }
    seen
}

/// The shim stays minimal: no catalog, search, tag reading or remote origins.
#[test]
fn shim_depends_on_none_of_the_engine_crates() {
    let graph = lock_graph();
    let deps = closure(&graph, "musicfs-shim");
    assert!(deps.contains("fuser") && deps.contains("capnp"), "{deps:?}");
    for banned in [
        "redb",
        "tantivy",
        "lofty",
        "opendal",
        "russh",
        "russh-sftp",
        "musicfs-engine",
        "figment",
        "tokio",
    ] {
        assert!(!deps.contains(banned), "musicfs-shim depends on {banned}");
    }
}

/// The shim never asks fuser for AutoUnmount (it would unmount on the shim's death
/// even while another process holds the FUSE fd).
#[test]
fn shim_never_uses_auto_unmount() {
    for entry in walkdir::WalkDir::new(workspace_root().join("shim/src")) {
        let entry = entry.unwrap();
        if entry.path().extension().is_some_and(|e| e == "rs") {
            let text = std::fs::read_to_string(entry.path()).unwrap();
            assert!(
                !text.contains("MountOption::AutoUnmount"),
                "{} uses MountOption::AutoUnmount",
                entry.path().display()
            );
        }
    }
}

// ------------------------------------------------------------------ layout

/// The engine's rooms with their rank: a room may use (`crate::room`) only
/// rooms of a lower rank, so rooms of one rank never use each other and no
/// circle can form. ARCHITECTURE.md draws the same map.
const ENGINE_ROOMS: &[(&str, u32)] = &[
    ("cli", 7),
    ("supervisor", 6),
    ("runtime", 6),
    ("control", 5),
    ("serve", 5),
    ("sync", 5),
    ("scan", 4),
    ("content", 4),
    ("notify", 4),
    ("views", 4),
    ("origins", 3),
    ("catalog", 2),
    ("config", 1),
    ("tasks", 1),
    ("model", 0),
    ("events", 0),
    ("logging", 0),
    ("metrics", 0),
    ("sys", 0),
];

/// Source lines that are code: comment lines dropped.
fn code_lines(text: &str) -> impl Iterator<Item = &str> {
    text.lines().filter(|l| {
        let t = l.trim_start();
        !t.starts_with("//") && !t.starts_with("/*") && !t.starts_with('*')
    })
}

/// The first path segments after `prefix` (e.g. `crate::`) in `text`,
/// including those inside `use crate::{a::x, b}` groups.
fn first_segments(text: &str, prefix: &str) -> BTreeSet<String> {
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    let mut out = BTreeSet::new();
    for line in code_lines(text) {
        let mut rest = line;
        while let Some(at) = rest.find(prefix) {
            // Not the tail of a longer path (`musicfs_crate::`).
            let before = rest[..at].chars().last();
            rest = &rest[at + prefix.len()..];
            if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
                continue;
            }
            if let Some(group) = rest.strip_prefix('{') {
                // `crate::{a, b::{c, d}, e}`: the top-level items.
                let mut depth = 0;
                let mut item_start = true;
                for (i, c) in group.char_indices() {
                    match c {
                        '{' => depth += 1,
                        '}' if depth == 0 => break,
                        '}' => depth -= 1,
                        ',' if depth == 0 => item_start = true,
                        c if item_start && !c.is_whitespace() => {
                            item_start = false;
                            let name = ident(&group[i..]);
                            if !name.is_empty() {
                                out.insert(name);
                            }
                        }
                        _ => {}
                    }
                }
            } else {
                let name = ident(rest);
                if !name.is_empty() {
                    out.insert(name);
                }
            }
        }
    }
    out
}

/// Every `.rs` file under `dir`.
fn rust_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = walkdir::WalkDir::new(dir)
        .into_iter()
        .map(|e| e.unwrap().into_path())
        .filter(|p| p.extension().is_some_and(|e| e == "rs"))
        .collect();
    files.sort();
    files
}

/// The top-level module a file of `src` belongs to (`sync/delta.rs` ->
/// `sync`; `lib.rs`, `main.rs` -> None).
fn module_of(src: &std::path::Path, file: &std::path::Path) -> Option<String> {
    let rel = file.strip_prefix(src).unwrap();
    let first = rel.components().next()?.as_os_str().to_string_lossy();
    let name = first.trim_end_matches(".rs").to_string();
    (!["lib", "main"].contains(&name.as_str())).then_some(name)
}

/// Module -> modules it uses, for the crate whose sources are in `src`.
fn module_graph(src: &std::path::Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in rust_files(src) {
        let Some(module) = module_of(src, &file) else {
            continue;
        };
        let text = std::fs::read_to_string(&file).unwrap();
        let uses = graph.entry(module.clone()).or_default();
        for used in first_segments(&text, "crate::") {
            if used != module {
                uses.insert(used);
            }
        }
    }
    graph
}

/// A circle in `graph`, if there is one (as the path that closes it).
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|p| p == node) {
            let mut cycle = path[at..].to_vec();
            cycle.push(node.to_string());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(c) = visit(next, graph, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|n| visit(n, graph, &mut Vec::new(), &mut done))
}

fn print_graph(name: &str, graph: &BTreeMap<String, BTreeSet<String>>) {
    println!("{name}:");
    for (m, uses) in graph {
        let uses: Vec<&str> = uses.iter().map(String::as_str).collect();
        println!("  {m:<11} -> {}", uses.join(", "));
    }
}

/// Every engine import runs downwards (see `ENGINE_ROOMS`); every source
/// file belongs to a known room; rooms are left only through `crate::`.
#[test]
fn engine_rooms_import_only_downwards() {
    let src = workspace_root().join("engine/src");
    let rank: BTreeMap<&str, u32> = ENGINE_ROOMS.iter().copied().collect();
    let graph = module_graph(&src);
    print_graph("engine rooms (room -> rooms it uses)", &graph);
    let mut wrong = Vec::new();
    for (room, uses) in &graph {
        let Some(mine) = rank.get(room.as_str()) else {
            wrong.push(format!(
                "{room} is not a known room: add it to ENGINE_ROOMS and ARCHITECTURE.md"
            ));
            continue;
        };
        for used in uses {
            match rank.get(used.as_str()) {
                Some(theirs) if theirs < mine => {}
                Some(theirs) => wrong.push(format!(
                    "{room} (rank {mine}) uses {used} (rank {theirs}): imports must run downwards"
                )),
                None => wrong.push(format!("{room} uses crate::{used}, which is not a room")),
            }
        }
    }
    for file in rust_files(&src) {
        let text = std::fs::read_to_string(&file).unwrap();
        if code_lines(&text).any(|l| l.contains("super::super::")) {
            wrong.push(format!(
                "{} leaves its room through super::super (use crate::ROOM)",
                file.display()
            ));
        }
    }
    // The binary is only the command line's front door.
    let main = std::fs::read_to_string(src.join("main.rs")).unwrap();
    let used: Vec<String> = first_segments(&main, "musicfs_engine::")
        .into_iter()
        .filter(|m| m != "cli")
        .collect();
    if !used.is_empty() {
        wrong.push(format!(
            "main.rs uses {used:?}; it may use only musicfs_engine::cli"
        ));
    }
    assert!(
        wrong.is_empty(),
        "layout rules broken:\n{}",
        wrong.join("\n")
    );
    assert_eq!(find_cycle(&graph), None);
}

/// No import circle between the modules of the shim, xtask, the schema
/// or the integration harness either.
#[test]
fn no_import_circles_in_other_crates() {
    for krate in ["shim/src", "xtask/src", "schema/src", "integration/src"] {
        let graph = module_graph(&workspace_root().join(krate));
        print_graph(krate, &graph);
        if let Some(cycle) = find_cycle(&graph) {
            panic!("import circle in {krate}: {}", cycle.join(" -> "));
        }
    }
}

/// The checks above catch what they should: an upward import and a circle.
#[test]
fn layout_checks_find_upward_imports_and_circles() {
    let segs = first_segments(
        "use crate::{catalog::Store, sync::{a, b}};\n// crate::cli::x\nlet x = crate::serve::ping(); musicfs_crate::no;",
        "crate::",
    );
    let got: Vec<&str> = segs.iter().map(String::as_str).collect();
    assert_eq!(got, ["catalog", "serve", "sync"]);
    let mut graph = BTreeMap::new();
    graph.insert("a".to_string(), BTreeSet::from(["b".to_string()]));
    graph.insert("b".to_string(), BTreeSet::from(["c".to_string()]));
    graph.insert("c".to_string(), BTreeSet::new());
    assert_eq!(find_cycle(&graph), None);
    graph.get_mut("c").unwrap().insert("a".to_string());
    assert_eq!(
        find_cycle(&graph).unwrap(),
        ["a", "b", "c", "a"].map(String::from)
    );
}

/// Most lines in a source file: one room (or one theme of a room) per file.
const MAX_FILE_LINES: usize = 700;

/// No source file is over `MAX_FILE_LINES` lines of non-test code
/// (generated schema code and test files are exempt; an inline
/// `#[cfg(test)] mod` at the end does not count).
#[test]
fn no_source_file_is_over_700_lines() {
    let mut long = Vec::new();
    for krate in [
        "engine/src",
        "shim/src",
        "xtask/src",
        "schema/src",
        "integration/src",
    ] {
        for file in rust_files(&workspace_root().join(krate)) {
            let name = file.file_name().unwrap().to_string_lossy();
            if name == "musicfs_capnp.rs" || name == "tests.rs" {
                continue;
            }
            let text = std::fs::read_to_string(&file).unwrap();
            let lines: Vec<&str> = text.lines().collect();
            let code = lines
                .windows(2)
                .position(|w| w[0] == "#[cfg(test)]" && w[1].starts_with("mod "))
                .unwrap_or(lines.len());
            if code > MAX_FILE_LINES {
                long.push(format!("{}: {code} lines", file.display()));
            }
        }
    }
    assert!(
        long.is_empty(),
        "split these by theme (at most {MAX_FILE_LINES} lines):\n{}",
        long.join("\n")
    );
}

/// Only the origins room (its `remote` folder) talks to opendal and russh:
/// every other room sees remote origins through `origins::remote`.
#[test]
fn only_the_origins_room_uses_opendal() {
    let src = workspace_root().join("engine/src");
    for krate in ["opendal::", "russh::", "russh_sftp::"] {
        let mut users = Vec::new();
        for file in rust_files(&src) {
            let text = std::fs::read_to_string(&file).unwrap();
            if code_lines(&text).any(|l| l.contains(krate)) {
                users.push(file.strip_prefix(&src).unwrap().to_path_buf());
            }
        }
        assert!(
            !users.is_empty(),
            "the check found no user of {krate} at all"
        );
        for u in &users {
            assert!(
                u.starts_with("origins/remote"),
                "{} uses {krate}",
                u.display()
            );
        }
    }
}

/// Only the views room names tantivy (the search index is derived data
/// that no other room depends on).
#[test]
fn only_the_views_room_uses_tantivy() {
    let src = workspace_root().join("engine/src");
    let mut users = Vec::new();
    for file in rust_files(&src) {
        let text = std::fs::read_to_string(&file).unwrap();
        if code_lines(&text).any(|l| l.contains("tantivy::")) {
            users.push(file.strip_prefix(&src).unwrap().to_path_buf());
        }
    }
    assert!(
        !users.is_empty(),
        "the check found no user of tantivy at all"
    );
    for u in &users {
        assert!(u.starts_with("views"), "{} uses tantivy", u.display());
    }
}
