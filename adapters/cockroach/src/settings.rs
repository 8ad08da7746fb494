//! [`PgSettings`]: the backend's settings from a file or the environment
//! (section `[postgres]`, variables `QUORATE__POSTGRES__…`; see
//! [`quorate::settings`]).
//!
//! ```toml
//! [postgres]
//! scope = "orders-cluster"
//! dialect = "postgres"          # or "cockroach"
//! local = "us"
//! pool_size = 16
//! idempotency_ttl = "1d"
//!
//! [postgres.regions.eu]
//! primary = "postgres://app@db-eu.example/orders?sslmode=verify-full&sslrootcert=/etc/ssl/db-ca.pem"
//!
//! [postgres.regions.us]
//! standbys = ["postgres://app@db-us-1.example/orders?sslmode=verify-full&sslrootcert=/etc/ssl/db-ca.pem"]
//! ```
//!
//! Passwords belong in the environment (`PGPASSWORD` is not read; put the
//! whole connection string in `QUORATE__POSTGRES__REGIONS__EU__PRIMARY`, or
//! use a password file or client certificates): `Debug` and every error
//! show connection strings without them.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::Duration;

// The core's settings (the loader, the client's section, durations), so
// that this module is the one place a service looks.
pub use quorate::settings::*;
use quorate::Error;
use serde::{Deserialize, Serialize};

use crate::{Dialect, Endpoint, Isolation, PgConfig, Role};

/// The servers of one region.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct PgRegionSettings {
    /// The PostgreSQL primary's connection string (in one region only).
    pub primary: Option<String>,
    /// Hot standbys' connection strings.
    pub standbys: Vec<String>,
    /// CockroachDB nodes' (or their load balancer's) connection strings.
    pub gateways: Vec<String>,
}

impl std::fmt::Debug for PgRegionSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shown = |s: &String| redact(s);
        f.debug_struct("PgRegionSettings")
            .field("primary", &self.primary.as_ref().map(shown))
            .field(
                "standbys",
                &self.standbys.iter().map(shown).collect::<Vec<_>>(),
            )
            .field(
                "gateways",
                &self.gateways.iter().map(shown).collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// The backend's settings (section `[postgres]`); see the [module
/// docs](self). [`PgConfig::from_settings`] makes the configuration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct PgSettings {
    /// [`PgConfig::scope`].
    pub scope: String,
    /// `"postgres"` (the default) or `"cockroach"`.
    #[serde(default = "default_dialect")]
    pub dialect: String,
    /// [`PgConfig::local`].
    pub local: String,
    /// [`PgConfig::table`].
    #[serde(default = "default_table")]
    pub table: String,
    /// [`PgConfig::pool_size`].
    #[serde(default = "default_pool_size")]
    pub pool_size: usize,
    /// `"read_committed"` (the default) or `"serializable"`.
    #[serde(default = "default_isolation")]
    pub isolation: String,
    /// [`PgConfig::idempotency_ttl`].
    #[serde(default = "default_ttl", with = "human")]
    pub idempotency_ttl: Duration,
    /// The servers, by region.
    pub regions: BTreeMap<String, PgRegionSettings>,
}

fn default_dialect() -> String {
    "postgres".into()
}
fn default_table() -> String {
    "quorate_records".into()
}
fn default_pool_size() -> usize {
    16
}
fn default_isolation() -> String {
    "read_committed".into()
}
fn default_ttl() -> Duration {
    Duration::from_secs(24 * 3600)
}

impl PgSettings {
    /// Settings in code: `scope` and `local`, no servers yet (add them to
    /// `regions`), every other field at its default.
    pub fn new(scope: &str, local: &str) -> PgSettings {
        PgSettings {
            scope: scope.to_owned(),
            dialect: default_dialect(),
            local: local.to_owned(),
            table: default_table(),
            pool_size: default_pool_size(),
            isolation: default_isolation(),
            idempotency_ttl: default_ttl(),
            regions: BTreeMap::new(),
        }
    }

    /// The section `[postgres]` of `loader`.
    pub fn load(loader: &Loader) -> Result<PgSettings, SettingsError> {
        loader.section("postgres")
    }
}

fn invalid(field: &str, message: impl Into<String>) -> Error {
    Error::Settings(SettingsError {
        field: format!("postgres.{field}"),
        origin: "settings".into(),
        message: redact(&message.into()),
    })
}

/// What is wrong with a connection string, if anything: its TLS settings
/// (`sslmode`, `sslrootcert`) as [`crate::tls`] reads them, the rest as
/// tokio-postgres does.
fn check_connection(connection: &str) -> Result<(), String> {
    let tls = crate::tls::split(connection).map_err(|e| e.to_string())?;
    tokio_postgres::Config::from_str(&tls.rest)
        .map(drop)
        .map_err(|e| format!("not a connection string: {e}"))
}

