//! Point reads as `ExecuteSql` requests of our own: a single-use read-only
//! transaction with the policy's timestamp bound, the read timestamp
//! requested back, and directed-read options sending the read to the
//! replicas of the region the router chose. The client library's query
//! path cannot carry directed-read options, so these requests go through
//! its low-level `apiv1` client on sessions this module keeps.

use std::collections::BTreeMap;
use std::time::Duration;

use gcloud_gax::grpc::{Code, Status};
use gcloud_googleapis::spanner::v1::directed_read_options::{
    replica_selection, IncludeReplicas, ReplicaSelection, Replicas,
};
use gcloud_googleapis::spanner::v1::transaction_options::read_only::TimestampBound;
use gcloud_googleapis::spanner::v1::transaction_options::{self, ReadOnly};
use gcloud_googleapis::spanner::v1::{
    transaction_selector, CreateSessionRequest, DeleteSessionRequest, DirectedReadOptions,
    ExecuteSqlRequest, ResultSet, TransactionOptions, TransactionSelector, Type, TypeCode,
};
use gcloud_spanner::apiv1::conn_pool::ConnectionManager;
use prost_types::{value::Kind, Struct, Value};
use quorate::{Point, ReadPolicy, Region, ReplicaRole};

/// What a plan asks of the read.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Bound {
    Strong,
    /// At or after this point (a session's commit).
    AtLeast(Point),
    /// At most this stale.
    MaxStaleness(Duration),
}

/// The bound a plan needs: the leader role reads strongly; a session read
/// at or after the session's point (any recent replica state when the
/// session has none); a bounded read within its bound.
pub(crate) fn bound(role: ReplicaRole, policy: ReadPolicy, floor: Option<Point>) -> Bound {
    if role == ReplicaRole::Leader {
        return Bound::Strong;
    }
    match policy {
        ReadPolicy::BoundedStaleness(b) => Bound::MaxStaleness(b.duration()),
        _ => match floor {
            Some(p) => Bound::AtLeast(p),
            None => Bound::MaxStaleness(Duration::from_secs(10)),
        },
    }
}

/// The directed-read options for `region`: any of its replicas, and no
/// silent failover to other regions. When the region cannot serve, the
/// read fails and the client's router retries elsewhere, so the region a
/// read reports is the region that served it.
pub(crate) fn directed(region: &Region) -> DirectedReadOptions {
    DirectedReadOptions {
        replicas: Some(Replicas::IncludeReplicas(IncludeReplicas {
            replica_selections: vec![ReplicaSelection {
                location: region.as_str().to_owned(),
                r#type: replica_selection::Type::Unspecified as i32,
            }],
            auto_failover_disabled: true,
        })),
    }
}

/// The parameters of a statement and their types.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Params {
    pub values: BTreeMap<String, Value>,
    pub types: std::collections::HashMap<String, Type>,
}

/// The request for one point read of `key` with `sql` (one `@key`
/// parameter).
pub(crate) fn read_request(
    session: &str,
    sql: &str,
    key: &str,
    bound: Bound,
    region: &Region,
) -> ExecuteSqlRequest {
    let mut params = Params::default();
    params.values.insert(
        "key".to_owned(),
        Value {
            kind: Some(Kind::StringValue(key.to_owned())),
        },
    );
    params.types.insert(
        "key".to_owned(),
        Type {
            code: TypeCode::String as i32,
            ..Default::default()
        },
    );
    request(session, sql, &params, bound, region)
}

