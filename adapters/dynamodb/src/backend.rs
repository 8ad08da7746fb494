//! [`DynamoBackend`]: quorate's backend contract over aws-sdk-dynamodb, one
//! SDK client per region.

use std::collections::hash_map::DefaultHasher;
use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, CancellationReason,
    CreateReplicationGroupMemberAction, KeySchemaElement, KeyType, MultiRegionConsistency, Put,
    ReplicaStatus, ReplicationGroupUpdate, ReturnValuesOnConditionCheckFailure,
    ScalarAttributeType, StreamSpecification, StreamViewType, TableStatus, TimeToLiveSpecification,
    TransactWriteItem,
};
use bytes::Bytes;
use quorate::{
    Backend, Capabilities, Catalog, Clock, Committed, Error, Freshness, IdempotencyKey, Point,
    Precondition, Probe, Read, ReadPlan, Region, RegionSpec, ReplicaRole, Retryability, Scope,
    SystemClock, Topology, TransactRequest, Transacted, TxAction, Version, Versioned, WriteRequest,
};

use crate::item::{self, n, s, Fields, Item, Names};

mod strong;
use crate::native::{KeyKind, Layout, NativeTable};

/// How a global table replicates between its regions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Multi-region eventual consistency (MREC): every region accepts
    /// writes, replication is asynchronous and concurrent writes are
    /// resolved by last-writer-wins. Strong reads and writes go to the key's
    /// home region so that conditions are checked in one place.
    Eventual,
    /// Multi-region strong consistency (MRSC): `ConsistentRead` and
    /// conditional writes are linearizable through any region.
    Strong,
}

/// Where a key's home region is: strong reads and, under
/// [`Mode::Eventual`], writes go there.
#[derive(Clone)]
pub enum Home {
    /// Every key lives in this region.
    Region(Region),
    /// Keys are spread over the regions by a stable hash of the key.
    Hashed,
    /// The application decides (for example from a prefix naming the user's
    /// region). Must return one of the backend's regions.
    By(Arc<dyn Fn(&str) -> Region + Send + Sync>),
}

impl std::fmt::Debug for Home {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Home::Region(r) => f.debug_tuple("Region").field(r).finish(),
            Home::Hashed => f.write_str("Hashed"),
            Home::By(_) => f.write_str("By(..)"),
        }
    }
}

/// The same client with the SDK's retries switched off (one attempt per
/// request), sharing its HTTP client, endpoint and credentials.
pub(crate) fn without_retries(client: &aws_sdk_dynamodb::Client) -> aws_sdk_dynamodb::Client {
    aws_sdk_dynamodb::Client::from_conf(
        client
            .config()
            .to_builder()
            .retry_config(aws_sdk_dynamodb::config::retry::RetryConfig::disabled())
            .build(),
    )
}

/// One region's table, reached through its own SDK client.
#[derive(Clone, Debug)]
pub struct RegionClient {
    /// The region.
    pub region: Region,
    /// A client configured for that region (its endpoint and credentials).
    /// The backend uses a copy with the SDK's retries switched off: quorate
    /// retries, and resolves ambiguous outcomes, itself.
    pub client: aws_sdk_dynamodb::Client,
}

/// Everything a [`DynamoBackend`] needs.
#[derive(Clone, Debug)]
pub struct DynamoConfig {
    /// The scope session tokens carry (name the global table).
    pub scope: Scope,
    /// The records table; idempotency items go to `<table>-idempotency`.
    pub table: String,
    /// The regions of the global table.
    pub regions: Vec<RegionClient>,
    /// The region this process runs in.
    pub local: Region,
    /// Where each key's home region is.
    pub home: Home,
    /// The replication mode when `DescribeTable` does not report one
    /// (tables without `MultiRegionConsistency`, DynamoDB Local). A mode
    /// the table reports always wins.
    pub mode: Mode,
    /// How long idempotency items are kept (DynamoDB's TTL attribute
    /// `expires_at`). Must exceed the longest time a caller may retry a
    /// logical write; DynamoDB's own `ClientRequestToken` covers 10 minutes.
    pub idempotency_ttl: Duration,
    /// Collections whose records live in tables of the application's own
    /// (see [`NativeTable`]); every other record lives in `table`.
    pub native: Catalog<NativeTable>,
    /// The URL each region's client sends its requests to, where known:
    /// [`DynamoConfig::from_settings`] and [`DynamoConfig::from_env`] take
    /// it from the SDK configuration they load (AWS's regional endpoint
    /// when none is set). Attempt spans name it as `server.address` and
    /// `server.port`; a region without an entry is traced without them
    /// (an SDK client does not reveal its endpoint).
    pub endpoints: BTreeMap<Region, String>,
    /// The clock this process stamps writes with (`written_at`: a
    /// replica's item is at most `now - written_at` old, and quorate's
    /// [`Replicator`](crate::replicator::Replicator) orders concurrent
    /// writes by it, last writer wins; a real global table orders them by
    /// its own timestamps) and measures a replica's staleness by: the
    /// system clock unless set. Give the client (`ClientConfig::clock`)
    /// the same clock. A host whose clock is off stamps its writes off by
    /// as much; the drills skew it per region this way.
    pub clock: Arc<dyn Clock>,
}

impl DynamoConfig {
    /// A configuration with keys homed in the first region, eventual mode
    /// unless the table says otherwise, and idempotency items kept a day.
    pub fn new(
        scope: &str,
        table: &str,
        regions: Vec<RegionClient>,
        local: &str,
    ) -> Result<DynamoConfig, Error> {
        let home = regions
            .first()
            .map(|r| r.region.clone())
            .ok_or(Error::Topology(quorate::TopologyError::NoRegions))?;
        Ok(DynamoConfig {
            scope: Scope::new(scope)?,
            table: table.to_owned(),
            regions,
            local: Region::new(local)?,
            home: Home::Region(home),
            mode: Mode::Eventual,
            idempotency_ttl: Duration::from_secs(24 * 3600),
            native: Catalog::new(),
            endpoints: BTreeMap::new(),
            clock: Arc::new(SystemClock),
        })
    }
}

/// quorate's backend for DynamoDB global tables. Cheap to clone.
#[derive(Clone, Debug)]
pub struct DynamoBackend {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: DynamoConfig,
    topology: Topology,
    idempotency_table: String,
    /// quorate's own records table.
    own: Layout,
    /// Collections mapped onto native tables.
    native: Catalog<Layout>,
    /// The idempotency table's attribute names.
    idem_names: Names,
    mode: Mode,
    /// The last attempt start handed out (nanoseconds), so that attempt
    /// starts and fences are strictly increasing in this process.
    last_start: AtomicU64,
}

impl DynamoBackend {
    /// Validates the configuration and builds the backend without talking
    /// to DynamoDB; [`DynamoBackend::connect`] also checks the tables and
    /// reads their mode.
    ///
    /// ```
    /// use quorate_dynamodb::aws_sdk_dynamodb::{config, Client as Sdk, Config};
    /// use quorate_dynamodb::{DynamoBackend, DynamoConfig, Region, RegionClient};
    ///
    /// # fn main() -> Result<(), quorate_dynamodb::Error> {
    /// let region = |name: &str, aws: &str| -> Result<RegionClient, quorate_dynamodb::Error> {
    ///     let sdk = Config::builder()
    ///         .behavior_version(config::BehaviorVersion::latest())
    ///         .region(config::Region::new(aws.to_owned()))
    ///         .build();
    ///     Ok(RegionClient { region: Region::new(name)?, client: Sdk::from_conf(sdk) })
    /// };
    /// let regions = vec![region("eu", "eu-west-1")?, region("us", "us-east-1")?];
    /// let backend = DynamoBackend::new(DynamoConfig::new("orders-global", "orders", regions, "us")?)?;
    /// assert_eq!(backend.table(), "orders");
    /// # Ok(()) }
    /// ```
    pub fn new(config: DynamoConfig) -> Result<DynamoBackend, Error> {
        Self::build(config, None)
    }

    /// Builds the backend and checks, in every region, that both tables
    /// exist (a typed error names a missing one), taking the replication
    /// mode from `DescribeTable` when the table reports it.
    ///
    /// ```no_run
    /// use quorate_dynamodb::{Client, ClientConfig, DynamoBackend, DynamoConfig, Region, RegionClient};
    ///
    /// # async fn demo() -> Result<(), quorate_dynamodb::Error> {
    /// let mut regions = Vec::new();
    /// for (name, aws) in [("eu", "eu-west-1"), ("us", "us-east-1")] {
    ///     let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
    ///         .region(aws_config::Region::new(aws))
    ///         .load()
    ///         .await;
    ///     regions.push(RegionClient {
    ///         region: Region::new(name)?,
    ///         client: quorate_dynamodb::aws_sdk_dynamodb::Client::new(&sdk),
    ///     });
    /// }
    /// let backend = DynamoBackend::connect(DynamoConfig::new("orders-global", "orders", regions, "us")?).await?;
    /// let client = Client::new(backend, ClientConfig::default())?;
    /// # drop(client);
    /// # Ok(()) }
    /// ```
    pub async fn connect(config: DynamoConfig) -> Result<DynamoBackend, Error> {
        let backend = Self::build(config, None)?;
        let mut reported = None;
        let native = backend.inner.config.native.iter().map(|(_, t)| &t.table);
        let tables: Vec<&String> = [
            &backend.inner.config.table,
            &backend.inner.idempotency_table,
        ]
        .into_iter()
        .chain(native)
        .collect();
        for rc in &backend.inner.config.regions {
            for &table in &tables {
                let described = rc
                    .client
                    .describe_table()
                    .table_name(table)
                    .send()
                    .await
                    .map_err(|e| backend.missing_table(e, table, &rc.region))?;
                if let Some((_, native)) = backend
                    .inner
                    .config
                    .native
                    .iter()
                    .find(|(_, t)| &t.table == table)
                {
                    if let Some(t) = described.table() {
                        key_schema_fits(native, t, &rc.region)?;
                    }
                }
                // Every table in one mode: MRSC writes keep a write's
                // evidence across the records and idempotency tables, which
                // only holds if both are linearizable.
                let mode = match described.table().and_then(|t| t.multi_region_consistency()) {
                    Some(MultiRegionConsistency::Strong) => Some(Mode::Strong),
                    Some(MultiRegionConsistency::Eventual) => Some(Mode::Eventual),
                    _ => None,
                };
                if let Some(mode) = mode {
                    match &reported {
                        Some((first, other)) if *first != mode => {
                            return Err(Error::InvalidInput(format!(
                                "table {table} is {mode:?} but table {other} is {first:?}: \
                                 quorate's tables and the native tables of one backend \
                                 must share one multi-Region consistency mode"
                            )));
                        }
                        Some(_) => {}
                        None => reported = Some((mode, (*table).clone())),
                    }
                }
            }
        }
        match reported.map(|(mode, _)| mode) {
            Some(mode) if mode != backend.inner.mode => {
                Self::build(backend.inner.config.clone(), Some(mode))
            }
            _ => Ok(backend),
        }
    }

