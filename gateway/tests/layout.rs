//! The source layout keeps its shape: no module of any crate imports a module that imports
//! it back (directly or around a longer loop), so each layer reads in one direction.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const CRATES: [&str; 4] = ["gateway", "shapes", "client-sdk", "loadtest"];

#[test]
fn no_module_imports_a_module_that_imports_it() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut loops = Vec::new();
    for krate in CRATES {
        let graph = imports(&root.join(krate).join("src"));
        loops.extend(cycles(&graph).into_iter().map(|c| format!("{krate}: {}", c.join(" → "))));
    }
    assert!(loops.is_empty(), "modules importing each other:\n{}", loops.join("\n"));
}

/// A module's path from its crate root (`http/shape` for `src/http/shape.rs`).
type Module = Vec<String>;

fn module_of(src: &Path, file: &Path) -> Module {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Module = rel.iter().map(|p| p.to_string_lossy().into_owned()).collect();
    if matches!(parts.last().map(String::as_str), Some("mod" | "lib" | "main")) {
        parts.pop();
    }
    parts
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Which modules each module names through `crate::`, `super::` or `self::` paths, outside
/// its tests; a module's own ancestors and descendants do not count.
fn imports(src: &Path) -> BTreeMap<Module, BTreeSet<Module>> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let modules: BTreeSet<Module> = files.iter().map(|f| module_of(src, f)).collect();
    let mut graph: BTreeMap<Module, BTreeSet<Module>> = BTreeMap::new();
    for file in &files {
        let module = module_of(src, file);
        let text = std::fs::read_to_string(file).unwrap();
        let code = text.split("#[cfg(test)]").next().unwrap_or_default();
        for (at, _) in code.match_indices("::") {
            let start = code[..at].rfind(|c: char| !(c.is_alphanumeric() || c == '_')).map_or(0, |i| i + 1);
            let base: Module = match &code[start..at] {
                "crate" => Vec::new(),
                "super" => module[..module.len().saturating_sub(1)].to_vec(),
                "self" => module.clone(),
                _ => continue,
            };
            for full in paths(base, &code[at + 2..]) {
                let named = (1..=full.len()).rev().map(|n| full[..n].to_vec()).find(|m| modules.contains(m));
                if let Some(named) = named
                    && !named.starts_with(&module)
                    && !module.starts_with(&named)
                {
                    graph.entry(module.clone()).or_default().insert(named);
                }
            }
        }
    }
    graph
}

/// The paths `text` names after `base::`: one (`a::b`), or a group's (`{a, b::{c, d}, self}`).
fn paths(base: Module, text: &str) -> Vec<Module> {
    let text = text.trim_start();
    if let Some(group) = text.strip_prefix('{') {
        let mut depth = 0;
        let mut items = Vec::new();
        let mut item = String::new();
        for c in group.chars() {
            match c {
                '{' => depth += 1,
                '}' if depth == 0 => break,
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
        return items.iter().flat_map(|i| paths(base.clone(), i)).collect();
    }
    let end = text.find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':')).unwrap_or(text.len());
    let (path, after) = text.split_at(end);
    let mut full = base;
    full.extend(path.split("::").filter(|s| !s.is_empty() && *s != "self").map(str::to_string));
    match after.trim_start().strip_prefix('{') {
        Some(_) if path.ends_with("::") => paths(full, after),
        _ => vec![full],
    }
}

/// Every loop in the graph, once each (as the modules along it).
fn cycles(graph: &BTreeMap<Module, BTreeSet<Module>>) -> Vec<Vec<String>> {
    let mut found = BTreeSet::new();
    for start in graph.keys() {
        let mut stack = vec![(start.clone(), vec![start.clone()])];
        while let Some((at, path)) = stack.pop() {
            for next in graph.get(&at).into_iter().flatten() {
                if next == start {
                    let mut names: Vec<String> = path.iter().map(|m| m.join("/")).collect();
                    let first = names.iter().enumerate().min_by_key(|(_, n)| n.as_str()).map_or(0, |(i, _)| i);
                    names.rotate_left(first);
                    found.insert(names);
                } else if !path.contains(next) && path.len() < 8 {
                    let mut longer = path.clone();
                    longer.push(next.clone());
                    stack.push((next.clone(), longer));
                }
            }
        }
    }
    found.into_iter().collect()
}
