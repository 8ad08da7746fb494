//! The anomaly checker: per-key version indexes, no search over
//! interleavings.

use std::collections::{HashMap, HashSet};
use std::io::BufRead;

use super::{
    parse, Event, EventSink, EventType, HistoryError, HistoryPolicy, OpKind, ParsedEvent,
    RecordKind,
};

/// Every anomaly the checker reports, in report order.
pub const ANOMALIES: [&str; 9] = [
    "stale-read",
    "future-read",
    "read-your-writes",
    "monotonic-reads",
    "monotonic-writes",
    "staleness-bound",
    "lost-update",
    "duplicate-application",
    "fractured-read",
];

/// One kind of anomaly.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Anomaly {
    /// A strong read missed a write that completed before it started.
    StaleRead,
    /// A read saw a version written only after it completed, or never written.
    FutureRead,
    /// A session read missed the session's own completed write.
    ReadYourWrites,
    /// A session read went back behind an earlier read of the session.
    MonotonicReads,
    /// A session's later write got a lower version.
    MonotonicWrites,
    /// A bounded read was older than its bound allows.
    StalenessBound,
    /// Two conditional writes won on the same version, or two logical writes
    /// got the same version.
    LostUpdate,
    /// One idempotency key applied as two versions.
    DuplicateApplication,
    /// A strong read missed one record of a multi-record write after
    /// another strong read had seen another of its records: the write was
    /// visible in part.
    FracturedRead,
}

impl Anomaly {
    /// The anomaly's name in reports.
    pub fn name(self) -> &'static str {
        ANOMALIES[self as usize]
    }

    const ALL: [Anomaly; 9] = [
        Anomaly::StaleRead,
        Anomaly::FutureRead,
        Anomaly::ReadYourWrites,
        Anomaly::MonotonicReads,
        Anomaly::MonotonicWrites,
        Anomaly::StalenessBound,
        Anomaly::LostUpdate,
        Anomaly::DuplicateApplication,
        Anomaly::FracturedRead,
    ];
}

/// The first occurrences of an anomaly, with the events involved.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Example {
    /// The anomaly's name.
    pub anomaly: &'static str,
    /// The key.
    pub key: String,
    /// What is wrong, in words.
    pub explanation: String,
    /// The events of the operations involved (invoke and completion).
    pub events: Vec<Event>,
}

/// The checker's verdict.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Report {
    /// Operations in the history.
    pub ops: u64,
    /// Count per anomaly name; every name is present.
    pub anomalies: std::collections::BTreeMap<&'static str, u64>,
    /// The first examples of each anomaly found.
    pub examples: Vec<Example>,
    /// Per operation (in invoke order): whether a rule flagged it. Not part
    /// of the JSON report.
    #[serde(skip)]
    pub flagged: Vec<bool>,
    /// The history's fault lines that say a fault could not be applied
    /// (`line N: start eu-west isolated: why`): the drill that recorded
    /// them did not run its scenario as written.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub fault_errors: Vec<String>,
}

impl Report {
    /// Total anomalies of every kind.
    pub fn total(&self) -> u64 {
        self.anomalies.values().sum()
    }

    /// The count of one anomaly.
    pub fn count(&self, a: Anomaly) -> u64 {
        self.anomalies.get(a.name()).copied().unwrap_or(0)
    }

    /// A human-readable report.
    pub fn render(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let _ = writeln!(s, "{} operations, {} anomalies", self.ops, self.total());
        for name in ANOMALIES {
            let n = self.anomalies.get(name).copied().unwrap_or(0);
            let _ = writeln!(s, "  {name:<22} {n}");
        }
        if !self.fault_errors.is_empty() {
            let _ = writeln!(
                s,
                "faults that could not be applied (the drill did not run as written):"
            );
            for e in &self.fault_errors {
                let _ = writeln!(s, "  {e}");
            }
        }
        for ex in &self.examples {
            let _ = writeln!(s, "\n{} on {}: {}", ex.anomaly, ex.key, ex.explanation);
            for e in &ex.events {
                let _ = writeln!(s, "  {}", serde_json::to_string(e).unwrap_or_default());
            }
        }
        s
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Ok,
    Fail,
    Info,
}

/// One operation: an invoke and its completion.
#[derive(Clone, Debug)]
struct Op {
    process: u64,
    kind: OpKind,
    key: u32,
    session: u32,
    policy: Option<HistoryPolicy>,
    expect: Option<u64>,
    idem: Option<u32>,
    invoke: u64,
    /// `u64::MAX` when the operation never completed.
    complete: u64,
    outcome: Outcome,
    version: u64,
    region: Option<u32>,
    /// The multi-record write this is one record of.
    txn: Option<u32>,
}

/// FNV-1a for the checker's maps: short keys, no adversary (the input is a
/// file the caller chose), several times faster than SipHash here.
#[derive(Default, Clone, Copy)]
struct Fnv(u64);

impl std::hash::Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        let mut h = if self.0 == 0 {
            0xcbf2_9ce4_8422_2325
        } else {
            self.0
        };
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        self.0 = h;
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0 ^ n)
            .wrapping_mul(0x9e37_79b9_7f4a_7c15)
            .rotate_left(29);
    }
}

