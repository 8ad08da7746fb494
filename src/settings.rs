//! Settings from a TOML file and the environment.
//!
//! A service keeps quorate's settings beside its own: one TOML file with a
//! section per part — `[client]` for [`ClientSettings`], and one per
//! adapter (`[postgres]`, `[dynamodb]`, `[spanner]`) — each overridable by
//! environment variables named `QUORATE__<SECTION>__<FIELD>` (the prefix
//! is the [`Loader`]'s, `QUORATE__` by default; nested fields and map
//! entries add `__<NAME>`; names are matched in lower case). Durations are
//! written the human way: `"250ms"`, `"2s"`, `"1m30s"` (units `ns`, `us`,
//! `ms`, `s`, `m`, `h`, `d`).
//!
//! Every mistake — an unknown or misspelt field, a value of the wrong type,
//! a duration without a unit, a setting the client refuses — is a
//! [`SettingsError`] that names the field and where its value came from (the
//! file, or the variable); secrets in connection strings never appear in it.
//!
//! ```
//! use std::time::Duration;
//! use quorate::settings::{ClientSettings, Loader};
//!
//! let loader = Loader::new()
//!     .toml(
//!         r#"
//!         [client]
//!         read_deadline = "750ms"
//!         retry.max_attempts = 4
//!         "#,
//!         "quorate.toml",
//!     )
//!     // In a service: the process environment (the default).
//!     .vars([("QUORATE__CLIENT__WRITE_DEADLINE", "3s")]);
//! let settings: ClientSettings = loader.section("client")?;
//! assert_eq!(settings.read_deadline, Duration::from_millis(750));
//! assert_eq!(settings.write_deadline, Duration::from_secs(3));
//! let config = settings.to_config()?;
//! assert_eq!(config.retry.max_attempts, Some(4));
//!
//! let typo = Loader::new()
//!     .toml("[client]\nread_dedline = \"1s\"", "quorate.toml")
//!     .vars::<[(&str, &str); 0], _, _>([])
//!     .section::<ClientSettings>("client")
//!     .unwrap_err();
//! assert!(typo.to_string().contains("read_dedline"));
//! # Ok::<(), quorate::Error>(())
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::client::{ClientConfig, Hedge};
use crate::retry::RetryPolicy;

/// A setting that is not right: which field, where its value came from,
/// and what is wrong.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid setting `{field}` (from {origin}): {message}")]
pub struct SettingsError {
    /// The field, as a dotted path (`client.retry.max_attempts`).
    pub field: String,
    /// Where the value came from: a file, an environment variable, or
    /// `code` for values set in code.
    pub origin: String,
    /// What is wrong, secrets redacted.
    pub message: String,
}

impl SettingsError {
    /// An error about `field`, set in code.
    pub fn new(field: &str, message: impl Into<String>) -> SettingsError {
        SettingsError {
            field: field.to_owned(),
            origin: "code".into(),
            message: redact(&message.into()),
        }
    }
}

