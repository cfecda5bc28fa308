//! The shape of `src/`, read from its imports: no import circles between modules, and no pipeline
//! stage importing the builder (`src/pipeline/mod.rs`).
//!
//! Why a test: a circle means neither module can be read, tested or replaced without the other,
//! and circles come back one convenient `use` at a time. docs/architecture.md draws the floors
//! this keeps true.
//!
//! How the graph is made: every file under `src/` is a module (`src/a/b.rs` and `src/a/b/mod.rs`
//! are `a::b`; an inline `mod x { … }` is `…::x`). Every path that starts with `crate::`,
//! `super::`, `self::` or the name of a child module the file declares (and `wss::` in `main.rs`,
//! the binary) — in a `use`, nested groups expanded, or inline in code — is an arrow to the
//! longest known module it names; an item of
//! `a/mod.rs` (`super::Item` from `a::b`) is an arrow to `a`. Comments, strings and
//! `#[cfg(test)]` items are left out: tests may reach anywhere. The reading is textual, so it
//! stays dependency-free; its parser is tested below on the forms the code uses.

use std::{
    collections::{BTreeMap, BTreeSet, VecDeque},
    fs,
    path::{Path, PathBuf},
};

/// One import arrow, with the place that makes it (the first one seen).
#[derive(Debug, Clone)]
struct Arrow {
    file: String,
    line: usize,
    path: String,
}

/// Module name → its arrows (one per target module).
type Graph = BTreeMap<String, BTreeMap<String, Arrow>>;

