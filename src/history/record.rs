//! Recording operations as they happen.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::time::Instant;

use super::{Event, EventType, HistoryPolicy, OpKind, RecordKind, TxRecord, TxVersion};
use crate::backend::Backend;
use crate::client::{Client, WriteOptions};
use crate::error::Error;
use crate::policy::ReadPolicy;
use crate::record::{Committed, Precondition, Read};
use crate::session::Session;

/// Collects events with times from one monotonic clock (tokio's, so a
/// paused runtime records virtual time).
#[derive(Debug)]
pub struct Recorder {
    start: Instant,
    events: Mutex<Vec<Event>>,
    next_process: AtomicU64,
    /// Where each process's client is, stamped on its invokes.
    clients: Mutex<HashMap<u64, String>>,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder {
            start: Instant::now(),
            events: Mutex::new(Vec::new()),
            next_process: AtomicU64::new(1),
            clients: Mutex::new(HashMap::new()),
        }
    }
}

impl Recorder {
    /// A recorder whose clock starts now.
    pub fn new() -> Arc<Recorder> {
        Arc::new(Recorder::default())
    }

    /// Nanoseconds since the recorder started.
    pub fn now(&self) -> u64 {
        u64::try_from((Instant::now() - self.start).as_nanos()).unwrap_or(u64::MAX)
    }

    /// A fresh process number.
    pub fn process(&self) -> u64 {
        self.next_process.fetch_add(1, Ordering::Relaxed)
    }

    /// Notes that `process`'s client is now in `region`: its next invokes
    /// carry it as `client`.
    pub fn locate(&self, process: u64, region: &str) {
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        match clients.get_mut(&process) {
            Some(at) if at == region => {}
            Some(at) => region.clone_into(at),
            None => {
                clients.insert(process, region.to_owned());
            }
        }
    }

