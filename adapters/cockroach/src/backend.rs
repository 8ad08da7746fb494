//! The `Backend` over tokio-postgres and deadpool: one pool per endpoint,
//! chosen per request from the plan's region and role.

use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use quorate::{
    Backend, Capabilities, Committed, Error, Freshness, IdempotencyKey, Point, Precondition, Probe,
    Read, ReadPlan, ReadPolicy, Region, RegionSpec, ReplicaRole, Retryability, Scope, Topology,
    Version, Versioned, WriteRequest,
};
use tokio_postgres::NoTls;

use crate::sql::{self, Dialect, Tables};

/// What an endpoint is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The PostgreSQL primary: strong reads and writes.
    Primary,
    /// A PostgreSQL hot standby: follower reads.
    Standby,
    /// A CockroachDB node: any request.
    Gateway,
}

/// One server.
#[derive(Clone, Debug)]
pub struct Endpoint {
    /// Where it runs.
    pub region: Region,
    /// What it is.
    pub role: Role,
    /// A libpq-style connection string (`host=… port=… user=… dbname=…`).
    pub connection: String,
}

/// How serializable conflicts are produced (and retried).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Isolation {
    /// PostgreSQL's default; conditional writes still detect every conflict.
    #[default]
    ReadCommitted,
    /// Every statement serializable (CockroachDB's default); conflicts
    /// surface as SQLSTATE 40001 and are retried.
    Serializable,
}

/// Everything a [`PgBackend`] needs.
#[derive(Clone, Debug)]
pub struct PgConfig {
    /// The scope session tokens carry (the cluster or database).
    pub scope: Scope,
    /// PostgreSQL or CockroachDB.
    pub dialect: Dialect,
    /// The servers.
    pub endpoints: Vec<Endpoint>,
    /// The region this process runs in.
    pub local: Region,
    /// The records table (`<table>_idempotency` holds idempotency records).
    pub table: String,
    /// Connections per endpoint.
    pub pool_size: usize,
    /// Statement isolation.
    pub isolation: Isolation,
    /// How long idempotency records are kept (well beyond any retry window).
    pub idempotency_ttl: Duration,
}

impl PgConfig {
    /// A configuration with defaults: table `quorate_records`, 16
    /// connections per endpoint, read committed, idempotency kept one day.
    pub fn new(
        scope: &str,
        dialect: Dialect,
        endpoints: Vec<Endpoint>,
        local: &str,
    ) -> Result<PgConfig, Error> {
        Ok(PgConfig {
            scope: Scope::new(scope)?,
            dialect,
            endpoints,
            local: Region::new(local)?,
            table: "quorate_records".into(),
            pool_size: 16,
            isolation: Isolation::default(),
            idempotency_ttl: Duration::from_secs(24 * 3600),
        })
    }
}

#[derive(Debug)]
struct Server {
    region: Region,
    role: Role,
    pool: Pool,
}

#[derive(Debug, Default)]
struct Counters {
    serialization_failures: AtomicU64,
}

#[derive(Debug)]
struct Inner {
    config: PgConfig,
    topology: Topology,
    tables: Tables,
    servers: Vec<Server>,
    counters: Counters,
    sql: Statements,
}

#[derive(Debug)]
struct Statements {
    strong_read: String,
    standby_read: String,
    write_if_version: String,
    write_if_absent: String,
    write_any: String,
    lookup: String,
    current_version: String,
}

/// CockroachDB or PostgreSQL with hot standbys as a quorate [`Backend`].
///
/// Cloning is cheap and shares the pools.
#[derive(Clone, Debug)]
pub struct PgBackend {
    inner: Arc<Inner>,
}

fn invalid(message: String) -> Error {
    Error::InvalidInput(message)
}

