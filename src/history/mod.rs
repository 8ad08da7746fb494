//! Operation histories: the JSON Lines format, a parser that rejects bad
//! input with its line number, a recorder, and the anomaly checker.
//!
//! One event per line, Jepsen-style:
//!
//! ```text
//! {"process":1,"type":"invoke","op":"write","key":"acct:7","session":"s1","idem":"w-91","time":1200}
//! {"process":1,"type":"ok","op":"write","key":"acct:7","session":"s1","version":4,"time":1350}
//! {"process":2,"type":"invoke","op":"read","key":"acct:7","session":"s2","policy":"bounded:5000","time":1400}
//! {"process":2,"type":"ok","op":"read","key":"acct:7","session":"s2","version":3,"region":"eu-west","time":1420}
//! ```
//!
//! A `delete` is a write that leaves a tombstone: its `ok` carries the
//! tombstone's version, a read of the deleted key observes that version,
//! and its invoke carries `expect` when it is conditional.
//!
//! A `txn` is a multi-record write: its invoke lists its `records` (each a
//! `key`, a `kind` — `put`, `delete` or `check` — and an optional
//! `expect`), its `key` is the first record's, and its `ok` lists the
//! `versions` each written record got:
//!
//! ```text
//! {"process":3,"type":"invoke","op":"txn","key":"acct:1","records":[{"key":"acct:1","kind":"put","expect":4},{"key":"acct:2","kind":"put","expect":9}],"idem":"t-7","time":2000}
//! {"process":3,"type":"ok","op":"txn","key":"acct:1","versions":[{"key":"acct:1","version":5},{"key":"acct:2","version":10}],"time":2100}
//! ```
//!
//! A drill also records each fault it brings in force and lifts, as a
//! line of its own (Jepsen's `:nemesis` process): `nemesis` is `start` or
//! `stop`, `fault` names it, `time` is when the change began, and `error`
//! (optional) says what could not be applied at that moment. The checks read and validate these lines and judge only the
//! operations; the EDN export passes them on as `:nemesis` events.
//!
//! ```text
//! {"nemesis":"start","fault":"eu-west isolated","time":3000000000}
//! {"nemesis":"stop","fault":"eu-west isolated","time":9000000000}
//! ```
//!
//! A process has at most one operation in flight; a completion (`ok`,
//! `fail`, `info`) closes that process's open `invoke`. `time` is in
//! nanoseconds of one monotonic clock; `a` precedes `b` when `a`'s completion
//! time is below `b`'s invoke time.

mod check;
pub mod cli;
pub mod edn;
mod fast;
mod record;

use std::fmt;
use std::io::BufRead;

pub use check::{check, check_events, Anomaly, Example, Report, ANOMALIES};
#[cfg(feature = "drill")]
pub(crate) use record::tx_records;
pub use record::{RecordedClient, Recorder};

/// What an event says happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventType {
    /// The operation started.
    Invoke,
    /// It completed and took effect (a read: it observed `version`).
    Ok,
    /// It definitely did not take effect.
    Fail,
    /// Its outcome is unknown.
    Info,
}

/// The kind of operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OpKind {
    /// A read of one key.
    Read,
    /// An unconditional write.
    Write,
    /// A conditional write; the invoke carries `expect` (0 = must be absent).
    Cas,
    /// A delete, which writes a tombstone version; conditional when the
    /// invoke carries `expect`.
    Delete,
    /// A multi-record write; its invoke lists `records`, its `ok` the
    /// `versions` written.
    Txn,
}

impl OpKind {
    /// Its name in histories.
    pub fn name(self) -> &'static str {
        match self {
            OpKind::Read => "read",
            OpKind::Write => "write",
            OpKind::Cas => "cas",
            OpKind::Delete => "delete",
            OpKind::Txn => "txn",
        }
    }
}

