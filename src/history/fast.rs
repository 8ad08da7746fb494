//! A fast path for the common history line: one flat JSON object whose
//! values are plain strings (no escapes) and unsigned integers. Anything
//! else — escapes, `null`, nested values, numbers with a sign, fraction or
//! exponent, duplicate fields, trailing text — is left to serde_json, which
//! then decides exactly as it always does (its result or its error). The
//! fast path only ever answers what serde_json would: a property test
//! checks the two agree on arbitrary and mutated lines.

use std::borrow::Cow;

use super::{EventType, HistoryPolicy, OpKind, RawEvent};

struct Cursor<'a> {
    bytes: &'a [u8],
    text: &'a str,
    at: usize,
}

impl<'a> Cursor<'a> {
    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.bytes.get(self.at) {
            self.at += 1;
        }
    }

    fn eat(&mut self, byte: u8) -> Option<()> {
        self.skip_ws();
        (self.bytes.get(self.at) == Some(&byte)).then(|| self.at += 1)
    }

    /// A string without escapes or control characters.
    fn string(&mut self) -> Option<&'a str> {
        self.eat(b'"')?;
        let start = self.at;
        loop {
            match *self.bytes.get(self.at)? {
                b'"' => break,
                b'\\' | 0..=0x1f => return None,
                _ => self.at += 1,
            }
        }
        let s = self.text.get(start..self.at)?;
        self.at += 1;
        Some(s)
    }

    /// An unsigned integer in JSON's form (no leading zeros), that fits.
    fn unsigned(&mut self) -> Option<u64> {
        self.skip_ws();
        let start = self.at;
        let mut n: u64 = 0;
        while let Some(&b) = self.bytes.get(self.at) {
            if !b.is_ascii_digit() {
                break;
            }
            n = n.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
            self.at += 1;
        }
        let digits = self.at - start;
        if digits == 0 || (digits > 1 && self.bytes[start] == b'0') {
            return None;
        }
        // A fraction or an exponent makes it a float: serde_json's call.
        match self.bytes.get(self.at) {
            Some(b'.' | b'e' | b'E') => None,
            _ => Some(n),
        }
    }
}

