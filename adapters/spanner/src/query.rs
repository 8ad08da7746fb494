//! SQL reads under a read policy, through the client: planned, checked,
//! escalated and recorded in the session like point reads.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use gcloud_spanner::row::Row;
use gcloud_spanner::statement::ToKind;
use prost_types::Value;
use quorate::{
    Client, Collection, DataClass, Error, Freshness, Queried, ReadPolicy, Records, Region,
    ReplicaRole, Retryability, Session, Versioned,
};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::directed::{self, Params};
use crate::sql::PREFIX_PARAM;
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
            serve(backend, region, role, bound, &read.sql, &read.params)
        })
        .await
    }
}

/// Serves one plan of a query: a single-use read-only `ExecuteSql` of
/// `sql` directed to `region`'s replicas under `bound`, its read timestamp
/// the rows' freshness.
async fn serve(
    backend: &SpannerBackend,
    region: Region,
    role: ReplicaRole,
    bound: directed::Bound,
    sql: &str,
    params: &Params,
) -> Result<(Vec<Row>, Freshness), Error> {
    let result = backend
        .reads()
        .execute(|s| directed::request(s, sql, params, bound, &region))
        .await
        .map_err(crate::backend::classify_read)?;
    let read_at = directed::read_timestamp(&result);
    let staleness = match role {
        ReplicaRole::Leader => Some(Duration::ZERO),
        _ => read_at.map(|p| Duration::from_nanos(backend.now_nanos().saturating_sub(p.wall))),
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

/// Typed queries of a collection's records (`use
/// quorate_spanner::SelectRecords`): the records a condition admits,
/// decoded, under the collection's policy in its session.
///
/// On a native table the condition is on its own columns (a field of the
/// document is `JSON_VALUE(Body, '$.status')`); on quorate's own table, on
/// `key` (the whole key, `<collection>/<key>`) and `version`. Tombstones are
/// left out and the records come in key order. The parameter name
/// `quorate_prefix` is quorate's.
///
/// ```no_run
/// use quorate_spanner::{Critical, SelectRecords, SpannerBackend, SqlRead};
/// # #[derive(serde::Serialize, serde::Deserialize)]
/// # struct Order { status: String }
///
/// # async fn demo(client: quorate_spanner::Client<SpannerBackend>) -> Result<(), quorate_spanner::Error> {
/// let session = client.session();
/// let orders = client.collection::<Order, Critical>("orders", &session)?;
/// // Strict by type: what this session wrote is there.
/// let open = orders
///     .select(&SqlRead::new("JSON_VALUE(Body, '$.status') = @status").param("status", &"open"))
///     .await?;
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

    /// The records `filter` admits (its text the condition, with its
    /// parameters; an empty condition admits all), under the collection's
    /// default policy, as [`SpannerQuery::spanner_query`] serves a read:
    /// each record as its key in the collection with its version and
    /// value. Under a strict policy the session records every record's
    /// version.
    fn select(
        &self,
        filter: &SqlRead,
    ) -> impl std::future::Future<Output = Result<Queried<Records<Self::Item>>, Error>> + Send;

    /// [`SelectRecords::select`] under `policy`.
    fn select_with(
        &self,
        policy: Self::Policy,
        filter: &SqlRead,
    ) -> impl std::future::Future<Output = Result<Queried<Records<Self::Item>>, Error>> + Send;
}

impl<T, C> SelectRecords for Collection<T, C, SpannerBackend>
where
    T: Serialize + DeserializeOwned + Send + Sync,
    C: DataClass,
    C::Policy: Send + Sync,
{
    type Item = T;
    type Policy = C::Policy;

    async fn select(&self, filter: &SqlRead) -> Result<Queried<Records<T>>, Error> {
        self.select_with(self.policy(), filter).await
    }

    async fn select_with(
        &self,
        policy: C::Policy,
        filter: &SqlRead,
    ) -> Result<Queried<Records<T>>, Error> {
        if filter.params.values.contains_key(PREFIX_PARAM) {
            return Err(Error::InvalidInput(format!(
                "the parameter @{PREFIX_PARAM} is quorate's; name it otherwise"
            )));
        }
        let backend = self.client().backend();
        let (sql, prefixed) = backend.select_statement(self.name(), &filter.sql);
        let prefix = format!("{}/", self.name());
        let read = if prefixed {
            filter.clone().param(PREFIX_PARAM, &prefix)
        } else {
            filter.clone()
        };
        let strip = if prefixed { prefix.len() } else { 0 };
        let (sql, read) = (&sql, &read);
        self.query_with(policy, None, |plan| {
            let region = plan.region.clone();
            let bound = directed::bound(plan.role, plan.policy, plan.min_point);
            let role = plan.role;
            async move {
                let (rows, freshness) =
                    serve(backend, region, role, bound, sql, &read.params).await?;
                let mut records = Vec::with_capacity(rows.len());
                for row in rows {
                    let column = |e: gcloud_spanner::row::Error| {
                        Error::backend(Retryability::Permanent, None, e.to_string())
                    };
                    let key: String = row.column(0).map_err(column)?;
                    let version: i64 = row.column(1).map_err(column)?;
                    let value: Vec<u8> = row.column(2).map_err(column)?;
                    let version = quorate::Version::from_stored(version).ok_or_else(|| {
                        Error::InvalidInput(format!(
                            "record {key} has version {version}; quorate's versions start at 1"
                        ))
                    })?;
                    let key = key.get(strip..).unwrap_or_default().to_owned();
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