/// What a multi-record write does to one record, as histories name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RecordKind {
    /// Stores a value.
    Put,
    /// Deletes the record (a tombstone version).
    Delete,
    /// Writes nothing; its `expect` must hold.
    Check,
}

/// One record of a multi-record write's invoke.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TxRecord {
    /// The record's key.
    pub key: String,
    /// What the write does to it.
    pub kind: RecordKind,
    /// The version it expects (0 = absent); none when unconditional.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect: Option<u64>,
}

/// The version one record of a multi-record write got (on its `ok`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TxVersion {
    /// The record's key.
    pub key: String,
    /// Its new version.
    pub version: u64,
}

/// The policy a read was invoked with, as histories name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HistoryPolicy {
    /// `strong`
    Strong,
    /// `session`
    Session,
    /// `bounded:<ms>`
    Bounded(u64),
    /// `eventual`
    Eventual,
}

impl std::str::FromStr for HistoryPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "strong" => Ok(HistoryPolicy::Strong),
            "session" => Ok(HistoryPolicy::Session),
            "eventual" => Ok(HistoryPolicy::Eventual),
            _ => {
                let ms = s
                    .strip_prefix("bounded:")
                    .filter(|m| !m.is_empty() && m.bytes().all(|b| b.is_ascii_digit()))
                    .and_then(|m| m.parse::<u64>().ok())
                    .ok_or_else(|| {
                        format!(
                            "unknown policy {:?} (expected strong, session, eventual or bounded:<ms>)",
                            s.chars().take(40).collect::<String>()
                        )
                    })?;
                Ok(HistoryPolicy::Bounded(ms))
            }
        }
    }
}

impl fmt::Display for HistoryPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HistoryPolicy::Strong => f.write_str("strong"),
            HistoryPolicy::Session => f.write_str("session"),
            HistoryPolicy::Bounded(ms) => write!(f, "bounded:{ms}"),
            HistoryPolicy::Eventual => f.write_str("eventual"),
        }
    }
}

impl From<crate::ReadPolicy> for HistoryPolicy {
    fn from(p: crate::ReadPolicy) -> Self {
        match p {
            crate::ReadPolicy::Strong => HistoryPolicy::Strong,
            crate::ReadPolicy::Session => HistoryPolicy::Session,
            crate::ReadPolicy::BoundedStaleness(s) => {
                HistoryPolicy::Bounded(s.duration().as_millis() as u64)
            }
        }
    }
}

impl serde::Serialize for HistoryPolicy {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for HistoryPolicy {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// One line of a history.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Event {
    /// The process (one operation in flight at a time).
    pub process: u64,
    /// Invoke or completion.
    #[serde(rename = "type")]
    pub kind: EventType,
    /// Read, write or cas.
    pub op: OpKind,
    /// The key.
    pub key: String,
    /// The session (defaults to the process).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    /// A read's policy (on its invoke).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<HistoryPolicy>,
    /// A cas's expected version (on its invoke; 0 = absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect: Option<u64>,
    /// On `ok`: the version written or observed (0 = absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    /// A write's idempotency key (on its invoke).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idem: Option<String>,
    /// Where it was served.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Where the client was (on an invoke; optional, ignored by the checks:
    /// reports draw a lane per client region).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
    /// A multi-record write's records (on its invoke).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub records: Option<Vec<TxRecord>>,
    /// The versions a multi-record write gave its written records (on its
    /// `ok`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub versions: Option<Vec<TxVersion>>,
    /// Nanoseconds of the recorder's monotonic clock.
    pub time: u64,
}

/// Whether a fault line brings its fault in force or lifts it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FaultPhase {
    /// The fault is in force from `time` on.
    Start,
    /// The fault is lifted at `time`.
    Stop,
}