/// The request for one single-use read-only `sql` with `params`, under
/// `bound`, directed to `region`, its read timestamp asked back.
pub(crate) fn request(
    session: &str,
    sql: &str,
    params: &Params,
    bound: Bound,
    region: &Region,
) -> ExecuteSqlRequest {
    let timestamp_bound = match bound {
        Bound::Strong => TimestampBound::Strong(true),
        Bound::AtLeast(p) => TimestampBound::MinReadTimestamp(prost_types::Timestamp {
            seconds: (p.wall / 1_000_000_000) as i64,
            nanos: (p.wall % 1_000_000_000) as i32,
        }),
        Bound::MaxStaleness(d) => TimestampBound::MaxStaleness(prost_types::Duration {
            seconds: d.as_secs() as i64,
            nanos: d.subsec_nanos() as i32,
        }),
    };
    ExecuteSqlRequest {
        session: session.to_owned(),
        transaction: Some(TransactionSelector {
            selector: Some(transaction_selector::Selector::SingleUse(
                TransactionOptions {
                    mode: Some(transaction_options::Mode::ReadOnly(ReadOnly {
                        return_read_timestamp: true,
                        timestamp_bound: Some(timestamp_bound),
                    })),
                    ..Default::default()
                },
            )),
        }),
        sql: sql.to_owned(),
        params: Some(Struct {
            fields: params.values.clone(),
        }),
        param_types: params.types.clone(),
        directed_read_options: Some(directed(region)),
        ..Default::default()
    }
}

/// A decoded point read: the row's version, value and whether it is a
/// delete's tombstone, and the read timestamp.
#[derive(Debug, PartialEq)]
pub(crate) struct PointRead {
    pub row: Option<(i64, Vec<u8>, bool)>,
    pub read_at: Option<Point>,
}

fn malformed(what: &str) -> Status {
    Status::new(Code::Internal, format!("unexpected result: {what}"))
}

/// The read timestamp a single-use read-only request asked back.
pub(crate) fn read_timestamp(result: &ResultSet) -> Option<Point> {
    result
        .metadata
        .as_ref()
        .and_then(|m| m.transaction.as_ref())
        .and_then(|t| t.read_timestamp.as_ref())
        .map(|t| {
            let wall = u64::try_from(t.seconds)
                .unwrap_or(0)
                .saturating_mul(1_000_000_000)
                .saturating_add(u64::try_from(t.nanos).unwrap_or(0));
            Point { wall, logical: 0 }
        })
}

/// Decodes a `SELECT version, value, deleted` result (INT64 arrives as a
/// decimal string, BYTES as base64, a BOOL as a bool or, when NULL, as a
/// null: not deleted).
pub(crate) fn decode(result: ResultSet) -> Result<PointRead, Status> {
    use base64::Engine;
    let read_at = read_timestamp(&result);
    let row = match result.rows.into_iter().next() {
        None => None,
        Some(list) => {
            let mut values = list.values.into_iter();
            let version = match values.next().and_then(|v| v.kind) {
                Some(Kind::StringValue(s)) => s.parse::<i64>().map_err(|_| malformed("version"))?,
                _ => return Err(malformed("version")),
            };
            let value = match values.next().and_then(|v| v.kind) {
                Some(Kind::StringValue(s)) => base64::engine::general_purpose::STANDARD
                    .decode(s)
                    .map_err(|_| malformed("value"))?,
                _ => return Err(malformed("value")),
            };
            let deleted = match values.next().and_then(|v| v.kind) {
                Some(Kind::BoolValue(b)) => b,
                Some(Kind::NullValue(_)) => false,
                _ => return Err(malformed("deleted")),
            };
            Some((version, value, deleted))
        }
    };
    Ok(PointRead { row, read_at })
}

/// Sessions for the directed reads, each used by one read at a time.
pub(crate) struct Sessions {
    conn: ConnectionManager,
    database: String,
    idle: std::sync::Mutex<Vec<String>>,
}

/// Idle read sessions kept for reuse; a session returned beyond this is
/// deleted.
const MAX_IDLE: usize = 64;

/// A session lent to one read: returned for reuse when the read completes,
/// deleted when the read is abandoned mid-call (the call may still be
/// running on it, and a session runs one at a time).
struct Lease<'a> {
    sessions: &'a Sessions,
    name: Option<String>,
}

impl Lease<'_> {
    fn name(&self) -> &str {
        self.name.as_deref().unwrap_or_default()
    }

    fn release(mut self) {
        if let Some(name) = self.name.take() {
            self.sessions.give_back(name);
        }
    }

    /// Spanner no longer has the session.
    fn forget(mut self) {
        self.name = None;
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        if let Some(name) = self.name.take() {
            self.sessions.delete_later(vec![name]);
        }
    }
}

impl Sessions {
    pub(crate) fn new(conn: ConnectionManager, database: String) -> Sessions {
        Sessions {
            conn,
            database,
            idle: std::sync::Mutex::new(Vec::new()),
        }
    }

