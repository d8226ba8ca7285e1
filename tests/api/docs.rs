//! The docs held to the code: every configuration key the Markdown names is a key of
//! `config/default.toml`, every key there is in `docs/configuration.md`, every docs page lists its
//! sections, and every relative link and anchor resolves.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// README.md, docs/*.md and the other READMEs a reader reaches from them.
fn markdown_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> =
        ["README.md", "bench/README.md", "clients/typescript/README.md", "clients/python/README.md"]
            .iter()
            .map(|f| root().join(f))
            .collect();
    let mut pages: Vec<PathBuf> = std::fs::read_dir(root().join("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    pages.sort();
    files.extend(pages);
    files
}

/// The text outside fenced code blocks, line by line.
fn prose(text: &str) -> Vec<&str> {
    let mut fenced = false;
    text.lines()
        .filter(|line| {
            if line.trim_start().starts_with("```") {
                fenced = !fenced;
                return false;
            }
            !fenced
        })
        .collect()
}

/// Every key path of `config/default.toml`: tables (`gate.jwt`) and values (`gate.jwt.issuer`).
fn default_keys() -> (BTreeSet<String>, BTreeSet<String>) {
    fn walk(prefix: &str, table: &toml::Table, tables: &mut BTreeSet<String>, values: &mut BTreeSet<String>) {
        for (key, value) in table {
            let path = if prefix.is_empty() { key.clone() } else { format!("{prefix}.{key}") };
            match value {
                toml::Value::Table(inner) => {
                    tables.insert(path.clone());
                    walk(&path, inner, tables, values);
                }
                _ => {
                    values.insert(path);
                }
            }
        }
    }
    let table: toml::Table = read(&root().join("config/default.toml")).parse().unwrap();
    let (mut tables, mut values) = (BTreeSet::new(), BTreeSet::new());
    walk("", &table, &mut tables, &mut values);
    (tables, values)
}

/// Audit actions the docs name, whose section-like prefix is not a configuration section.
const AUDIT_ACTIONS: [&str; 3] = ["outbox.retry", "console.login", "console.logout"];

/// Configuration keys named in code spans: `section.key…`, where section is a table of
/// default.toml (file names such as `cache.rs` aside).
fn named_keys(text: &str, sections: &BTreeSet<String>) -> BTreeSet<String> {
    let span = regex::Regex::new(r"`([a-z_]+(?:\.[a-z0-9_]+)+)(?:[ =\[`])").unwrap();
    let mut found = BTreeSet::new();
    for line in prose(text) {
        for capture in span.captures_iter(line) {
            let key = &capture[1];
            let section = key.split('.').next().unwrap();
            let file = [".rs", ".md", ".toml", ".py", ".ts", ".json", ".yml", ".yaml", ".mjs", ".sh"]
                .iter()
                .any(|e| key.ends_with(e));
            if sections.contains(section) && !file && !AUDIT_ACTIONS.contains(&key) {
                found.insert(key.to_owned());
            }
        }
    }
    found
}

#[test]
fn every_configuration_key_the_docs_name_exists_and_every_key_is_documented() {
    let code = std::process::Command::new("grep")
        .args(["-rhoE", r#""(outbox|console)\.[a-z_]+""#, "src"])
        .current_dir(root())
        .output()
        .unwrap();
    let code = String::from_utf8(code.stdout).unwrap();
    for action in AUDIT_ACTIONS {
        assert!(code.contains(&format!("\"{action}\"")), "{action} is no longer an audit action in src/");
    }
    let (tables, values) = default_keys();
    let top: BTreeSet<String> = tables.iter().filter(|t| !t.contains('.')).cloned().collect();
    let mut unknown = Vec::new();
    for file in markdown_files() {
        for key in named_keys(&read(&file), &top) {
            if !values.contains(&key) && !tables.contains(&key) {
                unknown.push(format!("{}: `{key}`", file.strip_prefix(root()).unwrap().display()));
            }
        }
    }
    assert!(unknown.is_empty(), "keys config/default.toml does not have:\n{}", unknown.join("\n"));

    let reference = named_keys(&read(&root().join("docs/configuration.md")), &top);
    let undocumented: Vec<&String> = values.iter().filter(|k| !reference.contains(*k)).collect();
    assert!(undocumented.is_empty(), "keys docs/configuration.md does not name in full: {undocumented:?}");
}

/// GitHub's anchor for a heading: lower case, only letters, digits, spaces, `-` and `_`, spaces
/// as `-`; a repeated one gets `-1`, `-2`, ….
pub fn anchors(text: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let explicit = regex::Regex::new(r#"<a (?:id|name)="([^"]+)""#).unwrap();
    for line in prose(text) {
        found.extend(explicit.captures_iter(line).map(|c| c[1].to_owned()));
        let Some(heading) = line.strip_prefix('#').map(|h| h.trim_start_matches('#')) else { continue };
        let slug: String = heading
            .trim()
            .to_lowercase()
            .chars()
            .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
            .map(|c| if c == ' ' { '-' } else { c })
            .collect();
        let mut unique = slug.clone();
        for n in 1.. {
            if !found.contains(&unique) {
                break;
            }
            unique = format!("{slug}-{n}");
        }
        found.insert(unique);
    }
    found
}

/// `[label](target)` links outside code, as (target path, anchor).
fn links(text: &str) -> Vec<(String, Option<String>)> {
    let code = regex::Regex::new(r"`[^`]*`").unwrap();
    let link = regex::Regex::new(r"\]\(([^)\s]+)\)").unwrap();
    let mut found = Vec::new();
    for line in prose(text) {
        let line = code.replace_all(line, "");
        for capture in link.captures_iter(&line) {
            let target = &capture[1];
            if target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            let (path, anchor) = match target.split_once('#') {
                Some((path, anchor)) => (path.to_owned(), Some(anchor.to_owned())),
                None => (target.to_owned(), None),
            };
            found.push((path, anchor));
        }
    }
    found
}

#[test]
fn every_relative_link_and_anchor_in_the_docs_resolves() {
    let mut broken = Vec::new();
    for file in markdown_files() {
        let text = read(&file);
        let here = file.strip_prefix(root()).unwrap().display().to_string();
        for (path, anchor) in links(&text) {
            let target = if path.is_empty() { file.clone() } else { file.parent().unwrap().join(&path) };
            if !target.exists() {
                broken.push(format!("{here}: {path} does not exist"));
                continue;
            }
            if let Some(anchor) = anchor
                && target.extension().is_some_and(|e| e == "md")
                && !anchors(&read(&target)).contains(&anchor)
            {
                broken.push(format!("{here}: {path}#{anchor}: no such heading"));
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

#[test]
fn the_readme_is_a_front_page_and_every_docs_page_lists_its_sections() {
    let readme = read(&root().join("README.md"));
    assert!(
        readme.lines().count() <= 250,
        "README.md has {} lines: the reference goes in docs/",
        readme.lines().count()
    );
    for page in markdown_files().into_iter().filter(|p| p.starts_with(root().join("docs"))) {
        let text = read(&page);
        let listed: BTreeSet<String> =
            links(&text).into_iter().filter(|(p, _)| p.is_empty()).filter_map(|(_, a)| a).collect();
        for line in prose(&text).into_iter().filter(|l| l.starts_with("## ")) {
            let anchor = anchors(line).into_iter().next().unwrap();
            assert!(listed.contains(&anchor), "{}: its contents do not list \"{line}\"", page.display());
        }
    }
}

#[test]
fn the_service_and_both_clients_carry_one_license_with_its_text_at_the_root() {
    let text = read(&root().join("LICENSE"));
    assert!(
        text.contains("Apache License") && text.contains("Version 2.0, January 2004"),
        "LICENSE is Apache-2.0's text"
    );
    let cargo: toml::Table = read(&root().join("Cargo.toml")).parse().unwrap();
    let python: toml::Table = read(&root().join("clients/python/pyproject.toml")).parse().unwrap();
    let node: serde_json::Value =
        serde_json::from_str(&read(&root().join("clients/typescript/package.json"))).unwrap();
    let declared = [
        ("Cargo.toml", cargo["package"]["license"].as_str()),
        ("clients/python/pyproject.toml", python["project"]["license"]["text"].as_str()),
        ("clients/typescript/package.json", node["license"].as_str()),
    ];
    for (file, license) in declared {
        assert_eq!(license, Some("Apache-2.0"), "{file}");
    }
}
