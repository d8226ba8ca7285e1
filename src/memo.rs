//! Answers that are expensive to compute and asked for by anyone (`/readyz` calls BillaBear,
//! `/metrics` counts the outbox): recomputed at most once per interval, and concurrent callers
//! share one computation, so a flood of unauthenticated requests costs nothing downstream.

use std::time::Duration;

use tokio::sync::Mutex;
use tokio::time::Instant;

pub struct Memo<T> {
    every: Duration,
    slot: Mutex<Option<(Instant, T)>>,
}

impl<T: Clone> Memo<T> {
    pub fn new(every: Duration) -> Self {
        Self { every, slot: Mutex::new(None) }
    }

    /// The value computed within the last interval, or a new one from `compute`. A value for
    /// which `keep` is false is answered but not kept (the next caller computes again).
    pub async fn get<Fut>(&self, compute: impl FnOnce() -> Fut, keep: impl FnOnce(&T) -> bool) -> T
    where
        Fut: Future<Output = T>,
    {
        let mut slot = self.slot.lock().await;
        if let Some((at, value)) = slot.as_ref()
            && at.elapsed() < self.every
        {
            return value.clone();
        }
        let value = compute().await;
        *slot = keep(&value).then(|| (Instant::now(), value.clone()));
        value
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn computes_once_per_interval_and_skips_what_it_should_not_keep() {
        let memo = Memo::new(Duration::from_secs(5));
        let calls = AtomicU32::new(0);
        let count = || async { calls.fetch_add(1, Ordering::Relaxed) + 1 };
        assert_eq!(memo.get(count, |_| true).await, 1);
        assert_eq!(memo.get(count, |_| true).await, 1);
        tokio::time::advance(Duration::from_secs(6)).await;
        assert_eq!(memo.get(count, |_| false).await, 2);
        assert_eq!(memo.get(count, |_| true).await, 3, "a value not kept is computed again");
    }
}