/// The text with the secrets of connection strings hidden: a URL's
/// password (`scheme://user:secret@host`) and `password=` pairs.
pub fn redact(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    // URL user info.
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        out.push_str(head);
        let end = tail
            .find(|c: char| c.is_whitespace() || c == '"' || c == '\'' || c == '`')
            .unwrap_or(tail.len());
        let authority = &tail[..end];
        match (authority.find(':'), authority.rfind('@')) {
            (Some(colon), Some(at)) if colon < at && !authority[..colon].contains('/') => {
                out.push_str(&authority[..colon]);
                out.push_str(":<redacted>");
                out.push_str(&authority[at..]);
            }
            _ => out.push_str(authority),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    // key=value pairs.
    let mut redacted = String::with_capacity(out.len());
    let mut rest = out.as_str();
    while let Some(i) = rest.find("password=") {
        let (head, tail) = rest.split_at(i + "password=".len());
        redacted.push_str(head);
        let end = tail
            .find(|c: char| c.is_whitespace() || c == '"' || c == '\'' || c == '`' || c == '&')
            .unwrap_or(tail.len());
        redacted.push_str("<redacted>");
        rest = &tail[end..];
    }
    redacted.push_str(rest);
    redacted
}

/// Parses a duration written the human way: one or more `<number><unit>`
/// groups (`"250ms"`, `"2s"`, `"1.5s"`, `"1m30s"`), units `ns`, `us` (or
/// `µs`), `ms`, `s`, `m`, `h`, `d`; `"0"` is zero.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let s = text.trim();
    let expected = || {
        format!("{text:?} is not a duration: write a number and a unit, e.g. \"250ms\", \"2s\", \"1m30s\"")
    };
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    if s.is_empty() {
        return Err(expected());
    }
    let mut total: u128 = 0;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(expected)?;
        let (number, tail) = rest.split_at(digits);
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let nanos_per: u128 = match unit.trim() {
            "ns" => 1,
            "us" | "µs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" | "min" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            "d" => 86_400_000_000_000,
            _ => return Err(expected()),
        };
        let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
        if whole.is_empty() && fraction.is_empty() || fraction.contains('.') {
            return Err(expected());
        }
        let whole: u128 = if whole.is_empty() {
            0
        } else {
            whole.parse().map_err(|_| expected())?
        };
        let mut nanos = whole.checked_mul(nanos_per).ok_or_else(expected)?;
        if !fraction.is_empty() {
            // Digits beyond nanoseconds are dropped.
            let digits: String = fraction.chars().take(30).collect();
            let numerator: u128 = digits.parse().map_err(|_| expected())?;
            let scale = 10u128.pow(digits.len() as u32);
            nanos = nanos
                .checked_add(numerator.checked_mul(nanos_per).ok_or_else(expected)? / scale)
                .ok_or_else(expected)?;
        }
        total = total.checked_add(nanos).ok_or_else(expected)?;
        rest = tail.trim_start();
    }
    let secs = u64::try_from(total / 1_000_000_000).map_err(|_| expected())?;
    Ok(Duration::new(secs, (total % 1_000_000_000) as u32))
}

/// A duration written the human way, exactly: the largest units first
/// (`"1m30s"`, `"1s500ms"`, `"0"`). [`parse_duration`] reads it back.
pub fn format_duration(d: Duration) -> String {
    let mut nanos = d.as_nanos();
    if nanos == 0 {
        return "0".into();
    }
    let mut out = String::new();
    for (unit, size) in [
        ("d", 86_400_000_000_000u128),
        ("h", 3_600_000_000_000),
        ("m", 60_000_000_000),
        ("s", 1_000_000_000),
        ("ms", 1_000_000),
        ("us", 1_000),
        ("ns", 1),
    ] {
        if nanos >= size {
            out.push_str(&format!("{}{unit}", nanos / size));
            nanos %= size;
        }
    }
    out
}

/// `#[serde(with = "quorate::settings::human")]`: a [`Duration`] as a human
/// string (`"250ms"`).
pub mod human {
    use super::*;

    /// Writes `d` as [`format_duration`] does.
    pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_duration(*d))
    }

    /// Reads a duration as [`parse_duration`] does.
    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        parse_duration(&text).map_err(serde::de::Error::custom)
    }
}

/// `#[serde(with = "quorate::settings::human_option")]`: an optional
/// [`Duration`] as a human string; absent (or `"none"`) is `None`.
pub mod human_option {
    use super::*;

    /// Writes `Some(d)` as [`format_duration`] does, `None` as `"none"`.
    pub fn serialize<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_str(&format_duration(*d)),
            None => s.serialize_str("none"),
        }
    }

    /// Reads a duration as [`parse_duration`] does, or `"none"`.
    pub fn deserialize<'de, D: serde::Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Duration>, D::Error> {
        let text = String::deserialize(d)?;
        if text.trim() == "none" {
            return Ok(None);
        }
        parse_duration(&text)
            .map(Some)
            .map_err(serde::de::Error::custom)
    }
}

