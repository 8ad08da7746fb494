//! The `Backend` over tokio-postgres and deadpool: one pool per endpoint,
//! chosen per request from the plan's region and role.

use std::str::FromStr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use quorate::{
    Backend, Capabilities, Catalog, Committed, Error, Freshness, IdempotencyKey, Mutation, Point,
    Precondition, Probe, Read, ReadPlan, ReadPolicy, Region, RegionSpec, ReplicaRole, Retryability,
    Scope, Topology, TransactRequest, Transacted, TxAction, Version, Versioned, WriteRequest,
};
use tokio_postgres::NoTls;

use crate::sql::{self, Dialect, NativeTable, Tables};

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
#[derive(Clone)]
pub struct Endpoint {
    /// Where it runs.
    pub region: Region,
    /// What it is.
    pub role: Role,
    /// A libpq-style connection string (`host=… port=… user=… dbname=…`).
    /// `Debug` shows it without its password.
    pub connection: String,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("region", &self.region)
            .field("role", &self.role)
            .field("connection", &Redacted(&self.connection))
            .finish()
    }
}

/// A connection string shown without its secrets: host, port, user and
/// database only.
struct Redacted<'a>(&'a str);

impl std::fmt::Debug for Redacted<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Ok(config) = tokio_postgres::Config::from_str(self.0) else {
            return f.write_str("\"<unparsable connection string>\"");
        };
        let hosts: Vec<String> = config
            .get_hosts()
            .iter()
            .map(|h| match h {
                tokio_postgres::config::Host::Tcp(name) => name.clone(),
                #[cfg(unix)]
                tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
            })
            .collect();
        write!(
            f,
            "\"host={} port={:?} user={} dbname={}{}\"",
            hosts.join(","),
            config.get_ports(),
            config.get_user().unwrap_or("-"),
            config.get_dbname().unwrap_or("-"),
            if config.get_password().is_some() {
                " password=<redacted>"
            } else {
                ""
            }
        )
    }
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
    /// Collections whose records live in tables of the application's own
    /// (see [`NativeTable`]); every other record lives in `table`.
    pub native: Catalog<NativeTable>,
    /// A TLS configuration of the application's own (client certificates,
    /// its own roots or verifier), used for every endpoint whose
    /// connection string does not say `sslmode=disable`; without it each
    /// endpoint's `sslmode` and `sslrootcert` say how to connect (see
    /// [`crate::tls`]).
    pub tls: Option<Arc<rustls::ClientConfig>>,
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
            native: Catalog::new(),
            tls: None,
        })
    }
}

#[derive(Debug)]
struct Server {
    region: Region,
    role: Role,
    pool: Pool,
    /// The connector of TLS connections (cancel requests go through it
    /// too); `None` with `sslmode=disable`.
    tls: Option<crate::tls::MakeRustls>,
    /// Until when (milliseconds from the backend's epoch) a server that
    /// could not be reached is passed over while others of its region
    /// and role can serve.
    down_until: AtomicU64,
}

#[derive(Debug, Default)]
struct Counters {
    serialization_failures: AtomicU64,
    /// The last attempt stamp handed out (nanoseconds since the epoch,
    /// strictly increasing in this process): fences stop the attempts
    /// stamped before them.
    last_stamp: AtomicU64,
}

#[derive(Debug)]
struct Inner {
    config: PgConfig,
    topology: Topology,
    tables: Tables,
    servers: Vec<Server>,
    counters: Counters,
    sql: Statements,
    /// Turns among a region's servers of one role (ties of load go round).
    turn: AtomicUsize,
    /// The origin of the servers' `down_until`.
    epoch: std::time::Instant,
}

/// The statements on one records table.
#[derive(Debug)]
struct TableSql {
    tables: Tables,
    strong_read: String,
    standby_read: String,
    /// Per precondition (`IfVersion`, `IfAbsent`, `Any`), a put's then a
    /// delete's.
    write: [[String; 2]; 3],
    /// A multi-record write's statements, arranged as `write`.
    apply: [[String; 2]; 3],
    check: String,
    current_version: String,
}

impl TableSql {
    fn new(tables: Tables, dialect: Dialect) -> TableSql {
        let preconditions = [
            Precondition::IfVersion(Version(1)),
            Precondition::IfAbsent,
            Precondition::Any,
        ];
        TableSql {
            strong_read: tables.strong_read(dialect),
            standby_read: tables.standby_read(),
            write: preconditions.map(|p| {
                [
                    tables.write(dialect, p, false),
                    tables.write(dialect, p, true),
                ]
            }),
            apply: preconditions.map(|p| [tables.apply(p, false), tables.apply(p, true)]),
            check: tables.check(),
            current_version: tables.current_version(),
            tables,
        }
    }

    /// The value parameter of a write: the bytes, or a document's text in
    /// a native table (checked before anything is sent; a delete's
    /// tombstone holds JSON `null`).
    fn value<'v>(&self, mutation: Mutation<'v>) -> Result<&'v [u8], Error> {
        match (mutation.value(), self.tables.json()) {
            (Some(v), false) => Ok(&v[..]),
            (None, false) => Ok(&[]),
            (Some(v), true) => {
                check_document(v)?;
                Ok(&v[..])
            }
            (None, true) => Ok(b"null"),
        }
    }

    /// A value read from the table: a document in canonical form.
    fn decode(&self, record: Option<Versioned<Bytes>>) -> Result<Option<Versioned<Bytes>>, Error> {
        match record {
            Some(Versioned { version, value }) if self.tables.json() => Ok(Some(Versioned {
                version,
                value: quorate::json::canonical(&value).map_err(|_| {
                    Error::backend(
                        Retryability::Permanent,
                        Some("quorate.row".into()),
                        format!("a document in {} is not JSON", self.tables.records),
                    )
                })?,
            })),
            other => Ok(other),
        }
    }
}

/// Checks a document before it is sent: JSON that `JSONB` stores (no
/// `\u0000` in a string or a member's name).
fn check_document(value: &[u8]) -> Result<(), Error> {
    fn has_nul(v: &serde_json::Value) -> bool {
        match v {
            serde_json::Value::String(s) => s.contains('\0'),
            serde_json::Value::Array(a) => a.iter().any(has_nul),
            serde_json::Value::Object(o) => o.iter().any(|(k, v)| k.contains('\0') || has_nul(v)),
            _ => false,
        }
    }
    let doc: serde_json::Value = serde_json::from_slice(value).map_err(|e| {
        Error::InvalidInput(format!(
            "a native table stores JSON documents, and this value is not one: {e}"
        ))
    })?;
    if has_nul(&doc) {
        return Err(Error::InvalidInput(
            "a JSONB document cannot hold the character U+0000".into(),
        ));
    }
    Ok(())
}

#[derive(Debug)]
struct Statements {
    /// quorate's own records table.
    own: TableSql,
    /// Collections mapped onto native tables.
    native: Catalog<TableSql>,
    record_transaction: String,
    lookup: String,
    fence: String,
    unfence: String,
}

impl Statements {
    /// The table holding `key` and the key within it.
    fn route<'k>(&self, key: &'k str) -> (&TableSql, &'k str) {
        self.native.route(key).unwrap_or((&self.own, key))
    }
}

