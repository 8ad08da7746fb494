//! [`SpannerBackend`]: quorate's backend contract over gcloud-spanner.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use gcloud_gax::grpc::{Code, Status};
use gcloud_spanner::client::{Client as Spanner, ClientConfig as SpannerClientConfig};
use gcloud_spanner::mutation::{insert, insert_or_update};
use gcloud_spanner::statement::Statement;
use gcloud_spanner::transaction_rw::ReadWriteTransaction;
use gcloud_spanner::value::CommitTimestamp;
use quorate::{
    Backend, Capabilities, Catalog, Clock, Committed, Error, Freshness, IdempotencyKey, Mutation,
    Point, Precondition, Probe, Read, ReadPlan, Region, RegionSpec, ReplicaRole, Retryability,
    Scope, SystemClock, Topology, TransactRequest, Transacted, TxAction, Version, Versioned,
    WriteRequest,
};

use crate::sql::{self, NativeTable, Tables};

/// Spanner keeps old versions this long by default: reads further in the
/// past fail.
pub const VERSION_RETENTION: Duration = Duration::from_secs(3600);

/// Everything a [`SpannerBackend`] needs.
#[derive(Clone, Debug)]
pub struct SpannerConfig {
    /// `projects/<p>/instances/<i>/databases/<d>`; also the token scope.
    pub database: String,
    /// The regions of the instance's replicas.
    pub regions: Vec<Region>,
    /// The region this process runs in.
    pub local: Region,
    /// The records table; idempotency rows go to `<table>_idempotency`.
    pub table: String,
    /// How long idempotency rows are kept (a row deletion policy).
    pub idempotency_ttl: Duration,
    /// Runs this process's read-write transactions on the database one at
    /// a time, across every backend of the process that sets it (two
    /// services in one process share the lock). The emulator supports one
    /// read-write transaction at a time and answers others with errors a
    /// real instance does not give; set this against the emulator.
    pub serialize_read_write: bool,
    /// The emulator's address, overriding `SPANNER_EMULATOR_HOST`.
    pub emulator_host: Option<String>,
    /// Where the Google Cloud credentials come from (not used against the
    /// emulator); the same credentials serve reads, writes and
    /// `create_tables`' schema changes.
    pub credentials: Credentials,
    /// Spanner's endpoint, when not `spanner.googleapis.com` (a regional
    /// or private endpoint); reads and writes go there.
    pub endpoint: Option<String>,
    /// Collections whose records live in tables of the application's own
    /// (see [`NativeTable`]); every other record lives in `table`.
    pub native: Catalog<NativeTable>,
    /// The clock a follower read's staleness is measured by (now minus
    /// the read timestamp Spanner reports): the system clock unless set.
    /// Spanner orders commits by TrueTime, not by this clock; a host whose
    /// clock is off misjudges only that age. Give the client
    /// (`ClientConfig::clock`) the same clock. The drills skew it per
    /// region this way.
    pub clock: Arc<dyn Clock>,
}

impl SpannerConfig {
    /// A configuration for `database` whose replicas are in `regions`.
    pub fn new(database: &str, regions: &[&str], local: &str) -> Result<SpannerConfig, Error> {
        sql::database_path(database)?;
        Ok(SpannerConfig {
            database: database.to_owned(),
            regions: regions
                .iter()
                .map(|r| Region::new(r))
                .collect::<Result<_, _>>()?,
            local: Region::new(local)?,
            table: "quorate_records".into(),
            idempotency_ttl: Duration::from_secs(24 * 3600),
            serialize_read_write: false,
            emulator_host: None,
            credentials: Credentials::Default,
            endpoint: None,
            native: Catalog::new(),
            clock: Arc::new(SystemClock),
        })
    }
}

/// The process-wide lock of `serialize_read_write` for `database`.
fn read_write_lock(database: &str) -> Arc<tokio::sync::Mutex<()>> {
    type Locks = std::sync::Mutex<
        std::collections::HashMap<String, std::sync::Weak<tokio::sync::Mutex<()>>>,
    >;
    static LOCKS: std::sync::OnceLock<Locks> = std::sync::OnceLock::new();
    let mut locks = LOCKS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    locks.retain(|_, l| l.strong_count() > 0);
    if let Some(lock) = locks.get(database).and_then(std::sync::Weak::upgrade) {
        return lock;
    }
    let lock = Arc::new(tokio::sync::Mutex::new(()));
    locks.insert(database.to_owned(), Arc::downgrade(&lock));
    lock
}

/// Where a [`SpannerBackend`]'s Google Cloud credentials come from.
#[derive(Clone, Debug, Default)]
pub enum Credentials {
    /// Application Default Credentials: `GOOGLE_APPLICATION_CREDENTIALS`,
    /// gcloud's own, or the metadata server of the machine.
    #[default]
    Default,
    /// A credentials file (a service account key, say).
    File(std::path::PathBuf),
    /// The application's own source of tokens (its own auth stack, a
    /// workload identity, a test double).
    Provider(Arc<dyn token_source::TokenSourceProvider>),
}

/// One provider of tokens shared by the data, read and admin clients.
#[derive(Debug)]
struct SharedTokens(Arc<dyn token_source::TokenSourceProvider>);

impl token_source::TokenSourceProvider for SharedTokens {
    fn token_source(&self) -> Arc<dyn token_source::TokenSource> {
        self.0.token_source()
    }
}

