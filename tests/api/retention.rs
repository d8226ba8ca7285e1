//! What usage-gate keeps: rows past their window are pruned, the others kept, and the audit log
//! is kept unless operators choose a window.

use std::time::Duration;

use serde_json::json;
use uuid::Uuid;

use crate::helpers::*;

async fn count(app: &TestApp, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(&app.pool).await.unwrap()
}

/// One row of each kind `age` ago: a closed hold, an ended override, a counter and a decision
/// last seen, an audit record, a console session last used, a usage sample, a feature count, a
/// billing period and a feature limit reached (its reset told).
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
        "INSERT INTO console_sessions (id_digest, key_digest, csrf_token, created_at, last_seen_at)
         VALUES (decode(md5(random()::text), 'hex'), decode(md5(random()::text), 'hex'), 'csrf',
                 now() - $1::interval, now() - $1::interval)",
        "INSERT INTO usage_samples (customer_id, observed_at, status, estimate, currency)
         VALUES (gen_random_uuid(), now() - $1::interval, 'ok', 1, 'USD')",
        "INSERT INTO feature_usage (kind, target, code, window_start, units)
         VALUES ('c', gen_random_uuid(), 'api_calls', now() - $1::interval, 1)",
        "INSERT INTO billing_periods (target, starts_at, ends_at, recorded_at)
         VALUES (gen_random_uuid(), now() - $1::interval, now() - $1::interval, now() - $1::interval)",
        "INSERT INTO feature_limit_crossings (customer_id, code, window_start, window_end, \"limit\", reset_at)
         VALUES (gen_random_uuid(), 'api_calls', now() - $1::interval, now() - $1::interval, 1, now() - $1::interval)",
        "INSERT INTO rule_usage (customer_id, rule_id, subject, bucket_start, expires_at, amount)
         VALUES (gen_random_uuid(), gen_random_uuid(), '', now() - $1::interval - interval '1 hour', now() - $1::interval, 1)",
        "INSERT INTO rule_crossings (rule_id, customer_id, subject, window_start, threshold, window_end, used, \"limit\", reset_at)
         VALUES (gen_random_uuid(), gen_random_uuid(), '', now() - $1::interval, 80, now() - $1::interval, 8, 10, now() - $1::interval)",
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
    // A rule's bucket still counting.
    sqlx::query(
        "INSERT INTO rule_usage (customer_id, rule_id, subject, bucket_start, expires_at, amount)
         VALUES (gen_random_uuid(), gen_random_uuid(), 'bob', now(), now() + interval '1 hour', 1)",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    let open_hold = app.sim.add_usage_customer(1.0, json!([])).await.0;
    assert_eq!(app.hold(&open_hold, json!({"amount": 1})).await.status(), 201);
    let audit_before = count(&app, "SELECT count(*) FROM audit_log").await;
    let counted_before = pruned_counts(&app).await;

    let settings = test_settings("http://127.0.0.1:9", "postgres://x@127.0.0.1/x").validate().unwrap();
    let removed =
        usage_gate::retention::prune(&app.pool, &usage_gate::retention::Plan::new(&settings)).await.unwrap();
    assert_eq!(
        removed,
        [
            ("reservations", 1),
            ("overrides", 1),
            ("billabear_counters", 1),
            ("customer_decisions", 1),
            ("webhook_messages", 0),
            ("console_sessions", 1),
            ("usage_samples", 1),
            ("feature_usage", 1),
            ("billing_periods", 1),
            ("feature_limit_crossings", 1),
            ("rule_usage", 2),
            ("rule_crossings", 1),
        ],
        "the default windows: the audit log is kept"
    );
    assert_eq!(count(&app, "SELECT count(*) FROM rule_usage").await, 1, "the bucket still counting");
    assert_eq!(count(&app, "SELECT count(*) FROM feature_usage").await, 1, "the count of an hour ago");
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
    raw.retention.audit = usage_gate::config::Days(365.0);
    let removed =
        usage_gate::retention::prune(&app.pool, &usage_gate::retention::Plan::new(&raw.validate().unwrap()))
            .await
            .unwrap();
    assert!(removed.contains(&("audit_log", 1)), "{removed:?}");
    assert_eq!(
        count(&app, "SELECT count(*) FROM audit_log WHERE action = 'test.old'").await,
        1,
        "the recent one"
    );

    assert_eq!(count(&app, "SELECT count(*) FROM console_sessions").await, 1, "the one used an hour ago");
    assert_eq!(
        count(&app, "SELECT count(*) FROM usage_samples WHERE observed_at < now() - interval '1 day'").await,
        0
    );

    // Counted: the metric is one per process, so other tests' pruning may add to it too.
    let counted = pruned_counts(&app).await;
    for table in [
        "reservations",
        "overrides",
        "billabear_counters",
        "customer_decisions",
        "console_sessions",
        "usage_samples",
    ] {
        assert!(
            counted[table] > counted_before[table],
            "{table}: {} then {}",
            counted_before[table],
            counted[table]
        );
    }
    assert!(counted["audit_log"] > counted_before["audit_log"]);
}