    fn build(mut config: DynamoConfig, mode: Option<Mode>) -> Result<DynamoBackend, Error> {
        item::table_name(&config.table)?;
        // quorate retries (and resolves ambiguity) itself: the SDK's own
        // retries under it would multiply the requests of one operation
        // and hide ambiguous outcomes, whatever the application's client
        // was configured with.
        for rc in &mut config.regions {
            rc.client = without_retries(&rc.client);
        }
        let idempotency_table = format!("{}-idempotency", config.table);
        item::table_name(&idempotency_table)?;
        if config.idempotency_ttl < Duration::from_secs(600) {
            return Err(Error::InvalidInput(
                "idempotency_ttl must be at least 10 minutes (DynamoDB's token window)".into(),
            ));
        }
        let mut specs: Vec<RegionSpec> = Vec::new();
        for rc in &config.regions {
            if specs.iter().any(|s| s.name == rc.region) {
                return Err(Error::InvalidInput(format!(
                    "region {} is configured twice",
                    rc.region
                )));
            }
            specs.push(RegionSpec {
                name: rc.region.clone(),
                endpoints: vec![format!("dynamodb-{}", rc.region)],
            });
        }
        let topology = Topology::new(specs, &config.local)?;
        if let Home::Region(r) = &config.home {
            if topology.index_of(r).is_none() {
                return Err(Error::Topology(quorate::TopologyError::UnknownRegion(
                    r.clone(),
                )));
            }
        }
        let mode = mode.unwrap_or(config.mode);
        let mut native = Catalog::new();
        let mut names = vec![config.table.as_str(), idempotency_table.as_str()];
        for (collection, table) in config.native.iter() {
            if names.contains(&table.table.as_str()) {
                return Err(Error::InvalidInput(format!(
                    "table {} holds two collections (or quorate's own items): one table, one collection",
                    table.table
                )));
            }
            names.push(&table.table);
            native.insert(collection, Layout::native(table))?;
        }
        Ok(DynamoBackend {
            inner: Arc::new(Inner {
                own: Layout::own(&config.table),
                native,
                idem_names: Names::own(),
                config,
                topology,
                idempotency_table,
                mode,
                last_start: AtomicU64::new(0),
            }),
        })
    }

    /// The replication mode in use.
    pub fn mode(&self) -> Mode {
        self.inner.mode
    }

    /// The records table.
    pub fn table(&self) -> &str {
        &self.inner.config.table
    }

    /// The idempotency table.
    pub fn idempotency_table(&self) -> &str {
        &self.inner.idempotency_table
    }

