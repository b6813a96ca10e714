//! The layers of `src/host` (see `docs/architecture.md` and the table in
//! `src/host/mod.rs`): each module imports only from the layers below its
//! own, from its siblings, or from its own children; never from its
//! parent or the crate root, and no import circle. Read from the sources,
//! so that a new import that breaks the table fails here, not in review.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Each top-level module of `src/host` and its layer: a module may import
/// from a lower layer only (`crate::wire`, the protocol, is layer 0).
const LAYERS: &[(&str, u8)] = &[
    ("logging", 1),
    ("metrics", 1),
    ("edge", 1),
    ("config", 2),
    ("runner", 3),
    ("source", 4),
    ("proxy", 5),
    ("server", 6),
    ("admin", 6),
    ("gateway", 7),
    ("error", 8),
    ("demo", 8),
    ("app", 9),
];

/// A module's path below `host` (`["proxy", "pipeline"]`; `[]` is
/// `host` itself).
type ModPath = Vec<String>;

/// Every module of `src/host`, with its source.
fn read_host() -> BTreeMap<ModPath, String> {
    fn walk(dir: &Path, prefix: &[String], out: &mut BTreeMap<ModPath, String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_str().unwrap().to_owned();
            let mut here = prefix.to_vec();
            if path.is_dir() {
                here.push(name);
                walk(&path, &here, out);
            } else if let Some(stem) = name.strip_suffix(".rs") {
                if stem != "mod" {
                    here.push(stem.to_owned());
                }
                out.insert(here, std::fs::read_to_string(&path).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/host");
    walk(&root, &[], &mut out);
    out
}

/// The code of `text` that imports: without comments and without the unit
/// tests module (by convention the last item of a file; its `super::`
/// means the file itself, and tests may reach anywhere).
fn code(text: &str) -> String {
    let text = match text.find("#[cfg(test)]\nmod tests") {
        Some(at) => &text[..at],
        None => text,
    };
    text.lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Expands a use tree (`a::{b, c::{d, e}}`) into its paths.
fn expand(tree: &str) -> Vec<String> {
    let tree: String = tree.chars().filter(|c| !c.is_whitespace()).collect();
    let Some(open) = tree.find('{') else {
        return vec![tree];
    };
    let prefix = &tree[..open];
    let close = tree.rfind('}').filter(|&c| c > open).unwrap_or(tree.len());
    let inner = &tree[open + 1..close];
    // Split the inner list at its top-level commas.
    let (mut depth, mut start, mut out) = (0, 0, Vec::new());
    for (i, c) in inner.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                out.extend(
                    expand(&inner[start..i])
                        .into_iter()
                        .map(|p| format!("{prefix}{p}")),
                );
                start = i + 1;
            }
            _ => {}
        }
    }
    out.extend(
        expand(&inner[start..])
            .into_iter()
            .map(|p| format!("{prefix}{p}")),
    );
    out.retain(|p| !p.ends_with("::") && !p.is_empty());
    out
}

/// The paths that `text` names through `crate::` or `super::`: in `use`
/// declarations and in expressions.
fn paths(text: &str) -> BTreeSet<String> {
    let code = code(text);
    let mut out = BTreeSet::new();
    // `use` declarations: a line that starts one, up to its `;`.
    for (at, _) in code.match_indices('\n').chain([(0, "")]) {
        let line = code[at..].trim_start();
        let line = ["pub use ", "pub(crate) use ", "pub(super) use ", "use "]
            .iter()
            .find_map(|start| line.strip_prefix(start));
        let Some(decl) = line.and_then(|l| l.split(';').next()) else {
            continue;
        };
        // `a as b` keeps `a`: the alias is marked before spaces go.
        let tree = decl.split_whitespace().collect::<Vec<_>>().join(" ");
        for path in expand(&tree.replace(" as ", "@")) {
            let path = path.split('@').next().unwrap_or_default().to_owned();
            if path.starts_with("crate::") || path.starts_with("super::") {
                out.insert(path);
            }
        }
    }
    // Paths in expressions and types: `crate::host::metrics::request(...)`.
    let bytes = code.as_bytes();
    for start in ["crate::", "super::"] {
        let mut from = 0;
        while let Some(at) = code[from..].find(start) {
            let at = from + at;
            from = at + start.len();
            if at > 0 && (bytes[at - 1].is_ascii_alphanumeric() || bytes[at - 1] == b'_') {
                continue;
            }
            let end = code[at..]
                .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                .map_or(code.len(), |e| at + e);
            // `crate::host::{a, b}` is a `use` tree, read above.
            if code[end..].starts_with('{') {
                continue;
            }
            let path = code[at..end].trim_end_matches(':');
            if path.matches("::").count() >= 1 && !path.ends_with("super") {
                out.insert(path.to_owned());
            }
        }
    }
    out
}

/// The module that `path`, written in module `from`, imports from: the
/// longest prefix of it that is a module. `None` for the protocol
/// (`crate::wire`).
fn target(
    path: &str,
    from: &ModPath,
    modules: &BTreeMap<ModPath, String>,
) -> Result<Option<ModPath>, String> {
    let segs: Vec<&str> = path.split("::").filter(|s| !s.is_empty()).collect();
    let mut full: ModPath = match segs.first() {
        Some(&"crate") => match segs.get(1) {
            Some(&"wire") => return Ok(None),
            Some(&"host") => segs[2..].iter().map(|s| s.to_string()).collect(),
            _ => return Err(format!("`{path}` imports from the crate root")),
        },
        Some(&"super") => {
            // `super` is the parent module, whether `from` is a file or a
            // folder's `mod.rs`.
            let ups = segs.iter().take_while(|s| **s == "super").count();
            let mut base = from.clone();
            for _ in 0..ups {
                if base.pop().is_none() {
                    return Err(format!("`{path}` climbs above host"));
                }
            }
            base.extend(segs[ups..].iter().map(|s| s.to_string()));
            base
        }
        _ => return Ok(None),
    };
    while !full.is_empty() && !modules.contains_key(&full) {
        full.pop();
    }
    Ok(Some(full))
}

/// The layer of module `m` (`u8::MAX` for `host` itself, which only
/// lists its children).
fn layer(m: &ModPath) -> Result<u8, String> {
    match m.first() {
        None => Ok(u8::MAX),
        Some(top) => LAYERS
            .iter()
            .find(|(name, _)| name == top)
            .map(|&(_, l)| l)
            .ok_or_else(|| format!("`host::{top}` has no layer in the table")),
    }
}

fn show(m: &ModPath) -> String {
    if m.is_empty() {
        "host".to_owned()
    } else {
        format!("host::{}", m.join("::"))
    }
}

/// Every breach of the layer rules in `modules` (module path and source).
fn breaches(modules: &BTreeMap<ModPath, String>) -> Vec<String> {
    let mut found = Vec::new();
    let mut edges: BTreeMap<ModPath, BTreeSet<ModPath>> = BTreeMap::new();
    for (from, text) in modules {
        // A unit tests module in its own file (`config/tests.rs`) may reach
        // anywhere, as one at the end of a file does.
        if from.last().is_some_and(|m| m == "tests") {
            continue;
        }
        if let Err(e) = layer(from) {
            found.push(e);
        }
        for path in paths(text) {
            let to = match target(&path, from, modules) {
                Ok(Some(to)) => to,
                Ok(None) => continue,
                Err(e) => {
                    found.push(format!("{}: {e}", show(from)));
                    continue;
                }
            };
            if &to == from {
                continue;
            }
            if from.starts_with(&to) {
                found.push(format!(
                    "{}: `{path}` imports from its parent {}",
                    show(from),
                    show(&to)
                ));
                continue;
            }
            if to.first() != from.first() && !from.is_empty() {
                if let (Ok(lf), Ok(lt)) = (layer(from), layer(&to)) {
                    if lt >= lf {
                        found.push(format!(
                            "{} (layer {lf}): `{path}` imports from {} (layer {lt})",
                            show(from),
                            show(&to)
                        ));
                    }
                }
            }
            edges.entry(from.clone()).or_default().insert(to);
        }
    }
    // Circles between modules (siblings in one folder included).
    fn visit(
        m: &ModPath,
        edges: &BTreeMap<ModPath, BTreeSet<ModPath>>,
        stack: &mut Vec<ModPath>,
        done: &mut BTreeSet<ModPath>,
        found: &mut Vec<String>,
    ) {
        if let Some(at) = stack.iter().position(|s| s == m) {
            let circle: Vec<String> = stack[at..].iter().chain([m]).map(show).collect();
            found.push(format!("import circle: {}", circle.join(" -> ")));
            return;
        }
        if !done.insert(m.clone()) {
            return;
        }
        stack.push(m.clone());
        for next in edges.get(m).into_iter().flatten() {
            visit(next, edges, stack, done, found);
        }
        stack.pop();
    }
    let mut done = BTreeSet::new();
    for m in edges.keys() {
        visit(m, &edges, &mut Vec::new(), &mut done, &mut found);
    }
    found
}

#[test]
fn src_host_keeps_its_layers() {
    let modules = read_host();
    assert!(modules.len() > 20, "read src/host: {:?}", modules.keys());
    let found = breaches(&modules);
    assert!(
        found.is_empty(),
        "the layers of src/host are broken:\n{}",
        found.join("\n")
    );
}

/// A small host with one module per rule, to show that the checker fails.
fn fake(files: &[(&str, &str)]) -> Vec<String> {
    let modules: BTreeMap<ModPath, String> = files
        .iter()
        .map(|(path, text)| {
            let m: ModPath = path
                .split('/')
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect();
            (m, text.to_string())
        })
        .collect();
    breaches(&modules)
}

const GOOD: &[(&str, &str)] = &[
    (
        "",
        "pub mod config;\npub mod proxy;\npub mod runner;\npub use proxy::Proxy;",
    ),
    ("config", "use crate::wire::Needs;\npub struct Route;"),
    ("runner", "pub mod client;\npub mod supervisor;"),
    ("runner/supervisor", "use crate::host::config::Route;"),
    (
        "runner/client",
        "use super::supervisor::Lease;\nuse crate::host::config::{self, Route};",
    ),
    ("proxy", "pub mod answer;\npub mod pipeline;"),
    ("proxy/answer", "pub type Body = ();"),
    (
        "proxy/pipeline",
        "use super::answer::Body;\nuse crate::host::{config, runner::client::ExtClient};\n\
         fn f() { crate::host::runner::supervisor::restart(); }\n\
         #[cfg(test)]\nmod tests {\n    use super::*;\n    use crate::host::Everything;\n}",
    ),
];

#[test]
fn the_checker_passes_a_host_that_keeps_its_layers() {
    assert_eq!(fake(GOOD), Vec::<String>::new());
}

#[test]
fn the_checker_fails_an_import_from_a_higher_layer() {
    let mut files = GOOD.to_vec();
    files.push(("runner/set", "use crate::host::proxy::answer::Body;"));
    let found = fake(&files);
    assert!(
        found
            .iter()
            .any(|f| f.contains("host::runner::set (layer 3)")
                && f.contains("imports from host::proxy::answer (layer 5)")),
        "{found:?}"
    );
    // Grouped, and in an expression rather than a `use`.
    let mut files = GOOD.to_vec();
    files.push(("config/model", "use crate::host::{runner::{client::X}};"));
    files.push(("edge", "fn f() { crate::host::config::parse(); }"));
    let found = fake(&files);
    assert!(
        found
            .iter()
            .any(|f| f.contains("host::config::model (layer 2)")),
        "{found:?}"
    );
    assert!(
        found.iter().any(|f| f.contains("host::edge (layer 1)")),
        "{found:?}"
    );
}

#[test]
fn the_checker_fails_an_import_from_the_parent() {
    let mut files = GOOD.to_vec();
    files.push(("proxy/router", "use super::Body;"));
    let found = fake(&files);
    assert_eq!(
        found,
        vec!["host::proxy::router: `super::Body` imports from its parent host::proxy".to_owned()]
    );
    let mut files = GOOD.to_vec();
    files.push((
        "proxy/router",
        "use crate::host::proxy::{Proxy, answer::Body};",
    ));
    let found = fake(&files);
    assert_eq!(found.len(), 1, "{found:?}");
    let mut files = GOOD.to_vec();
    files.push((
        "admin",
        "fn f() { crate::host::run(); crate::log_format(); }",
    ));
    let found = fake(&files);
    assert!(
        found
            .iter()
            .any(|f| f.contains("imports from its parent host")),
        "{found:?}"
    );
    assert!(
        found
            .iter()
            .any(|f| f.contains("imports from the crate root")),
        "{found:?}"
    );
}

#[test]
fn the_checker_fails_a_circle_and_a_module_without_a_layer() {
    let mut files = GOOD.to_vec();
    files.retain(|(p, _)| *p != "runner/supervisor");
    files.push(("runner/supervisor", "use super::client::ExtClient;"));
    let found = fake(&files);
    assert!(
        found.iter().any(|f| f.starts_with("import circle: ")
            && f.contains("host::runner::client")
            && f.contains("host::runner::supervisor")),
        "{found:?}"
    );
    let mut files = GOOD.to_vec();
    files.push(("attic", ""));
    assert_eq!(
        fake(&files),
        vec!["`host::attic` has no layer in the table".to_owned()]
    );
}