/// Where settings come from: a TOML document (a file, or text), then
/// environment variables under a prefix that override it field by field.
#[derive(Clone, Debug)]
pub struct Loader {
    document: Option<(String, String)>,
    file: Option<PathBuf>,
    prefix: String,
    vars: Option<Vec<(String, String)>>,
}

impl Default for Loader {
    fn default() -> Loader {
        Loader::new()
    }
}

impl Loader {
    /// No file, the process environment under `QUORATE__`.
    pub fn new() -> Loader {
        Loader {
            document: None,
            file: None,
            prefix: "QUORATE__".into(),
            vars: None,
        }
    }

    /// Reads the TOML file at `path` (a missing file is an error).
    pub fn file(mut self, path: impl AsRef<Path>) -> Loader {
        self.file = Some(path.as_ref().to_owned());
        self
    }

    /// Takes the TOML document `text`, named `origin` in errors.
    pub fn toml(mut self, text: &str, origin: &str) -> Loader {
        self.document = Some((text.to_owned(), origin.to_owned()));
        self
    }

    /// Environment variables under `prefix` override the document
    /// (`QUORATE__` by default).
    pub fn env_prefix(mut self, prefix: &str) -> Loader {
        self.prefix = prefix.to_owned();
        self
    }

    /// These variables instead of the process environment.
    pub fn vars<I, K, V>(mut self, vars: I) -> Loader
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        self.vars = Some(
            vars.into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        );
        self
    }

    /// The section `name` of the document with its overrides, as `T`.
    /// A missing section is an empty one (every field at its default).
    pub fn section<T: DeserializeOwned>(&self, name: &str) -> Result<T, SettingsError> {
        let (document, origin) = self.document()?;
        let mut origins: BTreeMap<String, String> = BTreeMap::new();
        let mut section = match document.get(name) {
            None => toml::Table::new(),
            Some(toml::Value::Table(t)) => t.clone(),
            Some(_) => {
                return Err(SettingsError {
                    field: name.to_owned(),
                    origin,
                    message: "must be a table ([section])".into(),
                })
            }
        };
        let section_prefix = format!("{}{}__", self.prefix, name.to_ascii_uppercase());
        let vars: Vec<(String, String)> = match &self.vars {
            Some(v) => v.clone(),
            None => std::env::vars().collect(),
        };
        for (key, value) in vars {
            let Some(path) = key.strip_prefix(&section_prefix) else {
                continue;
            };
            let path: Vec<String> = path.split("__").map(str::to_ascii_lowercase).collect();
            if path.iter().any(String::is_empty) {
                return Err(SettingsError {
                    field: format!("{name}.{}", path.join(".")),
                    origin: key.clone(),
                    message: "an empty name between `__`".into(),
                });
            }
            let dotted = path.join(".");
            set_path(&mut section, &path, scalar(&value)).map_err(|message| SettingsError {
                field: format!("{name}.{dotted}"),
                origin: key.clone(),
                message,
            })?;
            origins.insert(dotted, key);
        }
        let value = toml::Value::Table(section);
        serde_path_to_error::deserialize(value).map_err(|e| {
            let path = e.path().to_string();
            let path = if path == "." { String::new() } else { path };
            let origin = origins
                .iter()
                .filter(|(p, _)| {
                    !path.is_empty() && (path == **p || p.starts_with(&format!("{path}.")))
                })
                .map(|(_, v)| v.clone())
                .next()
                .unwrap_or_else(|| origin.clone());
            // A secret's value never shows, whatever serde says of it.
            let secret = ["secret", "password", "token"]
                .iter()
                .any(|w| path.to_ascii_lowercase().contains(w));
            let message = if secret {
                "not a valid value (not shown: the field holds a secret)".to_owned()
            } else {
                redact(&e.into_inner().to_string())
            };
            SettingsError {
                field: if path.is_empty() {
                    name.to_owned()
                } else {
                    format!("{name}.{path}")
                },
                origin,
                message,
            }
        })
    }

    fn document(&self) -> Result<(toml::Table, String), SettingsError> {
        let (text, origin) = match (&self.document, &self.file) {
            (Some((text, origin)), _) => (text.clone(), origin.clone()),
            (None, Some(path)) => {
                let origin = path.display().to_string();
                let text = std::fs::read_to_string(path).map_err(|e| SettingsError {
                    field: "(file)".into(),
                    origin: origin.clone(),
                    message: format!("cannot read the settings file: {e}"),
                })?;
                (text, origin)
            }
            (None, None) => return Ok((toml::Table::new(), "defaults".into())),
        };
        let table: toml::Table = toml::from_str(&text).map_err(|e| SettingsError {
            field: "(file)".into(),
            origin: origin.clone(),
            message: redact(e.message()),
        })?;
        Ok((table, origin))
    }
}