    /// The native tables of the backend's collections.
    pub fn native_tables(&self) -> impl Iterator<Item = &NativeTable> + '_ {
        self.inner.config.native.iter().map(|(_, t)| t)
    }

    /// The SDK client of `region`.
    pub fn client(&self, region: &Region) -> Result<&aws_sdk_dynamodb::Client, Error> {
        self.inner
            .config
            .regions
            .iter()
            .find(|r| &r.region == region)
            .map(|r| &r.client)
            .ok_or_else(|| Error::Topology(quorate::TopologyError::UnknownRegion(region.clone())))
    }

    /// Creates every table the backend uses — quorate's records and
    /// idempotency tables (on-demand billing, `pk` as the partition key)
    /// and each native table with its key schema — as a global table with
    /// a replica in every configured region, each with a
    /// `NEW_AND_OLD_IMAGES` stream, and enables TTL on the idempotency
    /// table's `expires_at` (not under [`Mode::Strong`]: MRSC tables refuse
    /// TTL).
    ///
    /// The table is created in the first region and a replica added in
    /// each other region's AWS region (the SDK client's); under
    /// [`Mode::Strong`] all replicas are added in one call with
    /// `MultiRegionConsistency = STRONG`. Each step waits until the table
    /// is `ACTIVE`. A server without global tables (DynamoDB Local, which
    /// answers "Nothing to update") gets the table in each region instead,
    /// to be joined by the local replicator (feature `testing`). What
    /// exists is left as it is: the call can be repeated.
    pub async fn create_tables(&self) -> Result<(), Error> {
        let regions = &self.inner.config.regions;
        let Some(first) = regions.first() else {
            return Err(Error::Topology(quorate::TopologyError::NoRegions));
        };
        let mut tables = vec![
            Creating::Own(&self.inner.config.table),
            Creating::Own(&self.inner.idempotency_table),
        ];
        tables.extend(
            self.inner
                .config
                .native
                .iter()
                .map(|(_, t)| Creating::Native(t)),
        );
        let mut global = true;
        for table in &tables {
            create_in(&first.client, table).await?;
            wait_active(&first.client, table.name(), None).await?;
            if global && regions.len() > 1 {
                global = self.add_replicas(table.name()).await?;
            }
            if !global {
                for rc in &regions[1..] {
                    create_in(&rc.client, table).await?;
                }
            }
        }
        if self.inner.mode == Mode::Strong {
            return Ok(());
        }
        for rc in regions.iter().take(if global { 1 } else { regions.len() }) {
            let ttl = rc
                .client
                .update_time_to_live()
                .table_name(&self.inner.idempotency_table)
                .time_to_live_specification(
                    TimeToLiveSpecification::builder()
                        .enabled(true)
                        .attribute_name(item::EXPIRES_AT)
                        .build()
                        .map_err(|e| Error::InvalidInput(e.to_string()))?,
                )
                .send()
                .await;
            match ttl {
                Ok(_) => {}
                // Already enabled.
                Err(e) if e.code() == Some("ValidationException") => {}
                Err(e) => return Err(classify(e, Op::Read)),
            }
        }
        Ok(())
    }

    /// Adds a replica of `table` (which exists in the first region) in
    /// every other region that has none; `false` when the server has no
    /// global tables.
    async fn add_replicas(&self, table: &str) -> Result<bool, Error> {
        let regions = &self.inner.config.regions;
        let first = &regions[0].client;
        let aws_region = |rc: &RegionClient| {
            rc.client
                .config()
                .region()
                .map(|r| r.to_string())
                .ok_or_else(|| {
                    Error::InvalidInput(format!(
                        "the SDK client of region {} has no AWS region: global-table replicas \
                         are named by it",
                        rc.region
                    ))
                })
        };
        let home = aws_region(&regions[0])?;
        let described = first
            .describe_table()
            .table_name(table)
            .send()
            .await
            .map_err(|e| classify(e, Op::Read))?;
        let existing: Vec<&str> = described
            .table()
            .map(|t| t.replicas())
            .unwrap_or_default()
            .iter()
            .filter_map(|r| r.region_name())
            .collect();
        let mut missing = Vec::new();
        for rc in &regions[1..] {
            let r = aws_region(rc)?;
            if r != home && !existing.contains(&r.as_str()) && !missing.contains(&r) {
                missing.push(r);
            }
        }
        // MRSC takes its replicas in one call; MREC one replica per call.
        let batches: Vec<Vec<String>> = if self.inner.mode == Mode::Strong {
            vec![missing]
                .into_iter()
                .filter(|m| !m.is_empty())
                .collect()
        } else {
            missing.into_iter().map(|m| vec![m]).collect()
        };
        for batch in batches {
            let mut update = first.update_table().table_name(table);
            for r in &batch {
                update = update.replica_updates(
                    ReplicationGroupUpdate::builder()
                        .create(
                            CreateReplicationGroupMemberAction::builder()
                                .region_name(r)
                                .build()
                                .map_err(|e| Error::InvalidInput(e.to_string()))?,
                        )
                        .build(),
                );
            }
            if self.inner.mode == Mode::Strong {
                update = update.multi_region_consistency(MultiRegionConsistency::Strong);
            }
            match update.send().await {
                Ok(_) => {}
                Err(e)
                    if e.code() == Some("ValidationException")
                        && e.message().is_some_and(|m| m.contains("Nothing to update")) =>
                {
                    return Ok(false)
                }
                Err(e) => return Err(classify(e, Op::Read)),
            }
            for r in &batch {
                wait_active(first, table, Some(r)).await?;
            }
        }
        Ok(true)
    }

    fn missing_table<E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static>(
        &self,
        e: SdkError<E, aws_sdk_dynamodb::config::http::HttpResponse>,
        table: &str,
        region: &Region,
    ) -> Error {
        if e.code() == Some("ResourceNotFoundException") {
            Error::InvalidInput(format!("table {table} does not exist in region {region}"))
        } else {
            classify(e, Op::Read)
        }
    }

    /// Now by the configured clock, in nanoseconds since the epoch.
    fn now_nanos(&self) -> u64 {
        self.inner.config.clock.now_nanos()
    }

    /// Nanoseconds since the epoch, strictly increasing within this process.
    fn next_start(&self) -> u64 {
        let now = self.now_nanos();
        let mut last = self.inner.last_start.load(Ordering::Relaxed);
        loop {
            let next = now.max(last + 1);
            match self.inner.last_start.compare_exchange_weak(
                last,
                next,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return next,
                Err(seen) => last = seen,
            }
        }
    }

    /// An idempotency item's fields.
    fn idem_fields<'a>(&'a self, item: &'a Item) -> Fields<'a> {
        Fields {
            table: &self.inner.idempotency_table,
            item,
            names: &self.inner.idem_names,
        }
    }

    /// The key whose home region is `key`'s: on a native table with a sort
    /// key, its partition's (`<collection>/<partition>`), so that a
    /// partition has one home and can be queried there; else the key.
    fn home_key<'k>(&self, key: &'k str) -> &'k str {
        match self.inner.native.route(key) {
            Some((layout, row)) if layout.sorted() => match row.split_once('/') {
                Some((partition, _)) => &key[..key.len() - row.len() + partition.len()],
                None => key,
            },
            _ => key,
        }
    }

    /// The table holding `key` and the key within it.
    fn route<'k>(&self, key: &'k str) -> (&Layout, &'k str) {
        self.inner
            .native
            .route(key)
            .unwrap_or((&self.inner.own, key))
    }

    fn expires_at(&self) -> u64 {
        Duration::from_nanos(self.now_nanos())
            .saturating_add(self.inner.config.idempotency_ttl)
            .as_secs()
    }

    /// The current version of `key` in `region`, read consistently.
    /// What the item of `key` is now, read consistently in the client's
    /// region: absent, a live record's version, or a tombstone's.
    async fn current_base(
        &self,
        client: &aws_sdk_dynamodb::Client,
        key: &str,
    ) -> Result<Base, Error> {
        let (layout, row) = self.route(key);
        let out = client
            .get_item()
            .table_name(&layout.table)
            .set_key(Some(layout.key(row)?))
            .consistent_read(true)
            .projection_expression("#k, #v, #d")
            .expression_attribute_names("#k", layout.partition_name())
            .expression_attribute_names("#v", &layout.names.version)
            .expression_attribute_names("#d", &layout.names.deleted)
            .send()
            .await
            .map_err(|e| classify(e, Op::Read))?;
        match out.item() {
            Some(i) => Base::of(&layout.fields(i)).map_err(Error::from),
            None => Ok(Base::Absent),
        }
    }

    /// What `idem` holds, read consistently in `region`: an outcome, a
    /// fence (with the first attempt start it lets through), or nothing;
    /// an idempotency item of another record than `key` is refused.
    async fn recorded(
        &self,
        client: &aws_sdk_dynamodb::Client,
        key: &str,
        idem: &IdempotencyKey,
    ) -> Result<Recorded, Error> {
        self.recorded_of(client, key, &[key], idem).await
    }

    /// [`DynamoBackend::recorded`] for the write bound to `key` (a record's
    /// key, or a multi-record write's binding) whose records are `keys`.
    async fn recorded_of(
        &self,
        client: &aws_sdk_dynamodb::Client,
        key: &str,
        keys: &[&str],
        idem: &IdempotencyKey,
    ) -> Result<Recorded, Error> {
        let found = self.idem_item(client, idem).await?;
        self.recorded_in(found.as_ref(), key, keys, idem)
    }

    /// The idempotency item of `idem`, read consistently.
    async fn idem_item(
        &self,
        client: &aws_sdk_dynamodb::Client,
        idem: &IdempotencyKey,
    ) -> Result<Option<Item>, Error> {
        let out = client
            .get_item()
            .table_name(&self.inner.idempotency_table)
            .key(item::PK, s(idem.as_str()))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| classify(e, Op::Read))?;
        Ok(out.item().cloned())
    }

    /// What the idempotency item `found` of `idem` records for the write
    /// bound to `key` whose records are `keys` (see
    /// [`DynamoBackend::recorded_of`]).
    fn recorded_in(
        &self,
        found: Option<&Item>,
        key: &str,
        keys: &[&str],
        idem: &IdempotencyKey,
    ) -> Result<Recorded, Error> {
        let Some(found) = found else {
            return Ok(Recorded::Nothing);
        };
        let f = self.idem_fields(found);
        // Fences written by earlier releases name no record.
        if f.has(item::RECORD_KEY) && f.string(item::RECORD_KEY)? != key {
            return Err(Error::IdempotencyKeyReused {
                key: key.to_owned(),
                idempotency_key: idem.clone(),
            });
        }
        if f.has(item::FENCED_BEFORE) {
            return Ok(Recorded::Fence(f.number(item::FENCED_BEFORE)?));
        }
        if !f.has(item::WRITER) {
            // An MRSC write's claim of the key: its outcome is in the
            // record's item.
            return Ok(Recorded::Nothing);
        }
        let region =
            Region::new(f.string(item::WRITER)?).map_err(|_| item::ItemError::OutOfRange {
                table: self.inner.idempotency_table.clone(),
                attribute: item::WRITER.into(),
            })?;
        let point = Point {
            wall: f.number(item::WRITTEN_AT)?,
            logical: 0,
        };
        if f.has(item::VERSIONS) {
            let versions = quorate::decode_transaction_versions(f.string(item::VERSIONS)?, keys)
                .ok_or_else(|| item::ItemError::OutOfRange {
                    table: self.inner.idempotency_table.clone(),
                    attribute: item::VERSIONS.into(),
                })?;
            return Ok(Recorded::Many(Transacted {
                point,
                region,
                versions,
            }));
        }
        Ok(Recorded::Outcome(Committed {
            version: f.version()?,
            point,
            region,
        }))
    }

    /// Looks `idem` up in `region` for the write bound to `binding` whose
    /// records are `keys`, fencing it when it holds nothing: the outcome
    /// found, or `None` once no attempt started until now can record one.
    async fn lookup_fenced(
        &self,
        region: &Region,
        binding: &str,
        keys: &[&str],
        idem: &IdempotencyKey,
    ) -> Result<Option<Recorded>, Error> {
        let client = self.client(region)?;
        let done = |r: Recorded| match r {
            r @ (Recorded::Outcome(_) | Recorded::Many(_)) => Some(r),
            _ => None,
        };
        if let Some(r) = done(self.recorded_of(client, binding, keys, idem).await?) {
            return Ok(Some(r));
        }
        // Nothing recorded yet. Fence the key so that no attempt started
        // until now can still commit (one may be in flight): from here on
        // the answer "not applied" stays true, and later attempts go ahead.
        let fence = client
            .put_item()
            .table_name(&self.inner.idempotency_table)
            .item(item::PK, s(idem.as_str()))
            .item(item::FENCED_BEFORE, n(self.next_start()))
            .item(item::RECORD_KEY, s(binding))
            .item(item::EXPIRES_AT, n(self.expires_at()))
            .condition_expression("attribute_not_exists(pk) OR attribute_exists(#f)")
            .expression_attribute_names("#f", item::FENCED_BEFORE)
            .send()
            .await;
        match fence {
            Ok(_) => Ok(None),
            // An attempt recorded its outcome meanwhile.
            Err(e) if e.code() == Some("ConditionalCheckFailedException") => {
                Ok(done(self.recorded_of(client, binding, keys, idem).await?))
            }
            Err(e) => Err(classify(e, Op::Read)),
        }
    }

    /// A multi-record write: one `TransactWriteItems` per attempt, a put
    /// (or a tombstone) per written record conditioned as a single write's,
    /// a condition check per record only checked, and the idempotency item
    /// with every written record's version. A refused condition is handled
    /// as a single write's: the outcome already recorded, a later start for
    /// a clock behind an item's last write, another go on what an `Any` or
    /// `IfAbsent` record really is, else a conflict naming the record.
    async fn transact_attempts(&self, request: &TransactRequest<'_>) -> Result<Transacted, Error> {
        if self.inner.mode == Mode::Strong {
            return Err(Error::Unsupported(
                "multi-record writes on a DynamoDB table with multi-Region strong consistency: \
                 such tables refuse TransactWriteItems; write the records one by one, \
                 or keep the collections that change together on an MREC table"
                    .into(),
            ));
        }
        if request.ops.len() >= MAX_TRANSACT_ITEMS {
            return Err(Error::InvalidInput(format!(
                "a multi-record write on DynamoDB names at most {} records, not {}: \
                 TransactWriteItems takes {MAX_TRANSACT_ITEMS} items, one of them the idempotency record",
                MAX_TRANSACT_ITEMS - 1,
                request.ops.len()
            )));
        }
        let mut bytes = 0;
        // Every record's attributes, checked before anything is sent (a
        // check's: its key).
        let mut records = Vec::with_capacity(request.ops.len());
        for op in request.ops {
            let (layout, row) = self.route(op.key);
            let record = match op.action {
                TxAction::Write(m) => layout.record(row, m.value())?,
                TxAction::Check => layout.key(row)?,
            };
            bytes += crate::native::item_size(&record);
            records.push(record);
            if let Home::By(f) = &self.inner.config.home {
                let home = f(self.home_key(op.key));
                if self.inner.topology.index_of(&home).is_none() {
                    return Err(Error::Topology(quorate::TopologyError::UnknownRegion(home)));
                }
            }
        }
        if bytes > quorate::MAX_TRANSACTION_BYTES {
            return Err(Error::InvalidInput(format!(
                "a multi-record write of about {bytes} bytes exceeds DynamoDB's 4 MB transaction limit"
            )));
        }
        let client = self.client(request.region)?;
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
        // What each written record is conditioned on, as for a single write.
        let mut bases = Vec::with_capacity(request.ops.len());
        for op in request.ops {
            bases.push(match (op.action, op.precondition) {
                (TxAction::Write(_), Precondition::Any) => {
                    self.current_base(client, op.key).await?
                }
                (_, Precondition::IfVersion(v)) => Base::Live(v),
                _ => Base::Absent,
            });
        }
        let build_err = |e: aws_sdk_dynamodb::error::BuildError| Error::InvalidInput(e.to_string());
        loop {
            let start = self.next_start();
            let mut items = Vec::with_capacity(request.ops.len() + 1);
            // The op each item is for.
            let mut of_item = Vec::with_capacity(request.ops.len());
            let mut versions = Vec::new();
            let mut encoded = String::new();
            for (i, op) in request.ops.iter().enumerate() {
                let layout = self.route(op.key).0;
                match op.action {
                    TxAction::Write(m) => {
                        let put = record_put(
                            layout,
                            records[i].clone(),
                            m.is_delete(),
                            bases[i],
                            start,
                            request.region,
                        )
                        .build()
                        .map_err(build_err)?;
                        items.push(TransactWriteItem::builder().put(put).build());
                        let version = bases[i].last().map_or(Version::FIRST, |v| v.next());
                        quorate::push_transaction_version(&mut encoded, i, version);
                        versions.push((op.key.to_owned(), version));
                    }
                    TxAction::Check => {
                        match record_check(layout, records[i].clone(), op.precondition) {
                            Some(check) => {
                                let check = check.build().map_err(build_err)?;
                                items.push(
                                    TransactWriteItem::builder().condition_check(check).build(),
                                );
                            }
                            None => continue,
                        }
                    }
                }
                of_item.push(i);
            }
            let first = versions.first().map_or(Version::FIRST, |(_, v)| *v);
            let outcome = Put::builder()
                .table_name(&self.inner.idempotency_table)
                .item(item::PK, s(idem.as_str()))
                .item(item::RECORD_KEY, s(&binding))
                .item(item::VERSION, n(first.0))
                .item(item::VERSIONS, s(&encoded))
                .item(item::WRITTEN_AT, n(start))
                .item(item::WRITER, s(request.region.as_str()))
                .item(item::EXPIRES_AT, n(self.expires_at()))
                .condition_expression("attribute_not_exists(pk) OR #f < :start")
                .expression_attribute_names("#f", item::FENCED_BEFORE)
                .expression_attribute_values(":start", n(start))
                .build()
                .map_err(build_err)?;
            items.push(TransactWriteItem::builder().put(outcome).build());
            let sent = client
                .transact_write_items()
                .set_transact_items(Some(items))
                .client_request_token(request_token(idem, start))
                .send()
                .await;
            let e = match sent {
                Ok(_) => {
                    return Ok(Transacted {
                        point: Point {
                            wall: start,
                            logical: 0,
                        },
                        region: request.region.clone(),
                        versions,
                    })
                }
                Err(e) => e,
            };
            if e.code() != Some("TransactionCanceledException") {
                return Err(classify(e, Op::Write));
            }
            let reasons: Vec<CancellationReason> = e
                .as_service_error()
                .and_then(|s| match s {
                    aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError::TransactionCanceledException(t) => {
                        Some(t.cancellation_reasons().to_vec())
                    }
                    _ => None,
                })
                .unwrap_or_default();
            let code = |j: usize| reasons.get(j).and_then(|r| r.code()).unwrap_or("None");
            let idem_item = of_item.len();
            if code(idem_item) == "ConditionalCheckFailed" {
                return match self.recorded_of(client, &binding, &keys, idem).await? {
                    Recorded::Many(done) => Ok(done),
                    Recorded::Outcome(_) => Err(reused(keys[0], idem)),
                    Recorded::Fence(before) => {
                        self.observe_start(before);
                        Err(fenced())
                    }
                    Recorded::Nothing => Err(Error::backend(
                        Retryability::Retryable,
                        Some("TransactionCanceledException".into()),
                        e,
                    )),
                };
            }
            let Some(j) = (0..idem_item).find(|&j| code(j) == "ConditionalCheckFailed") else {
                let retryable = (0..=idem_item).all(|j| {
                    matches!(
                        code(j),
                        "None"
                            | "TransactionConflict"
                            | "ThrottlingError"
                            | "ProvisionedThroughputExceeded"
                            | "RequestLimitExceeded"
                    )
                });
                return Err(Error::backend(
                    if retryable {
                        Retryability::Retryable
                    } else {
                        Retryability::Permanent
                    },
                    Some("TransactionCanceledException".into()),
                    e,
                ));
            };
            // An earlier attempt of this logical write may be what moved the
            // record on.
            if let Recorded::Many(done) = self.recorded_of(client, &binding, &keys, idem).await? {
                return Ok(done);
            }
            let i = of_item[j];
            let op = &request.ops[i];
            let layout = self.route(op.key).0;
            let old = reasons[j].item().map(|it| layout.fields(it));
            let found = match &old {
                Some(f) => Base::of(f)?,
                None => Base::Absent,
            };
            let current = found.live();
            let again = match (op.action, op.precondition) {
                (TxAction::Check, _) => false,
                // The state matched: this clock is behind the item's last
                // write time. Go again, later.
                _ if found == bases[i] => {
                    if let Some(w) = old.as_ref().map(|f| f.written_at()).transpose()?.flatten() {
                        self.observe_start(w);
                    }
                    true
                }
                (_, Precondition::Any) => true,
                (_, Precondition::IfAbsent) => current.is_none(),
                (_, Precondition::IfVersion(_)) => false,
            };
            if !again || tokio::time::Instant::now() >= request.deadline {
                return Err(Error::Conflict {
                    key: op.key.to_owned(),
                    current,
                });
            }
            bases[i] = found;
        }
    }

    /// The layout of `collection` and the partition key's value, checked.
    pub(crate) fn partition_of(
        &self,
        collection: &str,
        partition: &str,
    ) -> Result<(&Layout, AttributeValue, String), Error> {
        let layout = self.inner.native.get(collection).ok_or_else(|| {
            Error::InvalidInput(format!(
                "collection {collection:?} is not mapped onto a native table"
            ))
        })?;
        let (value, sort) = layout.partition(partition)?;
        Ok((layout, value, sort.name.clone()))
    }

    /// Every live record of a partition, read with `ConsistentRead` in
    /// `region`, and the freshness of a strong read: the newest write time
    /// among its items (tombstones included) as the point.
    pub(crate) async fn query_partition(
        &self,
        region: &Region,
        collection: &str,
        partition: &str,
    ) -> Result<(crate::query::Partition, Freshness), Error> {
        let (layout, value, sort) = self.partition_of(collection, partition)?;
        let client = self.client(region)?;
        let mut records = Vec::new();
        let mut newest = None;
        let mut start: Option<Item> = None;
        loop {
            let out = client
                .query()
                .table_name(&layout.table)
                .key_condition_expression("#p = :p")
                .expression_attribute_names("#p", layout.partition_name())
                .expression_attribute_values(":p", value.clone())
                .consistent_read(true)
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| classify(e, Op::Read))?;
            for found in out.items() {
                let f = layout.fields(found);
                let version = f.version()?;
                let written_at = f.written_at()?;
                newest = newest.max(written_at);
                if f.deleted()? {
                    continue;
                }
                let sort = found
                    .get(&sort)
                    .and_then(crate::query::sort_text)
                    .ok_or_else(|| item::ItemError::Missing {
                        table: layout.table.clone(),
                        attribute: sort.clone(),
                    })?;
                records.push((
                    format!("{collection}/{partition}/{sort}"),
                    Versioned {
                        version,
                        value: layout.value_of(&f)?,
                    },
                ));
            }
            match out.last_evaluated_key() {
                Some(k) if !k.is_empty() => start = Some(k.clone()),
                _ => break,
            }
        }
        let freshness = Freshness {
            region: region.clone(),
            role: ReplicaRole::Leader,
            point: newest.map(|w| Point {
                wall: w,
                logical: 0,
            }),
            staleness_bound: Some(Duration::ZERO),
        };
        Ok((records, freshness))
    }

    /// Moves this process's attempt starts past `t` (a fence, or an item's
    /// write time, set by a process whose clock runs ahead).
    fn observe_start(&self, t: u64) {
        self.inner.last_start.fetch_max(t, Ordering::Relaxed);
    }
}

