//! [`DynamoSettings`]: the backend's settings from a file or the
//! environment (section `[dynamodb]`, variables `QUORATE__DYNAMODB__…`; see
//! [`quorate::settings`]), and [`DynamoConfig::from_env`] for a service
//! that reads AWS's standard environment only.
//!
//! ```toml
//! [dynamodb]
//! scope = "orders-global"
//! table = "orders"
//! local = "us"
//! home = "eu"                 # a region, or "hashed"
//! mode = "eventual"           # or "strong" (MRSC); a table that reports its mode wins
//! idempotency_ttl = "1d"
//!
//! [dynamodb.regions.eu]
//! aws_region = "eu-west-1"
//!
//! [dynamodb.regions.us]
//! aws_region = "us-east-1"
//! profile = "orders-prod"     # optional: a profile of ~/.aws/config
//! ```
//!
//! Each region's SDK configuration comes from AWS's own chain (the
//! environment, `~/.aws/config` and credentials, the instance's or
//! container's role) with the region's `aws_region`, and its `profile` and
//! `endpoint` (DynamoDB Local, a VPC endpoint) when given. Static keys
//! (`access_key_id`, `secret_access_key`) are for DynamoDB Local; `Debug`
//! never shows the secret.

use std::collections::BTreeMap;
use std::time::Duration;

use aws_sdk_dynamodb::config::Credentials;
use quorate::{Error, Region};
use serde::{Deserialize, Serialize};

// The core's settings (the loader, the client's section, durations), so
// that this module is the one place a service looks.
pub use quorate::settings::*;

use crate::{DynamoConfig, Home, Mode, RegionClient};

/// One region of the global table.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct DynamoRegionSettings {
    /// The AWS region of the replica (`eu-west-1`); required.
    pub aws_region: String,
    /// An endpoint other than AWS's (DynamoDB Local, a VPC endpoint).
    pub endpoint: Option<String>,
    /// A profile of the shared AWS configuration files.
    pub profile: Option<String>,
    /// A static access key (DynamoDB Local); with `secret_access_key`.
    pub access_key_id: Option<String>,
    /// The static key's secret.
    pub secret_access_key: Option<String>,
}

impl DynamoRegionSettings {
    /// A region in `aws_region`, credentials from AWS's chain.
    pub fn new(aws_region: &str) -> DynamoRegionSettings {
        DynamoRegionSettings {
            aws_region: aws_region.to_owned(),
            ..DynamoRegionSettings::default()
        }
    }
}

impl std::fmt::Debug for DynamoRegionSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DynamoRegionSettings")
            .field("aws_region", &self.aws_region)
            .field("endpoint", &self.endpoint)
            .field("profile", &self.profile)
            .field("access_key_id", &self.access_key_id)
            .field(
                "secret_access_key",
                &self.secret_access_key.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// The backend's settings (section `[dynamodb]`); see the [module
/// docs](self). [`DynamoConfig::from_settings`] makes the configuration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct DynamoSettings {
    /// [`DynamoConfig::scope`].
    pub scope: String,
    /// [`DynamoConfig::table`].
    pub table: String,
    /// [`DynamoConfig::local`].
    pub local: String,
    /// Every key's home region, or `"hashed"`; the first region (in name
    /// order) when absent.
    #[serde(default)]
    pub home: Option<String>,
    /// `"eventual"` (MREC, the default) or `"strong"` (MRSC), for tables
    /// that do not report their mode.
    #[serde(default)]
    pub mode: Option<String>,
    /// [`DynamoConfig::idempotency_ttl`].
    #[serde(default = "default_ttl", with = "human")]
    pub idempotency_ttl: Duration,
    /// The regions, by quorate's name for them (in name order: the first
    /// is where `create_tables` creates each table).
    pub regions: BTreeMap<String, DynamoRegionSettings>,
}

fn default_ttl() -> Duration {
    Duration::from_secs(24 * 3600)
}

impl DynamoSettings {
    /// Settings in code: no regions yet (add them to `regions`), every
    /// other field at its default.
    pub fn new(scope: &str, table: &str, local: &str) -> DynamoSettings {
        DynamoSettings {
            scope: scope.to_owned(),
            table: table.to_owned(),
            local: local.to_owned(),
            home: None,
            mode: None,
            idempotency_ttl: default_ttl(),
            regions: BTreeMap::new(),
        }
    }

    /// The section `[dynamodb]` of `loader`.
    pub fn load(loader: &Loader) -> Result<DynamoSettings, SettingsError> {
        loader.section("dynamodb")
    }
}

fn invalid(field: &str, message: impl Into<String>) -> Error {
    Error::Settings(SettingsError {
        field: format!("dynamodb.{field}"),
        origin: "settings".into(),
        message: redact(&message.into()),
    })
}

