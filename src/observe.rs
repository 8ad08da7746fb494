//! Metrics (through the `metrics` facade) and the names of trace fields.
//!
//! Hot-path counters are registered once per client, per region and policy,
//! so that counting a read costs no allocation. Install a metrics recorder
//! before creating clients. Values and credentials are never recorded.

use metrics::{Counter, Gauge, Histogram};

use crate::backend::DbOperation;
use crate::error::Error;
use crate::policy::ReadPolicy;

/// Metric names, one constant each.
pub mod names {
    /// Counter: reads served, by `policy`, `region` and `role`.
    pub const READS: &str = "quorate_reads_total";
    /// Histogram: how long each attempt against the database took, in
    /// seconds, by `db.system.name`, `db.operation.name` and, when it
    /// failed, `error.type` (OpenTelemetry's database client metric;
    /// Prometheus shows it as `db_client_operation_duration`). Exporters
    /// that need buckets take [`OPERATION_DURATION_BUCKETS`].
    pub const OPERATION_DURATION: &str = "db.client.operation.duration";

    /// The bucket boundaries OpenTelemetry's semantic conventions advise
    /// for [`OPERATION_DURATION`], in seconds (Prometheus' exporter renders
    /// a histogram without buckets as a summary).
    pub const OPERATION_DURATION_BUCKETS: [f64; 9] =
        [0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0];

    /// [`OPERATION_DURATION`]'s description (Prometheus' `# HELP`).
    pub const OPERATION_DURATION_HELP: &str = "Duration of each attempt against the database, by db.system.name, db.operation.name and error.type.";
    /// Counter: reads re-served at a stronger replica because the first
    /// answer missed its policy, by `policy` and `reason`.
    pub const ESCALATIONS: &str = "quorate_escalations_total";
    /// Counter: writes committed, by `region`.
    pub const WRITES: &str = "quorate_writes_total";
    /// Counter: conditional writes that found another version.
    pub const CONFLICTS: &str = "quorate_conflicts_total";
    /// Counter: read-after-write checks that hit their deadline.
    pub const VERIFY_FAILURES: &str = "quorate_read_after_write_failures_total";
    /// Counter: retried attempts, by `reason`.
    pub const RETRIES: &str = "quorate_retries_total";
    /// Counter: ambiguous commits resolved, by `outcome` (`applied`, `not_applied`).
    pub const AMBIGUOUS_RESOLVED: &str = "quorate_ambiguous_commits_resolved_total";
    /// Counter: regions ejected from routing, by `region` and `reason`.
    pub const REGION_EJECTIONS: &str = "quorate_region_ejections_total";
    /// Counter: reads sent to a second region after the hedge delay.
    pub const HEDGES_FIRED: &str = "quorate_hedges_fired_total";
    /// Counter: hedged reads answered first by the second region.
    pub const HEDGES_WON: &str = "quorate_hedges_won_total";
    /// Gauge: estimated clock offset of a region against this process, in seconds.
    pub const CLOCK_OFFSET: &str = "quorate_clock_offset_seconds";
    /// Gauge: how far a region's clock strays from the median of all
    /// regions (plus the estimate's error), in seconds: what the clock guard
    /// compares with its limit.
    pub const CLOCK_DEVIATION: &str = "quorate_clock_deviation_seconds";
    /// Gauge: replica lag a region reported, in seconds.
    pub const REPLICA_LAG: &str = "quorate_replica_lag_seconds";
}

const POLICIES: [&str; 3] = ["strong", "session", "bounded"];

/// The `reason` label of an escalation, for each reason the read path
/// gives; anything else counts as `other`.
const ESCALATION_REASONS: [(&str, &str); 9] = [
    (
        "replica older than the session's version",
        "behind_session_version",
    ),
    ("strong read served by a follower", "strong_at_follower"),
    ("replica behind the session point", "behind_session_point"),
    ("replica states no point", "no_point"),
    ("replica's clock is excluded", "clock_excluded"),
    ("replica beyond the staleness bound", "beyond_bound"),
    ("replica states no staleness bound", "no_bound"),
    (
        "the clocks behind the staleness bound cannot be verified",
        "clock_unverified",
    ),
    ("", "other"),
];

