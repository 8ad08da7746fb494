//! Writes on tables with multi-Region strong consistency (MRSC), which
//! refuse `TransactWriteItems`: the idempotency record is kept in the item.
//!
//! A write reads the item (a consistent read, linearizable on MRSC), then
//! puts it whole — the value, the bookkeeping and the map of the record's
//! recent writes (`recent`: idempotency key → version, write time,
//! writer), this write's included — conditioned on the state it read: the
//! version, the tombstone flag and a write time before the attempt's
//! start. A write and the evidence of it are one item, so an attempt whose
//! answer is lost is found by reading the item, in any region. The map
//! keeps the [`MAX_RECENT`] newest writes within the idempotency TTL;
//! older ones are first copied into the idempotency table (as outcome
//! items), then dropped, so every committed write's outcome is in the
//! item or in that table at every moment.
//!
//! A lookup that finds neither fences the record: it moves the item's write
//! time past now and past the latest attempt start the key's claim
//! recorded, without changing its version (an absent record gets a
//! placeholder tombstone at version 0, which every reader takes as absent),
//! so no attempt sent before can still commit — every attempt is
//! conditioned on a write time before its start, and its start is claimed
//! before it is sent, so the fence holds whatever the clock of the process
//! that looks up. A retry (the key was claimed before) also reads the
//! idempotency table after the item, where outcomes moved out of the map
//! are copied before they leave it.
//!
//! The idempotency key is also claimed for its record in the idempotency
//! table (beside the read, in the same round trip), so that a key reused
//! for another record is refused as on MREC tables. MRSC tables refuse TTL:
//! those claims and carried outcomes stay until removed.
//!
//! Cost: two round trips per write (the read with the claim, then the put)
//! where MREC tables take one `TransactWriteItems`.

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_dynamodb::error::ProvideErrorMetadata;
use aws_sdk_dynamodb::types::{
    AttributeValue, Put, ReturnValue, ReturnValuesOnConditionCheckFailure,
};
use quorate::{
    Committed, Error, IdempotencyKey, Point, Precondition, Region, Retryability, Version,
    WriteRequest,
};

use super::{classify, record_put, Base, DynamoBackend, Op, Recorded};
use crate::item::{self, n, s, Item};
use crate::native::{item_size, Layout};

/// The most writes an item's `recent` map keeps.
pub(crate) const MAX_RECENT: usize = 32;

/// The bytes of one map entry beside its key and writer: the names `v`,
/// `w`, `r` and two numbers of up to 21 digits, with room to spare.
const ENTRY_OVERHEAD: usize = 64;

/// The bytes of the bookkeeping attributes other than the map, with room.
const BOOKKEEPING_BYTES: usize = 256;

/// One entry of an item's `recent` map.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Entry {
    version: Version,
    written_at: u64,
    writer: String,
}

impl Entry {
    fn attribute(&self) -> AttributeValue {
        AttributeValue::M(HashMap::from([
            ("v".to_owned(), n(self.version.0)),
            ("w".to_owned(), n(self.written_at)),
            ("r".to_owned(), s(&self.writer)),
        ]))
    }

    fn of(v: &AttributeValue) -> Option<Entry> {
        let m = v.as_m().ok()?;
        let num = |k: &str| m.get(k)?.as_n().ok()?.parse::<u64>().ok();
        Some(Entry {
            version: Version(num("v")?),
            written_at: num("w")?,
            writer: m.get("r")?.as_s().ok()?.clone(),
        })
    }

    fn committed(&self, table: &str) -> Result<Committed, Error> {
        let region = Region::new(&self.writer).map_err(|_| item::ItemError::OutOfRange {
            table: table.to_owned(),
            attribute: item::RECENT.into(),
        })?;
        Ok(Committed {
            version: self.version,
            point: Point {
                wall: self.written_at,
                logical: 0,
            },
            region,
        })
    }
}

/// The `recent` map of `found`, entry by entry (entries that do not decode
/// are dropped: they cannot be anyone's outcome).
fn recent(layout: &Layout, found: &Item) -> Vec<(String, Entry)> {
    let Some(AttributeValue::M(m)) = found.get(&layout.names.recent) else {
        return Vec::new();
    };
    m.iter()
        .filter_map(|(k, v)| Some((k.clone(), Entry::of(v)?)))
        .collect()
}

/// `idem`'s outcome, if `found` records it.
fn outcome_in(
    layout: &Layout,
    found: &Item,
    idem: &IdempotencyKey,
) -> Result<Option<Committed>, Error> {
    recent(layout, found)
        .into_iter()
        .find(|(k, _)| k == idem.as_str())
        .map(|(_, e)| e.committed(&layout.table))
        .transpose()
}