/// An environment value as TOML when it reads as a TOML value (a number, a
/// boolean, a quoted string, an array, an inline table), else as a string.
fn scalar(text: &str) -> toml::Value {
    match toml::from_str::<toml::Table>(&format!("v = {text}")) {
        Ok(mut t) => t
            .remove("v")
            .unwrap_or(toml::Value::String(text.to_owned())),
        Err(_) => toml::Value::String(text.to_owned()),
    }
}

fn set_path(table: &mut toml::Table, path: &[String], value: toml::Value) -> Result<(), String> {
    let (last, parents) = path.split_last().ok_or("an empty path")?;
    let mut at = table;
    for p in parents {
        let entry = at
            .entry(p.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        at = match entry {
            toml::Value::Table(t) => t,
            _ => return Err(format!("`{p}` is not a table, so it has no fields")),
        };
    }
    at.insert(last.clone(), value);
    Ok(())
}

/// The client's settings as a file or the environment gives them
/// (section `[client]`): [`ClientConfig`]'s fields, durations the human
/// way. `ClientSettings::default()` is the strict default configuration.
/// Build one in code with [`ClientSettings::builder`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct ClientSettings {
    /// [`ClientConfig::read_deadline`].
    #[serde(with = "human")]
    pub read_deadline: Duration,
    /// [`ClientConfig::write_deadline`].
    #[serde(with = "human")]
    pub write_deadline: Duration,
    /// [`ClientConfig::attempt_timeout`].
    #[serde(with = "human")]
    pub attempt_timeout: Duration,
    /// [`ClientConfig::adaptive_timeouts`].
    pub adaptive_timeouts: bool,
    /// [`ClientConfig::min_attempt_timeout`].
    #[serde(with = "human")]
    pub min_attempt_timeout: Duration,
    /// [`ClientConfig::retry`].
    pub retry: RetryPolicy,
    /// [`ClientConfig::retry_budget_ratio`].
    pub retry_budget_ratio: f64,
    /// [`ClientConfig::retry_budget_reserve`].
    pub retry_budget_reserve: u32,
    /// [`ClientConfig::region_ejection`].
    #[serde(with = "human")]
    pub region_ejection: Duration,
    /// [`ClientConfig::failure_threshold`].
    pub failure_threshold: u32,
    /// [`ClientConfig::hedge`].
    pub hedge: Option<Hedge>,
    /// [`ClientConfig::home_failover`].
    #[serde(with = "human_option")]
    pub home_failover: Option<Duration>,
    /// [`ClientConfig::clock_uncertainty`].
    #[serde(with = "human")]
    pub clock_uncertainty: Duration,
    /// [`ClientConfig::seed`].
    pub seed: Option<u64>,
    /// [`ClientConfig::clock_exclusion`].
    pub clock_exclusion: f64,
    /// [`ClientConfig::clock_warning`].
    #[serde(with = "human")]
    pub clock_warning: Duration,
    /// [`ClientConfig::clock_sample_ttl`].
    #[serde(with = "human")]
    pub clock_sample_ttl: Duration,
    /// [`ClientConfig::health_checks`].
    #[serde(with = "human_option")]
    pub health_checks: Option<Duration>,
}