/// What an idempotency key holds, for the record it was used with.
enum Recorded {
    Nothing,
    /// A lookup fenced it: attempts stamped before this cannot commit.
    Fence(u64),
    Outcome(Committed),
    /// A multi-record write's outcome.
    Many(Transacted),
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
    /// (connections open lazily, so nothing here touches the network).
    ///
    /// ```
    /// use quorate_cockroach::{Dialect, Endpoint, PgBackend, PgConfig, Region, Role};
    ///
    /// # fn main() -> Result<(), quorate_cockroach::Error> {
    /// let endpoint = |region: &str, role, host: &str| -> Result<Endpoint, quorate_cockroach::Error> {
    ///     Ok(Endpoint { region: Region::new(region)?, role, connection: format!("host={host} user=app") })
    /// };
    /// let endpoints = vec![
    ///     endpoint("eu", Role::Primary, "10.0.0.1")?,
    ///     endpoint("us", Role::Standby, "10.1.0.1")?,
    /// ];
    /// let backend = PgBackend::new(PgConfig::new("orders-db", Dialect::Postgres, endpoints, "us")?)?;
    /// # drop(backend);
    ///
    /// // A PostgreSQL cluster without its primary is refused up front.
    /// let standbys = vec![endpoint("us", Role::Standby, "10.1.0.1")?];
    /// let config = PgConfig::new("orders-db", Dialect::Postgres, standbys, "us")?;
    /// assert!(PgBackend::new(config).is_err());
    /// # Ok(()) }
    /// ```
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
            let settings = crate::tls::split(&e.connection).map_err(|err| {
                invalid(format!(
                    "invalid connection string for an endpoint in {}: {err}",
                    e.region
                ))
            })?;
            let mut pg = tokio_postgres::Config::from_str(&settings.rest).map_err(|err| {
                invalid(format!(
                    "invalid connection string for an endpoint in {}: {err}",
                    e.region
                ))
            })?;
            pg.ssl_mode(crate::tls::driver_mode(settings.mode));
            let tls = match (&config.tls, settings.mode) {
                (_, crate::tls::SslMode::Disable) => None,
                (Some(own), _) => Some(crate::tls::MakeRustls::new(own.clone())),
                (None, _) => Some(crate::tls::MakeRustls::new(
                    crate::tls::client_config(&settings)
                        .map_err(|err| invalid(format!("an endpoint in {}: {err}", e.region)))?,
                )),
            };
            if config.isolation == Isolation::Serializable && config.dialect == Dialect::Postgres {
                // Set once per connection at start-up, not per request.
                let options = match pg.get_options() {
                    Some(o) => format!("{o} -c default_transaction_isolation=serializable"),
                    None => "-c default_transaction_isolation=serializable".to_owned(),
                };
                pg.options(options);
            }
            let manager_config = ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            };
            let manager = match &tls {
                Some(tls) => Manager::from_config(pg, tls.clone(), manager_config),
                None => Manager::from_config(pg, NoTls, manager_config),
            };
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
                tls,
                down_until: AtomicU64::new(0),
            });
        }
        let topology = Topology::new(regions, &config.local)?;
        let mut native = Catalog::new();
        let mut names = vec![tables.records.as_str()];
        for (collection, table) in config.native.iter() {
            if names.contains(&table.table.as_str()) {
                return Err(invalid(format!(
                    "table {} holds two collections (or quorate's records): one table, one collection",
                    table.table
                )));
            }
            names.push(table.table.as_str());
            native.insert(
                collection,
                TableSql::new(Tables::native(table, &tables), config.dialect),
            )?;
        }
        let sql = Statements {
            record_transaction: tables.record_transaction(),
            lookup: tables.lookup(),
            fence: tables.fence(),
            unfence: tables.unfence(),
            own: TableSql::new(tables.clone(), config.dialect),
            native,
        };
        Ok(PgBackend {
            inner: Arc::new(Inner {
                config,
                topology,
                tables,
                servers,
                counters: Counters::default(),
                sql,
                turn: AtomicUsize::new(0),
                epoch: std::time::Instant::now(),
            }),
        })
    }

    /// PostgreSQL or CockroachDB.
    pub fn dialect(&self) -> Dialect {
        self.inner.config.dialect
    }

    /// The tables this backend uses.
    pub fn tables(&self) -> &Tables {
        &self.inner.tables
    }

    /// Creates the records and idempotency tables if they do not exist;
    /// creates each native table that does not exist and adds the
    /// bookkeeping columns to one that does (see [`NativeTable::create`]);
    /// then checks them ([`PgBackend::check_schema`]).
    pub async fn create_schema(&self) -> Result<(), Error> {
        let client = self.connection(self.primary()?).await?;
        let native = self
            .inner
            .config
            .native
            .iter()
            .flat_map(|(_, t)| t.create());
        for statement in self
            .inner
            .tables
            .create(self.inner.config.dialect)
            .into_iter()
            .chain(native)
        {
            // Services starting together create the same tables at once,
            // and PostgreSQL's `IF NOT EXISTS` is not atomic: the loser of
            // the race gets a duplicate error; once the winner's table is
            // there, the statement is a no-op.
            let mut tries = 0;
            loop {
                match client.batch_execute(&statement).await {
                    Ok(()) => break,
                    Err(e) if tries < 5 && created_concurrently(&e) => {
                        tries += 1;
                        tokio::time::sleep(Duration::from_millis(20 * tries)).await;
                    }
                    Err(e) => return Err(classify(e, false)),
                }
            }
        }
        drop(client);
        self.check_schema().await
    }

    /// Checks that every native table has its columns, of types quorate
    /// can use, and its key column as its primary key (or unique): an
    /// [`Error::InvalidInput`] naming each table and what is wrong with it
    /// otherwise.
    pub async fn check_schema(&self) -> Result<(), Error> {
        let client = self.connection(self.primary()?).await?;
        let mut problems = Vec::new();
        for (collection, table) in self.inner.config.native.iter() {
            let (schema, name) = match table.table.as_str().split_once('.') {
                Some((schema, name)) => (Some(schema), name),
                None => (None, table.table.as_str()),
            };
            let columns = client
                .query(
                    "SELECT column_name::TEXT, data_type::TEXT FROM information_schema.columns \
                     WHERE table_schema::TEXT = COALESCE($1::TEXT, current_schema()) AND table_name::TEXT = $2::TEXT",
                    &[&schema, &name],
                )
                .await
                .map_err(|e| self.classify(e, false))?;
            if columns.is_empty() {
                problems.push(format!(
                    "table {} (collection {collection}) does not exist",
                    table.table
                ));
                continue;
            }
            for (column, types) in table.expected_columns() {
                match columns
                    .iter()
                    .find(|r| r.get::<_, &str>(0) == column.as_str())
                {
                    None => problems.push(format!("{} has no column {column}", table.table)),
                    Some(r) if !types.contains(&r.get::<_, &str>(1)) => problems.push(format!(
                        "column {column} of {} is {}, not {}",
                        table.table,
                        r.get::<_, &str>(1),
                        types.join(" or ")
                    )),
                    Some(_) => {}
                }
            }
            let keyed = client
                .query_opt(
                    "SELECT 1 FROM information_schema.table_constraints AS c \
                     JOIN information_schema.key_column_usage AS k \
                       ON k.constraint_name = c.constraint_name AND k.table_schema = c.table_schema \
                       AND k.table_name = c.table_name \
                     WHERE c.table_schema::TEXT = COALESCE($1::TEXT, current_schema()) AND c.table_name::TEXT = $2::TEXT \
                       AND c.constraint_type IN ('PRIMARY KEY', 'UNIQUE') \
                     GROUP BY c.constraint_name \
                     HAVING count(*) = 1 AND bool_and(k.column_name::TEXT = $3::TEXT) LIMIT 1",
                    &[&schema, &name, &table.key.as_str()],
                )
                .await
                .map_err(|e| self.classify(e, false))?;
            if keyed.is_none() {
                problems.push(format!(
                    "column {} of {} is not its primary key (nor unique on its own)",
                    table.key, table.table
                ));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(Error::InvalidInput(format!(
                "native tables do not fit: {}",
                problems.join("; ")
            )))
        }
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

    /// A stamp for an attempt or a fence: nanoseconds since the epoch,
    /// strictly increasing in this process, and above every fence it has
    /// seen.
    fn next_stamp(&self) -> u64 {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        let last = &self.inner.counters.last_stamp;
        let mut seen = last.load(Ordering::Relaxed);
        loop {
            let next = now.max(seen + 1);
            match last.compare_exchange_weak(seen, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return next,
                Err(actual) => seen = actual,
            }
        }
    }

    /// Moves this process's stamps past a fence another process set.
    fn observe_stamp(&self, fence: u64) {
        self.inner
            .counters
            .last_stamp
            .fetch_max(fence, Ordering::Relaxed);
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
        let found = match (self.inner.config.dialect, role) {
            (Dialect::Cockroach, _) => self.choose(region, Role::Gateway),
            (Dialect::Postgres, ReplicaRole::Leader) => return self.primary(),
            (Dialect::Postgres, ReplicaRole::Follower) => self
                .choose(region, Role::Standby)
                .or_else(|| self.choose(region, Role::Primary)),
        };
        found.ok_or_else(|| Error::Topology(quorate::TopologyError::UnknownRegion(region.clone())))
    }

    /// One of `region`'s servers in `role`: the only one, or among several
    /// a reachable one with the fewest connections in use or awaited,
    /// ties going round in turn, so that every server of the region
    /// serves and none is stuck to.
    fn choose(&self, region: &Region, role: Role) -> Option<usize> {
        let servers = &self.inner.servers;
        let matching = || {
            servers
                .iter()
                .enumerate()
                .filter(move |(_, s)| &s.region == region && s.role == role)
        };
        let mut candidates = matching();
        let first = candidates.next()?.0;
        let n = 1 + candidates.count();
        if n == 1 {
            return Some(first);
        }
        let now = self.millis();
        let turn = self.inner.turn.fetch_add(1, Ordering::Relaxed) % n;
        matching()
            .enumerate()
            .map(|(k, (i, s))| {
                let down = s.down_until.load(Ordering::Relaxed) > now;
                let status = s.pool.status();
                let load = status.size.saturating_sub(status.available) + status.waiting;
                ((down, load, (k + n - turn) % n), i)
            })
            .min()
            .map(|(_, i)| i)
    }

    /// Milliseconds since the backend's epoch.
    fn millis(&self) -> u64 {
        u64::try_from(self.inner.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    async fn connection(&self, server: usize) -> Result<deadpool_postgres::Object, Error> {
        let s = &self.inner.servers[server];
        s.pool.get().await.map_err(|e| {
            // A certificate refused (or a server refusing ours) is the
            // configuration's to fix, not a region's outage.
            if let deadpool_postgres::PoolError::Backend(err) = &e {
                if let Some(tls) = rustls_error(err) {
                    return Error::backend(
                        Retryability::Permanent,
                        Some("tls".into()),
                        format!("TLS to a server in {}: {tls}", s.region),
                    );
                }
            }
            let reason = match e {
                deadpool_postgres::PoolError::Timeout(_) => "connection pool timed out",
                _ => {
                    // Passed over for a while where its region has others.
                    s.down_until.store(
                        self.millis() + SERVER_DOWN.as_millis() as u64,
                        Ordering::Relaxed,
                    );
                    "cannot connect"
                }
            };
            Error::RegionUnavailable {
                region: s.region.clone(),
                reason,
            }
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

/// A PostgreSQL multi-record write's COMMIT and its commit point
/// ([`sql::commit_point`]), in one message.
const PG_COMMIT_AND_POINT: &str = "COMMIT; SELECT pg_current_wal_insert_lsn()::text";

/// How long a server that could not be reached is passed over while its
/// region has others in the same role.
const SERVER_DOWN: Duration = Duration::from_secs(2);

/// The rustls error behind a connection's failure, if any.
fn rustls_error(e: &tokio_postgres::Error) -> Option<&rustls::Error> {
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(tls) = s.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            if let Some(tls) = io.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
                return Some(tls);
            }
        }
        source = s.source();
    }
    None
}

/// A schema statement that lost a race with the same statement of another
/// session: a duplicate table, type or column (`42P07`, `42710`, `42701`),
/// or the catalogue's own unique index (`23505` on a `pg_catalog` table).
fn created_concurrently(e: &tokio_postgres::Error) -> bool {
    let Some(d) = e.as_db_error() else {
        return false;
    };
    match d.code().code() {
        "42P07" | "42710" | "42701" => true,
        "23505" => d.schema() == Some("pg_catalog"),
        _ => false,
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
///
/// Cancelling is a courtesy to the server, not what keeps a write exactly
/// once: the cancel may arrive after the commit, or not at all, and the
/// statement may still commit. Lookups fence the idempotency key instead.
struct CancelOnDrop<'a> {
    client: Option<&'a tokio_postgres::Client>,
    tls: &'a Option<crate::tls::MakeRustls>,
}

impl CancelOnDrop<'_> {
    fn disarm(mut self) {
        self.client = None;
    }
}

impl Drop for CancelOnDrop<'_> {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            cancel(client.cancel_token(), self.tls.clone());
        }
    }
}

fn cancel(token: tokio_postgres::CancelToken, tls: Option<crate::tls::MakeRustls>) {
    if let Ok(handle) = tokio::runtime::Handle::try_current() {
        handle.spawn(async move {
            let _ = match tls {
                Some(tls) => token.cancel_query(tls).await,
                None => token.cancel_query(NoTls).await,
            };
        });
    }
}

/// [`CancelOnDrop`] for a statement of an explicit transaction, which
/// borrows the connection mutably: the token is made up front.
struct CancelTokenOnDrop<'a>(
    Option<tokio_postgres::CancelToken>,
    &'a Option<crate::tls::MakeRustls>,
);

