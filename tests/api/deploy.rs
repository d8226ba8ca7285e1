//! What `deploy/` ships, run here: the alerting rules through promtool (their own checks and
//! their unit tests), and every metric the rules and the Grafana dashboard name held to what a
//! running usage-gate's `/metrics` exports.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};
use usage_gate::sim::Seed;

use crate::helpers::*;

fn deploy(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy").join(path)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Whether `tool` is on the PATH. Without it the test says so and passes, unless
/// `USAGE_GATE_REQUIRE_TOOLS` is set (CI sets it and installs the tools).
fn have(tool: &str) -> bool {
    let found = std::process::Command::new(tool).arg("--version").output().is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            std::env::var_os("USAGE_GATE_REQUIRE_TOOLS").is_none(),
            "USAGE_GATE_REQUIRE_TOOLS is set but {tool} is not installed"
        );
        eprintln!("skipped: {tool} is not installed (Debian: apt-get install prometheus)");
    }
    found
}

fn promtool(args: &[&str]) -> String {
    let output =
        std::process::Command::new("promtool").args(args).current_dir(deploy("prometheus")).output().unwrap();
    let text =
        format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "promtool {}:\n{text}", args.join(" "));
    text
}

/// The alerts' names, in file order (`- alert: Name` lines).
fn alert_names(rules: &str) -> Vec<String> {
    rules.lines().filter_map(|l| l.trim().strip_prefix("- alert: ")).map(str::to_owned).collect()
}

#[test]
fn the_alert_rules_pass_promtool_and_their_unit_tests() {
    if !have("promtool") {
        return;
    }
    let checked = promtool(&["check", "rules", "alerts.yml"]);
    let rules = read(&deploy("prometheus/alerts.yml"));
    let names = alert_names(&rules);
    assert!(checked.contains(&format!("{} rules found", names.len())), "{checked}");
    let tested = promtool(&["test", "rules", "alerts_test.yml"]);
    assert!(tested.contains("SUCCESS"), "{tested}");

    // Every alert is shown firing in the unit tests, and silent at least once.
    let tests = read(&deploy("prometheus/alerts_test.yml"));
    for name in &names {
        let cases: Vec<&str> = tests
            .split("- eval_time:")
            .filter(|case| case.contains(&format!("alertname: {name}\n")))
            .collect();
        assert!(
            cases.iter().any(|c| c.contains("exp_alerts:")),
            "{name} is never shown firing in alerts_test.yml"
        );
        assert!(
            cases.iter().any(|c| !c.contains("exp_alerts:")),
            "{name} is never shown silent in alerts_test.yml"
        );
    }
}

