//! The shape of the source, checked on every test run (docs/architecture.md):
//!
//! - no import cycles: among the modules that share a parent (the library's `ledger`,
//!   `store`, `server`, ...; `server`'s `auth`, `service`, `status`, ...), no module uses
//!   one that uses it back, directly or around a loop. A module may use its own parent
//!   and children (a `mod.rs` re-exporting its children's items is not a cycle);
//! - no function over 60 lines (tests excepted) without a reason next to it: a comment
//!   line `// Why long: ...` within the five lines above it.
//!
//! It reads every `.rs` file under `src/` with `syn`, follows each `crate::`, `super::`
//! and `self::` path (in `use` items and in expressions and types) to the module it
//! names, and reports what it finds by file and line.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

use syn::visit::Visit;

/// A module's path from its crate root: `["server", "status"]`.
type ModPath = Vec<String>;

/// One crate of the package: the library (`src/lib.rs`) or the binary
/// (`src/bin/jobledger/main.rs`).
struct Crate {
    /// Every module, the root included (empty path).
    modules: BTreeSet<ModPath>,
    /// (from, to, where): `from` uses something in `to`.
    uses: Vec<(ModPath, ModPath, String)>,
    long_functions: Vec<String>,
}

const MAX_FUNCTION_LINES: usize = 60;
const REASON_MARKER: &str = "// Why long:";

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Reads the crate whose root file is `root` (its modules are the files beside it).
fn read_crate(root: &Path) -> Crate {
    let mut krate = Crate {
        modules: BTreeSet::new(),
        uses: Vec::new(),
        long_functions: Vec::new(),
    };
    read_module(&mut krate, root, Vec::new());
    krate
}

fn read_module(krate: &mut Crate, file: &Path, path: ModPath) {
    let text = std::fs::read_to_string(file).unwrap_or_else(|e| panic!("{file:?}: {e}"));
    let ast = syn::parse_file(&text).unwrap_or_else(|e| panic!("{file:?}: {e}"));
    let lines: Vec<&str> = text.lines().collect();
    krate.modules.insert(path.clone());
    // Files of child modules: `x/mod.rs` and `x.rs` hold their children in `x/`.
    let dir = match file.file_name().and_then(|n| n.to_str()) {
        Some("mod.rs" | "lib.rs" | "main.rs") => file.parent().unwrap().to_owned(),
        _ => file.with_extension(""),
    };
    let mut visitor = ModuleVisitor {
        krate,
        file,
        lines: &lines,
        dir,
        stack: vec![path],
    };
    visitor.visit_file(&ast);
}

struct ModuleVisitor<'a> {
    krate: &'a mut Crate,
    file: &'a Path,
    lines: &'a [&'a str],
    /// Where the files of the current module's children are.
    dir: PathBuf,
    /// The current module (inline `mod x { ... }` push onto it).
    stack: Vec<ModPath>,
}

impl ModuleVisitor<'_> {
    fn here(&self) -> &ModPath {
        self.stack.last().unwrap()
    }

    fn place(&self, line: usize) -> String {
        let relative = self.file.strip_prefix(src()).unwrap_or(self.file);
        format!("src/{}:{line}", relative.display())
    }

    /// Records a use of `segments` (a path as written) from the current module.
    fn record(&mut self, segments: &[String], line: usize) {
        let Some(target) = resolve(self.here(), segments) else {
            return;
        };
        let place = self.place(line);
        self.krate.uses.push((self.here().clone(), target, place));
    }

    fn check_length(&mut self, attrs: &[syn::Attribute], name: &syn::Ident, block: &syn::Block) {
        let is_test = attrs.iter().any(|a| {
            let path = a.path();
            path.is_ident("test") || path.segments.last().is_some_and(|s| s.ident == "test")
        });
        let start = name.span().start().line;
        let end = block.brace_token.span.close().end().line;
        let length = end + 1 - start;
        if is_test || length <= MAX_FUNCTION_LINES {
            return;
        }
        let above = &self.lines[start.saturating_sub(6)..start.saturating_sub(1)];
        if !above
            .iter()
            .any(|l| l.trim_start().starts_with(REASON_MARKER))
        {
            let place = self.place(start);
            self.krate
                .long_functions
                .push(format!("{place} fn {name}: {length} lines"));
        }
    }
}

