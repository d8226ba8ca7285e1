//! What usage-gate keeps: rows past their window are pruned, the others kept, and the audit log
//! is kept unless operators choose a window.

use std::time::Duration;

use serde_json::json;
use uuid::Uuid;

use crate::helpers::*;

async fn count(app: &TestApp, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(&app.pool).await.unwrap()
}

/// One row of each kind `age` ago, and one recent: a closed hold, an ended override, a counter
/// and a decision last seen, an audit record.
async fn rows_aged(app: &TestApp, age: &str) {
    let statements = [
        "INSERT INTO reservations (id, customer_id, amount, created_at, expires_at, created_by, closed_at, closed_as)
         VALUES (gen_random_uuid(), gen_random_uuid(), 5, now() - $1::interval, now() - $1::interval,
                 'test', now() - $1::interval, 'released')",
        "INSERT INTO overrides (id, customer_id, effect, reason, created_at, created_by, expires_at, ended_at, ended_as)
         VALUES (gen_random_uuid(), gen_random_uuid(), 'allow', 'test', now() - $1::interval, 'test',
                 now() - $1::interval, now() - $1::interval, 'expired')",
        "INSERT INTO billabear_counters (subscription_id, usage, amount, observed_at)
         VALUES (gen_random_uuid(), 1, 1, now() - $1::interval)",
        "INSERT INTO customer_decisions (customer_id, status, observed_at)
         VALUES (gen_random_uuid(), 'ok', now() - $1::interval)",
        "INSERT INTO audit_log (occurred_at, actor, action, outcome) VALUES (now() - $1::interval, 'test', 'test.old', 'success')",
    ];
    for statement in statements {
        sqlx::query(statement).bind(age).execute(&app.pool).await.unwrap();
    }
}

#[tokio::test]
async fn rows_past_their_window_are_pruned_and_the_audit_log_is_kept_unless_a_window_is_set() {
    let app = TestApp::spawn().await;
    rows_aged(&app, "400 days").await;
    rows_aged(&app, "1 hour").await;
    let open_hold = app.sim.add_usage_customer(1.0, json!([])).await.0;
    assert_eq!(app.hold(&open_hold, json!({"amount": 1})).await.status(), 201);
    let audit_before = count(&app, "SELECT count(*) FROM audit_log").await;

    let settings =
        test_settings("http://127.0.0.1:9", "postgres://x@127.0.0.1/x").validate().unwrap().retention;
    let removed = usage_gate::retention::prune(&app.pool, &settings).await.unwrap();
    assert_eq!(
        removed,
        [
            ("reservations", 1),
            ("overrides", 1),
            ("billabear_counters", 1),
            ("customer_decisions", 1),
            ("webhook_messages", 0),
            ("console_sessions", 0),
            ("usage_samples", 0),
        ],
        "the default windows: the audit log is kept"
    );
    assert_eq!(
        count(&app, "SELECT count(*) FROM reservations").await,
        2,
        "the recent closed one and the open one"
    );
    assert_eq!(count(&app, "SELECT count(*) FROM overrides").await, 1);
    assert_eq!(
        count(&app, "SELECT count(*) FROM billabear_counters WHERE observed_at < now() - interval '1 day'")
            .await,
        0
    );
    assert_eq!(
        count(&app, "SELECT count(*) FROM customer_decisions WHERE observed_at < now() - interval '1 day'")
            .await,
        0
    );
    assert_eq!(count(&app, "SELECT count(*) FROM audit_log").await, audit_before);

    let mut raw = test_settings("http://127.0.0.1:9", "postgres://x@127.0.0.1/x");
    raw.retention.audit_days = 365.0;
    let removed = usage_gate::retention::prune(&app.pool, &raw.validate().unwrap().retention).await.unwrap();
    assert!(removed.contains(&("audit_log", 1)), "{removed:?}");
    assert_eq!(
        count(&app, "SELECT count(*) FROM audit_log WHERE action = 'test.old'").await,
        1,
        "the recent one"
    );

    let metrics = app.get("/metrics", None).await.text().await.unwrap();
    for table in usage_gate::retention::TABLES {
        assert!(metrics.contains(&format!("usage_gate_pruned_rows_total{{table=\"{table}\"}}")), "{table}");
    }
}

#[tokio::test]
async fn each_replica_prunes_on_its_own_every_interval() {
    let app = TestApp::spawn_with(|raw| {
        raw.retention.interval_s = 1;
        raw.retention.reservations_days = 1.0 / 86_400.0; // one second
    })
    .await;
    let (customer, _) = app.sim.add_usage_customer(1.0, json!([])).await;
    let held: serde_json::Value = app.hold(&customer, json!({"amount": 1})).await.json().await.unwrap();
    let id = Uuid::parse_str(held["id"].as_str().unwrap()).unwrap();
    let released =
        app.http.delete(app.url(&format!("/v1/reservations/{id}"))).bearer_auth(EVENTS_KEY).send().await;
    assert_eq!(released.unwrap().status(), 204);
    eventually(Duration::from_secs(10), "the released hold pruned", || async {
        let left: i64 = sqlx::query_scalar("SELECT count(*) FROM reservations WHERE id = $1")
            .bind(id)
            .fetch_one(&app.pool)
            .await
            .unwrap();
        (left == 0).then_some(())
    })
    .await;
}