type FastMap<K, V> = HashMap<K, V, std::hash::BuildHasherDefault<Fnv>>;

/// Names to dense ids. Each name is stored once, in one buffer; the map
/// goes from the name's 64-bit hash to its id, and the rare name whose hash
/// another name already has goes to a second map keyed by the name itself.
#[derive(Default)]
struct Interner {
    text: String,
    /// Where each name ends in `text` (it starts where the one before ends).
    ends: Vec<usize>,
    by_hash: FastMap<u64, u32>,
    collided: HashMap<Box<str>, u32>,
}

impl Interner {
    fn hash(s: &str) -> u64 {
        use std::hash::Hasher;
        let mut h = Fnv::default();
        h.write(s.as_bytes());
        // Spread FNV's low bits, which the map's buckets use.
        h.finish()
            .wrapping_mul(0x9e37_79b9_7f4a_7c15)
            .rotate_left(32)
    }

    fn id(&mut self, s: &str) -> u32 {
        let hash = Interner::hash(s);
        match self.by_hash.get(&hash) {
            Some(&id) if self.name(id) == s => id,
            Some(_) => match self.collided.get(s) {
                Some(&id) => id,
                None => {
                    let id = self.push(s);
                    self.collided.insert(s.into(), id);
                    id
                }
            },
            None => {
                let id = self.push(s);
                self.by_hash.insert(hash, id);
                id
            }
        }
    }

    fn push(&mut self, s: &str) -> u32 {
        self.text.push_str(s);
        self.ends.push(self.text.len());
        (self.ends.len() - 1) as u32
    }

    /// The id of `s`, if it was interned.
    fn get(&self, s: &str) -> Option<u32> {
        match self.by_hash.get(&Interner::hash(s)) {
            Some(&id) if self.name(id) == s => Some(id),
            Some(_) => self.collided.get(s).copied(),
            None => None,
        }
    }

    fn name(&self, id: u32) -> &str {
        let end = self.ends[id as usize];
        let start = match id {
            0 => 0,
            _ => self.ends[id as usize - 1],
        };
        &self.text[start..end]
    }

    fn len(&self) -> usize {
        self.ends.len()
    }
}

#[derive(Default)]
struct Builder {
    ops: Vec<Op>,
    /// Per process, its open operation: its first op, how many ops it is
    /// (a multi-record write is one per written record), the key its
    /// completion names, and its line.
    open: FastMap<u64, Open>,
    /// How many multi-record writes there are.
    txns: u32,
    keys: Interner,
    sessions: Interner,
    idems: Interner,
    regions: Interner,
    /// Fault lines with an error, as the report shows them.
    fault_errors: Vec<String>,
}

/// An operation invoked and not yet completed.
struct Open {
    first: usize,
    count: usize,
    op: OpKind,
    key: u32,
    line: usize,
}

impl EventSink for Builder {
    fn fault(&mut self, line: usize, f: super::FaultEvent) -> Result<(), String> {
        if let Some(e) = f.error {
            let phase = match f.nemesis {
                super::FaultPhase::Start => "start",
                super::FaultPhase::Stop => "stop",
            };
            self.fault_errors
                .push(format!("line {line}: {phase} {}: {e}", f.fault));
        }
        Ok(())
    }