impl Default for ClientSettings {
    fn default() -> ClientSettings {
        ClientSettings::from(&ClientConfig::default())
    }
}

impl From<&ClientConfig> for ClientSettings {
    fn from(c: &ClientConfig) -> ClientSettings {
        // Every field named: a field added to the configuration does not
        // compile here until the settings carry it (or say why not).
        let ClientConfig {
            read_deadline,
            write_deadline,
            attempt_timeout,
            adaptive_timeouts,
            min_attempt_timeout,
            retry,
            retry_budget_ratio,
            retry_budget_reserve,
            region_ejection,
            failure_threshold,
            hedge,
            home_failover,
            clock_uncertainty,
            seed,
            // Code, not settings.
            clock: _,
            clock_exclusion,
            clock_warning,
            clock_sample_ttl,
            health_checks,
            // A secret: set in code, from wherever the service keeps its
            // secrets.
            #[cfg(feature = "signed-tokens")]
                signing_key: _,
        } = c;
        ClientSettings {
            read_deadline: *read_deadline,
            write_deadline: *write_deadline,
            attempt_timeout: *attempt_timeout,
            adaptive_timeouts: *adaptive_timeouts,
            min_attempt_timeout: *min_attempt_timeout,
            retry: retry.clone(),
            retry_budget_ratio: *retry_budget_ratio,
            retry_budget_reserve: *retry_budget_reserve,
            region_ejection: *region_ejection,
            failure_threshold: *failure_threshold,
            hedge: hedge.clone(),
            home_failover: *home_failover,
            clock_uncertainty: *clock_uncertainty,
            seed: *seed,
            clock_exclusion: *clock_exclusion,
            clock_warning: *clock_warning,
            clock_sample_ttl: *clock_sample_ttl,
            health_checks: *health_checks,
        }
    }
}

impl ClientSettings {
    /// A builder starting from the defaults.
    pub fn builder() -> ClientSettingsBuilder {
        ClientSettingsBuilder(ClientSettings::default())
    }

    /// The section `[client]` of `loader`.
    pub fn load(loader: &Loader) -> Result<ClientSettings, SettingsError> {
        loader.section("client")
    }

    /// The client configuration, checked as [`crate::Client::new`] checks
    /// it (the system clock, no signing key: set those in code).
    pub fn to_config(&self) -> Result<ClientConfig, SettingsError> {
        let s = self.clone();
        let config = ClientConfig {
            read_deadline: s.read_deadline,
            write_deadline: s.write_deadline,
            attempt_timeout: s.attempt_timeout,
            adaptive_timeouts: s.adaptive_timeouts,
            min_attempt_timeout: s.min_attempt_timeout,
            retry: s.retry,
            retry_budget_ratio: s.retry_budget_ratio,
            retry_budget_reserve: s.retry_budget_reserve,
            region_ejection: s.region_ejection,
            failure_threshold: s.failure_threshold,
            hedge: s.hedge,
            home_failover: s.home_failover,
            clock_uncertainty: s.clock_uncertainty,
            seed: s.seed,
            clock_exclusion: s.clock_exclusion,
            clock_warning: s.clock_warning,
            clock_sample_ttl: s.clock_sample_ttl,
            health_checks: s.health_checks,
            ..ClientConfig::default()
        };
        config.validate().map_err(|e| {
            let message = match e {
                crate::Error::InvalidInput(m) => m,
                other => other.to_string(),
            };
            // The checks name their field first.
            let named = message
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.'))
                .next()
                .filter(|f| CLIENT_FIELDS.contains(f))
                .map(|f| format!("client.{f}"))
                .unwrap_or_else(|| "client".into());
            SettingsError {
                field: named,
                origin: "settings".into(),
                message: redact(&message),
            }
        })?;
        Ok(config)
    }
}

