//! SQL reads under a read policy, through the client: planned, checked,
//! escalated and recorded in the session like point reads.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use gcloud_spanner::row::Row;
use gcloud_spanner::statement::ToKind;
use prost_types::Value;
use quorate::{Client, Error, Freshness, Queried, ReadPolicy, ReplicaRole, Retryability, Session};

use crate::directed::{self, Params};
use crate::SpannerBackend;

/// A read-only SQL statement and its parameters, for
/// [`SpannerQuery::spanner_query`].
///
/// ```
/// use quorate_spanner::SqlRead;
///
/// let open = SqlRead::new("SELECT OrderId FROM Orders WHERE JSON_VALUE(Body, '$.status') = @status")
///     .param("status", &"open");
/// # let _ = open;
/// ```
#[derive(Clone, Debug, Default)]
pub struct SqlRead {
    sql: String,
    params: Params,
}

impl SqlRead {
    /// A statement with no parameters yet.
    pub fn new(sql: impl Into<String>) -> SqlRead {
        SqlRead {
            sql: sql.into(),
            params: Params::default(),
        }
    }

    /// Binds `@name` to `value`.
    pub fn param<T: ToKind>(mut self, name: &str, value: &T) -> SqlRead {
        self.params.types.insert(name.to_owned(), T::get_type());
        self.params.values.insert(
            name.to_owned(),
            Value {
                kind: Some(value.to_kind()),
            },
        );
        self
    }
}

/// SQL reads under a read policy in a session (`use
/// quorate_spanner::SpannerQuery`).
///
/// ```no_run
/// use quorate_spanner::{Client, ReadPolicy, SpannerBackend, SpannerQuery, SqlRead};
///
/// # async fn demo(client: Client<SpannerBackend>) -> Result<(), quorate_spanner::Error> {
/// let session = client.session();
/// let open = client
///     .spanner_query(
///         &session,
///         ReadPolicy::Session,
///         &SqlRead::new("SELECT COUNT(*) FROM quorate_records WHERE STARTS_WITH(key, @p)")
///             .param("p", &"orders/"),
///     )
///     .await?;
/// let n: i64 = open.rows[0].column(0).map_err(|e| quorate_spanner::Error::InvalidInput(e.to_string()))?;
/// # let _ = n;
/// # Ok(()) }
/// ```
pub trait SpannerQuery {
    /// Runs `read` under `policy` in `session`, as [`Client::query`] runs a
    /// read: a single-use read-only `ExecuteSql` directed to the replicas
    /// of the region the client picks, with the policy's timestamp bound
    /// (strong; at least the session's commit timestamp; at most the
    /// bound's staleness), its read timestamp the rows' freshness. A read
    /// that misses the policy is escalated to a strong read, and the
    /// session advances to the read timestamp.
    fn spanner_query(
        &self,
        session: &Session,
        policy: ReadPolicy,
        read: &SqlRead,
    ) -> impl std::future::Future<Output = Result<Queried<Vec<Row>>, Error>> + Send;
}

impl SpannerQuery for Client<SpannerBackend> {
    async fn spanner_query(
        &self,
        session: &Session,
        policy: ReadPolicy,
        read: &SqlRead,
    ) -> Result<Queried<Vec<Row>>, Error> {
        let backend = self.backend();
        self.query(session, policy, None, |plan| {
            let region = plan.region.clone();
            let bound = directed::bound(plan.role, plan.policy, plan.min_point);
            let role = plan.role;
            async move {
                let result = backend
                    .reads()
                    .execute(|s| directed::request(s, &read.sql, &read.params, bound, &region))
                    .await
                    .map_err(crate::backend::classify_read)?;
                let read_at = directed::read_timestamp(&result);
                let staleness = match role {
                    ReplicaRole::Leader => Some(Duration::ZERO),
                    _ => read_at.map(|p| {
                        Duration::from_nanos(crate::backend::now_nanos().saturating_sub(p.wall))
                    }),
                };
                let fields = Arc::new(
                    result
                        .metadata
                        .and_then(|m| m.row_type)
                        .map(|t| t.fields)
                        .unwrap_or_default(),
                );
                let index: Arc<HashMap<String, usize>> = Arc::new(
                    fields
                        .iter()
                        .enumerate()
                        .map(|(i, f)| (f.name.clone(), i))
                        .collect(),
                );
                let rows = result
                    .rows
                    .into_iter()
                    .map(|r| Row::new(index.clone(), fields.clone(), r.values))
                    .collect();
                let freshness = Freshness {
                    region,
                    role,
                    point: read_at,
                    staleness_bound: staleness,
                };
                if freshness.point.is_none() {
                    return Err(Error::backend(
                        Retryability::Retryable,
                        None,
                        "the query returned no read timestamp",
                    ));
                }
                Ok((rows, freshness))
            }
        })
        .await
    }
}
