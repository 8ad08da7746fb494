//! Multi-record writes: every record or none, one idempotency key, with the
//! guarantees of single writes.

use super::write::Logical;
use super::*;
use crate::backend::{
    TransactRequest, Transacted, TxAction, TxOp, MAX_TRANSACTION_BYTES, MAX_TRANSACTION_RECORDS,
};

impl<B: Backend> Client<B> {
    /// Writes several records atomically, in `session`: every record's
    /// precondition holds and every written record gets its new version,
    /// or nothing applies.
    ///
    /// It is one logical write, with the guarantees of [`Client::write`]:
    /// one idempotency key across retries (its record, written in the same
    /// transaction, holds every record's version), an ambiguous attempt
    /// resolved through it and never re-executed blindly, the session
    /// advanced to the commit point and every written record's version,
    /// and, with [`WriteOptions::verify`], each written record read back
    /// where the next reader reads. A failed precondition is
    /// [`Error::Conflict`] naming the record and its current version.
    ///
    /// Checked before anything is sent: at least one record and at most
    /// [`MAX_TRANSACTION_RECORDS`], each named once, at least one of them
    /// written, at most [`MAX_TRANSACTION_BYTES`] of values, and, where
    /// writes go to a key's home region, one home for every record.
    ///
    /// ```
    /// use quorate::sim::{Sim, SimConfig};
    /// use quorate::{Bytes, Client, ClientConfig, Precondition, TxOp, WriteOptions};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), quorate::Error> {
    /// let sim = Sim::new(SimConfig::new(["eu-west", "us-east", "ap-south"])?)?;
    /// let client = Client::new(sim.at("eu-west")?, ClientConfig::default())?;
    /// let session = client.session();
    /// let (order, stock) = (Bytes::from("placed"), Bytes::from("9"));
    /// let done = client
    ///     .transact(
    ///         &session,
    ///         &[
    ///             TxOp::put("order:1", &order, Precondition::IfAbsent),
    ///             TxOp::put("stock:sku-7", &stock, Precondition::Any),
    ///         ],
    ///         &WriteOptions::default(),
    ///     )
    ///     .await?;
    /// assert_eq!(done.versions.len(), 2);
    /// # Ok(()) }
    /// ```
    pub async fn transact(
        &self,
        session: &Session,
        ops: &[TxOp<'_>],
        options: &WriteOptions,
    ) -> Result<Transacted, Error> {
        let span = tracing::info_span!(
            "quorate.transact",
            db.operation.name = "transact",
            quorate.records = ops.len(),
            quorate.region = Empty,
            quorate.attempt = Empty,
            quorate.outcome = Empty,
        );
        let recorder = span.clone();
        async {
            // Checked before anything is sent: nothing may apply and then
            // fail on the write's own shape or options.
            let keys = self.check_transaction(ops)?;
            let verify_regions = match &options.verify {
                Some(v) => Some(self.verify_regions(v)?),
                None => None,
            };
            let many = Many { ops, keys };
            let done = match self.write_inner(&many, options).await {
                Ok(done) => done,
                Err(e) => {
                    recorder.record("quorate.outcome", e.reason());
                    return Err(e);
                }
            };
            for (key, version) in &done.versions {
                session.observe(key, Some(*version), Some(done.point));
            }
            recorder.record("quorate.region", done.region.as_str());
            if let Some(wait) = self.commit_wait(done.point) {
                Box::pin(tokio::time::sleep(wait)).await;
            }
            if let (Some(verify), Some(regions)) = (&options.verify, verify_regions) {
                for (key, version) in &done.versions {
                    let committed = Committed {
                        version: *version,
                        point: done.point,
                        region: done.region.clone(),
                    };
                    Box::pin(self.verify(key, &committed, verify, regions.clone())).await?;
                }
            }
            recorder.record("quorate.outcome", "ok");
            Ok(done)
        }
        .instrument(span)
        .await
    }

    /// A multi-record write built up record by record, committed with
    /// [`Transaction::commit`].
    pub fn transaction(&self, session: &Session) -> Transaction<B> {
        Transaction {
            client: self.clone(),
            session: session.clone(),
            ops: Vec::new(),
        }
    }

    /// The keys of a multi-record write, once its shape is checked.
    fn check_transaction<'a>(&self, ops: &[TxOp<'a>]) -> Result<Vec<&'a str>, Error> {
        let bad = |why: String| Err(Error::InvalidInput(why));
        if ops.is_empty() {
            return bad("a multi-record write names at least one record".into());
        }
        if ops.len() > MAX_TRANSACTION_RECORDS {
            return bad(format!(
                "a multi-record write names at most {MAX_TRANSACTION_RECORDS} records, not {}",
                ops.len()
            ));
        }
        if !ops.iter().any(TxOp::writes) {
            return bad("a multi-record write writes at least one record".into());
        }
        let bytes: usize = ops
            .iter()
            .map(|op| match op.action {
                TxAction::Write(m) => m.value().map_or(0, |v| v.len()),
                TxAction::Check => 0,
            })
            .sum();
        if bytes > MAX_TRANSACTION_BYTES {
            return bad(format!(
                "a multi-record write carries at most {MAX_TRANSACTION_BYTES} bytes of values, not {bytes}"
            ));
        }
        let mut keys: Vec<&'a str> = Vec::with_capacity(ops.len());
        let mut sorted: Vec<&str> = Vec::with_capacity(ops.len());
        for op in ops {
            if op.key.is_empty() {
                return bad("a multi-record write names an empty key".into());
            }
            keys.push(op.key);
            sorted.push(op.key);
        }
        sorted.sort_unstable();
        if let Some(twice) = sorted.windows(2).find(|w| w[0] == w[1]) {
            return bad(format!(
                "a multi-record write names {:?} twice",
                twice[0].chars().take(64).collect::<String>()
            ));
        }
        if !self.inner.capabilities.writes_anywhere {
            // Writes go to a key's home region, where its conditions are
            // checked: one write cannot be checked in two places.
            let home = self.home_index(keys[0])?;
            for key in &keys[1..] {
                if self.home_index(key)? != home {
                    return bad(format!(
                        "a multi-record write on a table whose writes go to each key's home region needs one home for every record: {:?} and {:?} differ",
                        keys[0].chars().take(64).collect::<String>(),
                        key.chars().take(64).collect::<String>()
                    ));
                }
            }
        }
        Ok(keys)
    }
}

