//! Real-time enforcement: the check counts the usage usage-gate accepted from its 202 until
//! BillaBear's counter includes it, priced as BillaBear prices it, never twice, on every
//! replica and across restarts. The simulator's counter runs only when a test ticks it.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use usage_gate::billabear::NewEvent;
use usage_gate::domain::{EventId, MetricCode, SubscriptionId};

use crate::helpers::*;

/// The promise: a check shows an accepted event within this long, on any replica.
const WITHIN: Duration = Duration::from_secs(1);

impl TestApp {
    /// Refetches the customer from BillaBear now (the admin refresh); the decision after it.
    async fn refresh(&self, customer: &str) -> Value {
        let response =
            self.admin(reqwest::Method::POST, &format!("/v1/customers/{customer}/refresh"), None).await;
        assert_eq!(response.status(), 200, "refresh {customer}");
        response.json().await.unwrap()
    }

    /// Polls the check until `until` holds for it, failing after `within`; the decision and how
    /// long it took from `since`.
    async fn check_until(
        &self,
        customer: &str,
        within: Duration,
        since: Instant,
        until: impl Fn(&Value) -> bool,
    ) -> (Value, Duration) {
        let decision = eventually(within, format!("the check of {customer}"), || async {
            let decision = self.check(customer).await;
            until(&decision).then_some(decision)
        })
        .await;
        (decision, since.elapsed())
    }
}

fn estimate(decision: &Value) -> (i64, i64, i64, u64) {
    let e = &decision["estimate"];
    (
        e["amount"].as_i64().unwrap(),
        e["billabear"].as_i64().unwrap(),
        e["pending"].as_i64().unwrap(),
        e["pending_events"].as_u64().unwrap(),
    )
}

fn reasons(decision: &Value) -> Vec<&str> {
    decision["reasons"].as_array().unwrap().iter().map(|r| r.as_str().unwrap()).collect()
}

/// BillaBear's own estimate for the customer, as the simulator reports it.
async fn billabear_total(app: &TestApp, customer: &str) -> i64 {
    let id = usage_gate::domain::CustomerId::parse(customer).unwrap();
    app.sim.client().get_cost_estimate(id).await.unwrap().total.amount
}