#[test]
fn no_import_circles_in_src() {
    let graph = graph_of(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
    assert!(graph.len() > 20, "src/ was not read: {} modules", graph.len());
    let circles = circles(&graph);
    let shown: Vec<String> = circles.iter().map(|c| describe_circle(&graph, c)).collect();
    assert!(
        shown.is_empty(),
        "{} import circle(s) in src/; break each by moving what both sides need to a module of its own:\n{}",
        shown.len(),
        shown.join("\n")
    );
}

#[test]
fn no_pipeline_stage_imports_the_builder() {
    let graph = graph_of(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
    let offending = stage_to_builder(&graph);
    assert!(
        offending.is_empty(),
        "pipeline stages import the builder (src/pipeline/mod.rs); take the message types from pipeline::messages instead:\n{}",
        offending.join("\n")
    );
}

/// Prints every module and its arrows, with the place that makes each (for docs/architecture.md
/// and for finding what a circle is made of): `cargo test --test architecture -- --ignored
/// --nocapture`.
#[test]
#[ignore = "prints the graph; asserts nothing"]
fn print_the_graph() {
    let graph = graph_of(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
    for (from, arrows) in &graph {
        println!("{from}");
        for (to, arrow) in arrows {
            println!("  -> {to}  ({}:{}: {})", arrow.file, arrow.line, arrow.path);
        }
    }
}

/// Arrows from a module under `pipeline::` to `pipeline` itself.
fn stage_to_builder(graph: &Graph) -> Vec<String> {
    let mut offending = Vec::new();
    for (from, arrows) in graph {
        if from.starts_with("pipeline::") {
            if let Some(arrow) = arrows.get("pipeline") {
                offending.push(format!("  {from} -> pipeline  ({}:{}: {})", arrow.file, arrow.line, arrow.path));
            }
        }
    }
    offending
}

/// Each circle: the strongly connected components of more than one module, each shown by one
/// shortest cycle through each of its modules (the same cycle once).
fn circles(graph: &Graph) -> Vec<Vec<String>> {
    let mut out: Vec<Vec<String>> = Vec::new();
    let mut components = strongly_connected(graph);
    components.sort();
    for component in components {
        for start in component.iter().filter(|_| component.len() > 1) {
            let cycle = shortest_cycle(graph, start, &component);
            let mut key = cycle.clone();
            key.sort();
            if !out.iter().any(|c| {
                let mut seen = c.clone();
                seen.sort();
                seen == key
            }) {
                out.push(cycle);
            }
        }
    }
    out
}

fn describe_circle(graph: &Graph, cycle: &[String]) -> String {
    let mut text = format!("  circle: {} -> {}", cycle.join(" -> "), cycle[0]);
    for (i, from) in cycle.iter().enumerate() {
        let to = &cycle[(i + 1) % cycle.len()];
        let arrow = &graph[from][to];
        text.push_str(&format!("\n    {from} -> {to}  ({}:{}: {})", arrow.file, arrow.line, arrow.path));
    }
    text
}

/// Tarjan's algorithm, iterative enough for a few hundred modules (recursion depth = modules).
fn strongly_connected(graph: &Graph) -> Vec<BTreeSet<String>> {
    struct State<'g> {
        graph: &'g Graph,
        index: BTreeMap<&'g str, usize>,
        low: BTreeMap<&'g str, usize>,
        stack: Vec<&'g str>,
        on_stack: BTreeSet<&'g str>,
        out: Vec<BTreeSet<String>>,
    }
    fn visit<'g>(s: &mut State<'g>, v: &'g str) {
        let n = s.index.len();
        s.index.insert(v, n);
        s.low.insert(v, n);
        s.stack.push(v);
        s.on_stack.insert(v);
        for w in s.graph[v].keys() {
            let w = w.as_str();
            if !s.index.contains_key(w) {
                visit(s, w);
                let low = s.low[v].min(s.low[w]);
                s.low.insert(v, low);
            } else if s.on_stack.contains(w) {
                let low = s.low[v].min(s.index[w]);
                s.low.insert(v, low);
            }
        }
        if s.low[v] == s.index[v] {
            let mut component = BTreeSet::new();
            loop {
                let w = s.stack.pop().expect("v is on the stack");
                s.on_stack.remove(w);
                component.insert(w.to_owned());
                if w == v {
                    break;
                }
            }
            s.out.push(component);
        }
    }
    let mut s =
        State { graph, index: BTreeMap::new(), low: BTreeMap::new(), stack: Vec::new(), on_stack: BTreeSet::new(), out: Vec::new() };
    for v in graph.keys() {
        if !s.index.contains_key(v.as_str()) {
            visit(&mut s, v);
        }
    }
    s.out
}

/// The shortest path from `start` back to itself inside `component` (breadth first).
fn shortest_cycle(graph: &Graph, start: &str, component: &BTreeSet<String>) -> Vec<String> {
    let mut came_from: BTreeMap<&str, &str> = BTreeMap::new();
    let mut queue = VecDeque::from([start]);
    while let Some(v) = queue.pop_front() {
        for w in graph[v].keys() {
            if !component.contains(w) {
                continue;
            }
            if w == start {
                let mut cycle = vec![v.to_owned()];
                let mut at = v;
                while at != start {
                    at = came_from[at];
                    cycle.push(at.to_owned());
                }
                cycle.reverse();
                return cycle;
            }
            if !came_from.contains_key(w.as_str()) {
                came_from.insert(w, v);
                queue.push_back(w);
            }
        }
    }
    unreachable!("{start} is in a strongly connected component of more than one module")
}

// ---- reading src/ ----

/// The module graph of the library rooted at `src/lib.rs` (modules `a::b`, the root `crate`) and
/// of the binary rooted at `src/main.rs` (modules `main::a::b`, the root `main`), whose paths
/// into the library start with `wss::`.
fn graph_of(src: &Path) -> Graph {
    let mut files = Vec::new();
    collect_rs(src, &mut files);
    files.sort();
    let read = |file: &Path| strip_tests(&blank_comments_and_strings(&fs::read_to_string(file).expect("src/ files are readable")));
    let binary_tops = fs::metadata(src.join("main.rs")).map(|_| declared_modules(&read(&src.join("main.rs")))).unwrap_or_default();
    let mut sources = Vec::new();
    let mut modules: BTreeSet<String> = BTreeSet::new();
    for file in &files {
        let module = module_of(src, file, &binary_tops);
        let text = read(file);
        for inline in inline_modules(&text) {
            modules.insert(join(&module, &inline));
        }
        modules.insert(module.clone());
        sources.push((module, file.strip_prefix(src.parent().unwrap_or(src)).unwrap_or(file).display().to_string(), text));
    }
    let mut graph = Graph::new();
    for (module, file, text) in &sources {
        let arrows = graph.entry(module.clone()).or_default();
        let children = declared_modules(text);
        for (line, path) in paths_in(text, is_binary(module), &children) {
            let Some(absolute) = absolute(module, &path, &children) else { continue };
            let to = longest_module(&modules, &absolute);
            if to != *module {
                arrows.entry(to).or_insert(Arrow { file: file.clone(), line, path: path.join("::") });
            }
        }
    }
    for module in &modules {
        graph.entry(module.clone()).or_default();
    }
    graph
}

fn is_binary(module: &str) -> bool {
    module == "main" || module.starts_with("main::")
}

fn collect_rs(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).expect("src/ is readable") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            collect_rs(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `src/a/b.rs`, `src/a/b/mod.rs` → `a::b`; `src/lib.rs` → `crate`; `src/main.rs` → `main`, and
/// a module of the binary (`a` among `binary_tops`) → `main::a::b`.
fn module_of(src: &Path, file: &Path, binary_tops: &BTreeSet<String>) -> String {
    let relative = file.strip_prefix(src).expect("under src/").with_extension("");
    let mut parts: Vec<String> = relative.iter().map(|p| p.to_string_lossy().into_owned()).collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    match parts.join("::").as_str() {
        "lib" => "crate".to_owned(),
        "main" => "main".to_owned(),
        other if binary_tops.contains(&parts[0]) => format!("main::{other}"),
        other => other.to_owned(),
    }
}

fn join(module: &str, child: &str) -> String {
    if module == "crate" {
        child.to_owned()
    } else {
        format!("{module}::{child}")
    }
}

/// The parent of a module (a root for a top-level one), or `None` for a root.
fn parent(module: &str) -> Option<String> {
    match module.rsplit_once("::") {
        Some((parent, _)) => Some(parent.to_owned()),
        None if module == "crate" || module == "main" => None,
        None => Some("crate".to_owned()),
    }
}

/// The segments of a module's name, a root's none in the library (`crate`) and `main` in the binary.
fn segments_of(module: &str) -> Vec<String> {
    if module == "crate" {
        Vec::new()
    } else {
        module.split("::").map(str::to_owned).collect()
    }
}

/// A path as written (`super::x::Y`) made absolute (`a::x::Y`, `main::x::Y`, or `Y` for an item
/// of the library's root), from inside `module`; `None` for paths into other crates.
fn absolute(module: &str, path: &[String], children: &BTreeSet<String>) -> Option<Vec<String>> {
    let mut segments = path.iter().peekable();
    let first = segments.next()?;
    let mut base: Vec<String> = match first.as_str() {
        "crate" if is_binary(module) => vec!["main".to_owned()],
        "crate" | "wss" => Vec::new(),
        "self" | "super" => {
            let mut at = module.to_owned();
            if first == "super" {
                at = parent(&at)?;
            }
            while segments.peek().is_some_and(|s| *s == "super") {
                at = parent(&at)?;
                segments.next();
            }
            segments_of(&at)
        }
        child if children.contains(child) => {
            let mut base = segments_of(module);
            base.push(child.to_owned());
            base
        }
        _ => return None,
    };
    base.extend(segments.filter(|s| *s != "self").cloned());
    Some(base)
}

/// The longest prefix of `path` that is a module; else the root (`crate`, or `main` for a path
/// into the binary).
fn longest_module(modules: &BTreeSet<String>, path: &[String]) -> String {
    (1..=path.len()).rev().map(|n| path[..n].join("::")).find(|m| modules.contains(m)).unwrap_or_else(|| {
        if path.first().is_some_and(|s| s == "main") {
            "main".to_owned()
        } else {
            "crate".to_owned()
        }
    })
}

/// Names of every `mod name;` and `mod name {` the file declares: a path may start with them.
fn declared_modules(text: &str) -> BTreeSet<String> {
    let tokens = tokenize(text);
    tokens.windows(3).filter(|w| w[0].1 == "mod" && is_ident(&w[1].1) && (w[2].1 == "{" || w[2].1 == ";")).map(|w| w[1].1.clone()).collect()
}

/// Names of inline `mod name {` items.
fn inline_modules(text: &str) -> Vec<String> {
    let tokens = tokenize(text);
    let mut out = Vec::new();
    for w in tokens.windows(3) {
        if w[0].1 == "mod" && is_ident(&w[1].1) && w[2].1 == "{" {
            out.push(w[1].1.clone());
        }
    }
    out
}

/// Every path starting with `crate`/`self`/`super`, a declared child module (or `wss` in the
/// binary), with its line; `use`
/// trees expanded into one path per leaf.
fn paths_in(text: &str, binary: bool, children: &BTreeSet<String>) -> Vec<(usize, Vec<String>)> {
    let tokens = tokenize(text);
    let mut out = Vec::new();
    let mut i = 0;
    while i < tokens.len() {
        let (line, word) = &tokens[i];
        let starts = matches!(word.as_str(), "crate" | "self" | "super") || (binary && word == "wss") || children.contains(word);
        let follows_path = i > 0 && tokens[i - 1].1 == "::";
        if starts && !follows_path && tokens.get(i + 1).is_some_and(|t| t.1 == "::") {
            let mut leaves = Vec::new();
            i = use_tree(&tokens, i, Vec::new(), &mut leaves);
            out.extend(leaves.into_iter().map(|leaf| (*line, leaf)));
        } else {
            i += 1;
        }
    }
    out
}

/// Reads a use tree (or a plain path) at `i` under `prefix`; pushes one path per leaf and
/// returns the index after it.
fn use_tree(tokens: &[(usize, String)], mut i: usize, mut prefix: Vec<String>, leaves: &mut Vec<Vec<String>>) -> usize {
    loop {
        match tokens.get(i).map(|t| t.1.as_str()) {
            Some("{") => {
                i += 1;
                loop {
                    match tokens.get(i).map(|t| t.1.as_str()) {
                        Some("}") => return i + 1,
                        Some(",") => i += 1,
                        None => return i,
                        Some(_) => i = use_tree(tokens, i, prefix.clone(), leaves),
                    }
                }
            }
            Some(word) if is_ident(word) || word == "*" => {
                prefix.push(word.to_owned());
                i += 1;
                if tokens.get(i).is_some_and(|t| t.1 == "::") {
                    i += 1;
                    continue;
                }
                if tokens.get(i).is_some_and(|t| t.1 == "as") {
                    i += 2;
                }
                leaves.push(prefix);
                return i;
            }
            _ => {
                leaves.push(prefix);
                return i;
            }
        }
    }
}

fn is_ident(word: &str) -> bool {
    word.chars().next().is_some_and(|c| c.is_alphabetic() || c == '_') && word.chars().all(|c| c.is_alphanumeric() || c == '_')
}

/// Identifiers, `::` and single punctuation characters, each with its line.
fn tokenize(text: &str) -> Vec<(usize, String)> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let (mut i, mut line) = (0, 1);
    while i < chars.len() {
        let c = chars[i];
        if c == '\n' {
            line += 1;
            i += 1;
        } else if c.is_whitespace() {
            i += 1;
        } else if c.is_alphanumeric() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            out.push((line, chars[start..i].iter().collect()));
        } else if c == ':' && chars.get(i + 1) == Some(&':') {
            out.push((line, "::".to_owned()));
            i += 2;
        } else {
            out.push((line, c.to_string()));
            i += 1;
        }
    }
    out
}

