//! `limit.window_reset`: told once when the window of a rule that crossed a threshold ends
//! (`limit.threshold_crossed` is queued by the statement that stores the events that crossed
//! it, `outbox::store`, whose row in `rule_crossings` is the dedupe record across replicas).

use std::time::Duration;

use sqlx::PgPool;

/// How often ended windows are looked for: a reset is told within this of the window's end.
const RESETS_EVERY: Duration = Duration::from_secs(1);

/// Tells each reset as windows end, on whichever replica marks it first. Runs until aborted.
pub fn spawn(pool: PgPool) -> tokio::task::AbortHandle {
    tokio::spawn(async move {
        let mut resets = tokio::time::interval(RESETS_EVERY);
        loop {
            resets.tick().await;
            match reset_ended(&pool).await {
                Ok(0) => {}
                Ok(n) => {
                    tracing::info!(windows = n, "rules: windows that crossed a threshold ended, resets told")
                }
                Err(e) => tracing::warn!(error = %e, "rules: cannot tell resets"),
            }
        }
    })
    .abort_handle()
}

/// Marks the crossings whose window ended and queues one `limit.window_reset` per window, with
/// the thresholds it crossed (one replica's statement takes each row).
async fn reset_ended(pool: &PgPool) -> Result<u64, sqlx::Error> {
    let told: Vec<i32> = sqlx::query_scalar(
        "WITH ended AS (
             UPDATE rule_crossings SET reset_at = now()
             WHERE reset_at IS NULL AND window_end <= now()
             RETURNING rule_id, customer_id, subject, window_start, window_end, threshold, \"limit\")
         SELECT queue_webhooks('limit.window_reset', e.customer_id, jsonb_build_object(
                    'rule_id', e.rule_id, 'customer_id', e.customer_id, 'subject', nullif(e.subject, ''),
                    'limit', max(e.\"limit\"), 'thresholds', jsonb_agg(e.threshold ORDER BY e.threshold),
                    'window_start', e.window_start, 'window_end', e.window_end))
         FROM ended AS e
         GROUP BY e.rule_id, e.customer_id, e.subject, e.window_start, e.window_end",
    )
    .fetch_all(pool)
    .await?;
    Ok(told.len() as u64)
}