/// Events pending in Postgres's ledger: the folded sums plus the deltas not folded yet.
async fn ledger_events(app: &TestApp) -> i64 {
    sqlx::query_scalar(
        "SELECT coalesce(sum(events), 0)::bigint FROM
             (SELECT events FROM pending_usage UNION ALL SELECT events FROM pending_usage_deltas) AS p",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap()
}

fn sum_event(event_id: &str, subscription: &str, value: f64) -> Value {
    json!({"event_id": event_id, "subscription": subscription, "code": "api_calls", "value": value})
}

/// A customer billed 10 cents per api call, 20% tax added on top, at `usage` calls counted,
/// with a DISABLE limit of `limit` cents.
async fn taxed_customer(app: &TestApp, usage: f64, limit: i64) -> (String, String) {
    let view = app
        .sim
        .add_customer(json!({
            "subscriptions": [{"metric": "api_calls", "unit_price": 10.0, "tax_rate": 20.0,
                               "including_tax": false, "usage": usage}],
            "limits": [{"amount": limit, "action": "DISABLE"}],
        }))
        .await;
    (view["id"].as_str().unwrap().to_owned(), view["subscriptions"][0]["id"].as_str().unwrap().to_owned())
}

#[tokio::test]
async fn an_events_answer_counts_the_event_it_answers_for() {
    // As a new user tried it with the demo: 9,500 more under a 10,000 limit at 1,200 (1 cent a
    // call). The answer's decision must say blocked, not the estimate from before the event.
    let app = TestApp::spawn().await;
    let (customer, _) =
        app.sim.add_usage_customer(1200.0, json!([{"amount": 10000, "action": "DISABLE"}])).await;
    assert_eq!(app.check(&customer).await["allowed"], true);
    let event = json!({"event_id": "answer-1", "customer": customer, "code": "api_calls", "value": 9500});
    let response = app.post_event(&event).await;
    assert_eq!(response.status(), 202);
    let answer: Value = response.json().await.unwrap();
    let decision = &answer["decision"];
    assert_eq!(estimate(decision), (10700, 1200, 9500, 1), "{decision}");
    assert_eq!(decision["allowed"], false, "{decision}");
    assert_eq!(decision["status"], "blocked");

    // Its duplicate is answered with the same count (once, not twice).
    let again: Value = app.post_event(&event).await.json().await.unwrap();
    assert_eq!(estimate(&again["decision"]), (10700, 1200, 9500, 1), "{again}");
}

#[tokio::test]
async fn the_event_that_crosses_the_limit_blocks_within_a_second_and_counts_once_after_the_tick() {
    let app = TestApp::spawn().await;
    let (customer, subscription) = taxed_customer(&app, 100.0, 1500).await;
    let before = app.check(&customer).await;
    assert_eq!(estimate(&before), (1200, 1200, 0, 0), "100 calls × 10 + 20% tax: {before}");
    assert_eq!(before["allowed"], true);

    let sent = Instant::now();
    assert_eq!(app.post_event(&sum_event("cross-1", &subscription, 30.0)).await.status(), 202);
    let (blocked, took) = app.check_until(&customer, WITHIN, sent, |d| d["allowed"] == false).await;
    assert!(took <= WITHIN, "blocked {took:?} after the event's 202");
    // 30 calls × 10 × 1.2 = 360 more; BillaBear still says 1200.
    assert_eq!(estimate(&blocked), (1560, 1200, 360, 1), "{blocked}");
    assert_eq!(reasons(&blocked), ["disable_limit_exceeded", "pending_usage_exceeds_limit"]);
    assert_eq!(blocked["estimate"]["approximate"], false);
    assert_eq!(blocked["limits"][0]["exceeded"], true);
    app.delivered("cross-1").await;
    assert_eq!(billabear_total(&app, &customer).await, 1200, "BillaBear has not counted it yet");

    app.sim.tick().await;
    let after = app.refresh(&customer).await;
    assert_eq!(billabear_total(&app, &customer).await, 1560);
    assert_eq!(estimate(&after), (1560, 1560, 0, 0), "counted once, by BillaBear: {after}");
    assert_eq!(
        reasons(&after),
        ["customer_disabled", "disable_limit_exceeded"],
        "BillaBear fired the limit too"
    );
    let row = app.outbox_row("cross-1").await;
    assert_eq!(row["retired_as"], "counted", "{row}");
    assert_eq!(ledger_events(&app).await, 0, "nothing left in the ledger");
}

#[tokio::test]
async fn a_count_metric_counts_events_and_events_by_customer_count_like_by_subscription() {
    let app = TestApp::spawn().await;
    app.sim.add_metric(json!({"code": "searches", "name": "Searches", "aggregation": "count"})).await;
    let view = app
        .sim
        .add_customer(json!({"subscriptions": [{"metric": "searches", "unit_price": 5.0, "usage": 4}]}))
        .await;
    let customer = view["id"].as_str().unwrap().to_owned();
    let subscription = view["subscriptions"][0]["id"].as_str().unwrap().to_owned();
    assert_eq!(estimate(&app.check(&customer).await), (20, 20, 0, 0));

    let by_customer = json!({"event_id": "s-1", "customer": customer, "code": "searches", "value": 7});
    let by_subscription =
        json!({"event_id": "s-2", "subscription": subscription, "code": "searches", "value": 3});
    for event in [by_customer, by_subscription] {
        assert_eq!(app.post_event(&event).await.status(), 202);
    }
    // Two searches at 5 cents, whatever their values.
    let (projected, _) =
        app.check_until(&customer, WITHIN, Instant::now(), |d| d["estimate"]["pending_events"] == 2).await;
    assert_eq!(estimate(&projected), (30, 20, 10, 2), "{projected}");

    app.delivered("s-1").await;
    app.delivered("s-2").await;
    app.sim.tick().await;
    assert_eq!(estimate(&app.refresh(&customer).await), (30, 30, 0, 0));
    assert_eq!(billabear_total(&app, &customer).await, 30);
}

#[tokio::test]
async fn events_held_while_billabear_is_down_count_and_still_count_once_after_it_recovers() {
    let app = TestApp::spawn().await;
    let (customer, subscription) = taxed_customer(&app, 0.0, 100_000).await;
    assert_eq!(estimate(&app.check(&customer).await), (0, 0, 0, 0));
    app.sim.set_faults(json!({"error_rate": 1.0, "error_status": 503, "only": "events"})).await;
    for (i, value) in [2.0, 3.0].into_iter().enumerate() {
        assert_eq!(
            app.post_event(&sum_event(&format!("held-{i}"), &subscription, value)).await.status(),
            202
        );
    }
    let (held, _) =
        app.check_until(&customer, WITHIN, Instant::now(), |d| d["estimate"]["pending_events"] == 2).await;
    // 5 calls × 10; BillaBear's figures show no tax yet, so it is not known: approximate.
    assert_eq!(estimate(&held), (50, 0, 50, 2), "{held}");
    assert_eq!(held["estimate"]["approximate"], true);
    assert_eq!(app.outbox_row("held-0").await["status"], "pending", "not delivered while BillaBear is down");

    app.sim.clear_faults().await;
    app.outbox_status("held-0", "delivered").await;
    app.outbox_status("held-1", "delivered").await;
    app.sim.tick().await;
    let after = app.refresh(&customer).await;
    assert_eq!(estimate(&after), (60, 60, 0, 0), "BillaBear's own figure, tax included: {after}");
    assert_eq!(after["estimate"]["approximate"], false);
}

#[tokio::test]
async fn usage_sent_to_billabear_directly_shows_after_its_tick_and_retires_ours_once() {
    let app = TestApp::spawn().await;
    let (customer, subscription) = taxed_customer(&app, 10.0, 100_000).await;
    assert_eq!(estimate(&app.check(&customer).await), (120, 120, 0, 0));
    assert_eq!(app.post_event(&sum_event("ours-1", &subscription, 5.0)).await.status(), 202);
    app.delivered("ours-1").await;
    // Someone else's 20 calls, straight to BillaBear.
    let direct = NewEvent {
        event_id: EventId::parse("direct-1").unwrap(),
        subscription: SubscriptionId::parse(&subscription).unwrap(),
        code: MetricCode::parse("api_calls").unwrap(),
        value: 20.0,
        properties: Default::default(),
    };
    app.sim.client().create_event(&direct).await.unwrap();
    let (ours, _) =
        app.check_until(&customer, WITHIN, Instant::now(), |d| d["estimate"]["pending_events"] == 1).await;
    assert_eq!(estimate(&ours), (180, 120, 60, 1), "only what went through usage-gate is pending: {ours}");

    app.sim.tick().await;
    let after = app.refresh(&customer).await;
    assert_eq!(billabear_total(&app, &customer).await, 420, "35 calls × 12");
    assert_eq!(estimate(&after), (420, 420, 0, 0), "{after}");
}

#[tokio::test]
async fn two_replicas_agree_within_a_second() {
    let app = TestApp::spawn().await;
    let other = app.second_instance().await;
    let (customer, subscription) = taxed_customer(&app, 0.0, 100_000).await;
    assert_eq!(estimate(&other.check(&customer).await), (0, 0, 0, 0), "warm on the other replica");
    for i in 0..3 {
        let sent = Instant::now();
        assert_eq!(app.post_event(&sum_event(&format!("r-{i}"), &subscription, 1.0)).await.status(), 202);
        let (seen, took) =
            other.check_until(&customer, WITHIN, sent, |d| d["estimate"]["pending_events"] == i + 1).await;
        assert!(took <= WITHIN, "the other replica showed event {i} after {took:?}");
        assert_eq!(estimate(&seen).3, i + 1);
        let (_, took) =
            app.check_until(&customer, WITHIN, sent, |d| d["estimate"]["pending_events"] == i + 1).await;
        assert!(took <= WITHIN, "the replica that took event {i} showed it after {took:?}");
    }
}

#[tokio::test]
async fn a_restarted_replica_rebuilds_the_pending_figure_from_postgres() {
    let mut app = TestApp::spawn().await;
    let (customer, subscription) = taxed_customer(&app, 10.0, 100_000).await;
    app.sim.set_faults(json!({"error_rate": 1.0, "error_status": 503, "only": "events"})).await;
    assert_eq!(app.post_event(&sum_event("kept-1", &subscription, 4.0)).await.status(), 202);
    let (before, _) =
        app.check_until(&customer, WITHIN, Instant::now(), |d| d["estimate"]["pending_events"] == 1).await;
    app.shut_down().await;

    let restarted = app.second_instance().await;
    let after = restarted.check(&customer).await;
    assert_eq!(estimate(&after), estimate(&before), "{after}");
    assert_eq!(estimate(&after), (168, 120, 48, 1));
}

#[tokio::test]
async fn an_event_that_goes_dead_stops_counting() {
    let app = TestApp::spawn_with(|s| s.outbox.max_attempts = 1).await;
    let (customer, subscription) = taxed_customer(&app, 10.0, 100_000).await;
    app.check(&customer).await;
    app.sim.set_faults(json!({"error_rate": 1.0, "error_status": 503, "only": "events"})).await;
    assert_eq!(app.post_event(&sum_event("doomed-1", &subscription, 4.0)).await.status(), 202);
    app.outbox_status("doomed-1", "dead").await;
    let (after, _) =
        app.check_until(&customer, WITHIN, Instant::now(), |d| d["estimate"]["pending_events"] == 0).await;
    assert_eq!(estimate(&after), (120, 120, 0, 0));
}

#[tokio::test]
async fn a_tiered_price_is_projected_at_its_marginal_rate_and_says_approximate() {
    let app = TestApp::spawn().await;
    // API.md's example: 1–20 at 10 each, then 5 each; the listing shows no amount.
    let view = app
        .sim
        .add_customer(json!({"subscriptions": [{"metric": "api_calls", "usage": 25,
            "tiers": [{"up_to": 20, "unit_price": 10}, {"unit_price": 5}]}]}))
        .await;
    let customer = view["id"].as_str().unwrap().to_owned();
    let subscription = view["subscriptions"][0]["id"].as_str().unwrap().to_owned();
    assert_eq!(estimate(&app.check(&customer).await), (225, 225, 0, 0));
    app.sim.set_usage(&customer, 30.0).await;
    assert_eq!(estimate(&app.refresh(&customer).await), (250, 250, 0, 0));

    assert_eq!(app.post_event(&sum_event("tier-1", &subscription, 10.0)).await.status(), 202);
    let (projected, _) =
        app.check_until(&customer, WITHIN, Instant::now(), |d| d["estimate"]["pending_events"] == 1).await;
    // The last two figures: 25 more units cost 5 each.
    assert_eq!(estimate(&projected), (300, 250, 50, 1), "{projected}");
    assert_eq!(projected["estimate"]["approximate"], true);
    app.delivered("tier-1").await;
    app.sim.tick().await;
    assert_eq!(estimate(&app.refresh(&customer).await), (300, 300, 0, 0));
}

#[tokio::test]
async fn pending_usage_that_crosses_a_limit_is_an_audited_decision_transition() {
    let app = TestApp::spawn().await;
    let (customer, subscription) = taxed_customer(&app, 10.0, 200).await;
    assert_eq!(app.check(&customer).await["status"], "ok");
    // Held in the outbox: no delivery, so no refetch either; the pending usage alone does it.
    app.sim.set_faults(json!({"error_rate": 1.0, "error_status": 503, "only": "events"})).await;
    assert_eq!(app.post_event(&sum_event("t-1", &subscription, 10.0)).await.status(), 202);
    let transition = eventually(Duration::from_secs(5), "the transition to be audited", || async {
        let rows = app.audit_rows("decision.transition").await;
        rows.into_iter().find(|r| r["customer_id"] == customer.as_str())
    })
    .await;
    assert_eq!(
        (transition["details"]["from"].as_str(), transition["details"]["to"].as_str()),
        (Some("ok"), Some("blocked"))
    );
}

#[tokio::test]
async fn folding_the_ledgers_deltas_keeps_its_sums_and_drops_what_reached_zero() {
    let app = TestApp::spawn().await;
    let (customer, subscription) = taxed_customer(&app, 0.0, 100_000).await;
    app.check(&customer).await;
    app.sim.set_faults(json!({"error_rate": 1.0, "error_status": 503, "only": "events"})).await;
    for i in 0..5 {
        assert_eq!(app.post_event(&sum_event(&format!("f-{i}"), &subscription, 2.0)).await.status(), 202);
    }
    // Folded here, or by the replica's own upkeep if it holds the lock right now.
    eventually(Duration::from_secs(5), "the deltas folded", || async {
        usage_gate::pending::store::fold(&app.pool).await.unwrap();
        let deltas: i64 = sqlx::query_scalar("SELECT count(*) FROM pending_usage_deltas")
            .fetch_one(&app.pool)
            .await
            .unwrap();
        (deltas == 0).then_some(())
    })
    .await;
    let folded: (String, f64, i64) =
        sqlx::query_as("SELECT kind::text, units::float8, events FROM pending_usage WHERE target = $1::uuid")
            .bind(&subscription)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(folded, ("s".to_owned(), 10.0, 5));
    // Retired by an operator's SQL: the triggers take it out, and a fold drops the empty row.
    sqlx::query("UPDATE outbox SET retired_at = now(), retired_as = 'expired'")
        .execute(&app.pool)
        .await
        .unwrap();
    assert_eq!(ledger_events(&app).await, 0);
    eventually(Duration::from_secs(5), "the emptied row dropped", || async {
        usage_gate::pending::store::fold(&app.pool).await.unwrap();
        let rows: i64 =
            sqlx::query_scalar("SELECT count(*) FROM pending_usage").fetch_one(&app.pool).await.unwrap();
        (rows == 0).then_some(())
    })
    .await;
    let (after, _) =
        app.check_until(&customer, WITHIN, Instant::now(), |d| d["estimate"]["pending_events"] == 0).await;
    assert_eq!(estimate(&after), (0, 0, 0, 0));
}

#[tokio::test]
async fn a_replica_vacuums_the_ledger_once_its_dead_rows_pile_up() {
    let app = TestApp::spawn().await;
    let vacuums = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT vacuum_count FROM pg_stat_user_tables WHERE relname = 'pending_usage_deltas'",
        )
        .fetch_one(&app.pool)
        .await
        .unwrap()
    };
    assert_eq!(vacuums().await, 0);
    // A delta per commit (one statement's events for a target share one), each deleted by the
    // next fold: 1,100 commits leave dead rows past the threshold.
    for i in 0..1100 {
        let response = app.post_event(&sum_event(&format!("dead-{i}"), ACME_SUBSCRIPTION, 1.0)).await;
        assert_eq!(response.status(), 202);
    }
    eventually(Duration::from_secs(20), "the deltas table vacuumed", || async {
        (vacuums().await > 0).then_some(())
    })
    .await;
}

