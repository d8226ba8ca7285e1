//! The import graph agrees with the layers `src/lib.rs` and the README describe: a module uses
//! modules of its own layer or the ones below, never above. Read from the source, as a reader
//! would: every `crate::` path outside comments and test modules.

use std::collections::BTreeSet;
use std::path::Path;

/// The layers, lowest first (`src/lib.rs` says what each holds).
const LAYERS: [(&str, &[&str]); 6] = [
    ("core", &["domain", "entitlements", "judgement", "policy", "projection", "snapshot"]),
    (
        "edges",
        &[
            "auth",
            "audit",
            "billabear",
            "config",
            "db",
            "jwt",
            "seal",
            "sessions",
            "memo",
            "mirror",
            "shutdown",
            "subscriptions",
            "telemetry",
        ],
    ),
    // The services in three layers: what is kept (copies of Postgres and BillaBear, and the
    // tables they stand for), what judges on it, and what takes requests in and tells of changes.
    (
        "state",
        &[
            "cache",
            "feature_counts",
            "health",
            "invalidation",
            "outbox",
            "overrides",
            "pending",
            "retention",
            "rules",
            "webhooks",
        ],
    ),
    ("judging", &["check", "enforce", "fetch", "reservations"]),
    ("intake", &["admission", "inbound", "limits", "transitions"]),
    ("http", &["cli", "console", "demo", "error", "routes", "sim", "startup"]),
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|(_, modules)| modules.contains(&module))
}

/// The text without comments and `#[cfg(test)] mod … { … }` blocks.
fn code(text: &str) -> String {
    let mut kept = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("#[cfg(test)]") {
        kept.push_str(&rest[..at]);
        let after = &rest[at..];
        match after.find('{').filter(|open| after[..*open].contains("mod ")) {
            Some(open) => {
                let mut depth = 0;
                let mut end = after.len();
                for (i, c) in after[open..].char_indices() {
                    depth += match c {
                        '{' => 1,
                        '}' => -1,
                        _ => 0,
                    };
                    if depth == 0 {
                        end = open + i + 1;
                        break;
                    }
                }
                rest = &after[end..];
            }
            None => {
                kept.push_str("#[cfg(test)]");
                rest = &after["#[cfg(test)]".len()..];
            }
        }
    }
    kept.push_str(rest);
    kept.lines().map(|line| line.split("//").next().unwrap_or("")).collect::<Vec<_>>().join("\n")
}

/// The crate's top-level modules that `text` names: `crate::x` paths and `use crate::{x, y}`.
fn uses(text: &str) -> BTreeSet<String> {
    let mut used = BTreeSet::new();
    for (at, _) in text.match_indices("crate::") {
        let after = &text[at + "crate::".len()..];
        if let Some(group) = after.strip_prefix('{') {
            let inner = &group[..group.find('}').unwrap_or(group.len())];
            for item in inner.split(',') {
                let name: String =
                    item.trim().chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                used.insert(name);
            }
        } else {
            used.insert(after.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect());
        }
    }
    used.retain(|name| !name.is_empty());
    used
}

fn modules(dir: &Path, found: &mut Vec<(String, String)>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            modules(&path, found);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let relative = path.strip_prefix(env!("CARGO_MANIFEST_DIR")).unwrap().display().to_string();
            found.push((relative, std::fs::read_to_string(&path).unwrap()));
        }
    }
}

#[test]
fn every_module_uses_only_its_own_layer_and_the_ones_below() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    modules(&src, &mut files);
    let mut unplaced = Vec::new();
    let mut upward = Vec::new();
    for (file, text) in &files {
        let top = file.trim_start_matches("src/").split(['/', '.']).next().unwrap_or_default();
        if top == "lib" || top == "main" {
            continue;
        }
        let Some(here) = layer_of(top) else {
            unplaced.push(top.to_owned());
            continue;
        };
        for used in uses(&code(text)) {
            match layer_of(&used) {
                Some(there) if there > here => {
                    upward.push(format!("{file} ({}) uses {used} ({})", LAYERS[here].0, LAYERS[there].0))
                }
                _ => {}
            }
        }
    }
    unplaced.sort();
    unplaced.dedup();
    assert!(unplaced.is_empty(), "modules in no layer (add them to LAYERS and src/lib.rs): {unplaced:?}");
    assert!(upward.is_empty(), "imports that point up a layer:\n{}", upward.join("\n"));
}

/// What a handler may not name: the tables' own doors. Routes and the console call services,
/// which own their tables' reads and writes.
const NOT_FOR_HANDLERS: [&str; 4] = ["::store", "sqlx", "PgPool", "PgConnection"];

#[test]
fn routes_and_the_console_reach_tables_only_through_services() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    for dir in ["routes", "console"] {
        modules(&src.join(dir), &mut files);
    }
    let mut found = Vec::new();
    for (file, text) in &files {
        let code = code(text);
        for (n, line) in code.lines().enumerate() {
            if NOT_FOR_HANDLERS.iter().any(|name| line.contains(name)) {
                found.push(format!("{file} (line {} without comments and tests): {}", n + 1, line.trim()));
            }
        }
    }
    assert!(files.len() > 10, "read only {} files", files.len());
    assert!(
        found.is_empty(),
        "handlers that reach a table directly (call a service instead):\n{}",
        found.join("\n")
    );
}

#[test]
fn the_reader_sees_what_a_module_uses() {
    let text = "use crate::{cache::Snapshot, domain};\n// crate::routes\n#[cfg(test)]\nmod tests {\n    use crate::error;\n}\nfn f() { crate::policy::decide(); }";
    assert_eq!(uses(&code(text)).into_iter().collect::<Vec<_>>(), ["cache", "domain", "policy"]);
}