/// `usage_gate_pruned_rows_total` by table, as /metrics shows it (every table there from
/// start-up).
async fn pruned_counts(app: &TestApp) -> std::collections::HashMap<String, u64> {
    let metrics = app.get("/metrics", None).await.text().await.unwrap();
    usage_gate::retention::TABLES
        .iter()
        .map(|table| {
            let name = format!("usage_gate_pruned_rows_total{{table=\"{table}\"}} ");
            let line = metrics
                .lines()
                .find_map(|l| l.strip_prefix(&name))
                .unwrap_or_else(|| panic!("{table} exported"));
            (table.to_string(), line.trim().parse().unwrap())
        })
        .collect()
}

/// An aged closed hold; its id.
async fn aged_closed_hold(pool: &sqlx::PgPool) -> Uuid {
    sqlx::query_scalar(
        "INSERT INTO reservations (id, customer_id, amount, created_at, expires_at, created_by, closed_at, closed_as)
         VALUES (gen_random_uuid(), gen_random_uuid(), 5, now() - interval '1 day', now() - interval '1 day',
                 'test', now() - interval '1 day', 'released') RETURNING id",
    )
    .fetch_one(pool)
    .await
    .unwrap()
}

async fn kept(pool: &sqlx::PgPool, id: Uuid) -> bool {
    sqlx::query_scalar::<_, i64>("SELECT count(*) FROM reservations WHERE id = $1")
        .bind(id)
        .fetch_one(pool)
        .await
        .unwrap()
        == 1
}

#[tokio::test]
async fn a_replica_prunes_first_one_interval_after_it_starts() {
    // A replica that would prune at once, were it not for the first round's delay.
    let app = TestApp::spawn().await;
    let id = aged_closed_hold(&app.pool).await;
    let started = std::time::Instant::now();
    let _second = app
        .second_instance_with(|raw| {
            raw.retention.interval = std::time::Duration::from_secs(2);
            raw.retention.reservations = usage_gate::config::Days(1.0 / 86_400.0);
        })
        .await;
    eventually(Duration::from_secs(15), "the aged hold pruned", || async {
        (!kept(&app.pool, id).await).then_some(())
    })
    .await;
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "pruned {:?} after start-up, before one interval",
        started.elapsed()
    );
}

#[tokio::test]
async fn replicas_prune_one_at_a_time_and_each_on_its_own() {
    let every_second = |raw: &mut usage_gate::config::Settings| {
        raw.retention.interval = std::time::Duration::from_secs(1);
        raw.retention.reservations = usage_gate::config::Days(1.0 / 86_400.0);
    };
    let mut first = TestApp::spawn_with(every_second).await;
    let second = first.second_instance_with(every_second).await;

    // While another holds the retention lock (as a replica pruning would), neither prunes.
    let mut holder = first.pool.acquire().await.unwrap();
    // Waits for a replica's round under way to end.
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(usage_gate::retention::LOCK)
        .execute(&mut *holder)
        .await
        .unwrap();
    let id = aged_closed_hold(&first.pool).await;
    // Three rounds of each replica: an observation window, not a wait for something to happen.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(kept(&first.pool, id).await, "pruned while another held the lock");
    sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(usage_gate::retention::LOCK)
        .execute(&mut *holder)
        .await
        .unwrap();
    eventually(Duration::from_secs(10), "the hold pruned once the lock is free", || async {
        (!kept(&first.pool, id).await).then_some(())
    })
    .await;

    // One replica gone: the other prunes on its own.
    first.shut_down().await;
    let id = aged_closed_hold(&second.pool).await;
    eventually(Duration::from_secs(10), "the second replica pruning alone", || async {
        (!kept(&second.pool, id).await).then_some(())
    })
    .await;
}