#[tokio::test]
async fn fetches_settled_together_record_and_retire_each_as_if_alone() {
    // The answers are asserted at once: settling gets all the time it needs (by default a fetch
    // caches its snapshot after 250 ms and retires a moment later, which a loaded machine hits).
    let app =
        TestApp::spawn_with(|raw| raw.pending.settle_timeout = std::time::Duration::from_millis(30_000))
            .await;
    // One customer fetched before, whose counter grows, beside a dozen never fetched; half of
    // those had usage delivered and counted by BillaBear before usage-gate first fetched them.
    let (warm, warm_subscription) = taxed_customer(&app, 10.0, 100_000).await;
    assert_eq!(estimate(&app.check(&warm).await), (120, 120, 0, 0));
    let mut cold = Vec::new();
    for _ in 0..12 {
        cold.push(taxed_customer(&app, 10.0, 100_000).await);
    }
    let mut sent = vec![("warm-1".to_owned(), warm_subscription)];
    sent.extend(cold.iter().enumerate().step_by(2).map(|(i, (_, s))| (format!("cold-{i}"), s.clone())));
    for (event_id, subscription) in &sent {
        assert_eq!(app.post_event(&sum_event(event_id, subscription, 5.0)).await.status(), 202);
    }
    for (event_id, _) in &sent {
        eventually(Duration::from_secs(10), format!("{event_id} marked delivered"), || async {
            (app.outbox_row(event_id).await["status"] == "delivered").then_some(())
        })
        .await;
    }
    app.sim.tick().await;

    let body =
        json!({"customers": cold.iter().map(|(c, _)| json!({"id": c})).collect::<Vec<_>>()}).to_string();
    let (refreshed, answer) = tokio::join!(app.refresh(&warm), app.check_batch(&body));
    assert_eq!(estimate(&refreshed), (180, 180, 0, 0), "15 calls × 12, counted once: {refreshed}");
    assert_eq!(answer.status(), 200);
    let answer: Value = answer.json().await.unwrap();
    for (i, decision) in answer["decisions"].as_array().unwrap().iter().enumerate() {
        let expected = if i % 2 == 0 { 180 } else { 120 };
        assert_eq!(estimate(decision), (expected, expected, 0, 0), "cold customer {i}: {decision}");
    }
    for (event_id, _) in &sent {
        assert_eq!(app.outbox_row(event_id).await["retired_as"], "counted", "{event_id}");
    }
    assert_eq!(ledger_events(&app).await, 0, "nothing left in the ledger");
    let recorded: Vec<(f64, i64)> =
        sqlx::query_as("SELECT usage, count(*) FROM billabear_counters GROUP BY usage ORDER BY usage")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_eq!(recorded, [(10.0, 6), (15.0, 7)], "each subscription's counter recorded once, as fetched");
}