/// One region's SDK configuration from AWS's chain and `r`.
async fn sdk_config(name: &str, r: &DynamoRegionSettings) -> Result<aws_config::SdkConfig, Error> {
    if r.aws_region.is_empty() {
        return Err(invalid(
            &format!("regions.{name}.aws_region"),
            "missing: the AWS region of this replica (\"eu-west-1\")",
        ));
    }
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new(r.aws_region.clone()));
    if let Some(endpoint) = &r.endpoint {
        if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
            return Err(invalid(
                &format!("regions.{name}.endpoint"),
                format!("{endpoint:?} is not an http:// or https:// URL"),
            ));
        }
        loader = loader.endpoint_url(endpoint);
    }
    if let Some(profile) = &r.profile {
        loader = loader.profile_name(profile);
    }
    match (&r.access_key_id, &r.secret_access_key) {
        (Some(id), Some(secret)) => {
            loader = loader.credentials_provider(Credentials::new(
                id,
                secret,
                None,
                None,
                "quorate-settings",
            ));
        }
        (None, None) => {}
        _ => {
            return Err(invalid(
                &format!("regions.{name}"),
                "access_key_id and secret_access_key go together",
            ))
        }
    }
    Ok(loader.load().await)
}

impl DynamoConfig {
    /// The configuration `settings` describe, each region's SDK client
    /// built from AWS's chain with the region's settings; a bad value is
    /// an [`Error::Settings`] naming its field.
    pub async fn from_settings(settings: &DynamoSettings) -> Result<DynamoConfig, Error> {
        if settings.regions.is_empty() {
            return Err(invalid("regions", "no region is configured"));
        }
        let mut regions = Vec::new();
        let mut endpoints = std::collections::BTreeMap::new();
        for (name, r) in &settings.regions {
            let region = Region::new(name)
                .map_err(|e| invalid(&format!("regions.{name}"), e.to_string()))?;
            let sdk = sdk_config(name, r).await?;
            if let Some(url) = endpoint_of(&sdk) {
                endpoints.insert(region.clone(), url);
            }
            regions.push(RegionClient {
                region,
                client: aws_sdk_dynamodb::Client::new(&sdk),
            });
        }
        if !settings.regions.contains_key(&settings.local) {
            return Err(invalid(
                "local",
                format!("{:?} is not one of the regions configured", settings.local),
            ));
        }
        crate::item::table_name(&settings.table).map_err(|e| invalid("table", e.to_string()))?;
        let mut config =
            DynamoConfig::new(&settings.scope, &settings.table, regions, &settings.local)
                .map_err(|e| invalid("scope", e.to_string()))?;
        config.home = match settings.home.as_deref() {
            None => config.home,
            Some("hashed") => Home::Hashed,
            Some(r) if settings.regions.contains_key(r) => {
                Home::Region(Region::new(r).map_err(|e| invalid("home", e.to_string()))?)
            }
            Some(other) => {
                return Err(invalid(
                    "home",
                    format!("{other:?}: expected one of the regions configured, or \"hashed\""),
                ))
            }
        };
        config.mode = match settings.mode.as_deref() {
            None | Some("eventual") => Mode::Eventual,
            Some("strong") => Mode::Strong,
            Some(other) => {
                return Err(invalid(
                    "mode",
                    format!("{other:?}: expected \"eventual\" or \"strong\""),
                ))
            }
        };
        if settings.idempotency_ttl < Duration::from_secs(600) {
            return Err(invalid(
                "idempotency_ttl",
                "must be at least 10 minutes (DynamoDB's token window)",
            ));
        }
        config.idempotency_ttl = settings.idempotency_ttl;
        config.endpoints = endpoints;
        Ok(config)
    }

    /// A one-region configuration from AWS's standard environment alone
    /// (`AWS_REGION` or the profile's region, `AWS_PROFILE`,
    /// `AWS_ENDPOINT_URL`, the credentials chain), the quorate region named
    /// after the AWS region.
    pub async fn from_env(scope: &str, table: &str) -> Result<DynamoConfig, Error> {
        let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .load()
            .await;
        let aws_region = sdk.region().map(|r| r.to_string()).ok_or_else(|| {
            Error::InvalidInput("no AWS region: set AWS_REGION, or a region in the profile".into())
        })?;
        let region = Region::new(&aws_region)?;
        let mut config = DynamoConfig::new(
            scope,
            table,
            vec![RegionClient {
                region: region.clone(),
                client: aws_sdk_dynamodb::Client::new(&sdk),
            }],
            &aws_region,
        )?;
        if let Some(url) = endpoint_of(&sdk) {
            config.endpoints.insert(region, url);
        }
        Ok(config)
    }
}

