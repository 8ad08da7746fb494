//! Fault proxies between client regions and servers on loopback, steered
//! from a [`FaultState`]: the fault layer of deployments of real servers.

use std::net::{SocketAddr, ToSocketAddrs};

use super::deploy::FaultState;
use crate::cut_proxy::{CutProxy, Direction, Link};

/// `host:port` resolved to an IPv4 address on loopback; anything else is
/// refused: the fault layer only ever sends traffic to this machine.
pub fn loopback(host: &str, port: u16) -> Result<SocketAddr, crate::Error> {
    let addr = (host, port)
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.find(SocketAddr::is_ipv4))
        .ok_or_else(|| crate::Error::InvalidInput(format!("cannot resolve host {host:?}")))?;
    if !addr.ip().is_loopback() {
        return Err(crate::Error::InvalidInput(format!(
            "the fault layer runs on loopback only; {host:?} is not (for a cluster of your own, run the workload without it and inject faults with your own tools)"
        )));
    }
    Ok(addr)
}

/// Sets `proxy`, which carries what clients in `client` send to the
/// server of region `server`, to `state`: each direction blocked while
/// that direction of the link is cut or the server is down or paused
/// ([`FaultState::is_down`]), both delayed by the link's latency with the
/// simulator's jitter ([`SimConfig::jitter`]'s default share of it).
///
/// [`SimConfig::jitter`]: crate::sim::SimConfig::jitter
pub fn steer_link(proxy: &CutProxy, state: &FaultState, client: &str, server: &str) {
    let latency = state.latency(client, server);
    let jitter = latency.mul_f64(crate::sim::DEFAULT_JITTER);
    let down = state.is_down(server);
    proxy.set_link(
        Direction::ToServer,
        Link {
            latency,
            jitter,
            blocked: down || state.is_cut(client, server),
        },
    );
    proxy.set_link(
        Direction::ToClient,
        Link {
            latency,
            jitter,
            blocked: down || state.is_cut(server, client),
        },
    );
}

/// A fault proxy from every client region to every region's server.
/// Clients in a region reach their own region's server through a proxy
/// too, which only the server's own faults touch (a node down or paused:
/// faults between regions leave it alone).
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

    /// Where clients of the `c`-th region connect to reach the server of
    /// the `s`-th.
    pub fn addr_at(&self, c: usize, s: usize) -> Option<SocketAddr> {
        Some(self.proxies.get(c)?.get(s)?.addr())
    }

    /// Ends every open connection to the server of the `s`-th region (in
    /// the order they were started), as its crash does.
    pub fn reset_server(&self, s: usize) {
        for row in &self.proxies {
            if let Some(proxy) = row.get(s) {
                proxy.reset();
            }
        }
    }

    /// Sets every link between two regions to `state`.
    pub fn steer(&self, state: &FaultState) {
        self.steer_named(&self.regions, state);
    }

    /// [`ClientLinks::steer`], the regions (in the order they were
    /// started) named `names` for this state: a run may give them the
    /// names of its scenario.
    pub fn steer_named(&self, names: &[String], state: &FaultState) {
        for (c, row) in self.proxies.iter().enumerate() {
            for (s, proxy) in row.iter().enumerate() {
                if let (Some(from), Some(to)) = (names.get(c), names.get(s)) {
                    steer_link(proxy, state, from, to);
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
