//! A local stand-in for global-table replication (feature `testing`), so
//! that multi-region eventual consistency (MREC) can be drilled on
//! DynamoDB Local, which keeps one database per region and replicates
//! nothing between them.
//!
//! The [`Replicator`] reads each region's table through DynamoDB Streams
//! (`NEW_AND_OLD_IMAGES`, switched on when a table has no stream) and
//! writes every change into the other regions' tables the way global tables
//! do:
//!
//! - **last writer wins**: a copy lands only over an older write, compared
//!   by the item's write time and then its writer (quorate's `written_at`
//!   and `writer` bookkeeping), atomically against local writes by a
//!   condition, so every region converges on the same item whatever order
//!   the copies arrive in; an item without a write time is copied only
//!   where the item has none;
//! - **deletes** are copied unless the destination holds a newer write;
//! - **lag**: a change waits [`ReplicatorBuilder::lag`] after the
//!   replicator first sees it (changeable while running with
//!   [`Replicator::set_lag`]);
//! - **pause**: [`Replicator::pause`] holds every change back (a
//!   partition between the regions); [`Replicator::resume`] lets them
//!   through, none lost.
//!
//! A change that fails to apply is kept and tried again on the next pass.
//!
//! ```no_run
//! use std::time::Duration;
//! use quorate_dynamodb::replicator::Replicator;
//! use quorate_dynamodb::{DynamoBackend, Region};
//!
//! # async fn demo(backend: DynamoBackend, eu: aws_config::SdkConfig,
//! #               us: aws_config::SdkConfig) -> Result<(), quorate_dynamodb::Error> {
//! let replicator = Replicator::builder()
//!     .region(Region::new("eu")?, &eu)
//!     .region(Region::new("us")?, &us)
//!     .tables_of(&backend)
//!     .lag(Duration::from_millis(200))
//!     .start()
//!     .await?;
//! replicator.pause(); // the regions are partitioned
//! // ... writes in both regions diverge ...
//! replicator.resume(); // they converge, last writer wins
//! replicator.settle().await;
//! # Ok(()) }
//! ```

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_dynamodb::error::ProvideErrorMetadata;
use aws_sdk_dynamodb::types::{AttributeValue, KeyType, StreamSpecification, StreamViewType};
use aws_sdk_dynamodbstreams::types::{
    AttributeValue as StreamValue, OperationType, Shard, ShardIteratorType,
};
use quorate::{Error, Region, Retryability};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::item;
use crate::DynamoBackend;

type Item = HashMap<String, AttributeValue>;

/// One table the replicator copies between the regions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicatedTable {
    table: String,
    written_at: String,
    writer: String,
    /// The string attribute a key prefix applies to (`None`: the partition
    /// key).
    filter: Option<String>,
    /// Only items whose key starts with this are copied.
    prefix: Option<String>,
    /// The partition key's name, from the table's description.
    partition: Option<String>,
}

impl ReplicatedTable {
    /// The table `table`, last-writer-wins by quorate's bookkeeping named
    /// `quorate_written_at` and `quorate_writer` (a [`crate::NativeTable`]'s
    /// defaults).
    pub fn new(table: &str) -> Result<ReplicatedTable, Error> {
        item::table_name(table)?;
        Ok(ReplicatedTable {
            table: table.to_owned(),
            written_at: "quorate_written_at".into(),
            writer: "quorate_writer".into(),
            filter: None,
            prefix: None,
            partition: None,
        })
    }

    /// The same table with last-writer-wins by the number attribute
    /// `written_at` and then the string attribute `writer`.
    pub fn last_writer_wins_by(self, written_at: &str, writer: &str) -> ReplicatedTable {
        ReplicatedTable {
            written_at: written_at.to_owned(),
            writer: writer.to_owned(),
            ..self
        }
    }

    /// The same table, copying only items whose key starts with `prefix`
    /// (a string partition key; for quorate's idempotency items, their
    /// record's key), so that replicators sharing a table leave each
    /// other's items alone.
    pub fn keys_starting_with(self, prefix: &str) -> ReplicatedTable {
        ReplicatedTable {
            prefix: Some(prefix.to_owned()),
            ..self
        }
    }

