//! Regions and the topology a client routes over.
//!
//! A [`Topology`] is validated once, at construction, and trusted afterwards.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

/// The longest region name accepted.
pub const MAX_REGION_NAME: usize = 64;

/// A region name: 1–64 characters of `a-z`, `0-9`, `-`, `_`.
///
/// Cloning is cheap (a shared string).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Region(Arc<str>);

impl Region {
    /// Validates a region name.
    pub fn new(name: &str) -> Result<Region, TopologyError> {
        if name.is_empty() {
            return Err(TopologyError::EmptyRegionName);
        }
        if name.len() > MAX_REGION_NAME
            || !name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        {
            return Err(TopologyError::InvalidRegionName(
                name.chars().take(MAX_REGION_NAME + 1).collect(),
            ));
        }
        Ok(Region(Arc::from(name)))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name as a shared string, for metric labels without copying.
    pub fn shared(&self) -> Arc<str> {
        self.0.clone()
    }
}

impl fmt::Debug for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for Region {
    type Err = TopologyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Region::new(s)
    }
}

impl serde::Serialize for Region {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for Region {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Region::new(&s).map_err(serde::de::Error::custom)
    }
}

/// One region of a topology with the endpoints that serve it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RegionSpec {
    /// The region.
    pub name: Region,
    /// Addresses of the region's gateways, replicas or service endpoints.
    pub endpoints: Vec<String>,
}

/// The regions a client may route to, and which one it runs in.
///
/// ```
/// use quorate::Topology;
///
/// let t: Topology = "local=eu-west; eu-west=10.0.0.1:26257; us-east=10.1.0.1:26257".parse()?;
/// assert_eq!(t.local().as_str(), "eu-west");
/// assert_eq!(t.regions().count(), 2);
/// assert!("local=ap-south; eu-west=a".parse::<Topology>().is_err());
/// # Ok::<(), quorate::TopologyError>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "TopologySpec", into = "TopologySpec")]
pub struct Topology {
    regions: Vec<RegionSpec>,
    local: usize,
}

/// The unvalidated form of a [`Topology`] (what configuration files hold).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct TopologySpec {
    /// The regions, in preference order for ties.
    pub regions: Vec<RegionSpec>,
    /// The region this process runs in.
    pub local: Region,
}

impl Topology {
    /// Validates a topology: at least one region, unique names, at least one
    /// non-empty endpoint per region, and the local region among them.
    pub fn new(regions: Vec<RegionSpec>, local: &Region) -> Result<Topology, TopologyError> {
        if regions.is_empty() {
            return Err(TopologyError::NoRegions);
        }
        let mut seen = std::collections::HashSet::with_capacity(regions.len());
        for r in &regions {
            if !seen.insert(r.name.as_str()) {
                return Err(TopologyError::DuplicateRegion(r.name.clone()));
            }
            if r.endpoints.is_empty() || r.endpoints.iter().any(|e| e.trim().is_empty()) {
                return Err(TopologyError::NoEndpoints(r.name.clone()));
            }
        }
        let local = regions
            .iter()
            .position(|r| &r.name == local)
            .ok_or_else(|| TopologyError::UnknownRegion(local.clone()))?;
        Ok(Topology { regions, local })
    }

    /// A topology of named regions whose endpoints are the names themselves
    /// (embedded backends such as the simulator).
    pub fn from_names<'a>(
        names: impl IntoIterator<Item = &'a str>,
        local: &str,
    ) -> Result<Topology, TopologyError> {
        let regions = names
            .into_iter()
            .map(|n| {
                Ok(RegionSpec {
                    name: Region::new(n)?,
                    endpoints: vec![n.to_owned()],
                })
            })
            .collect::<Result<Vec<_>, TopologyError>>()?;
        Topology::new(regions, &Region::new(local)?)
    }

    /// The region this process runs in.
    pub fn local(&self) -> &Region {
        &self.regions[self.local].name
    }

    /// The same regions seen from another local region.
    pub fn with_local(&self, local: &Region) -> Result<Topology, TopologyError> {
        Topology::new(self.regions.clone(), local)
    }

    /// All regions, in configuration order.
    pub fn regions(&self) -> impl ExactSizeIterator<Item = &Region> + '_ {
        self.regions.iter().map(|r| &r.name)
    }

    /// The specification of one region.
    pub fn get(&self, region: &Region) -> Result<&RegionSpec, TopologyError> {
        self.regions
            .iter()
            .find(|r| &r.name == region)
            .ok_or_else(|| TopologyError::UnknownRegion(region.clone()))
    }

    /// Whether the region is part of this topology.
    pub fn contains(&self, region: &Region) -> bool {
        self.regions.iter().any(|r| &r.name == region)
    }

    /// The position of a region in configuration order.
    pub fn index_of(&self, region: &Region) -> Option<usize> {
        self.regions.iter().position(|r| &r.name == region)
    }
}

impl TryFrom<TopologySpec> for Topology {
    type Error = TopologyError;
    fn try_from(spec: TopologySpec) -> Result<Self, Self::Error> {
        Topology::new(spec.regions, &spec.local)
    }
}

impl From<Topology> for TopologySpec {
    fn from(t: Topology) -> Self {
        let local = t.local().clone();
        TopologySpec {
            regions: t.regions,
            local,
        }
    }
}