    fn event(&mut self, line: usize, e: ParsedEvent<'_>) -> Result<(), String> {
        if e.kind == EventType::Invoke {
            if let Some(open) = self.open.get(&e.process) {
                return Err(format!(
                    "process {} invokes while its operation from line {} is still open",
                    e.process, open.line
                ));
            }
            let session = match e.session {
                Some(s) => self.sessions.id(s),
                // Processes are their own sessions by default; keep the
                // namespace apart from named sessions.
                None => self.sessions.id(&format!("\u{0}process-{}", e.process)),
            };
            let key = self.keys.id(e.key);
            let idem = e.idem.map(|i| self.idems.id(i));
            let first = self.ops.len();
            let op = |kind: OpKind, key: u32, expect: Option<u64>, txn: Option<u32>| Op {
                process: e.process,
                kind,
                key,
                session,
                policy: e.policy,
                expect,
                idem,
                invoke: e.time,
                complete: u64::MAX,
                outcome: Outcome::Info,
                version: 0,
                region: None,
                txn,
            };
            match &e.records {
                // A multi-record write is one write per written record, of
                // one logical write (its idempotency key) and one
                // transaction; records only checked write nothing.
                Some(records) => {
                    let txn = self.txns;
                    self.txns += 1;
                    for &(k, kind, expect) in records {
                        let kind = match (kind, expect) {
                            (RecordKind::Check, _) => continue,
                            (RecordKind::Delete, _) => OpKind::Delete,
                            (RecordKind::Put, Some(_)) => OpKind::Cas,
                            (RecordKind::Put, None) => OpKind::Write,
                        };
                        let k = self.keys.id(k);
                        self.ops.push(op(kind, k, expect, Some(txn)));
                    }
                }
                None => self.ops.push(op(e.op, key, e.expect, None)),
            }
            self.open.insert(
                e.process,
                Open {
                    first,
                    count: self.ops.len() - first,
                    op: e.op,
                    key,
                    line,
                },
            );
            return Ok(());
        }
        let Some(open) = self.open.remove(&e.process) else {
            return Err(format!(
                "process {} completes an operation it never invoked",
                e.process
            ));
        };
        if open.op != e.op || self.keys.name(open.key) != e.key {
            return Err(format!(
                "process {}'s completion ({:?} {}) does not match its invoke",
                e.process, e.op, e.key
            ));
        }
        let region = e.region.map(|r| self.regions.id(r));
        let outcome = match e.kind {
            EventType::Ok => Outcome::Ok,
            EventType::Fail => Outcome::Fail,
            _ => Outcome::Info,
        };
        let ops = open.first..open.first + open.count;
        if let (Some(versions), Outcome::Ok) = (&e.versions, outcome) {
            // Every written record named once, nothing else.
            if versions.len() != open.count {
                return Err(format!(
                    "an ok txn names {} versions for its {} written records",
                    versions.len(),
                    open.count
                ));
            }
            for &(k, v) in versions {
                let named = self.keys.get(k);
                let op = ops
                    .clone()
                    .find(|&i| Some(self.ops[i].key) == named && self.ops[i].version == 0)
                    .ok_or_else(|| {
                        format!("an ok txn names a version for {k:?}, which it did not write")
                    })?;
                self.ops[op].version = v;
            }
        }
        for i in ops {
            let op = &mut self.ops[i];
            if e.time < op.invoke {
                return Err(format!(
                    "completion at {} precedes its invoke at {}",
                    e.time, op.invoke
                ));
            }
            op.complete = e.time;
            op.region = region.or(op.region);
            op.outcome = outcome;
            if outcome == Outcome::Ok && op.txn.is_none() {
                op.version = e.version.unwrap_or(0);
            }
        }
        Ok(())
    }
}

/// Prefix maxima of versions over completion times: "the highest version
/// among entries completed before t".
struct PrefixMax {
    times: Vec<u64>,
    max: Vec<u64>,
}

impl PrefixMax {
    fn new(mut entries: Vec<(u64, u64)>) -> PrefixMax {
        entries.sort_unstable();
        let mut max = Vec::with_capacity(entries.len());
        let mut m = 0;
        for &(_, v) in &entries {
            m = m.max(v);
            max.push(m);
        }
        PrefixMax {
            times: entries.into_iter().map(|(t, _)| t).collect(),
            max,
        }
    }

    /// Highest version completed strictly before `t`.
    fn before(&self, t: u64) -> u64 {
        let n = self.times.partition_point(|&c| c < t);
        if n == 0 {
            0
        } else {
            self.max[n - 1]
        }
    }

    /// Highest version completed at or before `t`.
    fn at_or_before(&self, t: u64) -> u64 {
        let n = self.times.partition_point(|&c| c <= t);
        if n == 0 {
            0
        } else {
            self.max[n - 1]
        }
    }
}

/// Per session, prefix maxima of versions over completion times, for all
/// the sessions of one key in one sorted list: "the highest version of
/// session s among its entries completed before t".
struct SessionPrefix {
    /// (session, completion, the session's highest version up to here).
    entries: Vec<(u32, u64, u64)>,
}

impl SessionPrefix {
    fn new(mut entries: Vec<(u32, u64, u64)>) -> SessionPrefix {
        entries.sort_unstable();
        let mut session = None;
        let mut max = 0;
        for e in &mut entries {
            if session != Some(e.0) {
                session = Some(e.0);
                max = 0;
            }
            max = max.max(e.2);
            e.2 = max;
        }
        SessionPrefix { entries }
    }

    /// The highest version of `session` completed strictly before `t`.
    fn before(&self, session: u32, t: u64) -> u64 {
        let n = self
            .entries
            .partition_point(|&(s, c, _)| (s, c) < (session, t));
        match n.checked_sub(1).map(|i| self.entries[i]) {
            Some((s, _, max)) if s == session => max,
            _ => 0,
        }
    }
}