/// The token provider `credentials` name.
pub(crate) async fn token_provider(
    credentials: &Credentials,
) -> Result<Arc<dyn token_source::TokenSourceProvider>, Error> {
    let config = gcloud_auth::project::Config::default()
        .with_audience(gcloud_spanner::apiv1::conn_pool::AUDIENCE)
        .with_scopes(&gcloud_spanner::apiv1::conn_pool::SCOPES);
    match credentials {
        Credentials::Provider(p) => Ok(p.clone()),
        Credentials::Default => gcloud_auth::token::DefaultTokenSourceProvider::new(config)
            .await
            .map(|p| Arc::new(p) as Arc<dyn token_source::TokenSourceProvider>)
            .map_err(|e| {
                Error::InvalidInput(format!(
                    "Spanner credentials: {e}; set GOOGLE_APPLICATION_CREDENTIALS to a \
                     credentials file, log in with gcloud, or give Credentials::File"
                ))
            }),
        Credentials::File(path) => {
            let shown = path.display();
            let file = gcloud_auth::credentials::CredentialsFile::new_from_file(
                path.to_string_lossy().into_owned(),
            )
            .await
            .map_err(|e| Error::InvalidInput(format!("Spanner credentials file {shown}: {e}")))?;
            gcloud_auth::token::DefaultTokenSourceProvider::new_with_credentials(
                config,
                Box::new(file),
            )
            .await
            .map(|p| Arc::new(p) as Arc<dyn token_source::TokenSourceProvider>)
            .map_err(|e| Error::InvalidInput(format!("Spanner credentials file {shown}: {e}")))
        }
    }
}

fn google_cloud(
    tokens: &Arc<dyn token_source::TokenSourceProvider>,
) -> gcloud_gax::conn::Environment {
    gcloud_gax::conn::Environment::GoogleCloud(Box::new(SharedTokens(tokens.clone())))
}

/// quorate's backend for Cloud Spanner. Cheap to clone.
#[derive(Clone)]
pub struct SpannerBackend {
    inner: Arc<Inner>,
}

struct Inner {
    config: SpannerConfig,
    scope: Scope,
    topology: Topology,
    tables: Tables,
    /// The statements, built once.
    sql: Statements,
    client: Spanner,
    reads: crate::directed::Sessions,
    /// The lock of `serialize_read_write`, shared by the process's backends
    /// on the same database.
    read_write: Arc<tokio::sync::Mutex<()>>,
    /// The emulator's address when connected to one (the admin client of
    /// `create_tables` goes there too).
    emulator: Option<String>,
    /// The credentials' tokens (none against the emulator), shared by the
    /// data, read and admin clients.
    tokens: Option<Arc<dyn token_source::TokenSourceProvider>>,
}

impl std::fmt::Debug for SpannerBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpannerBackend")
            .field("database", &self.inner.config.database)
            .field("topology", &self.inner.topology)
            .finish_non_exhaustive()
    }
}

fn point_of(seconds: i64, nanos: i32) -> Point {
    let wall = u64::try_from(seconds)
        .unwrap_or(0)
        .saturating_mul(1_000_000_000)
        .saturating_add(u64::try_from(nanos).unwrap_or(0));
    Point { wall, logical: 0 }
}

/// Where a failure happened: before the commit was sent, or during it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    Before,
    Commit,
}

/// Classifies a gRPC status. ABORTED (and the emulator's refusals of a
/// second concurrent transaction) are retried; anything but a definite
/// refusal during a commit is ambiguous.
/// Classifies a read's status (nothing was being committed).
pub(crate) fn classify_read(status: Status) -> Error {
    classify(status, Phase::Before)
}

fn classify(status: Status, phase: Phase) -> Error {
    let code = status.code();
    // A database (or instance) that does not exist stays missing: retrying
    // would spin, not help.
    let missing = code == Code::NotFound && {
        let message = status.message().to_ascii_lowercase();
        message.contains("database not found") || message.contains("instance not found")
    };
    let retryability = match (code, phase) {
        _ if missing => Retryability::Permanent,
        (Code::Aborted, _) => Retryability::Retryable,
        (Code::ResourceExhausted, _) => Retryability::Retryable,
        (Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled, Phase::Before) => {
            Retryability::Retryable
        }
        (Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled, Phase::Commit) => {
            Retryability::Ambiguous
        }
        (Code::Internal | Code::Unknown, Phase::Commit) => Retryability::Ambiguous,
        (Code::Internal | Code::Unknown, Phase::Before) => Retryability::Retryable,
        // The emulator's answers to a second concurrent read-write
        // transaction on one session ("Transaction not found", "Invalid
        // transaction ID"): the transaction did not commit.
        (Code::NotFound | Code::FailedPrecondition, Phase::Before) => Retryability::Retryable,
        // A commit resent after its answer was lost finds its transaction
        // gone: whether the first send applied is unknown.
        (Code::NotFound | Code::FailedPrecondition, Phase::Commit) => Retryability::Ambiguous,
        _ => Retryability::Permanent,
    };
    Error::backend(retryability, Some(format!("{code:?}")), status)
}

/// How many times `create_tables` sends a schema change the database
/// refused because of a concurrent one (about 15 s of pauses in all).
const DDL_ATTEMPTS: u32 = 40;

/// Whether a schema change was refused only because another schema change
/// or a read-write transaction was in progress (the emulator's answer).
fn schema_change_refused(status: &Status) -> bool {
    status.code() == Code::FailedPrecondition
        && status
            .message()
            .to_ascii_lowercase()
            .contains("concurrent schema change")
}

fn client_error(e: gcloud_spanner::client::Error, phase: Phase) -> Error {
    match e {
        gcloud_spanner::client::Error::GRPC(status) => classify(status, phase),
        other => Error::backend(Retryability::Retryable, None, other.to_string()),
    }
}

fn row_error(e: gcloud_spanner::row::Error) -> Error {
    Error::backend(
        Retryability::Permanent,
        Some("quorate.row".into()),
        e.to_string(),
    )
}