/// Checks that a native table's key schema, as `DescribeTable` reports it,
/// is the one configured: the same partition and sort key names, of the
/// same types.
fn key_schema_fits(
    native: &NativeTable,
    described: &aws_sdk_dynamodb::types::TableDescription,
    region: &Region,
) -> Result<(), Error> {
    let kind_of = |name: &str| {
        described
            .attribute_definitions()
            .iter()
            .find(|d| d.attribute_name() == name)
            .map(|d| d.attribute_type().clone())
    };
    let role_of = |role: KeyType| {
        described
            .key_schema()
            .iter()
            .find(|k| *k.key_type() == role)
            .map(|k| k.attribute_name().to_owned())
    };
    let expected = |k: &crate::KeyAttribute| {
        (
            k.name.clone(),
            match k.kind {
                KeyKind::String => ScalarAttributeType::S,
                KeyKind::Number => ScalarAttributeType::N,
            },
        )
    };
    let want = [
        (KeyType::Hash, Some(expected(&native.partition_key))),
        (KeyType::Range, native.sort_key.as_ref().map(expected)),
    ];
    for (role, want) in want {
        let have = role_of(role.clone()).map(|name| {
            let kind = kind_of(&name);
            (name, kind)
        });
        let fits = match (&want, &have) {
            (None, None) => true,
            (Some((name, kind)), Some((n, k))) => name == n && Some(kind) == k.as_ref(),
            _ => false,
        };
        if !fits {
            return Err(Error::InvalidInput(format!(
                "table {} in region {region} has the {} key {}, not {}",
                native.table,
                if role == KeyType::Hash {
                    "partition"
                } else {
                    "sort"
                },
                have.map_or("(none)".to_owned(), |(n, k)| format!(
                    "{n} ({})",
                    k.map_or("?".to_owned(), |k| k.as_str().to_owned())
                )),
                want.map_or("(none)".to_owned(), |(n, k)| format!(
                    "{n} ({})",
                    k.as_str()
                )),
            )));
        }
    }
    Ok(())
}

/// Creates a native table with its key schema (on-demand billing) unless
/// it exists; one that exists is the application's and is left as it is.
/// A table `create_tables` makes.
enum Creating<'a> {
    /// One of quorate's own, keyed by `pk`.
    Own(&'a str),
    /// A native table.
    Native(&'a NativeTable),
}

impl Creating<'_> {
    fn name(&self) -> &str {
        match self {
            Creating::Own(t) => t,
            Creating::Native(t) => &t.table,
        }
    }
}

/// Creates `table` through `client` unless it exists.
async fn create_in(client: &aws_sdk_dynamodb::Client, table: &Creating<'_>) -> Result<(), Error> {
    let table = match table {
        Creating::Native(t) => return create_native(client, t).await,
        Creating::Own(t) => t,
    };
    let invalid = |e: aws_sdk_dynamodb::error::BuildError| Error::InvalidInput(e.to_string());
    let created = client
        .create_table()
        .table_name(*table)
        .billing_mode(BillingMode::PayPerRequest)
        .stream_specification(stream_specification()?)
        .attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name(item::PK)
                .attribute_type(ScalarAttributeType::S)
                .build()
                .map_err(invalid)?,
        )
        .key_schema(
            KeySchemaElement::builder()
                .attribute_name(item::PK)
                .key_type(KeyType::Hash)
                .build()
                .map_err(invalid)?,
        )
        .send()
        .await;
    match created {
        Ok(_) => Ok(()),
        Err(e) if e.code() == Some("ResourceInUseException") => Ok(()),
        Err(e) => Err(classify(e, Op::Read)),
    }
}