/// One fault line of a history: a drill's fault brought in force or
/// lifted. The checks skip it; it says when each fault held.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultEvent {
    /// Start or stop.
    pub nemesis: FaultPhase,
    /// The fault, as reports label it (`eu-west isolated`).
    pub fault: String,
    /// What could not be applied at this boundary, if anything (this
    /// fault, or another changed at the same moment: a deployment applies
    /// a boundary's changes together): the run then did not run its
    /// scenario.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Nanoseconds of the recorder's monotonic clock when the change
    /// began (as Jepsen's nemesis records its invoke).
    pub time: u64,
}

impl Event {
    /// An event with only the required fields set.
    pub fn new(process: u64, kind: EventType, op: OpKind, key: &str, time: u64) -> Event {
        Event {
            process,
            kind,
            op,
            key: key.to_owned(),
            session: None,
            policy: None,
            expect: None,
            version: None,
            idem: None,
            region: None,
            client: None,
            records: None,
            versions: None,
            time,
        }
    }
}

/// The longest line of a history, in bytes: an event is a few hundred
/// bytes, and a longer line is refused before it is held in memory.
pub const MAX_LINE: usize = 1 << 20;

/// A history that could not be read.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    /// Reading failed.
    #[error("reading the history: {0}")]
    Io(#[from] std::io::Error),
    /// A line is longer than [`MAX_LINE`] bytes (it is not read whole).
    #[error("line {line} is longer than {MAX_LINE} bytes")]
    LineTooLong {
        /// 1-based line number.
        line: usize,
    },
    /// A line is not a valid event, or breaks the format's rules.
    #[error("line {line}: {message}")]
    Malformed {
        /// 1-based line number.
        line: usize,
        /// What was wrong.
        message: String,
    },
}

/// Borrowed form used by the parser (no allocation per field).
#[derive(serde::Deserialize)]
#[cfg_attr(test, derive(Debug, PartialEq))]
struct RawEvent<'a> {
    process: u64,
    #[serde(rename = "type")]
    kind: EventType,
    op: OpKind,
    #[serde(borrow)]
    key: std::borrow::Cow<'a, str>,
    #[serde(default, borrow)]
    session: Option<std::borrow::Cow<'a, str>>,
    #[serde(default)]
    policy: Option<HistoryPolicy>,
    #[serde(default)]
    expect: Option<u64>,
    #[serde(default)]
    version: Option<u64>,
    #[serde(default, borrow)]
    idem: Option<std::borrow::Cow<'a, str>>,
    #[serde(default, borrow)]
    region: Option<std::borrow::Cow<'a, str>>,
    #[serde(default, borrow)]
    records: Option<Vec<RawRecord<'a>>>,
    #[serde(default, borrow)]
    versions: Option<Vec<RawVersion<'a>>>,
    time: u64,
}

#[derive(serde::Deserialize)]
#[cfg_attr(test, derive(Debug, PartialEq))]
struct RawRecord<'a> {
    #[serde(borrow)]
    key: std::borrow::Cow<'a, str>,
    kind: RecordKind,
    #[serde(default)]
    expect: Option<u64>,
}

#[derive(serde::Deserialize)]
#[cfg_attr(test, derive(Debug, PartialEq))]
struct RawVersion<'a> {
    #[serde(borrow)]
    key: std::borrow::Cow<'a, str>,
    version: u64,
}