    /// Appends an event, stamping its time (and, on an invoke without one,
    /// where the process's client is, if [`Recorder::locate`] said).
    pub fn record(&self, mut event: Event) {
        event.time = self.now();
        if event.kind == EventType::Invoke && event.client.is_none() {
            event.client = self
                .clients
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&event.process)
                .cloned();
        }
        self.events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(event);
    }

    /// The events so far, in recording order.
    pub fn events(&self) -> Vec<Event> {
        self.events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Records a read's invoke.
    pub fn invoke_read(&self, process: u64, session: &str, key: &str, policy: HistoryPolicy) {
        let mut e = Event::new(process, EventType::Invoke, OpKind::Read, key, 0);
        e.session = Some(session.to_owned());
        e.policy = Some(policy);
        self.record(e);
    }

    /// Records a read's completion: `Some(version)` (0 = absent) when it
    /// succeeded, `None` when it failed.
    pub fn complete_read(
        &self,
        process: u64,
        session: &str,
        key: &str,
        outcome: Option<(u64, Option<&str>)>,
    ) {
        let kind = if outcome.is_some() {
            EventType::Ok
        } else {
            EventType::Fail
        };
        let mut e = Event::new(process, kind, OpKind::Read, key, 0);
        e.session = Some(session.to_owned());
        if let Some((version, region)) = outcome {
            e.version = Some(version);
            e.region = region.map(str::to_owned);
        }
        self.record(e);
    }

    /// Records a write's invoke: a `cas` when `expect` is set.
    pub fn invoke_write(
        &self,
        process: u64,
        session: &str,
        key: &str,
        expect: Option<u64>,
        idem: Option<&str>,
    ) {
        let op = if expect.is_some() {
            OpKind::Cas
        } else {
            OpKind::Write
        };
        let mut e = Event::new(process, EventType::Invoke, op, key, 0);
        e.session = Some(session.to_owned());
        e.expect = expect;
        e.idem = idem.map(str::to_owned);
        self.record(e);
    }

    /// Records a delete's invoke, conditional when `expect` is set.
    pub fn invoke_delete(
        &self,
        process: u64,
        session: &str,
        key: &str,
        expect: Option<u64>,
        idem: Option<&str>,
    ) {
        let mut e = Event::new(process, EventType::Invoke, OpKind::Delete, key, 0);
        e.session = Some(session.to_owned());
        e.expect = expect;
        e.idem = idem.map(str::to_owned);
        self.record(e);
    }

    /// Records a multi-record write's invoke: its records, in order (the
    /// first names the event).
    pub fn invoke_txn(
        &self,
        process: u64,
        session: &str,
        records: Vec<TxRecord>,
        idem: Option<&str>,
    ) {
        let key = records.first().map_or("", |r| r.key.as_str()).to_owned();
        let mut e = Event::new(process, EventType::Invoke, OpKind::Txn, &key, 0);
        e.session = Some(session.to_owned());
        e.idem = idem.map(str::to_owned);
        e.records = Some(records);
        self.record(e);
    }

    /// Records a multi-record write's completion from its result: `ok`
    /// with every written record's version, `fail` when it definitely did
    /// not apply, `info` when it may have. `key` is its first record's.
    pub fn complete_txn(
        &self,
        process: u64,
        session: &str,
        key: &str,
        result: &Result<crate::Transacted, Error>,
    ) {
        let (kind, versions, region) = match result {
            // Committed, but not yet visible where one of its records was
            // checked: the versions of the others are not known here, so
            // the write is recorded as one that may have applied (it has).
            Err(Error::NotVisible { .. }) => (EventType::Info, None, None),
            Ok(t) => (
                EventType::Ok,
                Some(
                    t.versions
                        .iter()
                        .map(|(k, v)| TxVersion {
                            key: k.clone(),
                            version: v.0,
                        })
                        .collect(),
                ),
                Some(t.region.as_str().to_owned()),
            ),
            Err(e) if e.is_ambiguous() => (EventType::Info, None, None),
            Err(_) => (EventType::Fail, None, None),
        };
        let mut e = Event::new(process, kind, OpKind::Txn, key, 0);
        e.session = Some(session.to_owned());
        e.versions = versions;
        e.region = region;
        self.record(e);
    }

    /// Records a write's completion from its result: `ok` with the version,
    /// `fail` when it definitely did not apply, `info` when it may have.
    pub fn complete_write(
        &self,
        process: u64,
        session: &str,
        key: &str,
        cas: bool,
        result: &Result<Committed, Error>,
    ) {
        let op = if cas { OpKind::Cas } else { OpKind::Write };
        self.complete(process, session, key, op, result);
    }

    /// Records a delete's completion from its result, as
    /// [`Recorder::complete_write`] does.
    pub fn complete_delete(
        &self,
        process: u64,
        session: &str,
        key: &str,
        result: &Result<Committed, Error>,
    ) {
        self.complete(process, session, key, OpKind::Delete, result);
    }

    fn complete(
        &self,
        process: u64,
        session: &str,
        key: &str,
        op: OpKind,
        result: &Result<Committed, Error>,
    ) {
        let (kind, version, region) = match result {
            Ok(c) => (
                EventType::Ok,
                Some(c.version.0),
                Some(c.region.as_str().to_owned()),
            ),
            // Committed, but not yet visible where it was checked.
            Err(Error::NotVisible { version, .. }) => (EventType::Ok, Some(version.0), None),
            Err(e) if e.is_ambiguous() => (EventType::Info, None, None),
            Err(_) => (EventType::Fail, None, None),
        };
        let mut e = Event::new(process, kind, op, key, 0);
        e.session = Some(session.to_owned());
        e.version = version;
        e.region = region;
        self.record(e);
    }

    /// Writes the history as JSON Lines.
    pub fn write_jsonl(&self, out: impl std::io::Write) -> std::io::Result<()> {
        super::write_jsonl(out, self.events().iter())
    }
}

/// A [`Client`] whose every operation is recorded, as one process; the
/// process works in one session at a time and may move to another (a
/// worker serving one user's request, then another's).
#[derive(Debug)]
pub struct RecordedClient<B> {
    client: Client<B>,
    session: Session,
    name: String,
    process: u64,
    recorder: Arc<Recorder>,
}