fn reason_index(reason: &str) -> usize {
    ESCALATION_REASONS
        .iter()
        .position(|(text, _)| *text == reason)
        .unwrap_or(ESCALATION_REASONS.len() - 1)
}

/// Registers each metric's help text (Prometheus `# HELP`) and unit with
/// the installed recorder.
fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_histogram!(
        names::OPERATION_DURATION,
        Unit::Seconds,
        names::OPERATION_DURATION_HELP
    );
    describe_counter!(names::READS, "Reads served, by policy, region and role.");
    describe_counter!(
        names::ESCALATIONS,
        "Reads re-served at a stronger replica because the first answer missed its policy, by policy and reason."
    );
    describe_counter!(names::WRITES, "Writes committed, by region.");
    describe_counter!(
        names::CONFLICTS,
        "Conditional writes that found another version."
    );
    describe_counter!(
        names::VERIFY_FAILURES,
        "Read-after-write checks that hit their deadline."
    );
    describe_counter!(names::RETRIES, "Retried attempts, by reason.");
    describe_counter!(
        names::AMBIGUOUS_RESOLVED,
        "Ambiguous commits resolved, by outcome (applied, not_applied)."
    );
    describe_counter!(
        names::REGION_EJECTIONS,
        "Regions ejected from routing, by region and reason."
    );
    describe_counter!(
        names::HEDGES_FIRED,
        "Reads sent to a second region after the hedge delay."
    );
    describe_counter!(
        names::HEDGES_WON,
        "Hedged reads answered first by the second region."
    );
    describe_gauge!(
        names::CLOCK_OFFSET,
        Unit::Seconds,
        "Estimated clock offset of a region against this process."
    );
    describe_gauge!(
        names::CLOCK_DEVIATION,
        Unit::Seconds,
        "How far a region's clock strays from the median of all regions, plus the estimate's error: what the clock guard compares with its limit."
    );
    describe_gauge!(
        names::REPLICA_LAG,
        Unit::Seconds,
        "Replica lag a region reported."
    );
}

fn policy_index(p: ReadPolicy) -> usize {
    match p {
        ReadPolicy::Strong => 0,
        ReadPolicy::Session => 1,
        ReadPolicy::BoundedStaleness(_) => 2,
    }
}

/// The counters a client updates on every operation.
#[derive(Debug)]
pub(crate) struct Metrics {
    /// `[region][policy][role]`
    reads: Vec<[[Counter; 2]; 3]>,
    /// `[policy][reason]`
    escalations: [[Counter; ESCALATION_REASONS.len()]; 3],
    writes: Vec<Counter>,
    conflicts: Counter,
    hedges_fired: Counter,
    hedges_won: Counter,
    verify_failures: Counter,
    clock_offset: Vec<Gauge>,
    clock_deviation: Vec<Gauge>,
    replica_lag: Vec<Gauge>,
    /// `db.client.operation.duration` of successful attempts, by
    /// [`DbOperation`] (failed ones carry their error type and are looked
    /// up when they happen).
    durations: [Histogram; 5],
    system: &'static str,
    operations: [&'static str; 5],
}

/// Every [`DbOperation`], in the order of [`op_index`].
const OPERATIONS: [DbOperation; 5] = [
    DbOperation::Read,
    DbOperation::Write,
    DbOperation::Transact,
    DbOperation::Lookup,
    DbOperation::Probe,
];

fn op_index(op: DbOperation) -> usize {
    OPERATIONS.iter().position(|o| *o == op).unwrap_or(0)
}

impl Metrics {
    /// Records one attempt's duration.
    pub(crate) fn attempt(&self, op: DbOperation, seconds: f64, error_type: Option<&str>) {
        let i = op_index(op);
        match error_type {
            None => self.durations[i].record(seconds),
            Some(t) => metrics::histogram!(
                names::OPERATION_DURATION,
                "db.system.name" => self.system,
                "db.operation.name" => self.operations[i],
                "error.type" => t.to_owned()
            )
            .record(seconds),
        }
    }