    /// The table.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// quorate's records table of `backend`.
    pub fn records_of(backend: &DynamoBackend) -> ReplicatedTable {
        ReplicatedTable {
            table: backend.table().to_owned(),
            written_at: item::WRITTEN_AT.into(),
            writer: item::WRITER.into(),
            filter: None,
            prefix: None,
            partition: None,
        }
    }

    /// quorate's idempotency table of `backend`.
    pub fn idempotency_of(backend: &DynamoBackend) -> ReplicatedTable {
        ReplicatedTable {
            table: backend.idempotency_table().to_owned(),
            // An idempotency item's key prefix is its record's.
            filter: Some(item::RECORD_KEY.into()),
            ..ReplicatedTable::records_of(backend)
        }
    }

    /// A native table, last-writer-wins by its bookkeeping attributes.
    pub fn native(table: &crate::NativeTable) -> ReplicatedTable {
        ReplicatedTable {
            table: table.table.clone(),
            written_at: table.written_at.clone(),
            writer: table.writer.clone(),
            filter: None,
            prefix: None,
            partition: None,
        }
    }

    /// The write time and writer of `item`, if it has a write time.
    fn stamp(&self, item: &Item) -> Option<(u64, String)> {
        let written = match item.get(&self.written_at)? {
            AttributeValue::N(n) => n.parse().ok()?,
            _ => return None,
        };
        let writer = match item.get(&self.writer) {
            Some(AttributeValue::S(s)) => s.clone(),
            _ => String::new(),
        };
        Some((written, writer))
    }
}

/// Builds a [`Replicator`]; see the [module docs](self).
#[derive(Debug, Default)]
#[must_use]
pub struct ReplicatorBuilder {
    regions: Vec<RegionStreams>,
    tables: Vec<ReplicatedTable>,
    lag: Duration,
    poll: Option<Duration>,
    prefix: Option<String>,
}

#[derive(Clone, Debug)]
struct RegionStreams {
    region: Region,
    dynamodb: aws_sdk_dynamodb::Client,
    streams: aws_sdk_dynamodbstreams::Client,
}

impl ReplicatorBuilder {
    /// A region, reached with `sdk` (its endpoint, AWS region and
    /// credentials, for both DynamoDB and DynamoDB Streams).
    pub fn region(self, region: Region, sdk: &aws_config::SdkConfig) -> ReplicatorBuilder {
        self.region_clients(
            region,
            aws_sdk_dynamodb::Client::new(sdk),
            aws_sdk_dynamodbstreams::Client::new(sdk),
        )
    }

    /// A region, reached with clients of the caller's own making.
    pub fn region_clients(
        mut self,
        region: Region,
        dynamodb: aws_sdk_dynamodb::Client,
        streams: aws_sdk_dynamodbstreams::Client,
    ) -> ReplicatorBuilder {
        self.regions.push(RegionStreams {
            region,
            dynamodb,
            streams,
        });
        self
    }

    /// Every table `backend` uses: quorate's records and idempotency
    /// tables and the native tables of its collections.
    pub fn tables_of(mut self, backend: &DynamoBackend) -> ReplicatorBuilder {
        self.tables.push(ReplicatedTable::records_of(backend));
        self.tables.push(ReplicatedTable::idempotency_of(backend));
        self.tables
            .extend(backend.native_tables().map(ReplicatedTable::native));
        self
    }

    /// Another table.
    pub fn table(mut self, table: ReplicatedTable) -> ReplicatorBuilder {
        self.tables.push(table);
        self
    }

    /// How long a change waits after the replicator first sees it (zero by
    /// default).
    pub fn lag(mut self, lag: Duration) -> ReplicatorBuilder {
        self.lag = lag;
        self
    }

    /// How often the streams are read (20 ms by default).
    pub fn poll_interval(mut self, every: Duration) -> ReplicatorBuilder {
        self.poll = Some(every);
        self
    }

    /// [`ReplicatedTable::keys_starting_with`] for every table not given a
    /// prefix of its own.
    pub fn only_keys_starting_with(mut self, prefix: &str) -> ReplicatorBuilder {
        self.prefix = Some(prefix.to_owned());
        self
    }

