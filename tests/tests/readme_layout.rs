//! The README's "Layout" table matches the tree: every path it names exists, and for each
//! Rust crate it lists, the modules it names are the crate's top-level modules, no more and
//! no fewer. A move or a new module that forgets the README fails here.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The rows of the table under `## Layout`: (first cell, second cell).
fn layout_rows(readme: &str) -> Vec<(String, String)> {
    let section = readme
        .split("\n## Layout")
        .nth(1)
        .expect("README.md has a ## Layout section");
    let section = section.split("\n## ").next().unwrap_or(section);
    section
        .lines()
        .filter(|l| l.starts_with("| `"))
        .map(|l| {
            let cells: Vec<&str> = l.trim_matches('|').split('|').map(str::trim).collect();
            (
                cells[0].to_string(),
                cells.get(1).unwrap_or(&"").to_string(),
            )
        })
        .collect()
}

/// The words between backticks.
fn ticked(cell: &str) -> Vec<String> {
    cell.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

/// The top-level modules of a crate's `src/`: `x.rs` files and directories, without the
/// crate roots.
fn top_modules(src: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for entry in std::fs::read_dir(src).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().to_string();
        if entry.file_type().unwrap().is_dir() {
            out.insert(name);
        } else if let Some(stem) = name.strip_suffix(".rs") {
            if stem != "lib" && stem != "main" {
                out.insert(stem.to_string());
            }
        }
    }
    out
}

/// Whether `name.rs` or a directory `name` lies anywhere below `dir` (nested modules such as
/// `block`'s `probe` are named in the row too).
fn module_anywhere(dir: &Path, name: &str) -> bool {
    if dir.join(format!("{name}.rs")).is_file() || dir.join(name).is_dir() {
        return true;
    }
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
        .any(|e| module_anywhere(&e.path(), name))
}

fn is_module_name(word: &str) -> bool {
    !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

#[test]
fn readme_layout_names_what_is_there() {
    let root = root();
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let rows = layout_rows(&readme);
    assert!(rows.len() >= 8, "the Layout table has {} rows", rows.len());
    let mut problems = Vec::new();
    for (paths, what) in &rows {
        for p in ticked(paths) {
            if !root.join(&p).exists() {
                problems.push(format!("{p}: named in the Layout table, not in the tree"));
            }
        }
        let first = ticked(paths).into_iter().next().unwrap_or_default();
        let src = root.join(&first).join("src");
        if !first.ends_with('/') || !src.is_dir() {
            continue;
        }
        let named: BTreeSet<String> = ticked(what)
            .into_iter()
            .filter(|w| is_module_name(w))
            .collect();
        for m in top_modules(&src) {
            if !named.contains(&m) {
                problems.push(format!(
                    "{first}src/{m}: a module the Layout row does not name"
                ));
            }
        }
        for n in &named {
            if !module_anywhere(&src, n) {
                problems.push(format!("{first}: the Layout row names `{n}`, not in src/"));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "README Layout vs tree:\n{}",
        problems.join("\n")
    );
}