impl SpannerBackend {
    /// Connects (sessions are created lazily by the client library).
    /// `SPANNER_EMULATOR_HOST` selects the emulator; otherwise Application
    /// Default Credentials are used.
    ///
    /// ```no_run
    /// use quorate_spanner::{Client, ClientConfig, SpannerBackend, SpannerConfig};
    ///
    /// # async fn demo() -> Result<(), quorate_spanner::Error> {
    /// // A multi-region instance (nam3): the client runs in us-east4.
    /// let config = SpannerConfig::new(
    ///     "projects/acme/instances/orders/databases/orders",
    ///     &["us-east4", "us-east1", "us-central1"],
    ///     "us-east4",
    /// )?;
    /// let backend = SpannerBackend::connect(config).await?;
    /// backend.create_tables().await?;
    /// let client = Client::new(backend, ClientConfig::default())?;
    /// # drop(client);
    /// # Ok(()) }
    /// ```
    pub async fn connect(config: SpannerConfig) -> Result<SpannerBackend, Error> {
        sql::database_path(&config.database)?;
        let tables = Tables::new(&config.table)?;
        if config.idempotency_ttl < Duration::from_secs(600) {
            return Err(Error::InvalidInput(
                "idempotency_ttl must be at least 10 minutes".into(),
            ));
        }
        let mut specs: Vec<RegionSpec> = Vec::new();
        for r in &config.regions {
            if specs.iter().any(|s| &s.name == r) {
                return Err(Error::InvalidInput(format!(
                    "region {r} is configured twice"
                )));
            }
            specs.push(RegionSpec {
                name: r.clone(),
                endpoints: vec![format!("spanner-{r}")],
            });
        }
        let topology = Topology::new(specs, &config.local)?;
        let scope = Scope::new(&sql::scope_name(&config.database))?;
        let emulator = config
            .emulator_host
            .clone()
            .or_else(|| std::env::var("SPANNER_EMULATOR_HOST").ok());
        let tokens = match &emulator {
            Some(_) => None,
            None => Some(token_provider(&config.credentials).await?),
        };
        let mut client_config = SpannerClientConfig {
            environment: match (&emulator, &tokens) {
                (Some(host), _) => gcloud_gax::conn::Environment::Emulator(host.clone()),
                (None, Some(t)) => google_cloud(t),
                (None, None) => unreachable!("tokens exist without an emulator"),
            },
            ..SpannerClientConfig::default()
        };
        if let Some(endpoint) = &config.endpoint {
            client_config.endpoint = endpoint.clone();
        }
        // Reads go through the library's low-level client, on sessions of
        // their own, so that they can carry directed-read options.
        let conn = gcloud_spanner::apiv1::conn_pool::ConnectionManager::new(
            client_config.channel_config.num_channels,
            &client_config.environment,
            &client_config.endpoint,
            &Default::default(),
        )
        .await
        .map_err(|e| Error::backend(Retryability::Retryable, None, e.to_string()))?;
        let reads = crate::directed::Sessions::new(conn, config.database.clone());
        let mut native = Catalog::new();
        let mut names = vec![tables.records.to_ascii_lowercase()];
        for (collection, table) in config.native.iter() {
            // Spanner's names ignore case.
            let name = table.table.to_ascii_lowercase();
            if names.contains(&name) {
                return Err(Error::InvalidInput(format!(
                    "table {} holds two collections (or quorate's records): one table, one collection",
                    table.table
                )));
            }
            names.push(name);
            native.insert(collection, TableSql::new(Tables::native(table, &tables)))?;
        }
        let client = Spanner::new(&config.database, client_config)
            .await
            .map_err(|e| client_error(e, Phase::Before))?;
        let read_write = read_write_lock(&config.database);
        Ok(SpannerBackend {
            inner: Arc::new(Inner {
                config,
                scope,
                topology,
                sql: Statements {
                    lookup: tables.lookup(),
                    own: TableSql::new(tables.clone()),
                    native,
                },
                tables,
                client,
                reads,
                read_write,
                emulator,
                tokens,
            }),
        })
    }

    /// The client library's client.
    pub fn spanner(&self) -> &Spanner {
        &self.inner.client
    }

    /// Now by the configured clock, in nanoseconds since the epoch.
    pub(crate) fn now_nanos(&self) -> u64 {
        self.inner.config.clock.now_nanos()
    }

    /// The directed reads' sessions.
    pub(crate) fn reads(&self) -> &crate::directed::Sessions {
        &self.inner.reads
    }

    /// The tables.
    pub fn tables(&self) -> &Tables {
        &self.inner.tables
    }

    /// Deletes the idle sessions the directed reads hold and returns how
    /// many were deleted; later reads create new ones. Reads keep at most
    /// 64 idle sessions, delete a session whose read was abandoned
    /// mid-call, and delete the idle ones in the background when the last
    /// clone of the backend is dropped inside a runtime; this deletes them
    /// at a moment of the caller's choosing, for example at shutdown.
    /// (The library's own session pool, used by writes, is closed by
    /// gcloud-spanner.)
    pub async fn close_read_sessions(&self) -> usize {
        self.inner.reads.close().await
    }

    /// The statement of a query of `collection`'s records (see
    /// [`Tables::select`]) and whether it takes the collection's prefix
    /// (quorate's own table).
    pub(crate) fn select_statement(&self, collection: &str, filter: &str) -> (String, bool) {
        match self.inner.sql.native.get(collection) {
            Some(table) => (table.tables.select(filter), false),
            None => (self.inner.sql.own.tables.select(filter), true),
        }
    }