impl CancelTokenOnDrop<'_> {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for CancelTokenOnDrop<'_> {
    fn drop(&mut self) {
        if let Some(token) = self.0.take() {
            cancel(token, self.1.clone());
        }
    }
}

/// A pooled connection in a transaction begun by statement (`BEGIN`, so
/// that it can travel in one flight with the transaction's first
/// statements). Ended with [`InTransaction::ended`] (after COMMIT) or
/// [`InTransaction::roll_back`], it goes back to the pool; dropped while
/// the transaction may still be open (the caller's future abandoned, a
/// ROLLBACK that failed), its running statement is cancelled and it
/// leaves the pool and closes, which ends the transaction on the server,
/// rather than being handed to the next caller mid-transaction.
struct InTransaction<'a> {
    object: Option<deadpool_postgres::Object>,
    cancel: tokio_postgres::CancelToken,
    tls: &'a Option<crate::tls::MakeRustls>,
}

impl<'a> InTransaction<'a> {
    fn begin(
        object: deadpool_postgres::Object,
        tls: &'a Option<crate::tls::MakeRustls>,
    ) -> InTransaction<'a> {
        InTransaction {
            cancel: object.cancel_token(),
            object: Some(object),
            tls,
        }
    }

    fn client(&self) -> &tokio_postgres::Client {
        match &self.object {
            Some(object) => object,
            // Taken only when the guard is consumed.
            None => unreachable!("a connection guard used after it ended"),
        }
    }

    /// The transaction is over: the connection goes back to the pool.
    fn ended(mut self) {
        drop(self.object.take());
    }

    /// Rolls the transaction back; the connection goes back to the pool if
    /// that worked, and closes otherwise.
    async fn roll_back(self) {
        if self.client().batch_execute("ROLLBACK").await.is_ok() {
            self.ended();
        }
    }
}

impl Drop for InTransaction<'_> {
    fn drop(&mut self) {
        if let Some(object) = self.object.take() {
            // Whatever statement is running is cancelled, and the
            // connection closed.
            cancel(self.cancel.clone(), self.tls.clone());
            drop(deadpool_postgres::Object::take(object));
        }
    }
}

/// The statement of a single write on `table`.
fn write_statement<'t>(table: &'t TableSql, request: &WriteRequest<'_>) -> &'t str {
    let slot = match request.precondition {
        Precondition::IfVersion(_) => 0,
        Precondition::IfAbsent => 1,
        Precondition::Any => 2,
    };
    &table.write[slot][usize::from(request.mutation.is_delete())]
}

fn version_of(v: Option<i64>) -> Option<Version> {
    v.and_then(|v| u64::try_from(v).ok()).map(Version)
}

/// A row's record, or its tombstone's version when it was deleted.
fn record_of(
    version: Option<i64>,
    value: Option<Vec<u8>>,
    deleted: Option<bool>,
) -> (Option<Versioned<Bytes>>, Option<Version>) {
    match (version_of(version), value, deleted) {
        (Some(version), _, Some(true)) => (None, Some(version)),
        (Some(version), Some(value), _) => (
            Some(Versioned {
                version,
                value: Bytes::from(value),
            }),
            None,
        ),
        _ => (None, None),
    }
}

fn expected_version(precondition: Precondition) -> Result<i64, Error> {
    match precondition {
        Precondition::IfVersion(v) => {
            i64::try_from(v.0).map_err(|_| invalid("version out of range".into()))
        }
        _ => Ok(0),
    }
}

/// An error met after a write committed: whatever its own class, the
/// caller only knows that the outcome must be looked up.
fn ambiguous(e: Error) -> Error {
    match e {
        Error::Backend { code, source, .. } => Error::Backend {
            retryability: Retryability::Ambiguous,
            code,
            source,
        },
        other => Error::backend(Retryability::Ambiguous, None, other.to_string()),
    }
}

/// An attempt that a lookup fenced: it applied nothing, and a later attempt
/// of the same write may go ahead.
/// What the idempotency row of a closure transaction is bound to.
const EXECUTE_BINDING: &str = "txn:sql";

fn reused(key: &str, idem: &IdempotencyKey) -> Error {
    Error::IdempotencyKeyReused {
        key: key.to_owned(),
        idempotency_key: idem.clone(),
    }
}

fn fenced() -> Error {
    Error::backend(
        Retryability::Retryable,
        Some("quorate.fenced".into()),
        "a lookup fenced this attempt of the write: it applied nothing",
    )
}

impl Backend for PgBackend {
    fn scope(&self) -> &Scope {
        &self.inner.config.scope
    }

