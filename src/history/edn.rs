//! Export to Jepsen's EDN history format, for the register operations it
//! understands.
//!
//! Each key is an independent register (Jepsen's `jepsen.independent`
//! tuples `[key value]`) whose values are quorate's versions: a read's
//! `:value` is the version it observed (`nil` for an absent record), a
//! write's or delete's the version it wrote (known on completion: `nil` on
//! the invoke), a cas's `[expected written]`. Multi-record writes have no
//! register form and are left out; a trailing comment counts them.
//! Policies, sessions, regions and idempotency keys ride along as extra
//! keys (`:policy`, `:session`, `:region`, `:idem`) that Jepsen's checkers
//! ignore and its viewers show. Fault lines become `:info` events of the
//! `:nemesis` process, `:f` `:start` or `:stop`, the fault as `:value`.
//!
//! ```
//! let history = r#"{"process":0,"type":"invoke","op":"read","key":"a","policy":"strong","time":1}
//! {"process":0,"type":"ok","op":"read","key":"a","version":2,"time":5}"#;
//! let mut out = Vec::new();
//! let written = quorate::history::edn::export(history.as_bytes(), &mut out)?;
//! assert_eq!(written, 2);
//! let text = String::from_utf8(out).unwrap();
//! assert!(text.starts_with("{:index 0, :type :invoke, :f :read, :process 0, :time 1, :value [\"a\" nil]"));
//! # Ok::<(), quorate::history::HistoryError>(())
//! ```

use std::collections::HashMap;
use std::io::{BufRead, Write};

use super::{parse, EventSink, EventType, HistoryError, HistoryPolicy, OpKind, ParsedEvent};

/// Writes `input` (JSON Lines) as EDN, one map per line; returns the
/// number of events written (operations and faults). Malformed input is the checker's
/// [`HistoryError`], naming the line.
pub fn export(input: impl BufRead, out: &mut impl Write) -> Result<u64, HistoryError> {
    let mut sink = Edn {
        out,
        index: 0,
        skipped: 0,
        pending: HashMap::new(),
        error: None,
    };
    parse(input, &mut sink)?;
    if let Some(e) = sink.error {
        return Err(HistoryError::Io(e));
    }
    if sink.skipped > 0 {
        writeln!(
            sink.out,
            ";; {} multi-record write events left out (no register form)",
            sink.skipped
        )?;
    }
    Ok(sink.index)
}

struct Edn<'w, W: Write> {
    out: &'w mut W,
    index: u64,
    skipped: u64,
    /// A cas's expected version, by process, until it completes.
    pending: HashMap<u64, u64>,
    error: Option<std::io::Error>,
}

/// `s` as an EDN string.
fn string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn version(v: Option<u64>) -> String {
    match v {
        Some(0) | None => "nil".into(),
        Some(v) => v.to_string(),
    }
}

impl<W: Write> Edn<'_, W> {
    fn write(&mut self, line: &str) {
        if self.error.is_none() {
            if let Err(err) = writeln!(self.out, "{line}") {
                self.error = Some(err);
            }
        }
        self.index += 1;
    }
}