impl PgConfig {
    /// The configuration `settings` describe, every field checked: a bad
    /// value is an [`Error::Settings`] naming its field.
    pub fn from_settings(settings: &PgSettings) -> Result<PgConfig, Error> {
        let dialect = match settings.dialect.as_str() {
            "postgres" | "postgresql" => Dialect::Postgres,
            "cockroach" | "cockroachdb" => Dialect::Cockroach,
            other => {
                return Err(invalid(
                    "dialect",
                    format!("{other:?}: expected \"postgres\" or \"cockroach\""),
                ))
            }
        };
        let isolation = match settings.isolation.as_str() {
            "read_committed" => Isolation::ReadCommitted,
            "serializable" => Isolation::Serializable,
            other => {
                return Err(invalid(
                    "isolation",
                    format!("{other:?}: expected \"read_committed\" or \"serializable\""),
                ))
            }
        };
        let mut endpoints = Vec::new();
        for (region, servers) in &settings.regions {
            let r = quorate::Region::new(region)
                .map_err(|e| invalid(&format!("regions.{region}"), e.to_string()))?;
            let roles = servers
                .primary
                .iter()
                .map(|c| (Role::Primary, c, "primary".to_owned()))
                .chain(
                    servers
                        .standbys
                        .iter()
                        .enumerate()
                        .map(|(i, c)| (Role::Standby, c, format!("standbys[{i}]"))),
                )
                .chain(
                    servers
                        .gateways
                        .iter()
                        .enumerate()
                        .map(|(i, c)| (Role::Gateway, c, format!("gateways[{i}]"))),
                );
            for (role, connection, name) in roles {
                let field = format!("regions.{region}.{name}");
                check_connection(connection).map_err(|e| invalid(&field, e))?;
                let wrong = match (dialect, role) {
                    (Dialect::Postgres, Role::Gateway) => Some("gateways are CockroachDB's"),
                    (Dialect::Cockroach, Role::Primary | Role::Standby) => {
                        Some("CockroachDB has gateways, not primaries and standbys")
                    }
                    _ => None,
                };
                if let Some(why) = wrong {
                    return Err(invalid(&field, why));
                }
                endpoints.push(Endpoint {
                    region: r.clone(),
                    role,
                    connection: connection.clone(),
                });
            }
        }
        if endpoints.is_empty() {
            return Err(invalid("regions", "no server is configured"));
        }
        if settings.pool_size == 0 {
            return Err(invalid("pool_size", "must be at least 1"));
        }
        let mut config = PgConfig::new(&settings.scope, dialect, endpoints, &settings.local)
            .map_err(|e| {
                let field = match &e {
                    Error::Token(_) => "scope",
                    _ => "local",
                };
                invalid(field, e.to_string())
            })?;
        if !settings.regions.contains_key(&settings.local) {
            return Err(invalid(
                "local",
                format!("{:?} is not one of the regions configured", settings.local),
            ));
        }
        crate::TableName::new(&settings.table).map_err(|e| invalid("table", e.to_string()))?;
        config.table = settings.table.clone();
        config.pool_size = settings.pool_size;
        config.isolation = isolation;
        config.idempotency_ttl = settings.idempotency_ttl;
        Ok(config)
    }

    /// A configuration with one server from a URL or connection string —
    /// `DATABASE_URL`, as sqlx and most tools read it: PostgreSQL's
    /// primary, or a CockroachDB gateway (its load balancer), in `local`.
    pub fn from_url(
        scope: &str,
        dialect: Dialect,
        local: &str,
        url: &str,
    ) -> Result<PgConfig, Error> {
        check_connection(url).map_err(|e| Error::InvalidInput(redact(&e)))?;
        let role = match dialect {
            Dialect::Postgres => Role::Primary,
            Dialect::Cockroach => Role::Gateway,
        };
        PgConfig::new(
            scope,
            dialect,
            vec![Endpoint {
                region: quorate::Region::new(local)?,
                role,
                connection: url.to_owned(),
            }],
            local,
        )
    }