/// Receives validated events from [`parse`].
pub(crate) trait EventSink {
    fn event(&mut self, line: usize, e: ParsedEvent<'_>) -> Result<(), String>;

    /// A fault line; the checks have no use for it.
    fn fault(&mut self, line: usize, f: FaultEvent) -> Result<(), String> {
        let _ = (line, f);
        Ok(())
    }
}

/// A validated event, borrowing from the line.
pub(crate) struct ParsedEvent<'a> {
    pub(crate) process: u64,
    pub(crate) kind: EventType,
    pub(crate) op: OpKind,
    pub(crate) key: &'a str,
    pub(crate) session: Option<&'a str>,
    pub(crate) policy: Option<HistoryPolicy>,
    pub(crate) expect: Option<u64>,
    pub(crate) version: Option<u64>,
    pub(crate) idem: Option<&'a str>,
    pub(crate) region: Option<&'a str>,
    /// A multi-record write's records: key, kind, expect.
    pub(crate) records: Option<Vec<(&'a str, RecordKind, Option<u64>)>>,
    /// A multi-record write's versions: key, version.
    pub(crate) versions: Option<Vec<(&'a str, u64)>>,
    pub(crate) time: u64,
}

/// Reads JSON Lines, validating each event's fields (not yet the pairing of
/// invokes and completions, which the checker does). Blank lines are
/// skipped. Never panics, whatever the bytes.
pub(crate) fn parse(
    mut input: impl BufRead,
    sink: &mut impl EventSink,
) -> Result<(), HistoryError> {
    let mut buf = Vec::with_capacity(256);
    let mut line = 0;
    loop {
        buf.clear();
        let limit = MAX_LINE as u64 + 1;
        if std::io::Read::take(&mut input, limit).read_until(b'\n', &mut buf)? == 0 {
            return Ok(());
        }
        line += 1;
        if buf.len() > MAX_LINE && buf.last() != Some(&b'\n') {
            return Err(HistoryError::LineTooLong { line });
        }
        let text = std::str::from_utf8(&buf).map_err(|_| HistoryError::Malformed {
            line,
            message: "not UTF-8".into(),
        })?;
        let text = text.trim();
        if text.is_empty() {
            continue;
        }
        let raw: RawEvent<'_> = match fast::parse_event(text) {
            Some(raw) => raw,
            None => match serde_json::from_str(text) {
                Ok(raw) => raw,
                Err(e) => {
                    let fault = fault_line(text, e)
                        .map_err(|message| HistoryError::Malformed { line, message })?;
                    sink.fault(line, fault)
                        .map_err(|message| HistoryError::Malformed { line, message })?;
                    continue;
                }
            },
        };
        let event = ParsedEvent {
            process: raw.process,
            kind: raw.kind,
            op: raw.op,
            key: &raw.key,
            session: raw.session.as_deref(),
            policy: raw.policy,
            expect: raw.expect,
            version: raw.version,
            idem: raw.idem.as_deref(),
            region: raw.region.as_deref(),
            records: raw.records.as_ref().map(|rs| {
                rs.iter()
                    .map(|r| (r.key.as_ref(), r.kind, r.expect))
                    .collect()
            }),
            versions: raw
                .versions
                .as_ref()
                .map(|vs| vs.iter().map(|v| (v.key.as_ref(), v.version)).collect()),
            time: raw.time,
        };
        validate(&event).map_err(|message| HistoryError::Malformed { line, message })?;
        sink.event(line, event)
            .map_err(|message| HistoryError::Malformed { line, message })?;
    }
}

/// A line that is not an operation event: a fault line, or the event's
/// own error (`event_error`) when it is not one either.
fn fault_line(text: &str, event_error: serde_json::Error) -> Result<FaultEvent, String> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|_| format!("not a valid event: {event_error}"))?;
    if value.get("nemesis").is_none() {
        return Err(format!("not a valid event: {event_error}"));
    }
    serde_json::from_value(value).map_err(|e| format!("not a valid fault line: {e}"))
}

fn validate(e: &ParsedEvent<'_>) -> Result<(), String> {
    if e.op == OpKind::Txn {
        return validate_txn(e);
    }
    if e.records.is_some() || e.versions.is_some() {
        return Err("only a txn carries \"records\" or \"versions\"".into());
    }
    match (e.kind, e.op) {
        (EventType::Invoke, OpKind::Cas) if e.expect.is_none() => {
            Err("a cas invoke needs \"expect\" (0 = must be absent)".into())
        }
        (EventType::Invoke, OpKind::Read | OpKind::Write) if e.expect.is_some() => {
            Err("only a cas invoke carries \"expect\"".into())
        }
        (EventType::Ok, OpKind::Read) if e.version.is_none() => {
            Err("an ok read needs \"version\" (0 = absent)".into())
        }
        (EventType::Ok, OpKind::Write | OpKind::Cas | OpKind::Delete)
            if e.version.is_none_or(|v| v == 0) =>
        {
            Err("an ok write needs a positive \"version\"".into())
        }
        (EventType::Invoke, OpKind::Write | OpKind::Cas | OpKind::Delete) if e.policy.is_some() => {
            Err("only a read invoke carries \"policy\"".into())
        }
        _ => Ok(()),
    }
}