/// The event on `text` (a trimmed line), or `None` when the line needs the
/// full parser.
pub(super) fn parse_event(text: &str) -> Option<RawEvent<'_>> {
    let mut c = Cursor {
        bytes: text.as_bytes(),
        text,
        at: 0,
    };
    c.eat(b'{')?;
    let mut process = None;
    let mut kind = None;
    let mut op = None;
    let mut key = None;
    let mut session = None;
    let mut policy = None;
    let mut expect = None;
    let mut version = None;
    let mut idem = None;
    let mut region = None;
    let mut time = None;
    // Fields seen, to leave duplicates (an error) to serde_json.
    let mut seen = 0u16;
    let mut first = true;
    loop {
        c.skip_ws();
        if c.bytes.get(c.at) == Some(&b'}') && first {
            c.at += 1;
            break;
        }
        let name = c.string()?;
        c.eat(b':')?;
        let bit = match name {
            "process" => 0,
            "type" => 1,
            "op" => 2,
            "key" => 3,
            "session" => 4,
            "policy" => 5,
            "expect" => 6,
            "version" => 7,
            "idem" => 8,
            "region" => 9,
            "time" => 10,
            // Values of their own shape: the full parser.
            "records" | "versions" => return None,
            _ => 15,
        };
        if bit != 15 {
            if seen & (1 << bit) != 0 {
                return None;
            }
            seen |= 1 << bit;
        }
        match bit {
            0 => process = Some(c.unsigned()?),
            1 => {
                kind = Some(match c.string()? {
                    "invoke" => EventType::Invoke,
                    "ok" => EventType::Ok,
                    "fail" => EventType::Fail,
                    "info" => EventType::Info,
                    _ => return None,
                })
            }
            2 => {
                op = Some(match c.string()? {
                    "read" => OpKind::Read,
                    "write" => OpKind::Write,
                    "cas" => OpKind::Cas,
                    "delete" => OpKind::Delete,
                    "txn" => OpKind::Txn,
                    _ => return None,
                })
            }
            3 => key = Some(c.string()?),
            4 => session = Some(c.string()?),
            5 => policy = Some(c.string()?.parse::<HistoryPolicy>().ok()?),
            6 => expect = Some(c.unsigned()?),
            7 => version = Some(c.unsigned()?),
            8 => idem = Some(c.string()?),
            9 => region = Some(c.string()?),
            10 => time = Some(c.unsigned()?),
            // An ignored field: a plain string or unsigned number only.
            _ => {
                c.skip_ws();
                match c.bytes.get(c.at)? {
                    b'"' => {
                        c.string()?;
                    }
                    _ => {
                        c.unsigned()?;
                    }
                }
            }
        }
        first = false;
        c.skip_ws();
        match c.bytes.get(c.at)? {
            b',' => c.at += 1,
            b'}' => {
                c.at += 1;
                break;
            }
            _ => return None,
        }
    }
    c.skip_ws();
    if c.at != c.bytes.len() {
        return None;
    }
    Some(RawEvent {
        process: process?,
        kind: kind?,
        op: op?,
        key: Cow::Borrowed(key?),
        session: session.map(Cow::Borrowed),
        policy,
        expect,
        version,
        idem: idem.map(Cow::Borrowed),
        region: region.map(Cow::Borrowed),
        records: None,
        versions: None,
        time: time?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn serde(text: &str) -> Option<RawEvent<'_>> {
        serde_json::from_str(text).ok()
    }

    const LINES: [&str; 6] = [
        r#"{"process":1,"type":"invoke","op":"cas","key":"acct:7","session":"s1","expect":3,"idem":"w-91","time":1200}"#,
        r#"{"process":1,"type":"ok","op":"cas","key":"acct:7","session":"s1","version":4,"time":1350}"#,
        r#"{"process":2,"type":"invoke","op":"read","key":"acct:7","session":"s2","policy":"bounded:5000","client":"eu","time":1400}"#,
        r#"{"process":2,"type":"ok","op":"read","key":"acct:7","session":"s2","version":3,"region":"eu-west","time":1420}"#,
        r#"{ "time" : 5 , "op":"write", "key":"k", "type":"info", "process": 0, "value": 12 }"#,
        r#"{"process":3,"type":"invoke","op":"txn","key":"a","records":[{"key":"a","kind":"put"}],"idem":"t","time":1}"#,
    ];

    #[test]
    fn the_common_lines_take_the_fast_path_and_agree() {
        for line in &LINES[..5] {
            let fast = parse_event(line).expect("a plain line");
            assert_eq!(Some(fast), serde(line), "{line}");
        }
        assert!(parse_event(LINES[5]).is_none(), "records go to serde_json");
    }

    #[test]
    fn anything_unusual_is_left_to_serde() {
        for line in [
            r#"{"process":1,"process":1,"type":"ok","op":"read","key":"k","time":1}"#,
            r#"{"process":1,"type":"ok","op":"read","key":"k\u0031","time":1}"#,
            r#"{"process":-0,"type":"ok","op":"read","key":"k","time":1}"#,
            r#"{"process":01,"type":"ok","op":"read","key":"k","time":1}"#,
            r#"{"process":1.0,"type":"ok","op":"read","key":"k","time":1}"#,
            r#"{"process":1,"type":"ok","op":"read","key":"k","version":null,"time":1}"#,
            r#"{"process":1,"type":"ok","op":"read","key":"k","time":1}x"#,
            r#"{"process":1,"type":"ok","op":"read","key":"k","time":18446744073709551616}"#,
            r#"{"process":1,"type":"done","op":"read","key":"k","time":1}"#,
            r#"{"process":1,"type":"ok","op":"read","key":"k","extra":true,"time":1}"#,
        ] {
            assert!(parse_event(line).is_none(), "{line}");
        }
    }

    /// A line made of the fields' pieces, in any order, with any spacing,
    /// values that are sometimes of the wrong kind.
    fn line() -> impl Strategy<Value = String> {
        let value = prop_oneof![
            "[a-z0-9:\\-]{0,6}".prop_map(|s| format!("\"{s}\"")),
            prop_oneof![
                Just("invoke"),
                Just("ok"),
                Just("fail"),
                Just("info"),
                Just("read"),
                Just("cas"),
                Just("strong"),
                Just("bounded:5"),
                Just("bounded:")
            ]
            .prop_map(|s| format!("\"{s}\"")),
            any::<u64>().prop_map(|n| n.to_string()),
            (0u64..100).prop_map(|n| n.to_string()),
            prop_oneof![
                Just("null"),
                Just("-1"),
                Just("1e2"),
                Just("0.5"),
                Just("007"),
                Just("true"),
                Just("[]"),
                Just("{}"),
                Just("\"a\\\"b\""),
                Just("18446744073709551616")
            ]
            .prop_map(str::to_owned),
        ];
        let name = prop_oneof![
            Just("process"),
            Just("type"),
            Just("op"),
            Just("key"),
            Just("session"),
            Just("policy"),
            Just("expect"),
            Just("version"),
            Just("idem"),
            Just("region"),
            Just("time"),
            Just("client"),
            Just("value")
        ];
        let space = prop_oneof![Just(""), Just(" "), Just("\t"), Just("\n ")];
        proptest::collection::vec((name, value, space.clone()), 0..14).prop_map(|fields| {
            let body: Vec<String> = fields
                .into_iter()
                .map(|(n, v, s)| format!("{s}\"{n}\"{s}:{s}{v}{s}"))
                .collect();
            format!("{{{}}}", body.join(","))
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4000))]

        #[test]
        fn the_fast_path_never_disagrees_with_serde(text in line()) {
            if let Some(fast) = parse_event(&text) {
                prop_assert_eq!(Some(fast), serde(&text), "{}", text);
            }
        }

        #[test]
        fn plain_events_always_take_the_fast_path(
            process in any::<u64>(),
            version in proptest::option::of(any::<u64>()),
            key in "[a-z0-9:]{1,8}",
            time in any::<u64>(),
        ) {
            let mut e = super::super::Event::new(process, EventType::Ok, OpKind::Read, &key, time);
            e.version = version;
            e.region = Some("eu".into());
            let text = serde_json::to_string(&e).unwrap();
            let fast = parse_event(&text);
            prop_assert!(fast.is_some(), "{}", text);
            prop_assert_eq!(fast, serde(&text));
        }

        #[test]
        fn mutated_lines_never_disagree(i in 0usize..6, at in any::<prop::sample::Index>(), byte in any::<u8>()) {
            let mut bytes = LINES[i].as_bytes().to_vec();
            let at = at.index(bytes.len());
            bytes[at] = byte;
            if let Ok(text) = std::str::from_utf8(&bytes) {
                if let Some(fast) = parse_event(text) {
                    prop_assert_eq!(Some(fast), serde(text), "{}", text);
                }
            }
        }
    }
}
