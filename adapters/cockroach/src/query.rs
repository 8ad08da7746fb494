//! SQL reads under a read policy, through the client: planned, checked,
//! escalated and recorded in the session like point reads.

use quorate::{Client, Error, Queried, ReadPolicy, ReplicaRole, Session};
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