/// The most records one `txn` may list.
pub const MAX_TXN_RECORDS: usize = 1000;

fn validate_txn(e: &ParsedEvent<'_>) -> Result<(), String> {
    if e.expect.is_some() || e.policy.is_some() {
        return Err("a txn carries \"expect\" per record, and no \"policy\"".into());
    }
    match e.kind {
        EventType::Invoke => {
            if e.versions.is_some() || e.version.is_some() {
                return Err("a txn invoke carries no versions".into());
            }
            let records = e.records.as_ref().ok_or("a txn invoke needs \"records\"")?;
            if records.is_empty() || records.len() > MAX_TXN_RECORDS {
                return Err(format!(
                    "a txn lists 1 to {MAX_TXN_RECORDS} records, not {}",
                    records.len()
                ));
            }
            if records[0].0 != e.key {
                return Err("a txn's \"key\" is its first record's".into());
            }
            if !records.iter().any(|r| r.1 != RecordKind::Check) {
                return Err("a txn writes at least one record".into());
            }
            if records
                .iter()
                .any(|r| r.1 == RecordKind::Check && r.2.is_none())
            {
                return Err("a txn's check record needs \"expect\"".into());
            }
            let mut keys: Vec<&str> = records.iter().map(|r| r.0).collect();
            keys.sort_unstable();
            if keys.windows(2).any(|w| w[0] == w[1]) {
                return Err("a txn lists a record twice".into());
            }
            Ok(())
        }
        EventType::Ok => {
            if e.records.is_some() || e.version.is_some() {
                return Err("a txn completion carries \"versions\" only".into());
            }
            let versions = e.versions.as_ref().ok_or("an ok txn needs \"versions\"")?;
            if versions.iter().any(|v| v.1 == 0) {
                return Err("an ok txn's versions are positive".into());
            }
            Ok(())
        }
        _ => {
            if e.records.is_some() || e.versions.is_some() || e.version.is_some() {
                return Err("a txn that failed or is unknown carries no versions".into());
            }
            Ok(())
        }
    }
}

/// Writes events and fault lines as JSON Lines, merged in time order (an
/// event before a fault line of the same time).
pub fn write_jsonl_with_faults(
    mut out: impl std::io::Write,
    events: &[Event],
    faults: &[FaultEvent],
) -> std::io::Result<()> {
    // Stable: events of one time keep their order, and come before the
    // fault lines of that time.
    let mut lines: Vec<(u64, bool, usize)> = events
        .iter()
        .enumerate()
        .map(|(i, e)| (e.time, false, i))
        .chain(faults.iter().enumerate().map(|(i, f)| (f.time, true, i)))
        .collect();
    lines.sort_by_key(|&(time, fault, _)| (time, fault));
    for (_, fault, i) in lines {
        if fault {
            serde_json::to_writer(&mut out, &faults[i])?;
        } else {
            serde_json::to_writer(&mut out, &events[i])?;
        }
        out.write_all(b"\n")?;
    }
    out.flush()
}

