//! Who may use whom among the crate's top-level modules (style.md, "Who may import whom"; the
//! architecture issue: one home for each decision, no import cycles, no upward reach).
//!
//! The rules, checked on the source text of every file under `src/`:
//! 1. every top-level module has a layer in [`LAYERS`], and uses (`crate::x…`, in code and
//!    in its unit tests; comments and string literals do not count) only modules of its own
//!    layer or the layers below;
//! 2. the modules in [`ROOT_ONLY`] are used by `main.rs` and `lib.rs` and nobody else;
//! 3. the graph of top-level modules has no cycle, so two modules of one layer use each other
//!    one way at most.
//!
//! A new module gets a row in [`LAYERS`]; a failure names the file and line of the offending
//! use, or prints the cycle.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The layers, bottom first. A module may use its own layer and the ones below it.
const LAYERS: &[(&str, &[&str])] = &[
    // The vocabulary and the pure rules: SMTP protocol, TLS policy, names, dates, DNS lookups.
    // Nothing here knows the relay's machinery.
    (
        "protocol and policy",
        &[
            "domain",
            "datetime",
            "text",
            "smtp",
            "policy",
            "dns",
            "tls_report",
        ],
    ),
    // What the relay is built on: settings, TLS material, the durable queue, the audit log
    // and the metrics registry.
    (
        "infrastructure",
        &["config", "tls", "queue", "audit", "metrics"],
    ),
    // Mail handling: sessions, delivery, sender authentication, reports, the probe.
    (
        "mail",
        &[
            "inbound",
            "delivery",
            "auth",
            "dsn",
            "compliance",
            "mta_sts",
            "reporting",
        ],
    ),
    // Running the relay: start-up checks, the admin API, operations, start and stop.
    ("operations", &["startup", "admin", "ops", "server"]),
];

/// Used by the binary's entry points only: `server` starts and stops everything else.
const ROOT_ONLY: &[&str] = &["server"];

/// The crate root files: they wire the modules and may use any of them.
const ROOT_FILES: &[&str] = &["main.rs", "lib.rs"];

/// One `crate::module` use: where, and which top-level module it names.
#[derive(Debug, Clone)]
struct Use {
    file: PathBuf,
    line: usize,
    target: String,
}

#[test]
fn modules_use_only_their_own_layer_and_below() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let uses = uses_by_module(&src);
    let mut faults = Vec::new();
    for module in uses.keys().filter(|m| !m.is_empty()) {
        if layer_of(module).is_none() {
            faults.push(format!(
                "src/{module}: no layer in LAYERS (tests/layering.rs)"
            ));
        }
    }
    for (module, list) in &uses {
        for u in list {
            let Some(target_layer) = layer_of(&u.target) else {
                continue; // a name that is not a top-level module (e.g. `crate::VERSION`)
            };
            let at = format!("{}:{}", u.file.display(), u.line);
            if module.is_empty() {
                continue; // main.rs and lib.rs wire everything
            }
            if ROOT_ONLY.contains(&u.target.as_str()) && *module != u.target {
                faults.push(format!(
                    "{at}: {module} uses crate::{}, which only main.rs and lib.rs may use",
                    u.target
                ));
            }
            if let Some(layer) = layer_of(module) {
                if target_layer > layer {
                    faults.push(format!(
                        "{at}: {module} (layer \"{}\") uses crate::{} of the higher layer \"{}\"",
                        LAYERS[layer].0, u.target, LAYERS[target_layer].0
                    ));
                }
            }
        }
    }
    assert!(faults.is_empty(), "layering broken:\n{}", faults.join("\n"));
}

#[test]
fn top_level_modules_form_no_cycle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (module, list) in uses_by_module(&src) {
        if module.is_empty() {
            continue;
        }
        let edges = graph.entry(module.clone()).or_default();
        edges.extend(
            list.into_iter()
                .map(|u| u.target)
                .filter(|t| *t != module && layer_of(t).is_some()),
        );
    }
    if let Some(cycle) = find_cycle(&graph) {
        panic!(
            "import cycle between top-level modules: {}",
            cycle.join(" -> ")
        );
    }
}

/// The checker itself: comments, strings and char literals are not code; grouped and nested
/// `use` lists name every module in them.
#[test]
fn the_scanner_sees_code_only() {
    let text = r##"
use crate::{config::Config, queue::{self, Store}, self};
// crate::server in a comment
/* crate::admin /* nested */ crate::admin */
const QUOTE: char = '"';
fn f<'a>(x: &'a str) -> &'a str { let _ = "crate::metrics"; crate::dsn::build(x) }
let raw = r#"crate::ops"#;
let b = b'\'';
"##;
    let found: Vec<(usize, String)> = references(&code_only(text)).into_iter().collect();
    assert_eq!(
        found,
        vec![
            (2, "config".to_string()),
            (2, "queue".to_string()),
            (6, "dsn".to_string()),
        ]
    );
    let graph = BTreeMap::from([
        ("a".to_string(), BTreeSet::from(["b".to_string()])),
        ("b".to_string(), BTreeSet::from(["c".to_string()])),
        ("c".to_string(), BTreeSet::from(["a".to_string()])),
    ]);
    assert_eq!(
        find_cycle(&graph),
        Some(vec!["a".into(), "b".into(), "c".into(), "a".into()])
    );
}

/// The layer index of a top-level module, bottom = 0.
fn layer_of(module: &str) -> Option<usize> {
    LAYERS
        .iter()
        .position(|(_, modules)| modules.contains(&module))
}