impl PgBackend {
    /// Validates the configuration and builds one pool per endpoint
    /// (connections open lazily).
    pub fn new(config: PgConfig) -> Result<PgBackend, Error> {
        let tables = Tables::new(&config.table)?;
        if config.pool_size == 0 {
            return Err(invalid("pool_size must be at least 1".into()));
        }
        let primaries = config
            .endpoints
            .iter()
            .filter(|e| e.role == Role::Primary)
            .count();
        match config.dialect {
            Dialect::Postgres if primaries != 1 => {
                return Err(invalid(format!(
                    "PostgreSQL needs exactly one primary endpoint, got {primaries}"
                )))
            }
            Dialect::Cockroach if config.endpoints.iter().any(|e| e.role != Role::Gateway) => {
                return Err(invalid("CockroachDB endpoints are gateways".into()))
            }
            _ => {}
        }
        let mut regions: Vec<RegionSpec> = Vec::new();
        let mut servers = Vec::new();
        for e in &config.endpoints {
            let mut pg = tokio_postgres::Config::from_str(&e.connection).map_err(|err| {
                invalid(format!(
                    "invalid connection string for an endpoint in {}: {err}",
                    e.region
                ))
            })?;
            if config.isolation == Isolation::Serializable && config.dialect == Dialect::Postgres {
                // Set once per connection at start-up, not per request.
                let options = match pg.get_options() {
                    Some(o) => format!("{o} -c default_transaction_isolation=serializable"),
                    None => "-c default_transaction_isolation=serializable".to_owned(),
                };
                pg.options(options);
            }
            let manager = Manager::from_config(
                pg,
                NoTls,
                ManagerConfig {
                    recycling_method: RecyclingMethod::Fast,
                },
            );
            let pool = Pool::builder(manager)
                .max_size(config.pool_size)
                .build()
                .map_err(|err| invalid(format!("cannot build a pool: {err}")))?;
            // Endpoints are named by region and role, never by their
            // connection string (which may hold credentials).
            let name = format!("{}-{:?}-{}", e.region, e.role, servers.len()).to_lowercase();
            match regions.iter_mut().find(|r| r.name == e.region) {
                Some(r) => r.endpoints.push(name),
                None => regions.push(RegionSpec {
                    name: e.region.clone(),
                    endpoints: vec![name],
                }),
            }
            servers.push(Server {
                region: e.region.clone(),
                role: e.role,
                pool,
            });
        }
        let topology = Topology::new(regions, &config.local)?;
        let sql = Statements {
            strong_read: tables.strong_read(config.dialect),
            standby_read: tables.standby_read(),
            write_if_version: tables.write(config.dialect, Precondition::IfVersion(Version(1))),
            write_if_absent: tables.write(config.dialect, Precondition::IfAbsent),
            write_any: tables.write(config.dialect, Precondition::Any),
            lookup: tables.lookup(),
            current_version: tables.current_version(),
        };
        Ok(PgBackend {
            inner: Arc::new(Inner {
                config,
                topology,
                tables,
                servers,
                counters: Counters::default(),
                sql,
            }),
        })
    }

    /// The tables this backend uses.
    pub fn tables(&self) -> &Tables {
        &self.inner.tables
    }

    /// Creates the records and idempotency tables if they do not exist.
    pub async fn create_schema(&self) -> Result<(), Error> {
        let client = self.connection(self.primary()?).await?;
        for statement in self.inner.tables.create(self.inner.config.dialect) {
            client
                .batch_execute(&statement)
                .await
                .map_err(|e| classify(e, false))?;
        }
        Ok(())
    }

    /// Deletes expired idempotency records; returns how many.
    pub async fn purge_expired(&self) -> Result<u64, Error> {
        let client = self.connection(self.primary()?).await?;
        client
            .execute(&self.inner.tables.purge_expired(), &[])
            .await
            .map_err(|e| classify(e, false))
    }

    /// Serialization failures (SQLSTATE 40001) this backend has seen and
    /// reported as retryable.
    pub fn serialization_failures(&self) -> u64 {
        self.inner
            .counters
            .serialization_failures
            .load(Ordering::Relaxed)
    }

    fn primary(&self) -> Result<usize, Error> {
        self.inner
            .servers
            .iter()
            .position(|s| matches!(s.role, Role::Primary | Role::Gateway))
            .ok_or_else(|| invalid("no primary".into()))
    }

    /// The server for a region and role: the primary (or, for CockroachDB,
    /// the region's gateway) for leader work, a standby of the region for
    /// follower reads (the region's primary when it has no standby).
    fn server(&self, region: &Region, role: ReplicaRole) -> Result<usize, Error> {
        let servers = &self.inner.servers;
        let in_region = |r: Role| {
            servers
                .iter()
                .position(|s| &s.region == region && s.role == r)
        };
        let found = match (self.inner.config.dialect, role) {
            (Dialect::Cockroach, _) => in_region(Role::Gateway),
            (Dialect::Postgres, ReplicaRole::Leader) => return self.primary(),
            (Dialect::Postgres, ReplicaRole::Follower) => {
                in_region(Role::Standby).or_else(|| in_region(Role::Primary))
            }
        };
        found.ok_or_else(|| Error::Topology(quorate::TopologyError::UnknownRegion(region.clone())))
    }

