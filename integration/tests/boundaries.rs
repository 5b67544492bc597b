//! Architecture rules that the build itself can check.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeSet, HashMap};

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