#[test]
fn every_alert_says_what_happened_and_links_a_runbook_that_exists() {
    let rules = read(&deploy("prometheus/alerts.yml"));
    let readme = read(&Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"));
    let anchors: BTreeSet<String> = readme
        .lines()
        .filter_map(|l| l.strip_prefix("### Runbook: "))
        .map(|title| format!("runbook-{}", title.trim().to_lowercase().replace(' ', "-")))
        .collect();
    let blocks: Vec<&str> = rules.split("- alert: ").skip(1).collect();
    assert_eq!(blocks.len(), alert_names(&rules).len());
    for block in blocks {
        let name = block.lines().next().unwrap();
        for field in ["summary:", "description:", "runbook:", "severity:"] {
            assert!(block.contains(field), "{name} has no {field}");
        }
        let runbook = block
            .lines()
            .find_map(|l| l.trim().strip_prefix("runbook: \"README.md#"))
            .unwrap_or_else(|| panic!("{name}: runbook must be \"README.md#...\""))
            .trim_end_matches('"');
        assert!(
            anchors.contains(runbook),
            "{name}: no README heading \"### Runbook: ...\" for #{runbook} ({anchors:?})"
        );
    }
}

/// The metric names `text` mentions: usage-gate's own prefixes, and HTTP's and BillaBear's (a
/// family named in prose, `usage_gate_outbox_*`, is not a name).
fn metric_names(text: &str) -> BTreeSet<String> {
    let name = regex::Regex::new(r"\b((?:usage_gate|billabear|http)_[a-z_]+)(\*?)").unwrap();
    name.captures_iter(text).filter(|c| c[2].is_empty()).map(|c| c[1].to_owned()).collect()
}

/// Whether the exposition has `name`: as a sample's name, or as a histogram's (whose samples
/// are `name_bucket`, `name_sum` and `name_count`).
fn exports(exported: &[(String, String)], name: &str) -> bool {
    exported.iter().any(|(sample, _)| {
        sample == name
            || sample.strip_prefix(name).is_some_and(|rest| ["_bucket", "_sum", "_count"].contains(&rest))
    })
}

/// Each `name{...label="value"...}` selector's exact matchers (not `=~`, `!=`, `!~`, nor a
/// dashboard variable): label values usage-gate itself must produce.
fn exact_matchers(text: &str) -> BTreeSet<(String, String, String)> {
    // Label values may hold braces (a route pattern) and, in the dashboard's JSON, escaped quotes.
    let selector = regex::Regex::new(
        r#"\b((?:usage_gate|billabear|http)_[a-z_]+)\{((?:\\"[^"\\]*\\"|"[^"]*"|[^}"\\])*)\}"#,
    )
    .unwrap();
    let matcher = regex::Regex::new(r#"\b([a-z_]+)\s*(=~|!~|!=|=)\s*\\?"([^"\\]*)\\?""#).unwrap();
    let mut found = BTreeSet::new();
    for s in selector.captures_iter(text) {
        for m in matcher.captures_iter(&s[2]) {
            if &m[2] == "=" && !m[3].contains('$') {
                found.insert((s[1].to_owned(), m[1].to_owned(), m[3].to_owned()));
            }
        }
    }
    found
}

#[tokio::test]
async fn every_metric_the_alerts_and_the_dashboard_name_is_one_usage_gate_exports() {
    let rules = read(&deploy("prometheus/alerts.yml"));
    let dashboard_text = read(&deploy("grafana/usage-gate.json"));
    let dashboard: Value = serde_json::from_str(&dashboard_text).expect("the dashboard is JSON");
    let panels = dashboard["panels"].as_array().unwrap();
    assert!(panels.iter().any(|p| p["type"] == "timeseries"), "the dashboard has panels");
    let named: BTreeSet<String> =
        metric_names(&rules).into_iter().chain(metric_names(&dashboard_text)).collect();
    let matchers: BTreeSet<_> =
        exact_matchers(&rules).into_iter().chain(exact_matchers(&dashboard_text)).collect();
    assert!(named.len() >= 15, "{named:?}");
    assert!(matchers.iter().any(|(_, label, _)| label == "route"), "{matchers:?}");

    // A real process (its own metrics registry), serving checks and taking events.
    let sim = start_sim(Seed::built_in());
    let database = fresh_database_url().await;
    let config = process_config(
        &sim,
        &format!(
            r#"
[[auth.keys]]
name = "everything"
key = "{ALL_KEY}"
scopes = ["check", "events", "admin"]
"#
        ),
    );
    let (_service, base) = serve_process(&config, &database).await;
    let http = reqwest::Client::new();
    let answer =
        http.get(format!("{base}/v1/customers/{ACME}/check")).bearer_auth(ALL_KEY).send().await.unwrap();
    assert_eq!(answer.status(), 200);
    let event = json!({"event_id": "deploy-metrics-1", "subscription": ACME_SUBSCRIPTION, "code": "api_calls", "value": 1});
    let answer =
        http.post(format!("{base}/v1/events")).bearer_auth(ALL_KEY).json(&event).send().await.unwrap();
    assert_eq!(answer.status(), 202);

    // The event's delivery records the lag histogram; the rest is there from the start or after
    // the requests above.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let (exported, missing) = loop {
        let text = http.get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap();
        let exported = exposition(&text);
        let missing: Vec<&String> = named.iter().filter(|n| !exports(&exported, n)).collect();
        if missing.is_empty() || tokio::time::Instant::now() > deadline {
            break (exported, missing);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(missing.is_empty(), "named in deploy/ but not exported by usage-gate: {missing:?}");
    for (metric, label, value) in &matchers {
        assert!(
            exported
                .iter()
                .any(|(name, labels)| name == metric && labels.contains(&format!("{label}=\"{value}\""))),
            "{metric} is never exported with {label}=\"{value}\""
        );
    }
}

/// The samples of a Prometheus text exposition: (name, the text of its labels).
fn exposition(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let end = l.find(['{', ' ']).unwrap_or(l.len());
            // The last brace: a label value may hold braces (a route pattern).
            let labels =
                if l[end..].starts_with('{') { &l[end..l.rfind('}').unwrap_or(l.len())] } else { "" };
            (l[..end].to_owned(), labels.to_owned())
        })
        .collect()
}