    pub(crate) fn new<B: crate::Backend>(backend: &B) -> Metrics {
        let topology = backend.topology();
        let system = backend.db_system();
        let operations = OPERATIONS.map(|op| backend.db_operation_name(op));
        describe();
        let regions: Vec<_> = topology.regions().map(|r| r.shared()).collect();
        let reads = regions
            .iter()
            .map(|r| {
                POLICIES.map(|p| {
                    ["leader", "follower"].map(|role| {
                        metrics::counter!(names::READS, "policy" => p, "region" => r.clone(), "role" => role)
                    })
                })
            })
            .collect();
        Metrics {
            durations: operations.map(|op| {
                metrics::histogram!(
                    names::OPERATION_DURATION,
                    "db.system.name" => system,
                    "db.operation.name" => op
                )
            }),
            system,
            operations,
            reads,
            escalations: POLICIES.map(|p| {
                ESCALATION_REASONS.map(|(_, reason)| {
                    metrics::counter!(names::ESCALATIONS, "policy" => p, "reason" => reason)
                })
            }),
            writes: regions
                .iter()
                .map(|r| metrics::counter!(names::WRITES, "region" => r.clone()))
                .collect(),
            conflicts: metrics::counter!(names::CONFLICTS),
            hedges_fired: metrics::counter!(names::HEDGES_FIRED),
            hedges_won: metrics::counter!(names::HEDGES_WON),
            verify_failures: metrics::counter!(names::VERIFY_FAILURES),
            clock_offset: regions
                .iter()
                .map(|r| metrics::gauge!(names::CLOCK_OFFSET, "region" => r.clone()))
                .collect(),
            clock_deviation: regions
                .iter()
                .map(|r| metrics::gauge!(names::CLOCK_DEVIATION, "region" => r.clone()))
                .collect(),
            replica_lag: regions
                .iter()
                .map(|r| metrics::gauge!(names::REPLICA_LAG, "region" => r.clone()))
                .collect(),
        }
    }

    pub(crate) fn read(&self, region: usize, policy: ReadPolicy, leader: bool) {
        if let Some(r) = self.reads.get(region) {
            r[policy_index(policy)][usize::from(!leader)].increment(1);
        }
    }

    pub(crate) fn escalation(&self, policy: ReadPolicy, reason: &'static str) {
        self.escalations[policy_index(policy)][reason_index(reason)].increment(1);
        tracing::debug!(quorate.policy = policy.label(), reason, "read escalated");
    }

    pub(crate) fn write(&self, region: usize) {
        if let Some(c) = self.writes.get(region) {
            c.increment(1);
        }
    }

    pub(crate) fn conflict(&self) {
        self.conflicts.increment(1);
    }

    pub(crate) fn hedge_fired(&self) {
        self.hedges_fired.increment(1);
    }

    pub(crate) fn hedge_won(&self) {
        self.hedges_won.increment(1);
    }

    pub(crate) fn verify_failure(&self) {
        self.verify_failures.increment(1);
    }

    pub(crate) fn retry(&self, error: &Error) {
        metrics::counter!(names::RETRIES, "reason" => error.reason()).increment(1);
    }

    pub(crate) fn ambiguous_resolved(&self, applied: bool) {
        let outcome = if applied { "applied" } else { "not_applied" };
        metrics::counter!(names::AMBIGUOUS_RESOLVED, "outcome" => outcome).increment(1);
    }

    pub(crate) fn ejection(&self, region: &crate::Region, reason: &'static str) {
        metrics::counter!(names::REGION_EJECTIONS, "region" => region.shared(), "reason" => reason)
            .increment(1);
    }

    pub(crate) fn clock_offset(&self, region: usize, seconds: f64) {
        if let Some(g) = self.clock_offset.get(region) {
            g.set(seconds);
        }
    }

    pub(crate) fn clock_deviation(&self, region: usize, seconds: f64) {
        if let Some(g) = self.clock_deviation.get(region) {
            g.set(seconds);
        }
    }

    pub(crate) fn replica_lag(&self, region: usize, seconds: f64) {
        if let Some(g) = self.replica_lag.get(region) {
            g.set(seconds);
        }
    }
}