/// The module a path names, from module `here`: `crate::a::b::Item` → `a::b` (the
/// longest prefix that is a module is decided later, against the module list), `super::`
/// and `self::` relative to `here`. None for paths of other crates and plain names.
fn resolve(here: &ModPath, segments: &[String]) -> Option<ModPath> {
    let first = segments.first()?;
    let mut base: ModPath = match first.as_str() {
        "crate" => Vec::new(),
        "super" | "self" => here.clone(),
        _ => return None,
    };
    let mut rest = &segments[usize::from(first == "crate")..];
    while let Some(segment) = rest.first() {
        match segment.as_str() {
            "super" => {
                base.pop()?;
            }
            "self" => {}
            _ => break,
        }
        rest = &rest[1..];
    }
    base.extend(rest.iter().cloned());
    Some(base)
}

/// `use` trees flattened into paths (`use a::{b, c::d}` → `a::b`, `a::c::d`).
fn use_paths(tree: &syn::UseTree, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    match tree {
        syn::UseTree::Path(p) => {
            prefix.push(p.ident.to_string());
            use_paths(&p.tree, prefix, out);
            prefix.pop();
        }
        syn::UseTree::Name(n) => {
            let mut path = prefix.clone();
            if n.ident != "self" {
                path.push(n.ident.to_string());
            }
            out.push(path);
        }
        syn::UseTree::Rename(r) => {
            let mut path = prefix.clone();
            path.push(r.ident.to_string());
            out.push(path);
        }
        syn::UseTree::Glob(_) => out.push(prefix.clone()),
        syn::UseTree::Group(g) => {
            for tree in &g.items {
                use_paths(tree, prefix, out);
            }
        }
    }
}

impl<'ast> Visit<'ast> for ModuleVisitor<'_> {
    fn visit_item_mod(&mut self, item: &'ast syn::ItemMod) {
        let mut path = self.here().clone();
        path.push(item.ident.to_string());
        match &item.content {
            // An inline module: its items are visited with it as the current module.
            Some(_) => {
                self.krate.modules.insert(path.clone());
                self.stack.push(path);
                syn::visit::visit_item_mod(self, item);
                self.stack.pop();
            }
            None => {
                let name = item.ident.to_string();
                let file = [
                    self.dir.join(format!("{name}.rs")),
                    self.dir.join(&name).join("mod.rs"),
                ]
                .into_iter()
                .find(|f| f.exists())
                .unwrap_or_else(|| panic!("no file for mod {name} in {:?}", self.dir));
                read_module(self.krate, &file, path);
            }
        }
    }

    fn visit_item_use(&mut self, item: &'ast syn::ItemUse) {
        let mut paths = Vec::new();
        use_paths(&item.tree, &mut Vec::new(), &mut paths);
        let line = item.use_token.span.start().line;
        for path in paths {
            self.record(&path, line);
        }
    }

    fn visit_path(&mut self, path: &'ast syn::Path) {
        let segments: Vec<String> = path.segments.iter().map(|s| s.ident.to_string()).collect();
        if let Some(first) = path.segments.first() {
            self.record(&segments, first.ident.span().start().line);
        }
        syn::visit::visit_path(self, path);
    }

    fn visit_item_fn(&mut self, item: &'ast syn::ItemFn) {
        self.check_length(&item.attrs, &item.sig.ident, &item.block);
        syn::visit::visit_item_fn(self, item);
    }

    fn visit_impl_item_fn(&mut self, item: &'ast syn::ImplItemFn) {
        self.check_length(&item.attrs, &item.sig.ident, &item.block);
        syn::visit::visit_impl_item_fn(self, item);
    }
}

/// The longest module that is a prefix of `path` (a path names a module or an item in
/// one).
fn module_of(modules: &BTreeSet<ModPath>, path: &ModPath) -> ModPath {
    (0..=path.len())
        .rev()
        .map(|n| path[..n].to_vec())
        .find(|p| modules.contains(p))
        .unwrap_or_default()
}

