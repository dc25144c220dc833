//! The layers hold: every `crate::...` import in `src/` is checked against the "never" table of
//! `docs/architecture.md`, less the imports it lists as still against the layers. The document is
//! the one source; this is a plain source scan, enough for imports written as `crate::` paths.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The backticked names in each row of the markdown table under `heading`: first cell, the rest.
fn table(doc: &str, heading: &str) -> Vec<(String, Vec<String>)> {
    let section = doc
        .split(&format!("## {heading}\n"))
        .nth(1)
        .unwrap_or_else(|| panic!("docs/architecture.md has no `## {heading}`"));
    let section = section.split("\n## ").next().unwrap_or("");
    section
        .lines()
        .filter(|l| l.starts_with("| `"))
        .map(|l| {
            let cells: Vec<&str> = l.trim_matches('|').split('|').collect();
            let names =
                |cell: &str| -> Vec<String> { cell.split('`').skip(1).step_by(2).map(str::to_string).collect() };
            let first = names(cells[0]).into_iter().next().unwrap_or_default();
            (first, cells[1..].iter().flat_map(|c| names(c)).collect())
        })
        .collect()
}

/// The top-level modules a source text names through `crate::`: `crate::a::b` and each member of
/// `crate::{a, b::c}`.
fn crate_modules(text: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let ident = |s: &str| -> String {
        s.trim()
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    for (i, _) in text.match_indices("crate::") {
        let rest = &text[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let group = group.split('}').next().unwrap_or("");
            found.extend(group.split(',').map(ident).filter(|m| !m.is_empty()));
        } else {
            let m = ident(rest);
            if !m.is_empty() {
                found.insert(m);
            }
        }
    }
    found
}

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn no_module_imports_against_the_layers() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let doc = std::fs::read_to_string(root.join("docs/architecture.md")).expect("docs/architecture.md");
    let never: BTreeMap<String, Vec<String>> = table(&doc, "Never").into_iter().collect();
    assert!(never.len() >= 8, "the never table lost its rows: {never:?}");
    let known: BTreeMap<String, BTreeSet<String>> = table(&doc, "Still against the layers")
        .into_iter()
        .map(|(file, imports)| (file, imports.into_iter().collect()))
        .collect();
    let mut files = Vec::new();
    sources(&root.join("src"), &mut files);
    let mut found: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for path in &files {
        let relative = path.strip_prefix(root).unwrap_or(path).display().to_string();
        // `src/<module>/...` or `src/<module>.rs`.
        let module = relative
            .trim_start_matches("src/")
            .split('/')
            .next()
            .unwrap_or("")
            .trim_end_matches(".rs")
            .to_string();
        let Some(forbidden) = never.get(&module) else { continue };
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let bad: BTreeSet<String> = crate_modules(&text)
            .into_iter()
            .filter(|m| forbidden.contains(m))
            .collect();
        if !bad.is_empty() {
            found.insert(relative, bad);
        }
    }
    let mut problems = Vec::new();
    for (file, imports) in &found {
        let allowed = known.get(file).cloned().unwrap_or_default();
        for m in imports.difference(&allowed) {
            problems.push(format!("{file} imports `{m}`, which its layer never imports"));
        }
    }
    for (file, imports) in &known {
        let now = found.get(file).cloned().unwrap_or_default();
        for m in imports.difference(&now) {
            problems.push(format!(
                "{file} no longer imports `{m}`: remove it from \"Still against the layers\""
            ));
        }
    }
    assert!(problems.is_empty(), "docs/architecture.md:\n{}", problems.join("\n"));
}

#[test]
fn imports_are_found_in_paths_and_groups() {
    let text = "use crate::{explain::Limits, runtime};\nfn f() { crate::eval::x(); }\n// crate::";
    let found: Vec<String> = crate_modules(text).into_iter().collect();
    assert_eq!(found, ["eval", "explain", "runtime"]);
}