/// A transaction item's put as a `PutItem` of its own.
fn put_item(
    client: &aws_sdk_dynamodb::Client,
    put: Put,
) -> aws_sdk_dynamodb::operation::put_item::builders::PutItemFluentBuilder {
    client
        .put_item()
        .table_name(put.table_name())
        .set_item(Some(put.item().clone()))
        .set_condition_expression(put.condition_expression().map(str::to_owned))
        .set_expression_attribute_names(put.expression_attribute_names().cloned())
        .set_expression_attribute_values(put.expression_attribute_values().cloned())
        .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
}

impl DynamoBackend {
    /// The whole item of `row` in `layout`'s table, read consistently.
    async fn item_of(
        &self,
        client: &aws_sdk_dynamodb::Client,
        layout: &Layout,
        row: &str,
    ) -> Result<Option<Item>, Error> {
        let out = client
            .get_item()
            .table_name(&layout.table)
            .set_key(Some(layout.key(row)?))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| classify(e, Op::Read))?;
        Ok(out.item().cloned())
    }

    /// Copies `entries` into the idempotency table as outcome items (each
    /// only where none is), before the item drops them.
    async fn carry(
        &self,
        client: &aws_sdk_dynamodb::Client,
        key: &str,
        entries: &[(String, Entry)],
    ) -> Result<(), Error> {
        for (idem, e) in entries {
            let sent = client
                .put_item()
                .table_name(&self.inner.idempotency_table)
                .item(item::PK, s(idem))
                .item(item::RECORD_KEY, s(key))
                .item(item::VERSION, n(e.version.0))
                .item(item::WRITTEN_AT, n(e.written_at))
                .item(item::WRITER, s(&e.writer))
                .item(item::EXPIRES_AT, n(self.expires_at()))
                // Over nothing, or over the write's claim of the key.
                .condition_expression("attribute_not_exists(pk) OR attribute_not_exists(#w)")
                .expression_attribute_names("#w", item::WRITER)
                .send()
                .await;
            match sent {
                Ok(_) => {}
                Err(e) if e.code() == Some("ConditionalCheckFailedException") => {}
                Err(e) => return Err(classify(e, Op::Read)),
            }
        }
        Ok(())
    }

    /// Claims `idem` for the record `key` in the idempotency table, so that
    /// a key reused for another record is refused as it is on MREC tables,
    /// and records `start`, the start of the attempt about to be sent, so
    /// that a lookup fences past it whatever its own clock says. What the
    /// item already holds (a carried outcome) is left as it is. Whether
    /// the key was claimed (or holds an outcome) before: a retry.
    async fn claim(
        &self,
        client: &aws_sdk_dynamodb::Client,
        key: &str,
        idem: &IdempotencyKey,
        start: u64,
    ) -> Result<bool, Error> {
        let sent = client
            .update_item()
            .table_name(&self.inner.idempotency_table)
            .key(item::PK, s(idem.as_str()))
            .update_expression(
                "SET #k = if_not_exists(#k, :key), #e = if_not_exists(#e, :expires), #s = :start",
            )
            .condition_expression("attribute_not_exists(pk) OR #k = :key")
            .expression_attribute_names("#k", item::RECORD_KEY)
            .expression_attribute_names("#e", item::EXPIRES_AT)
            .expression_attribute_names("#s", item::STARTED)
            .expression_attribute_values(":key", s(key))
            .expression_attribute_values(":expires", n(self.expires_at()))
            .expression_attribute_values(":start", n(start))
            .return_values(ReturnValue::AllOld)
            .send()
            .await;
        match sent {
            Ok(out) => Ok(out.attributes().is_some_and(|a| !a.is_empty())),
            Err(e) if e.code() == Some("ConditionalCheckFailedException") => {
                Err(super::reused(key, idem))
            }
            Err(e) => Err(classify(e, Op::Read)),
        }
    }

    /// A single-record write on an MRSC table (see the module docs).
    pub(super) async fn write_in_item(
        &self,
        request: &WriteRequest<'_>,
        record: Item,
        idem: &IdempotencyKey,
    ) -> Result<Committed, Error> {
        let (layout, row) = self.route(request.key);
        let client = self.client(request.region)?;
        let mut pause = Duration::from_millis(2);
        let mut retry = false;
        loop {
            // The claim (with this attempt's start) and the read are
            // independent: one round trip.
            let mut start = self.next_start();
            let (claim, found) = tokio::join!(
                self.claim(client, request.key, idem, start),
                self.item_of(client, layout, row)
            );
            retry |= claim?;
            let found = found?;
            if let Some(done) = found
                .as_ref()
                .map(|f| outcome_in(layout, f, idem))
                .transpose()?
                .flatten()
            {
                // An earlier attempt of this write committed.
                return Ok(done);
            }
            if retry {
                // An earlier attempt may have committed and its entry been
                // carried out of the map since: the carry came before the
                // read that misses it.
                if let Recorded::Outcome(done) = self.recorded(client, request.key, idem).await? {
                    return Ok(done);
                }
            }
            let base = match &found {
                Some(f) => Base::of(&layout.fields(f))?,
                None => Base::Absent,
            };
            let current = base.live();
            let holds = match request.precondition {
                Precondition::Any => true,
                Precondition::IfAbsent => current.is_none(),
                Precondition::IfVersion(v) => current == Some(v),
            };
            if !holds {
                return Err(Error::Conflict {
                    key: request.key.to_owned(),
                    current,
                });
            }
            // Starts follow the item's last write time (a later write, or
            // a lookup's fence): a later one, claimed before it is sent.
            if let Some(w) = found
                .as_ref()
                .map(|f| layout.fields(f).written_at())
                .transpose()?
                .flatten()
            {
                if w >= start {
                    self.observe_start(w);
                    start = self.next_start();
                    retry |= self.claim(client, request.key, idem, start).await?;
                }
            }
            let version = base.last().map_or(Version::FIRST, |v| v.next());
            // The map: this write, and the newest others within the TTL;
            // the ones dropped for room are carried into the idempotency
            // table first.
            let horizon = self.now_nanos().saturating_sub(
                u64::try_from(self.inner.config.idempotency_ttl.as_nanos()).unwrap_or(u64::MAX),
            );
            let mut kept: Vec<(String, Entry)> = found
                .as_ref()
                .map(|f| recent(layout, f))
                .unwrap_or_default()
                .into_iter()
                .filter(|(_, e)| e.written_at >= horizon)
                .collect();
            kept.sort_by_key(|(_, e)| std::cmp::Reverse(e.written_at));
            let mine = Entry {
                version,
                written_at: start,
                writer: request.region.as_str().to_owned(),
            };
            // Room: at most MAX_RECENT entries, and the item within
            // DynamoDB's limit with the map.
            let mut dropped = if kept.len() >= MAX_RECENT {
                kept.split_off(MAX_RECENT - 1)
            } else {
                Vec::new()
            };
            let entry_bytes = |k: &str, e: &Entry| k.len() + e.writer.len() + ENTRY_OVERHEAD;
            let mut size = item_size(&record)
                + BOOKKEEPING_BYTES
                + layout.names.recent.len()
                + entry_bytes(idem.as_str(), &mine)
                + kept.iter().map(|(k, e)| entry_bytes(k, e)).sum::<usize>();
            while size > item::MAX_ITEM_BYTES {
                let Some(oldest) = kept.pop() else {
                    return Err(Error::InvalidInput(format!(
                        "an item of about {size} bytes with quorate's bookkeeping exceeds \
                         DynamoDB's {}-byte item limit",
                        item::MAX_ITEM_BYTES
                    )));
                };
                size -= entry_bytes(&oldest.0, &oldest.1);
                dropped.push(oldest);
            }
            if !dropped.is_empty() {
                self.carry(client, request.key, &dropped).await?;
            }
            let mut map: HashMap<String, AttributeValue> = kept
                .iter()
                .map(|(k, e)| (k.clone(), e.attribute()))
                .collect();
            map.insert(idem.as_str().to_owned(), mine.attribute());
            let put = record_put(
                layout,
                record.clone(),
                request.mutation.is_delete(),
                base,
                start,
                request.region,
            )
            .item(&layout.names.recent, AttributeValue::M(map))
            .build()
            .map_err(|e| Error::InvalidInput(e.to_string()))?;
            match put_item(client, put).send().await {
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
                Err(e) if e.code() == Some("ConditionalCheckFailedException") => {
                    // Someone wrote, or a lookup fenced, in between: go
                    // again on what is there now (which may be this
                    // write's own earlier attempt, found in the map).
                    if tokio::time::Instant::now() >= request.deadline {
                        return Err(Error::backend(
                            Retryability::Retryable,
                            Some("ConditionalCheckFailedException".into()),
                            e,
                        ));
                    }
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(100));
                }
                Err(e) => return Err(classify(e, Op::Write)),
            }
        }
    }

    /// Looks `idem` up for the write of `key` on an MRSC table, fencing the
    /// record when nothing records it (see the module docs).
    pub(super) async fn lookup_in_item(
        &self,
        region: &Region,
        key: &str,
        idem: &IdempotencyKey,
    ) -> Result<Option<Committed>, Error> {
        let (layout, row) = self.route(key);
        let client = self.client(region)?;
        let names = &layout.names;
        let mut pause = Duration::from_millis(2);
        for _ in 0..12 {
            let found = self.item_of(client, layout, row).await?;
            if let Some(f) = &found {
                if let Some(done) = outcome_in(layout, f, idem)? {
                    return Ok(Some(done));
                }
            }
            // Dropped from the map for room: carried here first. The same
            // item holds the key's claim.
            let claim = self.idem_item(client, idem).await?;
            match self.recorded_in(claim.as_ref(), key, &[key], idem)? {
                Recorded::Outcome(done) => return Ok(Some(done)),
                Recorded::Many(_) => return Err(super::reused(key, idem)),
                Recorded::Nothing | Recorded::Fence(_) => {}
            }
            // The fence lies past every attempt's start (each claimed
            // before it was sent) and past the item's write time, whatever
            // this process's clock says.
            if let Some(started) = claim
                .as_ref()
                .and_then(|i| i.get(item::STARTED))
                .and_then(|v| v.as_n().ok())
                .and_then(|n| n.parse::<u64>().ok())
            {
                self.observe_start(started);
            }
            if let Some(w) = found
                .as_ref()
                .map(|f| layout.fields(f).written_at())
                .transpose()?
                .flatten()
            {
                self.observe_start(w);
            }
            let fence = self.next_start();
            let sent = match &found {
                Some(_) => client
                    .update_item()
                    .table_name(&layout.table)
                    .set_key(Some(layout.key(row)?))
                    .update_expression("SET #w = :fence")
                    .condition_expression(
                        "attribute_exists(#k) AND attribute_not_exists(#r.#i) \
                         AND (attribute_not_exists(#w) OR #w < :fence)",
                    )
                    .expression_attribute_names("#k", layout.partition_name())
                    .expression_attribute_names("#r", &names.recent)
                    .expression_attribute_names("#i", idem.as_str())
                    .expression_attribute_names("#w", &names.written_at)
                    .expression_attribute_values(":fence", n(fence))
                    .send()
                    .await
                    .map(|_| ())
                    .map_err(|e| (e.code().map(str::to_owned), classify(e, Op::Read))),
                None => {
                    let mut placeholder = layout.key(row)?;
                    placeholder.insert(names.version.clone(), n(0));
                    placeholder.insert(names.deleted.clone(), AttributeValue::Bool(true));
                    placeholder.insert(names.written_at.clone(), n(fence));
                    placeholder.insert(names.writer.clone(), s(region.as_str()));
                    client
                        .put_item()
                        .table_name(&layout.table)
                        .set_item(Some(placeholder))
                        .condition_expression("attribute_not_exists(#k)")
                        .expression_attribute_names("#k", layout.partition_name())
                        .send()
                        .await
                        .map(|_| ())
                        .map_err(|e| (e.code().map(str::to_owned), classify(e, Op::Read)))
                }
            };
            match sent {
                Ok(()) => {}
                // The item changed in between: look again.
                Err((Some(code), _)) if code == "ConditionalCheckFailedException" => {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(100));
                    continue;
                }
                Err((_, e)) => return Err(e),
            }
            // Fenced: no attempt started before can commit. One that
            // committed before may have been carried meanwhile.
            return match self.recorded(client, key, idem).await? {
                Recorded::Outcome(done) => Ok(Some(done)),
                Recorded::Many(_) => Err(super::reused(key, idem)),
                Recorded::Nothing | Recorded::Fence(_) => Ok(None),
            };
        }
        Err(Error::backend(
            Retryability::Retryable,
            Some("quorate.lookup_contended".into()),
            format!("the record {key} kept changing while its write was looked up"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_and_bad_ones_are_no_outcome() {
        let e = Entry {
            version: Version(7),
            written_at: 1_796_650_000_000_000_000,
            writer: "eu".into(),
        };
        assert_eq!(Entry::of(&e.attribute()), Some(e.clone()));
        let c = e.committed("t").unwrap();
        assert_eq!(
            (c.version, c.point.wall, c.region.as_str()),
            (Version(7), e.written_at, "eu")
        );
        assert_eq!(Entry::of(&s("7")), None);
        let partial = AttributeValue::M(HashMap::from([("v".to_owned(), n(7))]));
        assert_eq!(Entry::of(&partial), None);

        let layout = Layout::own("records");
        let idem = IdempotencyKey::new("k-1").unwrap();
        let mut found = Item::new();
        assert_eq!(outcome_in(&layout, &found, &idem).unwrap(), None);
        found.insert(
            item::RECENT.into(),
            AttributeValue::M(HashMap::from([
                ("k-1".to_owned(), e.attribute()),
                ("k-2".to_owned(), s("garbage")),
            ])),
        );
        assert_eq!(outcome_in(&layout, &found, &idem).unwrap(), Some(c));
        assert_eq!(
            recent(&layout, &found).len(),
            1,
            "the undecodable entry is dropped"
        );
        let bad_writer = Entry {
            writer: "no spaces".into(),
            ..e
        };
        assert!(bad_writer.committed("t").is_err());
    }
}
