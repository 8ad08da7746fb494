//! [`SpannerSettings`]: the backend's settings from a file or the
//! environment (section `[spanner]`, variables `QUORATE__SPANNER__…`; see
//! [`quorate::settings`]).
//!
//! ```toml
//! [spanner]
//! database = "projects/acme/instances/orders/databases/orders"
//! # The instance configuration's replica locations (nam-eur-asia1 below).
//! regions = ["us-central1", "us-central2", "europe-west1", "asia-east1"]
//! local = "us-central1"
//! idempotency_ttl = "1d"
//! ```
//!
//! Credentials come from Google's chain (`GOOGLE_APPLICATION_CREDENTIALS`,
//! the metadata server); `SPANNER_EMULATOR_HOST` (or `emulator_host`)
//! points at the emulator instead.

use std::time::Duration;

use quorate::Error;
use serde::{Deserialize, Serialize};

// The core's settings (the loader, the client's section, durations), so
// that this module is the one place a service looks.
pub use quorate::settings::*;

use crate::SpannerConfig;

/// The backend's settings (section `[spanner]`); see the [module
/// docs](self). [`SpannerConfig::from_settings`] makes the configuration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct SpannerSettings {
    /// [`SpannerConfig::database`].
    pub database: String,
    /// [`SpannerConfig::regions`]: the instance configuration's replica
    /// locations.
    pub regions: Vec<String>,
    /// [`SpannerConfig::local`].
    pub local: String,
    /// [`SpannerConfig::table`].
    #[serde(default = "default_table")]
    pub table: String,
    /// [`SpannerConfig::idempotency_ttl`].
    #[serde(default = "default_ttl", with = "human")]
    pub idempotency_ttl: Duration,
    /// [`SpannerConfig::serialize_read_write`].
    #[serde(default)]
    pub serialize_read_write: bool,
    /// [`SpannerConfig::emulator_host`].
    #[serde(default)]
    pub emulator_host: Option<String>,
    /// A credentials file ([`crate::Credentials::File`]); Application
    /// Default Credentials when absent.
    #[serde(default)]
    pub credentials_file: Option<std::path::PathBuf>,
    /// [`SpannerConfig::endpoint`].
    #[serde(default)]
    pub endpoint: Option<String>,
}

fn default_table() -> String {
    "quorate_records".into()
}
fn default_ttl() -> Duration {
    Duration::from_secs(24 * 3600)
}

impl SpannerSettings {
    /// Settings in code, every other field at its default.
    pub fn new(database: &str, regions: &[&str], local: &str) -> SpannerSettings {
        SpannerSettings {
            database: database.to_owned(),
            regions: regions.iter().map(|r| (*r).to_owned()).collect(),
            local: local.to_owned(),
            table: default_table(),
            idempotency_ttl: default_ttl(),
            serialize_read_write: false,
            emulator_host: None,
            credentials_file: None,
            endpoint: None,
        }
    }

    /// The section `[spanner]` of `loader`.
    pub fn load(loader: &Loader) -> Result<SpannerSettings, SettingsError> {
        loader.section("spanner")
    }
}

fn invalid(field: &str, message: impl Into<String>) -> Error {
    Error::Settings(SettingsError {
        field: format!("spanner.{field}"),
        origin: "settings".into(),
        message: redact(&message.into()),
    })
}