/// The writes that produced `version`, from a list sorted by version.
fn producers_of(writers: &[(u64, usize)], version: u64) -> &[(u64, usize)] {
    let lo = writers.partition_point(|&(v, _)| v < version);
    let hi = lo + writers[lo..].partition_point(|&(v, _)| v == version);
    &writers[lo..hi]
}

const EXAMPLES_PER_ANOMALY: usize = 3;

struct Findings<'a> {
    counts: [u64; 9],
    examples: Vec<Example>,
    flagged: Vec<bool>,
    b: &'a Builder,
}

impl Findings<'_> {
    fn add(&mut self, a: Anomaly, ops: &[usize], explanation: impl FnOnce() -> String) {
        self.counts[a as usize] += 1;
        for &o in ops.iter().take(1) {
            self.flagged[o] = true;
        }
        if self.counts[a as usize] as usize <= EXAMPLES_PER_ANOMALY {
            let op = &self.b.ops[ops[0]];
            self.examples.push(Example {
                anomaly: a.name(),
                key: self.b.keys.name(op.key).to_owned(),
                explanation: explanation(),
                events: ops.iter().flat_map(|&o| self.events(o)).collect(),
            });
        }
    }

    fn events(&self, index: usize) -> Vec<Event> {
        let b = self.b;
        let op = &b.ops[index];
        let session = b.sessions.name(op.session).to_owned();
        let session = (!session.starts_with('\u{0}')).then_some(session);
        let key = b.keys.name(op.key);
        let mut invoke = Event::new(op.process, EventType::Invoke, op.kind, key, op.invoke);
        invoke.session = session.clone();
        invoke.policy = op.policy;
        invoke.expect = op.expect;
        invoke.idem = op.idem.map(|i| b.idems.name(i).to_owned());
        let mut out = vec![invoke];
        if op.complete != u64::MAX {
            let kind = match op.outcome {
                Outcome::Ok => EventType::Ok,
                Outcome::Fail => EventType::Fail,
                Outcome::Info => EventType::Info,
            };
            let mut done = Event::new(op.process, kind, op.kind, key, op.complete);
            done.session = session;
            done.version = (op.outcome == Outcome::Ok).then_some(op.version);
            done.region = op.region.map(|r| b.regions.name(r).to_owned());
            out.push(done);
        }
        out
    }
}

fn is_write(op: &Op) -> bool {
    matches!(op.kind, OpKind::Write | OpKind::Cas | OpKind::Delete)
}

/// The version a conditional write was based on, when the history says:
/// the one it expected, unless it expected the key absent on a key that
/// has deletes (absent then means "at some tombstone", and a write after
/// a delete continues from the tombstone's version).
fn expected_base(op: &Op, key_has_deletes: bool) -> Option<u64> {
    match op.expect {
        Some(0) if key_has_deletes => None,
        e => e,
    }
}

/// Reads a JSON Lines history and checks it against every rule.
///
/// ```
/// use quorate::history::check;
///
/// // Process 1 wrote version 1 and later read the key as absent: a stale
/// // read (and a read-your-writes violation).
/// let history = r#"
/// {"process":1,"type":"invoke","op":"cas","key":"a","expect":0,"time":1}
/// {"process":1,"type":"ok","op":"cas","key":"a","version":1,"time":2}
/// {"process":1,"type":"invoke","op":"read","key":"a","policy":"session","time":3}
/// {"process":1,"type":"ok","op":"read","key":"a","version":0,"time":4}
/// "#;
/// let report = check(history.as_bytes())?;
/// assert!(report.total() > 0);
/// assert!(report.render().contains("read-your-writes"));
/// # Ok::<(), quorate::history::HistoryError>(())
/// ```
pub fn check(input: impl BufRead) -> Result<Report, HistoryError> {
    let mut b = Builder::default();
    parse(input, &mut b)?;
    Ok(analyse(&b))
}

/// Checks events already in memory (the drills' recorder).
pub fn check_events(events: &[Event]) -> Result<Report, HistoryError> {
    let mut b = Builder::default();
    for (i, e) in events.iter().enumerate() {
        let parsed = ParsedEvent {
            process: e.process,
            kind: e.kind,
            op: e.op,
            key: &e.key,
            session: e.session.as_deref(),
            policy: e.policy,
            expect: e.expect,
            version: e.version,
            idem: e.idem.as_deref(),
            region: e.region.as_deref(),
            records: e.records.as_ref().map(|rs| {
                rs.iter()
                    .map(|r| (r.key.as_str(), r.kind, r.expect))
                    .collect()
            }),
            versions: e
                .versions
                .as_ref()
                .map(|vs| vs.iter().map(|v| (v.key.as_str(), v.version)).collect()),
            time: e.time,
        };
        super::validate(&parsed)
            .and_then(|()| b.event(i + 1, parsed))
            .map_err(|message| HistoryError::Malformed {
                line: i + 1,
                message,
            })?;
    }
    Ok(analyse(&b))
}