/// Waits until `table` is `ACTIVE` (and, given `replica`, its replica in
/// that AWS region too), polling `DescribeTable`.
async fn wait_active(
    client: &aws_sdk_dynamodb::Client,
    table: &str,
    replica: Option<&str>,
) -> Result<(), Error> {
    // Creating a replica takes minutes on DynamoDB.
    let give_up = tokio::time::Instant::now() + Duration::from_secs(30 * 60);
    let mut pause = Duration::from_millis(20);
    loop {
        let described = client
            .describe_table()
            .table_name(table)
            .send()
            .await
            .map_err(|e| classify(e, Op::Read))?;
        let t = described.table();
        let table_active = t.and_then(|t| t.table_status()) == Some(&TableStatus::Active);
        let replica_active = replica.is_none_or(|r| {
            t.map(|t| t.replicas()).unwrap_or_default().iter().any(|x| {
                x.region_name() == Some(r) && x.replica_status() == Some(&ReplicaStatus::Active)
            })
        });
        if table_active && replica_active {
            return Ok(());
        }
        if tokio::time::Instant::now() >= give_up {
            return Err(Error::backend(
                Retryability::Retryable,
                Some("quorate.table_not_active".into()),
                format!(
                    "table {table}{} is not ACTIVE after 30 minutes",
                    replica
                        .map(|r| format!(" (replica in {r})"))
                        .unwrap_or_default()
                ),
            ));
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(5));
    }
}

async fn create_native(
    client: &aws_sdk_dynamodb::Client,
    table: &NativeTable,
) -> Result<(), Error> {
    let invalid = |e: aws_sdk_dynamodb::error::BuildError| Error::InvalidInput(e.to_string());
    let mut create = client
        .create_table()
        .table_name(&table.table)
        .billing_mode(BillingMode::PayPerRequest)
        .stream_specification(stream_specification()?);
    for (key, role) in [
        (Some(&table.partition_key), KeyType::Hash),
        (table.sort_key.as_ref(), KeyType::Range),
    ] {
        let Some(key) = key else { continue };
        let kind = match key.kind {
            KeyKind::String => ScalarAttributeType::S,
            KeyKind::Number => ScalarAttributeType::N,
        };
        create = create
            .attribute_definitions(
                AttributeDefinition::builder()
                    .attribute_name(&key.name)
                    .attribute_type(kind)
                    .build()
                    .map_err(invalid)?,
            )
            .key_schema(
                KeySchemaElement::builder()
                    .attribute_name(&key.name)
                    .key_type(role)
                    .build()
                    .map_err(invalid)?,
            );
    }
    match create.send().await {
        Ok(_) => Ok(()),
        Err(e) if e.code() == Some("ResourceInUseException") => Ok(()),
        Err(e) => Err(classify(e, Op::Read)),
    }
}

/// The state of an item a write is conditioned on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Base {
    /// No item.
    Absent,
    /// A record at this version.
    Live(Version),
    /// A delete's tombstone at this version.
    Tombstone(Version),
}

impl Base {
    fn of(f: &item::Fields<'_>) -> Result<Base, item::ItemError> {
        let version = f.version()?;
        Ok(if f.deleted()? {
            Base::Tombstone(version)
        } else {
            Base::Live(version)
        })
    }

    /// The newest version, a tombstone's included.
    fn last(self) -> Option<Version> {
        match self {
            Base::Absent => None,
            Base::Live(v) | Base::Tombstone(v) => Some(v),
        }
    }

    /// The version a precondition sees (a deleted record is absent).
    fn live(self) -> Option<Version> {
        match self {
            Base::Live(v) => Some(v),
            _ => None,
        }
    }
}

/// What an idempotency item holds.
enum Recorded {
    Nothing,
    /// A lookup's fence: attempts started before this cannot record.
    Fence(u64),
    Outcome(Committed),
    /// A multi-record write's outcome.
    Many(Transacted),
}

/// The item a write puts — `record`, its key and value attributes (a
/// tombstone's: its key only, with `deleted`), and the bookkeeping —
/// conditioned on `base`. An item's write times increase with its
/// versions, so that a read's point (the item's write time) orders its
/// versions: a writer whose clock is behind the item's last write retries
/// with a later start. On a native table an item from before quorate has no
/// bookkeeping: it is version 1 with no write time.
fn record_put(
    layout: &Layout,
    record: Item,
    delete: bool,
    base: Base,
    start: u64,
    region: &Region,
) -> aws_sdk_dynamodb::types::builders::PutBuilder {
    let names = &layout.names;
    let version = base.last().map_or(Version::FIRST, |v| v.next());
    let put = Put::builder()
        .table_name(&layout.table)
        .set_item(Some(record))
        .item(&names.version, n(version.0))
        .item(&names.written_at, n(start))
        .item(&names.writer, s(region.as_str()))
        .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld);
    // A delete leaves a tombstone: the item with its version and no value.
    let put = if delete {
        put.item(&names.deleted, AttributeValue::Bool(true))
    } else {
        put
    };
    match base {
        Base::Absent => put
            .condition_expression("attribute_not_exists(#k)")
            .expression_attribute_names("#k", layout.partition_name()),
        Base::Live(v) => {
            let (version, written) = live_condition(layout, v);
            put.condition_expression(format!(
                "attribute_exists(#k) AND {version} AND {written} AND attribute_not_exists(#d)"
            ))
            .expression_attribute_names("#k", layout.partition_name())
            .expression_attribute_names("#v", &names.version)
            .expression_attribute_names("#w", &names.written_at)
            .expression_attribute_names("#d", &names.deleted)
            .expression_attribute_values(":expected", n(v.0))
            .expression_attribute_values(":start", n(start))
        }
        Base::Tombstone(v) => put
            .condition_expression("#v = :expected AND #w < :start AND #d = :deleted")
            .expression_attribute_names("#v", &names.version)
            .expression_attribute_names("#w", &names.written_at)
            .expression_attribute_names("#d", &names.deleted)
            .expression_attribute_values(":expected", n(v.0))
            .expression_attribute_values(":start", n(start))
            .expression_attribute_values(":deleted", AttributeValue::Bool(true)),
    }
}

/// The conditions that a live record is at version `v` (`#v`,
/// `:expected`) and was written before `:start` (`#w`), for an item that
/// is there: on a native table, one without bookkeeping is version 1 and
/// written before any start.
fn live_condition(layout: &Layout, v: Version) -> (&'static str, &'static str) {
    match (layout.names.adopt, v == Version::FIRST) {
        (false, _) => ("#v = :expected", "#w < :start"),
        (true, false) => (
            "#v = :expected",
            "(attribute_not_exists(#w) OR #w < :start)",
        ),
        (true, true) => (
            "(#v = :expected OR attribute_not_exists(#v))",
            "(attribute_not_exists(#w) OR #w < :start)",
        ),
    }
}

/// The condition check of a record a multi-record write only checks (its
/// key attributes `key`), or `None` when its precondition (`Any`) always
/// holds.
fn record_check(
    layout: &Layout,
    key: Item,
    precondition: Precondition,
) -> Option<aws_sdk_dynamodb::types::builders::ConditionCheckBuilder> {
    let names = &layout.names;
    let check = aws_sdk_dynamodb::types::ConditionCheck::builder()
        .table_name(&layout.table)
        .set_key(Some(key))
        .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld);
    match precondition {
        Precondition::Any => None,
        Precondition::IfAbsent => Some(
            check
                .condition_expression("attribute_not_exists(#k) OR #d = :deleted")
                .expression_attribute_names("#k", layout.partition_name())
                .expression_attribute_names("#d", &names.deleted)
                .expression_attribute_values(":deleted", AttributeValue::Bool(true)),
        ),
        Precondition::IfVersion(v) => Some(
            check
                .condition_expression(format!(
                    "attribute_exists(#k) AND {} AND attribute_not_exists(#d)",
                    live_condition(layout, v).0
                ))
                .expression_attribute_names("#k", layout.partition_name())
                .expression_attribute_names("#v", &names.version)
                .expression_attribute_names("#d", &names.deleted)
                .expression_attribute_values(":expected", n(v.0)),
        ),
    }
}

fn reused(key: &str, idem: &IdempotencyKey) -> Error {
    Error::IdempotencyKeyReused {
        key: key.to_owned(),
        idempotency_key: idem.clone(),
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Op {
    Read,
    Write,
}

/// Whether an error's source chain says the request could not be signed
/// (the client has no credentials).
fn unsigned(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        let text = err.to_string();
        if text.contains("no identity resolver")
            || text.contains("failed to select an auth scheme")
            // The credentials chain found none (aws-config's default chain
            // on a machine without credentials), or a provider failed.
            || text.contains("credentials provider was not enabled")
            || text.contains("failed to load credentials")
            || text.contains("no providers in chain provided credentials")
            || text.contains("failed to load identity")
            || text.contains("identity resolver")
        {
            return true;
        }
        cur = err.source();
    }
    false
}

/// Whether an error's source chain says the connection was refused (nothing
/// was sent).
fn refused(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::ConnectionRefused {
                return true;
            }
        }
        cur = err.source();
    }
    false
}

/// Classifies an SDK error. For writes, anything that may have reached the
/// server without a definite answer is ambiguous.
fn classify<E>(e: SdkError<E, aws_sdk_dynamodb::config::http::HttpResponse>, op: Op) -> Error
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let after_send = if op == Op::Write {
        Retryability::Ambiguous
    } else {
        Retryability::Retryable
    };
    let code = e.code().map(str::to_owned);
    let retryability = match &e {
        SdkError::ConstructionFailure(_) => Retryability::Permanent,
        // No credentials (no identity to sign with): nothing was sent, and
        // sending again cannot help.
        SdkError::DispatchFailure(_) if unsigned(&e) => Retryability::Permanent,
        SdkError::DispatchFailure(d) if refused(&e) || d.is_user() => Retryability::Retryable,
        SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) | SdkError::ResponseError(_) => {
            after_send
        }
        SdkError::ServiceError(service) => match code.as_deref() {
            Some(
                "ThrottlingException"
                | "ProvisionedThroughputExceededException"
                | "RequestLimitExceeded"
                | "TransactionConflictException"
                // MRSC: another region's request was modifying the item;
                // this one was refused.
                | "ReplicatedWriteConflictException",
            ) => Retryability::Retryable,
            // A transaction with this attempt's request token is still
            // running: the attempt may yet commit.
            Some("TransactionInProgressException") => after_send,
            Some("IdempotentParameterMismatchException") => Retryability::Ambiguous,
            Some("InternalServerError" | "ServiceUnavailable") => after_send,
            _ if service.raw().status().is_server_error() => after_send,
            _ => Retryability::Permanent,
        },
        _ => after_send,
    };
    Error::backend(retryability, code, e)
}