    fn idle(&self) -> std::sync::MutexGuard<'_, Vec<String>> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn lease(&self) -> Result<Lease<'_>, Status> {
        let idle = self.idle().pop();
        let name = match idle {
            Some(s) => s,
            None => self.create().await?,
        };
        Ok(Lease {
            sessions: self,
            name: Some(name),
        })
    }

    fn give_back(&self, session: String) {
        let mut idle = self.idle();
        if idle.len() < MAX_IDLE {
            idle.push(session);
            return;
        }
        drop(idle);
        self.delete_later(vec![session]);
    }

    /// Deletes sessions in the background (best effort: Spanner deletes a
    /// session idle for an hour anyway).
    fn delete_later(&self, names: Vec<String>) {
        if names.is_empty() {
            return;
        }
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let mut client = self.conn.conn();
        handle.spawn(async move {
            for name in names {
                let _ = client
                    .delete_session(DeleteSessionRequest { name }, true, None)
                    .await;
            }
        });
    }

    /// Deletes every idle session now; returns how many were deleted.
    pub(crate) async fn close(&self) -> usize {
        let names = std::mem::take(&mut *self.idle());
        let mut client = self.conn.conn();
        let mut deleted = 0;
        for name in names {
            if client
                .delete_session(DeleteSessionRequest { name }, true, None)
                .await
                .is_ok()
            {
                deleted += 1;
            }
        }
        deleted
    }

    async fn create(&self) -> Result<String, Status> {
        let session = self
            .conn
            .conn()
            .create_session(
                CreateSessionRequest {
                    database: self.database.clone(),
                    session: None,
                },
                true,
                None,
            )
            .await?;
        Ok(session.into_inner().name)
    }

    /// Runs one point read; a session Spanner deleted (idle for an hour)
    /// is replaced once.
    pub(crate) async fn read(
        &self,
        sql: &str,
        key: &str,
        bound: Bound,
        region: &Region,
    ) -> Result<PointRead, Status> {
        self.execute(|session| read_request(session, sql, key, bound, region))
            .await
            .and_then(decode)
    }

    /// Runs one read-only statement; a session Spanner deleted (idle for
    /// an hour) is replaced once.
    pub(crate) async fn execute(
        &self,
        request: impl Fn(&str) -> ExecuteSqlRequest,
    ) -> Result<ResultSet, Status> {
        let mut replaced = false;
        loop {
            let lease = self.lease().await?;
            let request = request(lease.name());
            match self.conn.conn().execute_sql(request, true, None).await {
                Ok(result) => {
                    lease.release();
                    return Ok(result.into_inner());
                }
                Err(s) if s.code() == Code::NotFound => {
                    lease.forget();
                    if replaced {
                        return Err(s);
                    }
                    replaced = true;
                }
                Err(s) => {
                    lease.release();
                    return Err(s);
                }
            }
        }
    }
}

