//! What `deploy/` ships, run here: the alerting rules through promtool (their own checks and
//! their unit tests), and every metric the rules and the Grafana dashboard name held to what a
//! running usage-gate's `/metrics` exports.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};
use usage_gate::sim::Seed;

use crate::helpers::*;

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
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
    if !have_tool("promtool", &["--version"]) {
        return;
    }
    let checked = promtool(&["check", "rules", "alerts.yml"]);
    let rules = read(&deploy("prometheus/alerts.yml"));
    let names = alert_names(&rules);
    let records = rules.lines().filter(|l| l.trim().starts_with("- record: ")).count();
    assert!(checked.contains(&format!("{} rules found", names.len() + records)), "{checked}");
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
fn every_alert_says_what_happened_and_links_a_runbook_under_one_absolute_base() {
    let rules = read(&deploy("prometheus/alerts.yml"));
    let runbooks =
        crate::docs::anchors(&read(&Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/runbooks.md")));
    let blocks: Vec<&str> = rules.split("- alert: ").skip(1).collect();
    assert_eq!(blocks.len(), alert_names(&rules).len());
    let mut bases = BTreeSet::new();
    for block in blocks {
        let name = block.lines().next().unwrap();
        for field in ["summary:", "description:", "runbook_url:", "severity:"] {
            assert!(block.contains(field), "{name} has no {field}");
        }
        let url = block
            .lines()
            .find_map(|l| l.trim().strip_prefix("runbook_url: \""))
            .unwrap()
            .trim_end_matches('"');
        let (base, anchor) = url.split_once('#').unwrap_or_else(|| panic!("{name}: {url} names no section"));
        assert!(
            base.starts_with("https://") && base.ends_with("/runbooks.md"),
            "{name}: {url} is not absolute"
        );
        assert!(runbooks.contains(anchor), "{name}: docs/runbooks.md has no section #{anchor}");
        bases.insert(base.to_owned());
    }
    assert_eq!(
        bases.len(),
        1,
        "one base for every runbook_url (deploy/prometheus/sync.py --runbook-base): {bases:?}"
    );
}

#[test]
fn which_targets_are_usage_gate_is_said_once_and_their_absence_pages() {
    let rules = read(&deploy("prometheus/alerts.yml"));
    let exprs: Vec<&str> = rules.lines().filter_map(|l| l.trim().strip_prefix("expr: ")).collect();
    let naming_targets: Vec<&&str> =
        exprs.iter().filter(|e| e.contains("up{") || e.contains("job=")).collect();
    assert_eq!(
        naming_targets,
        [&"up{job=\"usage-gate\"} or up{app_kubernetes_io_name=\"usage-gate\"}"],
        "only usage_gate:up names a job"
    );
    let down = rules.split("- alert: UsageGateReplicaDown").nth(1).unwrap();
    assert!(down.contains("absent(usage_gate:up)"), "no replica scraped at all fires too");
}

/// deploy/kubernetes with the operator's secret files and the prometheus-operator component, as
/// an overlay uses them, rendered.
fn rendered_with_the_operator_component() -> Vec<Value> {
    let base = base_with_secrets(&own_secrets(), "postgres://usage_gate:s3cret@postgres:5432/usage_gate");
    let overlay = base.parent().unwrap().join("overlay");
    std::fs::create_dir(&overlay).unwrap();
    std::fs::write(
        overlay.join("kustomization.yaml"),
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n  - ../base\n\
         components:\n  - ../base/components/prometheus-operator\n",
    )
    .unwrap();
    let rendered = run("kubectl", &["kustomize", overlay.to_str().unwrap()]);
    remove_scratch(&base);
    yaml_documents(&rendered)
}

#[test]
fn the_prometheus_operator_component_scrapes_every_replica_as_usage_gate_with_the_alert_file() {
    if !have_tool("kubectl", &["version", "--client"]) {
        return;
    }
    let objects = rendered_with_the_operator_component();
    let one = |kind: &str| -> &Value {
        let found: Vec<&Value> = objects.iter().filter(|o| o["kind"] == kind).collect();
        assert_eq!(found.len(), 1, "one {kind}");
        found[0]
    };
    let (monitor, rule, deployment) = (one("ServiceMonitor"), one("PrometheusRule"), one("Deployment"));
    let pod = &deployment["spec"]["template"];
    assert!(
        pod["metadata"]["annotations"]
            .as_object()
            .is_none_or(|a| !a.keys().any(|k| k.starts_with("prometheus.io/"))),
        "no pod-discovery annotations beside the ServiceMonitor: {}",
        pod["metadata"]
    );
    // The ServiceMonitor's Service, and that Service's pods and port.
    let services: Vec<&Value> = objects
        .iter()
        .filter(|o| {
            o["kind"] == "Service"
                && selects(&monitor["spec"]["selector"]["matchLabels"], &o["metadata"]["labels"])
        })
        .collect();
    assert_eq!(services.len(), 1, "the ServiceMonitor selects one Service");
    let service = services[0];
    assert!(selects(&service["spec"]["selector"], &pod["metadata"]["labels"]), "it selects the pods");
    let endpoint = &monitor["spec"]["endpoints"][0];
    let port =
        service["spec"]["ports"].as_array().unwrap().iter().find(|p| p["name"] == endpoint["port"]).unwrap();
    let container_ports = pod["spec"]["containers"][0]["ports"].as_array().unwrap();
    assert!(
        container_ports.iter().any(|p| p["name"] == port["targetPort"]),
        "the metrics port is the container's"
    );
    assert_eq!(endpoint["path"], "/metrics");
    // The job Prometheus gives it is the one usage_gate:up selects.
    let job = &service["metadata"]["labels"][monitor["spec"]["jobLabel"].as_str().unwrap()];
    let rules = read(&deploy("prometheus/alerts.yml"));
    assert!(rules.contains(&format!("up{{job={job}}}")), "usage_gate:up selects job {job}");

    // The PrometheusRule is alerts.yml's groups, as they are.
    let file = yaml_documents(&rules).remove(0);
    assert!(
        rule["spec"]["groups"] == file["groups"],
        "the PrometheusRule differs from alerts.yml: run `python3 deploy/prometheus/sync.py`"
    );
}

#[test]
fn one_command_points_every_runbook_url_at_another_base() {
    if !have_tool("promtool", &["--version"]) {
        return;
    }
    let scratch = std::env::temp_dir().join(format!("usage-gate-runbooks-{}", uuid::Uuid::new_v4()));
    let (prometheus, component) =
        (scratch.join("prometheus"), scratch.join("kubernetes/components/prometheus-operator"));
    copy_tree(&deploy("prometheus"), &prometheus, &[]);
    copy_tree(&deploy("kubernetes/components/prometheus-operator"), &component, &[]);
    let base = "https://wiki.example.com/usage-gate/runbooks.md";
    run("python3", &[prometheus.join("sync.py").to_str().unwrap(), "--runbook-base", base]);
    for file in [
        prometheus.join("alerts.yml"),
        prometheus.join("alerts_test.yml"),
        component.join("prometheusrule.yaml"),
    ] {
        let text = read(&file);
        let urls: Vec<&str> = text.lines().filter_map(|l| l.trim().strip_prefix("runbook_url: \"")).collect();
        assert!(
            !urls.is_empty() && urls.iter().all(|u| u.starts_with(&format!("{base}#"))),
            "{}: {urls:?}",
            file.display()
        );
    }
    let tested = std::process::Command::new("promtool")
        .args(["test", "rules", "alerts_test.yml"])
        .current_dir(&prometheus)
        .output()
        .unwrap();
    assert!(tested.status.success(), "{}", String::from_utf8_lossy(&tested.stdout));
    std::fs::remove_dir_all(&scratch).unwrap();
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

/// `program args…`'s standard output; it must succeed.
fn run(program: &str, args: &[&str]) -> String {
    let output = std::process::Command::new(program).args(args).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{program} {}:\n{stderr}", args.join(" "));
    String::from_utf8(output.stdout).unwrap()
}

/// The rendered objects, as JSON (PyYAML comes with kubernetes-validate).
fn yaml_documents(yaml: &str) -> Vec<Value> {
    use std::io::Write;
    let mut python = std::process::Command::new("python3")
        .args(["-c", "import json, sys, yaml; json.dump(list(yaml.safe_load_all(sys.stdin)), sys.stdout)"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    python.stdin.take().unwrap().write_all(yaml.as_bytes()).unwrap();
    let output = python.wait_with_output().unwrap();
    assert!(output.status.success(), "the rendered manifests are YAML");
    serde_json::from_slice(&output.stdout).unwrap()
}

/// Whether every label `selector` asks for is on `labels`.
fn selects(selector: &Value, labels: &Value) -> bool {
    let wanted = selector.as_object().expect("matchLabels");
    !wanted.is_empty() && wanted.iter().all(|(k, v)| labels.get(k) == Some(v))
}

#[test]
fn the_kubernetes_base_renders_validates_and_names_only_what_usage_gate_has() {
    if !have_tool("kubectl", &["version", "--client"]) || !have_tool("kubernetes-validate", &["--version"]) {
        return;
    }
    let base = base_with_secrets(&own_secrets(), "postgres://usage_gate:s3cret@postgres:5432/usage_gate");
    let rendered = run("kubectl", &["kustomize", base.to_str().unwrap()]);
    remove_scratch(&base);
    let file = std::env::temp_dir().join(format!("usage-gate-k8s-{}.yaml", uuid::Uuid::new_v4()));
    std::fs::write(&file, &rendered).unwrap();
    // Every object against Kubernetes 1.31's schemas, unknown fields refused.
    run("kubernetes-validate", &["--strict", "--quiet", "-k", "1.31.0", file.to_str().unwrap()]);
    std::fs::remove_file(&file).unwrap();

    let objects = yaml_documents(&rendered);
    let one = |kind: &str| -> &Value {
        let found: Vec<&Value> = objects.iter().filter(|o| o["kind"] == kind).collect();
        assert_eq!(found.len(), 1, "one {kind}");
        found[0]
    };
    let (deployment, service, budget) = (one("Deployment"), one("Service"), one("PodDisruptionBudget"));
    let (config_map, secret) = (one("ConfigMap"), one("Secret"));
    let spec = &deployment["spec"];
    assert!(spec["replicas"].as_u64() >= Some(2), "at least two replicas");
    assert_eq!(spec["strategy"]["rollingUpdate"]["maxUnavailable"], 0);
    let pod = &spec["template"];
    let labels = &pod["metadata"]["labels"];
    assert!(selects(&spec["selector"]["matchLabels"], labels));
    assert!(selects(&service["spec"]["selector"], labels), "the Service selects the pods");
    assert!(selects(&budget["spec"]["selector"]["matchLabels"], labels), "the budget covers the pods");
    assert_eq!(budget["spec"]["minAvailable"], 1);

    let container = &pod["spec"]["containers"][0];
    let migrate = &pod["spec"]["initContainers"][0];
    let args = |c: &Value| -> Vec<String> {
        c["args"].as_array().unwrap().iter().map(|a| a.as_str().unwrap().to_owned()).collect()
    };
    let (serve_args, migrate_args) = (args(container), args(migrate));
    assert_eq!(serve_args.last().map(String::as_str), Some("serve"));
    assert_eq!(migrate_args.last().map(String::as_str), Some("migrate"), "the init container migrates");
    assert_eq!(
        serve_args[..serve_args.len() - 1],
        migrate_args[..migrate_args.len() - 1],
        "the same configuration"
    );

    // Each --config file is a mounted key of the ConfigMap or the Secret; the database URL a key
    // of the Secret. Written out as the pod would see them.
    let volumes = pod["spec"]["volumes"].as_array().unwrap();
    let mounts = container["volumeMounts"].as_array().unwrap();
    let decoded = |object: &Value, key: &str| -> String {
        if object["kind"] == "Secret" {
            use base64::Engine;
            let raw = object["data"][key].as_str().unwrap_or_else(|| panic!("the Secret has {key}"));
            // kustomize folds long values over several lines.
            let raw: String = raw.split_whitespace().collect();
            String::from_utf8(base64::engine::general_purpose::STANDARD.decode(raw).unwrap()).unwrap()
        } else {
            object["data"][key].as_str().unwrap_or_else(|| panic!("the ConfigMap has {key}")).to_owned()
        }
    };
    let mut files = Vec::new();
    for path in serve_args.iter().filter_map(|a| a.strip_prefix("--config=")) {
        let (dir, key) = path.rsplit_once('/').unwrap();
        let mount =
            mounts.iter().find(|m| m["mountPath"] == dir).unwrap_or_else(|| panic!("{dir} is mounted"));
        let volume = volumes.iter().find(|v| v["name"] == mount["name"]).unwrap();
        let object = match (&volume["configMap"]["name"], &volume["secret"]["secretName"]) {
            (Value::String(name), _) => {
                assert_eq!(config_map["metadata"]["name"], *name);
                config_map
            }
            (_, Value::String(name)) => {
                assert_eq!(secret["metadata"]["name"], *name);
                secret
            }
            _ => panic!("volume {} is neither a ConfigMap nor a Secret", volume["name"]),
        };
        let file = std::env::temp_dir().join(format!("usage-gate-k8s-{}-{key}", uuid::Uuid::new_v4()));
        std::fs::write(&file, decoded(object, key)).unwrap();
        files.push(file);
    }
    assert_eq!(files.len(), 2, "settings and secrets: {serve_args:?}");
    let database = &container["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "DATABASE_URL")
        .unwrap()["valueFrom"]["secretKeyRef"];
    assert_eq!(secret["metadata"]["name"], database["name"]);
    let database_url = decoded(secret, database["key"].as_str().unwrap());

    // The files hold only keys usage-gate knows (an unknown key fails to load), with valid values.
    let raw = usage_gate::config::Settings::from_files(
        files.iter().map(PathBuf::as_path),
        Some(Default::default()),
        Some(database_url.clone()),
    )
    .unwrap_or_else(|e| panic!("the manifests' configuration loads: {e}"));
    let settings = raw.validate().unwrap_or_else(|e| panic!("the manifests' configuration is valid: {e}"));
    // And the binary takes them as the pod passes them.
    let mut command = usage_gate();
    for file in &files {
        command.arg("--config").arg(file);
    }
    let checked = command.arg("config").env("DATABASE_URL", &database_url).output().unwrap();
    assert!(checked.status.success(), "usage-gate config: {}", String::from_utf8_lossy(&checked.stderr));
    for file in &files {
        std::fs::remove_file(file).unwrap();
    }

    // Ports: the container's are the ones usage-gate listens on, the Service's target one of them.
    let port = |name: &str| -> u64 {
        let ports = container["ports"].as_array().unwrap();
        let found = ports.iter().find(|p| p["name"] == name).unwrap_or_else(|| panic!("a port named {name}"));
        found["containerPort"].as_u64().unwrap()
    };
    assert_eq!(port("http"), u64::from(settings.server.address.port()), "server.address");
    let metrics = settings.server.metrics_address.expect("/metrics on a port of its own");
    assert_eq!(port("metrics"), u64::from(metrics.port()), "server.metrics_address");
    let annotations = &pod["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/port"], port("metrics").to_string());
    for target in service["spec"]["ports"].as_array().unwrap() {
        port(target["targetPort"].as_str().expect("a named target port"));
    }

    // Paths: the probes' and the scrape's are routes usage-gate serves, without a key.
    let document = usage_gate::routes::openapi::document();
    let mut paths = vec![annotations["prometheus.io/path"].as_str().unwrap().to_owned()];
    for probe in ["startupProbe", "livenessProbe", "readinessProbe"] {
        let get = &container[probe]["httpGet"];
        port(get["port"].as_str().unwrap_or_else(|| panic!("{probe} names its port")));
        paths.push(get["path"].as_str().unwrap().to_owned());
    }
    assert!(container["readinessProbe"]["httpGet"]["path"] == "/readyz", "readiness is /readyz");
    for path in paths {
        let route = &document["paths"][&path]["get"];
        assert!(route.is_object(), "{path} is a route");
        assert!(route.get("security").is_none(), "{path} needs no key");
    }

    // Shutdown: preStop's wait plus the service's own shutdown fit in the grace period.
    let pre_stop = &container["lifecycle"]["preStop"]["exec"]["command"];
    assert_eq!(pre_stop[0], "sleep");
    let pre_stop: u64 = pre_stop[1].as_str().unwrap().parse().unwrap();
    let grace = pod["spec"]["terminationGracePeriodSeconds"].as_u64().unwrap();
    assert!(
        pre_stop + settings.server.shutdown_timeout.as_secs() < grace,
        "{pre_stop} s + shutdown < {grace} s"
    );

    // Memory: the limit holds a full cache (~550 bytes a customer, bench/README) and the process.
    let limit = container["resources"]["limits"]["memory"].as_str().unwrap();
    let mebibytes: u64 = limit.strip_suffix("Mi").expect("a limit in Mi").parse().unwrap();
    let needed = settings.cache.max_customers * 550 / (1 << 20) + 100;
    assert!(
        mebibytes >= needed,
        "memory limit {limit} for {} customers: {needed} Mi",
        settings.cache.max_customers
    );
    assert_eq!(container["resources"]["requests"]["memory"], limit, "memory request = limit");
}

/// `from`'s files and folders copied into `to`, but for files named in `skip`.
fn copy_tree(from: &Path, to: &Path, skip: &[&str]) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap();
        if path.is_dir() {
            copy_tree(&path, &to.join(name), skip);
        } else if !skip.contains(&name.to_str().unwrap()) {
            std::fs::copy(&path, to.join(name)).unwrap();
        }
    }
}

/// A copy of deploy/kubernetes as a checkout has it (without the files git ignores) in a folder
/// `base` of a scratch folder, plus the two secret files an operator writes, if given. Remove it
/// with [`remove_scratch`].
fn kubernetes_base(secrets: Option<(&str, &str)>) -> PathBuf {
    let base = std::env::temp_dir().join(format!("usage-gate-k8s-{}", uuid::Uuid::new_v4())).join("base");
    copy_tree(&deploy("kubernetes"), &base, &["secrets.toml", "database-url"]);
    if let Some((secrets, database_url)) = secrets {
        std::fs::write(base.join("secrets.toml"), secrets).unwrap();
        std::fs::write(base.join("database-url"), database_url).unwrap();
    }
    base
}

fn remove_scratch(base: &Path) {
    std::fs::remove_dir_all(base.parent().unwrap()).unwrap();
}

fn base_with_secrets(secrets: &str, database_url: &str) -> PathBuf {
    kubernetes_base(Some((secrets, database_url)))
}

/// secrets.example.toml with every placeholder replaced, as its comments ask.
fn own_secrets() -> String {
    use base64::Engine;
    let example = read(&deploy("kubernetes/secrets.example.toml"));
    let key = base64::engine::general_purpose::STANDARD.encode(uuid::Uuid::new_v4().as_bytes().repeat(2));
    let filled = regex::Regex::new(r#""change-me[^"]*""#)
        .unwrap()
        .replace_all(&example, |_: &regex::Captures| format!("\"{}\"", uuid::Uuid::new_v4().simple()));
    let filled = filled.replace("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=", &key);
    assert_ne!(filled, example);
    filled
}

#[test]
fn the_kubernetes_base_renders_no_secret_until_the_operator_writes_one() {
    if !have_tool("kubectl", &["version", "--client"]) {
        return;
    }
    // Without the operator's files, nothing renders: no Secret with values from this repository.
    let bare = kubernetes_base(None);
    let output =
        std::process::Command::new("kubectl").args(["kustomize", bare.to_str().unwrap()]).output().unwrap();
    remove_scratch(&bare);
    assert!(!output.status.success(), "rendered without secrets.toml");
    assert!(String::from_utf8_lossy(&output.stderr).contains("secrets.toml"), "names the missing file");

    // The example copied as it is renders, and usage-gate refuses each placeholder by its key.
    let example = read(&deploy("kubernetes/secrets.example.toml"));
    let database_url = "postgres://usage_gate:s3cret@postgres:5432/usage_gate";
    let copied = base_with_secrets(&example, database_url);
    let rendered = run("kubectl", &["kustomize", copied.to_str().unwrap()]);
    remove_scratch(&copied);
    let secret = yaml_documents(&rendered).into_iter().find(|o| o["kind"] == "Secret").unwrap();
    assert!(secret["data"]["secrets.toml"].is_string() && secret["data"]["database-url"].is_string());
    let settings = deploy("kubernetes/usage-gate.toml");
    let secrets = std::env::temp_dir().join(format!("usage-gate-example-{}.toml", uuid::Uuid::new_v4()));
    std::fs::write(&secrets, &example).unwrap();
    for command in ["config", "serve"] {
        let output = usage_gate()
            .args(["--config", settings.to_str().unwrap(), "--config", secrets.to_str().unwrap(), command])
            .env("DATABASE_URL", database_url)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{command} refuses placeholders: {stderr}");
        for key in
            ["billabear.api_key", "webhooks.secret", "auth.keys[0].key", "auth.keys[2].key", "secrets.key"]
        {
            assert!(stderr.contains(&format!("{key}: ")), "{command} names {key}: {stderr}");
        }
        assert!(!stderr.contains("change-me-admin-key"), "never echoes a secret: {stderr}");
    }
    std::fs::remove_file(&secrets).unwrap();
}

/// One YAML file's documents, as JSON.
fn yaml_file(path: &str) -> Vec<Value> {
    yaml_documents(&read(&deploy(path)))
}

/// Every value of `key` anywhere in `value`.
fn all_of<'a>(value: &'a Value, key: &str, found: &mut Vec<&'a Value>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                if k == key {
                    found.push(v);
                }
                all_of(v, key, found);
            }
        }
        Value::Array(items) => items.iter().for_each(|v| all_of(v, key, found)),
        _ => {}
    }
}