fn analyse(b: &Builder) -> Report {
    let mut f = Findings {
        counts: [0; 9],
        examples: Vec::new(),
        flagged: vec![false; b.ops.len()],
        b,
    };
    // A logical write (one idempotency key) is invoked when its first
    // attempt was, whatever attempt reports its version.
    let mut first_invoke: Vec<u64> = vec![u64::MAX; b.idems.len()];
    for op in &b.ops {
        if let Some(k) = op.idem {
            let t = &mut first_invoke[k as usize];
            *t = (*t).min(op.invoke);
        }
    }
    let mut by_key: Vec<Vec<usize>> = vec![Vec::new(); b.keys.len()];
    for (i, op) in b.ops.iter().enumerate() {
        by_key[op.key as usize].push(i);
    }
    for ops in &by_key {
        check_key(b, ops, &first_invoke, &mut f);
    }
    check_idempotency(b, &mut f);
    check_fractured(b, &by_key, &mut f);
    let anomalies = Anomaly::ALL
        .iter()
        .map(|a| (a.name(), f.counts[*a as usize]))
        .collect();
    Report {
        ops: b.ops.len() as u64,
        anomalies,
        examples: f.examples,
        flagged: f.flagged,
        fault_errors: b.fault_errors.clone(),
    }
}

fn promises_order(policy: Option<HistoryPolicy>) -> bool {
    matches!(policy, Some(HistoryPolicy::Strong | HistoryPolicy::Session))
}

/// Running maxima of what each process (and each session in each process)
/// has seen on one key, in program order: an operation of a process follows
/// every earlier operation of that process even when their times tie.
#[derive(Default)]
struct ProgramOrder {
    /// Per process: the highest version written ok.
    written: FastMap<u64, u64>,
    /// Per (session, process): the highest version written ok, and read ok
    /// under a policy that promises order.
    session_written: FastMap<(u32, u64), u64>,
    session_read: FastMap<(u32, u64), u64>,
}