/// The fields [`ClientConfig::validate`]'s messages start with.
const CLIENT_FIELDS: [&str; 18] = [
    "read_deadline",
    "write_deadline",
    "attempt_timeout",
    "adaptive_timeouts",
    "min_attempt_timeout",
    "retry",
    "retry_budget_ratio",
    "retry_budget_reserve",
    "region_ejection",
    "failure_threshold",
    "hedge",
    "home_failover",
    "clock_uncertainty",
    "seed",
    "clock_exclusion",
    "clock_warning",
    "clock_sample_ttl",
    "health_checks",
];

/// Builds [`ClientSettings`] in code, field by field.
#[derive(Clone, Debug)]
#[must_use]
pub struct ClientSettingsBuilder(ClientSettings);

macro_rules! setters {
    ($($(#[$doc:meta])* $name:ident: $ty:ty;)*) => {
        impl ClientSettingsBuilder {
            $(
                $(#[$doc])*
                pub fn $name(mut self, value: $ty) -> ClientSettingsBuilder {
                    self.0.$name = value;
                    self
                }
            )*
        }
    };
}

setters! {
    /// [`ClientConfig::read_deadline`].
    read_deadline: Duration;
    /// [`ClientConfig::write_deadline`].
    write_deadline: Duration;
    /// [`ClientConfig::attempt_timeout`].
    attempt_timeout: Duration;
    /// [`ClientConfig::adaptive_timeouts`].
    adaptive_timeouts: bool;
    /// [`ClientConfig::min_attempt_timeout`].
    min_attempt_timeout: Duration;
    /// [`ClientConfig::retry`].
    retry: RetryPolicy;
    /// [`ClientConfig::retry_budget_ratio`].
    retry_budget_ratio: f64;
    /// [`ClientConfig::retry_budget_reserve`].
    retry_budget_reserve: u32;
    /// [`ClientConfig::region_ejection`].
    region_ejection: Duration;
    /// [`ClientConfig::failure_threshold`].
    failure_threshold: u32;
    /// [`ClientConfig::hedge`].
    hedge: Option<Hedge>;
    /// [`ClientConfig::home_failover`].
    home_failover: Option<Duration>;
    /// [`ClientConfig::clock_uncertainty`].
    clock_uncertainty: Duration;
    /// [`ClientConfig::seed`].
    seed: Option<u64>;
    /// [`ClientConfig::clock_exclusion`].
    clock_exclusion: f64;
    /// [`ClientConfig::clock_warning`].
    clock_warning: Duration;
    /// [`ClientConfig::clock_sample_ttl`].
    clock_sample_ttl: Duration;
    /// [`ClientConfig::health_checks`].
    health_checks: Option<Duration>;
}

impl ClientSettingsBuilder {
    /// The settings, checked as [`ClientSettings::to_config`] checks them.
    pub fn build(self) -> Result<ClientSettings, SettingsError> {
        self.0.to_config()?;
        Ok(self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn durations_read_the_human_way() {
        let ok = [
            ("250ms", Duration::from_millis(250)),
            ("2s", Duration::from_secs(2)),
            ("1.5s", Duration::from_millis(1500)),
            ("1m30s", Duration::from_secs(90)),
            ("1m 30s", Duration::from_secs(90)),
            ("100us", Duration::from_micros(100)),
            ("100µs", Duration::from_micros(100)),
            ("7ns", Duration::from_nanos(7)),
            ("2h", Duration::from_secs(7200)),
            ("1d", Duration::from_secs(86_400)),
            ("0", Duration::ZERO),
            (".5s", Duration::from_millis(500)),
            ("3min", Duration::from_secs(180)),
        ];
        for (text, d) in ok {
            assert_eq!(parse_duration(text), Ok(d), "{text}");
        }
        for bad in [
            "",
            "250",
            "ms",
            "2 seconds",
            "1.2.3s",
            "-1s",
            "1s-",
            "1e3ms",
            "5x",
            ".s",
            "99999999999999999999999999999d",
        ] {
            let e = parse_duration(bad).unwrap_err();
            assert!(e.contains("e.g."), "{bad}: {e}");
        }
    }

    proptest! {
        #[test]
        fn durations_round_trip(secs in 0u64..10_000_000_000, nanos in 0u32..1_000_000_000) {
            let d = Duration::new(secs, nanos);
            prop_assert_eq!(parse_duration(&format_duration(d)), Ok(d));
        }

        #[test]
        fn any_text_is_a_duration_or_an_error(text in "\\PC{0,24}") {
            let _ = parse_duration(&text);
        }

        #[test]
        fn any_document_and_variables_load_or_fail_typed(
            doc in "\\PC{0,64}",
            key in "QUORATE__CLIENT__[A-Z_]{0,24}",
            value in "\\PC{0,16}",
        ) {
            let loaded = Loader::new()
                .toml(&doc, "doc")
                .vars([(key, value)])
                .section::<ClientSettings>("client");
            if let Err(e) = loaded {
                prop_assert!(!e.field.is_empty());
            }
        }
    }

    fn load(doc: &str, vars: &[(&str, &str)]) -> Result<ClientSettings, SettingsError> {
        Loader::new()
            .toml(doc, "quorate.toml")
            .vars(vars.iter().copied())
            .section("client")
    }

    #[test]
    fn a_file_and_the_environment_make_the_settings() {
        let s = load(
            r#"
            [client]
            read_deadline = "750ms"
            home_failover = "30s"
            hedge = { percentile = 0.9, min_delay = "5ms", max_delay = "50ms" }
            [client.retry]
            max_attempts = 4
            initial_backoff = "20ms"
            "#,
            &[
                ("QUORATE__CLIENT__WRITE_DEADLINE", "3s"),
                ("QUORATE__CLIENT__RETRY__MAX_BACKOFF", "2s"),
                ("QUORATE__CLIENT__READ_DEADLINE", "1s"),
                ("QUORATE__CLIENT__ADAPTIVE_TIMEOUTS", "false"),
                ("QUORATE__CLIENT__HEALTH_CHECKS", "1s"),
                ("QUORATE_PG_DIR", "/elsewhere"),
                ("QUORATE__SPANNER__DATABASE", "not ours"),
            ],
        )
        .unwrap();
        assert_eq!(
            s.read_deadline,
            Duration::from_secs(1),
            "the environment wins"
        );
        assert_eq!(s.write_deadline, Duration::from_secs(3));
        assert_eq!(s.home_failover, Some(Duration::from_secs(30)));
        assert!(!s.adaptive_timeouts);
        assert_eq!(s.retry.max_attempts, Some(4));
        assert_eq!(s.retry.initial_backoff, Duration::from_millis(20));
        assert_eq!(s.retry.max_backoff, Duration::from_secs(2));
        assert_eq!(s.hedge.as_ref().map(|h| h.percentile), Some(0.9));
        assert_eq!(s.attempt_timeout, ClientSettings::default().attempt_timeout);
        let c = s.to_config().unwrap();
        assert_eq!(c.health_checks, Some(Duration::from_secs(1)));
        assert_eq!(c.hedge.unwrap().max_delay, Duration::from_millis(50));
        // Defaults throughout without a file.
        assert_eq!(load("", &[]).unwrap(), ClientSettings::default());
    }

    #[test]
    fn mistakes_name_the_field_and_where_it_came_from() {
        type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str, &'a str);
        let cases: [Case; 9] = [
            (
                "[client]\nread_dedline = \"1s\"",
                &[],
                "client.read_dedline",
                "unknown field",
            ),
            (
                "[client]\nread_deadline = \"1 sec\"",
                &[],
                "client.read_deadline",
                "e.g.",
            ),
            (
                "[client]\nread_deadline = 5",
                &[],
                "client.read_deadline",
                "string",
            ),
            (
                "[client.retry]\nmax_atempts = 3",
                &[],
                "client.retry.max_atempts",
                "unknown field",
            ),
            (
                "",
                &[("QUORATE__CLIENT__FAILURE_THRESHOLD", "many")],
                "client.failure_threshold",
                "QUORATE__CLIENT__FAILURE_THRESHOLD",
            ),
            (
                "",
                &[("QUORATE__CLIENT__READ_DEADLINE", "soon")],
                "client.read_deadline",
                "QUORATE__CLIENT__READ_DEADLINE",
            ),
            (
                "",
                &[("QUORATE__CLIENT__FAILURE_THRESHOLD", "0")],
                "client.failure_threshold",
                "at least 1",
            ),
            (
                "[client]\nhealth_checks = \"10s\"",
                &[],
                "client.health_checks",
                "below clock_sample_ttl",
            ),
            ("client = 3", &[], "client", "table"),
        ];
        for (doc, vars, field, says) in cases {
            let e = load(doc, vars)
                .and_then(|s| s.to_config().map(|_| s))
                .unwrap_err();
            assert_eq!(e.field, field, "{doc:?} {vars:?}: {e}");
            assert!(e.to_string().contains(says), "{doc:?} {vars:?}: {e}");
        }
        let broken = load("[client\nread_deadline = 1", &[]).unwrap_err();
        assert_eq!(broken.origin, "quorate.toml");
        let missing = Loader::new()
            .file("/nonexistent/quorate.toml")
            .section::<ClientSettings>("client")
            .unwrap_err();
        assert!(missing.to_string().contains("/nonexistent/quorate.toml"));
    }

    #[test]
    fn secrets_never_reach_an_error() {
        for text in [
            "cannot parse postgres://app:s3cret@db.example:5432/orders here",
            "host=db user=app password=s3cret dbname=orders",
            "`postgresql://app:s3cret@db/orders?sslmode=verify-full`",
        ] {
            let r = redact(text);
            assert!(!r.contains("s3cret"), "{r}");
            assert!(r.contains("<redacted>"), "{r}");
        }
        assert_eq!(redact("http://127.0.0.1:8000/x"), "http://127.0.0.1:8000/x");
        let e = load(
            "[client]\nfailure_threshold = \"postgres://app:s3cret@db/orders\"",
            &[],
        )
        .unwrap_err();
        assert!(!e.to_string().contains("s3cret"), "{e}");
        // A secret of the wrong type: serde would quote it.
        #[derive(Debug, serde::Deserialize)]
        #[allow(dead_code)]
        struct Keys {
            secret_access_key: String,
        }
        let e = Loader::new()
            .vars([("QUORATE__AWS__SECRET_ACCESS_KEY", "1234567890")])
            .section::<Keys>("aws")
            .unwrap_err();
        assert_eq!(e.field, "aws.secret_access_key");
        assert!(!e.to_string().contains("1234567890"), "{e}");
    }

    #[test]
    fn settings_built_in_code_are_checked() {
        let s = ClientSettings::builder()
            .read_deadline(Duration::from_millis(300))
            .home_failover(Some(Duration::from_secs(10)))
            .build()
            .unwrap();
        assert_eq!(
            s.to_config().unwrap().read_deadline,
            Duration::from_millis(300)
        );
        let e = ClientSettings::builder()
            .clock_exclusion(2.0)
            .build()
            .unwrap_err();
        assert_eq!(e.field, "client.clock_exclusion");
        // What the settings write reads back the same.
        let text = toml::to_string(&s).unwrap_or_default();
        let back: ClientSettings = Loader::new()
            .toml(&format!("[client]\n{text}"), "written")
            .vars::<[(&str, &str); 0], _, _>([])
            .section("client")
            .unwrap();
        assert_eq!(back, s);
    }
}