/// The port of usage-gate's default `server.address`.
fn default_port() -> u16 {
    let settings = usage_gate::config::Settings::defaults();
    settings.server.address.port()
}

#[test]
fn the_envoy_and_traefik_files_name_only_what_usage_gate_has() {
    // Neither proxy runs here; their files are held to what can be checked without them.
    if !have_tool("python3", &["-c", "import yaml"]) {
        return;
    }
    let gate_key = usage_gate::routes::auth::GATE_KEY.as_str();
    let document = usage_gate::routes::openapi::document();
    assert!(document["paths"]["/v1/gate"]["get"].is_object());
    let default_port = default_port();

    // Envoy: known extension types only, ext_authz before the router, aimed at usage-gate.
    let envoy = &yaml_file("envoy/envoy.yaml")[0];
    let mut types = Vec::new();
    all_of(envoy, "@type", &mut types);
    let known = [
        "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz",
        "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router",
        "type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutation",
        "type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutationPerRoute",
    ];
    assert!(!types.is_empty() && types.iter().all(|t| known.contains(&t.as_str().unwrap())), "{types:?}");
    let mut filters = Vec::new();
    all_of(envoy, "http_filters", &mut filters);
    let names: Vec<&str> =
        filters[0].as_array().unwrap().iter().map(|f| f["name"].as_str().unwrap()).collect();
    // The client's X-Usage-Feature removed, then the route's set, both before ext_authz.
    assert_eq!(
        names,
        [
            "usage-gate-feature-strip",
            "usage-gate-feature",
            "envoy.filters.http.ext_authz",
            "envoy.filters.http.router"
        ]
    );
    let strip = &filters[0][0]["typed_config"]["mutations"]["request_mutations"];
    assert_eq!(strip, &json!([{"remove": "x-usage-feature"}]));
    let routes = envoy["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
        ["route_config"]["virtual_hosts"][0]["routes"]
        .as_array()
        .unwrap();
    let sso = routes.iter().find(|r| r["match"]["prefix"] == "/sso/").expect("an /sso/ route, before /");
    let set =
        &sso["typed_per_filter_config"]["usage-gate-feature"]["mutations"]["request_mutations"][0]["append"];
    assert_eq!(set["header"], json!({"key": "x-usage-feature", "value": "sso"}));
    assert_eq!(set["append_action"], "OVERWRITE_IF_EXISTS_OR_ADD");
    let gate_parameters = document["paths"]["/v1/gate"]["get"]["parameters"].as_array().unwrap();
    assert!(
        gate_parameters.iter().any(|p| p["in"] == "header" && p["name"] == "X-Usage-Feature"),
        "the header usage-gate reads"
    );
    let ext_authz = &filters[0][2]["typed_config"];
    assert_eq!(
        ext_authz["http_service"]["authorization_request"]["allowed_headers"]["patterns"],
        json!([{"exact": "x-usage-feature"}]),
        "ext_authz passes it on"
    );
    let service = &filters[0][2]["typed_config"]["http_service"];
    assert_eq!(service["path_prefix"], "/v1/gate");
    let added = &service["authorization_request"]["headers_to_add"][0];
    assert_eq!(added["key"], gate_key);
    assert_eq!(added["value"], "A-KEY-WITH-SCOPE-CHECK");
    let cluster = service["server_uri"]["cluster"].as_str().unwrap();
    let clusters = envoy["static_resources"]["clusters"].as_array().unwrap();
    let cluster = clusters.iter().find(|c| c["name"] == cluster).expect("the usage-gate cluster is defined");
    let mut ports = Vec::new();
    all_of(cluster, "port_value", &mut ports);
    assert_eq!(ports, [&json!(default_port)], "usage-gate's port");
    assert!(service["server_uri"]["uri"].as_str().unwrap().ends_with(&format!(":{default_port}")));
    let mut removed = Vec::new();
    all_of(envoy, "request_headers_to_remove", &mut removed);
    assert_eq!(removed, [&json!(["x-customer-id", gate_key])]);
    let mut routed = Vec::new();
    all_of(envoy, "cluster", &mut routed);
    for name in routed.iter().filter_map(|c| c.as_str()) {
        assert!(clusters.iter().any(|c| c["name"] == name), "cluster {name} is defined");
    }

    // Traefik: every middleware a router names is defined, the key added before ForwardAuth and
    // removed after it, ForwardAuth aimed at usage-gate's gate.
    let dynamic = &yaml_file("traefik/dynamic.yml")[0]["http"];
    let statics = &yaml_file("traefik/traefik.yml")[0];
    let middlewares = &dynamic["middlewares"];
    for (name, router) in dynamic["routers"].as_object().unwrap() {
        let chain: Vec<&str> =
            router["middlewares"].as_array().unwrap().iter().map(|m| m.as_str().unwrap()).collect();
        for middleware in &chain {
            assert!(
                middlewares[*middleware].is_object(),
                "router {name}: middleware {middleware} is defined"
            );
        }
        assert!(
            dynamic["services"][router["service"].as_str().unwrap()].is_object(),
            "router {name}: its service"
        );
        for entry in router["entryPoints"].as_array().unwrap() {
            assert!(statics["entryPoints"][entry.as_str().unwrap()].is_object(), "entry point {entry}");
        }
        let position =
            |test: &dyn Fn(&Value) -> bool| chain.iter().position(|m| test(&middlewares[*m])).unwrap();
        let sets_key =
            |m: &Value| m["headers"]["customRequestHeaders"]["X-Usage-Gate-Key"] == "A-KEY-WITH-SCOPE-CHECK";
        let removes_key = |m: &Value| m["headers"]["customRequestHeaders"]["X-Usage-Gate-Key"] == "";
        let forward = position(&|m: &Value| m["forwardAuth"].is_object());
        assert!(
            position(&sets_key) < forward && forward < position(&removes_key),
            "router {name}: {chain:?}"
        );
        let address = middlewares[chain[forward]]["forwardAuth"]["address"].as_str().unwrap();
        assert!(address.ends_with(&format!(":{default_port}/v1/gate")), "{address}");
        assert_eq!(
            middlewares[chain[position(&removes_key)]]["headers"]["customRequestHeaders"]["X-Customer-Id"],
            ""
        );
        if let Some(feature) = chain
            .iter()
            .position(|m| middlewares[*m]["headers"]["customRequestHeaders"]["X-Usage-Feature"].is_string())
        {
            assert!(feature < forward, "router {name}: the feature is named before ForwardAuth: {chain:?}");
        }
    }
    let sso = &dynamic["routers"]["sso"];
    let named: Vec<&Value> =
        sso["middlewares"].as_array().unwrap().iter().map(|m| &middlewares[m.as_str().unwrap()]).collect();
    assert!(
        named.iter().any(|m| m["headers"]["customRequestHeaders"]["X-Usage-Feature"] == "sso"),
        "the sso router names its feature"
    );
    assert!(gate_key.eq_ignore_ascii_case("X-Usage-Gate-Key"));
}