fn check_key(b: &Builder, ops: &[usize], first_invoke: &[u64], f: &mut Findings<'_>) {
    let all = &b.ops;
    let logical_invoke = |op: &Op| -> u64 {
        op.idem
            .and_then(|k| first_invoke.get(k as usize).copied())
            .map_or(op.invoke, |t| t.min(op.invoke))
    };
    let ok_writes: Vec<usize> = ops
        .iter()
        .copied()
        .filter(|&i| is_write(&all[i]) && all[i].outcome == Outcome::Ok)
        .collect();
    let writes_done = PrefixMax::new(
        ok_writes
            .iter()
            .map(|&i| (all[i].complete, all[i].version))
            .collect(),
    );
    // The ops that produced each version: (version, op), in op order
    // within a version.
    let mut writer_of: Vec<(u64, usize)> = ok_writes.iter().map(|&i| (all[i].version, i)).collect();
    writer_of.sort_unstable();
    let has_deletes = ops.iter().any(|&i| all[i].kind == OpKind::Delete);
    let excused = excused_versions(all, ops, &writer_of, &logical_invoke, has_deletes);

    // Per session on this key: its ok writes, and its ok reads under a
    // policy that promises order (bounded and eventual reads promise none).
    let mut session_writes = Vec::new();
    let mut session_reads = Vec::new();
    for &i in ops {
        let op = &all[i];
        if op.outcome != Outcome::Ok {
            continue;
        }
        if is_write(op) {
            session_writes.push((op.session, op.complete, op.version));
        } else if promises_order(op.policy) {
            session_reads.push((op.session, op.complete, op.version));
        }
    }
    let session_writes = SessionPrefix::new(session_writes);
    let session_reads = SessionPrefix::new(session_reads);

    let writer_before = |version: u64, t: u64| -> Option<usize> {
        ok_writes
            .iter()
            .copied()
            .filter(|&w| all[w].version == version && all[w].complete <= t)
            .min_by_key(|&w| all[w].complete)
    };

    // Operations are in invoke order, and a process's operations in its
    // program order.
    let mut program = ProgramOrder::default();
    for &i in ops {
        let op = &all[i];
        if op.outcome != Outcome::Ok {
            continue;
        }
        let sp = (op.session, op.process);
        if op.kind == OpKind::Read {
            let v = op.version;
            if op.policy == Some(HistoryPolicy::Strong) {
                let by_time = writes_done.before(op.invoke);
                let by_program = program.written.get(&op.process).copied().unwrap_or(0);
                let newest = by_time.max(by_program);
                if newest > v {
                    let w = writer_before(newest, op.invoke);
                    let involved: Vec<usize> = std::iter::once(i).chain(w).collect();
                    f.add(Anomaly::StaleRead, &involved, || {
                        format!("strong read saw version {v} although version {newest} completed before it was invoked")
                    });
                }
            }
            if v > 0 {
                match producers_of(&writer_of, v) {
                    producers @ [_, ..] => {
                        let first = producers
                            .iter()
                            .map(|&(_, w)| logical_invoke(&all[w]))
                            .min()
                            .unwrap_or(u64::MAX);
                        if first > op.complete {
                            let involved: Vec<usize> = std::iter::once(i)
                                .chain(producers.first().map(|&(_, w)| w))
                                .collect();
                            f.add(Anomaly::FutureRead, &involved, || {
                                format!("read saw version {v}, whose write was invoked after the read completed")
                            });
                        }
                    }
                    [] => {
                        let explained = excused.get(&v).is_some_and(|&t| t <= op.complete);
                        if !explained {
                            f.add(Anomaly::FutureRead, &[i], || {
                                format!("read saw version {v}, which no write produced")
                            });
                        }
                    }
                }
            }
            if promises_order(op.policy) {
                let own = session_writes.before(op.session, op.invoke);
                let written = own.max(program.session_written.get(&sp).copied().unwrap_or(0));
                if written > v {
                    f.add(Anomaly::ReadYourWrites, &[i], || {
                        format!("session read saw version {v} after the session had written version {written}")
                    });
                }
                let seen = session_reads.before(op.session, op.invoke);
                let earlier = seen.max(program.session_read.get(&sp).copied().unwrap_or(0));
                if earlier > v {
                    f.add(Anomaly::MonotonicReads, &[i], || {
                        format!("session read saw version {v} after the session had read version {earlier}")
                    });
                }
                let r = program.session_read.entry(sp).or_default();
                *r = (*r).max(v);
            }
            if let Some(HistoryPolicy::Bounded(ms)) = op.policy {
                let horizon = op.invoke.checked_sub(ms.saturating_mul(1_000_000));
                if let Some(horizon) = horizon {
                    let required = writes_done.at_or_before(horizon);
                    if required > v {
                        f.add(Anomaly::StalenessBound, &[i], || {
                            format!(
                                "bounded:{ms} read saw version {v} although version {required} completed over {ms} ms before it was invoked"
                            )
                        });
                    }
                }
            }
        } else if is_write(op) {
            let own = session_writes.before(op.session, op.invoke);
            let earlier = own.max(program.session_written.get(&sp).copied().unwrap_or(0));
            if earlier > op.version {
                f.add(Anomaly::MonotonicWrites, &[i], || {
                    format!(
                        "session's write got version {} after its earlier write got {earlier}",
                        op.version
                    )
                });
            }
            let w = program.session_written.entry(sp).or_default();
            *w = (*w).max(op.version);
            let w = program.written.entry(op.process).or_default();
            *w = (*w).max(op.version);
        }
    }

    // Lost updates: two logical writes winning on one expected version, or
    // two logical writes given one version. A retry (same idempotency key)
    // returning its original result is one logical write. (Versions given
    // twice — a multi-writer split brain — are reported here; a read of such
    // a version is explained by either write.)
    let logical = |i: usize| -> (bool, u64) {
        match all[i].idem {
            Some(k) => (true, u64::from(k)),
            None => (false, i as u64),
        }
    };
    let mut reported: HashSet<(usize, usize)> = HashSet::new();
    let mut groups: Vec<((u8, u64), usize)> = Vec::with_capacity(ok_writes.len() * 2);
    for &i in &ok_writes {
        // A conditional write (a cas, or a delete with `expect`) won on the
        // version it was based on: the one it expected, or, expecting the
        // key absent after deletes, the tombstone it was written on.
        if all[i].expect.is_some() {
            let base = expected_base(&all[i], has_deletes)
                .unwrap_or_else(|| all[i].version.saturating_sub(1));
            groups.push(((0, base), i));
        }
        groups.push(((1, all[i].version), i));
    }
    // Stable: each group keeps its writes in op order.
    groups.sort_by_key(|&(k, _)| k);
    // Versions out of commit order: a write invoked after another write of
    // the key was acknowledged must commit above it. A last-writer-wins
    // table (a multi-writer split brain, or clocks that disagree) can
    // acknowledge a write below one acknowledged before it was even sent:
    // one of the two is lost when the table settles. Reported, never
    // taken as the version order the history promises.
    for &i in &ok_writes {
        let op = &all[i];
        let invoked = logical_invoke(op);
        let before = writes_done.before(invoked);
        if before > op.version {
            let earlier = producers_of(&writer_of, before)
                .iter()
                .map(|&(_, w)| w)
                .filter(|&w| all[w].complete < invoked)
                .min_by_key(|&w| all[w].complete);
            let Some(earlier) = earlier else {
                continue;
            };
            if op.idem.is_some() && all[earlier].idem == op.idem {
                continue;
            }
            let pair = (earlier.min(i), earlier.max(i));
            if reported.insert(pair) {
                f.add(Anomaly::LostUpdate, &[i, earlier], || {
                    format!(
                        "a write was acknowledged as version {} although version {before} had been acknowledged before it was invoked (versions out of commit order: last writer wins)",
                        op.version
                    )
                });
            }
        }
    }
    for run in groups.chunk_by(|x, y| x.0 == y.0) {
        if run.len() < 2 {
            continue;
        }
        let (rule, value) = run[0].0;
        let mut seen: Vec<((bool, u64), usize)> = Vec::new();
        for &(_, i) in run {
            let id = logical(i);
            match seen.iter().find(|(s, _)| *s == id) {
                Some(_) => continue,
                None => {
                    if let Some(&(_, first)) = seen.first() {
                        let pair = (first.min(i), first.max(i));
                        if reported.insert(pair) {
                            f.add(Anomaly::LostUpdate, &[i, first], || {
                                if rule == 0 {
                                    format!("two conditional writes both won on expected version {value}")
                                } else {
                                    format!("two different writes were both acknowledged as version {value}")
                                }
                            });
                        }
                    }
                    seen.push((id, i));
                }
            }
        }
    }
}

