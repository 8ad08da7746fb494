//! Fault proxies between client regions and servers on loopback, steered
//! from a [`FaultState`]: the fault layer of deployments of real servers.

use std::net::SocketAddr;

use super::deploy::FaultState;
use crate::cut_proxy::{CutProxy, Direction, Link};

/// Sets `proxy`, which carries what clients in `client` send to the
/// server of region `server`, to `state`: each direction blocked while
/// that direction of the link is cut, both delayed by the link's latency.
pub fn steer_link(proxy: &CutProxy, state: &FaultState, client: &str, server: &str) {
    let latency = state.latency(client, server);
    proxy.set_link(
        Direction::ToServer,
        Link {
            latency,
            blocked: state.is_cut(client, server),
            ..Link::default()
        },
    );
    proxy.set_link(
        Direction::ToClient,
        Link {
            latency,
            blocked: state.is_cut(server, client),
            ..Link::default()
        },
    );
}

/// A fault proxy from every client region to every region's server.
/// Clients in a region reach their own region's server through a proxy
/// too, which no fault touches (faults are between regions).
pub struct ClientLinks {
    regions: Vec<String>,
    /// `proxies[c][s]`: clients in region `c` to the server of region `s`.
    proxies: Vec<Vec<CutProxy>>,
}

impl ClientLinks {
    /// Proxies for `regions`, region `s`'s server at `servers[s]`.
    pub async fn start(regions: &[String], servers: &[SocketAddr]) -> std::io::Result<ClientLinks> {
        if regions.len() != servers.len() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("{} regions for {} servers", regions.len(), servers.len()),
            ));
        }
        let mut proxies = Vec::new();
        for _ in regions {
            let mut row = Vec::new();
            for &server in servers {
                row.push(CutProxy::start(server).await?);
            }
            proxies.push(row);
        }
        Ok(ClientLinks {
            regions: regions.to_vec(),
            proxies,
        })
    }

    /// The regions.
    pub fn regions(&self) -> &[String] {
        &self.regions
    }

    /// Where clients in `from` connect to reach the server of `to`.
    pub fn addr(&self, from: &str, to: &str) -> Option<SocketAddr> {
        let c = self.regions.iter().position(|r| r == from)?;
        let s = self.regions.iter().position(|r| r == to)?;
        Some(self.proxies[c][s].addr())
    }

    /// Sets every link between two regions to `state`.
    pub fn steer(&self, state: &FaultState) {
        for (c, row) in self.proxies.iter().enumerate() {
            for (s, proxy) in row.iter().enumerate() {
                if c != s {
                    steer_link(proxy, state, &self.regions[c], &self.regions[s]);
                }
            }
        }
    }
}

impl std::fmt::Debug for ClientLinks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientLinks")
            .field("regions", &self.regions)
            .finish_non_exhaustive()
    }
}
