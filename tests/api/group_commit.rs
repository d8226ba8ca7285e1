//! `db::group`, the group commit event ingest and the holds write through, with a writer of its
//! own over a table of its own: what each caller is answered, and what Postgres holds.

use std::time::Duration;

use sqlx::PgConnection;
use usage_gate::db::FailureKind;
use usage_gate::db::group::{Dedicated, Group, GroupCommit};

use crate::helpers::*;

/// Writes numbers into `numbers`, which refuses negative ones (a value Postgres refuses).
struct Numbers;

impl Group for Numbers {
    type Request = i64;
    type Answer = i64;

    async fn write(&self, conn: &mut PgConnection, requests: &[i64]) -> Result<Vec<i64>, sqlx::Error> {
        sqlx::query("INSERT INTO numbers (n) SELECT * FROM unnest($1::bigint[])")
            .bind(requests)
            .execute(&mut *conn)
            .await?;
        Ok(requests.to_vec())
    }
}

#[tokio::test]
async fn a_failed_shared_commit_answers_each_request_alone_and_keeps_the_others() {
    let (_, pool) = fresh_database().await;
    sqlx::query("CREATE TABLE numbers (n bigint NOT NULL CHECK (n >= 0))").execute(&pool).await.unwrap();
    let db = Dedicated::new(pool.clone(), Duration::from_secs(5), Duration::from_secs(5));
    let (queue, committing) = GroupCommit::new(Numbers, db, 64);
    // Queued before the writer runs, so they are committed together.
    let sends: Vec<_> = (0..20)
        .map(|i| {
            let queue = queue.clone();
            let n = if i == 7 { -7 } else { i };
            tokio::spawn(async move { queue.submit(n).await })
        })
        .collect();
    tokio::task::yield_now().await;
    let writer = tokio::spawn(committing.run());
    let mut answers = Vec::new();
    for send in sends {
        answers.push(send.await.unwrap());
    }
    for (i, answer) in answers.iter().enumerate() {
        match (i, answer) {
            (7, Err(e)) => assert_eq!(e.kind, FailureKind::Data, "the refused number fails alone: {e}"),
            (7, Ok(n)) => panic!("-7 was answered {n}"),
            (i, answer) => assert_eq!(answer.as_ref().ok(), Some(&(i as i64)), "request {i}"),
        }
    }
    let stored: Vec<i64> =
        sqlx::query_scalar("SELECT n FROM numbers ORDER BY n").fetch_all(&pool).await.unwrap();
    assert_eq!(stored, (0..20).filter(|n| *n != 7).collect::<Vec<i64>>(), "the others' numbers are stored");
    drop(queue);
    tokio::time::timeout(Duration::from_secs(5), writer)
        .await
        .expect("the writer ends with its handles")
        .unwrap();
}