impl SpannerConfig {
    /// The configuration `settings` describe; a bad value is an
    /// [`Error::Settings`] naming its field.
    pub fn from_settings(settings: &SpannerSettings) -> Result<SpannerConfig, Error> {
        crate::sql::database_path(&settings.database)
            .map_err(|e| invalid("database", e.to_string()))?;
        if settings.regions.is_empty() {
            return Err(invalid("regions", "no region is configured"));
        }
        for (i, r) in settings.regions.iter().enumerate() {
            quorate::Region::new(r)
                .map_err(|e| invalid(&format!("regions[{i}]"), e.to_string()))?;
            if settings.regions[..i].contains(r) {
                return Err(invalid(
                    &format!("regions[{i}]"),
                    format!("{r:?} is named twice"),
                ));
            }
        }
        if !settings.regions.contains(&settings.local) {
            return Err(invalid(
                "local",
                format!("{:?} is not one of the regions configured", settings.local),
            ));
        }
        if let Some(host) = &settings.emulator_host {
            if host.is_empty() || host.contains("://") {
                return Err(invalid(
                    "emulator_host",
                    format!("{host:?}: expected host:port, as SPANNER_EMULATOR_HOST"),
                ));
            }
        }
        let regions: Vec<&str> = settings.regions.iter().map(String::as_str).collect();
        let mut config = SpannerConfig::new(&settings.database, &regions, &settings.local)?;
        crate::sql::Tables::new(&settings.table).map_err(|e| invalid("table", e.to_string()))?;
        config.table = settings.table.clone();
        config.idempotency_ttl = settings.idempotency_ttl;
        config.serialize_read_write = settings.serialize_read_write;
        config.emulator_host = settings.emulator_host.clone();
        if let Some(file) = &settings.credentials_file {
            if !file.is_file() {
                return Err(invalid(
                    "credentials_file",
                    format!("{} is not a file", file.display()),
                ));
            }
            config.credentials = crate::Credentials::File(file.clone());
        }
        if let Some(endpoint) = &settings.endpoint {
            if endpoint.is_empty() || endpoint.contains("://") {
                return Err(invalid(
                    "endpoint",
                    format!("{endpoint:?}: expected a host name, as spanner.googleapis.com"),
                ));
            }
        }
        config.endpoint = settings.endpoint.clone();
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn credentials_that_cannot_be_read_name_the_file() {
        let missing = crate::backend::token_provider(&crate::Credentials::File(
            "/nonexistent/key.json".into(),
        ))
        .await
        .unwrap_err();
        assert!(
            missing.to_string().contains("/nonexistent/key.json"),
            "{missing}"
        );
        let path = std::env::temp_dir().join(format!("quorate-key-{}.json", std::process::id()));
        std::fs::write(
            &path,
            "{\"type\": \"service_account\", \"private_key\": \"not a key\"}",
        )
        .unwrap();
        let bad = crate::backend::token_provider(&crate::Credentials::File(path.clone())).await;
        std::fs::remove_file(&path).unwrap();
        let bad = bad.unwrap_err();
        assert!(
            matches!(&bad, Error::InvalidInput(m) if m.contains(&*path.to_string_lossy())),
            "{bad}"
        );
    }

    const DOC: &str = r#"
        [spanner]
        database = "projects/acme/instances/orders/databases/orders"
        regions = ["us-central1", "europe-west1"]
        local = "europe-west1"
        idempotency_ttl = "2h"
    "#;

    fn load(vars: &[(&str, &str)]) -> Result<SpannerConfig, Error> {
        let s = SpannerSettings::load(
            &Loader::new()
                .toml(DOC, "quorate.toml")
                .vars(vars.iter().copied()),
        )?;
        SpannerConfig::from_settings(&s)
    }

    #[test]
    fn settings_are_made_in_code_too() {
        let mut s = SpannerSettings::new(
            "projects/acme/instances/orders/databases/orders",
            &["us-east4", "us-east1"],
            "us-east1",
        );
        s.serialize_read_write = true;
        let c = SpannerConfig::from_settings(&s).unwrap();
        assert!(c.serialize_read_write);
        assert_eq!(c.regions.len(), 2);
    }

    #[test]
    fn settings_make_the_configuration() {
        let c = load(&[("QUORATE__SPANNER__EMULATOR_HOST", "127.0.0.1:9010")]).unwrap();
        assert_eq!(c.local.as_str(), "europe-west1");
        assert_eq!(c.regions.len(), 2);
        assert_eq!(c.idempotency_ttl, Duration::from_secs(7200));
        assert_eq!(c.emulator_host.as_deref(), Some("127.0.0.1:9010"));
    }

    #[test]
    fn bad_settings_name_their_field() {
        let cases = [
            ("QUORATE__SPANNER__DATABASE", "orders", "spanner.database"),
            ("QUORATE__SPANNER__REGIONS", "[]", "spanner.regions"),
            (
                "QUORATE__SPANNER__REGIONS",
                r#"["a", "a"]"#,
                "spanner.regions[1]",
            ),
            ("QUORATE__SPANNER__LOCAL", "asia-east1", "spanner.local"),
            (
                "QUORATE__SPANNER__EMULATOR_HOST",
                "http://h:9010",
                "spanner.emulator_host",
            ),
            ("QUORATE__SPANNER__TABLE", "no spaces", "spanner.table"),
            ("QUORATE__SPANNER__REGION", "x", "spanner.region"),
            (
                "QUORATE__SPANNER__IDEMPOTENCY_TTL",
                "60",
                "spanner.idempotency_ttl",
            ),
        ];
        for (var, value, field) in cases {
            match load(&[(var, value)]) {
                Err(Error::Settings(e)) => assert_eq!(e.field, field, "{var}={value}: {e}"),
                other => panic!("{var}={value}: {other:?}"),
            }
        }
    }
}
