//! SQL reads under a read policy, through the client: planned, checked,
//! escalated and recorded in the session like point reads.

use bytes::Bytes;
use quorate::{
    Client, Collection, DataClass, Error, Queried, ReadPolicy, Records, ReplicaRole, Session,
    Versioned,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

use crate::PgBackend;

/// SQL reads under a read policy in a session (`use
/// quorate_cockroach::SqlQuery`).
///
/// ```no_run
/// use quorate_cockroach::{Client, PgBackend, ReadPolicy, SqlQuery};
///
/// # async fn demo(client: Client<PgBackend>) -> Result<(), quorate_cockroach::Error> {
/// let session = client.session();
/// // The session's own writes are visible to it, wherever it is served.
/// let open = client
///     .sql_query(
///         &session,
///         ReadPolicy::Session,
///         "SELECT count(*) FROM quorate_records WHERE key LIKE $1",
///         &[&"orders/%"],
///     )
///     .await?;
/// let n: i64 = open.rows[0].get(0);
/// # let _ = n;
/// # Ok(()) }
/// ```
pub trait SqlQuery {
    /// Runs `statement` (a read; parameters only) under `policy` in
    /// `session`, as [`Client::query`] runs a read: on PostgreSQL at a
    /// standby of the region the client picks when its replay covers the
    /// session's point or the bound (measured before the statement's
    /// snapshot, in the same round trip), else on the primary; on
    /// CockroachDB `AS OF SYSTEM TIME` the session's timestamp or within
    /// the bound through that region's gateway, else at the leaseholder.
    /// A read that misses the policy is escalated, and the session
    /// advances to the point the rows reflect.
    fn sql_query(
        &self,
        session: &Session,
        policy: ReadPolicy,
        statement: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> impl std::future::Future<Output = Result<Queried<Vec<Row>>, Error>> + Send;
}

impl SqlQuery for Client<PgBackend> {
    async fn sql_query(
        &self,
        session: &Session,
        policy: ReadPolicy,
        statement: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Queried<Vec<Row>>, Error> {
        let backend = self.backend();
        // PostgreSQL's strong reads go to the primary, every key's home
        // (any key names it); CockroachDB's are served anywhere.
        let home = match backend.dialect() {
            crate::Dialect::Postgres => Some(""),
            crate::Dialect::Cockroach => None,
        };
        self.query(session, policy, home, |plan| {
            let region = plan.region.clone();
            // The leader path is the primary (or the gateway's
            // leaseholder read).
            let policy = match plan.role {
                ReplicaRole::Leader => ReadPolicy::Strong,
                ReplicaRole::Follower => plan.policy,
            };
            let min_point = plan.min_point;
            async move {
                backend
                    .query(&region, policy, min_point, statement, params)
                    .await
            }
        })
        .await
    }
}

/// Typed queries of a collection's records (`use
/// quorate_cockroach::SelectRecords`): the records a condition admits,
/// decoded, under the collection's policy in its session.
///
/// On a native table the condition is on its own columns (a field of the
/// document is `body->>'status'`); on quorate's own table, on `key` (the
/// whole key, `<collection>/<key>`) and `version`. Tombstones are left out
/// and the records come in key order.
///
/// ```no_run
/// use quorate_cockroach::{Critical, PgBackend, SelectRecords};
/// # #[derive(serde::Serialize, serde::Deserialize)]
/// # struct Order { status: String }
///
/// # async fn demo(client: quorate_cockroach::Client<PgBackend>) -> Result<(), quorate_cockroach::Error> {
/// let session = client.session();
/// let orders = client.collection::<Order, Critical>("orders", &session)?;
/// // Strict by type: what this session wrote is there.
/// let open = orders.select("body->>'status' = $1", &[&"open"]).await?;
/// for (key, order) in &open.rows {
///     println!("{key} at {}: {}", order.version, order.value.status);
/// }
/// # Ok(()) }
/// ```
pub trait SelectRecords {
    /// The collection's records' type.
    type Item;
    /// The policies the collection's class admits.
    type Policy;

    /// The records `filter` admits (parameters `$1`…; an empty filter
    /// admits all), under the collection's default policy, as
    /// [`SqlQuery::sql_query`] serves a read: each record as its key in the
    /// collection with its version and value. Under a strict policy the
    /// session records every record's version.
    fn select(
        &self,
        filter: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> impl std::future::Future<Output = Result<Queried<Records<Self::Item>>, Error>> + Send;

    /// [`SelectRecords::select`] under `policy`.
    fn select_with(
        &self,
        policy: Self::Policy,
        filter: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> impl std::future::Future<Output = Result<Queried<Records<Self::Item>>, Error>> + Send;
}

impl<T, C> SelectRecords for Collection<T, C, PgBackend>
where
    T: Serialize + DeserializeOwned + Send + Sync,
    C: DataClass,
    C::Policy: Send + Sync,
{
    type Item = T;
    type Policy = C::Policy;

    async fn select(
        &self,
        filter: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Queried<Records<T>>, Error> {
        self.select_with(self.policy(), filter, params).await
    }

    async fn select_with(
        &self,
        policy: C::Policy,
        filter: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Queried<Records<T>>, Error> {
        let backend = self.client().backend();
        let (statement, range) = backend.select_statement(self.name(), filter, params.len())?;
        let mut all: Vec<&(dyn ToSql + Sync)> = params.to_vec();
        if let Some([lo, hi]) = &range {
            all.push(lo);
            all.push(hi);
        }
        let prefix = range.as_ref().map(|[lo, _]| lo.len()).unwrap_or(0);
        let (statement, all) = (&statement, &all);
        self.query_with(policy, Some(""), |plan| {
            let region = plan.region.clone();
            let policy = match plan.role {
                ReplicaRole::Leader => ReadPolicy::Strong,
                ReplicaRole::Follower => plan.policy,
            };
            let min_point = plan.min_point;
            async move {
                let (rows, freshness) = backend
                    .query(&region, policy, min_point, statement, all)
                    .await?;
                let mut records = Vec::with_capacity(rows.len());
                for row in rows {
                    let key: String = row
                        .try_get(0)
                        .map_err(|e| crate::backend::classify(e, false))?;
                    let version: i64 = row
                        .try_get(1)
                        .map_err(|e| crate::backend::classify(e, false))?;
                    let value: Vec<u8> = row
                        .try_get(2)
                        .map_err(|e| crate::backend::classify(e, false))?;
                    let version = quorate::Version::from_stored(version).ok_or_else(|| {
                        Error::InvalidInput(format!(
                            "record {key} has version {version}; quorate's versions start at 1"
                        ))
                    })?;
                    let key = key.get(prefix..).unwrap_or_default().to_owned();
                    records.push((
                        key,
                        Versioned {
                            version,
                            value: Bytes::from(value),
                        },
                    ));
                }
                Ok((records, freshness))
            }
        })
        .await
    }
}