/// Where an SDK configuration sends DynamoDB requests: its endpoint URL,
/// else AWS's regional endpoint (unknown with FIPS or dual-stack endpoints,
/// whose names vary).
fn endpoint_of(sdk: &aws_config::SdkConfig) -> Option<String> {
    if let Some(url) = sdk.endpoint_url() {
        return Some(url.to_owned());
    }
    if sdk.use_fips().unwrap_or(false) || sdk.use_dual_stack().unwrap_or(false) {
        return None;
    }
    sdk.region()
        .map(|r| format!("https://dynamodb.{r}.amazonaws.com"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = r#"
        [dynamodb]
        scope = "orders-global"
        table = "orders"
        local = "us"
        home = "eu"
        [dynamodb.regions.eu]
        aws_region = "eu-west-1"
        endpoint = "http://127.0.0.1:9"
        access_key_id = "local"
        secret_access_key = "s3cret"
        [dynamodb.regions.us]
        aws_region = "us-east-1"
        endpoint = "http://127.0.0.1:9"
        access_key_id = "local"
        secret_access_key = "s3cret"
    "#;

    async fn load(doc: &str, vars: &[(&str, &str)]) -> Result<DynamoConfig, Error> {
        let s = DynamoSettings::load(
            &Loader::new()
                .toml(doc, "quorate.toml")
                .vars(vars.iter().copied()),
        )?;
        assert!(!format!("{s:?}").contains("s3cret"));
        DynamoConfig::from_settings(&s).await
    }

    #[tokio::test]
    async fn settings_are_made_in_code_too() {
        let mut s = DynamoSettings::new("orders-global", "orders", "eu");
        let mut eu = DynamoRegionSettings::new("eu-west-1");
        eu.endpoint = Some("http://127.0.0.1:9".into());
        s.regions.insert("eu".into(), eu);
        s.mode = Some("strong".into());
        let c = DynamoConfig::from_settings(&s).await.unwrap();
        assert_eq!((c.regions.len(), c.mode), (1, Mode::Strong));
        assert_eq!(
            c.endpoints
                .get(&Region::new("eu").unwrap())
                .map(String::as_str),
            Some("http://127.0.0.1:9")
        );
        // Attempt spans name it.
        let b = crate::DynamoBackend::new(c).unwrap();
        let t = quorate::Backend::db_target(
            &b,
            quorate::DbOperation::Read,
            &Region::new("eu").unwrap(),
            Some("k"),
        );
        assert_eq!(
            (t.server_address.as_deref(), t.server_port),
            (Some("127.0.0.1"), Some(9))
        );
        // Without an endpoint: AWS's regional one.
        let mut s = DynamoSettings::new("orders-global", "orders", "us");
        s.regions
            .insert("us".into(), DynamoRegionSettings::new("us-east-1"));
        let c = DynamoConfig::from_settings(&s).await.unwrap();
        assert_eq!(
            c.endpoints
                .get(&Region::new("us").unwrap())
                .map(String::as_str),
            Some("https://dynamodb.us-east-1.amazonaws.com")
        );
    }

    #[tokio::test]
    async fn settings_make_the_configuration() {
        let c = load(DOC, &[("QUORATE__DYNAMODB__MODE", "strong")])
            .await
            .unwrap();
        assert_eq!(c.local.as_str(), "us");
        assert_eq!(c.mode, Mode::Strong);
        assert!(matches!(&c.home, Home::Region(r) if r.as_str() == "eu"));
        let regions: Vec<(&str, Option<String>)> = c
            .regions
            .iter()
            .map(|r| {
                (
                    r.region.as_str(),
                    r.client.config().region().map(|a| a.to_string()),
                )
            })
            .collect();
        assert_eq!(
            regions,
            [
                ("eu", Some("eu-west-1".into())),
                ("us", Some("us-east-1".into()))
            ]
        );
    }

    #[tokio::test]
    async fn bad_settings_name_their_field() {
        let cases = [
            ("QUORATE__DYNAMODB__MODE", "linearizable", "dynamodb.mode"),
            ("QUORATE__DYNAMODB__HOME", "ap", "dynamodb.home"),
            ("QUORATE__DYNAMODB__LOCAL", "ap", "dynamodb.local"),
            ("QUORATE__DYNAMODB__TABLE", "a", "dynamodb.table"),
            (
                "QUORATE__DYNAMODB__IDEMPOTENCY_TTL",
                "1m",
                "dynamodb.idempotency_ttl",
            ),
            (
                "QUORATE__DYNAMODB__REGIONS__US__AWS_REGION",
                "",
                "dynamodb.regions.us.aws_region",
            ),
            (
                "QUORATE__DYNAMODB__REGIONS__US__ENDPOINT",
                "localhost:8000",
                "dynamodb.regions.us.endpoint",
            ),
            (
                "QUORATE__DYNAMODB__REGIONS__US__REGION",
                "us-east-1",
                "dynamodb.regions.us.region",
            ),
        ];
        for (var, value, field) in cases {
            match load(DOC, &[(var, value)]).await {
                Err(Error::Settings(e)) => assert_eq!(e.field, field, "{var}={value}: {e}"),
                other => panic!("{var}={value}: {other:?}"),
            }
        }
        let half = DOC.replacen("secret_access_key = \"s3cret\"\n", "", 1);
        match load(&half, &[]).await {
            Err(Error::Settings(e)) => {
                assert_eq!(e.field, "dynamodb.regions.eu");
                assert!(!e.to_string().contains("s3cret"));
            }
            other => panic!("{other:?}"),
        }
    }
}