/// Among siblings (modules with the same parent), which uses which: a use from anywhere
/// under `a` of anything under `b` is an edge `a → b` in their parent's graph.
fn sibling_graphs(krate: &Crate) -> BTreeMap<ModPath, BTreeMap<String, BTreeMap<String, String>>> {
    let mut graphs: BTreeMap<ModPath, BTreeMap<String, BTreeMap<String, String>>> = BTreeMap::new();
    for (from, to, place) in &krate.uses {
        let to = module_of(&krate.modules, to);
        let common = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
        // One is the other's ancestor (or the same module): not between siblings.
        if common == from.len() || common == to.len() {
            continue;
        }
        let parent = from[..common].to_vec();
        graphs
            .entry(parent)
            .or_default()
            .entry(from[common].clone())
            .or_default()
            .entry(to[common].clone())
            .or_insert_with(|| place.clone());
    }
    graphs
}

/// A cycle of a graph, as `a → b (where) → a (where)`, if it has one.
fn find_cycle(graph: &BTreeMap<String, BTreeMap<String, String>>) -> Option<String> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeMap<String, String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<String> {
        if let Some(i) = path.iter().position(|n| n == node) {
            let mut cycle = path[i..].to_vec();
            cycle.push(node.to_owned());
            let steps: Vec<String> = cycle
                .windows(2)
                .map(|w| format!("{} → {} ({})", w[0], w[1], graph[&w[0]][&w[1]]))
                .collect();
            return Some(steps.join(", "));
        }
        if !done.insert(node.to_owned()) {
            return None;
        }
        path.push(node.to_owned());
        for next in graph.get(node).into_iter().flat_map(|e| e.keys()) {
            if let Some(cycle) = visit(next, graph, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|node| visit(node, graph, &mut Vec::new(), &mut done))
}

fn crates() -> Vec<(&'static str, Crate)> {
    vec![
        ("library", read_crate(&src().join("lib.rs"))),
        ("binary", read_crate(&src().join("bin/jobledger/main.rs"))),
    ]
}

#[test]
fn no_module_imports_a_module_that_imports_it_back() {
    let mut cycles = Vec::new();
    let mut edges = 0;
    for (name, krate) in crates() {
        assert!(krate.modules.len() > 5, "{name}: modules not found");
        for (parent, graph) in sibling_graphs(&krate) {
            edges += graph.values().map(BTreeMap::len).sum::<usize>();
            if let Some(cycle) = find_cycle(&graph) {
                cycles.push(format!("{name} crate::{}: {cycle}", parent.join("::")));
            }
        }
    }
    // The walk found the uses it checks (a broken reader finds none and passes).
    assert!(edges > 20, "only {edges} uses between modules were found");
    assert!(cycles.is_empty(), "import cycles:\n{}", cycles.join("\n"));
}

#[test]
fn the_checker_sees_a_cycle() {
    let mut krate = Crate {
        modules: [
            vec![],
            vec!["a".into()],
            vec!["b".into()],
            vec!["b".into(), "c".into()],
        ]
        .into_iter()
        .collect(),
        uses: vec![
            (
                vec!["a".into()],
                vec!["b".into(), "c".into(), "f".into()],
                "x".into(),
            ),
            (vec!["b".into(), "c".into()], vec!["b".into()], "y".into()),
        ],
        long_functions: Vec::new(),
    };
    // a → b::c and b::c → b (its parent): no cycle.
    assert!(sibling_graphs(&krate)
        .values()
        .all(|g| find_cycle(g).is_none()));
    // b::c → a closes a → b → a.
    krate
        .uses
        .push((vec!["b".into(), "c".into()], vec!["a".into()], "z".into()));
    let graphs = sibling_graphs(&krate);
    let cycle = find_cycle(&graphs[&Vec::<String>::new()]).expect("a cycle");
    assert!(
        cycle.contains("a → b (x)") && cycle.contains("b → a (z)"),
        "{cycle}"
    );
    assert_eq!(
        resolve(
            &vec!["b".into(), "c".into()],
            &["super".into(), "super".into(), "a".into()]
        ),
        Some(vec!["a".into()])
    );
}

#[test]
fn no_function_is_over_sixty_lines_without_a_reason() {
    let long: Vec<String> = crates()
        .into_iter()
        .flat_map(|(_, krate)| krate.long_functions)
        .collect();
    assert!(
        long.is_empty(),
        "functions over {MAX_FUNCTION_LINES} lines (split them, or say why above them with \
         `{REASON_MARKER} ...`):\n{}",
        long.join("\n")
    );
}