/// An attempt that a lookup's fence stopped: it applied nothing, and a later
/// attempt of the same write may go ahead.
fn fenced() -> Error {
    Error::backend(
        Retryability::Retryable,
        Some("quorate.fenced".into()),
        "a lookup fenced this attempt of the write: it applied nothing",
    )
}

/// A stable 32-hex-digit token for DynamoDB's `ClientRequestToken` (at most
/// 36 characters): the logical write and this attempt's start, so the SDK's
/// own resends of one attempt are deduplicated by DynamoDB while a new
/// attempt (with a new timestamp) is a new request.
/// The stream global tables (and the local replicator) replicate from.
fn stream_specification() -> Result<StreamSpecification, Error> {
    StreamSpecification::builder()
        .stream_enabled(true)
        .stream_view_type(StreamViewType::NewAndOldImages)
        .build()
        .map_err(|e| Error::InvalidInput(e.to_string()))
}

/// The most items one `TransactWriteItems` takes.
const MAX_TRANSACT_ITEMS: usize = 100;

fn request_token(idem: &IdempotencyKey, start: u64) -> String {
    let mut a = DefaultHasher::new();
    (idem.as_str(), start, 1u8).hash(&mut a);
    let mut b = DefaultHasher::new();
    (idem.as_str(), start, 2u8).hash(&mut b);
    format!("{:016x}{:016x}", a.finish(), b.finish())
}

fn stable_hash(key: &str) -> u64 {
    // FNV-1a: stable across processes and releases, unlike DefaultHasher.
    key.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

impl Backend for DynamoBackend {
    fn scope(&self) -> &Scope {
        &self.inner.config.scope
    }

    fn db_system(&self) -> &'static str {
        "aws.dynamodb"
    }

    fn db_operation_name(&self, op: quorate::DbOperation) -> &'static str {
        match op {
            quorate::DbOperation::Write if self.inner.mode == Mode::Strong => "PutItem",
            quorate::DbOperation::Write | quorate::DbOperation::Transact => "TransactWriteItems",
            _ => "GetItem",
        }
    }

    fn db_target(
        &self,
        op: quorate::DbOperation,
        region: &Region,
        key: Option<&str>,
    ) -> quorate::DbTarget {
        let table = match (op, key) {
            (quorate::DbOperation::Lookup, _) => self.inner.idempotency_table.as_str(),
            (_, Some(key)) => self.route(key).0.table.as_str(),
            (_, None) => self.inner.config.table.as_str(),
        };
        let mut target = quorate::DbTarget::new().collection(table);
        if let Some(aws) = self.client(region).ok().and_then(|c| c.config().region()) {
            target = target.namespace(aws.to_string());
        }
        if let Some((host, port)) = self
            .inner
            .config
            .endpoints
            .get(region)
            .and_then(|url| server_of(url))
        {
            target = target.server(host, Some(port));
        }
        target
    }

    fn topology(&self) -> &Topology {
        &self.inner.topology
    }

    fn capabilities(&self) -> Capabilities {
        let strong = self.inner.mode == Mode::Strong;
        Capabilities {
            strong_reads_anywhere: strong,
            writes_anywhere: strong,
            follower_reads: true,
            max_staleness: quorate::DEFAULT_MAX_STALENESS,
            max_clock_offset: None,
        }
    }

    fn home_region(&self, key: &str) -> Option<&Region> {
        let key = self.home_key(key);
        match &self.inner.config.home {
            Home::Region(r) => Some(r),
            Home::Hashed => {
                let mut regions = self.inner.topology.regions();
                let n = regions.len() as u64;
                let i = (n > 0).then(|| (stable_hash(key) % n) as usize)?;
                regions.nth(i)
            }
            Home::By(f) => {
                let r = f(key);
                self.inner.topology.regions().find(|t| **t == r)
            }
        }
    }

    async fn read(&self, plan: &ReadPlan<'_>) -> Result<Read<Bytes>, Error> {
        let (layout, row) = self.route(plan.key);
        let key = layout.key(row)?;
        let client = self.client(plan.region)?;
        let consistent = plan.role == ReplicaRole::Leader;
        let out = client
            .get_item()
            .table_name(&layout.table)
            .set_key(Some(key))
            .consistent_read(consistent)
            .send()
            .await
            .map_err(|e| classify(e, Op::Read))?;
        let (value, deleted, written_at) = match out.item() {
            Some(found) => {
                let f = layout.fields(found);
                let version = f.version()?;
                let written_at = f.written_at()?;
                if f.deleted()? {
                    // Version 0: a lookup's placeholder on an MRSC table
                    // for a record that never existed.
                    (None, (version.0 > 0).then_some(version), written_at)
                } else {
                    let versioned = Versioned {
                        version,
                        value: layout.value_of(&f)?,
                    };
                    (Some(versioned), None, written_at)
                }
            }
            None => (None, None, None),
        };
        // A strongly consistent read is current only where every write of
        // the key is made: any region of an MRSC table, the key's home
        // region of an MREC one. Elsewhere in MREC it reads that region's
        // replica, which may not have the home's newest write yet, and
        // states a follower's freshness.
        let current = consistent
            && (self.inner.mode == Mode::Strong
                || self.home_region(plan.key).is_none_or(|h| h == plan.region));
        let freshness = if current {
            // The item's write time: a session that advances to it keeps
            // requiring this version once the key leaves its token.
            Freshness {
                region: plan.region.clone(),
                role: ReplicaRole::Leader,
                point: written_at.map(|w| Point {
                    wall: w,
                    logical: 0,
                }),
                staleness_bound: Some(Duration::ZERO),
            }
        } else {
            // The item reflects every write of it up to `written_at`, so it
            // is at most `now - written_at` behind (by the writer's clock;
            // the client adds the clock error). An absent item proves
            // nothing, and neither does one written ahead of this clock:
            // its writer's clock ran ahead by more than anything here
            // measures.
            Freshness {
                region: plan.region.clone(),
                role: ReplicaRole::Follower,
                point: written_at.map(|w| Point {
                    wall: w,
                    logical: 0,
                }),
                staleness_bound: written_at
                    .and_then(|w| self.now_nanos().checked_sub(w).map(Duration::from_nanos)),
            }
        };
        Ok(Read {
            value,
            deleted,
            freshness,
        })
    }

    async fn write(&self, request: &WriteRequest<'_>) -> Result<Committed, Error> {
        let (layout, row) = self.route(request.key);
        // Checked before anything is sent.
        let record = layout.record(row, request.mutation.value())?;
        if let Home::By(f) = &self.inner.config.home {
            // A home outside the table's regions is a configuration error,
            // not a reason to write wherever the request happens to be.
            let home = f(self.home_key(request.key));
            if self.inner.topology.index_of(&home).is_none() {
                return Err(Error::Topology(quorate::TopologyError::UnknownRegion(home)));
            }
        }
        let client = self.client(request.region)?;
        let generated;
        let idem = match request.idempotency_key {
            Some(k) => k,
            None => {
                generated = IdempotencyKey::generate();
                &generated
            }
        };
        if self.inner.mode == Mode::Strong {
            return self.write_in_item(request, record, idem).await;
        }
        // The state the write is conditioned on. `Any` writes over whatever
        // is there, still conditionally, so that the new version is known;
        // `IfAbsent` first assumes no item, and learns of a tombstone from
        // the refusal.
        let mut base = match request.precondition {
            Precondition::IfVersion(v) => Base::Live(v),
            Precondition::IfAbsent => Base::Absent,
            Precondition::Any => self.current_base(client, request.key).await?,
        };
        loop {
            let version = base.last().map_or(Version::FIRST, |v| v.next());
            let start = self.next_start();
            let record = record_put(
                layout,
                record.clone(),
                request.mutation.is_delete(),
                base,
                start,
                request.region,
            );
            // The outcome, unless an attempt already recorded one; a fence
            // left by an ambiguity lookup stops only attempts started
            // before it.
            let outcome = Put::builder()
                .table_name(&self.inner.idempotency_table)
                .item(item::PK, s(idem.as_str()))
                .item(item::RECORD_KEY, s(request.key))
                .item(item::VERSION, n(version.0))
                .item(item::WRITTEN_AT, n(start))
                .item(item::WRITER, s(request.region.as_str()))
                .item(item::EXPIRES_AT, n(self.expires_at()))
                .condition_expression("attribute_not_exists(pk) OR #f < :start")
                .expression_attribute_names("#f", item::FENCED_BEFORE)
                .expression_attribute_values(":start", n(start));
            let build = |p: aws_sdk_dynamodb::types::builders::PutBuilder| {
                p.build()
                    .map(|put| TransactWriteItem::builder().put(put).build())
                    .map_err(|e| Error::InvalidInput(e.to_string()))
            };
            let sent = client
                .transact_write_items()
                .transact_items(build(record)?)
                .transact_items(build(outcome)?)
                .client_request_token(request_token(idem, start))
                .send()
                .await;
            let e = match sent {
                Ok(_) => {
                    return Ok(Committed {
                        version,
                        point: Point {
                            wall: start,
                            logical: 0,
                        },
                        region: request.region.clone(),
                    })
                }
                Err(e) => e,
            };
            if e.code() != Some("TransactionCanceledException") {
                return Err(classify(e, Op::Write));
            }
            let reasons: Vec<CancellationReason> = e
                .as_service_error()
                .and_then(|s| match s {
                    aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError::TransactionCanceledException(t) => {
                        Some(t.cancellation_reasons().to_vec())
                    }
                    _ => None,
                })
                .unwrap_or_default();
            let code = |i: usize| reasons.get(i).and_then(|r| r.code()).unwrap_or("None");
            match (code(0), code(1)) {
                // This logical write already has an outcome (return it), or
                // a lookup fenced attempts started before this one.
                (_, "ConditionalCheckFailed") => {
                    return match self.recorded(client, request.key, idem).await? {
                        Recorded::Outcome(done) => Ok(done),
                        Recorded::Many(_) => Err(reused(request.key, idem)),
                        Recorded::Fence(before) => {
                            // This process's clock is behind the fence's:
                            // the next attempt starts after it.
                            self.observe_start(before);
                            Err(fenced())
                        }
                        Recorded::Nothing => Err(Error::backend(
                            Retryability::Retryable,
                            Some("TransactionCanceledException".into()),
                            e,
                        )),
                    };
                }
                ("ConditionalCheckFailed", _) => {
                    // An earlier attempt of this logical write may be what
                    // moved the version on.
                    if let Recorded::Outcome(done) =
                        self.recorded(client, request.key, idem).await?
                    {
                        return Ok(done);
                    }
                    let old = reasons[0].item().map(|i| layout.fields(i));
                    let found = match &old {
                        Some(f) => Base::of(f)?,
                        None => Base::Absent,
                    };
                    let current = found.live();
                    if found == base {
                        // The state matched: this clock is behind the
                        // item's last write time. Go again, later.
                        if let Some(w) = old.as_ref().map(|f| f.written_at()).transpose()?.flatten()
                        {
                            self.observe_start(w);
                        }
                        if tokio::time::Instant::now() >= request.deadline {
                            return Err(Error::backend(
                                Retryability::Retryable,
                                Some("quorate.clock_behind".into()),
                                "this clock is behind the item's last write time",
                            ));
                        }
                        continue;
                    }
                    let again = match request.precondition {
                        // Someone wrote in between: go again on what is
                        // there now.
                        Precondition::Any => true,
                        // Absent, but as a tombstone: go again on it.
                        Precondition::IfAbsent => current.is_none(),
                        Precondition::IfVersion(_) => false,
                    };
                    if !again || tokio::time::Instant::now() >= request.deadline {
                        return Err(Error::Conflict {
                            key: request.key.to_owned(),
                            current,
                        });
                    }
                    base = found;
                    continue;
                }
                (a, b) => {
                    let retryable = [a, b].iter().all(|c| {
                        matches!(
                            *c,
                            "None"
                                | "TransactionConflict"
                                | "ThrottlingError"
                                | "ProvisionedThroughputExceeded"
                                | "RequestLimitExceeded"
                        )
                    });
                    let code = Some(format!("TransactionCanceledException[{a},{b}]"));
                    return Err(Error::backend(
                        if retryable {
                            Retryability::Retryable
                        } else {
                            Retryability::Permanent
                        },
                        code,
                        e,
                    ));
                }
            }
        }
    }

    async fn lookup(
        &self,
        region: &Region,
        key: &str,
        idem: &IdempotencyKey,
    ) -> Result<Option<Committed>, Error> {
        if self.inner.mode == Mode::Strong {
            return self.lookup_in_item(region, key, idem).await;
        }
        match self.lookup_fenced(region, key, &[key], idem).await? {
            Some(Recorded::Outcome(done)) => Ok(Some(done)),
            Some(_) => Err(reused(key, idem)),
            None => Ok(None),
        }
    }

    async fn transact(&self, request: &TransactRequest<'_>) -> Result<Transacted, Error> {
        Box::pin(self.transact_attempts(request)).await
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
        let client = self.client(region)?;
        let sent = self.now_nanos();
        client
            .get_item()
            .table_name(&self.inner.config.table)
            .key(item::PK, s("\u{1}quorate-probe"))
            .send()
            .await
            .map_err(|e| classify(e, Op::Read))?;
        // DynamoDB reports no clock of its own: the probe measures
        // reachability and latency, and states the midpoint of the round
        // trip by this process's clock (an offset of zero).
        let received = self.now_nanos();
        Ok(Probe {
            region: region.clone(),
            server_time_nanos: sent + received.saturating_sub(sent) / 2,
            replica_lag: None,
        })
    }
}