impl<B: Backend> RecordedClient<B> {
    /// Records `client`'s operations in `session` (named `name` in the
    /// history) as a new process of `recorder`.
    pub fn new(
        client: Client<B>,
        session: Session,
        name: &str,
        recorder: Arc<Recorder>,
    ) -> RecordedClient<B> {
        RecordedClient {
            process: recorder.process(),
            client,
            session,
            name: name.to_owned(),
            recorder,
        }
    }

    /// The recorded client.
    pub fn client(&self) -> &Client<B> {
        &self.client
    }

    /// The session.
    pub fn session(&self) -> &Session {
        &self.session
    }

    /// Its process number in the history.
    pub fn process(&self) -> u64 {
        self.process
    }

    /// Goes on in `session`, named `name` in the history: later operations
    /// of this process belong to it (the checker orders them by this
    /// process's program order within each session).
    pub fn switch_session(&mut self, session: Session, name: &str) {
        self.session = session;
        self.name = name.to_owned();
    }

    /// [`Client::read`], recorded.
    pub async fn read(&self, key: &str, policy: ReadPolicy) -> Result<Read<Bytes>, Error> {
        self.recorder
            .invoke_read(self.process, &self.name, key, policy.into());
        let result = self.client.read(&self.session, key, policy).await;
        let outcome = result.as_ref().ok().map(|r| {
            (
                r.observed().map_or(0, |v| v.0),
                Some(r.freshness.region.as_str()),
            )
        });
        self.recorder
            .complete_read(self.process, &self.name, key, outcome);
        result
    }

    /// [`Client::write`], recorded; the idempotency key is fixed here so the
    /// history names it.
    pub async fn write(
        &self,
        key: &str,
        value: Bytes,
        precondition: Precondition,
        options: &WriteOptions,
    ) -> Result<Committed, Error> {
        let mut options = options.clone();
        let idem = options
            .idempotency_key
            .get_or_insert_with(crate::IdempotencyKey::generate)
            .clone();
        let expect = precondition.expected();
        self.recorder
            .invoke_write(self.process, &self.name, key, expect, Some(idem.as_str()));
        let result = self
            .client
            .write(&self.session, key, value, precondition, &options)
            .await;
        self.recorder
            .complete_write(self.process, &self.name, key, expect.is_some(), &result);
        result
    }

    /// [`Client::transact`], recorded; the idempotency key is fixed here so
    /// the history names it.
    pub async fn transact(
        &self,
        ops: &[crate::TxOp<'_>],
        options: &WriteOptions,
    ) -> Result<crate::Transacted, Error> {
        let mut options = options.clone();
        let idem = options
            .idempotency_key
            .get_or_insert_with(crate::IdempotencyKey::generate)
            .clone();
        self.recorder.invoke_txn(
            self.process,
            &self.name,
            tx_records(ops),
            Some(idem.as_str()),
        );
        let result = self.client.transact(&self.session, ops, &options).await;
        let key = ops.first().map_or("", |op| op.key);
        self.recorder
            .complete_txn(self.process, &self.name, key, &result);
        result
    }

    /// [`Client::delete`], recorded.
    pub async fn delete(
        &self,
        key: &str,
        precondition: Precondition,
        options: &WriteOptions,
    ) -> Result<Committed, Error> {
        let mut options = options.clone();
        let idem = options
            .idempotency_key
            .get_or_insert_with(crate::IdempotencyKey::generate)
            .clone();
        let expect = precondition.expected();
        self.recorder
            .invoke_delete(self.process, &self.name, key, expect, Some(idem.as_str()));
        let result = self
            .client
            .delete(&self.session, key, precondition, &options)
            .await;
        self.recorder
            .complete_delete(self.process, &self.name, key, &result);
        result
    }
}

/// A multi-record write's records as histories list them.
pub(crate) fn tx_records(ops: &[crate::TxOp<'_>]) -> Vec<TxRecord> {
    ops.iter()
        .map(|op| TxRecord {
            key: op.key.to_owned(),
            kind: match op.action {
                crate::TxAction::Write(crate::Mutation::Put(_)) => RecordKind::Put,
                crate::TxAction::Write(crate::Mutation::Delete) => RecordKind::Delete,
                crate::TxAction::Check => RecordKind::Check,
            },
            expect: op.precondition.expected(),
        })
        .collect()
}