impl<W: Write> EventSink for Edn<'_, W> {
    fn fault(&mut self, _line: usize, f: super::FaultEvent) -> Result<(), String> {
        let phase = match f.nemesis {
            super::FaultPhase::Start => "start",
            super::FaultPhase::Stop => "stop",
        };
        let mut line = format!(
            "{{:index {}, :type :info, :f :{phase}, :process :nemesis, :time {}, :value {}",
            self.index,
            f.time,
            string(&f.fault)
        );
        if let Some(e) = &f.error {
            line.push_str(&format!(", :error {}", string(e)));
        }
        line.push('}');
        self.write(&line);
        Ok(())
    }

    fn event(&mut self, _line: usize, e: ParsedEvent<'_>) -> Result<(), String> {
        if e.op == OpKind::Txn {
            self.skipped += 1;
            return Ok(());
        }
        let kind = match e.kind {
            EventType::Invoke => "invoke",
            EventType::Ok => "ok",
            EventType::Fail => "fail",
            EventType::Info => "info",
        };
        let f = match e.op {
            OpKind::Read => "read",
            OpKind::Write => "write",
            OpKind::Cas => "cas",
            OpKind::Delete => "delete",
            OpKind::Txn => unreachable!("left out above"),
        };
        let value = match (e.op, e.kind) {
            (OpKind::Cas, EventType::Invoke) => {
                let expect = e.expect.unwrap_or(0);
                self.pending.insert(e.process, expect);
                format!("[{} nil]", version(Some(expect)))
            }
            (OpKind::Cas, _) => {
                let expect = self.pending.remove(&e.process).unwrap_or(0);
                format!("[{} {}]", version(Some(expect)), version(e.version))
            }
            (_, EventType::Invoke) => "nil".into(),
            _ => version(e.version),
        };
        let mut line = format!(
            "{{:index {}, :type :{kind}, :f :{f}, :process {}, :time {}, :value [{} {value}]",
            self.index,
            e.process,
            e.time,
            string(e.key)
        );
        if let Some(p) = e.policy {
            let p = match p {
                HistoryPolicy::Strong => "strong".to_owned(),
                HistoryPolicy::Session => "session".to_owned(),
                HistoryPolicy::Bounded(ms) => format!("bounded:{ms}"),
                HistoryPolicy::Eventual => "eventual".to_owned(),
            };
            line.push_str(&format!(", :policy {}", string(&p)));
        }
        for (name, v) in [
            ("session", e.session),
            ("region", e.region),
            ("idem", e.idem),
        ] {
            if let Some(v) = v {
                line.push_str(&format!(", :{name} {}", string(v)));
            }
        }
        line.push('}');
        self.write(&line);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn registers_export_and_transactions_are_counted() {
        let history = [
            r#"{"process":1,"type":"invoke","op":"cas","key":"k\"1","expect":0,"idem":"i-1","time":1}"#,
            r#"{"process":1,"type":"ok","op":"cas","key":"k\"1","version":1,"region":"eu","time":2}"#,
            r#"{"process":2,"type":"invoke","op":"write","key":"k\"1","time":3}"#,
            r#"{"process":2,"type":"info","op":"write","key":"k\"1","time":4}"#,
            r#"{"process":3,"type":"invoke","op":"txn","key":"a","records":[{"key":"a","kind":"put"}],"time":5}"#,
            r#"{"process":3,"type":"ok","op":"txn","key":"a","versions":[{"key":"a","version":1}],"time":6}"#,
            r#"{"process":4,"type":"invoke","op":"read","key":"k\"1","policy":"bounded:50","session":"s","time":7}"#,
            r#"{"process":4,"type":"ok","op":"read","key":"k\"1","version":0,"time":8}"#,
            r#"{"nemesis":"start","fault":"eu \"x\" cut","time":9}"#,
        ]
        .join("\n");
        let mut out = Vec::new();
        assert_eq!(export(history.as_bytes(), &mut out).unwrap(), 7);
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            r#"{:index 0, :type :invoke, :f :cas, :process 1, :time 1, :value ["k\"1" [nil nil]], :idem "i-1"}"#
        );
        assert_eq!(
            lines[1],
            r#"{:index 1, :type :ok, :f :cas, :process 1, :time 2, :value ["k\"1" [nil 1]], :region "eu"}"#
        );
        assert_eq!(
            lines[3],
            r#"{:index 3, :type :info, :f :write, :process 2, :time 4, :value ["k\"1" nil]}"#
        );
        assert!(
            lines[4].contains(":policy \"bounded:50\", :session \"s\""),
            "{}",
            lines[4]
        );
        assert_eq!(
            lines[6],
            r#"{:index 6, :type :info, :f :start, :process :nemesis, :time 9, :value "eu \"x\" cut"}"#
        );
        assert_eq!(
            lines[7],
            ";; 2 multi-record write events left out (no register form)"
        );
    }

    #[test]
    fn malformed_input_names_the_line() {
        let bad = "{\"process\":0,\"type\":\"invoke\",\"op\":\"read\",\"key\":\"a\",\"time\":1}\nnot json\n";
        match export(bad.as_bytes(), &mut Vec::new()) {
            Err(HistoryError::Malformed { line: 2, .. }) => {}
            other => panic!("{other:?}"),
        }
    }

    proptest! {
        #[test]
        fn any_bytes_export_or_fail_typed(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = export(&bytes[..], &mut Vec::new());
        }

        #[test]
        fn strings_stay_one_edn_string(s in "\\PC{0,40}") {
            let e = string(&s);
            prop_assert!(e.starts_with('"') && e.ends_with('"'));
            prop_assert!(!e.contains('\n'));
        }
    }
}