    /// Creates both tables if they do not exist, through the same emulator
    /// or with the same Application Default Credentials as the backend;
    /// creates each native table that does not exist and adds the
    /// bookkeeping columns to one that does (see [`NativeTable::create`]);
    /// then checks them ([`SpannerBackend::check_schema`]). A schema change
    /// the emulator refuses because a read-write transaction is open (as
    /// when another service is writing) is sent again after a pause, for up
    /// to about 15 seconds.
    pub async fn create_tables(&self) -> Result<(), Error> {
        use gcloud_googleapis::spanner::admin::database::v1::UpdateDatabaseDdlRequest;
        use gcloud_spanner::admin::AdminClientConfig;
        let config = AdminClientConfig {
            environment: match (&self.inner.emulator, &self.inner.tokens) {
                (Some(host), _) => gcloud_gax::conn::Environment::Emulator(host.clone()),
                // The data clients' credentials.
                (None, Some(t)) => google_cloud(t),
                (None, None) => {
                    return Err(Error::InvalidInput(
                        "no Spanner credentials and no emulator".into(),
                    ))
                }
            },
            ..AdminClientConfig::default()
        };
        let admin = gcloud_spanner::admin::client::Client::new(config)
            .await
            .map_err(|e| Error::backend(Retryability::Retryable, None, e.to_string()))?;
        let statements: Vec<String> = self
            .inner
            .tables
            .create()
            .into_iter()
            .chain(
                self.inner
                    .config
                    .native
                    .iter()
                    .flat_map(|(_, t)| t.create()),
            )
            .collect();
        // The emulator refuses a schema change while any read-write
        // transaction is open on the database ("a concurrent schema change
        // operation or read-write transaction is already in progress"), as
        // when another service's writes run: such a refusal is waited out,
        // for a bounded time, rather than handed to the caller.
        let mut pause = Duration::from_millis(20);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let outcome = match admin
                .database()
                .update_database_ddl(
                    UpdateDatabaseDdlRequest {
                        database: self.inner.config.database.clone(),
                        statements: statements.clone(),
                        ..Default::default()
                    },
                    None,
                )
                .await
            {
                Ok(mut op) => op.wait(None).await.map(|_| ()),
                Err(status) => Err(status),
            };
            match outcome {
                Ok(()) => break,
                Err(status) if attempt < DDL_ATTEMPTS && schema_change_refused(&status) => {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(500));
                }
                Err(status) => return Err(classify(status, Phase::Before)),
            }
        }
        self.check_schema().await
    }

    /// Checks that every native table has its columns, of types quorate
    /// can use, and its key column as its whole primary key: an
    /// [`Error::InvalidInput`] naming each table and what is wrong with it
    /// otherwise.
    pub async fn check_schema(&self) -> Result<(), Error> {
        let mut problems = Vec::new();
        for (collection, table) in self.inner.config.native.iter() {
            let columns = self
                .strings(
                    "SELECT COLUMN_NAME, SPANNER_TYPE FROM INFORMATION_SCHEMA.COLUMNS \
                     WHERE TABLE_SCHEMA = '' AND TABLE_NAME = @t",
                    &table.table,
                )
                .await?;
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
                    .find(|(name, _)| name.eq_ignore_ascii_case(column))
                {
                    None => problems.push(format!("{} has no column {column}", table.table)),
                    Some((_, ty)) if !types.iter().any(|t| ty.split('(').next() == Some(t)) => {
                        problems.push(format!(
                            "column {column} of {} is {ty}, not {}",
                            table.table,
                            types.join(" or ")
                        ))
                    }
                    Some(_) => {}
                }
            }
            let key = self
                .strings(
                    "SELECT COLUMN_NAME, INDEX_TYPE FROM INFORMATION_SCHEMA.INDEX_COLUMNS \
                     WHERE TABLE_SCHEMA = '' AND TABLE_NAME = @t AND INDEX_TYPE = 'PRIMARY_KEY'",
                    &table.table,
                )
                .await?;
            if key.len() != 1 || !key[0].0.eq_ignore_ascii_case(&table.key) {
                problems.push(format!(
                    "the primary key of {} is not its column {} alone",
                    table.table, table.key
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

    /// The rows of a two-string-column query about the table `@t`.
    async fn strings(&self, sql: &str, table: &str) -> Result<Vec<(String, String)>, Error> {
        let mut tx = self
            .inner
            .client
            .single()
            .await
            .map_err(|e| client_error(e, Phase::Before))?;
        let mut stmt = Statement::new(sql);
        stmt.add_param("t", &table);
        let mut rows = tx
            .query(stmt)
            .await
            .map_err(|s| classify(s, Phase::Before))?;
        let mut out = Vec::new();
        while let Some(row) = rows.next().await.map_err(|s| classify(s, Phase::Before))? {
            out.push((
                row.column::<String>(0).map_err(row_error)?,
                row.column::<String>(1).map_err(row_error)?,
            ));
        }
        Ok(out)
    }

    /// The idempotency row of `idem` within `tx`: its outcome, or whether a
    /// fence holds its place; a row of another record than `key` is refused.
    async fn recorded(
        &self,
        tx: &mut ReadWriteTransaction,
        key: &str,
        idem: &IdempotencyKey,
    ) -> Result<Recorded, Error> {
        self.recorded_of(tx, key, &[key], idem).await
    }

    /// [`SpannerBackend::recorded`] for the write bound to `key` (a
    /// record's key, or a multi-record write's binding) whose records are
    /// `keys`.
    async fn recorded_of(
        &self,
        tx: &mut ReadWriteTransaction,
        key: &str,
        keys: &[&str],
        idem: &IdempotencyKey,
    ) -> Result<Recorded, Error> {
        let mut stmt = Statement::new(&self.inner.sql.lookup);
        stmt.add_param("idem", &idem.as_str());
        let mut rows = tx
            .query(stmt)
            .await
            .map_err(|s| classify(s, Phase::Before))?;
        let Some(row) = rows.next().await.map_err(|s| classify(s, Phase::Before))? else {
            return Ok(Recorded::Nothing);
        };
        let record: Option<String> = row.column(4).map_err(row_error)?;
        // Fences written by earlier releases name no record.
        if record.is_some_and(|r| r != key) {
            return Err(Error::IdempotencyKeyReused {
                key: key.to_owned(),
                idempotency_key: idem.clone(),
            });
        }
        let fenced: Option<bool> = row.column(3).map_err(row_error)?;
        if fenced == Some(true) {
            return Ok(Recorded::Fence);
        }
        let version: i64 = row.column(0).map_err(row_error)?;
        let region: String = row.column(1).map_err(row_error)?;
        let at: time::OffsetDateTime = row.column(2).map_err(row_error)?;
        let versions: Option<String> = row.column(5).map_err(row_error)?;
        let bad_row = |what: &str| {
            Error::backend(
                Retryability::Permanent,
                Some("quorate.row".into()),
                what.to_owned(),
            )
        };
        let point = Point {
            wall: u64::try_from(at.unix_timestamp_nanos()).unwrap_or(0),
            logical: 0,
        };
        let region = Region::new(&region)?;
        if let Some(versions) = versions {
            let versions = quorate::decode_transaction_versions(&versions, keys)
                .ok_or_else(|| bad_row("versions that do not fit their write"))?;
            return Ok(Recorded::Many(Transacted {
                point,
                region,
                versions,
            }));
        }
        Ok(Recorded::Outcome(Committed {
            version: Version(u64::try_from(version).map_err(|_| bad_row("negative version"))?),
            point,
            region,
        }))
    }

    /// The newest version of `key` (a tombstone's included) and whether the
    /// record is deleted, read in `tx`.
    async fn current_of(
        &self,
        tx: &mut ReadWriteTransaction,
        key: &str,
    ) -> Result<(Option<Version>, bool), Error> {
        let (table, row_key) = self.inner.sql.route(key);
        let mut stmt = Statement::new(&table.current_version);
        stmt.add_param("key", &row_key);
        let row = async {
            let mut rows = tx.query(stmt).await?;
            rows.next().await
        }
        .await
        .map_err(|s| classify(s, Phase::Before))?;
        match row {
            Some(row) => {
                let v: i64 = row.column(0).map_err(row_error)?;
                let d: Option<bool> = row.column(1).map_err(row_error)?;
                Ok((
                    Some(Version(u64::try_from(v).unwrap_or(0))),
                    d.unwrap_or(false),
                ))
            }
            None => Ok((None, false)),
        }
    }

    /// Looks `idem` up for the write bound to `binding` whose records are
    /// `keys`, fencing it when it holds nothing: the outcome found, or
    /// `None` once no attempt can commit any more.
    async fn lookup_fenced(
        &self,
        binding: &str,
        keys: &[&str],
        idem: &IdempotencyKey,
    ) -> Result<Option<Recorded>, Error> {
        let _serial = if self.inner.config.serialize_read_write {
            Some(self.inner.read_write.lock().await)
        } else {
            None
        };
        let mut tx = self
            .inner
            .client
            .begin_read_write_transaction()
            .await
            .map_err(|e| client_error(e, Phase::Before))?;
        match self.recorded_of(&mut tx, binding, keys, idem).await {
            Ok(done @ (Recorded::Outcome(_) | Recorded::Many(_))) => {
                self.rollback(tx).await;
                Ok(Some(done))
            }
            Ok(Recorded::Fence) => {
                self.rollback(tx).await;
                Ok(None)
            }
            Ok(Recorded::Nothing) => {
                // Fence the key: an attempt still in flight inserts its row
                // and now fails, so "not applied" stays true.
                let expires = time::OffsetDateTime::now_utc()
                    + time::Duration::try_from(self.inner.config.idempotency_ttl)
                        .unwrap_or(time::Duration::days(1));
                tx.buffer_write(vec![insert(
                    &self.inner.tables.idempotency,
                    &["idem_key", "record_key", "fenced", "expires_at"],
                    &[&idem.as_str(), &binding, &true, &expires],
                )]);
                match tx.end::<(), Status>(Ok(()), None).await {
                    Ok(_) => Ok(None),
                    Err(s) => Err(classify(s, Phase::Before)),
                }
            }
            Err(e) => {
                self.rollback(tx).await;
                Err(e)
            }
        }
    }

    /// One attempt of a multi-record write: one read-write transaction that
    /// reads the idempotency row and every record, checks every
    /// precondition, and buffers every written record's next version with
    /// the outcome; committed whole or not at all.
    async fn transact_attempt(&self, request: &TransactRequest<'_>) -> Result<Transacted, Error> {
        // Every key and value is checked before anything is sent.
        for op in request.ops {
            let (table, row_key) = self.inner.sql.route(op.key);
            sql::check_key(row_key)?;
            if let TxAction::Write(mutation) = op.action {
                table.record(row_key, 1, mutation)?;
            }
        }
        let _serial = if self.inner.config.serialize_read_write {
            Some(self.inner.read_write.lock().await)
        } else {
            None
        };
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
        let idempotency = &self.inner.tables.idempotency;
        let mut tx = self
            .inner
            .client
            .begin_read_write_transaction()
            .await
            .map_err(|e| client_error(e, Phase::Before))?;
        let fenced = match self.recorded_of(&mut tx, &binding, &keys, idem).await {
            Ok(Recorded::Many(done)) => {
                self.rollback(tx).await;
                return Ok(done);
            }
            Ok(Recorded::Outcome(_)) => {
                self.rollback(tx).await;
                return Err(reused(keys[0], idem));
            }
            Ok(Recorded::Fence) => true,
            Ok(Recorded::Nothing) => false,
            Err(e) => {
                self.rollback(tx).await;
                return Err(e);
            }
        };
        let mut mutations = Vec::with_capacity(request.ops.len() + 1);
        let mut versions = Vec::with_capacity(request.ops.len());
        let mut encoded = String::new();
        for (i, op) in request.ops.iter().enumerate() {
            let (last, deleted) = match self.current_of(&mut tx, op.key).await {
                Ok(c) => c,
                Err(e) => {
                    self.rollback(tx).await;
                    return Err(e);
                }
            };
            let current = last.filter(|_| !deleted);
            if !op.precondition.admits(current) {
                self.rollback(tx).await;
                return Err(Error::Conflict {
                    key: op.key.to_owned(),
                    current,
                });
            }
            let TxAction::Write(mutation) = op.action else {
                continue;
            };
            let version = last.map_or(Version::FIRST, |v| v.next());
            let v = i64::try_from(version.0)
                .map_err(|_| Error::InvalidInput("version out of range".into()))?;
            let (table, row_key) = self.inner.sql.route(op.key);
            mutations.push(table.record(row_key, v, mutation)?);
            quorate::push_transaction_version(&mut encoded, i, version);
            versions.push((op.key.to_owned(), version));
        }
        let first = versions.first().map_or(1, |(_, v): &(String, Version)| {
            i64::try_from(v.0).unwrap_or(i64::MAX)
        });
        let expires = time::OffsetDateTime::now_utc()
            + time::Duration::try_from(self.inner.config.idempotency_ttl)
                .unwrap_or(time::Duration::days(1));
        let columns = [
            "idem_key",
            "version",
            "region",
            "committed_at",
            "record_key",
            "expires_at",
            "fenced",
            "versions",
        ];
        let outcome = {
            let region = request.region.as_str();
            let values: [&dyn gcloud_spanner::statement::ToKind; 8] = [
                &idem.as_str(),
                &first,
                &region,
                &CommitTimestamp::new(),
                &binding,
                &expires,
                &false,
                &encoded,
            ];
            // As for a single write: an attempt that read no row inserts one
            // (a fence made meanwhile makes this commit fail); one that read
            // the fence replaces it.
            if fenced {
                insert_or_update(idempotency, &columns, &values)
            } else {
                insert(idempotency, &columns, &values)
            }
        };
        mutations.push(outcome);
        tx.buffer_write(mutations);
        match tx.end::<(), Status>(Ok(()), None).await {
            Ok((result, ())) => {
                let point = result
                    .timestamp
                    .map(|t| point_of(t.seconds, t.nanos))
                    .ok_or_else(|| {
                        Error::backend(
                            Retryability::Ambiguous,
                            None,
                            "the commit returned no timestamp",
                        )
                    })?;
                Ok(Transacted {
                    point,
                    region: request.region.clone(),
                    versions,
                })
            }
            Err(s) if s.code() == Code::AlreadyExists => Err(self.already_exists(s)),
            Err(s) => Err(classify(s, Phase::Commit)),
        }
    }

    /// A commit refused as `AlreadyExists`: the idempotency row appeared
    /// after the attempt read it (another attempt recorded an outcome, or a
    /// lookup fenced this one), which a later attempt resolves; or a
    /// unique index of the application's table refused a record, which no
    /// retry changes. Either way nothing applied.
    fn already_exists(&self, s: Status) -> Error {
        let retryability = if s.message().contains(&self.inner.tables.idempotency) {
            Retryability::Retryable
        } else {
            Retryability::Permanent
        };
        Error::backend(retryability, Some("AlreadyExists".into()), s)
    }

    async fn rollback(&self, mut tx: ReadWriteTransaction) {
        let _ = tx
            .end::<(), Status>(
                Err(Status::new(Code::Cancelled, "quorate: not applied")),
                None,
            )
            .await;
    }
}

/// The statements on one records table.
struct TableSql {
    tables: Tables,
    read: String,
    current_version: String,
}

impl TableSql {
    fn new(tables: Tables) -> TableSql {
        TableSql {
            read: tables.read(),
            current_version: tables.current_version(),
            tables,
        }
    }

    /// A record's columns for its write's mutation: key, version, value,
    /// written_at, deleted. A native table's value is its document's text,
    /// checked before anything is sent (a tombstone's: JSON `null`).
    fn record(
        &self,
        key: &str,
        version: i64,
        mutation: Mutation<'_>,
    ) -> Result<gcloud_googleapis::spanner::v1::Mutation, Error> {
        let delete = mutation.is_delete();
        let columns = self.tables.record_columns();
        let at = CommitTimestamp::new();
        Ok(if self.tables.json() {
            let text = match mutation.value() {
                Some(v) => document_text(v)?,
                None => "null".to_owned(),
            };
            insert_or_update(
                &self.tables.records,
                &columns,
                &[&key, &version, &text, &at, &delete],
            )
        } else {
            // A delete keeps the row as a tombstone with an empty value.
            let value: Vec<u8> = mutation.value().map_or_else(Vec::new, |v| v.to_vec());
            insert_or_update(
                &self.tables.records,
                &columns,
                &[&key, &version, &value, &at, &delete],
            )
        })
    }

    /// A value read from the table: a document in canonical form.
    fn decode(&self, value: Vec<u8>) -> Result<Bytes, Error> {
        if !self.tables.json() {
            return Ok(Bytes::from(value));
        }
        quorate::json::canonical(&value).map_err(|_| {
            Error::backend(
                Retryability::Permanent,
                Some("quorate.row".into()),
                format!("a document in {} is not JSON", self.tables.records),
            )
        })
    }
}

/// A value for a native table's `JSON` column: a JSON document's text.
fn document_text(value: &[u8]) -> Result<String, Error> {
    let text = std::str::from_utf8(value).map_err(|_| {
        Error::InvalidInput(
            "a native table stores JSON documents, and this value is not UTF-8".into(),
        )
    })?;
    let doc: serde_json::Value = serde_json::from_str(text).map_err(|e| {
        Error::InvalidInput(format!(
            "a native table stores JSON documents, and this value is not one: {e}"
        ))
    })?;
    if depth(&doc) > MAX_JSON_DEPTH {
        return Err(Error::InvalidInput(format!(
            "a JSON document nested deeper than Spanner's {MAX_JSON_DEPTH} levels"
        )));
    }
    Ok(text.to_owned())
}

/// Spanner's limit on the nesting of a JSON document.
const MAX_JSON_DEPTH: usize = 80;

fn depth(v: &serde_json::Value) -> usize {
    match v {
        serde_json::Value::Array(a) => 1 + a.iter().map(depth).max().unwrap_or(0),
        serde_json::Value::Object(o) => 1 + o.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

struct Statements {
    /// quorate's own records table.
    own: TableSql,
    /// Collections mapped onto native tables.
    native: Catalog<TableSql>,
    lookup: String,
}

impl Statements {
    /// The table holding `key` and the key within it.
    fn route<'k>(&self, key: &'k str) -> (&TableSql, &'k str) {
        self.native.route(key).unwrap_or((&self.own, key))
    }
}

enum Recorded {
    Nothing,
    Fence,
    Outcome(Committed),
    /// A multi-record write's outcome.
    Many(Transacted),
}

fn reused(key: &str, idem: &IdempotencyKey) -> Error {
    Error::IdempotencyKeyReused {
        key: key.to_owned(),
        idempotency_key: idem.clone(),
    }
}

impl Backend for SpannerBackend {
    fn scope(&self) -> &Scope {
        &self.inner.scope
    }

    fn db_system(&self) -> &'static str {
        "gcp.spanner"
    }

    fn db_operation_name(&self, op: quorate::DbOperation) -> &'static str {
        match op {
            quorate::DbOperation::Write | quorate::DbOperation::Transact => "Commit",
            _ => "ExecuteSql",
        }
    }

    fn db_target(
        &self,
        op: quorate::DbOperation,
        _region: &Region,
        key: Option<&str>,
    ) -> quorate::DbTarget {
        let mut target = quorate::DbTarget::new().namespace(self.inner.config.database.as_str());
        match (op, key) {
            (quorate::DbOperation::Lookup, _) => {
                target = target.collection(self.inner.tables.idempotency.as_str());
            }
            (_, Some(key)) => {
                target = target.collection(self.inner.sql.route(key).0.tables.records.as_str());
            }
            _ => {}
        }
        match &self.inner.emulator {
            Some(host) => match host.rsplit_once(':') {
                Some((h, p)) => target.server(h, p.parse().ok()),
                None => target.server(host.as_str(), None),
            },
            None => target.server(
                self.inner
                    .config
                    .endpoint
                    .clone()
                    .unwrap_or_else(|| "spanner.googleapis.com".into()),
                Some(443),
            ),
        }
    }

    fn topology(&self) -> &Topology {
        &self.inner.topology
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            strong_reads_anywhere: true,
            writes_anywhere: true,
            follower_reads: true,
            max_staleness: VERSION_RETENTION,
            // TrueTime bounds the clock error; commit wait absorbs it.
            max_clock_offset: None,
        }
    }

    async fn read(&self, plan: &ReadPlan<'_>) -> Result<Read<Bytes>, Error> {
        if self.inner.topology.index_of(plan.region).is_none() {
            return Err(Error::Topology(quorate::TopologyError::UnknownRegion(
                plan.region.clone(),
            )));
        }
        let (table, row_key) = self.inner.sql.route(plan.key);
        sql::check_key(row_key)?;
        let bound = crate::directed::bound(plan.role, plan.policy, plan.floor.point);
        let read = self
            .inner
            .reads
            .read(&table.read, row_key, bound, plan.region)
            .await
            .map_err(|s| classify(s, Phase::Before))?;
        let (value, deleted) = match read.row {
            Some((version, value, deleted)) => {
                let version = Version(u64::try_from(version).map_err(|_| {
                    Error::backend(
                        Retryability::Permanent,
                        Some("quorate.row".into()),
                        "negative version",
                    )
                })?);
                if deleted {
                    (None, Some(version))
                } else {
                    (
                        Some(Versioned {
                            version,
                            value: table.decode(value)?,
                        }),
                        None,
                    )
                }
            }
            None => (None, None),
        };
        let staleness = match plan.role {
            ReplicaRole::Leader => Some(Duration::ZERO),
            _ => read
                .read_at
                .map(|p| Duration::from_nanos(self.now_nanos().saturating_sub(p.wall))),
        };
        Ok(Read {
            value,
            deleted,
            freshness: Freshness {
                region: plan.region.clone(),
                role: plan.role,
                point: read.read_at,
                staleness_bound: staleness,
            },
        })
    }

    async fn write(&self, request: &WriteRequest<'_>) -> Result<Committed, Error> {
        let (table, row_key) = self.inner.sql.route(request.key);
        sql::check_key(row_key)?;
        // Checked before anything is sent.
        table.record(row_key, 1, request.mutation)?;
        let _serial = if self.inner.config.serialize_read_write {
            Some(self.inner.read_write.lock().await)
        } else {
            None
        };
        let generated;
        let idem = match request.idempotency_key {
            Some(k) => k,
            None => {
                generated = IdempotencyKey::generate();
                &generated
            }
        };
        let idempotency = &self.inner.tables.idempotency;
        let mut tx = self
            .inner
            .client
            .begin_read_write_transaction()
            .await
            .map_err(|e| client_error(e, Phase::Before))?;
        let recorded = match self.recorded(&mut tx, request.key, idem).await {
            Ok(r) => r,
            Err(e) => {
                self.rollback(tx).await;
                return Err(e);
            }
        };
        let fenced = match recorded {
            Recorded::Outcome(done) => {
                self.rollback(tx).await;
                return Ok(done);
            }
            Recorded::Many(_) => {
                self.rollback(tx).await;
                return Err(reused(request.key, idem));
            }
            Recorded::Fence => true,
            Recorded::Nothing => false,
        };
        let mut stmt = Statement::new(&table.current_version);
        stmt.add_param("key", &row_key);
        let current = async {
            let mut rows = tx.query(stmt).await?;
            match rows.next().await? {
                Some(row) => Ok::<_, Status>(Some(row)),
                None => Ok(None),
            }
        }
        .await;
        // The newest version (a tombstone's included) and whether the
        // record is live: a deleted record is absent to preconditions, and
        // its next version continues from the tombstone.
        let (last, deleted) = match current {
            Ok(Some(row)) => match (row.column::<i64>(0), row.column::<Option<bool>>(1)) {
                (Ok(v), Ok(d)) => (
                    Some(Version(u64::try_from(v).unwrap_or(0))),
                    d.unwrap_or(false),
                ),
                (Err(e), _) | (_, Err(e)) => {
                    self.rollback(tx).await;
                    return Err(row_error(e));
                }
            },
            Ok(None) => (None, false),
            Err(s) => {
                self.rollback(tx).await;
                return Err(classify(s, Phase::Before));
            }
        };
        let current = last.filter(|_| !deleted);
        let holds = match request.precondition {
            Precondition::IfVersion(v) => current == Some(v),
            Precondition::IfAbsent => current.is_none(),
            Precondition::Any => true,
        };
        if !holds {
            self.rollback(tx).await;
            return Err(Error::Conflict {
                key: request.key.to_owned(),
                current,
            });
        }
        let version = last.map_or(Version::FIRST, |v| v.next());
        let v = i64::try_from(version.0)
            .map_err(|_| Error::InvalidInput("version out of range".into()))?;
        let expires = time::OffsetDateTime::now_utc()
            + time::Duration::try_from(self.inner.config.idempotency_ttl)
                .unwrap_or(time::Duration::days(1));
        let mutations = {
            let record = table.record(row_key, v, request.mutation)?;
            let columns = [
                "idem_key",
                "version",
                "region",
                "committed_at",
                "record_key",
                "expires_at",
                "fenced",
            ];
            let region = request.region.as_str();
            let values: [&dyn gcloud_spanner::statement::ToKind; 7] = [
                &idem.as_str(),
                &v,
                &region,
                &CommitTimestamp::new(),
                &request.key,
                &expires,
                &false,
            ];
            // An attempt that read no row inserts one: if a lookup fenced the
            // key meanwhile, this commit fails. One that read the fence
            // replaces it.
            let outcome = if fenced {
                insert_or_update(idempotency, &columns, &values)
            } else {
                insert(idempotency, &columns, &values)
            };
            vec![record, outcome]
        };
        tx.buffer_write(mutations);
        match tx.end::<(), Status>(Ok(()), None).await {
            Ok((result, ())) => {
                let point = result
                    .timestamp
                    .map(|t| point_of(t.seconds, t.nanos))
                    .ok_or_else(|| {
                        Error::backend(
                            Retryability::Ambiguous,
                            None,
                            "the commit returned no timestamp",
                        )
                    })?;
                Ok(Committed {
                    version,
                    point,
                    region: request.region.clone(),
                })
            }
            // The idempotency row appeared after this attempt read it:
            // another attempt recorded an outcome, or a lookup fenced this
            // one. Nothing of this attempt applied.
            Err(s) if s.code() == Code::AlreadyExists => Err(self.already_exists(s)),
            Err(s) => Err(classify(s, Phase::Commit)),
        }
    }

    async fn lookup(
        &self,
        _region: &Region,
        key: &str,
        idem: &IdempotencyKey,
    ) -> Result<Option<Committed>, Error> {
        match self.lookup_fenced(key, &[key], idem).await? {
            Some(Recorded::Outcome(done)) => Ok(Some(done)),
            Some(_) => Err(reused(key, idem)),
            None => Ok(None),
        }
    }

    async fn transact(&self, request: &TransactRequest<'_>) -> Result<Transacted, Error> {
        Box::pin(self.transact_attempt(request)).await
    }

    async fn lookup_transaction(
        &self,
        _region: &Region,
        keys: &[&str],
        idem: &IdempotencyKey,
    ) -> Result<Option<Transacted>, Error> {
        let binding = quorate::transaction_binding(keys.iter().copied());
        match self.lookup_fenced(&binding, keys, idem).await? {
            Some(Recorded::Many(done)) => Ok(Some(done)),
            Some(_) => Err(reused(keys.first().copied().unwrap_or(""), idem)),
            None => Ok(None),
        }
    }

    async fn probe(&self, region: &Region) -> Result<Probe, Error> {
        // A strong read of the empty key, which no record has (keys are
        // never empty), directed to the region's replicas like every read:
        // it measures that region, and the read timestamp its replicas
        // chose is the server's time.
        let read = self
            .inner
            .reads
            .read(
                &self.inner.sql.own.read,
                "",
                crate::directed::Bound::Strong,
                region,
            )
            .await
            .map_err(|s| classify(s, Phase::Before))?;
        let at = read.read_at.ok_or_else(|| {
            Error::backend(Retryability::Retryable, None, "no read timestamp returned")
        })?;
        Ok(Probe {
            region: region.clone(),
            server_time_nanos: at.wall,
            replica_lag: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backends_on_one_database_share_the_read_write_lock() {
        let a = read_write_lock("projects/p/instances/i/databases/one");
        let b = read_write_lock("projects/p/instances/i/databases/one");
        let c = read_write_lock("projects/p/instances/i/databases/two");
        assert!(Arc::ptr_eq(&a, &b));
        assert!(!Arc::ptr_eq(&a, &c));
        drop((a, b));
        let again = read_write_lock("projects/p/instances/i/databases/one");
        assert_eq!(
            Arc::strong_count(&again),
            1,
            "a lock no backend holds is made anew"
        );
    }

    fn class(code: Code, phase: Phase) -> Retryability {
        classify(Status::new(code, "test"), phase).retryability()
    }

    #[test]
    fn statuses_are_classified_by_whether_the_commit_was_under_way() {
        use Retryability::*;
        assert_eq!(class(Code::Aborted, Phase::Before), Retryable);
        assert_eq!(class(Code::Aborted, Phase::Commit), Retryable);
        assert_eq!(class(Code::DeadlineExceeded, Phase::Before), Retryable);
        assert_eq!(class(Code::DeadlineExceeded, Phase::Commit), Ambiguous);
        assert_eq!(class(Code::Unavailable, Phase::Commit), Ambiguous);
        assert_eq!(class(Code::Unknown, Phase::Commit), Ambiguous);
        // The emulator's refusal of a concurrent transaction; the same code
        // for a resent commit whose transaction is gone.
        assert_eq!(class(Code::NotFound, Phase::Before), Retryable);
        assert_eq!(class(Code::NotFound, Phase::Commit), Ambiguous);
        assert_eq!(class(Code::InvalidArgument, Phase::Before), Permanent);
        // A missing database is not the emulator's refusal of a concurrent
        // transaction (also NOT_FOUND): retrying would spin forever.
        let missing = |message: &str, phase| {
            classify(Status::new(Code::NotFound, message), phase).retryability()
        };
        assert_eq!(
            missing(
                "Database not found: projects/p/instances/i/databases/nope",
                Phase::Before
            ),
            Permanent
        );
        assert_eq!(
            missing(
                "Instance not found: projects/p/instances/nope",
                Phase::Commit
            ),
            Permanent
        );
        assert_eq!(missing("Transaction not found", Phase::Before), Retryable);
        assert_eq!(class(Code::PermissionDenied, Phase::Commit), Permanent);
        let e = classify(Status::new(Code::Aborted, "x"), Phase::Commit);
        assert!(matches!(e, Error::Backend { code: Some(c), .. } if c == "Aborted"));
    }

    #[test]
    fn commit_timestamps_become_points() {
        let p = point_of(1_700_000_000, 123_456_789);
        assert_eq!(p.wall, 1_700_000_000_123_456_789);
        assert_eq!(point_of(-5, 0).wall, 0, "before the epoch clamps");
    }
}