    fn db_system(&self) -> &'static str {
        match self.inner.config.dialect {
            Dialect::Postgres => "postgresql",
            Dialect::Cockroach => "cockroachdb",
        }
    }

    fn db_operation_name(&self, op: quorate::DbOperation) -> &'static str {
        match op {
            quorate::DbOperation::Read
            | quorate::DbOperation::Lookup
            | quorate::DbOperation::Probe => "SELECT",
            // A conditional UPDATE (or INSERT) with its idempotency row.
            quorate::DbOperation::Write => "UPDATE",
            _ => "BATCH",
        }
    }

    fn db_target(
        &self,
        op: quorate::DbOperation,
        region: &Region,
        key: Option<&str>,
    ) -> quorate::DbTarget {
        let mut target = quorate::DbTarget::new();
        if let Some(key) = key.filter(|_| op != quorate::DbOperation::Lookup) {
            target = target.collection(self.inner.sql.route(key).0.tables.records.as_str());
        }
        // The first server of the region (the one a request most likely
        // reaches; standbys of a region share a database).
        let parsed = self
            .inner
            .config
            .endpoints
            .iter()
            .find(|e| &e.region == region)
            .and_then(|e| crate::tls::split(&e.connection).ok())
            .and_then(|t| tokio_postgres::Config::from_str(&t.rest).ok());
        if let Some(c) = parsed {
            if let Some(db) = c.get_dbname() {
                target = target.namespace(db);
            }
            if let Some(tokio_postgres::config::Host::Tcp(host)) = c.get_hosts().first() {
                target = target.server(host.clone(), c.get_ports().first().copied());
            }
        }
        target
    }

    /// PostgreSQL's points are WAL positions, shown as PostgreSQL shows
    /// them (`0/3000060`); CockroachDB's are HLC timestamps, shown as
    /// CockroachDB shows them (`1700000000123456789.0000000002`).
    fn fmt_point(&self, point: Point, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.inner.config.dialect {
            Dialect::Postgres => {
                write!(f, "{:X}/{:X}", point.wall >> 32, point.wall & 0xffff_ffff)
            }
            Dialect::Cockroach => std::fmt::Display::fmt(&point, f),
        }
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
        if self.inner.config.dialect == Dialect::Cockroach {
            return Box::pin(self.cockroach_read(server, plan)).await;
        }
        let client = self.connection(server).await?;
        if s.role == Role::Standby {
            return self.standby_read(server, &client, plan.key).await;
        }
        self.leader_read(server, &client, plan.key).await
    }

    async fn write(&self, request: &WriteRequest<'_>) -> Result<Committed, Error> {
        // Taken before anything is sent: a lookup that fences this logical
        // write from now on stops this attempt.
        let stamp = self.next_stamp();
        let server = self.server(request.region, ReplicaRole::Leader)?;
        let region = self.inner.servers[server].region.clone();
        let client = self.connection(server).await?;
        let (table, row_key) = self.inner.sql.route(request.key);
        // Checked before anything is sent.
        let value = table.value(request.mutation)?;
        let statement = write_statement(table, request);
        // Both prepared (cached after the first use), so that the commit
        // point rides in the same round trip instead of parsing first.
        let (prepared, commit_point) = tokio::join!(
            client.prepare_cached(statement),
            client.prepare_cached(sql::commit_point(Dialect::Postgres)),
        );
        let prepared = prepared.map_err(|e| self.classify(e, false))?;
        let generated;
        let idem = match request.idempotency_key {
            Some(k) => k,
            None => {
                generated = IdempotencyKey::generate();
                &generated
            }
        };
        let expected = expected_version(request.precondition)?;
        let ttl = self.ttl_secs();
        let cancel = CancelOnDrop {
            client: Some(&client),
            tls: &self.inner.servers[server].tls,
        };
        let (idem_text, region_text) = (idem.as_str(), region.as_str());
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 7] = [
            &row_key,
            &value,
            &idem_text,
            &expected,
            &region_text,
            &ttl,
            &request.key,
        ];
        let (outcome, after) = match self.inner.config.dialect {
            // The commit point is read after the implicit transaction
            // committed, in the same round trip.
            Dialect::Postgres => {
                let commit_point = commit_point.map_err(|e| self.classify(e, false))?;
                let (outcome, after) = tokio::join!(
                    client.query_one(&prepared, &params),
                    client.query_one(&commit_point, &[]),
                );
                (outcome, Some(after))
            }
            Dialect::Cockroach => (client.query_one(&prepared, &params).await, None),
        };
        cancel.disarm();
        let row = match outcome {
            Ok(row) => row,
            // The idempotency key holds a row already: an earlier attempt's
            // outcome, or a fence (this attempt applied nothing). A unique
            // constraint of another table (an application's index on its
            // native table) refused the record itself: permanent.
            Err(e)
                if e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION)
                    && self.on_idempotency_table(&e) =>
            {
                // Boxed, like the other paths that do not apply: their
                // queries would otherwise size (and be moved with) every
                // write's future.
                drop(client);
                return Box::pin(self.after_unique_violation(server, request, idem, stamp, e))
                    .await;
            }
            Err(e) => return Err(self.classify(e, true)),
        };
        if let Some(version) = version_of(row.get(0)) {
            // The write committed: failing to learn its point now leaves the
            // caller to resolve it (the lookup reads a point of its own),
            // never a definite failure.
            let point = match after {
                Some(after) => after
                    .map_err(|e| ambiguous(self.classify(e, true)))?
                    .get::<_, String>(0),
                None => row.get::<_, String>(2),
            };
            return Ok(Committed {
                version,
                point: self.point(&point).map_err(ambiguous)?,
                region,
            });
        }
        drop(client);
        Box::pin(self.not_applied(server, request.key, idem)).await
    }

    async fn lookup(
        &self,
        region: &Region,
        key: &str,
        idem: &IdempotencyKey,
    ) -> Result<Option<Committed>, Error> {
        match self.lookup_fenced(region, key, &[key], idem).await? {
            Some(Recorded::Outcome(done)) => Ok(Some(done)),
            Some(_) => Err(reused(key, idem)),
            None => Ok(None),
        }
    }

    async fn transact(&self, request: &TransactRequest<'_>) -> Result<Transacted, Error> {
        Box::pin(self.transact_attempt(request, None)).await
    }

    async fn lookup_transaction(
        &self,
        region: &Region,
        keys: &[&str],
        idem: &IdempotencyKey,
    ) -> Result<Option<Transacted>, Error> {
        let binding = quorate::transaction_binding(keys.iter().copied());
        match self.lookup_fenced(region, &binding, keys, idem).await? {
            Some(Recorded::Many(done)) => Ok(Some(done)),
            Some(_) => Err(reused(keys.first().copied().unwrap_or(""), idem)),
            None => Ok(None),
        }
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

/// CockroachDB's exact-staleness follower reads trail the present by about
/// this much: bounds tighter than this cannot use them.
const COCKROACH_FOLLOWER_LAG: Duration = Duration::from_millis(4800);

fn now_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// CockroachDB refuses `AS OF SYSTEM TIME` at a timestamp ahead of the
/// gateway's clock (a session point written through a gateway whose clock
/// runs ahead).
fn future_timestamp(e: &tokio_postgres::Error) -> bool {
    e.as_db_error()
        .is_some_and(|d| d.message().contains("in the future"))
}

impl PgBackend {
    /// Looks `idem` up for the write bound to `binding` (a record's key, or
    /// a multi-record write's binding) whose records are `keys`, fencing it
    /// when it holds nothing: the outcome found (`Outcome` or `Many`), or
    /// `None` once no attempt can commit any more.
    async fn lookup_fenced(
        &self,
        region: &Region,
        binding: &str,
        keys: &[&str],
        idem: &IdempotencyKey,
    ) -> Result<Option<Recorded>, Error> {
        let key = binding;
        let server = self.server(region, ReplicaRole::Leader)?;
        let client = self.connection(server).await?;
        let sql = &self.inner.sql;
        let dialect = self.inner.config.dialect;
        let (fence, lookup, point) = tokio::join!(
            client.prepare_cached(&sql.fence),
            client.prepare_cached(&sql.lookup),
            client.prepare_cached(sql::commit_point(dialect)),
        );
        let fence = fence.map_err(|e| self.classify(e, false))?;
        let lookup = lookup.map_err(|e| self.classify(e, false))?;
        let point = point.map_err(|e| self.classify(e, false))?;
        // Every attempt stamped until now is fenced: one still in flight
        // either recorded its outcome first (the fence waits for it and
        // leaves it), or finds the key taken and applies nothing.
        let stamp = i64::try_from(self.next_stamp()).unwrap_or(i64::MAX);
        let (idem_text, region_text) = (idem.as_str(), self.inner.servers[server].region.as_str());
        let ttl = self.ttl_secs();
        let fence_params: [&(dyn tokio_postgres::types::ToSql + Sync); 5] =
            [&idem_text, &key, &region_text, &ttl, &stamp];
        let lookup_params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&idem_text];
        // The fence commits like a write: with every synchronous standby
        // down it waits until cancelled.
        let cancel = CancelOnDrop {
            client: Some(&client),
            tls: &self.inner.servers[server].tls,
        };
        // The point is read after the row, so it is at or after the commit
        // of an outcome found there.
        let (fenced, row, at) = tokio::join!(
            client.execute(&fence, &fence_params),
            client.query_opt(&lookup, &lookup_params),
            client.query_one(&point, &[]),
        );
        cancel.disarm();
        fenced.map_err(|e| self.classify(e, false))?;
        let row = row.map_err(|e| self.classify(e, false))?;
        let at = at.map_err(|e| self.classify(e, false))?;
        match self.recorded_row(server, row, &at, key, keys, idem)? {
            done @ (Recorded::Outcome(_) | Recorded::Many(_)) => {
                self.ensure_durable(&client).await?;
                Ok(Some(done))
            }
            Recorded::Fence(_) => Ok(None),
            Recorded::Nothing => Err(Error::backend(
                Retryability::Retryable,
                None,
                "the idempotency key's fence is not visible yet",
            )),
        }
    }

    /// A CockroachDB read: the leaseholder for the leader role; for a
    /// follower, a bounded-staleness read at the session's point
    /// (`with_min_timestamp`) or within the policy's bound
    /// (`with_max_staleness`), served by the nearest replica that can, and
    /// reporting the timestamp CockroachDB read at. A session point ahead
    /// of the clocks, or an absent record (a follower states no timestamp
    /// for it), reads at the leaseholder instead.
    async fn cockroach_read(
        &self,
        server: usize,
        plan: &ReadPlan<'_>,
    ) -> Result<Read<Bytes>, Error> {
        let region = self.inner.servers[server].region.clone();
        let client = self.connection(server).await?;
        let follower = match plan.role {
            ReplicaRole::Leader => None,
            ReplicaRole::Follower => {
                sql::cockroach_follower(plan.policy, plan.floor.point, now_nanos())
            }
        };
        if let Some((kind, min)) = follower {
            let (table, row_key) = self.inner.sql.route(plan.key);
            let statement = table.tables.follower_read(kind);
            let prepared = client
                .prepare_cached(&statement)
                .await
                .map_err(|e| self.classify(e, false))?;
            let result = match min {
                Some(at) => client.query_opt(&prepared, &[&row_key, &at]).await,
                None => client.query_opt(&prepared, &[&row_key]).await,
            };
            match result {
                Ok(Some(row)) => {
                    let read_at = self.point(&row.get::<_, String>(2))?;
                    let (value, deleted) = record_of(row.get(0), row.get(1), row.get(3));
                    let value = table.decode(value)?;
                    return Ok(Read {
                        value,
                        deleted,
                        freshness: Freshness {
                            region,
                            role: ReplicaRole::Follower,
                            point: Some(read_at),
                            staleness_bound: Some(Duration::from_nanos(
                                now_nanos().saturating_sub(read_at.wall),
                            )),
                        },
                    });
                }
                Ok(None) => {}
                Err(e) if future_timestamp(&e) => {}
                Err(e) => return Err(self.classify(e, false)),
            }
        }
        self.leader_read(server, &client, plan.key).await
    }

    /// A linearizable read (the primary, or a CockroachDB gateway) and the
    /// point it reflects.
    async fn leader_read(
        &self,
        server: usize,
        client: &deadpool_postgres::Object,
        key: &str,
    ) -> Result<Read<Bytes>, Error> {
        let (table, row_key) = self.inner.sql.route(key);
        let prepared = client
            .prepare_cached(&table.strong_read)
            .await
            .map_err(|e| self.classify(e, false))?;
        let row = client
            .query_one(&prepared, &[&row_key])
            .await
            .map_err(|e| self.classify(e, false))?;
        let point = self.point(&row.get::<_, String>(2))?;
        let (value, deleted) = record_of(row.get(0), row.get(1), row.get(3));
        let value = table.decode(value)?;
        Ok(Read {
            value,
            deleted,
            freshness: Freshness {
                region: self.inner.servers[server].region.clone(),
                role: ReplicaRole::Leader,
                point: Some(point),
                staleness_bound: Some(Duration::ZERO),
            },
        })
    }

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
        let begin = sql::cockroach_begin(policy, min_point, COCKROACH_FOLLOWER_LAG, now_nanos());
        if let Some(begin) = begin {
            match self
                .historical_query(&client, &begin, statement, params)
                .await
            {
                Ok((rows, read_at)) => {
                    let read_at = self.point(&read_at)?;
                    let freshness = Freshness {
                        region,
                        role: ReplicaRole::Follower,
                        point: Some(read_at),
                        staleness_bound: Some(Duration::from_nanos(
                            now_nanos().saturating_sub(read_at.wall),
                        )),
                    };
                    return Ok((rows, freshness));
                }
                // A session point ahead of this gateway's clock: read at the
                // present instead, which covers it.
                Err(e) if future_timestamp(&e) => {}
                Err(e) => return Err(self.classify(e, false)),
            }
        }
        let (rows, point) = tokio::join!(
            client.query(statement, params),
            client.query_one(sql::commit_point(Dialect::Cockroach), &[]),
        );
        let rows = rows.map_err(|e| self.classify(e, false))?;
        let point = self.point(
            &point
                .map_err(|e| self.classify(e, false))?
                .get::<_, String>(0),
        )?;
        let freshness = Freshness {
            region,
            role: ReplicaRole::Leader,
            point: Some(point),
            staleness_bound: Some(Duration::ZERO),
        };
        Ok((rows, freshness))
    }

    /// Runs `statement` in a transaction opened by `begin` (`AS OF SYSTEM
    /// TIME`) and returns its rows with the timestamp it read at.
    async fn historical_query(
        &self,
        client: &deadpool_postgres::Object,
        begin: &str,
        statement: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<(Vec<tokio_postgres::Row>, String), tokio_postgres::Error> {
        client.batch_execute(begin).await?;
        let (rows, at) = tokio::join!(
            client.query(statement, params),
            client.query_one("SELECT cluster_logical_timestamp()::STRING", &[]),
        );
        let outcome = match (rows, at) {
            (Ok(rows), Ok(at)) => Ok((rows, at)),
            (Err(e), _) | (_, Err(e)) => Err(e),
        };
        match outcome {
            Ok((rows, at)) => {
                client.batch_execute("COMMIT").await?;
                Ok((rows, at.get::<_, String>(0)))
            }
            Err(e) => {
                // Leave the pooled connection outside any transaction.
                let _ = client.batch_execute("ROLLBACK").await;
                Err(e)
            }
        }
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

    /// Whether a constraint violation is the idempotency table's (or its
    /// table is not reported, as it then may be).
    fn on_idempotency_table(&self, e: &tokio_postgres::Error) -> bool {
        let idempotency = self.inner.tables.idempotency.as_str();
        e.as_db_error()
            .and_then(|d| d.table())
            .is_none_or(|t| t == idempotency)
    }

    fn ttl_secs(&self) -> i64 {
        i64::try_from(self.inner.config.idempotency_ttl.as_secs()).unwrap_or(i64::MAX)
    }

    /// A read at a standby: its replay position and staleness first, then
    /// the record, in one round trip on one connection, so that the
    /// reported freshness is never ahead of what the read's snapshot shows.
    async fn standby_read(
        &self,
        server: usize,
        client: &deadpool_postgres::Object,
        key: &str,
    ) -> Result<Read<Bytes>, Error> {
        let (table, row_key) = self.inner.sql.route(key);
        let (status_statement, prepared) = tokio::join!(
            client.prepare_cached(table.tables.replay_status()),
            client.prepare_cached(&table.standby_read),
        );
        let status_statement = status_statement.map_err(|e| self.classify(e, false))?;
        let prepared = prepared.map_err(|e| self.classify(e, false))?;
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&row_key];
        let (status, row) = tokio::join!(
            client.query_one(&status_statement, &[]),
            client.query_opt(&prepared, &params),
        );
        let status = status.map_err(|e| self.classify(e, false))?;
        let row = row.map_err(|e| self.classify(e, false))?;
        let point = status
            .get::<_, Option<String>>(0)
            .map(|p| self.point(&p))
            .transpose()?;
        let staleness = status
            .get::<_, Option<f64>>(1)
            .map(|secs| Duration::from_secs_f64(secs.max(0.0)));
        let (value, deleted) = match row {
            Some(r) => record_of(r.get(0), r.get(1), r.get(2)),
            None => (None, None),
        };
        let value = table.decode(value)?;
        Ok(Read {
            value,
            deleted,
            freshness: Freshness {
                region: self.inner.servers[server].region.clone(),
                role: ReplicaRole::Follower,
                point,
                staleness_bound: staleness,
            },
        })
    }

    /// An attempt's statement was refused because its idempotency key holds
    /// a row: return the outcome recorded there, or, when it is a fence
    /// older than this attempt, lift it and write in one transaction.
    async fn after_unique_violation(
        &self,
        server: usize,
        request: &WriteRequest<'_>,
        idem: &IdempotencyKey,
        stamp: u64,
        refused: tokio_postgres::Error,
    ) -> Result<Committed, Error> {
        match self
            .lookup_on(server, request.key, &[request.key], idem)
            .await?
        {
            Recorded::Outcome(done) => Ok(done),
            Recorded::Many(_) => Err(reused(request.key, idem)),
            Recorded::Fence(before) if stamp < before => {
                self.observe_stamp(before);
                Err(fenced())
            }
            Recorded::Fence(_) => self.write_over_fence(server, request, idem, stamp).await,
            // The row that refused the statement is gone (expired): nothing
            // of this attempt applied; try again.
            Recorded::Nothing => Err(Error::backend(
                Retryability::Retryable,
                refused.code().map(|c| c.code().to_owned()),
                refused,
            )),
        }
    }

    /// The write of an attempt stamped after the fence its idempotency key
    /// holds: the fence is lifted and the record written in one
    /// transaction. An attempt stamped before a newer fence lifts nothing
    /// and writes nothing.
    async fn write_over_fence(
        &self,
        server: usize,
        request: &WriteRequest<'_>,
        idem: &IdempotencyKey,
        stamp: u64,
    ) -> Result<Committed, Error> {
        let region = self.inner.servers[server].region.clone();
        let mut client = self.connection(server).await?;
        let cancel =
            CancelTokenOnDrop(Some(client.cancel_token()), &self.inner.servers[server].tls);
        let tx = client
            .transaction()
            .await
            .map_err(|e| self.classify(e, false))?;
        let (idem_text, region_text) = (idem.as_str(), region.as_str());
        let stamp_param = i64::try_from(stamp).unwrap_or(i64::MAX);
        let lifted = tx
            .execute(&self.inner.sql.unfence, &[&idem_text, &stamp_param])
            .await
            .map_err(|e| self.classify(e, false))?;
        if lifted == 0 {
            let _ = tx.rollback().await;
            drop(cancel);
            return Err(fenced());
        }
        let expected = expected_version(request.precondition)?;
        let ttl = self.ttl_secs();
        let (table, row_key) = self.inner.sql.route(request.key);
        let value = table.value(request.mutation)?;
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 7] = [
            &row_key,
            &value,
            &idem_text,
            &expected,
            &region_text,
            &ttl,
            &request.key,
        ];
        // Nothing commits before COMMIT: errors until then are not
        // ambiguous.
        let row = tx
            .query_one(write_statement(table, request), &params)
            .await
            .map_err(|e| self.classify(e, false))?;
        let Some(version) = version_of(row.get(0)) else {
            let _ = tx.rollback().await;
            drop(cancel);
            drop(client);
            return self.not_applied(server, request.key, idem).await;
        };
        let point = match self.inner.config.dialect {
            Dialect::Cockroach => Some(row.get::<_, String>(2)),
            Dialect::Postgres => None,
        };
        tx.commit().await.map_err(|e| self.classify(e, true))?;
        cancel.disarm();
        let point = match point {
            Some(p) => p,
            None => client
                .query_one(sql::commit_point(Dialect::Postgres), &[])
                .await
                .map_err(|e| ambiguous(self.classify(e, true)))?
                .get(0),
        };
        Ok(Committed {
            version,
            point: self.point(&point).map_err(ambiguous)?,
            region,
        })
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
        if let Recorded::Outcome(done) = self.lookup_on(server, key, &[key], idem).await? {
            return Ok(done);
        }
        let client = self.connection(server).await?;
        let (table, row_key) = self.inner.sql.route(key);
        let statement = client
            .prepare_cached(&table.current_version)
            .await
            .map_err(|e| self.classify(e, false))?;
        let current = client
            .query_opt(&statement, &[&row_key])
            .await
            .map_err(|e| self.classify(e, false))?
            .and_then(|r| version_of(r.get(0)));
        Err(Error::Conflict {
            key: key.to_owned(),
            current,
        })
    }

    /// What an idempotency key holds, read without fencing (for an attempt
    /// that is itself the newest one), checked against the record it names.
    async fn lookup_on(
        &self,
        server: usize,
        key: &str,
        keys: &[&str],
        idem: &IdempotencyKey,
    ) -> Result<Recorded, Error> {
        let client = self.connection(server).await?;
        let (statement, point) = tokio::join!(
            client.prepare_cached(&self.inner.sql.lookup),
            client.prepare_cached(sql::commit_point(self.inner.config.dialect)),
        );
        let statement = statement.map_err(|e| self.classify(e, false))?;
        let point = point.map_err(|e| self.classify(e, false))?;
        let idem_text = idem.as_str();
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&idem_text];
        let (row, at) = tokio::join!(
            client.query_opt(&statement, &params),
            client.query_one(&point, &[]),
        );
        let row = row.map_err(|e| self.classify(e, false))?;
        let at = at.map_err(|e| self.classify(e, false))?;
        let recorded = self.recorded_row(server, row, &at, key, keys, idem)?;
        if matches!(recorded, Recorded::Outcome(_) | Recorded::Many(_)) {
            self.ensure_durable(&client).await?;
        }
        Ok(recorded)
    }

    /// Decodes an idempotency row. An outcome's point is `at`, the commit
    /// point read right after the row on the same connection: at or after
    /// the write's commit, so the session that records it keeps covering
    /// the write.
    fn recorded_row(
        &self,
        server: usize,
        row: Option<tokio_postgres::Row>,
        at: &tokio_postgres::Row,
        key: &str,
        keys: &[&str],
        idem: &IdempotencyKey,
    ) -> Result<Recorded, Error> {
        let Some(row) = row else {
            return Ok(Recorded::Nothing);
        };
        let record_key: String = row.get(2);
        if record_key != key {
            return Err(Error::IdempotencyKeyReused {
                key: key.to_owned(),
                idempotency_key: idem.clone(),
            });
        }
        let Some(version) = version_of(row.get(0)) else {
            return Err(Error::backend(
                Retryability::Permanent,
                Some("quorate.row".into()),
                "negative version in an idempotency row",
            ));
        };
        if version.0 == 0 {
            let before = row
                .get::<_, Option<i64>>(3)
                .and_then(|b| u64::try_from(b).ok())
                .unwrap_or(u64::MAX);
            return Ok(Recorded::Fence(before));
        }
        let region: String = row.get(1);
        let region = Region::new(&region).map_err(|_| {
            Error::backend(
                Retryability::Permanent,
                Some("quorate.row".into()),
                format!(
                    "an idempotency row in {} names no valid region",
                    self.inner.servers[server].region
                ),
            )
        })?;
        let point = self.point(&at.get::<_, String>(0))?;
        if let Some(versions) = row.get::<_, Option<String>>(4) {
            let versions =
                quorate::decode_transaction_versions(&versions, keys).ok_or_else(|| {
                    Error::backend(
                        Retryability::Permanent,
                        Some("quorate.row".into()),
                        "an idempotency row holds versions that do not fit its write",
                    )
                })?;
            return Ok(Recorded::Many(Transacted {
                point,
                region,
                versions,
            }));
        }
        Ok(Recorded::Outcome(Committed {
            version,
            point,
            region,
        }))
    }

    /// One attempt of a multi-record write: one transaction applying every
    /// record (each by the rules of a single write, a check locking its
    /// record) and recording the outcome, committed or rolled back whole.
    /// A precondition that fails is looked up first (an earlier attempt of
    /// this write may be what moved the record on), then reported as a
    /// conflict; an idempotency key already taken returns its outcome, or
    /// says a lookup fenced this attempt.
    /// One attempt of a multi-record write. `over_fence`: the stamp of
    /// this attempt when its idempotency key holds an older fence, which
    /// the transaction then lifts (otherwise nothing is lifted, and a
    /// fence refuses the idempotency row like an outcome).
    async fn transact_attempt(
        &self,
        request: &TransactRequest<'_>,
        over_fence: Option<u64>,
    ) -> Result<Transacted, Error> {
        let stamp = over_fence.unwrap_or_else(|| self.next_stamp());
        let server = self.server(request.region, ReplicaRole::Leader)?;
        let region = self.inner.servers[server].region.clone();
        let generated;
        let idem = match request.idempotency_key {
            Some(k) => k,
            None => {
                generated = IdempotencyKey::generate();
                &generated
            }
        };
        let keys: Vec<&str> = request.keys().collect();
        let binding = quorate::transaction_binding(keys.iter().copied());
        let sql = &self.inner.sql;
        // Every value is checked before anything is sent.
        for op in request.ops {
            if let TxAction::Write(mutation) = op.action {
                sql.route(op.key).0.value(mutation)?;
            }
        }
        let object = self.connection(server).await?;
        let (idem_text, region_text) = (idem.as_str(), region.as_str());
        let stamp_param = i64::try_from(stamp).unwrap_or(i64::MAX);
        let dialect = self.inner.config.dialect;
        // Every statement prepared first (cached after the first use), so
        // that the transaction goes in two flights: BEGIN (the fence lifted
        // over an older fence) and each record applied or checked, in
        // order; then the idempotency row, COMMIT and the commit point.
        let mut prepared = Vec::with_capacity(request.ops.len());
        let mut params = Vec::with_capacity(request.ops.len());
        for op in request.ops {
            let (table, row_key) = sql.route(op.key);
            let (statement, value) = match op.action {
                TxAction::Check => (&table.check, None),
                TxAction::Write(mutation) => {
                    let slot = match op.precondition {
                        Precondition::IfVersion(_) => 0,
                        Precondition::IfAbsent => 1,
                        Precondition::Any => 2,
                    };
                    (
                        &table.apply[slot][usize::from(mutation.is_delete())],
                        Some(table.value(mutation)?),
                    )
                }
            };
            prepared.push(
                object
                    .prepare_cached(statement)
                    .await
                    .map_err(|e| self.classify(e, false))?,
            );
            params.push((row_key, value, expected_version(op.precondition)?));
        }
        let unfence = match over_fence {
            Some(_) => Some(
                object
                    .prepare_cached(&sql.unfence)
                    .await
                    .map_err(|e| self.classify(e, false))?,
            ),
            None => None,
        };
        let record = object
            .prepare_cached(&sql.record_transaction)
            .await
            .map_err(|e| self.classify(e, false))?;
        // CockroachDB's commit point is read inside the transaction.
        let point_statement = match dialect {
            Dialect::Cockroach => Some(
                object
                    .prepare_cached(sql::commit_point(dialect))
                    .await
                    .map_err(|e| self.classify(e, false))?,
            ),
            Dialect::Postgres => None,
        };
        let open = InTransaction::begin(object, &self.inner.servers[server].tls);
        let c = open.client();
        let sent = prepared.iter().zip(&params).map(
            |(statement, (row_key, value, expected))| async move {
                match value {
                    None => c.query_opt(statement, &[row_key]).await,
                    Some(value) => c.query_opt(statement, &[row_key, value, expected]).await,
                }
            },
        );
        let lift: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&idem_text, &stamp_param];
        let lifting = async {
            match over_fence {
                Some(_) => match &unfence {
                    Some(unfence) => c.execute(unfence, &lift).await,
                    None => Ok(0),
                },
                None => Ok(0),
            }
        };
        // In one flight, in this order: BEGIN is on the wire before any of
        // the transaction's statements.
        let (begun, lifted, rows) = tokio::join!(
            c.batch_execute("BEGIN"),
            lifting,
            futures_util::future::join_all(sent),
        );
        // All were sent: a statement that failed (a serialization failure,
        // say) aborted the transaction, and is the answer, whatever a
        // record before it found.
        if let Err(e) = begun {
            // Statements that ran although BEGIN failed ran on their own:
            // what they applied is unknown to this attempt.
            let ran_alone =
                (over_fence.is_some() && lifted.is_ok()) || rows.iter().any(Result::is_ok);
            open.roll_back().await;
            let e = self.classify(e, ran_alone);
            return Err(if ran_alone { ambiguous(e) } else { e });
        }
        let first_flight = lifted.and_then(|_| rows.into_iter().collect::<Result<Vec<_>, _>>());
        let rows = match first_flight {
            Ok(rows) => rows,
            Err(e) => {
                open.roll_back().await;
                return Err(self.classify(e, false));
            }
        };
        let mut versions = Vec::with_capacity(request.ops.len());
        let mut encoded = String::new();
        let mut refused = None;
        for (i, (op, row)) in request.ops.iter().zip(rows).enumerate() {
            let current = match op.action {
                TxAction::Check => {
                    let current = row.and_then(|r| {
                        let deleted: Option<bool> = r.get(1);
                        version_of(r.get(0)).filter(|_| deleted != Some(true))
                    });
                    if op.precondition.admits(current) {
                        continue;
                    }
                    current
                }
                TxAction::Write(_) => {
                    if let Some(version) = row.and_then(|r| version_of(r.get(0))) {
                        quorate::push_transaction_version(&mut encoded, i, version);
                        versions.push((op.key.to_owned(), version));
                        continue;
                    }
                    // Refused: the current version, read in the same
                    // transaction, is what it met.
                    let (table, row_key) = sql.route(op.key);
                    match c.query_opt(&table.current_version, &[&row_key]).await {
                        Ok(row) => row.and_then(|r| version_of(r.get(0))),
                        Err(e) => {
                            open.roll_back().await;
                            return Err(self.classify(e, false));
                        }
                    }
                }
            };
            refused = Some((op.key, current));
            break;
        }
        if let Some((key, current)) = refused {
            open.roll_back().await;
            return match self.lookup_on(server, &binding, &keys, idem).await? {
                Recorded::Many(done) => Ok(done),
                Recorded::Outcome(_) => Err(reused(key, idem)),
                _ => Err(Error::Conflict {
                    key: key.to_owned(),
                    current,
                }),
            };
        }
        let first = versions.first().map_or(0, |(_, v): &(String, Version)| {
            i64::try_from(v.0).unwrap_or(i64::MAX)
        });
        let ttl = self.ttl_secs();
        let record_params: [&(dyn tokio_postgres::types::ToSql + Sync); 6] =
            [&idem_text, &binding, &first, &region_text, &ttl, &encoded];
        // The second flight. CockroachDB's commit timestamp is taken inside
        // the transaction, PostgreSQL's commit LSN right after the commit.
        // A COMMIT after a failed statement only rolls back.
        let (recorded, inside, committed, after) = match dialect {
            Dialect::Cockroach => {
                let inside = async {
                    match &point_statement {
                        Some(statement) => c.query_one(statement, &[]).await,
                        None => c.query_one(sql::commit_point(dialect), &[]).await,
                    }
                };
                let (recorded, inside, committed) = tokio::join!(
                    c.execute(&record, &record_params),
                    inside,
                    c.batch_execute("COMMIT"),
                );
                (recorded, Some(inside), committed, None)
            }
            Dialect::Postgres => {
                // COMMIT and the commit point in one message.
                let (recorded, done) = tokio::join!(
                    c.execute(&record, &record_params),
                    c.simple_query(PG_COMMIT_AND_POINT),
                );
                match done {
                    Ok(messages) => {
                        let point = messages
                            .iter()
                            .find_map(|m| match m {
                                tokio_postgres::SimpleQueryMessage::Row(row) => {
                                    row.get(0).map(str::to_owned)
                                }
                                _ => None,
                            })
                            .ok_or_else(|| {
                                Error::backend(
                                    Retryability::Ambiguous,
                                    None,
                                    "the commit point was not returned",
                                )
                            });
                        (recorded, None, Ok(()), Some(point))
                    }
                    Err(e) => (recorded, None, Err(e), None),
                }
            }
        };
        if let Err(e) = recorded {
            // The server refused the row: nothing committed (the COMMIT
            // behind it rolled back). Or the connection failed with the
            // COMMIT already sent: whether it committed is unknown.
            let definite = e.as_db_error().is_some();
            if committed.is_ok() && definite {
                open.ended();
            } else {
                open.roll_back().await;
            }
            if !definite {
                return Err(self.classify(e, true));
            }
            if e.code() != Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) {
                return Err(self.classify(e, false));
            }
            return match self.lookup_on(server, &binding, &keys, idem).await? {
                Recorded::Many(done) => Ok(done),
                Recorded::Outcome(_) => Err(reused(keys[0], idem)),
                // A fence older than this attempt: the attempt runs again,
                // lifting it in its own transaction.
                Recorded::Fence(before) if over_fence.is_none() && stamp >= before => {
                    Box::pin(self.transact_attempt(request, Some(stamp))).await
                }
                Recorded::Fence(before) => {
                    self.observe_stamp(before);
                    Err(fenced())
                }
                // The row that refused it is gone (expired): nothing of
                // this attempt applied; try again.
                Recorded::Nothing => Err(Error::backend(
                    Retryability::Retryable,
                    e.code().map(|c| c.code().to_owned()),
                    e,
                )),
            };
        }
        let inside = match inside {
            Some(Err(e)) => {
                // The server refused it: the transaction failed before its
                // COMMIT, which rolled it back. Otherwise (the connection
                // failed, the answer did not decode) the COMMIT behind it
                // may have committed.
                let definite = e.as_db_error().is_some();
                open.roll_back().await;
                return Err(if definite {
                    self.classify(e, false)
                } else {
                    ambiguous(self.classify(e, true))
                });
            }
            Some(Ok(row)) => Some(row),
            None => None,
        };
        if let Err(e) = committed {
            open.roll_back().await;
            // Only a serialization failure or a deadlock says the COMMIT
            // itself failed; anything else (on PostgreSQL possibly the
            // commit point's, after a commit) may follow a commit.
            use tokio_postgres::error::SqlState;
            let aborted = e.code().is_some_and(|c| {
                *c == SqlState::T_R_SERIALIZATION_FAILURE || *c == SqlState::T_R_DEADLOCK_DETECTED
            });
            return Err(if aborted {
                self.classify(e, true)
            } else {
                ambiguous(self.classify(e, true))
            });
        }
        open.ended();
        let point: String = match (inside, after) {
            (Some(row), _) => row.get(0),
            (None, Some(Ok(point))) => point,
            (None, Some(Err(e))) => return Err(e),
            (None, None) => {
                return Err(Error::backend(
                    Retryability::Ambiguous,
                    None,
                    "the commit point was not read",
                ))
            }
        };
        Ok(Transacted {
            point: self.point(&point).map_err(ambiguous)?,
            region,
            versions,
        })
    }

    /// One attempt of a closure transaction (see
    /// [`crate::SqlTransactions::execute_tx`]) through `region`'s primary or
    /// gateway: `run` in one transaction with the idempotency row, then the
    /// commit point. `Ok(Err(value))` carries what `run` returned when the
    /// row was already there (an earlier attempt committed: its outcome,
    /// with `None` for the value) — see the caller.
    pub(crate) async fn execute_attempt<T, F>(
        &self,
        region: &Region,
        idem: &IdempotencyKey,
        run: &mut F,
    ) -> Result<(Option<T>, Point), Error>
    where
        F: for<'t> FnMut(
                &'t tokio_postgres::Transaction<'t>,
            ) -> std::pin::Pin<
                Box<dyn std::future::Future<Output = Result<T, tokio_postgres::Error>> + Send + 't>,
            > + Send,
        T: Send,
    {
        let stamp = self.next_stamp();
        let server = self.server(region, ReplicaRole::Leader)?;
        let region = self.inner.servers[server].region.clone();
        let sql = &self.inner.sql;
        let mut client = self.connection(server).await?;
        let cancel =
            CancelTokenOnDrop(Some(client.cancel_token()), &self.inner.servers[server].tls);
        let tx = client
            .transaction()
            .await
            .map_err(|e| self.classify(e, false))?;
        let (idem_text, region_text) = (idem.as_str(), region.as_str());
        let stamp_param = i64::try_from(stamp).unwrap_or(i64::MAX);
        tx.execute(&sql.unfence, &[&idem_text, &stamp_param])
            .await
            .map_err(|e| self.classify(e, false))?;
        // Nothing of it commits before COMMIT: its errors are not ambiguous.
        let value = match run(&tx).await {
            Ok(v) => v,
            Err(e) => {
                let _ = tx.rollback().await;
                return Err(self.classify(e, false));
            }
        };
        let ttl = self.ttl_secs();
        let (one, none) = (1i64, "");
        let recorded = tx
            .execute(
                &sql.record_transaction,
                &[
                    &idem_text,
                    &EXECUTE_BINDING,
                    &one,
                    &region_text,
                    &ttl,
                    &none,
                ],
            )
            .await;
        if let Err(e) = recorded {
            let _ = tx.rollback().await;
            drop(cancel);
            drop(client);
            if e.code() != Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) {
                return Err(self.classify(e, false));
            }
            return match self.lookup_on(server, EXECUTE_BINDING, &[], idem).await? {
                Recorded::Many(done) => Ok((None, done.point)),
                Recorded::Outcome(_) => Err(reused(EXECUTE_BINDING, idem)),
                Recorded::Fence(before) => {
                    self.observe_stamp(before);
                    Err(fenced())
                }
                Recorded::Nothing => Err(Error::backend(
                    Retryability::Retryable,
                    e.code().map(|c| c.code().to_owned()),
                    e,
                )),
            };
        }
        let inside = match self.inner.config.dialect {
            Dialect::Cockroach => Some(
                tx.query_one(sql::commit_point(Dialect::Cockroach), &[])
                    .await
                    .map_err(|e| self.classify(e, false))?
                    .get::<_, String>(0),
            ),
            Dialect::Postgres => None,
        };
        tx.commit().await.map_err(|e| self.classify(e, true))?;
        cancel.disarm();
        let point = match inside {
            Some(p) => p,
            None => client
                .query_one(sql::commit_point(Dialect::Postgres), &[])
                .await
                .map_err(|e| ambiguous(self.classify(e, true)))?
                .get(0),
        };
        Ok((Some(value), self.point(&point).map_err(ambiguous)?))
    }

    /// Whether the closure transaction named `idem` committed: its point
    /// (`Some`), or `None` once no attempt of it can commit any more.
    pub(crate) async fn execute_lookup(
        &self,
        region: &Region,
        idem: &IdempotencyKey,
    ) -> Result<Option<Point>, Error> {
        match self
            .lookup_fenced(region, EXECUTE_BINDING, &[], idem)
            .await?
        {
            Some(Recorded::Many(done)) => Ok(Some(done.point)),
            Some(_) => Err(reused(EXECUTE_BINDING, idem)),
            None => Ok(None),
        }
    }

    /// The statement of a query of `collection`'s records (see
    /// [`Tables::select`]), and the bounds of its keys in quorate's own
    /// table (`None` for a native table).
    pub(crate) fn select_statement(
        &self,
        collection: &str,
        filter: &str,
        params: usize,
    ) -> Result<(String, Option<[String; 2]>), Error> {
        if params > usize::from(u16::MAX) - 2 {
            return Err(invalid(format!(
                "a query takes at most {} parameters, not {params}",
                usize::from(u16::MAX) - 2
            )));
        }
        Ok(match self.inner.sql.native.get(collection) {
            Some(table) => (table.tables.select(filter, params), None),
            None => (
                self.inner.sql.own.tables.select(filter, params),
                // `0` follows `/`: the keys `<collection>/...`.
                Some([format!("{collection}/"), format!("{collection}0")]),
            ),
        })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn attempts_name_their_database_table_and_server() {
        let region = |r: &str| Region::new(r).unwrap();
        let config = PgConfig::new(
            "orders",
            Dialect::Postgres,
            vec![
                Endpoint {
                    region: region("eu"),
                    role: Role::Primary,
                    connection: "host=db-eu port=5433 user=app password=s3cret dbname=orders sslmode=disable".into(),
                },
                Endpoint {
                    region: region("us"),
                    role: Role::Standby,
                    connection: "postgresql://app@db-us:5434/orders?sslmode=disable".into(),
                },
            ],
            "us",
        )
        .unwrap();
        let b = PgBackend::new(config).unwrap();
        assert_eq!(b.db_system(), "postgresql");
        assert_eq!(b.db_operation_name(quorate::DbOperation::Read), "SELECT");
        let t = b.db_target(quorate::DbOperation::Read, &region("eu"), Some("k"));
        assert_eq!(t.namespace.as_deref(), Some("orders"));
        assert_eq!(t.collection.as_deref(), Some("quorate_records"));
        assert_eq!(
            (t.server_address.as_deref(), t.server_port),
            (Some("db-eu"), Some(5433))
        );
        let t = b.db_target(quorate::DbOperation::Read, &region("us"), Some("k"));
        assert_eq!(
            (t.server_address.as_deref(), t.server_port),
            (Some("db-us"), Some(5434))
        );
        assert!(!format!("{t:?}").contains("s3cret"));
    }

    #[test]
    fn a_postgresql_commit_reads_the_commit_point_right_after_it() {
        assert_eq!(
            PG_COMMIT_AND_POINT,
            format!("COMMIT; {}", sql::commit_point(Dialect::Postgres))
        );
    }

    #[test]
    fn debug_output_never_shows_a_password() {
        for connection in [
            "host=10.0.0.1 port=26257 user=app password=hunter2-secret dbname=bank",
            "postgresql://app:hunter2-secret@10.0.0.1:26257/bank?sslmode=disable",
        ] {
            let config = PgConfig::new(
                "bank",
                Dialect::Postgres,
                vec![Endpoint {
                    region: Region::new("eu").unwrap(),
                    role: Role::Primary,
                    connection: connection.to_owned(),
                }],
                "eu",
            )
            .unwrap();
            let backend = PgBackend::new(config.clone()).unwrap();
            let client =
                quorate::Client::new(backend.clone(), quorate::ClientConfig::default()).unwrap();
            for shown in [
                format!("{:?}", config.endpoints[0]),
                format!("{config:?}"),
                format!("{backend:?}"),
                format!("{client:?}"),
                format!("{config:#?}"),
            ] {
                assert!(!shown.contains("hunter2"), "{shown}");
            }
            let endpoint = format!("{:?}", config.endpoints[0]);
            assert!(endpoint.contains("10.0.0.1"), "{endpoint}");
            assert!(endpoint.contains("password=<redacted>"), "{endpoint}");
        }
        let garbled = Endpoint {
            region: Region::new("eu").unwrap(),
            role: Role::Primary,
            connection: "password=hunter2 port=x".into(),
        };
        assert!(!format!("{garbled:?}").contains("hunter2"));
    }
}
