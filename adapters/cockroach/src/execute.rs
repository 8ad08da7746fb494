//! Transactions whose work is the caller's own SQL, run to completion
//! exactly once: the shape of cockroach-go's `ExecuteTx`, with ambiguity
//! resolved through an idempotency row written in the same transaction.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use quorate::{Client, Error, IdempotencyKey, Point, Retryability, Session, WriteOptions};
use tokio::time::Instant;

use crate::PgBackend;

/// The boxed future a closure transaction's body returns, borrowing the
/// transaction.
pub type TxBody<'t, T> =
    Pin<Box<dyn Future<Output = Result<T, tokio_postgres::Error>> + Send + 't>>;

/// What [`SqlTransactions::execute_tx`] committed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Executed<T> {
    /// What the body returned in the attempt that committed; `None` when
    /// that attempt's answer was lost and its commit was found through its
    /// idempotency row (the body's result stayed with the lost answer).
    pub value: Option<T>,
    /// The commit point; the session advanced to it.
    pub point: Point,
    /// Attempts made.
    pub attempts: u32,
}

/// Transactions whose body is the caller's own SQL (`use
/// quorate_cockroach::SqlTransactions`).
///
/// ```no_run
/// use quorate_cockroach::{Client, PgBackend, SqlTransactions, WriteOptions};
///
/// # async fn demo(client: Client<PgBackend>) -> Result<(), quorate_cockroach::Error> {
/// let session = client.session();
/// let done = client
///     .execute_tx(&session, &WriteOptions::default(), |tx| {
///         Box::pin(async move {
///             let row = tx
///                 .query_one("SELECT balance FROM accounts WHERE id = $1 FOR UPDATE", &[&7i64])
///                 .await?;
///             let balance: i64 = row.get(0);
///             tx.execute("UPDATE accounts SET balance = $1 WHERE id = $2", &[&(balance - 10), &7i64])
///                 .await?;
///             Ok(balance - 10)
///         })
///     })
///     .await?;
/// # let _ = done;
/// # Ok(()) }
/// ```
pub trait SqlTransactions {
    /// Runs `body` in a transaction through the local region's primary (or
    /// CockroachDB gateway), committed exactly once: a serialization
    /// failure (40001) runs the body again from the start; a commit whose
    /// answer is lost is resolved through an idempotency row written in the
    /// same transaction (found: committed, the body is not run again; not
    /// found: fenced, so the lost attempt can never commit, and the body
    /// runs again); the write's deadline bounds it all. The session
    /// advances to the commit point. The body must be safe to run more
    /// than once up to its commit (it should only read and write through
    /// the transaction it is given).
    fn execute_tx<T, F>(
        &self,
        session: &Session,
        options: &WriteOptions,
        body: F,
    ) -> impl Future<Output = Result<Executed<T>, Error>> + Send
    where
        F: for<'t> FnMut(&'t tokio_postgres::Transaction<'t>) -> TxBody<'t, T> + Send,
        T: Send;
}

impl SqlTransactions for Client<PgBackend> {
    async fn execute_tx<T, F>(
        &self,
        session: &Session,
        options: &WriteOptions,
        mut body: F,
    ) -> Result<Executed<T>, Error>
    where
        F: for<'t> FnMut(&'t tokio_postgres::Transaction<'t>) -> TxBody<'t, T> + Send,
        T: Send,
    {
        let backend = self.backend();
        let region = quorate::Backend::topology(backend).local().clone();
        let deadline = Instant::now() + options.deadline.unwrap_or(self.config().write_deadline);
        let idem = options
            .idempotency_key
            .clone()
            .unwrap_or_else(IdempotencyKey::generate);
        let mut attempts = 0;
        let mut backoff = Duration::from_millis(10);
        // An attempt whose commit may have applied and was not resolved:
        // the transaction now ends with its real outcome or as unknown.
        let mut unresolved = false;
        let unknown = |attempts, last| Error::OutcomeUnknown {
            key: "(transaction)".into(),
            idempotency_key: idem.clone(),
            attempts,
            last: Box::new(last),
        };
        loop {
            attempts += 1;
            let outcome = match tokio::time::timeout_at(
                deadline,
                backend.execute_attempt(&region, &idem, &mut body),
            )
            .await
            {
                Ok(outcome) => outcome,
                Err(_) => Err(Error::Timeout {
                    after: self.config().write_deadline,
                    sent: true,
                }),
            };
            let error = match outcome {
                Ok((value, point)) => {
                    session.observe_point(Some(point));
                    return Ok(Executed {
                        value,
                        point,
                        attempts,
                    });
                }
                Err(e) => e,
            };
            match error.retryability() {
                Retryability::Permanent if unresolved => return Err(unknown(attempts, error)),
                Retryability::Permanent => return Err(error),
                Retryability::Ambiguous => {
                    // Resolved, never guessed: the lookup fences the key,
                    // and a later attempt under the same key cannot apply
                    // twice (its idempotency row would collide).
                    match backend.execute_lookup(&region, &idem).await {
                        Ok(Some(point)) => {
                            session.observe_point(Some(point));
                            return Ok(Executed {
                                value: None,
                                point,
                                attempts,
                            });
                        }
                        Ok(None) => unresolved = false,
                        Err(_) => unresolved = true,
                    }
                }
                Retryability::Retryable => {}
            }
            if Instant::now() + backoff >= deadline {
                return Err(if unresolved {
                    unknown(attempts, error)
                } else {
                    Error::DeadlineExceeded {
                        attempts,
                        last: Box::new(error),
                    }
                });
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(500));
        }
    }
}