/// Parses `local=<region>; <region>=<endpoint>,<endpoint>; …`.
impl FromStr for Topology {
    type Err = TopologyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut local = None;
        let mut regions = Vec::new();
        for (n, part) in s.split(';').enumerate() {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            let (name, value) = part
                .split_once('=')
                .ok_or(TopologyError::Syntax { part: n + 1 })?;
            let (name, value) = (name.trim(), value.trim());
            if name == "local" {
                if local.replace(Region::new(value)?).is_some() {
                    return Err(TopologyError::Syntax { part: n + 1 });
                }
            } else {
                regions.push(RegionSpec {
                    name: Region::new(name)?,
                    endpoints: value.split(',').map(|e| e.trim().to_owned()).collect(),
                });
            }
        }
        let local = local.ok_or(TopologyError::NoLocalRegion)?;
        Topology::new(regions, &local)
    }
}

/// A topology or region name that cannot be used.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopologyError {
    /// A topology needs at least one region.
    #[error("a topology needs at least one region")]
    NoRegions,
    /// A region name was empty.
    #[error("a region name must not be empty")]
    EmptyRegionName,
    /// A region name has characters outside `a-z0-9-_` or is too long.
    #[error("invalid region name {0:?}: use 1-64 characters of a-z, 0-9, '-', '_'")]
    InvalidRegionName(String),
    /// The same region appears twice.
    #[error("region {0} appears more than once")]
    DuplicateRegion(Region),
    /// A region lists no endpoint, or an empty one.
    #[error("region {0} has no endpoints (or an empty one)")]
    NoEndpoints(Region),
    /// A region that is not part of the topology was named.
    #[error("unknown region {0}")]
    UnknownRegion(Region),
    /// A backend whose strong reads or writes go to a key's home region
    /// named none of its regions for a key (for example a home mapping that
    /// returns a region outside the topology).
    #[error("no home region in the topology for key {}", key.chars().take(64).collect::<String>())]
    NoHomeRegion {
        /// The key.
        key: String,
    },
    /// The text form names no `local=` region.
    #[error("the topology names no local region (`local=<region>`)")]
    NoLocalRegion,
    /// A part of the text form is not `name=value`, or `local=` repeats.
    #[error("topology part {part} is not `name=value` (or repeats `local=`)")]
    Syntax {
        /// 1-based position of the `;`-separated part.
        part: usize,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn spec(name: &str, endpoints: &[&str]) -> RegionSpec {
        RegionSpec {
            name: Region::new(name).unwrap(),
            endpoints: endpoints.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn large_topologies_are_checked_in_one_pass() {
        let mut regions: Vec<RegionSpec> = (0..100_000)
            .map(|i| spec(&format!("r{i}"), &["e"]))
            .collect();
        let local = regions[0].name.clone();
        assert_eq!(
            Topology::new(regions.clone(), &local)
                .unwrap()
                .regions()
                .len(),
            100_000
        );
        regions.push(spec("r99999", &["e"]));
        assert_eq!(
            Topology::new(regions, &local),
            Err(TopologyError::DuplicateRegion(
                Region::new("r99999").unwrap()
            ))
        );
    }

    #[test]
    fn rejects_bad_topologies() {
        let eu = Region::new("eu").unwrap();
        assert_eq!(Topology::new(vec![], &eu), Err(TopologyError::NoRegions));
        assert_eq!(
            Topology::new(vec![spec("eu", &["a"]), spec("eu", &["b"])], &eu),
            Err(TopologyError::DuplicateRegion(eu.clone()))
        );
        assert_eq!(
            Topology::new(vec![spec("eu", &[])], &eu),
            Err(TopologyError::NoEndpoints(eu.clone()))
        );
        assert_eq!(
            Topology::new(vec![spec("eu", &[" "])], &eu),
            Err(TopologyError::NoEndpoints(eu.clone()))
        );
        let us = Region::new("us").unwrap();
        assert_eq!(
            Topology::new(vec![spec("eu", &["a"])], &us),
            Err(TopologyError::UnknownRegion(us))
        );
        assert_eq!(Region::new(""), Err(TopologyError::EmptyRegionName));
        assert!(matches!(
            Region::new("EU West"),
            Err(TopologyError::InvalidRegionName(_))
        ));
        assert!(matches!(
            "eu=a".parse::<Topology>(),
            Err(TopologyError::NoLocalRegion)
        ));
        assert!(matches!(
            "local=eu; local=eu; eu=a".parse::<Topology>(),
            Err(TopologyError::Syntax { part: 2 })
        ));
        assert!(matches!(
            "local=eu; eu".parse::<Topology>(),
            Err(TopologyError::Syntax { part: 2 })
        ));
    }

    #[test]
    fn serde_validates() {
        let json = r#"{"regions":[{"name":"eu","endpoints":["a"]}],"local":"us"}"#;
        assert!(serde_json::from_str::<Topology>(json).is_err());
        let json = r#"{"regions":[{"name":"eu","endpoints":["a"]}],"local":"eu"}"#;
        let t: Topology = serde_json::from_str(json).unwrap();
        let back: Topology = serde_json::from_str(&serde_json::to_string(&t).unwrap()).unwrap();
        assert_eq!(t, back);
    }

    proptest! {
        #[test]
        fn arbitrary_text_never_panics(s in ".*") {
            let _ = s.parse::<Topology>();
        }

        #[test]
        fn structured_text_never_panics(s in "(local|[a-z]{1,3})=[a-z,; =]{0,12}(;[a-z]{0,3}=[a-z,]{0,6}){0,4}") {
            if let Ok(t) = s.parse::<Topology>() {
                prop_assert!(t.contains(t.local()));
            }
        }
    }
}