/// Every `crate::x` use in `src/`, by the top-level module of its file (`""`: the crate root).
fn uses_by_module(src: &Path) -> BTreeMap<String, Vec<Use>> {
    let mut files = Vec::new();
    collect_rust_files(src, &mut files);
    assert!(!files.is_empty(), "no source files under {}", src.display());
    let mut uses: BTreeMap<String, Vec<Use>> = BTreeMap::new();
    for file in files {
        let relative = file.strip_prefix(src).expect("below src/");
        let first = relative
            .components()
            .next()
            .and_then(|c| c.as_os_str().to_str())
            .expect("a UTF-8 file name");
        let module = if ROOT_FILES.contains(&first) {
            String::new()
        } else {
            first.trim_end_matches(".rs").to_string()
        };
        let text = std::fs::read_to_string(&file).expect("readable source");
        let entry = uses.entry(module).or_default();
        for (line, target) in references(&code_only(&text)) {
            entry.push(Use {
                file: Path::new("src").join(relative),
                line,
                target,
            });
        }
    }
    uses
}

fn collect_rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("readable directory")
        .map(|e| e.expect("directory entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            collect_rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The source with comments, string and char literals blanked out (line breaks kept, so
/// positions still give line numbers).
fn code_only(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let blank = |c: char| if c == '\n' { '\n' } else { ' ' };
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                out.push(' ');
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < chars.len() {
                if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                    depth += 1;
                    out.push_str("  ");
                    i += 2;
                } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    out.push_str("  ");
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    out.push(blank(chars[i]));
                    i += 1;
                }
            }
        } else if c == 'r' && matches!(next, Some('#') | Some('"')) && !ident_char_before(&chars, i)
        {
            // A raw string: r"…", r#"…"#, …
            let hashes = chars[i + 1..].iter().take_while(|&&h| h == '#').count();
            if chars.get(i + 1 + hashes) != Some(&'"') {
                out.push(c);
                i += 1;
                continue;
            }
            let end: String = std::iter::once('"')
                .chain(std::iter::repeat_n('#', hashes))
                .collect();
            let body_start = i + 2 + hashes;
            let rest: String = chars[body_start..].iter().collect();
            let body_len = rest
                .find(&end)
                .map_or(rest.chars().count(), |at| rest[..at].chars().count());
            for &ch in &chars[i..(body_start + body_len + end.len()).min(chars.len())] {
                out.push(blank(ch));
            }
            i = body_start + body_len + end.len();
        } else if c == '"' {
            out.push(' ');
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                if chars[i] == '\\' {
                    out.push(' ');
                    i += 1;
                }
                if i < chars.len() {
                    out.push(blank(chars[i]));
                    i += 1;
                }
            }
            out.push(' ');
            i += 1;
        } else if c == '\'' {
            // A char literal ('x', '\n', '\''), or a lifetime ('a), which is code.
            let len = if next == Some('\\') {
                chars
                    .get(i + 3..)
                    .and_then(|rest| rest.iter().position(|&ch| ch == '\''))
                    .map(|p| p + 4)
            } else if chars.get(i + 2) == Some(&'\'') {
                Some(3)
            } else {
                None
            };
            match len {
                Some(len) => {
                    out.extend(std::iter::repeat_n(' ', len));
                    i += len;
                }
                None => {
                    out.push(c);
                    i += 1;
                }
            }
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

/// Is `chars[i]` inside an identifier (so an `r` there does not start a raw string)? A lone
/// `b` before it is the prefix of a raw byte string.
fn ident_char_before(chars: &[char], i: usize) -> bool {
    let ident = |j: usize| chars[j].is_alphanumeric() || chars[j] == '_';
    match i {
        0 => false,
        1 => chars[0] != 'b' && ident(0),
        _ if chars[i - 1] == 'b' => ident(i - 2),
        _ => ident(i - 1),
    }
}

/// (line, top-level module) of every `crate::module` and every module in `crate::{…}`.
fn references(code: &str) -> Vec<(usize, String)> {
    let mut found = Vec::new();
    let mut from = 0;
    while let Some(at) = code[from..].find("crate::") {
        let start = from + at;
        from = start + "crate::".len();
        // `$crate::` (macros) counts; `mycrate::` or `tlsgate_crate::` does not.
        let before = code[..start].chars().next_back();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        let line = code[..start].matches('\n').count() + 1;
        let rest = &code[from..];
        if let Some(group) = rest.strip_prefix('{') {
            for name in top_level_names(group) {
                found.push((line, name));
            }
        } else {
            let name = leading_ident(rest);
            if !name.is_empty() {
                found.push((line, name));
            }
        }
    }
    found
}

/// The first identifier of each item of a `{…}` list (the text after `{`), `self` left out.
fn top_level_names(group: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut depth = 0;
    let mut item_start = true;
    for (i, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => break,
            '}' => depth -= 1,
            ',' if depth == 0 => item_start = true,
            c if c.is_whitespace() => {}
            _ if item_start && depth == 0 => {
                item_start = false;
                let name = leading_ident(&group[i..]);
                if !name.is_empty() && name != "self" {
                    names.push(name);
                }
            }
            _ => {}
        }
    }
    names
}

fn leading_ident(text: &str) -> String {
    text.chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect()
}

/// A cycle in `graph`, as the path that closes it (`a -> b -> a`), if there is one.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|n| n == node) {
            let mut cycle = path[at..].to_vec();
            cycle.push(node.to_string());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|node| visit(node, graph, &mut Vec::new(), &mut done))
}
