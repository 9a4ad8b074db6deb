//! No source file imports from a file that imports it back, in either crate.
//!
//! A file depends on another when it names an item *defined* there, through
//! `use` or a qualified path. Module declarations and re-exports are followed
//! to the file that defines the item, so `pub use` in a `mod.rs` or `lib.rs`
//! adds no edge of its own. The test parses the sources with `syn` and fails
//! with every cycle it finds, each as the file-to-file edges that form it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use syn::visit::Visit;

/// A module: the file it lives in, the names it defines, and the names its
/// `use` items bind (name -> path as written), including globs.
#[derive(Default)]
struct Module {
    file: PathBuf,
    defines: BTreeSet<String>,
    binds: HashMap<String, Vec<String>>,
    globs: Vec<Vec<String>>,
    /// every path the module names, relative to it, as written
    mentions: Vec<Vec<String>>,
}

/// All modules of one crate, keyed by their path from the crate root.
#[derive(Default)]
struct Crate {
    modules: BTreeMap<Vec<String>, Module>,
}

impl Crate {
    fn load(root: &Path) -> Crate {
        let mut krate = Crate::default();
        krate.load_file(root, vec![], root.parent().unwrap().to_path_buf());
        krate
    }

    /// Parses the file of module `path`; `dir` is where its child files are.
    fn load_file(&mut self, file: &Path, path: Vec<String>, dir: PathBuf) {
        let text = std::fs::read_to_string(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let ast = syn::parse_file(&text).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        self.load_items(&ast.items, file, path, dir);
    }

    fn load_items(&mut self, items: &[syn::Item], file: &Path, path: Vec<String>, dir: PathBuf) {
        let mut module = Module { file: file.to_path_buf(), ..Module::default() };
        let mut children = vec![];
        for item in items {
            match item {
                syn::Item::Mod(m) => {
                    let name = m.ident.to_string();
                    let mut child = path.clone();
                    child.push(name.clone());
                    match &m.content {
                        // an inline module lives in this file
                        Some((_, inner)) => children.push((child, Some(inner.clone()), dir.join(&name))),
                        None => children.push((child, None, dir.join(&name))),
                    }
                }
                syn::Item::Use(u) => collect_use(&u.tree, &mut vec![], &mut module),
                other => {
                    if let Some(name) = item_name(other) {
                        module.defines.insert(name);
                    }
                }
            }
        }
        let mut mentions = Mentions(vec![]);
        for item in items {
            if !matches!(item, syn::Item::Mod(_) | syn::Item::Use(_)) {
                mentions.visit_item(item);
            }
        }
        module.mentions = mentions.0;
        self.modules.insert(path, module);
        for (child, inner, child_dir) in children {
            match inner {
                Some(items) => self.load_items(&items, file, child, child_dir),
                None => {
                    let name = child.last().unwrap();
                    let flat = dir.join(format!("{name}.rs"));
                    if flat.exists() {
                        self.load_file(&flat, child, child_dir);
                    } else {
                        self.load_file(&child_dir.join("mod.rs"), child, child_dir);
                    }
                }
            }
        }
    }

    /// Turns a path written in module `at` into an absolute one, or `None`
    /// for paths into other crates and local names.
    fn absolute(&self, at: &[String], path: &[String], depth: usize) -> Option<Vec<String>> {
        let first = path.first()?;
        if depth > 16 {
            return None;
        }
        let mut base = at.to_vec();
        let mut rest = path;
        match first.as_str() {
            "crate" => {
                base.clear();
                rest = &path[1..];
            }
            "self" => rest = &path[1..],
            "super" => {
                while rest.first().map(String::as_str) == Some("super") {
                    base.pop()?;
                    rest = &rest[1..];
                }
            }
            _ => {
                let mut child = at.to_vec();
                child.push(first.clone());
                if self.modules.contains_key(&child) {
                    // a child module, named from its parent
                } else if let Some(bound) = self.modules.get(at).and_then(|m| m.binds.get(first)) {
                    let mut full = bound.clone();
                    full.extend_from_slice(&path[1..]);
                    return self.absolute(at, &full, depth + 1);
                } else {
                    return None;
                }
            }
        }
        base.extend_from_slice(rest);
        Some(base)
    }

    /// The file that defines what an absolute path names, following
    /// re-exports; `None` when it leaves the crate or names no item.
    fn defining_file(&self, path: &[String], depth: usize) -> Option<PathBuf> {
        if depth > 16 {
            return None;
        }
        // the longest prefix that is a module
        let mut split = path.len();
        while split > 0 && !self.modules.contains_key(&path[..split]) {
            split -= 1;
        }
        let module = self.modules.get(&path[..split])?;
        let Some(name) = path.get(split) else {
            return Some(module.file.clone());
        };
        if module.defines.contains(name) {
            return Some(module.file.clone());
        }
        let at = &path[..split];
        if let Some(bound) = module.binds.get(name) {
            let mut full = bound.clone();
            full.extend_from_slice(&path[split + 1..]);
            return self.defining_file(&self.absolute(at, &full, depth + 1)?, depth + 1);
        }
        for glob in &module.globs {
            let mut full = glob.clone();
            full.extend_from_slice(&path[split..]);
            if let Some(file) = self.absolute(at, &full, depth + 1).and_then(|p| self.defining_file(&p, depth + 1)) {
                return Some(file);
            }
        }
        None
    }

    /// File-to-file edges: (from, to) for every item one file names from another.
    fn edges(&self) -> BTreeSet<(PathBuf, PathBuf)> {
        let mut edges = BTreeSet::new();
        for (at, module) in &self.modules {
            let written = module.binds.values().chain(&module.globs).chain(&module.mentions);
            for path in written.filter_map(|p| self.absolute(at, p, 0)) {
                if let Some(file) = self.defining_file(&path, 0) {
                    if file != module.file {
                        edges.insert((module.file.clone(), file));
                    }
                }
            }
        }
        edges
    }
}

/// Records the names a `use` tree binds, with their paths as written.
fn collect_use(tree: &syn::UseTree, prefix: &mut Vec<String>, module: &mut Module) {
    match tree {
        syn::UseTree::Path(p) => {
            prefix.push(p.ident.to_string());
            collect_use(&p.tree, prefix, module);
            prefix.pop();
        }
        syn::UseTree::Name(n) => {
            let name = n.ident.to_string();
            let mut full = prefix.clone();
            if name != "self" {
                full.push(name.clone());
            }
            let bound = if name == "self" { prefix.last().cloned().unwrap_or_default() } else { name };
            module.binds.insert(bound, full);
        }
        syn::UseTree::Rename(r) => {
            let mut full = prefix.clone();
            full.push(r.ident.to_string());
            module.binds.insert(r.rename.to_string(), full);
        }
        syn::UseTree::Glob(_) => module.globs.push(prefix.clone()),
        syn::UseTree::Group(g) => {
            for tree in &g.items {
                collect_use(tree, prefix, module);
            }
        }
    }
}

/// Paths of two or more segments, and single names (which may be `use`d).
struct Mentions(Vec<Vec<String>>);

impl<'ast> Visit<'ast> for Mentions {
    fn visit_path(&mut self, path: &'ast syn::Path) {
        if path.leading_colon.is_none() {
            self.0.push(path.segments.iter().map(|s| s.ident.to_string()).collect());
        }
        syn::visit::visit_path(self, path);
    }