/// Versions reads saw that no ok write produced, each matched with one
/// write whose outcome is unknown (`info`, or never completed) that could
/// have produced it: a conditional one only the version after the one it
/// expected, an unconditional one any version. A write may have applied or
/// not, but once: it explains at most one version. Returns, per explained
/// version, when its explaining write was (logically) invoked.
fn excused_versions(
    all: &[Op],
    ops: &[usize],
    writer_of: &[(u64, usize)],
    logical_invoke: &impl Fn(&Op) -> u64,
    has_deletes: bool,
) -> FastMap<u64, u64> {
    // Unexplained versions, with the first completion of a read of each.
    let mut wanted: FastMap<u64, u64> = FastMap::default();
    for &i in ops {
        let op = &all[i];
        if op.kind == OpKind::Read
            && op.outcome == Outcome::Ok
            && op.version > 0
            && producers_of(writer_of, op.version).is_empty()
        {
            let t = wanted.entry(op.version).or_insert(op.complete);
            *t = (*t).min(op.complete);
        }
    }
    let mut out = FastMap::default();
    if wanted.is_empty() {
        return out;
    }
    let mut unknown: Vec<(u64, Option<u64>)> = ops
        .iter()
        .map(|&i| &all[i])
        .filter(|op| is_write(op) && op.outcome == Outcome::Info)
        .map(|op| {
            let produces = expected_base(op, has_deletes).map(|e| e + 1);
            (logical_invoke(op), produces)
        })
        .collect();
    unknown.sort_unstable();
    let mut versions: Vec<(u64, u64)> = wanted.into_iter().map(|(v, t)| (t, v)).collect();
    versions.sort_unstable();
    let mut used = vec![false; unknown.len()];
    for (read_at, v) in versions {
        // The write must have been invoked before the read completed: a
        // conditional one that produces exactly this version first, else an
        // unconditional one.
        let exact = unknown
            .iter()
            .enumerate()
            .position(|(j, &(t, p))| !used[j] && t <= read_at && p == Some(v));
        let any = || {
            unknown
                .iter()
                .enumerate()
                .position(|(j, &(t, p))| !used[j] && t <= read_at && p.is_none())
        };
        if let Some(j) = exact.or_else(any) {
            used[j] = true;
            out.insert(v, unknown[j].0);
        }
    }
    out
}