    /// Checks every table in every region, switches on its stream when it
    /// has none, positions at the stream's end (what is written from now
    /// on is copied) and starts copying in a task on the current runtime.
    pub async fn start(mut self) -> Result<Replicator, Error> {
        if self.regions.len() < 2 {
            return Err(Error::InvalidInput(
                "the replicator copies between at least two regions".into(),
            ));
        }
        if self.tables.is_empty() {
            return Err(Error::InvalidInput(
                "the replicator has no table to copy".into(),
            ));
        }
        for (i, r) in self.regions.iter().enumerate() {
            if self.regions[..i].iter().any(|o| o.region == r.region) {
                return Err(Error::InvalidInput(format!(
                    "region {} is given to the replicator twice",
                    r.region
                )));
            }
        }
        if let Some(prefix) = &self.prefix {
            for t in &mut self.tables {
                t.prefix.get_or_insert_with(|| prefix.clone());
            }
        }
        let mut sources = Vec::new();
        for (t, table) in self.tables.iter_mut().enumerate() {
            for (r, region) in self.regions.iter().enumerate() {
                let mut source = Source::open(r, t, table, region).await?;
                // A stream just switched on may list its first shard a
                // moment later.
                let since = Instant::now();
                source.discover(region, true).await?;
                while source.iterators.is_empty() {
                    if since.elapsed() > Duration::from_secs(10) {
                        return Err(Error::backend(
                            Retryability::Retryable,
                            None,
                            format!(
                                "the stream of table {} in region {} lists no open shard",
                                table.table, region.region
                            ),
                        ));
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    source.discover(region, true).await?;
                }
                sources.push(source);
            }
        }
        let control = Arc::new(Control {
            regions: self.regions.iter().map(|r| r.region.clone()).collect(),
            ..Control::default()
        });
        control.lag_ms.store(millis(self.lag), Ordering::SeqCst);
        let worker = Worker {
            regions: self.regions,
            tables: self.tables,
            sources,
            pending: VecDeque::new(),
            poll: self.poll.unwrap_or(Duration::from_millis(20)),
            control: control.clone(),
        };
        let task = tokio::spawn(worker.run());
        Ok(Replicator { control, task })
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[derive(Debug, Default)]
struct Control {
    paused: AtomicBool,
    lag_ms: AtomicU64,
    applied: AtomicU64,
    passes: AtomicU64,
    /// Passes that read every stream without an error or a re-positioned
    /// iterator.
    clean_passes: AtomicU64,
    /// The regions, in the worker's order.
    regions: Vec<Region>,
    /// Links whose copies are held: (from, to), by region index.
    cut: Mutex<HashSet<(usize, usize)>>,
    /// Extra lag of the copies into a region, in milliseconds.
    lag_into: Mutex<HashMap<usize, u64>>,
    pending: AtomicU64,
    last_error: Mutex<Option<String>>,
}

/// A running replicator; see the [module docs](self). It stops when
/// dropped.
#[derive(Debug)]
pub struct Replicator {
    control: Arc<Control>,
    task: JoinHandle<()>,
}

impl Drop for Replicator {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Replicator {
    /// A builder.
    pub fn builder() -> ReplicatorBuilder {
        ReplicatorBuilder::default()
    }

    /// Holds every change back: the regions are partitioned. Changes made
    /// meanwhile wait, none lost.
    pub fn pause(&self) {
        self.control.paused.store(true, Ordering::SeqCst);
    }

    /// Lets changes through again.
    pub fn resume(&self) {
        self.control.paused.store(false, Ordering::SeqCst);
    }

    /// Whether the replicator is paused.
    pub fn paused(&self) -> bool {
        self.control.paused.load(Ordering::SeqCst)
    }

    /// Changes the lag; changes already waiting wait for the new one.
    pub fn set_lag(&self, lag: Duration) {
        self.control.lag_ms.store(millis(lag), Ordering::SeqCst);
    }

    fn index(&self, region: &Region) -> Result<usize, Error> {
        self.control
            .regions
            .iter()
            .position(|r| r == region)
            .ok_or_else(|| Error::Topology(quorate::TopologyError::UnknownRegion(region.clone())))
    }

    /// Holds the changes made in `from` back from `to` only (a partition
    /// of one link, or one direction of it); they wait, none lost.
    pub fn pause_link(&self, from: &Region, to: &Region) -> Result<(), Error> {
        let link = (self.index(from)?, self.index(to)?);
        self.control
            .cut
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(link);
        Ok(())
    }

    /// Lets the changes of `from` reach `to` again.
    pub fn resume_link(&self, from: &Region, to: &Region) -> Result<(), Error> {
        let link = (self.index(from)?, self.index(to)?);
        self.control
            .cut
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&link);
        Ok(())
    }

    /// Copies into `region` wait at least `lag` from when the change was
    /// read (a lagging replica): the larger of this and the replicator's
    /// own lag holds; zero removes it.
    pub fn set_lag_into(&self, region: &Region, lag: Duration) -> Result<(), Error> {
        let to = self.index(region)?;
        let mut lags = self
            .control
            .lag_into
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if lag.is_zero() {
            lags.remove(&to);
        } else {
            lags.insert(to, millis(lag));
        }
        Ok(())
    }

    /// Copies written into some region so far (including the ones that
    /// found a newer write there and changed nothing).
    pub fn applied(&self) -> u64 {
        self.control.applied.load(Ordering::SeqCst)
    }

    /// Changes seen and not yet copied everywhere.
    pub fn pending(&self) -> u64 {
        self.control.pending.load(Ordering::SeqCst)
    }

    /// The last error met reading a stream or copying a change (each is
    /// tried again), if any.
    pub fn last_error(&self) -> Option<String> {
        self.control
            .last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Waits until two passes have read every stream cleanly since the
    /// call (a read that failed or had to re-position its iterator reads
    /// that shard again on a later pass): every change written before it
    /// that is older than the lag has been copied, unless the replicator is
    /// paused, a link held ([`Replicator::pause_link`]) or lagging
    /// ([`Replicator::set_lag_into`]), or a copy failed. Gives up after
    /// twenty passes in which the streams could not be read cleanly, and
    /// says so by returning `false` ([`Replicator::last_error`] says why).
    pub async fn settle(&self) -> bool {
        let control = &self.control;
        let target = control.clean_passes.load(Ordering::SeqCst) + 2;
        let give_up = control.passes.load(Ordering::SeqCst) + 20;
        loop {
            if control.clean_passes.load(Ordering::SeqCst) >= target {
                return true;
            }
            if control.passes.load(Ordering::SeqCst) >= give_up || self.task.is_finished() {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// A conformance hook holding the followers back by pausing the
    /// replicator (it replicates every region, so a hold of any region
    /// holds all of them).
    pub fn hold_followers(&self) -> quorate::conformance::HoldFollowers {
        let control = self.control.clone();
        quorate::conformance::HoldFollowers::new(move |_region, hold| {
            control.paused.store(hold, Ordering::SeqCst);
            async { Ok(()) }
        })
    }
}

/// One region's stream of one table.
struct Source {
    region: usize,
    table: usize,
    arn: String,
    /// The open shards' iterators.
    iterators: HashMap<String, Option<String>>,
    /// The last sequence number read per shard (to re-position an expired
    /// iterator).
    last: HashMap<String, String>,
    /// Shards read to their end.
    finished: HashSet<String>,
    discovered: Instant,
}

fn failed<E>(what: String, e: E) -> Error
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let code = e.code().map(str::to_owned);
    let message = format!("{what}: {}", e.message().unwrap_or("no message"));
    Error::backend(Retryability::Permanent, code, message)
}

impl Source {
    /// The table's stream in `region`, switched on if it is off.
    async fn open(
        r: usize,
        t: usize,
        table: &mut ReplicatedTable,
        region: &RegionStreams,
    ) -> Result<Source, Error> {
        let described = region
            .dynamodb
            .describe_table()
            .table_name(&table.table)
            .send()
            .await
            .map_err(|e| {
                let e = e.into_service_error();
                if e.code() == Some("ResourceNotFoundException") {
                    Error::InvalidInput(format!(
                        "table {} does not exist in region {}",
                        table.table, region.region
                    ))
                } else {
                    failed(
                        format!("table {} in region {}", table.table, region.region),
                        e,
                    )
                }
            })?;
        table.partition = described
            .table()
            .map(|t| t.key_schema())
            .unwrap_or_default()
            .iter()
            .find(|k| k.key_type() == &KeyType::Hash)
            .map(|k| k.attribute_name().to_owned());
        let enabled = described
            .table()
            .and_then(|t| t.stream_specification())
            .is_some_and(|s| {
                s.stream_enabled() && s.stream_view_type() == Some(&StreamViewType::NewAndOldImages)
            });
        let mut arn = described
            .table()
            .and_then(|t| t.latest_stream_arn())
            .map(str::to_owned);
        if !enabled {
            let spec = StreamSpecification::builder()
                .stream_enabled(true)
                .stream_view_type(StreamViewType::NewAndOldImages)
                .build()
                .map_err(|e| Error::InvalidInput(e.to_string()))?;
            let updated = region
                .dynamodb
                .update_table()
                .table_name(&table.table)
                .stream_specification(spec)
                .send()
                .await;
            arn = match updated {
                Ok(u) => u
                    .table_description()
                    .and_then(|t| t.latest_stream_arn())
                    .map(str::to_owned),
                Err(e) => {
                    let e = e.into_service_error();
                    // Another replicator may have switched it on meanwhile.
                    let again = region
                        .dynamodb
                        .describe_table()
                        .table_name(&table.table)
                        .send()
                        .await
                        .ok();
                    let t = again.as_ref().and_then(|d| d.table());
                    let now = t.and_then(|t| t.stream_specification()).is_some_and(|s| {
                        s.stream_enabled()
                            && s.stream_view_type() == Some(&StreamViewType::NewAndOldImages)
                    });
                    if !now {
                        return Err(failed(
                            format!(
                                "switching on the stream of table {} in region {} \
                                 (a stream of another view type must be switched off first)",
                                table.table, region.region
                            ),
                            e,
                        ));
                    }
                    t.and_then(|t| t.latest_stream_arn()).map(str::to_owned)
                }
            };
        }
        let arn = arn.ok_or_else(|| {
            Error::InvalidInput(format!(
                "table {} in region {} reports no stream",
                table.table, region.region
            ))
        })?;
        Ok(Source {
            region: r,
            table: t,
            arn,
            iterators: HashMap::new(),
            last: HashMap::new(),
            finished: HashSet::new(),
            discovered: Instant::now(),
        })
    }

    /// Opens an iterator on every shard not yet known: at the stream's end
    /// when the replicator starts, from the shard's start for shards opened
    /// later (everything in them is new).
    async fn discover(&mut self, region: &RegionStreams, at_start: bool) -> Result<(), Error> {
        self.discovered = Instant::now();
        let mut shards: Vec<Shard> = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let out = region
                .streams
                .describe_stream()
                .stream_arn(&self.arn)
                .set_exclusive_start_shard_id(after.take())
                .send()
                .await
                .map_err(|e| failed(format!("stream {}", self.arn), e.into_service_error()))?;
            let Some(d) = out.stream_description() else {
                break;
            };
            shards.extend(d.shards().iter().cloned());
            match d.last_evaluated_shard_id() {
                Some(id) => after = Some(id.to_owned()),
                None => break,
            }
        }
        for shard in shards {
            let Some(id) = shard.shard_id() else { continue };
            if self.iterators.contains_key(id) || self.finished.contains(id) {
                continue;
            }
            let closed = shard
                .sequence_number_range()
                .and_then(|r| r.ending_sequence_number())
                .is_some();
            if at_start && closed {
                // Closed before the replicator started: nothing new in it.
                self.finished.insert(id.to_owned());
                continue;
            }
            let kind = if at_start {
                ShardIteratorType::Latest
            } else {
                ShardIteratorType::TrimHorizon
            };
            let iterator = region
                .streams
                .get_shard_iterator()
                .stream_arn(&self.arn)
                .shard_id(id)
                .shard_iterator_type(kind)
                .send()
                .await
                .map_err(|e| failed(format!("shard {id}"), e.into_service_error()))?;
            self.iterators
                .insert(id.to_owned(), iterator.shard_iterator().map(str::to_owned));
        }
        Ok(())
    }
}

/// A change read from a region's stream, waiting to be copied.
struct Change {
    table: usize,
    from: usize,
    /// The regions still to write it into.
    to: Vec<usize>,
    /// The new item, or `None` for a delete.
    new: Option<Item>,
    /// The deleted item's key and old image, for a delete.
    old: Option<Item>,
    keys: Item,
    seen: Instant,
}

struct Worker {
    regions: Vec<RegionStreams>,
    tables: Vec<ReplicatedTable>,
    sources: Vec<Source>,
    pending: VecDeque<Change>,
    poll: Duration,
    control: Arc<Control>,
}

impl Worker {
    async fn run(mut self) {
        loop {
            let clean = self.read().await;
            self.apply().await;
            self.control
                .pending
                .store(self.pending.len() as u64, Ordering::SeqCst);
            if clean {
                self.control.clean_passes.fetch_add(1, Ordering::SeqCst);
            }
            self.control.passes.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(self.poll).await;
        }
    }

    fn error(&self, e: String) {
        tracing::debug!(error = %e, "quorate.replicator");
        *self
            .control
            .last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(e);
    }

    /// Whether the change's item is one this replicator copies.
    fn wanted(table: &ReplicatedTable, keys: &Item, image: Option<&Item>) -> bool {
        let Some(prefix) = &table.prefix else {
            return true;
        };
        let value = match &table.filter {
            Some(attribute) => image.and_then(|i| i.get(attribute)),
            None => table.partition.as_ref().and_then(|p| keys.get(p)),
        };
        matches!(value, Some(AttributeValue::S(s)) if s.starts_with(prefix.as_str()))
    }

    /// Reads every stream once; whether every read succeeded without
    /// re-positioning an iterator (a re-positioned shard is read on the
    /// next pass).
    async fn read(&mut self) -> bool {
        let mut clean = true;
        let mut sources = std::mem::take(&mut self.sources);
        for source in &mut sources {
            let region = &self.regions[source.region];
            if source.discovered.elapsed() >= Duration::from_secs(1) {
                if let Err(e) = source.discover(region, false).await {
                    clean = false;
                    self.error(e.to_string());
                }
            }
            let shards: Vec<String> = source.iterators.keys().cloned().collect();
            for shard in shards {
                let Some(Some(iterator)) = source.iterators.get(&shard).cloned() else {
                    source.iterators.remove(&shard);
                    source.finished.insert(shard);
                    continue;
                };
                let out = match region
                    .streams
                    .get_records()
                    .shard_iterator(iterator)
                    .send()
                    .await
                {
                    Ok(out) => out,
                    Err(e) => {
                        clean = false;
                        let e = e.into_service_error();
                        if e.code() == Some("ExpiredIteratorException")
                            || e.code() == Some("TrimmedDataAccessException")
                        {
                            // Re-position after the last record read.
                            source.iterators.remove(&shard);
                            let last = source.last.get(&shard).cloned();
                            let request = region
                                .streams
                                .get_shard_iterator()
                                .stream_arn(&source.arn)
                                .shard_id(&shard);
                            let request = match last {
                                Some(n) => request
                                    .shard_iterator_type(ShardIteratorType::AfterSequenceNumber)
                                    .sequence_number(n),
                                None => request.shard_iterator_type(ShardIteratorType::TrimHorizon),
                            };
                            match request.send().await {
                                Ok(i) => {
                                    // Re-positioned: read on the next pass
                                    // (DynamoDB Local also answers so when
                                    // other tables' writes moved its
                                    // sequence numbers past an iterator).
                                    tracing::debug!(%shard, error = %e, "quorate.replicator re-positioned");
                                    source.iterators.insert(
                                        shard.clone(),
                                        i.shard_iterator().map(str::to_owned),
                                    );
                                    continue;
                                }
                                Err(again) => {
                                    self.error(format!("re-positioning in shard {shard}: {again}"));
                                    // Not finished: the next discovery
                                    // opens it again from its start.
                                    continue;
                                }
                            }
                        }
                        self.error(format!("reading shard {shard}: {e}"));
                        continue;
                    }
                };
                for record in out.records() {
                    let Some(r) = record.dynamodb() else { continue };
                    if let Some(n) = r.sequence_number() {
                        source.last.insert(shard.clone(), n.to_owned());
                    }
                    let keys = r.keys().map(convert_item).unwrap_or_default();
                    let (new, old) = match record.event_name() {
                        Some(OperationType::Remove) => (None, r.old_image().map(convert_item)),
                        _ => (r.new_image().map(convert_item), None),
                    };
                    if new.is_none() && old.is_none() {
                        continue;
                    }
                    let table = &self.tables[source.table];
                    if !Worker::wanted(table, &keys, new.as_ref().or(old.as_ref())) {
                        continue;
                    }
                    let to = (0..self.regions.len())
                        .filter(|&i| i != source.region)
                        .collect();
                    self.pending.push_back(Change {
                        table: source.table,
                        from: source.region,
                        to,
                        new,
                        old,
                        keys,
                        seen: Instant::now(),
                    });
                }
                source
                    .iterators
                    .insert(shard, out.next_shard_iterator().map(str::to_owned));
            }
        }
        self.sources = sources;
        clean
    }

    async fn apply(&mut self) {
        if self.control.paused.load(Ordering::SeqCst) {
            return;
        }
        let lag = Duration::from_millis(self.control.lag_ms.load(Ordering::SeqCst));
        let mut waiting = VecDeque::new();
        while let Some(mut change) = self.pending.pop_front() {
            if change.seen.elapsed() < lag || self.control.paused.load(Ordering::SeqCst) {
                waiting.push_back(change);
                continue;
            }
            let mut left = Vec::new();
            let (cut, lag_into) = {
                let cut = self.control.cut.lock().unwrap_or_else(|p| p.into_inner());
                let lags = self
                    .control
                    .lag_into
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                let held: Vec<usize> = change
                    .to
                    .iter()
                    .copied()
                    .filter(|&to| cut.contains(&(change.from, to)))
                    .collect();
                let lagging: Vec<usize> = change
                    .to
                    .iter()
                    .copied()
                    .filter(|to| {
                        lags.get(to)
                            .is_some_and(|&ms| change.seen.elapsed() < Duration::from_millis(ms))
                    })
                    .collect();
                (held, lagging)
            };
            for &to in &change.to {
                if cut.contains(&to) || lag_into.contains(&to) {
                    left.push(to);
                    continue;
                }
                match self.copy(&change, to).await {
                    Ok(()) => {
                        self.control.applied.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(e) => {
                        self.error(format!(
                            "copying a change of {} from {} to {}: {e}",
                            self.tables[change.table].table,
                            self.regions[change.from].region,
                            self.regions[to].region
                        ));
                        left.push(to);
                    }
                }
            }
            if !left.is_empty() {
                change.to = left;
                waiting.push_back(change);
            }
        }
        self.pending = waiting;
    }

    /// Writes `change` into region `to` unless it holds a newer write.
    async fn copy(&self, change: &Change, to: usize) -> Result<(), String> {
        let table = &self.tables[change.table];
        let client = &self.regions[to].dynamodb;
        let key_name = change
            .keys
            .keys()
            .next()
            .cloned()
            .ok_or("a change without a key")?;
        let sent = match &change.new {
            Some(new) => {
                let put = client
                    .put_item()
                    .table_name(&table.table)
                    .set_item(Some(new.clone()))
                    .expression_attribute_names("#k", key_name)
                    .expression_attribute_names("#w", &table.written_at);
                match table.stamp(new) {
                    Some((written, writer)) => put
                        .condition_expression(
                            "attribute_not_exists(#k) OR attribute_not_exists(#w) \
                             OR #w < :w OR (#w = :w AND #r < :r)",
                        )
                        .expression_attribute_names("#r", &table.writer)
                        .expression_attribute_values(":w", AttributeValue::N(written.to_string()))
                        .expression_attribute_values(":r", AttributeValue::S(writer)),
                    None => put.condition_expression(
                        "attribute_not_exists(#k) OR attribute_not_exists(#w)",
                    ),
                }
                .send()
                .await
                .map(|_| ())
                .map_err(|e| e.into_service_error().meta().clone())
            }
            None => {
                let old = change
                    .old
                    .as_ref()
                    .ok_or("a delete without its old image")?;
                let delete = client
                    .delete_item()
                    .table_name(&table.table)
                    .set_key(Some(change.keys.clone()))
                    .expression_attribute_names("#w", &table.written_at);
                match table.stamp(old) {
                    Some((written, _)) => delete
                        .condition_expression("attribute_not_exists(#w) OR #w <= :w")
                        .expression_attribute_values(":w", AttributeValue::N(written.to_string())),
                    None => delete.condition_expression("attribute_not_exists(#w)"),
                }
                .send()
                .await
                .map(|_| ())
                .map_err(|e| e.into_service_error().meta().clone())
            }
        };
        match sent {
            Ok(()) => Ok(()),
            // The destination holds a newer write: last writer wins.
            Err(e) if e.code() == Some("ConditionalCheckFailedException") => Ok(()),
            Err(e) => Err(format!(
                "{}: {}",
                e.code().unwrap_or("error"),
                e.message().unwrap_or("no message")
            )),
        }
    }
}

/// A stream's attribute value as DynamoDB's.
fn convert(v: &StreamValue) -> AttributeValue {
    match v {
        StreamValue::B(b) => AttributeValue::B(b.clone()),
        StreamValue::Bool(b) => AttributeValue::Bool(*b),
        StreamValue::Bs(b) => AttributeValue::Bs(b.clone()),
        StreamValue::L(l) => AttributeValue::L(l.iter().map(convert).collect()),
        StreamValue::M(m) => AttributeValue::M(convert_item(m)),
        StreamValue::N(n) => AttributeValue::N(n.clone()),
        StreamValue::Ns(n) => AttributeValue::Ns(n.clone()),
        StreamValue::Null(n) => AttributeValue::Null(*n),
        StreamValue::S(s) => AttributeValue::S(s.clone()),
        StreamValue::Ss(s) => AttributeValue::Ss(s.clone()),
        // A type newer than this crate: carried as null rather than
        // dropping the attribute's name.
        _ => AttributeValue::Null(true),
    }
}

fn convert_item(m: &HashMap<String, StreamValue>) -> Item {
    m.iter().map(|(k, v)| (k.clone(), convert(v))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_smithy_types::Blob;

    #[test]
    fn stream_values_convert_whole() {
        let nested = StreamValue::M(HashMap::from([
            ("s".to_owned(), StreamValue::S("x".into())),
            ("n".to_owned(), StreamValue::N("1.5".into())),
            (
                "l".to_owned(),
                StreamValue::L(vec![StreamValue::Bool(true), StreamValue::Null(true)]),
            ),
            ("b".to_owned(), StreamValue::B(Blob::new(vec![1, 2]))),
            (
                "ss".to_owned(),
                StreamValue::Ss(vec!["a".into(), "b".into()]),
            ),
            ("ns".to_owned(), StreamValue::Ns(vec!["1".into()])),
            ("bs".to_owned(), StreamValue::Bs(vec![Blob::new(vec![3])])),
        ]));
        let AttributeValue::M(m) = convert(&nested) else {
            panic!("a map stays a map")
        };
        assert_eq!(m.len(), 7);
        assert_eq!(m["s"], AttributeValue::S("x".into()));
        assert_eq!(m["n"], AttributeValue::N("1.5".into()));
        assert_eq!(
            m["l"],
            AttributeValue::L(vec![AttributeValue::Bool(true), AttributeValue::Null(true)])
        );
        assert_eq!(m["b"], AttributeValue::B(Blob::new(vec![1, 2])));
        assert_eq!(m["bs"], AttributeValue::Bs(vec![Blob::new(vec![3])]));
    }

    #[test]
    fn stamps_order_by_time_then_writer() {
        let t = ReplicatedTable::new("orders").unwrap();
        let item = |w: &str, r: &str| {
            HashMap::from([
                ("quorate_written_at".to_owned(), AttributeValue::N(w.into())),
                ("quorate_writer".to_owned(), AttributeValue::S(r.into())),
            ])
        };
        assert!(t.stamp(&item("2", "a")) > t.stamp(&item("1", "z")));
        assert!(t.stamp(&item("2", "b")) > t.stamp(&item("2", "a")));
        assert_eq!(t.stamp(&HashMap::new()), None);
        assert!(ReplicatedTable::new("no spaces allowed").is_err());
    }

    #[tokio::test]
    async fn bad_builders_are_typed_errors() {
        let sdk = aws_config::SdkConfig::builder()
            .behavior_version(aws_config::BehaviorVersion::latest())
            .build();
        let eu = Region::new("eu").unwrap();
        let one = Replicator::builder().region(eu.clone(), &sdk).start().await;
        assert!(matches!(one, Err(Error::InvalidInput(m)) if m.contains("two regions")));
        let twice = Replicator::builder()
            .region(eu.clone(), &sdk)
            .region(eu, &sdk)
            .table(ReplicatedTable::new("orders").unwrap())
            .start()
            .await;
        assert!(matches!(twice, Err(Error::InvalidInput(m)) if m.contains("twice")));
    }
}