    // `pub(crate)` and `pub(super)` name modules, not items
    fn visit_visibility(&mut self, _: &'ast syn::Visibility) {}
}

fn item_name(item: &syn::Item) -> Option<String> {
    Some(match item {
        syn::Item::Const(i) => i.ident.to_string(),
        syn::Item::Enum(i) => i.ident.to_string(),
        syn::Item::Fn(i) => i.sig.ident.to_string(),
        syn::Item::Macro(i) => i.ident.as_ref()?.to_string(),
        syn::Item::Static(i) => i.ident.to_string(),
        syn::Item::Struct(i) => i.ident.to_string(),
        syn::Item::Trait(i) => i.ident.to_string(),
        syn::Item::Type(i) => i.ident.to_string(),
        syn::Item::Union(i) => i.ident.to_string(),
        _ => return None,
    })
}

/// Every cycle of the file graph, as the files of each strongly connected
/// component that has more than one file.
fn cycles(edges: &BTreeSet<(PathBuf, PathBuf)>) -> Vec<Vec<PathBuf>> {
    let mut next: BTreeMap<&PathBuf, Vec<&PathBuf>> = BTreeMap::new();
    for (a, b) in edges {
        next.entry(a).or_default().push(b);
    }
    let reaches = |from: &PathBuf| -> BTreeSet<PathBuf> {
        let mut seen = BTreeSet::new();
        let mut todo = vec![from];
        while let Some(f) = todo.pop() {
            for &g in next.get(f).into_iter().flatten() {
                if seen.insert(g.clone()) {
                    todo.push(g);
                }
            }
        }
        seen
    };
    let files: BTreeSet<&PathBuf> = edges.iter().flat_map(|(a, b)| [a, b]).collect();
    let reach: BTreeMap<&PathBuf, BTreeSet<PathBuf>> = files.iter().map(|&f| (f, reaches(f))).collect();
    let mut found: BTreeSet<Vec<PathBuf>> = BTreeSet::new();
    for &f in &files {
        let component: Vec<PathBuf> =
            files.iter().filter(|&&g| g != f && reach[f].contains(g) && reach[g].contains(f)).map(|&g| g.clone()).collect();
        if !component.is_empty() {
            let mut all = component;
            all.push(f.clone());
            all.sort();
            found.insert(all);
        }
    }
    found.into_iter().collect()
}

/// The edges inside one cycle, to show how it closes.
fn describe(cycle: &[PathBuf], edges: &BTreeSet<(PathBuf, PathBuf)>, root: &Path) -> String {
    let short = |p: &PathBuf| p.strip_prefix(root).unwrap_or(p).display().to_string();
    edges
        .iter()
        .filter(|(a, b)| cycle.contains(a) && cycle.contains(b))
        .map(|(a, b)| format!("    {} -> {}", short(a), short(b)))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn no_file_imports_from_a_file_that_imports_it_back() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut report = vec![];
    let mut files = 0;
    for lib in ["src/lib.rs", "compilers/src/lib.rs"] {
        let krate = Crate::load(&root.join(lib));
        files += krate.modules.values().map(|m| &m.file).collect::<BTreeSet<_>>().len();
        let edges = krate.edges();
        for cycle in cycles(&edges) {
            report.push(describe(&cycle, &edges, root));
        }
    }
    println!("scanned {files} files");
    assert!(files > 80, "the scan found only {files} source files");
    assert!(report.is_empty(), "import cycles:\n{}", report.join("\n  --\n"));
}

/// The scan itself finds a two-file cycle, so a pass above means something.
#[test]
fn the_scan_finds_a_planted_cycle() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("lib.rs"), "mod a;\nmod b;\npub use a::A;\n").unwrap();
    std::fs::write(dir.path().join("a.rs"), "use crate::b::B;\npub struct A(B);\n").unwrap();
    std::fs::write(dir.path().join("b.rs"), "pub struct B;\nfn f() -> super::A { todo!() }\n").unwrap();
    let krate = Crate::load(&dir.path().join("lib.rs"));
    let found = cycles(&krate.edges());
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].len(), 2);
}