/// The text with comments, string and char literals replaced by spaces (newlines kept, so that
/// lines still count right).
fn blank_comments_and_strings(text: &str) -> String {
    let c: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let blank = |out: &mut String, s: &[char]| out.extend(s.iter().map(|&ch| if ch == '\n' { '\n' } else { ' ' }));
    let mut i = 0;
    while i < c.len() {
        let prev_ident = i > 0 && (c[i - 1].is_alphanumeric() || c[i - 1] == '_');
        if c[i] == '/' && c.get(i + 1) == Some(&'/') {
            let end = c[i..].iter().position(|&ch| ch == '\n').map_or(c.len(), |p| i + p);
            blank(&mut out, &c[i..end]);
            i = end;
        } else if c[i] == '/' && c.get(i + 1) == Some(&'*') {
            let (mut depth, mut j) = (1, i + 2);
            while j < c.len() && depth > 0 {
                if c[j] == '/' && c.get(j + 1) == Some(&'*') {
                    depth += 1;
                    j += 2;
                } else if c[j] == '*' && c.get(j + 1) == Some(&'/') {
                    depth -= 1;
                    j += 2;
                } else {
                    j += 1;
                }
            }
            blank(&mut out, &c[i..j]);
            i = j;
        } else if (c[i] == 'r' || (c[i] == 'b' && c.get(i + 1) == Some(&'r'))) && !prev_ident && raw_string_start(&c, i).is_some() {
            let (hashes, body) = raw_string_start(&c, i).expect("checked");
            let closing: Vec<char> = std::iter::once('"').chain(std::iter::repeat_n('#', hashes)).collect();
            let end = (body..c.len()).find(|&j| c[j..].starts_with(&closing)).map_or(c.len(), |j| j + closing.len());
            blank(&mut out, &c[i..end]);
            i = end;
        } else if c[i] == '"' {
            let mut j = i + 1;
            while j < c.len() && c[j] != '"' {
                j += if c[j] == '\\' { 2 } else { 1 };
            }
            let end = (j + 1).min(c.len());
            blank(&mut out, &c[i..end]);
            i = end;
        } else if c[i] == '\'' {
            // A char literal ('x', '\n', '\u{1F600}') or a lifetime ('a).
            let end = if c.get(i + 1) == Some(&'\\') {
                (i + 2..c.len()).find(|&j| c[j] == '\'').map_or(c.len(), |j| j + 1)
            } else if c.get(i + 2) == Some(&'\'') {
                i + 3
            } else {
                i + 1
            };
            blank(&mut out, &c[i..end]);
            i = end;
        } else {
            out.push(c[i]);
            i += 1;
        }
    }
    out
}

