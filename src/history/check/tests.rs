//! Each rule, with histories it must flag and histories it must not.
#![allow(clippy::too_many_arguments)] // one argument per field of the history line

use super::*;

/// Builds histories line by line.
#[derive(Default)]
struct H(Vec<String>);

impl H {
    fn line(mut self, s: String) -> Self {
        self.0.push(s);
        self
    }
    fn read(
        self,
        p: u64,
        key: &str,
        policy: &str,
        session: &str,
        t0: u64,
        t1: u64,
        version: u64,
    ) -> Self {
        self.line(format!(r#"{{"process":{p},"type":"invoke","op":"read","key":"{key}","session":"{session}","policy":"{policy}","time":{t0}}}"#))
            .line(format!(r#"{{"process":{p},"type":"ok","op":"read","key":"{key}","session":"{session}","version":{version},"time":{t1}}}"#))
    }
    fn write(
        self,
        p: u64,
        key: &str,
        session: &str,
        idem: &str,
        t0: u64,
        t1: u64,
        outcome: &str,
        version: u64,
    ) -> Self {
        let v = if outcome == "ok" {
            format!(r#","version":{version}"#)
        } else {
            String::new()
        };
        let idem = if idem.is_empty() {
            String::new()
        } else {
            format!(r#","idem":"{idem}""#)
        };
        self.line(format!(r#"{{"process":{p},"type":"invoke","op":"write","key":"{key}","session":"{session}"{idem},"time":{t0}}}"#))
            .line(format!(r#"{{"process":{p},"type":"{outcome}","op":"write","key":"{key}","session":"{session}"{v},"time":{t1}}}"#))
    }
    fn cas(
        self,
        p: u64,
        key: &str,
        expect: u64,
        idem: &str,
        t0: u64,
        t1: u64,
        outcome: &str,
        version: u64,
    ) -> Self {
        let v = if outcome == "ok" {
            format!(r#","version":{version}"#)
        } else {
            String::new()
        };
        let idem = if idem.is_empty() {
            String::new()
        } else {
            format!(r#","idem":"{idem}""#)
        };
        self.line(format!(r#"{{"process":{p},"type":"invoke","op":"cas","key":"{key}","expect":{expect}{idem},"time":{t0}}}"#))
            .line(format!(r#"{{"process":{p},"type":"{outcome}","op":"cas","key":"{key}"{v},"time":{t1}}}"#))
    }
    fn delete(
        self,
        p: u64,
        key: &str,
        expect: Option<u64>,
        idem: &str,
        t0: u64,
        t1: u64,
        outcome: &str,
        version: u64,
    ) -> Self {
        let v = if outcome == "ok" {
            format!(r#","version":{version}"#)
        } else {
            String::new()
        };
        let expect = expect.map_or(String::new(), |e| format!(r#","expect":{e}"#));
        self.line(format!(r#"{{"process":{p},"type":"invoke","op":"delete","key":"{key}"{expect},"idem":"{idem}","time":{t0}}}"#))
            .line(format!(r#"{{"process":{p},"type":"{outcome}","op":"delete","key":"{key}"{v},"time":{t1}}}"#))
    }
    fn check(&self) -> Report {
        check(self.0.join("\n").as_bytes()).expect("valid history")
    }
}

fn only(report: &Report, anomaly: Anomaly, n: u64) {
    for a in Anomaly::ALL {
        let expected = if a == anomaly { n } else { 0 };
        assert_eq!(
            report.count(a),
            expected,
            "{}: {}",
            a.name(),
            report.render()
        );
    }
}

fn clean(report: &Report) {
    assert_eq!(report.total(), 0, "{}", report.render());
}

#[test]
fn stale_read() {
    let base = || {
        H::default()
            .write(1, "k", "w", "a", 0, 10, "ok", 1)
            .write(1, "k", "w", "b", 20, 30, "ok", 2)
    };
    only(
        &base().read(2, "k", "strong", "r", 40, 50, 1).check(),
        Anomaly::StaleRead,
        1,
    );
    clean(&base().read(2, "k", "strong", "r", 40, 50, 2).check());
    // Concurrent with the second write: either version is fine.
    clean(&base().read(2, "k", "strong", "r", 25, 50, 1).check());
    // A tie: the write completing at the read's invoke time does not precede it.
    clean(&base().read(2, "k", "strong", "r", 30, 50, 1).check());
    // Bounded and eventual reads are not held to this rule.
    clean(&base().read(2, "k", "eventual", "r", 40, 50, 1).check());
    // An indeterminate write of a higher version does not make a read stale.
    let info = H::default()
        .write(1, "k", "w", "a", 0, 10, "ok", 1)
        .write(3, "k", "w", "b", 20, 30, "info", 0);
    clean(&info.read(2, "k", "strong", "r", 40, 50, 1).check());
}

#[test]
fn future_read() {
    let h = H::default()
        .read(2, "k", "session", "r", 0, 10, 1)
        .write(1, "k", "w", "a", 20, 30, "ok", 1);
    only(&h.check(), Anomaly::FutureRead, 1);
    only(
        &H::default().read(2, "k", "eventual", "r", 0, 10, 7).check(),
        Anomaly::FutureRead,
        1,
    );
    // Overlapping write: fine.
    clean(
        &H::default()
            .write(1, "k", "w", "a", 0, 30, "ok", 1)
            .read(2, "k", "strong", "r", 5, 10, 1)
            .check(),
    );
    // A version that only an indeterminate write could have produced: fine.
    clean(
        &H::default()
            .write(1, "k", "w", "a", 0, 30, "info", 0)
            .read(2, "k", "strong", "r", 40, 50, 1)
            .check(),
    );
    // ...unless that write was invoked after the read completed.
    let late_info = H::default()
        .read(2, "k", "strong", "r", 0, 10, 1)
        .write(1, "k", "w", "a", 20, 30, "info", 0);
    only(&late_info.check(), Anomaly::FutureRead, 1);
    // Absent (0) is never from the future; a failed write produces nothing.
    clean(&H::default().read(2, "k", "strong", "r", 0, 10, 0).check());
    let failed = H::default()
        .write(1, "k", "w", "a", 0, 5, "fail", 0)
        .read(2, "k", "eventual", "r", 10, 20, 1);
    only(&failed.check(), Anomaly::FutureRead, 1);
}

#[test]
fn read_your_writes() {
    let h = || {
        H::default()
            .write(1, "k", "s", "a", 0, 10, "ok", 1)
            .write(2, "k", "other", "b", 11, 12, "ok", 2)
    };
    // Session s wrote v1; then read... v0 (absent): a violation.
    only(
        &h().read(1, "k", "session", "s", 20, 30, 0).check(),
        Anomaly::ReadYourWrites,
        1,
    );
    clean(&h().read(1, "k", "session", "s", 20, 30, 1).check());
    // Another session may see the older state under session policy.
    clean(&h().read(3, "k", "session", "x", 20, 30, 0).check());
    // Bounded reads are exempt.
    clean(&h().read(1, "k", "bounded:1", "s", 20, 30, 0).check());
    // Writes that did not complete before the read was invoked do not count.
    clean(
        &H::default()
            .write(1, "k", "s", "a", 0, 25, "ok", 1)
            .read(2, "k", "session", "s", 20, 30, 0)
            .check(),
    );
    // An indeterminate own write does not count.
    clean(
        &H::default()
            .write(1, "k", "s", "a", 0, 10, "info", 0)
            .read(1, "k", "session", "s", 20, 30, 0)
            .check(),
    );
}

#[test]
fn monotonic_reads() {
    let h = H::default()
        .write(1, "k", "w", "a", 0, 10, "ok", 1)
        .write(1, "k", "w", "b", 11, 12, "ok", 2)
        .read(2, "k", "session", "s", 20, 30, 2);
    only(
        &h.read(3, "k", "session", "s", 40, 50, 1).check(),
        Anomaly::MonotonicReads,
        1,
    );
    // Bounded and eventual reads promise no order: a later session read
    // may see less than they did.
    for relaxed in ["eventual", "bounded:1000"] {
        let h = H::default()
            .write(1, "k", "w", "a", 0, 10, "ok", 1)
            .write(1, "k", "w", "b", 11, 12, "ok", 2)
            .read(2, "k", relaxed, "s", 20, 30, 2);
        clean(&h.read(3, "k", "session", "s", 40, 50, 1).check());
    }
    let h = H::default()
        .write(1, "k", "w", "a", 0, 10, "ok", 1)
        .write(1, "k", "w", "b", 11, 12, "ok", 2)
        .read(2, "k", "session", "s", 20, 30, 2);
    clean(&h.read(3, "k", "session", "s", 40, 50, 2).check());
    // Overlapping reads of one session are not ordered.
    let h = H::default()
        .write(1, "k", "w", "a", 0, 10, "ok", 1)
        .write(1, "k", "w", "b", 11, 12, "ok", 2)
        .read(2, "k", "session", "s", 20, 45, 2)
        .read(3, "k", "session", "s", 40, 50, 1);
    clean(&h.check());
}

#[test]
fn monotonic_writes() {
    let h = H::default()
        .write(1, "k", "s", "a", 0, 10, "ok", 5)
        .write(1, "k", "s", "b", 20, 30, "ok", 3);
    let r = h.check();
    assert_eq!(r.count(Anomaly::MonotonicWrites), 1, "{}", r.render());
    clean(
        &H::default()
            .write(1, "k", "s", "a", 0, 10, "ok", 1)
            .write(1, "k", "s", "b", 20, 30, "ok", 2)
            .check(),
    );
    // Different sessions: not this rule (and not a lost update either).
    clean(
        &H::default()
            .write(1, "k", "s", "a", 0, 10, "ok", 2)
            .write(2, "k", "t", "b", 20, 30, "ok", 3)
            .check(),
    );
}

#[test]
fn staleness_bound() {
    let ms = 1_000_000;
    let h = || {
        H::default()
            .write(1, "k", "w", "a", 0, 10 * ms, "ok", 1)
            .write(1, "k", "w", "b", 20 * ms, 30 * ms, "ok", 2)
    };
    // Invoked at 200 ms with a 100 ms bound: v2 (completed at 30 ms) is required.
    only(
        &h().read(2, "k", "bounded:100", "r", 200 * ms, 210 * ms, 1)
            .check(),
        Anomaly::StalenessBound,
        1,
    );
    clean(
        &h().read(2, "k", "bounded:100", "r", 200 * ms, 210 * ms, 2)
            .check(),
    );
    // Invoked at 100 ms with a 100 ms bound: only v1 (completed at 10 ms... ) is required.
    clean(
        &h().read(2, "k", "bounded:100", "r", 100 * ms, 110 * ms, 1)
            .check(),
    );
    // The tie counts: completed exactly at t − B is required.
    only(
        &h().read(2, "k", "bounded:100", "r", 130 * ms, 140 * ms, 1)
            .check(),
        Anomaly::StalenessBound,
        1,
    );
    clean(
        &h().read(2, "k", "bounded:100", "r", 129 * ms, 140 * ms, 1)
            .check(),
    );
}

#[test]
fn lost_update() {
    let both_won = H::default()
        .cas(1, "k", 3, "a", 0, 10, "ok", 4)
        .cas(2, "k", 3, "b", 5, 15, "ok", 4);
    only(&both_won.check(), Anomaly::LostUpdate, 1);
    // Same version from two unconditional writes without keys.
    let same_version = H::default()
        .write(1, "k", "s", "", 0, 10, "ok", 4)
        .write(2, "k", "t", "", 20, 30, "ok", 4);
    only(&same_version.check(), Anomaly::LostUpdate, 1);
    // A retry of one logical write returning its original result is fine.
    let retry = H::default()
        .cas(1, "k", 3, "a", 0, 10, "info", 0)
        .cas(1, "k", 3, "a", 20, 30, "ok", 4)
        .cas(2, "k", 3, "a", 40, 50, "ok", 4);
    clean(&retry.check());
    // One wins, one fails: fine.
    clean(
        &H::default()
            .cas(1, "k", 3, "a", 0, 10, "ok", 4)
            .cas(2, "k", 3, "b", 5, 15, "fail", 0)
            .check(),
    );
    // Same expect on different keys: fine.
    clean(
        &H::default()
            .cas(1, "k", 0, "a", 0, 10, "ok", 1)
            .cas(2, "j", 0, "b", 5, 15, "ok", 1)
            .check(),
    );
}

#[test]
fn duplicate_application() {
    let twice = H::default()
        .cas(1, "k", 1, "process-7", 0, 10, "ok", 2)
        .cas(2, "k", 2, "process-7", 20, 30, "ok", 3);
    only(&twice.check(), Anomaly::DuplicateApplication, 1);
    let once = H::default()
        .cas(1, "k", 1, "process-7", 0, 10, "ok", 2)
        .cas(2, "k", 1, "process-7", 20, 30, "ok", 2);
    clean(&once.check());
    let failed_retry = H::default()
        .cas(1, "k", 1, "process-7", 0, 10, "ok", 2)
        .cas(2, "k", 2, "process-7", 20, 30, "fail", 0);
    clean(&failed_retry.check());
}

#[test]
fn pairing_errors_name_the_line() {
    let double_invoke = [
        r#"{"process":1,"type":"invoke","op":"read","key":"k","time":1}"#,
        r#"{"process":1,"type":"invoke","op":"read","key":"k","time":2}"#,
    ];
    match check(double_invoke.join("\n").as_bytes()) {
        Err(HistoryError::Malformed { line: 2, message }) => {
            assert!(message.contains("still open"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    let orphan = r#"{"process":4,"type":"ok","op":"read","key":"k","version":1,"time":1}"#;
    assert!(matches!(
        check(orphan.as_bytes()),
        Err(HistoryError::Malformed { line: 1, .. })
    ));
    let backwards = [
        r#"{"process":1,"type":"invoke","op":"read","key":"k","time":10}"#,
        r#"{"process":1,"type":"ok","op":"read","key":"k","version":0,"time":2}"#,
    ];
    assert!(matches!(
        check(backwards.join("\n").as_bytes()),
        Err(HistoryError::Malformed { line: 2, .. })
    ));
    let mismatch = [
        r#"{"process":1,"type":"invoke","op":"read","key":"k","time":1}"#,
        r#"{"process":1,"type":"ok","op":"read","key":"j","version":0,"time":2}"#,
    ];
    assert!(matches!(
        check(mismatch.join("\n").as_bytes()),
        Err(HistoryError::Malformed { line: 2, .. })
    ));
}

#[test]
fn open_invokes_are_indeterminate() {
    // A write still in flight at the end may have produced what a read saw.
    let h = [
        r#"{"process":1,"type":"invoke","op":"write","key":"k","time":1}"#,
        r#"{"process":2,"type":"invoke","op":"read","key":"k","policy":"strong","time":5}"#,
        r#"{"process":2,"type":"ok","op":"read","key":"k","version":1,"time":6}"#,
    ];
    let r = check(h.join("\n").as_bytes()).unwrap();
    clean(&r);
    assert_eq!(r.ops, 2);
}

#[test]
fn json_report_lists_every_anomaly() {
    let r = H::default().read(1, "k", "strong", "s", 0, 1, 0).check();
    let json = serde_json::to_value(&r).unwrap();
    let names: Vec<&str> = json["anomalies"]
        .as_object()
        .unwrap()
        .keys()
        .map(|k| k.as_str())
        .collect();
    let mut expected = ANOMALIES.to_vec();
    expected.sort();
    assert_eq!(names, expected);
    assert_eq!(json["ops"], 1);
    assert!(json["examples"].as_array().unwrap().is_empty());
}

#[test]
fn examples_carry_the_events_involved() {
    let r = H::default()
        .write(1, "k", "w", "a", 0, 10, "ok", 1)
        .write(1, "k", "w", "b", 20, 30, "ok", 2)
        .read(2, "k", "strong", "r", 40, 50, 1)
        .check();
    let ex = &r.examples[0];
    assert_eq!(ex.anomaly, "stale-read");
    assert_eq!(ex.events.len(), 4, "the read and the write it missed");
    assert_eq!(ex.events[0].op, OpKind::Read);
    assert_eq!(ex.events[3].version, Some(2));
    assert!(r.flagged[2] && !r.flagged[0]);
}

#[test]
fn a_logical_write_is_invoked_when_its_first_attempt_was() {
    // The first attempt's outcome is unknown; its retry under the same key
    // reports version 1 later. A read of version 1 between the two is not
    // a read of the future.
    let h = H::default()
        .write(1, "k", "w", "order-1", 0, 10, "info", 0)
        .read(2, "k", "strong", "r", 20, 30, 1)
        .write(3, "k", "w", "order-1", 100, 110, "ok", 1);
    clean(&h.check());
    // Without the first attempt, it is.
    let h = H::default()
        .read(2, "k", "strong", "r", 20, 30, 1)
        .write(3, "k", "w", "order-1", 100, 110, "ok", 1);
    only(&h.check(), Anomaly::FutureRead, 1);
}

#[test]
fn one_key_applied_in_two_regions_is_applied_twice() {
    let line = |p: u64, kind: &str, region: &str, t: u64| {
        let tail = if kind == "ok" {
            format!(r#","version":1,"region":"{region}""#)
        } else {
            r#","idem":"charge-7""#.to_owned()
        };
        format!(r#"{{"process":{p},"type":"{kind}","op":"write","key":"order"{tail},"time":{t}}}"#)
    };
    // Split brain: each region applied the same logical write as its own
    // version 1.
    let twice = H::default()
        .line(line(1, "invoke", "", 0))
        .line(line(1, "ok", "eu", 10))
        .line(line(2, "invoke", "", 20))
        .line(line(2, "ok", "us", 30));
    let report = twice.check();
    assert_eq!(
        report.count(Anomaly::DuplicateApplication),
        1,
        "{}",
        report.render()
    );
    // A retry that returns the original outcome names the original region.
    let retry = H::default()
        .line(line(1, "invoke", "", 0))
        .line(line(1, "ok", "eu", 10))
        .line(line(2, "invoke", "", 20))
        .line(line(2, "ok", "eu", 30));
    clean(&retry.check());
}

#[test]
fn program_order_decides_when_times_tie() {
    // One process: a write completes at 10 and the next read is invoked at
    // 10 (a paused clock). The read follows the write.
    let h = H::default()
        .write(1, "k", "s", "a", 0, 5, "ok", 1)
        .write(1, "k", "s", "b", 5, 10, "ok", 2)
        .read(1, "k", "session", "s", 10, 20, 1);
    only(&h.check(), Anomaly::ReadYourWrites, 1);
    let h = H::default()
        .write(1, "k", "s", "a", 0, 5, "ok", 1)
        .write(1, "k", "s", "b", 5, 10, "ok", 2)
        .read(1, "k", "strong", "s", 10, 20, 1);
    let report = h.check();
    assert_eq!(report.count(Anomaly::StaleRead), 1, "{}", report.render());
    let h = H::default()
        .write(1, "k", "s", "a", 0, 5, "ok", 1)
        .read(1, "k", "session", "s", 5, 10, 1)
        .read(1, "k", "session", "s", 10, 20, 0);
    let report = h.check();
    assert_eq!(
        report.count(Anomaly::MonotonicReads),
        1,
        "{}",
        report.render()
    );
    // Another process whose times tie is concurrent: no order.
    let h = H::default()
        .write(1, "k", "s", "a", 0, 5, "ok", 1)
        .write(1, "k", "s", "b", 5, 10, "ok", 2)
        .read(2, "k", "strong", "t", 10, 20, 1);
    clean(&h.check());
}

#[test]
fn an_unknown_write_explains_at_most_one_version() {
    // A conditional write on version 1 whose outcome is unknown may have
    // produced version 2, not also version 3.
    let h = H::default()
        .write(1, "k", "w", "a", 0, 10, "ok", 1)
        .cas(2, "k", 1, "b", 20, 30, "info", 0)
        .read(3, "k", "strong", "r", 40, 50, 2);
    clean(&h.check());
    let h = H::default()
        .write(1, "k", "w", "a", 0, 10, "ok", 1)
        .cas(2, "k", 1, "b", 20, 30, "info", 0)
        .read(3, "k", "strong", "r", 40, 50, 2)
        .read(4, "k", "strong", "r2", 60, 70, 3);
    only(&h.check(), Anomaly::FutureRead, 1);
    // Nor version 5: it expected version 1.
    let h = H::default()
        .write(1, "k", "w", "a", 0, 10, "ok", 1)
        .cas(2, "k", 1, "b", 20, 30, "info", 0)
        .read(3, "k", "strong", "r", 40, 50, 5);
    only(&h.check(), Anomaly::FutureRead, 1);
    // An unconditional write explains any one version, once.
    let h = H::default()
        .write(2, "k", "w", "b", 20, 30, "info", 0)
        .read(3, "k", "strong", "r", 40, 50, 4)
        .read(4, "k", "strong", "r2", 60, 70, 4);
    clean(&h.check());
    let h = H::default()
        .write(2, "k", "w", "b", 20, 30, "info", 0)
        .read(3, "k", "strong", "r", 40, 50, 4)
        .read(4, "k", "strong", "r2", 60, 70, 6);
    only(&h.check(), Anomaly::FutureRead, 1);
}

/// A last-writer-wins table can acknowledge a write below a version
/// acknowledged before the write was even sent: versions out of commit
/// order, one of the two lost when the table settles. Concurrent writes,
/// and a retry whose first attempt came first, are not.
#[test]
fn versions_out_of_commit_order_are_lost_updates() {
    let behind = H::default()
        .write(1, "k", "s", "a", 0, 10, "ok", 7)
        .write(2, "k", "t", "b", 20, 30, "ok", 6);
    only(&behind.check(), Anomaly::LostUpdate, 1);
    let cas_behind = H::default()
        .cas(1, "k", 6, "a", 0, 10, "ok", 7)
        .cas(2, "k", 5, "b", 20, 30, "ok", 6);
    only(&cas_behind.check(), Anomaly::LostUpdate, 1);
    // Concurrent: either order is a commit order.
    clean(
        &H::default()
            .write(1, "k", "s", "a", 0, 10, "ok", 7)
            .write(2, "k", "t", "b", 5, 30, "ok", 6)
            .check(),
    );
    // The retry's first attempt was sent before v7 was acknowledged.
    clean(
        &H::default()
            .write(1, "k", "s", "a", 0, 4, "info", 0)
            .write(2, "k", "t", "c", 5, 10, "ok", 7)
            .write(1, "k", "s", "a", 20, 30, "ok", 6)
            .check(),
    );
    // In commit order: fine.
    clean(
        &H::default()
            .write(1, "k", "s", "a", 0, 10, "ok", 6)
            .write(2, "k", "t", "b", 20, 30, "ok", 7)
            .check(),
    );
}

/// One process moving between sessions: its program order still decides
/// what each session has written and read, session by session. A read in
/// the session that wrote, tied in time, is behind its write; the same
/// read in the session the process moved to is not bound by it.
#[test]
fn a_process_moving_between_sessions_keeps_each_session_s_order() {
    let base = || {
        H::default()
            .write(1, "k", "alice", "a", 0, 5, "ok", 1)
            .write(1, "k", "alice", "b", 5, 10, "ok", 2)
    };
    only(
        &base().read(1, "k", "session", "alice", 10, 20, 1).check(),
        Anomaly::ReadYourWrites,
        1,
    );
    clean(&base().read(1, "k", "session", "bob", 10, 20, 1).check());
    // Back in the first session, its earlier read still counts.
    let h = H::default()
        .write(1, "k", "alice", "a", 0, 5, "ok", 1)
        .read(1, "k", "session", "alice", 5, 10, 1)
        .read(1, "k", "session", "bob", 10, 10, 0)
        .read(1, "k", "session", "alice", 10, 20, 0);
    let report = h.check();
    assert_eq!(
        report.count(Anomaly::ReadYourWrites),
        1,
        "{}",
        report.render()
    );
    assert_eq!(
        report.count(Anomaly::MonotonicReads),
        1,
        "{}",
        report.render()
    );
}

/// A delete is a write of a tombstone version: reads of the deleted key
/// observe that version, a read behind it is stale, a conditional delete
/// competes with conditional writes, and a record re-created after a
/// delete (expecting it absent again) is not a second win on "absent".
#[test]
fn deletes_are_versions() {
    // Created, deleted, re-created: two writes expecting the key absent,
    // each after its own absence.
    let recreated = H::default()
        .cas(1, "k", 0, "a", 0, 10, "ok", 1)
        .delete(1, "k", Some(1), "d", 20, 30, "ok", 2)
        .read(2, "k", "strong", "r", 40, 50, 2)
        .cas(1, "k", 0, "b", 60, 70, "ok", 3)
        .read(2, "k", "strong", "r", 80, 90, 3);
    clean(&recreated.check());
    // Without the delete, the second create is a lost update.
    let twice = H::default()
        .cas(1, "k", 0, "a", 0, 10, "ok", 1)
        .cas(2, "k", 0, "b", 60, 70, "ok", 3);
    only(&twice.check(), Anomaly::LostUpdate, 1);
    // Two creates on the same tombstone both winning is one too (both
    // given version 3).
    let both = H::default()
        .cas(1, "k", 0, "a", 0, 10, "ok", 1)
        .delete(1, "k", Some(1), "d", 20, 30, "ok", 2)
        .cas(1, "k", 0, "b", 60, 70, "ok", 3)
        .cas(2, "k", 0, "c", 60, 75, "ok", 3);
    only(&both.check(), Anomaly::LostUpdate, 1);
    // A conditional delete and a conditional write won on one version.
    let raced = H::default()
        .cas(1, "k", 0, "a", 0, 10, "ok", 1)
        .delete(2, "k", Some(1), "d", 20, 30, "ok", 2)
        .cas(3, "k", 1, "c", 20, 35, "ok", 3);
    only(&raced.check(), Anomaly::LostUpdate, 1);
    // A strong read after the delete completed that still sees the record.
    let stale = H::default()
        .cas(1, "k", 0, "a", 0, 10, "ok", 1)
        .delete(1, "k", None, "d", 20, 30, "ok", 2)
        .read(2, "k", "strong", "r", 40, 50, 1);
    only(&stale.check(), Anomaly::StaleRead, 1);
    // A session that deleted the record reading it again.
    let own = H::default()
        .cas(1, "k", 0, "a", 0, 10, "ok", 1)
        .line(r#"{"process":1,"type":"invoke","op":"delete","key":"k","session":"s","idem":"d","time":20}"#.into())
        .line(r#"{"process":1,"type":"ok","op":"delete","key":"k","session":"s","version":2,"time":30}"#.into())
        .read(1, "k", "session", "s", 40, 50, 1);
    only(&own.check(), Anomaly::ReadYourWrites, 1);
    // A delete whose outcome is unknown explains one version, once.
    let unknown = H::default()
        .cas(1, "k", 0, "a", 0, 10, "ok", 1)
        .delete(2, "k", Some(1), "d", 20, 30, "info", 0)
        .read(3, "k", "strong", "r", 40, 50, 2);
    clean(&unknown.check());
    let unexplained = H::default()
        .cas(1, "k", 0, "a", 0, 10, "ok", 1)
        .delete(2, "k", Some(1), "d", 20, 30, "info", 0)
        .read(3, "k", "strong", "r", 40, 50, 3);
    only(&unexplained.check(), Anomaly::FutureRead, 1);
    // An ok delete names its tombstone's version.
    let malformed = r#"{"process":1,"type":"invoke","op":"delete","key":"k","time":1}
{"process":1,"type":"ok","op":"delete","key":"k","time":2}"#;
    assert!(matches!(
        check(malformed.as_bytes()),
        Err(HistoryError::Malformed { line: 2, .. })
    ));
}

/// A multi-record write's invoke and completion: `records` as
/// (key, kind, expect), and on `ok` the versions of its written records.
fn txn(
    h: H,
    p: u64,
    records: &[(&str, &str, Option<u64>)],
    idem: &str,
    t0: u64,
    t1: u64,
    outcome: &str,
    versions: &[(&str, u64)],
) -> H {
    let recs: Vec<String> = records
        .iter()
        .map(|(k, kind, e)| {
            let e = e.map_or(String::new(), |e| format!(r#","expect":{e}"#));
            format!(r#"{{"key":"{k}","kind":"{kind}"{e}}}"#)
        })
        .collect();
    let vs: Vec<String> = versions
        .iter()
        .map(|(k, v)| format!(r#"{{"key":"{k}","version":{v}}}"#))
        .collect();
    let first = records[0].0;
    let done = if outcome == "ok" {
        format!(r#","versions":[{}]"#, vs.join(","))
    } else {
        String::new()
    };
    h.line(format!(r#"{{"process":{p},"type":"invoke","op":"txn","key":"{first}","records":[{}],"idem":"{idem}","time":{t0}}}"#, recs.join(",")))
        .line(format!(r#"{{"process":{p},"type":"{outcome}","op":"txn","key":"{first}"{done},"time":{t1}}}"#))
}

/// Multi-record writes: each written record is a write of that record,
/// one logical write across them (no false double application), a second
/// application of the whole write is one per record, and a strong read
/// that misses a record after another strong read saw another record of
/// the same write is a fractured read.
#[test]
fn multi_record_writes() {
    let base = || {
        H::default()
            .write(1, "a", "s", "a1", 0, 5, "ok", 1)
            .write(1, "b", "s", "b1", 6, 9, "ok", 1)
    };
    let transfer = [
        ("a", "put", Some(1)),
        ("b", "put", Some(1)),
        ("c", "check", Some(0)),
    ];
    // Applied once, seen whole: clean.
    let whole = txn(
        base(),
        2,
        &transfer,
        "t",
        10,
        100,
        "ok",
        &[("a", 2), ("b", 2)],
    )
    .read(3, "a", "strong", "r", 20, 30, 2)
    .read(4, "b", "strong", "q", 40, 50, 2);
    clean(&whole.check());
    // Seen in a, then missed in b before the write's acknowledgement.
    let fractured = txn(
        base(),
        2,
        &transfer,
        "t",
        10,
        100,
        "ok",
        &[("a", 2), ("b", 2)],
    )
    .read(3, "a", "strong", "r", 20, 30, 2)
    .read(4, "b", "strong", "q", 40, 50, 1);
    only(&fractured.check(), Anomaly::FracturedRead, 1);
    // Missed in b with nothing seen yet: the write may not have committed.
    let early = txn(
        base(),
        2,
        &transfer,
        "t",
        10,
        100,
        "ok",
        &[("a", 2), ("b", 2)],
    )
    .read(4, "b", "strong", "q", 40, 50, 1)
    .read(3, "a", "strong", "r", 60, 70, 2);
    clean(&early.check());
    // Missed after the acknowledgement: a stale read, not a fractured one.
    let late = txn(
        base(),
        2,
        &transfer,
        "t",
        10,
        100,
        "ok",
        &[("a", 2), ("b", 2)],
    )
    .read(3, "a", "strong", "r", 20, 30, 2)
    .read(4, "b", "strong", "q", 110, 120, 1);
    only(&late.check(), Anomaly::StaleRead, 1);
    // A session read promises no atomicity to others.
    let session = txn(
        base(),
        2,
        &transfer,
        "t",
        10,
        100,
        "ok",
        &[("a", 2), ("b", 2)],
    )
    .read(3, "a", "strong", "r", 20, 30, 2)
    .read(4, "b", "session", "q", 40, 50, 1);
    clean(&session.check());
    // The same logical write applied twice: once per record.
    let twice = txn(
        base(),
        2,
        &transfer,
        "t",
        10,
        100,
        "ok",
        &[("a", 2), ("b", 2)],
    );
    let twice = txn(
        twice,
        5,
        &[("a", "put", None), ("b", "put", None)],
        "t",
        110,
        120,
        "ok",
        &[("a", 3), ("b", 3)],
    );
    only(&twice.check(), Anomaly::DuplicateApplication, 2);
    // Two writes winning on one expected version of a record.
    let lost = txn(
        base(),
        2,
        &transfer,
        "t",
        10,
        100,
        "ok",
        &[("a", 2), ("b", 2)],
    );
    let lost = txn(
        lost,
        5,
        &[("a", "put", Some(1)), ("d", "put", None)],
        "u",
        10,
        100,
        "ok",
        &[("a", 2), ("d", 1)],
    );
    assert_eq!(lost.check().count(Anomaly::LostUpdate), 1);
    // A delete inside a write, and an unknown outcome: clean.
    let mixed = txn(
        base(),
        2,
        &[("a", "delete", Some(1)), ("b", "put", None)],
        "t",
        10,
        100,
        "info",
        &[],
    )
    .read(3, "a", "strong", "r", 120, 130, 2);
    clean(&mixed.check());
}

/// Malformed multi-record writes are refused with their line.
#[test]
fn malformed_multi_record_writes() {
    let invoke = |body: &str| {
        format!(r#"{{"process":1,"type":"invoke","op":"txn","key":"a",{body}"time":1}}"#)
    };
    for (why, lines) in [
        ("no records", vec![invoke("")]),
        ("no records at all", vec![invoke(r#""records":[],"#)]),
        (
            "a record twice",
            vec![invoke(r#""records":[{"key":"a","kind":"put"},{"key":"a","kind":"delete"}],"#)],
        ),
        (
            "only checks",
            vec![invoke(r#""records":[{"key":"a","kind":"check","expect":1}],"#)],
        ),
        (
            "a check without expect",
            vec![invoke(r#""records":[{"key":"a","kind":"put"},{"key":"b","kind":"check"}],"#)],
        ),
        (
            "key is not the first record's",
            vec![invoke(r#""records":[{"key":"b","kind":"put"}],"#)],
        ),
        (
            "records on a write",
            vec![r#"{"process":1,"type":"invoke","op":"write","key":"a","records":[{"key":"a","kind":"put"}],"time":1}"#.to_owned()],
        ),
        (
            "an ok without versions",
            vec![
                invoke(r#""records":[{"key":"a","kind":"put"}],"#),
                r#"{"process":1,"type":"ok","op":"txn","key":"a","time":2}"#.to_owned(),
            ],
        ),
        (
            "a version for a record it did not write",
            vec![
                invoke(r#""records":[{"key":"a","kind":"put"}],"#),
                r#"{"process":1,"type":"ok","op":"txn","key":"a","versions":[{"key":"z","version":1}],"time":2}"#.to_owned(),
            ],
        ),
        (
            "a version missing",
            vec![
                invoke(r#""records":[{"key":"a","kind":"put"},{"key":"b","kind":"put"}],"#),
                r#"{"process":1,"type":"ok","op":"txn","key":"a","versions":[{"key":"a","version":1}],"time":2}"#.to_owned(),
            ],
        ),
    ] {
        let text = lines.join("\n");
        match check(text.as_bytes()) {
            Err(HistoryError::Malformed { line, .. }) => {
                assert_eq!(line, lines.len(), "{why}")
            }
            other => panic!("{why}: {other:?}"),
        }
    }
}

proptest::proptest! {
    /// Whatever operations a history holds — reads, writes, conditional
    /// writes, deletes and multi-record writes, at any times, with any
    /// outcomes and versions, well paired or not — checking it returns a
    /// report or a typed error, and never panics.
    #[test]
    fn checking_arbitrary_histories_never_panics(ops in proptest::collection::vec(
        (0u64..4, 0u8..6, 0u8..3, 0u64..4, 0u64..60, 0u64..60, 0u8..3),
        0..40,
    )) {
        let mut h = H::default();
        for (p, kind, key, version, t0, dt, outcome) in ops {
            let key = ["a", "b", "c"][key as usize];
            let other = if key == "a" { "b" } else { "a" };
            let outcome = ["ok", "fail", "info"][outcome as usize];
            let t1 = t0 + dt;
            h = match kind {
                0 => h.read(p, key, "strong", "s", t0, t1, version),
                1 => h.read(p, key, "session", "s", t0, t1, version),
                2 => h.write(p, key, "s", "i", t0, t1, outcome, version.max(1)),
                3 => h.cas(p, key, version, "j", t0, t1, outcome, version + 1),
                4 => h.delete(p, key, Some(version), "d", t0, t1, outcome, version + 1),
                _ => txn(
                    h,
                    p,
                    &[(key, "put", Some(version)), (other, "delete", None)],
                    "t",
                    t0,
                    t1,
                    outcome,
                    &[(key, version + 1), (other, version + 2)],
                ),
            };
        }
        let _ = check(h.0.join("\n").as_bytes());
    }
}
