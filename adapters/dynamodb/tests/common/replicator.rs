//! A stand-in for global-table replication, which DynamoDB Local does not
//! emulate: a scan loop copying items between the regions' tables, with a
//! controllable lag, a pause, and last-writer-wins on `(written_at, writer)`
//! as MREC global tables resolve concurrent writes. It copies only items
//! whose key (or, for idempotency items, record key) starts with its
//! prefix, so concurrent tests do not see each other's replication. It
//! replicates quorate's tables, and native tables it is given.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use quorate_dynamodb::aws_sdk_dynamodb::types::AttributeValue;
use quorate_dynamodb::aws_sdk_dynamodb::{self, error::ProvideErrorMetadata};
use quorate_dynamodb::item::{PK, RECORD_KEY, WRITER, WRITTEN_AT};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::{sdk, REGIONS, TABLE};

type Item = HashMap<String, AttributeValue>;

#[derive(Default)]
struct Control {
    paused: AtomicBool,
    lag_ms: AtomicU64,
    applied: AtomicU64,
    passes: AtomicU64,
}

/// A running replicator; it stops when dropped.
pub struct Replicator {
    control: Arc<Control>,
    task: JoinHandle<()>,
}

impl Drop for Replicator {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One table the replicator copies.
#[derive(Clone, Debug)]
pub struct Replicated {
    /// The table.
    pub table: String,
    /// The string attribute that must start with `prefix`.
    pub filter: String,
    /// The prefix.
    pub prefix: String,
    /// The key attributes (the partition key first).
    pub keys: Vec<String>,
    /// The write time and writer attributes last-writer-wins compares.
    pub written_at: String,
    pub writer: String,
}

impl Replicated {
    /// quorate's records table, for keys under `prefix`.
    pub fn records(prefix: &str) -> Replicated {
        Replicated {
            table: TABLE.to_owned(),
            filter: PK.to_owned(),
            prefix: prefix.to_owned(),
            keys: vec![PK.to_owned()],
            written_at: WRITTEN_AT.to_owned(),
            writer: WRITER.to_owned(),
        }
    }

    /// quorate's idempotency table, for records under `prefix`.
    pub fn idempotency(prefix: &str) -> Replicated {
        Replicated {
            table: format!("{TABLE}-idempotency"),
            filter: RECORD_KEY.to_owned(),
            ..Replicated::records(prefix)
        }
    }

    /// A native table, for partition keys under `prefix`.
    pub fn native(table: &quorate_dynamodb::NativeTable, prefix: &str) -> Replicated {
        let mut keys = vec![table.partition_key.name.clone()];
        keys.extend(table.sort_key.as_ref().map(|k| k.name.clone()));
        Replicated {
            table: table.table.clone(),
            filter: table.partition_key.name.clone(),
            prefix: prefix.to_owned(),
            keys,
            written_at: table.written_at.clone(),
            writer: table.writer.clone(),
        }
    }

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

    /// The item's key, as one text.
    fn key(&self, item: &Item) -> Option<String> {
        let parts: Option<Vec<String>> = self
            .keys
            .iter()
            .map(|k| item.get(k).map(|v| format!("{v:?}")))
            .collect();
        parts.map(|p| p.join("\u{0}"))
    }
}

async fn scan(
    client: &aws_sdk_dynamodb::Client,
    table: &str,
    attribute: &str,
    prefix: &str,
) -> Result<Vec<Item>, String> {
    let mut items = Vec::new();
    let mut start: Option<Item> = None;
    loop {
        let out = client
            .scan()
            .table_name(table)
            .consistent_read(true)
            .filter_expression("begins_with(#a, :p)")
            .expression_attribute_names("#a", attribute)
            .expression_attribute_values(":p", AttributeValue::S(prefix.to_owned()))
            .set_exclusive_start_key(start.take())
            .send()
            .await
            .map_err(|e| e.to_string())?;
        items.extend(out.items().iter().cloned());
        match out.last_evaluated_key() {
            Some(k) if !k.is_empty() => start = Some(k.clone()),
            _ => return Ok(items),
        }
    }
}

impl Replicator {
    /// Starts replicating keys under `prefix` between the two regions with
    /// `lag` (the time an item must wait after the replicator first sees
    /// it).
    pub fn start(endpoint: &str, prefix: &str, lag: Duration) -> Replicator {
        Replicator::start_tables(
            endpoint,
            vec![Replicated::records(prefix), Replicated::idempotency(prefix)],
            lag,
        )
    }