/// A multi-record write as the retry loop sees it.
struct Many<'a, 'o> {
    ops: &'a [TxOp<'o>],
    keys: Vec<&'o str>,
}

impl<B: Backend> Logical<B> for Many<'_, '_> {
    type Outcome = Transacted;

    fn operation(&self) -> DbOperation {
        DbOperation::Transact
    }

    fn key(&self) -> &str {
        self.keys[0]
    }

    async fn send(
        &self,
        backend: &B,
        region: &Region,
        idem: &IdempotencyKey,
        deadline: Instant,
    ) -> Result<Transacted, Error> {
        {
            let request = TransactRequest {
                ops: self.ops,
                idempotency_key: Some(idem),
                region,
                deadline,
            };
            backend.transact(&request).await
        }
    }

    fn look_up<'a>(
        &'a self,
        backend: &'a B,
        region: &'a Region,
        idem: &'a IdempotencyKey,
    ) -> impl std::future::Future<Output = Result<Option<Transacted>, Error>> + Send + 'a {
        backend.lookup_transaction(region, &self.keys, idem)
    }

    fn region(outcome: &Transacted) -> &Region {
        &outcome.region
    }
}

/// What a [`Transaction`] does to one record.
#[derive(Clone, Debug)]
enum Staged {
    Put(Bytes),
    Delete,
    Check,
}

/// A multi-record write built up record by record (see
/// [`Client::transaction`]); [`Transaction::commit`] sends it as one
/// logical write through [`Client::transact`].
///
/// ```
/// use quorate::sim::{Sim, SimConfig};
/// use quorate::{Client, ClientConfig, Critical, Precondition};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), quorate::Error> {
/// let sim = Sim::new(SimConfig::new(["eu-west", "us-east", "ap-south"])?)?;
/// let client = Client::new(sim.at("eu-west")?, ClientConfig::default())?;
/// let session = client.session();
/// let accounts = client.collection::<i64, Critical>("accounts", &session)?;
/// let a = accounts.put("a", &100, Precondition::IfAbsent).await?;
/// let b = accounts.put("b", &0, Precondition::IfAbsent).await?;
///
/// // A transfer: both balances move, or neither does.
/// let mut transfer = client.transaction(&session);
/// accounts.put_in(&mut transfer, "a", &70, Precondition::IfVersion(a.version))?;
/// accounts.put_in(&mut transfer, "b", &30, Precondition::IfVersion(b.version))?;
/// let done = transfer.commit().await?;
/// assert_eq!(done.version_of("accounts/a"), Some(a.version.next()));
/// # Ok(()) }
/// ```
pub struct Transaction<B> {
    client: Client<B>,
    session: Session,
    ops: Vec<(String, Staged, Precondition)>,
}

impl<B: Backend> Transaction<B> {
    /// Stores `value` at `key` if `precondition` holds.
    pub fn put(
        &mut self,
        key: impl Into<String>,
        value: Bytes,
        precondition: Precondition,
    ) -> &mut Self {
        self.ops
            .push((key.into(), Staged::Put(value), precondition));
        self
    }

    /// Deletes `key` if `precondition` holds.
    pub fn delete(&mut self, key: impl Into<String>, precondition: Precondition) -> &mut Self {
        self.ops.push((key.into(), Staged::Delete, precondition));
        self
    }

    /// Writes nothing to `key`, but the whole write applies only if
    /// `precondition` holds for it.
    pub fn check(&mut self, key: impl Into<String>, precondition: Precondition) -> &mut Self {
        self.ops.push((key.into(), Staged::Check, precondition));
        self
    }

    /// How many records it names.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// Whether it names no record yet.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Commits it with the default write options.
    pub async fn commit(self) -> Result<Transacted, Error> {
        self.commit_with(&WriteOptions::default()).await
    }

    /// Commits it with `options` (verification, idempotency key, deadline).
    pub async fn commit_with(self, options: &WriteOptions) -> Result<Transacted, Error> {
        let ops: Vec<TxOp<'_>> = self
            .ops
            .iter()
            .map(|(key, staged, precondition)| TxOp {
                key,
                action: match staged {
                    Staged::Put(v) => TxAction::Write(Mutation::Put(v)),
                    Staged::Delete => TxAction::Write(Mutation::Delete),
                    Staged::Check => TxAction::Check,
                },
                precondition: *precondition,
            })
            .collect();
        self.client.transact(&self.session, &ops, options).await
    }
}

impl<B> std::fmt::Debug for Transaction<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Keys only: values are the application's data.
        f.debug_struct("Transaction")
            .field(
                "records",
                &self
                    .ops
                    .iter()
                    .map(|(k, ..)| k.as_str())
                    .collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}