    async fn connection(&self, server: usize) -> Result<deadpool_postgres::Object, Error> {
        let s = &self.inner.servers[server];
        s.pool.get().await.map_err(|e| Error::RegionUnavailable {
            region: s.region.clone(),
            reason: match e {
                deadpool_postgres::PoolError::Timeout(_) => "connection pool timed out",
                _ => "cannot connect",
            },
        })
    }

    fn point(&self, text: &str) -> Result<Point, Error> {
        match self.inner.config.dialect {
            Dialect::Postgres => sql::parse_lsn(text),
            Dialect::Cockroach => sql::parse_hlc(text),
        }
    }

    fn classify(&self, e: tokio_postgres::Error, sent_write: bool) -> Error {
        if e.code() == Some(&tokio_postgres::error::SqlState::T_R_SERIALIZATION_FAILURE) {
            self.inner
                .counters
                .serialization_failures
                .fetch_add(1, Ordering::Relaxed);
        }
        classify(e, sent_write)
    }
}

/// Classifies a driver error. `sent_write`: a write's statement (with its
/// implicit commit) may have reached the server.
pub(crate) fn classify(e: tokio_postgres::Error, sent_write: bool) -> Error {
    use tokio_postgres::error::SqlState;
    let after_send = if sent_write {
        Retryability::Ambiguous
    } else {
        Retryability::Retryable
    };
    let code = e.code().cloned();
    let retryability = match &code {
        Some(c)
            if *c == SqlState::T_R_SERIALIZATION_FAILURE
                || *c == SqlState::T_R_DEADLOCK_DETECTED =>
        {
            Retryability::Retryable
        }
        // CockroachDB's "result is ambiguous".
        Some(c) if c.code() == "40003" => Retryability::Ambiguous,
        Some(c) if *c == SqlState::TOO_MANY_CONNECTIONS || *c == SqlState::CANNOT_CONNECT_NOW => {
            Retryability::Retryable
        }
        Some(c)
            if *c == SqlState::QUERY_CANCELED
                || *c == SqlState::ADMIN_SHUTDOWN
                || *c == SqlState::CRASH_SHUTDOWN
                || c.code().starts_with("08") =>
        {
            after_send
        }
        Some(_) => Retryability::Permanent,
        // No SQLSTATE: the connection broke or timed out.
        None if e.is_closed() || std::error::Error::source(&e).is_some() => after_send,
        None => Retryability::Permanent,
    };
    Error::backend(retryability, code.map(|c| c.code().to_owned()), e)
}

/// Sends a cancel request for the statement in flight if dropped before
/// `disarm` (the caller gave up: deadline or attempt timeout). A commit that
/// waits for synchronous standbys would otherwise wait forever. The cancel
/// token (which copies the connection's settings) is only made when needed.
struct CancelOnDrop<'a> {
    client: Option<&'a tokio_postgres::Client>,
}

impl CancelOnDrop<'_> {
    fn disarm(mut self) {
        self.client = None;
    }
}

impl Drop for CancelOnDrop<'_> {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            let token = client.cancel_token();
            if let Ok(handle) = tokio::runtime::Handle::try_current() {
                handle.spawn(async move {
                    let _ = token.cancel_query(NoTls).await;
                });
            }
        }
    }
}

fn version_of(v: Option<i64>) -> Option<Version> {
    v.and_then(|v| u64::try_from(v).ok()).map(Version)
}

impl Backend for PgBackend {
    fn scope(&self) -> &Scope {
        &self.inner.config.scope
    }

    fn topology(&self) -> &Topology {
        &self.inner.topology
    }

    fn capabilities(&self) -> Capabilities {
        let cockroach = self.inner.config.dialect == Dialect::Cockroach;
        Capabilities {
            strong_reads_anywhere: cockroach,
            writes_anywhere: cockroach,
            follower_reads: true,
            max_staleness: quorate::DEFAULT_MAX_STALENESS,
            max_clock_offset: cockroach.then_some(Duration::from_millis(500)),
        }
    }

    fn home_region(&self, _key: &str) -> Option<&Region> {
        match self.inner.config.dialect {
            Dialect::Postgres => self.primary().ok().map(|i| &self.inner.servers[i].region),
            Dialect::Cockroach => None,
        }
    }