    /// Starts replicating `tables` between the two regions with `lag`.
    pub fn start_tables(endpoint: &str, tables: Vec<Replicated>, lag: Duration) -> Replicator {
        let control = Arc::new(Control::default());
        control
            .lag_ms
            .store(lag.as_millis() as u64, Ordering::SeqCst);
        let clients: Vec<_> = REGIONS.iter().map(|(_, aws)| sdk(endpoint, aws)).collect();
        let c = control.clone();
        let task = tokio::spawn(async move {
            // When each pending copy was first seen.
            let mut seen: HashMap<(usize, String, String, (u64, String)), Instant> = HashMap::new();
            loop {
                for t in &tables {
                    let table = &t.table;
                    for (src, dst) in [(0usize, 1usize), (1, 0)] {
                        let (Ok(from), Ok(to)) = (
                            scan(&clients[src], table, &t.filter, &t.prefix).await,
                            scan(&clients[dst], table, &t.filter, &t.prefix).await,
                        ) else {
                            continue;
                        };
                        let there: HashMap<String, (u64, String)> = to
                            .iter()
                            .filter_map(|i| Some((t.key(i)?, t.stamp(i)?)))
                            .collect();
                        for item in from {
                            let (Some(key), Some(st)) = (t.key(&item), t.stamp(&item)) else {
                                continue;
                            };
                            if there.get(&key).is_some_and(|d| *d >= st) {
                                continue;
                            }
                            let first = *seen
                                .entry((dst, table.clone(), key.clone(), st.clone()))
                                .or_insert_with(Instant::now);
                            let lag = Duration::from_millis(c.lag_ms.load(Ordering::SeqCst));
                            if c.paused.load(Ordering::SeqCst) || first.elapsed() < lag {
                                continue;
                            }
                            // Last writer wins, atomically against local writes.
                            let put = clients[dst]
                                .put_item()
                                .table_name(table)
                                .set_item(Some(item))
                                .condition_expression(
                                    "attribute_not_exists(#k) OR #w < :w OR (#w = :w AND #r < :r)",
                                )
                                .expression_attribute_names("#k", &t.keys[0])
                                .expression_attribute_names("#w", &t.written_at)
                                .expression_attribute_names("#r", &t.writer)
                                .expression_attribute_values(
                                    ":w",
                                    AttributeValue::N(st.0.to_string()),
                                )
                                .expression_attribute_values(":r", AttributeValue::S(st.1.clone()))
                                .send()
                                .await;
                            match put {
                                Ok(_) => {
                                    c.applied.fetch_add(1, Ordering::SeqCst);
                                }
                                Err(e) if e.code() == Some("ConditionalCheckFailedException") => {}
                                Err(_) => {}
                            }
                        }
                    }
                }
                seen.retain(|_, t| t.elapsed() < Duration::from_secs(600));
                c.passes.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        Replicator { control, task }
    }

    /// Stops copying (items written meanwhile wait).
    pub fn pause(&self) {
        self.control.paused.store(true, Ordering::SeqCst);
    }

    /// Copies again.
    pub fn resume(&self) {
        self.control.paused.store(false, Ordering::SeqCst);
    }

    /// A conformance hook holding the followers back by pausing the
    /// replicator (it replicates every region, so a hold of any region
    /// holds all of them).
    pub fn hold_followers(&self) -> quorate_dynamodb::conformance::HoldFollowers {
        let control = self.control.clone();
        quorate_dynamodb::conformance::HoldFollowers::new(move |_region, hold| {
            control.paused.store(hold, Ordering::SeqCst);
            async { Ok(()) }
        })
    }

    /// Changes the lag.
    pub fn set_lag(&self, lag: Duration) {
        self.control
            .lag_ms
            .store(lag.as_millis() as u64, Ordering::SeqCst);
    }

    /// Items copied so far.
    pub fn applied(&self) -> u64 {
        self.control.applied.load(Ordering::SeqCst)
    }

    /// Waits until two full passes have run (everything older than the lag
    /// and not paused has been copied).
    pub async fn settle(&self) {
        let target = self.control.passes.load(Ordering::SeqCst) + 2;
        while self.control.passes.load(Ordering::SeqCst) < target {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