/// The host and port of an endpoint URL (the scheme's port when it names
/// none).
fn server_of(url: &str) -> Option<(String, u16)> {
    let (scheme, rest) = url.split_once("://")?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or(rest);
    let authority = authority.rsplit('@').next().unwrap_or(authority);
    let default = if scheme.eq_ignore_ascii_case("http") {
        80
    } else {
        443
    };
    // A bracketed IPv6 literal keeps its colons.
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !p.contains(']') => (h, p.parse().ok()?),
        _ => (authority, default),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    (!host.is_empty()).then(|| (host.to_owned(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn servers_come_from_endpoint_urls() {
        let cases = [
            ("http://127.0.0.1:8000", Some(("127.0.0.1", 8000))),
            (
                "https://dynamodb.eu-west-1.amazonaws.com",
                Some(("dynamodb.eu-west-1.amazonaws.com", 443)),
            ),
            ("http://localhost/path?x=1", Some(("localhost", 80))),
            ("http://[::1]:8000/", Some(("::1", 8000))),
            ("http://[::1]", Some(("::1", 80))),
            ("https://user@db.internal:8443", Some(("db.internal", 8443))),
            ("http://:80", None),
            ("http://h:notaport", None),
            ("no-scheme", None),
        ];
        for (url, want) in cases {
            assert_eq!(
                server_of(url),
                want.map(|(h, p)| (h.to_owned(), p)),
                "{url}"
            );
        }
    }

    fn sdk(region: &str) -> aws_sdk_dynamodb::Client {
        let config = aws_sdk_dynamodb::Config::builder()
            .behavior_version(aws_sdk_dynamodb::config::BehaviorVersion::latest())
            .region(aws_sdk_dynamodb::config::Region::new(region.to_owned()))
            .endpoint_url("http://127.0.0.1:9")
            .credentials_provider(aws_sdk_dynamodb::config::Credentials::new(
                "k", "s", None, None, "test",
            ))
            .build();
        aws_sdk_dynamodb::Client::from_conf(config)
    }

    fn config() -> DynamoConfig {
        DynamoConfig::new(
            "orders",
            "orders",
            vec![
                RegionClient {
                    region: Region::new("eu").unwrap(),
                    client: sdk("eu-west-1"),
                },
                RegionClient {
                    region: Region::new("us").unwrap(),
                    client: sdk("us-east-1"),
                },
            ],
            "us",
        )
        .unwrap()
    }

    /// Counts the SDK's attempts.
    #[derive(Debug, Clone, Default)]
    struct Attempts(Arc<std::sync::atomic::AtomicU32>);

    impl aws_sdk_dynamodb::config::Intercept for Attempts {
        fn name(&self) -> &'static str {
            "attempts"
        }

        fn read_before_attempt(
            &self,
            _: &aws_sdk_dynamodb::config::interceptors::BeforeTransmitInterceptorContextRef<'_>,
            _: &aws_sdk_dynamodb::config::RuntimeComponents,
            _: &mut aws_sdk_dynamodb::config::ConfigBag,
        ) -> Result<(), aws_sdk_dynamodb::error::BoxError> {
            self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Ok(())
        }
    }

    #[tokio::test]
    async fn the_sdk_s_own_retries_are_off_whatever_the_client_says() {
        // The application's client retries three times; nothing listens
        // at its endpoint.
        let attempts = Attempts::default();
        let retrying = aws_sdk_dynamodb::Client::from_conf(
            sdk("us-east-1")
                .config()
                .to_builder()
                .retry_config(
                    aws_sdk_dynamodb::config::retry::RetryConfig::standard()
                        .with_max_attempts(3)
                        .with_initial_backoff(Duration::from_millis(1)),
                )
                .interceptor(attempts.clone())
                .build(),
        );
        let get = |client: &aws_sdk_dynamodb::Client| {
            client
                .get_item()
                .table_name("orders")
                .key("pk", AttributeValue::S("k".into()))
                .send()
        };
        assert!(get(&retrying).await.is_err());
        let sdk_alone = attempts.0.swap(0, std::sync::atomic::Ordering::Relaxed);
        assert_eq!(sdk_alone, 3, "the SDK retried on its own");
        let mut c = config();
        c.regions[1].client = retrying;
        let backend = DynamoBackend::new(c).unwrap();
        let us = Region::new("us").unwrap();
        assert!(get(backend.client(&us).unwrap()).await.is_err());
        assert_eq!(
            attempts.0.load(std::sync::atomic::Ordering::Relaxed),
            1,
            "one request per quorate attempt"
        );
    }

    #[test]
    fn bad_configuration_is_refused_with_typed_errors() {
        let mut c = config();
        c.table = "bad name".into();
        assert!(matches!(DynamoBackend::new(c), Err(Error::InvalidInput(_))));
        let mut c = config();
        c.local = Region::new("ap").unwrap();
        assert!(matches!(DynamoBackend::new(c), Err(Error::Topology(_))));
        let mut c = config();
        c.home = Home::Region(Region::new("ap").unwrap());
        assert!(matches!(DynamoBackend::new(c), Err(Error::Topology(_))));
        let mut c = config();
        c.regions.push(c.regions[0].clone());
        assert!(matches!(DynamoBackend::new(c), Err(Error::InvalidInput(_))));
        let mut c = config();
        c.idempotency_ttl = Duration::from_secs(60);
        assert!(matches!(DynamoBackend::new(c), Err(Error::InvalidInput(_))));
        assert!(DynamoConfig::new("orders", "orders", vec![], "us").is_err());
        assert!(DynamoBackend::new(config()).is_ok());
    }

    #[tokio::test]
    async fn a_chain_that_finds_no_credentials_fails_permanently() {
        use aws_credential_types::provider::{error::CredentialsError, future, ProvideCredentials};
        /// The default chain on a machine without credentials.
        #[derive(Debug)]
        struct Nothing;
        impl ProvideCredentials for Nothing {
            fn provide_credentials<'a>(&'a self) -> future::ProvideCredentials<'a>
            where
                Self: 'a,
            {
                future::ProvideCredentials::ready(Err(CredentialsError::not_loaded(
                    "no providers in chain provided credentials",
                )))
            }
        }
        let mut c = config();
        for rc in &mut c.regions {
            rc.client = aws_sdk_dynamodb::Client::from_conf(
                aws_sdk_dynamodb::Config::builder()
                    .behavior_version(aws_sdk_dynamodb::config::BehaviorVersion::latest())
                    .region(aws_sdk_dynamodb::config::Region::new("eu-west-1"))
                    .endpoint_url("http://127.0.0.1:9")
                    .credentials_provider(Nothing)
                    .build(),
            );
        }
        let b = DynamoBackend::new(c).unwrap();
        let eu = Region::new("eu").unwrap();
        let err = b.probe(&eu).await.unwrap_err();
        assert_eq!(
            err.retryability(),
            Retryability::Permanent,
            "{}",
            err.report()
        );
        assert!(
            err.report().to_string().contains("credentials"),
            "{}",
            err.report()
        );
        // A write too: permanent, not ambiguous.
        let value = Bytes::from("v");
        let request = WriteRequest {
            key: "k",
            mutation: quorate::Mutation::Put(&value),
            precondition: Precondition::IfAbsent,
            idempotency_key: None,
            region: &eu,
            deadline: tokio::time::Instant::now() + Duration::from_secs(1),
        };
        let err = b.write(&request).await.unwrap_err();
        assert_eq!(
            err.retryability(),
            Retryability::Permanent,
            "{}",
            err.report()
        );
    }

    #[tokio::test]
    async fn a_client_without_credentials_fails_permanently_naming_them() {
        let mut c = config();
        for rc in &mut c.regions {
            rc.client = aws_sdk_dynamodb::Client::from_conf(
                aws_sdk_dynamodb::Config::builder()
                    .behavior_version(aws_sdk_dynamodb::config::BehaviorVersion::latest())
                    .region(aws_sdk_dynamodb::config::Region::new("eu-west-1"))
                    .endpoint_url("http://127.0.0.1:9")
                    .build(),
            );
        }
        let b = DynamoBackend::new(c).unwrap();
        let eu = Region::new("eu").unwrap();
        let err = b.probe(&eu).await.unwrap_err();
        assert_eq!(
            err.retryability(),
            Retryability::Permanent,
            "{}",
            err.report()
        );
        assert!(
            err.report().to_string().contains("credentials"),
            "{}",
            err.report()
        );
    }

    #[test]
    fn attempts_name_their_table() {
        let b = DynamoBackend::new(config()).unwrap();
        let eu = Region::new("eu").unwrap();
        assert_eq!(b.db_system(), "aws.dynamodb");
        assert_eq!(b.db_operation_name(quorate::DbOperation::Read), "GetItem");
        assert_eq!(
            b.db_operation_name(quorate::DbOperation::Write),
            "TransactWriteItems"
        );
        let t = b.db_target(quorate::DbOperation::Write, &eu, Some("k"));
        assert_eq!(t.collection.as_deref(), Some(b.table()));
        assert_eq!(t.namespace.as_deref(), Some("eu-west-1"));
        let t = b.db_target(quorate::DbOperation::Lookup, &eu, Some("k"));
        assert_eq!(t.collection.as_deref(), Some(b.idempotency_table()));
        let mut strong = config();
        strong.mode = Mode::Strong;
        let s = DynamoBackend::new(strong).unwrap();
        assert_eq!(s.db_operation_name(quorate::DbOperation::Write), "PutItem");
    }

    #[test]
    fn modes_map_to_capabilities() {
        let b = DynamoBackend::new(config()).unwrap();
        assert_eq!(b.mode(), Mode::Eventual);
        let c = b.capabilities();
        assert!(!c.strong_reads_anywhere && !c.writes_anywhere && c.follower_reads);
        let mut strong = config();
        strong.mode = Mode::Strong;
        let c = DynamoBackend::new(strong).unwrap().capabilities();
        assert!(c.strong_reads_anywhere && c.writes_anywhere);
    }

    #[test]
    fn homes_are_stable_and_within_the_topology() {
        let mut c = config();
        c.home = Home::Hashed;
        let b = DynamoBackend::new(c).unwrap();
        let mut seen = std::collections::HashSet::new();
        for i in 0..64 {
            let key = format!("k{i}");
            let h = b.home_region(&key).unwrap();
            assert_eq!(b.home_region(&key), Some(h));
            seen.insert(h);
        }
        assert_eq!(seen.len(), 2, "both regions are homes");
        let mut c = config();
        c.home = Home::By(Arc::new(|k: &str| {
            Region::new(if k.starts_with("us/") {
                "us"
            } else {
                "nowhere"
            })
            .unwrap()
        }));
        let b = DynamoBackend::new(c).unwrap();
        assert_eq!(b.home_region("us/1"), Some(&Region::new("us").unwrap()));
        assert_eq!(b.home_region("x"), None, "a home outside the topology");
    }

    #[test]
    fn a_native_partition_has_one_home() {
        let mut c = config();
        c.home = Home::Hashed;
        let table = NativeTable::new("Orders", crate::KeyAttribute::string("customer").unwrap())
            .unwrap()
            .sort_key(crate::KeyAttribute::number("n").unwrap())
            .unwrap();
        c.native.insert("orders", table).unwrap();
        let b = DynamoBackend::new(c).unwrap();
        let mut homes = std::collections::HashSet::new();
        for p in 0..32 {
            let home = b.home_region(&format!("orders/c{p}")).unwrap();
            for n in 0..8 {
                assert_eq!(b.home_region(&format!("orders/c{p}/{n}")), Some(home));
            }
            homes.insert(home);
        }
        assert_eq!(homes.len(), 2, "partitions spread over both regions");
        // quorate's own keys are homed each by itself, as before.
        assert_eq!(b.home_key("stock/a/b"), "stock/a/b");
        assert_eq!(b.home_key("orders/c1/5"), "orders/c1");
    }

    /// A home outside the table's regions fails every request that needs a
    /// home, before anything is sent: a strong read served locally would
    /// not be linearizable under MREC.
    #[tokio::test]
    async fn a_home_outside_the_topology_is_a_typed_error_for_reads_and_writes() {
        let mut c = config();
        c.home = Home::By(Arc::new(|_: &str| Region::new("nowhere").unwrap()));
        let client = quorate::Client::new(
            DynamoBackend::new(c).unwrap(),
            quorate::ClientConfig::default(),
        )
        .unwrap();
        let session = client.session();
        let read = client
            .read(&session, "k", quorate::ReadPolicy::Strong)
            .await
            .unwrap_err();
        assert!(
            matches!(
                read,
                Error::Topology(quorate::TopologyError::NoHomeRegion { .. })
            ),
            "{}",
            read.report()
        );
        let write = client
            .write(
                &session,
                "k",
                "v".into(),
                Precondition::IfAbsent,
                &quorate::WriteOptions::default(),
            )
            .await
            .unwrap_err();
        assert!(
            matches!(
                write,
                Error::Topology(quorate::TopologyError::NoHomeRegion { .. })
            ),
            "{}",
            write.report()
        );
    }

    #[test]
    fn request_tokens_fit_dynamodb_and_differ_per_attempt() {
        let idem = IdempotencyKey::new(&"k".repeat(128)).unwrap();
        let a = request_token(&idem, 1);
        assert_eq!(a.len(), 32);
        assert!(a.len() <= 36);
        assert_eq!(a, request_token(&idem, 1));
        assert_ne!(a, request_token(&idem, 2));
    }

    mod classification {
        use super::super::*;
        use aws_sdk_dynamodb::error::ErrorMetadata;
        use aws_sdk_dynamodb::operation::get_item::GetItemError;
        use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
        use aws_smithy_runtime_api::client::result::ConnectorError;
        use aws_smithy_runtime_api::http::StatusCode;
        use aws_smithy_types::body::SdkBody;

        type Raw = aws_sdk_dynamodb::config::http::HttpResponse;

        fn raw(status: u16) -> Raw {
            Raw::new(StatusCode::try_from(status).unwrap(), SdkBody::empty())
        }

        fn write(code: &str, status: u16) -> Retryability {
            let e = TransactWriteItemsError::generic(ErrorMetadata::builder().code(code).build());
            classify(SdkError::service_error(e, raw(status)), Op::Write).retryability()
        }

        fn read(code: &str, status: u16) -> Retryability {
            let e = GetItemError::generic(ErrorMetadata::builder().code(code).build());
            classify(SdkError::service_error(e, raw(status)), Op::Read).retryability()
        }

        #[test]
        fn service_errors() {
            use Retryability::*;
            for throttled in [
                "ThrottlingException",
                "ProvisionedThroughputExceededException",
                "RequestLimitExceeded",
                "TransactionConflictException",
            ] {
                assert_eq!(write(throttled, 400), Retryable, "{throttled}");
                assert_eq!(read(throttled, 400), Retryable, "{throttled}");
            }
            // A server error may come after the write applied: resolved
            // through the idempotency item, not retried blindly.
            assert_eq!(write("InternalServerError", 500), Ambiguous);
            assert_eq!(write("SomethingNew", 503), Ambiguous);
            assert_eq!(read("InternalServerError", 500), Retryable);
            assert_eq!(write("ValidationException", 400), Permanent);
            assert_eq!(read("ResourceNotFoundException", 400), Permanent);
            assert_eq!(write("ConditionalCheckFailedException", 400), Permanent);
            assert_eq!(
                write("IdempotentParameterMismatchException", 400),
                Ambiguous
            );
            // An attempt's own transaction still running: not retryable as
            // if nothing had been sent.
            assert_eq!(write("TransactionInProgressException", 400), Ambiguous);
            assert_eq!(read("TransactionInProgressException", 400), Retryable);
        }

        #[test]
        fn transport_errors() {
            use Retryability::*;
            let timeout = || SdkError::<GetItemError, Raw>::timeout_error("slow");
            assert_eq!(classify(timeout(), Op::Read).retryability(), Retryable);
            assert_eq!(classify(timeout(), Op::Write).retryability(), Ambiguous);
            let refused = || {
                SdkError::<GetItemError, Raw>::dispatch_failure(ConnectorError::io(Box::new(
                    std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
                )))
            };
            assert_eq!(classify(refused(), Op::Write).retryability(), Retryable);
            let reset = SdkError::<GetItemError, Raw>::dispatch_failure(ConnectorError::io(
                Box::new(std::io::Error::from(std::io::ErrorKind::ConnectionReset)),
            ));
            assert_eq!(classify(reset, Op::Write).retryability(), Ambiguous);
            let garbled = SdkError::<GetItemError, Raw>::response_error("garbled", raw(200));
            assert_eq!(classify(garbled, Op::Write).retryability(), Ambiguous);
            let unbuildable = SdkError::<GetItemError, Raw>::construction_failure("bad input");
            assert_eq!(classify(unbuildable, Op::Write).retryability(), Permanent);
        }
    }

    #[test]
    fn attempt_starts_strictly_increase() {
        let b = DynamoBackend::new(config()).unwrap();
        let mut last = 0;
        for _ in 0..1000 {
            let s = b.next_start();
            assert!(s > last);
            last = s;
        }
    }
}