    /// [`PgConfig::from_url`] with the URL in the environment variable
    /// `DATABASE_URL`.
    pub fn from_env(scope: &str, dialect: Dialect, local: &str) -> Result<PgConfig, Error> {
        let url = std::env::var("DATABASE_URL")
            .map_err(|_| Error::InvalidInput("DATABASE_URL is not set".into()))?;
        PgConfig::from_url(scope, dialect, local, &url)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(doc: &str, vars: &[(&str, &str)]) -> Result<PgConfig, Error> {
        let s = PgSettings::load(
            &Loader::new()
                .toml(doc, "quorate.toml")
                .vars(vars.iter().copied()),
        )?;
        PgConfig::from_settings(&s)
    }

    const DOC: &str = r#"
        [postgres]
        scope = "orders"
        local = "us"
        idempotency_ttl = "2h"
        [postgres.regions.eu]
        primary = "host=db-eu user=app dbname=orders"
        [postgres.regions.us]
        standbys = ["host=db-us user=app dbname=orders"]
    "#;

    #[test]
    fn settings_make_the_configuration() {
        let c = load(
            DOC,
            &[(
                "QUORATE__POSTGRES__REGIONS__US__STANDBYS",
                r#"["host=us-1 user=app password=s3cret", "host=us-2 user=app"]"#,
            )],
        )
        .unwrap();
        assert_eq!(c.dialect, Dialect::Postgres);
        assert_eq!(c.local.as_str(), "us");
        assert_eq!(c.idempotency_ttl, Duration::from_secs(7200));
        let roles: Vec<(&str, Role)> = c
            .endpoints
            .iter()
            .map(|e| (e.region.as_str(), e.role))
            .collect();
        assert_eq!(
            roles,
            [
                ("eu", Role::Primary),
                ("us", Role::Standby),
                ("us", Role::Standby)
            ]
        );
        assert!(!format!("{c:?}").contains("s3cret"));
    }

    #[test]
    fn bad_settings_name_their_field() {
        let cases = [
            ("dialect = \"mysql\"", "postgres.dialect"),
            ("isolation = \"snapshot\"", "postgres.isolation"),
            ("pool_size = 0", "postgres.pool_size"),
            ("table = \"drop table\"", "postgres.table"),
            ("sslmode = 1", "postgres.sslmode"),
            ("poolsize = 3", "postgres.poolsize"),
        ];
        for (line, field) in cases {
            let doc = DOC.replacen("local = \"us\"", &format!("local = \"us\"\n{line}"), 1);
            match load(&doc, &[]) {
                Err(Error::Settings(e)) => assert_eq!(e.field, field, "{line}: {e}"),
                other => panic!("{line}: {other:?}"),
            }
        }
        let e = load(DOC, &[("QUORATE__POSTGRES__IDEMPOTENCY_TTL", "long")]).unwrap_err();
        assert!(
            matches!(&e, Error::Settings(s) if s.field == "postgres.idempotency_ttl"
                && s.origin == "QUORATE__POSTGRES__IDEMPOTENCY_TTL"),
            "{e}"
        );
        let e = load(
            DOC,
            &[(
                "QUORATE__POSTGRES__REGIONS__US__STANDBYS",
                r#"["host=h sslmode=sometimes"]"#,
            )],
        )
        .unwrap_err();
        assert!(
            matches!(&e, Error::Settings(s) if s.field == "postgres.regions.us.standbys[0]"),
            "{e}"
        );
        let e = load(DOC, &[("QUORATE__POSTGRES__LOCAL", "ap")]).unwrap_err();
        assert!(
            matches!(&e, Error::Settings(s) if s.field == "postgres.local"),
            "{e}"
        );
        let e = load(
            DOC,
            &[(
                "QUORATE__POSTGRES__REGIONS__EU__PRIMARY",
                "postgres://app:s3cret@db:notaport/orders",
            )],
        )
        .unwrap_err();
        assert!(
            matches!(&e, Error::Settings(s) if s.field == "postgres.regions.eu.primary"),
            "{e}"
        );
        assert!(!e.to_string().contains("s3cret"), "{e}");
        let e = load(
            &DOC.replace(
                "dbname=orders\"\n        [postgres.regions.us]",
                "dbname=orders\"\n        gateways = [\"host=x\"]\n        [postgres.regions.us]",
            ),
            &[],
        )
        .unwrap_err();
        assert!(
            matches!(&e, Error::Settings(s) if s.field == "postgres.regions.eu.gateways[0]"),
            "{e}"
        );
        let e = load(
            "[postgres]\nscope = \"s\"\nlocal = \"us\"\nregions = {}",
            &[],
        )
        .unwrap_err();
        assert!(
            matches!(&e, Error::Settings(s) if s.field == "postgres.regions"),
            "{e}"
        );
        let e = load("", &[]).unwrap_err();
        assert!(
            matches!(&e, Error::Settings(s) if s.message.contains("scope")),
            "{e}"
        );
    }

    #[test]
    fn settings_are_made_in_code_too() {
        let mut s = PgSettings::new("orders", "eu");
        s.regions.insert(
            "eu".into(),
            PgRegionSettings {
                primary: Some("host=db user=app".into()),
                ..PgRegionSettings::default()
            },
        );
        s.pool_size = 2;
        let c = PgConfig::from_settings(&s).unwrap();
        assert_eq!((c.pool_size, c.endpoints.len()), (2, 1));
    }

    #[test]
    fn a_url_makes_a_one_server_configuration() {
        let c = PgConfig::from_url(
            "orders",
            Dialect::Cockroach,
            "us",
            "postgresql://app@lb.example:26257/orders?sslmode=verify-full",
        )
        .unwrap();
        assert_eq!(c.endpoints.len(), 1);
        assert_eq!(c.endpoints[0].role, Role::Gateway);
        let e = PgConfig::from_url(
            "orders",
            Dialect::Postgres,
            "us",
            "postgres://app:s3cret@h:x/db",
        )
        .unwrap_err();
        assert!(!e.to_string().contains("s3cret"), "{e}");
    }
}