/// At a raw string (`r"`, `r#"`, `br##"` …): the number of `#` and the index after the quote.
fn raw_string_start(c: &[char], i: usize) -> Option<(usize, usize)> {
    let mut j = if c[i] == 'b' { i + 2 } else { i + 1 };
    let mut hashes = 0;
    while c.get(j) == Some(&'#') {
        hashes += 1;
        j += 1;
    }
    (c.get(j) == Some(&'"')).then_some((hashes, j + 1))
}

/// The text with every `#[cfg(test)]` item blanked (a `mod tests { … }`, a `use`, a `fn`).
fn strip_tests(text: &str) -> String {
    const MARK: &str = "#[cfg(test)]";
    let mut out: Vec<char> = text.chars().collect();
    let mut from = 0;
    loop {
        let as_string: String = out.iter().collect();
        let Some(found) = as_string[from..].find(MARK) else { break };
        let start_byte = from + found;
        let start = as_string[..start_byte].chars().count();
        let mut i = start + MARK.chars().count();
        let mut depth = 0usize;
        let mut end = out.len();
        while i < out.len() {
            match out[i] {
                ';' if depth == 0 => {
                    end = i + 1;
                    break;
                }
                '{' => depth += 1,
                '}' => {
                    depth = depth.saturating_sub(1);
                    if depth == 0 {
                        end = i + 1;
                        break;
                    }
                }
                _ => {}
            }
            i += 1;
        }
        for ch in &mut out[start..end] {
            if *ch != '\n' {
                *ch = ' ';
            }
        }
        from = as_string[..start_byte].len();
    }
    out.into_iter().collect()
}

