//! A customer changed in BillaBear (a limit created or deleted, a webhook): this replica
//! refetches it, so its very next check reflects the change, and tells the other replicas on the
//! same database to drop their cached snapshot: Postgres NOTIFY on one side, a LISTEN task on
//! every replica. The replica that made the change ignores its own notification.

use std::sync::Arc;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use sqlx::PgPool;
use tokio::sync::watch;
use uuid::Uuid;

use crate::cache::SnapshotCache;
use crate::db;
use crate::domain::CustomerId;

pub const CHANNEL: &str = "usage_gate_customers";

/// This replica's side of it; cheap to clone.
#[derive(Clone)]
pub struct Invalidation {
    pool: PgPool,
    cache: SnapshotCache,
    /// Tells this replica's notifications from the others'.
    replica: Uuid,
}

impl Invalidation {
    /// Starts listening: notified customers are dropped from `cache`. The handle stops the
    /// listening task (when the application stops); the receiver turns true once it listens.
    pub fn start(
        pool: PgPool,
        cache: SnapshotCache,
    ) -> (Self, tokio::task::AbortHandle, watch::Receiver<bool>) {
        let replica = Uuid::new_v4();
        let (ready, listening_now) = watch::channel(false);
        let listener = Arc::new(Listener { cache: cache.clone(), replica });
        let listening = tokio::spawn(db::follow(pool.clone(), CHANNEL, listener, ready)).abort_handle();
        (Self { pool, cache, replica }, listening, listening_now)
    }

    /// After a change to the customer in BillaBear: refetch it here, so the very next check
    /// reflects the change, and tell the other replicas to drop their copy.
    pub async fn customer_changed(&self, customer: CustomerId) {
        if let Err(e) = self.cache.refresh(customer).await {
            // The next check fetches it instead.
            self.cache.invalidate(customer);
            tracing::warn!(%customer, error = %e, "cannot refetch a changed customer");
        }
        if let Err(e) = self.tell_others(customer).await {
            tracing::warn!(%customer, error = %e, "cannot tell other replicas a customer changed");
        }
    }

    /// Tells the other replicas to drop the customer's snapshot.
    async fn tell_others(&self, customer: CustomerId) -> Result<(), sqlx::Error> {
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(CHANNEL)
            .bind(payload(self.replica, customer))
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

fn payload(replica: Uuid, customer: CustomerId) -> String {
    format!("{customer} {replica}")
}

/// The customer a notification names, unless this replica sent it.
fn parse(payload: &str, replica: Uuid) -> Option<CustomerId> {
    let (customer, from) = payload.split_once(' ')?;
    if Uuid::parse_str(from).ok()? == replica {
        return None;
    }
    CustomerId::parse(customer).ok()
}

/// Drops the customers other replicas name from this replica's cache (`db::follow`).
struct Listener {
    cache: SnapshotCache,
    replica: Uuid,
}

impl db::Follower for Listener {
    fn reload_all(&self, _first: bool) -> BoxFuture<'_, Result<(), sqlx::Error>> {
        // Changes notified while listening was down are missed; the cache's TTL bounds that.
        futures_util::future::ready(Ok(())).boxed()
    }

    fn reload(&self, payloads: Vec<String>) -> BoxFuture<'_, Result<(), sqlx::Error>> {
        for customer in payloads.iter().filter_map(|p| parse(p, self.replica)) {
            self.cache.invalidate(customer);
        }
        futures_util::future::ready(Ok(())).boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replica_ignores_its_own_notifications() {
        let (me, other) = (Uuid::new_v4(), Uuid::new_v4());
        let customer = CustomerId::parse("c1111111-1111-4111-8111-111111111111").unwrap();
        assert_eq!(parse(&payload(other, customer), me), Some(customer));
        assert_eq!(parse(&payload(me, customer), me), None);
        assert_eq!(parse("garbage", me), None);
        assert_eq!(parse(&format!("not-a-uuid {other}"), me), None);
    }
}