    async fn read(&self, plan: &ReadPlan<'_>) -> Result<Read<Bytes>, Error> {
        let server = self.server(plan.region, plan.role)?;
        let s = &self.inner.servers[server];
        let client = self.connection(server).await?;
        let standby = s.role == Role::Standby;
        let statement = if standby {
            &self.inner.sql.standby_read
        } else {
            &self.inner.sql.strong_read
        };
        let prepared = client
            .prepare_cached(statement)
            .await
            .map_err(|e| self.classify(e, false))?;
        let row = client
            .query_opt(&prepared, &[&plan.key])
            .await
            .map_err(|e| self.classify(e, false))?;
        let Some(row) = row else {
            // Only the primary read returns no row for an absent key.
            return Ok(Read {
                value: None,
                freshness: Freshness {
                    region: s.region.clone(),
                    role: ReplicaRole::Leader,
                    point: None,
                    staleness_bound: Some(Duration::ZERO),
                },
            });
        };
        let version = version_of(row.get(0));
        let value = row.get::<_, Option<Vec<u8>>>(1);
        let point: Option<String> = if row.len() > 2 { row.get(2) } else { None };
        let point = point.map(|p| self.point(&p)).transpose()?;
        let staleness = if standby {
            row.get::<_, Option<f64>>(3)
                .map(|secs| Duration::from_secs_f64(secs.max(0.0)))
        } else {
            Some(Duration::ZERO)
        };
        let value = match (version, value) {
            (Some(version), Some(value)) => Some(Versioned {
                version,
                value: Bytes::from(value),
            }),
            _ => None,
        };
        Ok(Read {
            value,
            freshness: Freshness {
                region: s.region.clone(),
                role: if standby {
                    ReplicaRole::Follower
                } else {
                    ReplicaRole::Leader
                },
                point,
                staleness_bound: staleness,
            },
        })
    }

    async fn write(&self, request: &WriteRequest<'_>) -> Result<Committed, Error> {
        let server = self.server(request.region, ReplicaRole::Leader)?;
        let region = self.inner.servers[server].region.clone();
        let client = self.connection(server).await?;
        let sql = &self.inner.sql;
        let statement = match request.precondition {
            Precondition::IfVersion(_) => &sql.write_if_version,
            Precondition::IfAbsent => &sql.write_if_absent,
            Precondition::Any => &sql.write_any,
        };
        let prepared = client
            .prepare_cached(statement)
            .await
            .map_err(|e| self.classify(e, false))?;
        let generated;
        let idem = match request.idempotency_key {
            Some(k) => k,
            None => {
                generated = IdempotencyKey::generate();
                &generated
            }
        };
        let expected: i64 = match request.precondition {
            Precondition::IfVersion(v) => {
                i64::try_from(v.0).map_err(|_| invalid("version out of range".into()))?
            }
            _ => 0,
        };
        let ttl = i64::try_from(self.inner.config.idempotency_ttl.as_secs()).unwrap_or(i64::MAX);
        let value: &[u8] = request.value;
        let cancel = CancelOnDrop {
            client: Some(&client),
        };
        let (idem_text, region_text) = (idem.as_str(), region.as_str());
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 6] = [
            &request.key,
            &value,
            &idem_text,
            &expected,
            &region_text,
            &ttl,
        ];
        let outcome = client.query_one(&prepared, &params).await;
        cancel.disarm();
        let row = match outcome {
            Ok(row) => row,
            // The idempotency key is already recorded: an earlier attempt
            // applied this logical write (this one applied nothing).
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) => {
                // Boxed, like the other paths that do not apply: their
                // queries would otherwise size (and be moved with) every
                // write's future. The lookup takes its own connection.
                drop(client);
                return match Box::pin(self.lookup_on(server, idem)).await? {
                    Some(done) => Ok(done),
                    None => Err(self.classify(e, false)),
                };
            }
            Err(e) => return Err(self.classify(e, true)),
        };
        if let Some(version) = version_of(row.get(0)) {
            let point = self.point(&row.get::<_, String>(2))?;
            return Ok(Committed {
                version,
                point,
                region,
            });
        }
        drop(client);
        Box::pin(self.not_applied(server, request.key, idem)).await
    }

    async fn lookup(
        &self,
        region: &Region,
        _key: &str,
        idem: &IdempotencyKey,
    ) -> Result<Option<Committed>, Error> {
        let server = self.server(region, ReplicaRole::Leader)?;
        self.lookup_on(server, idem).await
    }

    async fn probe(&self, region: &Region) -> Result<Probe, Error> {
        let server = self.server(region, ReplicaRole::Follower)?;
        let client = self.connection(server).await?;
        let row = client
            .query_one(
                "SELECT (EXTRACT(EPOCH FROM clock_timestamp()) * 1e9)::float8, \
                 CASE WHEN pg_is_in_recovery() THEN EXTRACT(EPOCH FROM (now() - pg_last_xact_replay_timestamp()))::float8 ELSE 0 END",
                &[],
            )
            .await
            .map_err(|e| self.classify(e, false))?;
        let nanos: f64 = row.get(0);
        let lag: Option<f64> = row.get(1);
        Ok(Probe {
            region: region.clone(),
            server_time_nanos: nanos.max(0.0) as u64,
            replica_lag: lag.map(|s| Duration::from_secs_f64(s.max(0.0))),
        })
    }
}