// ---- the reader itself, tested on the forms src/ uses ----

fn graph_from(files: &[(&str, &str)]) -> Graph {
    let dir = std::env::temp_dir().join(format!("wss-architecture-{}-{}", std::process::id(), files.len()));
    let _ = fs::remove_dir_all(&dir);
    for (path, text) in files {
        let file = dir.join("src").join(path);
        fs::create_dir_all(file.parent().expect("has a parent")).expect("temp dir is writable");
        fs::write(file, text).expect("temp dir is writable");
    }
    let graph = graph_of(&dir.join("src"));
    fs::remove_dir_all(&dir).expect("temp dir is removable");
    graph
}

fn arrows(graph: &Graph, from: &str) -> Vec<String> {
    graph[from].keys().cloned().collect()
}

#[test]
fn the_reader_finds_circles_and_stage_arrows() {
    let graph = graph_from(&[
        ("lib.rs", "pub mod a;\npub mod b;\npub mod p;\npub mod proto { pub struct X; }\npub use a::Thing;\n"),
        (
            "a.rs",
            "use crate::{b::{self, Other}, proto::X};\n// use crate::p; (a comment)\nconst S: &str = \"crate::p::q\";\npub struct Thing;\n",
        ),
        ("b.rs", "pub struct Other;\nfn f() { let _ = crate::a::Thing; }\n#[cfg(test)]\nmod tests { use crate::p::q; }\n"),
        ("p/mod.rs", "mod q;\nmod r;\npub struct Msg;\nfn build() { q::run(); }\n"),
        ("p/q.rs", "use super::Msg;\npub fn run() {}\n"),
        ("p/r.rs", "use super::q::run;\nfn g<'a>(c: char) -> bool { c == '{' }\n"),
    ]);
    assert_eq!(arrows(&graph, "a"), ["b", "proto"]);
    assert_eq!(arrows(&graph, "b"), ["a"], "the test module's arrow is left out");
    assert_eq!(arrows(&graph, "crate"), ["a"]);
    assert_eq!(arrows(&graph, "p::r"), ["p::q"]);
    assert_eq!(arrows(&graph, "p::q"), ["p"]);
    assert_eq!(arrows(&graph, "p"), ["p::q"], "a path from a declared child module is an arrow");
    let found = circles(&graph);
    assert_eq!(found.len(), 2, "{found:?}");
    assert_eq!(found[0], ["a", "b"]);
    assert_eq!(found[1], ["p", "p::q"]);
    assert!(describe_circle(&graph, &found[0]).contains("src/b.rs:2: crate::a::Thing"), "{}", describe_circle(&graph, &found[0]));
    assert_eq!(stage_to_builder(&graph).len(), 0, "the rule is for `pipeline` only");
    let graph = graph_from(&[
        ("lib.rs", "pub mod pipeline;\n"),
        ("pipeline/mod.rs", "mod reader;\nuse self::reader::run;\npub struct Msg;\n"),
        ("pipeline/reader.rs", "use super::Msg;\npub fn run() {}\n"),
    ]);
    assert_eq!(stage_to_builder(&graph), ["  pipeline::reader -> pipeline  (src/pipeline/reader.rs:1: super::Msg)"]);
    assert_eq!(circles(&graph), [vec!["pipeline".to_owned(), "pipeline::reader".to_owned()]]);
    let graph = graph_from(&[
        ("lib.rs", "pub mod x;\npub mod y;\n"),
        ("x.rs", "pub fn f() {}\n"),
        ("y.rs", "use crate::x;\n"),
        ("main.rs", "mod cli;\nmod bench;\nfn main() { cli::run(); wss::x::f(); }\n"),
        ("cli.rs", "pub fn run() { super::bench::go() }\n"),
        ("bench/mod.rs", "use crate::cli::run;\nuse wss::y;\n"),
    ]);
    assert_eq!(arrows(&graph, "main"), ["main::cli", "x"], "the binary's own module, and the library's through `wss::`");
    assert_eq!(arrows(&graph, "main::bench"), ["main::cli", "y"]);
    assert_eq!(arrows(&graph, "y"), ["x"]);
    assert_eq!(circles(&graph), [vec!["main::bench".to_owned(), "main::cli".to_owned()]]);
}
