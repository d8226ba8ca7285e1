//! The operator console: sessions and CSRF over plain HTTP, then an operator's whole round in a
//! real headless Chromium driven through WebDriver (chromedriver).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::error::CmdError;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

use crate::helpers::{ACME, ACME_SUBSCRIPTION, ADMIN_KEY, CHECK_KEY, TestApp, eventually};

const UMBRELLA: &str = "44444444-4444-4444-8444-444444444444";
const UMBRELLA_LIMIT: &str = "b4444444-4444-4444-8444-444444444444";

/// A browser-like client over HTTP that keeps the console's cookies itself and never follows
/// redirects, so each answer can be looked at.
struct Browser<'a> {
    app: &'a TestApp,
    http: reqwest::Client,
    cookies: std::collections::BTreeMap<String, String>,
}

struct Page {
    status: u16,
    location: Option<String>,
    set_cookies: Vec<String>,
    body: String,
}

impl Page {
    /// The value of the first hidden `csrf` field.
    fn csrf(&self) -> String {
        let start = self.body.find(r#"name="csrf" value=""#).expect("a form with a CSRF token") + 19;
        self.body[start..start + 64].to_owned()
    }
}

impl<'a> Browser<'a> {
    fn new(app: &'a TestApp) -> Self {
        let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
        Self { app, http, cookies: Default::default() }
    }

    async fn send(&mut self, request: reqwest::RequestBuilder) -> Page {
        let cookie = self.cookies.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("; ");
        let response = request.header("cookie", cookie).send().await.unwrap();
        let header = |name: &str| response.headers().get(name).map(|v| v.to_str().unwrap().to_owned());
        let location = header("location");
        let set_cookies: Vec<String> =
            response.headers().get_all("set-cookie").iter().map(|v| v.to_str().unwrap().to_owned()).collect();
        for set in &set_cookies {
            let (pair, attributes) = set.split_once(';').unwrap_or((set, ""));
            let (name, value) = pair.split_once('=').unwrap();
            if attributes.contains("Max-Age=0") {
                self.cookies.remove(name);
            } else {
                self.cookies.insert(name.to_owned(), value.to_owned());
            }
        }
        let status = response.status().as_u16();
        Page { status, location, set_cookies, body: response.text().await.unwrap() }
    }

    async fn get(&mut self, path: &str) -> Page {
        let request = self.http.get(self.app.url(path));
        self.send(request).await
    }

    async fn post(&mut self, path: &str, fields: &[(&str, &str)]) -> Page {
        let body = url::form_urlencoded::Serializer::new(String::new()).extend_pairs(fields).finish();
        let request = self
            .http
            .post(self.app.url(path))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body);
        self.send(request).await
    }

    /// Signs in with `key` from the form; returns the answer to the form.
    async fn sign_in(&mut self, key: &str) -> Page {
        let form = self.get("/console/").await;
        assert_eq!(form.status, 200);
        self.post("/console/login", &[("csrf", &form.csrf()), ("key", key), ("next", "/console/customers")])
            .await
    }
}