/// CockroachDB's follower reads trail the present by about this much.
const COCKROACH_FOLLOWER_LAG: Duration = Duration::from_millis(4800);

impl PgBackend {
    async fn cockroach_query(
        &self,
        server: usize,
        policy: ReadPolicy,
        min_point: Option<Point>,
        statement: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<(Vec<tokio_postgres::Row>, Freshness), Error> {
        let client = self.connection(server).await?;
        let region = self.inner.servers[server].region.clone();
        let Some(begin) = sql::cockroach_begin(policy, min_point, COCKROACH_FOLLOWER_LAG) else {
            let rows = client
                .query(statement, params)
                .await
                .map_err(|e| self.classify(e, false))?;
            let freshness = Freshness {
                region,
                role: ReplicaRole::Leader,
                point: None,
                staleness_bound: Some(Duration::ZERO),
            };
            return Ok((rows, freshness));
        };
        client
            .batch_execute(&begin)
            .await
            .map_err(|e| self.classify(e, false))?;
        let rows = match client.query(statement, params).await {
            Ok(rows) => rows,
            Err(e) => {
                // Leave the pooled connection outside any transaction.
                let _ = client.batch_execute("ROLLBACK").await;
                return Err(self.classify(e, false));
            }
        };
        client
            .batch_execute("COMMIT")
            .await
            .map_err(|e| self.classify(e, false))?;
        let freshness = Freshness {
            region,
            role: ReplicaRole::Follower,
            point: min_point.filter(|_| policy == ReadPolicy::Session),
            staleness_bound: match policy {
                ReadPolicy::BoundedStaleness(_) => Some(COCKROACH_FOLLOWER_LAG),
                _ => None,
            },
        };
        Ok((rows, freshness))
    }

    /// On PostgreSQL with synchronous standbys, a commit whose wait for them
    /// was cancelled is visible on the primary without being durable on a
    /// standby. Before such an outcome is acknowledged (when resolving an
    /// ambiguous write), some synchronous standby must have flushed
    /// everything the primary has written so far; until one has, the
    /// outcome stays unknown (a retryable error, so resolution keeps trying
    /// within the caller's deadline).
    async fn ensure_durable(&self, client: &deadpool_postgres::Object) -> Result<(), Error> {
        if self.inner.config.dialect != Dialect::Postgres {
            return Ok(());
        }
        let row = client
            .query_one(
                "SELECT current_setting('synchronous_standby_names') = '' \
                 OR EXISTS (SELECT 1 FROM pg_stat_replication WHERE sync_state IN ('sync', 'quorum') \
                 AND flush_lsn >= pg_current_wal_lsn())",
                &[],
            )
            .await
            .map_err(|e| self.classify(e, false))?;
        if row.get::<_, bool>(0) {
            Ok(())
        } else {
            Err(Error::backend(
                Retryability::Retryable,
                None,
                "committed on the primary but not yet durable on a synchronous standby",
            ))
        }
    }

    /// A write whose statement applied nothing: an earlier attempt of this
    /// logical write may have applied it, else the precondition failed
    /// against the current version.
    async fn not_applied(
        &self,
        server: usize,
        key: &str,
        idem: &IdempotencyKey,
    ) -> Result<Committed, Error> {
        if let Some(done) = self.lookup_on(server, idem).await? {
            return Ok(done);
        }
        let client = self.connection(server).await?;
        let statement = client
            .prepare_cached(&self.inner.sql.current_version)
            .await
            .map_err(|e| self.classify(e, false))?;
        let current = client
            .query_opt(&statement, &[&key])
            .await
            .map_err(|e| self.classify(e, false))?
            .and_then(|r| version_of(r.get(0)));
        Err(Error::Conflict {
            key: key.to_owned(),
            current,
        })
    }

    async fn lookup_on(
        &self,
        server: usize,
        idem: &IdempotencyKey,
    ) -> Result<Option<Committed>, Error> {
        let client = self.connection(server).await?;
        let statement = client
            .prepare_cached(&self.inner.sql.lookup)
            .await
            .map_err(|e| self.classify(e, false))?;
        let idem_text = idem.as_str();
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&idem_text];
        let (row, point) = tokio::join!(
            client.query_opt(&statement, &params),
            client.query_one(sql::commit_point(self.inner.config.dialect), &[]),
        );
        let Some(row) = row.map_err(|e| self.classify(e, false))? else {
            return Ok(None);
        };
        self.ensure_durable(&client).await?;
        let point: String = point.map_err(|e| self.classify(e, false))?.get(0);
        let region: String = row.get(1);
        Ok(version_of(row.get(0)).map(|version| Committed {
            version,
            point: self.point(&point).unwrap_or_default(),
            region: Region::new(&region)
                .unwrap_or_else(|_| self.inner.servers[server].region.clone()),
        }))
    }