/// One `ok` result of an idempotency key: key, version, region, operation.
/// A multi-record write is visible whole or not at all to strong reads:
/// once a strong read has seen one of its records at its version (or
/// later), a strong read of another of its records invoked after that and
/// before the write was acknowledged must see that record at its version
/// too. (Invoked after the acknowledgement, missing it is a stale read.)
fn check_fractured(b: &Builder, by_key: &[Vec<usize>], f: &mut Findings<'_>) {
    if b.txns == 0 {
        return;
    }
    let all = &b.ops;
    // Per key: its strong ok reads by version (with the earliest completion
    // of any read at that version or later) and by invoke time.
    struct Reads {
        versions: Vec<u64>,
        earliest_from: Vec<u64>,
        by_invoke: Vec<usize>,
    }
    let mut reads: FastMap<u32, Reads> = FastMap::default();
    let mut txns: Vec<Vec<usize>> = vec![Vec::new(); b.txns as usize];
    for (i, op) in all.iter().enumerate() {
        if let (Some(t), Outcome::Ok) = (op.txn, op.outcome) {
            txns[t as usize].push(i);
        }
    }
    let build = |key: u32| -> Reads {
        let mut strong: Vec<usize> = by_key[key as usize]
            .iter()
            .copied()
            .filter(|&i| {
                let op = &all[i];
                op.kind == OpKind::Read
                    && op.outcome == Outcome::Ok
                    && op.policy == Some(HistoryPolicy::Strong)
            })
            .collect();
        strong.sort_unstable_by_key(|&i| all[i].version);
        let versions: Vec<u64> = strong.iter().map(|&i| all[i].version).collect();
        let mut earliest_from = vec![u64::MAX; strong.len()];
        let mut m = u64::MAX;
        for (j, &i) in strong.iter().enumerate().rev() {
            m = m.min(all[i].complete);
            earliest_from[j] = m;
        }
        strong.sort_unstable_by_key(|&i| all[i].invoke);
        Reads {
            versions,
            earliest_from,
            by_invoke: strong,
        }
    };
    for ops in txns.iter().filter(|ops| ops.len() > 1) {
        for &i in ops {
            let key = all[i].key;
            reads.entry(key).or_insert_with(|| build(key));
        }
    }
    let reads_of = |key: u32| -> &Reads { &reads[&key] };
    for ops in txns.iter().filter(|ops| ops.len() > 1) {
        // When a strong read first showed each record at the write's
        // version or later.
        let seen: Vec<u64> = ops
            .iter()
            .map(|&i| {
                let r = reads_of(all[i].key);
                let j = r.versions.partition_point(|&v| v < all[i].version);
                r.earliest_from.get(j).copied().unwrap_or(u64::MAX)
            })
            .collect();
        for (n, &i) in ops.iter().enumerate() {
            let op = &all[i];
            let shown = seen
                .iter()
                .enumerate()
                .filter(|&(m, _)| m != n)
                .map(|(_, &t)| t)
                .min()
                .unwrap_or(u64::MAX);
            if shown == u64::MAX {
                continue;
            }
            let from = shown.max(op.invoke);
            if from >= op.complete {
                // Seen only after the acknowledgement: later misses are
                // stale reads.
                continue;
            }
            let r = reads_of(op.key);
            let lo = r.by_invoke.partition_point(|&j| all[j].invoke <= from);
            let hi = r
                .by_invoke
                .partition_point(|&j| all[j].invoke <= op.complete);
            for &j in &r.by_invoke[lo..hi] {
                if all[j].version < op.version {
                    let (v, missed) = (all[j].version, op.version);
                    f.add(Anomaly::FracturedRead, &[j, i], || {
                        format!(
                            "strong read saw version {v}, not {missed} of a multi-record write that another strong read had already seen in another of its records"
                        )
                    });
                }
            }
        }
    }
}

type Applied = (u32, u64, Option<u32>, usize);

fn check_idempotency(b: &Builder, f: &mut Findings<'_>) {
    // A multi-record write's key applies once per record it writes: its
    // results are judged record by record.
    // Sorted by key, record and operation: each run is one key's results.
    let mut applied: Vec<(u32, u32, usize)> = b
        .ops
        .iter()
        .enumerate()
        .filter_map(|(i, op)| match (op.idem, op.outcome, is_write(op)) {
            (Some(k), Outcome::Ok, true) => {
                let record = if op.txn.is_some() { op.key } else { u32::MAX };
                Some((k, record, i))
            }
            _ => None,
        })
        .collect();
    applied.sort_unstable();
    for run in applied.chunk_by(|x, y| (x.0, x.1) == (y.0, y.1)) {
        if run.len() < 2 {
            continue;
        }
        let k = run[0].0;
        let mut results: Vec<Applied> = run
            .iter()
            .map(|&(_, _, i)| {
                let op = &b.ops[i];
                (op.key, op.version, op.region, i)
            })
            .collect();
        results.sort_unstable_by_key(|&(.., i)| b.ops[i].complete);
        let (_, v0, r0, first) = results[0];
        let mut seen: Vec<(u32, u64, Option<u32>)> = vec![(results[0].0, v0, r0)];
        for &(key, v, region, i) in &results[1..] {
            // The same result again is a retry returning the original
            // outcome; another version, or the same version committed in
            // another region (a retry applied anew where the first attempt
            // had not been seen), is a second application.
            let again = seen.iter().any(|&(sk, sv, sr)| {
                sk == key && sv == v && (sr == region || sr.is_none() || region.is_none())
            });
            if !again {
                seen.push((key, v, region));
                let name = |r: Option<u32>| {
                    r.map(|r| format!(" in {}", b.regions.name(r)))
                        .unwrap_or_default()
                };
                f.add(Anomaly::DuplicateApplication, &[i, first], || {
                    format!(
                        "idempotency key {} applied as version {v0}{} and again as version {v}{}",
                        b.idems.name(k),
                        name(r0),
                        name(region)
                    )
                });
            }
        }
    }
}

#[cfg(test)]
mod tests;