async fn audit_actions(app: &TestApp, actor: &str) -> Vec<(String, String)> {
    sqlx::query_as("SELECT action, outcome FROM audit_log WHERE actor = $1 ORDER BY id")
        .bind(actor)
        .fetch_all(&app.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn console_pages_send_a_browser_without_a_session_to_the_sign_in_form_and_back() {
    let app = TestApp::spawn().await;
    let mut browser = Browser::new(&app);
    let page = browser.get("/console/customers?status=blocked").await;
    assert_eq!(page.status, 303);
    assert_eq!(page.location.as_deref(), Some("/console/?next=%2Fconsole%2Fcustomers%3Fstatus%3Dblocked"));
    let form = browser.get(page.location.as_deref().unwrap()).await;
    assert_eq!(form.status, 200);
    assert!(form.body.contains(r#"<label for="key">"#), "the key input is labelled");
    assert!(form.body.contains(r#"name="next" value="/console/customers?status=blocked""#), "{}", form.body);
    let signed_in = browser
        .post(
            "/console/login",
            &[("csrf", &form.csrf()), ("key", ADMIN_KEY), ("next", "/console/customers?status=blocked")],
        )
        .await;
    assert_eq!(
        (signed_in.status, signed_in.location.as_deref()),
        (303, Some("/console/customers?status=blocked"))
    );
    // Somewhere else is no destination.
    let form = browser.get("/console/").await;
    assert_eq!(form.status, 200, "signed in: the overview");
    assert!(form.body.contains("Customers by status"));
    let mut other = Browser::new(&app);
    let form = other.get("/console/").await;
    let away = other
        .post("/console/login", &[("csrf", &form.csrf()), ("key", ADMIN_KEY), ("next", "//evil.example/")])
        .await;
    assert_eq!(away.location.as_deref(), Some("/console/"));
}

#[tokio::test]
async fn only_an_admin_key_starts_a_session_and_the_key_never_reaches_the_browser() {
    let app = TestApp::spawn().await;
    let mut browser = Browser::new(&app);
    let unknown = browser.sign_in("no-such-key-0123456789").await;
    assert_eq!(unknown.status, 401);
    assert!(unknown.body.contains("This key is not accepted."), "{}", unknown.body);
    let check_only = browser.sign_in(CHECK_KEY).await;
    assert_eq!(check_only.status, 403);
    assert!(check_only.body.contains("This key lacks the admin scope."));
    assert_eq!(audit_actions(&app, "checker").await, [("console.login".to_owned(), "rejected".to_owned())]);

    let signed_in = browser.sign_in(ADMIN_KEY).await;
    assert_eq!(signed_in.status, 303);
    let session =
        signed_in.set_cookies.iter().find(|c| c.starts_with("ug_console=")).expect("a session cookie");
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/console"] {
        assert!(session.contains(attribute), "{session}");
    }
    assert!(!session.contains("Secure"), "plain HTTP here: {session}");
    assert!(!session.contains(ADMIN_KEY));
    let id = &browser.cookies["ug_console"];
    let stored: (i64, bool) = sqlx::query_as(
        "SELECT count(*), bool_and(id_digest = sha256(convert_to($1, 'UTF8'))) FROM console_sessions",
    )
    .bind(id)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(stored, (1, true), "only the session id's digest is stored");
    assert!(!browser.cookies.contains_key("ug_console_login"), "the sign-in token is dropped");
    assert_eq!(audit_actions(&app, "operator").await, [("console.login".to_owned(), "success".to_owned())]);

    // Behind a TLS-terminating proxy the cookies are Secure.
    let mut tls = Browser::new(&app);
    let form = tls.send(tls.http.get(app.url("/console/")).header("x-forwarded-proto", "https")).await;
    assert!(form.set_cookies[0].contains("; Secure"), "{:?}", form.set_cookies);
}

#[tokio::test]
async fn a_form_without_the_sessions_csrf_token_changes_nothing() {
    let app = TestApp::spawn().await;
    let mut browser = Browser::new(&app);
    browser.sign_in(ADMIN_KEY).await;
    let before = app.sim.customer(ACME).await["limits"].clone();
    for token in ["", "0000000000000000000000000000000000000000000000000000000000000000"] {
        let page = browser
            .post(
                &format!("/console/customers/{ACME}/usage-limits"),
                &[("csrf", token), ("amount", "777"), ("action", "DISABLE")],
            )
            .await;
        assert_eq!(page.status, 403, "{token:?}");
        assert!(page.body.contains("this form has expired"), "{}", page.body);
    }
    // The sign-in token does not sign anything else either.
    let mut stranger = Browser::new(&app);
    let form = stranger.get("/console/").await;
    let page = stranger
        .post(
            &format!("/console/customers/{ACME}/usage-limits"),
            &[("csrf", &form.csrf()), ("amount", "777"), ("action", "DISABLE")],
        )
        .await;
    assert_eq!(page.status, 303, "no session: to the sign-in form");
    assert_eq!(app.sim.customer(ACME).await["limits"], before);
    let changes: i64 =
        sqlx::query_scalar("SELECT count(*) FROM audit_log WHERE action = 'usage_limit.create'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(changes, 0);
}

#[tokio::test]
async fn a_bad_form_is_answered_on_the_page_naming_the_field_and_audited_like_the_api() {
    let app = TestApp::spawn().await;
    let mut browser = Browser::new(&app);
    let page = browser.sign_in(ADMIN_KEY).await;
    assert_eq!(page.status, 303);
    let customer_page = format!("/console/customers/{ACME}");
    let csrf = browser.get(&customer_page).await.csrf();
    let answer = browser
        .post(
            &format!("{customer_page}/usage-limits"),
            &[("csrf", &csrf), ("amount", "-5"), ("action", "DISABLE")],
        )
        .await;
    assert_eq!((answer.status, answer.location.as_deref()), (303, Some(customer_page.as_str())));
    let shown = browser.get(&customer_page).await;
    assert!(
        shown.body.contains("amount: must be a positive integer (minor units), got -5"),
        "{}",
        shown.body
    );
    assert!(!browser.get(&customer_page).await.body.contains("amount: must be"), "shown once");
    assert_eq!(
        audit_actions(&app, "operator").await,
        [
            ("console.login".to_owned(), "success".to_owned()),
            ("usage_limit.create".to_owned(), "rejected".to_owned())
        ]
    );
    let bad_id = browser.get("/console/customers/not-a-uuid").await;
    assert_eq!(bad_id.status, 400);
    assert!(bad_id.body.contains("customer_id"), "{}", bad_id.body);
    let bad_filter = browser.get("/console/customers?q=%27%20OR%201%3D1").await;
    assert_eq!(bad_filter.status, 400);
    assert!(bad_filter.body.contains("q: must be a customer id"), "{}", bad_filter.body);
}

#[tokio::test]
async fn an_idle_session_expires_and_signing_out_ends_it() {
    let app = TestApp::spawn().await;
    let mut browser = Browser::new(&app);
    browser.sign_in(ADMIN_KEY).await;
    assert_eq!(browser.get("/console/audit").await.status, 200);
    // Eight hours idle (the default), as if the operator had gone home.
    sqlx::query("UPDATE console_sessions SET last_seen_at = now() - interval '8 hours 1 second'")
        .execute(&app.pool)
        .await
        .unwrap();
    assert_eq!(browser.get("/console/audit").await.status, 303);

    browser.sign_in(ADMIN_KEY).await;
    let csrf = browser.get("/console/").await.csrf();
    let out = browser.post("/console/logout", &[("csrf", &csrf)]).await;
    assert_eq!((out.status, out.location.as_deref()), (303, Some("/console/")));
    assert!(out.set_cookies.iter().any(|c| c.starts_with("ug_console=;") && c.contains("Max-Age=0")));
    let live: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM console_sessions WHERE last_seen_at > now() - interval '1 hour'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(live, 0);
    assert!(
        audit_actions(&app, "operator").await.contains(&("console.logout".to_owned(), "success".to_owned()))
    );
}

/// How long the browser test waits for anything: a deadline, not a pause, so generous enough for
/// a CI machine running every other test beside Chromium.
const PATIENCE: Duration = Duration::from_secs(30);

/// chromedriver on a free port, stopped when dropped.
struct Driver {
    child: Child,
    url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// chromedriver (`CHROMEDRIVER`, or Debian's) if it is installed. Without one the browser test
/// says so and passes, unless `USAGE_GATE_REQUIRE_BROWSER` is set (CI sets it).
async fn driver() -> Option<Driver> {
    let path = std::env::var("CHROMEDRIVER").unwrap_or_else(|_| "/usr/bin/chromedriver".into());
    if !std::path::Path::new(&path).exists() {
        assert!(
            std::env::var_os("USAGE_GATE_REQUIRE_BROWSER").is_none(),
            "USAGE_GATE_REQUIRE_BROWSER is set but there is no chromedriver at {path}"
        );
        eprintln!("SKIPPED: no chromedriver at {path} (apt-get install chromium chromium-driver)");
        return None;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let child = Command::new(&path)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let driver = Driver { child, url: format!("http://127.0.0.1:{port}") };
    let status = format!("{}/status", driver.url);
    eventually(PATIENCE, "chromedriver to answer", || async {
        reqwest::get(&status).await.ok().filter(|r| r.status().is_success())
    })
    .await;
    Some(driver)
}

async fn chromium(driver: &Driver) -> Client {
    let mut chrome = json!({"args": [
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
        "--no-first-run", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--window-size=1100,900",
    ]});
    if std::path::Path::new("/usr/bin/chromium").exists() {
        chrome["binary"] = json!("/usr/bin/chromium");
    }
    let capabilities = json!({"browserName": "chrome", "goog:chromeOptions": chrome});
    let Value::Object(capabilities) = capabilities else { unreachable!() };
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    ClientBuilder::new(connector)
        .capabilities(capabilities)
        .connect(&driver.url)
        .await
        .expect("a Chromium session")
}

/// Saves a screenshot for the README when `USAGE_GATE_SCREENSHOTS` names a folder.
async fn screenshot(browser: &Client, name: &str) {
    if let Some(folder) = std::env::var_os("USAGE_GATE_SCREENSHOTS") {
        let png = browser.screenshot().await.unwrap();
        std::fs::write(std::path::Path::new(&folder).join(format!("{name}.png")), png).unwrap();
    }
}

async fn text(browser: &Client) -> String {
    browser.find(Locator::Css("main")).await.unwrap().text().await.unwrap()
}

/// Clicks what `target` finds and waits until the page it leads to has replaced this one.
/// Waiting only for an element of the next page could find it on this page (a flash message,
/// say) and read the page before the click; this page's root going stale cannot.
async fn click_through(browser: &Client, target: Locator<'_>) -> Result<(), CmdError> {
    let page = browser.find(Locator::Css("html")).await?;
    browser.find(target).await?.click().await?;
    let deadline = Instant::now() + PATIENCE;
    loop {
        // Any error means the old root is gone: chromedriver says stale, no such element or,
        // mid-navigation, "Node with given id does not belong to the document".
        match page.tag_name().await {
            Err(_) => break,
            Ok(_) if Instant::now() > deadline => return Err(CmdError::WaitTimeout),
            Ok(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    browser.wait().at_most(PATIENCE).for_element(Locator::Css("main")).await?;
    Ok(())
}

/// The path and query of the page shown.
async fn shown(browser: &Client) -> Result<String, CmdError> {
    let url = browser.current_url().await?;
    Ok(format!("{}{}", url.path(), url.query().map(|q| format!("?{q}")).unwrap_or_default()))
}

#[tokio::test]
async fn an_operator_finds_a_blocked_customer_acts_on_it_and_signs_out_in_a_real_browser() {
    let Some(driver) = driver().await else { return };
    let app = TestApp::spawn().await;
    // Umbrella is over its DISABLE limit; a check records its decision for the fleet view.
    assert_eq!(app.check(UMBRELLA).await["status"], "blocked");
    app.check(ACME).await;
    eventually(PATIENCE, "Umbrella recorded as blocked", || async {
        let status: Option<String> =
            sqlx::query_scalar("SELECT status FROM customer_decisions WHERE customer_id = $1::uuid")
                .bind(UMBRELLA)
                .fetch_optional(&app.pool)
                .await
                .unwrap();
        (status.as_deref() == Some("blocked")).then_some(())
    })
    .await;
    // Three weeks of Umbrella's history, as usage-gate would have recorded it (a point at every
    // 5% band of its 100.00 USD limit), for the plot.
    sqlx::query(
        "INSERT INTO usage_samples (customer_id, observed_at, status, estimate, currency, disable_limit)
         SELECT $1::uuid, now() - make_interval(days => 21 - d), 'ok', d * 700, 'USD', 10000
         FROM generate_series(0, 20, 2) AS d",
    )
    .bind(UMBRELLA)
    .execute(&app.pool)
    .await
    .unwrap();
    // An event for a metric BillaBear does not have: dead, with BillaBear's message.
    let dead = json!({"event_id": "console-dead-1", "subscription": ACME_SUBSCRIPTION, "code": "storage_gb_x", "value": 2});
    assert_eq!(app.post_event(&dead).await.status(), 202);
    app.outbox_status("console-dead-1", "dead").await;

    let browser = chromium(&driver).await;
    // Which step the browser is at, for a failure's message.
    let step = std::cell::Cell::new("start");
    let outcome = async {
        // Sign in.
        step.set("sign in");
        browser.goto(&app.url("/console/")).await?;
        browser.find(Locator::Css("#key")).await?.send_keys(ADMIN_KEY).await?;
        click_through(&browser, Locator::Css("form.login button[type=submit]")).await?;
        browser.find(Locator::Css("nav[aria-label=Console]")).await?;
        let overview = text(&browser).await;
        assert!(overview.contains("Customers by status"), "{overview}");
        let dead_count = browser.find(Locator::Css("dl.figures a[href='/console/outbox?status=dead']")).await?;
        assert_eq!(dead_count.text().await?, "1");

        // Who is blocked right now, and why?
        step.set("find the blocked customer");
        click_through(&browser, Locator::Css("a[href='/console/customers?status=blocked']")).await?;
        assert_eq!(shown(&browser).await?, "/console/customers?status=blocked");
        let listed = text(&browser).await;
        assert!(listed.contains(UMBRELLA) && listed.contains("disable_limit_exceeded"), "{listed}");
        assert!(!listed.contains(ACME), "only blocked customers: {listed}");
        screenshot(&browser, "console-customers").await;
        click_through(&browser, Locator::Css(&format!("a[href='/console/customers/{UMBRELLA}']"))).await?;
        assert_eq!(shown(&browser).await?, format!("/console/customers/{UMBRELLA}"));
        let explained = text(&browser).await;
        assert!(explained.contains("the estimate is over a DISABLE limit"), "{explained}");
        let plot = browser.find(Locator::Css("svg.plot")).await?;
        let line = plot.find(Locator::Css("polyline.usage")).await?.attr("points").await?.unwrap_or_default();
        // 11 recorded observations, the one its check recorded, and the decision now: a step
        // line of 2 points each after the first, and the carry to the end.
        assert_eq!(line.split(' ').count(), 1 + 2 * 12 + 1, "{line}");
        if let Some(folder) = std::env::var_os("USAGE_GATE_SCREENSHOTS") {
            std::fs::write(std::path::Path::new(&folder).join("console-usage-plot.png"), plot.screenshot().await?).unwrap();
        }

        // Raise its limit: a new DISABLE limit of 200.00 USD.
        step.set("create a limit");
        browser.find(Locator::Css("#limit-amount")).await?.send_keys("20000").await?;
        browser.find(Locator::Css("#limit-action")).await?.select_by_value("DISABLE").await?;
        click_through(&browser, Locator::Css("form[action$='/usage-limits'] button[type=submit]")).await?;
        let after = text(&browser).await;
        assert!(after.contains("Created a DISABLE limit of 20000"), "{after}");
        assert!(after.contains("200.00 USD"), "the new limit is listed: {after}");
        assert!(after.contains("usage_limit.create"), "the audit trail shows it: {after}");
        screenshot(&browser, "console-customer").await;
        // And delete the old one: the customer is allowed again, in the very next check.
        step.set("delete the old limit");
        let old = format!("form[action='/console/customers/{UMBRELLA}/usage-limits/{UMBRELLA_LIMIT}/delete'] button");
        click_through(&browser, Locator::Css(&old)).await?;
        let after = text(&browser).await;
        assert!(after.contains(&format!("Deleted limit {UMBRELLA_LIMIT}.")), "{after}");
        assert_eq!(app.check(UMBRELLA).await["status"], "ok");

        // Retry the dead event once BillaBear has the metric.
        step.set("retry the dead event");
        app.sim.add_subscription(ACME, json!({"metric": "storage_gb_x", "unit_price": 1.0})).await;
        click_through(&browser, Locator::LinkText("Dead letters")).await?;
        assert_eq!(shown(&browser).await?, "/console/outbox?status=dead");
        let letters = text(&browser).await;
        assert!(letters.contains("console-dead-1") && letters.contains("does not exist"), "{letters}");
        screenshot(&browser, "console-dead-letters").await;
        click_through(&browser, Locator::Css("form[action$='/retry'] button")).await?;
        let retried = text(&browser).await;
        assert!(retried.contains("queued for delivery again"), "{retried}");
        app.outbox_status("console-dead-1", "delivered").await;

        // The overview tells of Umbrella's change from blocked to ok.
        step.set("see the transition on the overview");
        eventually(PATIENCE, "Umbrella's transition recorded", || async {
            let n: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM audit_log WHERE action = 'decision.transition' AND customer_id = $1::uuid",
            )
            .bind(UMBRELLA)
            .fetch_one(&app.pool)
            .await
            .unwrap();
            (n > 0).then_some(())
        })
        .await;
        click_through(&browser, Locator::LinkText("Overview")).await?;
        assert_eq!(shown(&browser).await?, "/console/");
        let transitions = browser.find(Locator::Css("#transitions + table tbody")).await?.text().await?;
        let transitions = transitions.split_whitespace().collect::<Vec<_>>().join(" ");
        assert!(transitions.contains(UMBRELLA) && transitions.contains("blocked ok"), "{transitions}");
        screenshot(&browser, "console-overview").await;

        // What happened, in the audit log.
        step.set("read the audit log");
        browser.goto(&app.url("/console/audit?actor=operator")).await?;
        let audit = text(&browser).await;
        for action in ["console.login", "usage_limit.create", "outbox.retry"] {
            assert!(audit.contains(action), "{action}: {audit}");
        }

        // Sign out: the pages want a session again.
        step.set("sign out");
        click_through(&browser, Locator::Css("form.signout button")).await?;
        browser.find(Locator::Css("#key")).await?;
        browser.goto(&app.url("/console/customers")).await?;
        browser.wait().at_most(PATIENCE).for_element(Locator::Css("#key")).await?;
        assert!(browser.current_url().await?.as_str().contains("next=%2Fconsole%2Fcustomers"));
        Ok::<_, CmdError>(())
    }
    .await;
    if let Err(error) = outcome {
        let url = browser.current_url().await.map(|url| url.to_string()).unwrap_or_default();
        let shown = match browser.find(Locator::Css("body")).await {
            Ok(body) => body.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        panic!("the browser failed to {}: {error}\nat {url}, showing:\n{shown}", step.get());
    }
    let _ = browser.close().await;

    // What the browser did is what BillaBear, Postgres and the audit log hold.
    let limits = app.sim.customer(UMBRELLA).await["limits"].clone();
    let limits: Vec<(i64, String)> = limits
        .as_array()
        .unwrap()
        .iter()
        .map(|l| (l["amount"].as_i64().unwrap(), l["action"].as_str().unwrap().to_owned()))
        .collect();
    assert_eq!(limits, [(20000, "DISABLE".to_owned())]);
    assert_eq!(app.sim.event_count("console-dead-1").await, 1);
    let actions: Vec<String> = audit_actions(&app, "operator").await.into_iter().map(|(a, _)| a).collect();
    assert_eq!(
        actions,
        ["console.login", "usage_limit.create", "usage_limit.delete", "outbox.retry", "console.logout"]
    );
}

#[tokio::test]
async fn usage_is_recorded_at_every_five_percent_of_the_limit_for_the_fleet_view_and_the_plot() {
    let app = TestApp::spawn().await;
    let (customer, subscription) =
        app.sim.add_usage_customer(0.0, json!([{"amount": 1000, "action": "DISABLE"}])).await;
    app.check(&customer).await;
    let recorded = |estimates: Vec<i64>| {
        let (pool, customer) = (app.pool.clone(), customer.clone());
        async move {
            let samples: Vec<i64> = sqlx::query_scalar(
                "SELECT estimate FROM usage_samples WHERE customer_id = $1::uuid ORDER BY observed_at",
            )
            .bind(&customer)
            .fetch_all(&pool)
            .await
            .unwrap();
            let listed: Option<(Option<i64>, Option<i64>)> = sqlx::query_as(
                "SELECT estimate, disable_limit FROM customer_decisions WHERE customer_id = $1::uuid",
            )
            .bind(&customer)
            .fetch_optional(&pool)
            .await
            .unwrap();
            (samples == estimates && listed == Some((estimates.last().copied(), Some(1000)))).then_some(())
        }
    };
    eventually(Duration::from_secs(10), "the first sight recorded", || recorded(vec![0])).await;
    // 120 calls at 1 cent: 12% of the limit, two bands on.
    let event = |id: &str, calls: i64| json!({"event_id": id, "subscription": subscription, "code": "api_calls", "value": calls});
    assert_eq!(app.post_event(&event("band-1", 120)).await.status(), 202);
    eventually(Duration::from_secs(10), "12% recorded", || recorded(vec![0, 120])).await;
    // 5 more stay in that band: not recorded; 500 more reach 62%: recorded.
    assert_eq!(app.post_event(&event("band-2", 5)).await.status(), 202);
    assert_eq!(app.post_event(&event("band-3", 500)).await.status(), 202);
    eventually(Duration::from_secs(10), "62% recorded, and 12.5% not", || recorded(vec![0, 120, 625])).await;

    // The console lists it with that estimate against its limit.
    let mut browser = Browser::new(&app);
    browser.sign_in(ADMIN_KEY).await;
    let page = browser.get(&format!("/console/customers?q={}", &customer[..8])).await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains(&format!(r#"href="/console/customers/{customer}""#)), "{}", page.body);
    assert!(page.body.contains("6.25 USD of 10.00 USD (62%)"), "{}", page.body);
    // A whole id (any case) is found by key, and still filtered by status.
    let exact = browser.get(&format!("/console/customers?q={}", customer.to_uppercase())).await;
    assert!(exact.body.contains(&format!(r#"href="/console/customers/{customer}""#)), "{}", exact.body);
    let other_status = browser.get(&format!("/console/customers?status=blocked&q={customer}")).await;
    assert!(other_status.body.contains("No customer matches."), "{}", other_status.body);
}

#[tokio::test]
async fn an_override_made_and_ended_in_the_console_decides_the_next_check() {
    let app = TestApp::spawn().await;
    let mut browser = Browser::new(&app);
    browser.sign_in(ADMIN_KEY).await;
    let page = format!("/console/customers/{ACME}");
    let csrf = browser.get(&page).await.csrf();
    let fields = [
        ("csrf", csrf.as_str()),
        ("effect", "block"),
        ("amount", ""),
        ("reason", "card declined"),
        ("expires_in_hours", "8"),
    ];
    let made = browser.post(&format!("{page}/overrides"), &fields).await;
    assert_eq!((made.status, made.location.as_deref()), (303, Some(page.as_str())));
    let shown = browser.get(&page).await.body;
    assert!(shown.contains("Created an override (block) until"), "{shown}");
    let decision = app.check(ACME).await;
    assert_eq!(
        (decision["status"].as_str(), decision["override"]["effect"].as_str()),
        (Some("blocked"), Some("block"))
    );

    let id = decision["override"]["id"].as_str().unwrap().to_owned();
    let ended =
        browser.post(&format!("{page}/overrides/{id}/end"), &[("csrf", &csrf), ("reason", "paid")]).await;
    assert_eq!(ended.status, 303);
    assert!(browser.get(&page).await.body.contains("Ended the override."));
    assert_eq!(app.check(ACME).await["status"], "ok");
    let (ended_by, end_reason): (String, String) =
        sqlx::query_as("SELECT ended_by, end_reason FROM overrides WHERE id = $1::uuid")
            .bind(&id)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!((ended_by.as_str(), end_reason.as_str()), ("operator", "paid"));
    // A raise without its amount is refused, naming the field.
    let fields = [
        ("csrf", csrf.as_str()),
        ("effect", "raise"),
        ("amount", ""),
        ("reason", "deal"),
        ("expires_in_hours", "8"),
    ];
    browser.post(&format!("{page}/overrides"), &fields).await;
    let refused = browser.get(&page).await.body;
    assert!(refused.contains("amount: required for effect"), "{refused}");
}

#[tokio::test]
async fn a_rule_made_and_deleted_in_the_console_is_stored_listed_and_audited_with_the_operator() {
    let app = TestApp::spawn().await;
    let mut browser = Browser::new(&app);
    browser.sign_in(ADMIN_KEY).await;
    let csrf = browser.get("/console/rules").await.csrf();
    let mut fields = vec![
        ("csrf", csrf.as_str()),
        ("scope", "customer"),
        ("scope_id", ACME),
        ("measure", "cost"),
        ("metric", ""),
        ("limit", "5000"),
        ("window", "day"),
        ("time_zone", "Europe/Paris"),
        ("rolling_s", ""),
        ("mode", "hard"),
        ("thresholds", "50, 80, 100"),
        ("description", "fifty a day"),
    ];
    let made = browser.post("/console/rules", &fields).await;
    assert_eq!((made.status, made.location.as_deref()), (303, Some("/console/rules")));
    let shown = browser.get("/console/rules").await.body;
    assert!(
        shown.contains("Created rule") && shown.contains("calendar day, time_zone Europe/Paris"),
        "{shown}"
    );
    let listed: Value = app.admin(reqwest::Method::GET, "/v1/rules", None).await.json().await.unwrap();
    let rule = &listed["rules"][0];
    assert_eq!((rule["limit"].as_i64(), rule["thresholds"].clone()), (Some(5000), json!([50, 80, 100])));
    assert_eq!(rule["created_by"], "operator");

    // A bad box is named on the page, and nothing is stored.
    fields[5] = ("limit", "0");
    browser.post("/console/rules", &fields).await;
    let refused = browser.get("/console/rules").await.body;
    assert!(refused.contains("limit: must be a whole number more than 0"), "{refused}");

    let id = rule["id"].as_str().unwrap();
    let deleted = browser.post(&format!("/console/rules/{id}/delete"), &[("csrf", &csrf)]).await;
    assert_eq!(deleted.status, 303);
    assert!(browser.get("/console/rules").await.body.contains("No rules."));
    assert_eq!(
        audit_actions(&app, "operator")
            .await
            .into_iter()
            .filter(|(a, _)| a.starts_with("rule."))
            .collect::<Vec<_>>(),
        [("rule.create".to_owned(), "success".to_owned()), ("rule.delete".to_owned(), "success".to_owned())]
    );
}

#[tokio::test]
async fn a_customers_page_shows_its_plan() {
    let app = TestApp::spawn().await;
    let mut browser = Browser::new(&app);
    browser.sign_in(ADMIN_KEY).await;
    // Acme's plan: sso (no count), 25 projects, 10 users.
    let page = browser.get(&format!("/console/customers/{ACME}")).await.body;
    let plan = &page[page.find(r#"id="plan""#).expect("a plan section")..];
    let plan = &plan[..plan.find("</section>").unwrap()];
    for shown in [
        "<code>projects</code></td><td>25</td><td>0</td><td>billing period</td><td><time",
        "<code>sso</code></td><td>included, no count</td><td></td>",
        "<dd>10</dd>",
    ] {
        assert!(plan.contains(shown), "{shown} in {plan}");
    }
    // What usage-gate counted of a limited feature, in its window.
    let event = json!({"event_id": "console-projects", "customer": ACME, "code": "projects", "value": 2});
    assert_eq!(app.post_event(&event).await.status(), 202);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let page = browser.get(&format!("/console/customers/{ACME}")).await.body;
        if page.contains("<code>projects</code></td><td>25</td><td>2</td>") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the count on the page: {page}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let unknown = browser.get(&format!("/console/customers/{}", uuid::Uuid::new_v4())).await.body;
    assert!(unknown.contains("Not known: BillaBear could not be asked"), "{unknown}");
}

#[tokio::test]
async fn the_customer_page_shows_each_rule_used_of_its_limit_and_per_subject_when_asked() {
    let app = TestApp::spawn().await;
    let (customer, _) = app.sim.add_usage_customer(0.0, json!([])).await;
    app.check(&customer).await;
    let rule = |body: Value| app.admin(reqwest::Method::POST, "/v1/rules", Some(body));
    rule(json!({"scope": {"customer": customer}, "measure": {"cost": {}}, "limit": 40,
                "window": {"calendar": "day"}, "mode": "hard"}))
    .await;
    rule(json!({"scope": {"customer": customer}, "measure": {"metric": "api_calls"}, "limit": 7,
                "window": {"rolling_s": 600}, "mode": "hard", "per_subject": true}))
    .await;
    for i in 0..3 {
        let event = json!({"event_id": format!("console-{i}"), "customer": customer, "code": "api_calls",
                           "value": 1, "subject": "bob"});
        assert_eq!(app.post_enforced(&event).await.status(), 202);
    }
    let mut browser = Browser::new(&app);
    browser.sign_in(ADMIN_KEY).await;
    let page = format!("/console/customers/{customer}");
    // The replica's copy of the counts learns of the commit a moment after the 202: polled.
    let deadline = Instant::now() + Duration::from_secs(2);
    let whole = loop {
        let body = browser.get(&page).await.body;
        if body.contains("3 / 40") {
            break body;
        }
        assert!(Instant::now() < deadline, "the page counts the events: {body}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert!(whole.contains("calendar day") && whole.contains("whole customer"), "{whole}");
    assert!(!whole.contains("rolling_s 600"), "a per-subject rule needs a subject: {whole}");
    let bob = browser.get(&format!("{page}?subject=bob")).await.body;
    assert!(
        bob.contains("rolling_s 600") && bob.contains("3 / 7") && bob.contains("<code>bob</code>"),
        "{bob}"
    );
}