    /// Runs a read under `policy` (parameters only) and returns the rows with
    /// the freshness of the server that ran it. PostgreSQL: strong on the
    /// primary, session and bounded on a standby of `region` when its replay
    /// covers `min_point` or the bound (checked in the same round trip), else
    /// on the primary. CockroachDB: through `region`'s gateway, in a
    /// transaction `AS OF SYSTEM TIME` the session's timestamp or the
    /// follower read timestamp ([`sql::cockroach_begin`]).
    pub async fn query(
        &self,
        region: &Region,
        policy: ReadPolicy,
        min_point: Option<Point>,
        statement: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<(Vec<tokio_postgres::Row>, Freshness), Error> {
        let role = if policy == ReadPolicy::Strong {
            ReplicaRole::Leader
        } else {
            ReplicaRole::Follower
        };
        let server = self.server(region, role)?;
        let s = &self.inner.servers[server];
        if s.role == Role::Standby {
            let client = self.connection(server).await?;
            let (check, rows) = tokio::join!(
                client.query_one(
                    "SELECT pg_last_wal_replay_lsn()::text, EXTRACT(EPOCH FROM (now() - pg_last_xact_replay_timestamp()))::float8",
                    &[]
                ),
                client.query(statement, params),
            );
            let check = check.map_err(|e| self.classify(e, false))?;
            let replayed = self.point(&check.get::<_, String>(0))?;
            let staleness = check
                .get::<_, Option<f64>>(1)
                .map(|s| Duration::from_secs_f64(s.max(0.0)));
            let fresh_enough = match policy {
                ReadPolicy::BoundedStaleness(b) => staleness.is_some_and(|s| s <= b.duration()),
                _ => min_point.is_none_or(|p| replayed >= p),
            };
            if fresh_enough {
                let rows = rows.map_err(|e| self.classify(e, false))?;
                return Ok((
                    rows,
                    Freshness {
                        region: s.region.clone(),
                        role: ReplicaRole::Follower,
                        point: Some(replayed),
                        staleness_bound: staleness,
                    },
                ));
            }
        }
        if self.inner.config.dialect == Dialect::Cockroach {
            return self
                .cockroach_query(server, policy, min_point, statement, params)
                .await;
        }
        let primary = self.primary()?;
        let client = self.connection(primary).await?;
        let (rows, point) = tokio::join!(
            client.query(statement, params),
            client.query_one(sql::commit_point(self.inner.config.dialect), &[]),
        );
        let rows = rows.map_err(|e| self.classify(e, false))?;
        let point = self.point(
            &point
                .map_err(|e| self.classify(e, false))?
                .get::<_, String>(0),
        )?;
        Ok((
            rows,
            Freshness {
                region: self.inner.servers[primary].region.clone(),
                role: ReplicaRole::Leader,
                point: Some(point),
                staleness_bound: Some(Duration::ZERO),
            },
        ))
    }
}