impl Drop for Sessions {
    fn drop(&mut self) {
        let names = std::mem::take(&mut *self.idle());
        self.delete_later(names);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gcloud_googleapis::spanner::v1::{ResultSetMetadata, Transaction};
    use prost_types::ListValue;

    fn region(name: &str) -> Region {
        Region::new(name).unwrap()
    }

    #[test]
    fn plans_map_to_bounds() {
        let p = Point {
            wall: 5_000_000_007,
            logical: 0,
        };
        let bounded = ReadPolicy::BoundedStaleness(quorate::Staleness::from_millis(1500).unwrap());
        assert_eq!(bound(ReplicaRole::Leader, bounded, Some(p)), Bound::Strong);
        assert_eq!(
            bound(ReplicaRole::Follower, bounded, Some(p)),
            Bound::MaxStaleness(Duration::from_millis(1500))
        );
        assert_eq!(
            bound(ReplicaRole::Follower, ReadPolicy::Session, Some(p)),
            Bound::AtLeast(p)
        );
        assert_eq!(
            bound(ReplicaRole::Follower, ReadPolicy::Session, None),
            Bound::MaxStaleness(Duration::from_secs(10))
        );
    }

    #[test]
    fn the_request_directs_the_read_to_the_chosen_region() {
        let p = Point {
            wall: 1_700_000_000_123_456_789,
            logical: 0,
        };
        let r = read_request(
            "projects/p/instances/i/databases/d/sessions/s1",
            "SELECT version, value FROM t WHERE key = @key",
            "order-1",
            Bound::AtLeast(p),
            &region("europe-west1"),
        );
        assert_eq!(r.session, "projects/p/instances/i/databases/d/sessions/s1");
        assert_eq!(
            r.directed_read_options,
            Some(DirectedReadOptions {
                replicas: Some(Replicas::IncludeReplicas(IncludeReplicas {
                    replica_selections: vec![ReplicaSelection {
                        location: "europe-west1".into(),
                        r#type: replica_selection::Type::Unspecified as i32,
                    }],
                    auto_failover_disabled: true,
                })),
            })
        );
        let Some(transaction_selector::Selector::SingleUse(options)) =
            r.transaction.and_then(|t| t.selector)
        else {
            panic!("not a single-use transaction");
        };
        assert_eq!(
            options.mode,
            Some(transaction_options::Mode::ReadOnly(ReadOnly {
                return_read_timestamp: true,
                timestamp_bound: Some(TimestampBound::MinReadTimestamp(prost_types::Timestamp {
                    seconds: 1_700_000_000,
                    nanos: 123_456_789,
                })),
            }))
        );
        assert_eq!(
            r.params.unwrap().fields["key"].kind,
            Some(Kind::StringValue("order-1".into()))
        );
        assert_eq!(r.param_types["key"].code, TypeCode::String as i32);
        let strong = read_request("s", "q", "k", Bound::Strong, &region("us-east1"));
        assert!(matches!(
            strong.transaction.and_then(|t| t.selector),
            Some(transaction_selector::Selector::SingleUse(
                TransactionOptions {
                    mode: Some(transaction_options::Mode::ReadOnly(ReadOnly {
                        timestamp_bound: Some(TimestampBound::Strong(true)),
                        return_read_timestamp: true,
                    })),
                    ..
                }
            ))
        ));
    }

    fn result(rows: Vec<Vec<Kind>>, read_at: Option<(i64, i32)>) -> ResultSet {
        ResultSet {
            metadata: Some(ResultSetMetadata {
                transaction: Some(Transaction {
                    read_timestamp: read_at
                        .map(|(seconds, nanos)| prost_types::Timestamp { seconds, nanos }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            rows: rows
                .into_iter()
                .map(|r| ListValue {
                    values: r.into_iter().map(|k| Value { kind: Some(k) }).collect(),
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn results_decode_and_malformed_ones_are_errors() {
        let ok = decode(result(
            vec![vec![
                Kind::StringValue("3".into()),
                Kind::StringValue("aGk=".into()),
                Kind::NullValue(0),
            ]],
            Some((2, 5)),
        ))
        .unwrap();
        assert_eq!(ok.row, Some((3, b"hi".to_vec(), false)));
        let tombstone = decode(result(
            vec![vec![
                Kind::StringValue("4".into()),
                Kind::StringValue("".into()),
                Kind::BoolValue(true),
            ]],
            None,
        ))
        .unwrap();
        assert_eq!(tombstone.row, Some((4, Vec::new(), true)));
        assert_eq!(ok.read_at.unwrap().wall, 2_000_000_005);
        let empty = decode(result(vec![], Some((1, 0)))).unwrap();
        assert_eq!(empty.row, None);
        for bad in [
            vec![
                Kind::StringValue("x".into()),
                Kind::StringValue("aGk=".into()),
            ],
            vec![Kind::NumberValue(3.0), Kind::StringValue("aGk=".into())],
            vec![
                Kind::StringValue("3".into()),
                Kind::StringValue("%%%".into()),
            ],
            vec![Kind::StringValue("3".into())],
            vec![
                Kind::StringValue("3".into()),
                Kind::StringValue("aGk=".into()),
            ],
            vec![
                Kind::StringValue("3".into()),
                Kind::StringValue("aGk=".into()),
                Kind::StringValue("true".into()),
            ],
        ] {
            assert!(decode(result(vec![bad.clone()], None)).is_err(), "{bad:?}");
        }
    }
}