/// Writes events as JSON Lines.
pub fn write_jsonl<'a>(
    mut out: impl std::io::Write,
    events: impl IntoIterator<Item = &'a Event>,
) -> std::io::Result<()> {
    for e in events {
        serde_json::to_writer(&mut out, e)?;
        out.write_all(b"\n")?;
    }
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    struct Count(usize);
    impl EventSink for Count {
        fn event(&mut self, _: usize, _: ParsedEvent<'_>) -> Result<(), String> {
            self.0 += 1;
            Ok(())
        }
    }

    fn parse_str(s: &str) -> Result<usize, HistoryError> {
        let mut c = Count(0);
        parse(s.as_bytes(), &mut c).map(|_| c.0)
    }

    #[test]
    fn a_line_too_long_is_refused_before_it_is_held() {
        let ok =
            r#"{"process":1,"type":"invoke","op":"read","key":"k","policy":"strong","time":1}"#;
        let long = format!(
            "{ok}\n{{\"process\":1,\"type\":\"ok\",\"op\":\"read\",\"key\":\"{}\"",
            "k".repeat(3 * MAX_LINE)
        );
        assert!(matches!(
            parse_str(&long),
            Err(HistoryError::LineTooLong { line: 2 })
        ));
        // A line of exactly the limit is read.
        let padded = format!("{ok}{}\n", " ".repeat(MAX_LINE - ok.len() - 1));
        assert_eq!(padded.len(), MAX_LINE);
        assert_eq!(parse_str(&padded).unwrap(), 1);
    }

    #[test]
    fn parses_the_documented_example() {
        let text = r#"{"process":1,"type":"invoke","op":"write","key":"acct:7","session":"s1","idem":"w-91","time":1200}
{"process":1,"type":"ok","op":"write","key":"acct:7","session":"s1","version":4,"time":1350}

{"process":2,"type":"invoke","op":"read","key":"acct:7","session":"s2","policy":"bounded:5000","time":1400}
{"process":2,"type":"ok","op":"read","key":"acct:7","session":"s2","version":3,"region":"eu-west","time":1420,"value":{"x":[1,2]}}
"#;
        assert_eq!(parse_str(text).unwrap(), 4);
    }

    #[test]
    fn fault_lines_are_read_apart_from_operations() {
        struct Both(usize, Vec<FaultEvent>);
        impl EventSink for Both {
            fn event(&mut self, _: usize, _: ParsedEvent<'_>) -> Result<(), String> {
                self.0 += 1;
                Ok(())
            }
            fn fault(&mut self, _: usize, f: FaultEvent) -> Result<(), String> {
                self.1.push(f);
                Ok(())
            }
        }
        let text = r#"{"nemesis":"start","fault":"eu-west isolated","time":5}
{"process":1,"type":"invoke","op":"read","key":"k","policy":"strong","time":6}
{"nemesis":"stop","fault":"eu-west isolated","error":"proxy gone","time":7}
{"process":1,"type":"ok","op":"read","key":"k","version":0,"time":8}
"#;
        let mut sink = Both(0, Vec::new());
        parse(text.as_bytes(), &mut sink).unwrap();
        assert_eq!(sink.0, 2);
        // The checker judges the operations and names the fault that
        // could not be applied.
        let report = check(text.as_bytes()).unwrap();
        assert_eq!((report.ops, report.total()), (1, 0));
        assert_eq!(
            report.fault_errors,
            ["line 3: stop eu-west isolated: proxy gone"]
        );
        assert!(report.render().contains("could not be applied"));
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(
            json["fault_errors"][0],
            "line 3: stop eu-west isolated: proxy gone"
        );
        assert_eq!(
            sink.1,
            vec![
                FaultEvent {
                    nemesis: FaultPhase::Start,
                    fault: "eu-west isolated".into(),
                    error: None,
                    time: 5
                },
                FaultEvent {
                    nemesis: FaultPhase::Stop,
                    fault: "eu-west isolated".into(),
                    error: Some("proxy gone".into()),
                    time: 7
                },
            ]
        );
        // Written back merged by time, read back the same.
        let events = [
            Event::new(1, EventType::Invoke, OpKind::Read, "k", 6),
            Event::new(1, EventType::Ok, OpKind::Read, "k", 8),
        ];
        let mut out = Vec::new();
        write_jsonl_with_faults(&mut out, &events, &sink.1).unwrap();
        let written = String::from_utf8(out).unwrap();
        let times: Vec<&str> = written
            .lines()
            .map(|l| l.rsplit("\"time\":").next().unwrap())
            .collect();
        assert_eq!(times, ["5}", "6}", "7}", "8}"]);
        // Bad fault lines are named as such.
        for (bad, says) in [
            (r#"{"nemesis":"begin","fault":"x","time":1}"#, "fault line"),
            (r#"{"nemesis":"start","time":1}"#, "fault line"),
            (
                r#"{"nemesis":"start","fault":"x","time":1,"process":2}"#,
                "fault line",
            ),
            (r#"{"nemesis":"stop","fault":"x","time":-1}"#, "fault line"),
            (r#"{"fault":"x","time":1}"#, "not a valid event"),
        ] {
            let e = parse_str(bad).unwrap_err().to_string();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn names_the_bad_line() {
        let cases = [
            ("{\"process\":1}", 1, "not a valid event"),
            (
                r#"{"process":1,"type":"invoke","op":"cas","key":"k","time":1}"#,
                1,
                "expect",
            ),
            (
                r#"{"process":1,"type":"ok","op":"read","key":"k","time":1}"#,
                1,
                "version",
            ),
            (
                r#"{"process":1,"type":"ok","op":"write","key":"k","version":0,"time":1}"#,
                1,
                "positive",
            ),
            (
                r#"{"process":1,"type":"invoke","op":"read","key":"k","policy":"bounded:x","time":1}"#,
                1,
                "policy",
            ),
            (
                r#"{"process":-1,"type":"invoke","op":"read","key":"k","time":1}"#,
                1,
                "not a valid event",
            ),
            (
                "\n\n{\"process\":1,\"type\":\"begin\",\"op\":\"read\",\"key\":\"k\",\"time\":1}",
                3,
                "not a valid event",
            ),
        ];
        for (text, line, needle) in cases {
            match parse_str(text) {
                Err(HistoryError::Malformed { line: l, message }) => {
                    assert_eq!(l, line, "{text}");
                    assert!(message.contains(needle), "{message} lacks {needle}");
                }
                other => panic!("{text}: expected an error, got {other:?}"),
            }
        }
        assert!(matches!(
            parse(&[0xff, 0xfe, b'\n'][..], &mut Count(0)),
            Err(HistoryError::Malformed { line: 1, .. })
        ));
    }

    #[test]
    fn events_round_trip() {
        let mut e = Event::new(3, EventType::Invoke, OpKind::Read, "k", 10);
        e.policy = Some(HistoryPolicy::Bounded(250));
        e.session = Some("s".into());
        let mut out = Vec::new();
        write_jsonl(&mut out, [&e]).unwrap();
        let back: Event = serde_json::from_slice(&out).unwrap();
        assert_eq!(back, e);
        assert_eq!(
            String::from_utf8(out).unwrap().trim(),
            r#"{"process":3,"type":"invoke","op":"read","key":"k","session":"s","policy":"bounded:250","time":10}"#
        );
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse(&bytes[..], &mut Count(0));
        }

        #[test]
        fn arbitrary_json_lines_never_panic(lines in proptest::collection::vec(
            r#"\{("process":-?[0-9]{1,3},?|"type":"(invoke|ok|fail|info|x)",?|"op":"(read|write|cas)",?|"key":"[a-z]{0,2}",?|"version":[0-9]{1,2},?|"expect":[0-9],?|"time":[0-9]{1,4},?|"policy":"(strong|bounded:[0-9]{0,3}|x)",?){0,8}\}"#, 0..8)) {
            let text = lines.join("\n");
            let _ = parse(text.as_bytes(), &mut Count(0));
        }
    }
}
