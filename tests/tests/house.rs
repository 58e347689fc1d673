//! The house rules a compiler cannot check (docs/HOUSE-RULES.md): in `dstrace/src`
//! imports run one way, commands -> cli -> sinks -> model -> resolve -> kernel
//! (`clock` is shared by all), and no two files of a crate import each other,
//! directly or through others.
//!
//! Read from the sources as they are: every `crate::` path outside comments and
//! before a file's tests, tied to the file of the module it names.
// Test code: a panic with its message is how a failure is reported.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

/// The stages of `dstrace/src`, lowest first: a file may import from its own
/// stage and from those before it.
const STAGES: [&str; 6] = ["kernel", "resolve", "model", "sinks", "cli", "commands"];

/// A crate's modules (as paths of names) and the modules each one refers to.
struct Crate {
    uses: BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            out.push(path);
        }
    }
}

/// The module path of a source file (`kernel/loader.rs` is `kernel::loader`,
/// `sinks/recording/mod.rs` is `sinks::recording`, `lib.rs` and `main.rs` the root).
fn module_of(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Vec<String> = rel.iter().map(|part| part.to_string_lossy().into_owned()).collect();
    if parts.last().is_some_and(|last| last == "mod") {
        parts.pop();
    }
    if parts == ["lib"] || parts == ["main"] {
        parts.clear();
    }
    parts
}

/// The text of a file that the rules apply to: before its tests, without comments.
fn code_of(file: &Path) -> String {
    let text = std::fs::read_to_string(file).unwrap();
    let text = text.split("#[cfg(test)]").next().unwrap_or_default();
    text.lines().map(|line| line.split("//").next().unwrap_or_default()).collect::<Vec<_>>().join("\n")
}

/// Every `crate::a::b` path of a text, and the paths inside `use crate::{...}`
/// groups (first two names of each item), as name lists.
fn paths(code: &str) -> Vec<Vec<String>> {
    let mut found = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // A group: its items, at any depth, each a path of names.
            let mut depth = 1;
            let end = group
                .char_indices()
                .find(|&(_, c)| {
                    depth += match c {
                        '{' => 1,
                        '}' => -1,
                        _ => 0,
                    };
                    depth == 0
                })
                .map_or(group.len(), |(i, _)| i);
            found.extend(group_paths(&group[..end], &[]));
            continue;
        }
        let path: Vec<String> = rest
            .split("::")
            .map(|part| part.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect::<String>())
            .take_while(|part| !part.is_empty())
            .collect();
        found.push(path);
    }
    found
}

/// The paths of a `use` group's items, each prefixed by `prefix`.
fn group_paths(group: &str, prefix: &[String]) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let mut depth = 0;
    let mut item = String::new();
    let mut items = Vec::new();
    for c in group.chars() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                items.push(std::mem::take(&mut item));
                continue;
            }
            _ => {}
        }
        item.push(c);
    }
    items.push(item);
    for item in items {
        let item = item.trim();
        if item.is_empty() {
            continue;
        }
        match item.split_once("::{") {
            Some((head, inner)) => {
                let mut path = prefix.to_vec();
                path.extend(head.split("::").map(|part| part.trim().to_owned()));
                out.extend(group_paths(inner.trim_end_matches('}'), &path));
            }
            None => {
                let mut path = prefix.to_vec();
                path.extend(
                    item.split("::")
                        .map(|part| part.split_whitespace().next().unwrap_or_default().to_owned()),
                );
                out.push(path);
            }
        }
    }
    out
}

fn read_crate(src: &Path) -> Crate {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let modules: BTreeMap<Vec<String>, PathBuf> =
        files.iter().map(|file| (module_of(src, file), file.clone())).collect();
    let mut uses = BTreeMap::new();
    for (module, file) in &modules {
        let mut used = BTreeSet::new();
        for path in paths(&code_of(file)) {
            // The longest prefix that is a module of the crate.
            if let Some(target) =
                (1..=path.len()).rev().map(|n| path[..n].to_vec()).find(|p| modules.contains_key(p))
            {
                if &target != module {
                    used.insert(target);
                }
            }
        }
        uses.insert(module.clone(), used);
    }
    Crate { uses }
}

/// The circles of a crate's imports: modules that reach each other.
fn circles(krate: &Crate) -> Vec<Vec<String>> {
    let reach = |from: &Vec<String>| -> BTreeSet<Vec<String>> {
        let mut seen = BTreeSet::new();
        let mut todo = vec![from.clone()];
        while let Some(next) = todo.pop() {
            for used in &krate.uses[&next] {
                if seen.insert(used.clone()) {
                    todo.push(used.clone());
                }
            }
        }
        seen
    };
    let mut out = Vec::new();
    for (module, used) in &krate.uses {
        for other in used {
            if reach(other).contains(module) {
                out.push(vec![module.join("::"), other.join("::")]);
            }
        }
    }
    out
}

#[test]
fn dstrace_imports_run_from_commands_down_to_the_kernel() {
    let krate = read_crate(&workspace().join("dstrace/src"));
    assert!(krate.uses.len() > 30, "the sources were not found");
    let stage = |module: &[String]| module.first().and_then(|first| STAGES.iter().position(|s| s == first));
    let mut upward = Vec::new();
    for (module, used) in &krate.uses {
        let Some(mine) = stage(module) else { continue };
        for target in used {
            if stage(target).is_some_and(|theirs| theirs > mine) {
                upward.push(format!("{} imports {}", module.join("::"), target.join("::")));
            }
        }
    }
    assert!(
        upward.is_empty(),
        "imports that go up the stages ({STAGES:?}, lowest first):\n{}",
        upward.join("\n")
    );
}

#[test]
fn no_file_imports_one_that_imports_it_back() {
    for src in ["dstrace/src", "xtask/src", "dstrace-ebpf/src", "dstrace-common/src"] {
        let krate = read_crate(&workspace().join(src));
        let found = circles(&krate);
        assert!(found.is_empty(), "{src}: import circles: {found:?}");
    }
}

#[test]
fn the_checks_can_see_a_circle_and_an_upward_import() {
    // The parser, on text: a group with nested items, and a path in code.
    let found = paths("use crate::{a::{b, c::D}, e};\nlet x = crate::f::g::h();");
    assert_eq!(found, [vec!["a", "b"], vec!["a", "c", "D"], vec!["e"], vec!["f", "g", "h"]]);
    let krate = Crate {
        uses: [
            (vec!["kernel".to_owned()], [vec!["model".to_owned()]].into()),
            (vec!["model".to_owned()], [vec!["kernel".to_owned()]].into()),
        ]
        .into(),
    };
    assert_eq!(circles(&krate).len(), 2);
}
