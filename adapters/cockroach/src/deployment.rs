//! The drills' scenarios on real PostgreSQL servers: a primary and its hot
//! standbys as regions, with faults made by real mechanisms.
//!
//! [`PgDeployment`] puts a fault proxy ([`CutProxy`], on loopback) between
//! every client region and every server, and between the primary and each
//! standby, whose WAL receiver is pointed at it. The runner
//! ([`quorate::drill::run_deployed`]) steers them from a scenario's fault
//! windows:
//!
//! | Fault | On the servers |
//! |---|---|
//! | isolation, cut, one-way cut | the proxies hold the bytes of the cut links until healed (client links and replication) |
//! | latency | the proxies delay both directions of the links between the two regions |
//! | replica lag | the standby's `recovery_min_apply_delay` |
//! | stalled replica | `pg_wal_replay_pause()` until `pg_wal_replay_resume()` |
//! | clock skew of a server, the primary's included | `scripts/pg skew` (libfaketime, changeable while it runs; every server runs under it, at no offset, from the deployment's start) |
//! | a standby's node down | `scripts/pg crash-standby` (immediate shutdown), `start-standby` when the window ends; the links to it hold their bytes meanwhile |
//! | a standby's node paused | `scripts/pg pause-standby` (SIGSTOP of its processes), `resume-standby`; the links to it hold their bytes meanwhile |
//! | the primary down | every link to it, its own region's clients' included, holds its bytes, and every session to it ends (the proxies reset their connections: the server aborts what was in flight, or commits it with its answer lost, as in a crash); its data stays, as after a crash's recovery |
//! | the primary paused | every link to it holds its bytes until it resumes (the process keeps running: what it does on its own, such as timeouts, goes on) |
//!
//! Latency comes with the simulator's jitter. Clock drift, lease moves
//! and the primary's own replay are refused before a run starts
//! ([`Deployment::unsupported`]), not approximated. Clients in every
//! region share this machine's clock.
//!
//! Everything is put back by [`PgDeployment::restore`], or when the last
//! handle is dropped: the links healed, every standby streaming straight
//! from the primary again with no apply delay, replay resumed, and every
//! server's clock true.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use quorate::cut_proxy::CutProxy;
use quorate::drill::links::{steer_link, ClientLinks};
use quorate::drill::{refusals, Deployment, Fault, FaultState, OwnCluster, Window};
use quorate::{Clock, SystemClock};
use quorate::{Error, Region};

use crate::{Dialect, Endpoint, PgBackend, PgConfig, Role};

/// The servers of a deployment: a primary and its standbys, by connection
/// string (`host` and `port` on loopback), and the script that skews a
/// standby's clock (`scripts/pg`; `None`: skew is not offered).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct PgServers {
    /// The primary's connection string.
    pub primary: String,
    /// Each standby's connection string; standby `n` (from 1) is what
    /// `scripts/pg skew n` skews.
    pub standbys: Vec<String>,
    /// `scripts/pg`, for clock skew.
    pub script: Option<PathBuf>,
}

impl PgServers {
    /// The servers `scripts/pg start` runs, from its environment
    /// (`QUORATE_PG_PRIMARY`, `QUORATE_PG_STANDBY1`, `QUORATE_PG_STANDBY2`,
    /// `QUORATE_PG_SCRIPT`); `None` when the primary is not named.
    pub fn from_env() -> Option<PgServers> {
        let primary = std::env::var("QUORATE_PG_PRIMARY").ok()?;
        // In order, up to the first one missing: standby n is the one
        // `scripts/pg` numbers n.
        let standbys = ["QUORATE_PG_STANDBY1", "QUORATE_PG_STANDBY2"]
            .iter()
            .map_while(|v| std::env::var(v).ok())
            .collect();
        Some(PgServers {
            primary,
            standbys,
            script: std::env::var_os("QUORATE_PG_SCRIPT").map(PathBuf::from),
        })
    }
}

/// Real PostgreSQL servers as a drill deployment; see the
/// [module docs](self). Cheap to clone: clones share the fault layer.
#[derive(Clone)]
pub struct PgDeployment {
    links: Arc<Links>,
    /// This run's name of each server's region: the primary's first.
    names: Arc<Vec<String>>,
    table: String,
    backends: Arc<Mutex<HashMap<String, PgBackend>>>,
}

impl std::fmt::Debug for PgDeployment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgDeployment")
            .field("regions", &self.names)
            .field("table", &self.table)
            .finish_non_exhaustive()
    }
}

/// What the fault layer's statements set on the standbys, by number.
#[derive(Default)]
struct Applied {
    /// `recovery_min_apply_delay`, in milliseconds.
    lag: BTreeMap<usize, u64>,
    /// Replay paused.
    stalled: BTreeSet<usize>,
}

/// The fault layer, shared by every clone.
struct Links {
    /// The regions: the primary's first, then each standby's.
    regions: Vec<String>,
    /// Each server's connection string, in region order.
    servers: Vec<String>,
    /// Clients in each region to each server (`None` once restored by
    /// the destructor).
    clients: Option<ClientLinks>,
    /// `replication[i]`: standby `i + 1` to the primary.
    replication: Vec<CutProxy>,
    /// Each standby's `primary_conninfo` before the deployment changed it.
    conninfo: Vec<String>,
    script: Option<PathBuf>,
    /// The clock skew in force per server, in milliseconds.
    skew_ms: Mutex<BTreeMap<usize, i64>>,
    /// Standbys (by number) this layer crashed or froze, to bring back.
    crashed: Mutex<BTreeSet<usize>>,
    paused: Mutex<BTreeSet<usize>>,
    /// What statements set on each standby (by number).
    applied: Mutex<Applied>,
    restored: std::sync::atomic::AtomicBool,
}

/// The `key=value` of a connection string.
fn setting<'a>(connection: &'a str, key: &str) -> Option<&'a str> {
    connection
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
}

/// `connection` with its `port` replaced.
fn with_port(connection: &str, port: u16) -> String {
    let mut out: Vec<String> = connection
        .split_whitespace()
        .filter(|kv| !kv.starts_with("port="))
        .map(str::to_owned)
        .collect();
    out.push(format!("port={port}"));
    out.join(" ")
}

/// A server's address on loopback; anything else is refused (the fault
/// layer only ever sends traffic to this machine).
fn loopback(connection: &str) -> Result<SocketAddr, Error> {
    let host = setting(connection, "host").unwrap_or("127.0.0.1");
    let port: u16 = setting(connection, "port")
        .unwrap_or("5432")
        .parse()
        .map_err(|_| Error::InvalidInput(format!("no valid port in {connection:?}")))?;
    quorate::drill::links::loopback(host, port)
}

fn failed(what: impl std::fmt::Display) -> Error {
    Error::InvalidInput(what.to_string())
}

/// How long a statement of the fault layer may take: a server that does
/// not answer (frozen, or gone) fails the fault instead of stalling the
/// schedule.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs `sql` on one server, directly (not through the fault layer).
async fn exec(connection: &str, sql: &str) -> Result<(), Error> {
    tokio::time::timeout(ADMIN_TIMEOUT, exec_now(connection, sql))
        .await
        .map_err(|_| failed(format_args!("{sql}: no answer from {connection}")))?
}

async fn exec_now(connection: &str, sql: &str) -> Result<(), Error> {
    let (client, conn) = tokio_postgres::connect(connection, tokio_postgres::NoTls)
        .await
        .map_err(|e| failed(format_args!("connecting to {connection}: {e}")))?;
    let task = tokio::spawn(conn);
    let result = client
        .batch_execute(sql)
        .await
        .map_err(|e| failed(format_args!("{sql}: {e}")));
    drop(client);
    let _ = task.await;
    result
}

async fn query_one(connection: &str, sql: &str) -> Result<Option<String>, Error> {
    tokio::time::timeout(ADMIN_TIMEOUT, query_one_now(connection, sql))
        .await
        .map_err(|_| failed(format_args!("{sql}: no answer from {connection}")))?
}

async fn query_one_now(connection: &str, sql: &str) -> Result<Option<String>, Error> {
    let (client, conn) = tokio_postgres::connect(connection, tokio_postgres::NoTls)
        .await
        .map_err(|e| failed(format_args!("connecting to {connection}: {e}")))?;
    let task = tokio::spawn(conn);
    let result = client
        .simple_query(sql)
        .await
        .map_err(|e| failed(format_args!("{sql}: {e}")));
    drop(client);
    let _ = task.await;
    Ok(result?.into_iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
        _ => None,
    }))
}

/// Sets a server parameter with `ALTER SYSTEM` and reloads.
async fn alter_system(connection: &str, name: &str, value: Option<&str>) -> Result<(), Error> {
    let sql = match value {
        Some(v) => format!("ALTER SYSTEM SET {name} = '{}'", v.replace('\'', "''")),
        None => format!("ALTER SYSTEM RESET {name}"),
    };
    // ALTER SYSTEM cannot share an implicit transaction with anything else.
    exec(connection, &sql).await?;
    exec(connection, "SELECT pg_reload_conf()").await
}

impl PgDeployment {
    /// Starts the fault layer in front of `servers`, naming the primary's
    /// region `regions[0]` and standby `n`'s `regions[n]`, and waits until
    /// every standby streams through its replication proxy. Records live
    /// in `table` (see [`PgDeployment::with_table`]).
    pub async fn start(servers: &PgServers, regions: &[&str]) -> Result<PgDeployment, Error> {
        let mut connections = vec![servers.primary.clone()];
        connections.extend(servers.standbys.iter().cloned());
        if regions.len() != connections.len() {
            return Err(failed(format_args!(
                "{} regions named for {} servers",
                regions.len(),
                connections.len()
            )));
        }
        for r in regions {
            Region::new(r)?;
        }
        let addrs = connections
            .iter()
            .map(|c| loopback(c))
            .collect::<Result<Vec<_>, _>>()?;
        let names: Vec<String> = regions.iter().map(|r| (*r).to_owned()).collect();
        let clients = ClientLinks::start(&names, &addrs).await.map_err(failed)?;
        let mut replication = Vec::new();
        let mut conninfo = Vec::new();
        for standby in &servers.standbys {
            replication.push(CutProxy::start(addrs[0]).await.map_err(failed)?);
            // What it was before, pointed at the primary itself: a drill
            // that was killed may have left it on a proxy that is gone.
            let was = query_one(standby, "SHOW primary_conninfo")
                .await?
                .unwrap_or_default();
            conninfo.push(with_port(&was, addrs[0].port()));
        }
        let links = Arc::new(Links {
            regions: names,
            servers: connections,
            clients: Some(clients),
            replication,
            conninfo,
            script: servers.script.clone(),
            skew_ms: Mutex::new(BTreeMap::new()),
            crashed: Mutex::new(BTreeSet::new()),
            paused: Mutex::new(BTreeSet::new()),
            applied: Mutex::new(Applied::default()),
            restored: std::sync::atomic::AtomicBool::new(false),
        });
        // Every server under libfaketime from the start, at no offset, so
        // that a scheduled skew changes the clock of a running server
        // rather than restarting it; the primary first, before the
        // standbys stream from it.
        let faketime = links.script.is_some() && faketime_installed();
        if faketime {
            // Recorded first: however this ends, the restore takes it off
            // libfaketime again.
            links
                .skew_ms
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(0, 0);
            links.script(&["skew", "0", "+0"]).await?;
        }
        for (i, standby) in servers.standbys.iter().enumerate() {
            let port = links.replication[i].addr().port();
            alter_system(
                standby,
                "primary_conninfo",
                Some(&with_port(&links.conninfo[i], port)),
            )
            .await?;
            if faketime {
                links
                    .skew_ms
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(i + 1, 0);
                let n = (i + 1).to_string();
                links.script(&["skew", &n, "+0"]).await?;
            }
            streaming_from(standby, port).await?;
        }
        Ok(PgDeployment {
            names: Arc::new(links.regions.clone()),
            links,
            table: "quorate_drill".to_owned(),
            backends: Arc::new(Mutex::new(HashMap::new())),
        })
    }

    /// This deployment with its records in `table` (created if missing):
    /// a fresh table per run keeps one run's versions out of the next
    /// one's history. Shares the fault layer.
    pub async fn with_table(&self, table: &str) -> Result<PgDeployment, Error> {
        self.with_table_at(table, &self.names[0]).await
    }

    /// [`PgDeployment::with_table`], with the primary's region named
    /// `home` (a scenario's home region, where its writes are
    /// coordinated) and the standbys' regions the other names, in order.
    pub async fn with_table_at(&self, table: &str, home: &str) -> Result<PgDeployment, Error> {
        if !self.names.iter().any(|n| n == home) {
            return Err(Error::Topology(quorate::TopologyError::UnknownRegion(
                Region::new(home)?,
            )));
        }
        let mut names = vec![home.to_owned()];
        names.extend(self.links.regions.iter().filter(|n| *n != home).cloned());
        let deployment = PgDeployment {
            links: self.links.clone(),
            names: Arc::new(names),
            table: table.to_owned(),
            backends: Arc::new(Mutex::new(HashMap::new())),
        };
        // Straight to the primary: the links may be cut.
        let config = PgConfig {
            table: table.to_owned(),
            ..PgConfig::new(
                "quorate-drill",
                Dialect::Postgres,
                vec![Endpoint {
                    region: Region::new(home)?,
                    role: Role::Primary,
                    connection: self.links.servers[0].clone(),
                }],
                home,
            )?
        };
        PgBackend::new(config)?.create_schema().await?;
        Ok(deployment)
    }

    /// The connection string clients in `from` use for the server of
    /// region `to`: through the proxy of that link.
    pub fn connection(&self, from: &str, to: &str) -> Result<String, Error> {
        let (c, s) = (self.index(from)?, self.index(to)?);
        let addr = self
            .links
            .clients
            .as_ref()
            .and_then(|links| links.addr_at(c, s))
            .ok_or_else(|| failed("the fault layer was restored"))?;
        Ok(with_port(&self.links.servers[s], addr.port()))
    }

    fn index(&self, region: &str) -> Result<usize, Error> {
        self.names
            .iter()
            .position(|r| r == region)
            .ok_or_else(|| match Region::new(region) {
                Ok(r) => Error::Topology(quorate::TopologyError::UnknownRegion(r)),
                Err(e) => Error::Topology(e),
            })
    }

    /// Heals every link and puts every standby back as it was; also done
    /// when the last handle is dropped.
    pub async fn restore(&self) -> Result<(), Error> {
        self.links.restore().await
    }
}

/// Whether libfaketime is where `scripts/pg` looks for it.
fn faketime_installed() -> bool {
    let lib = std::env::var_os("FAKETIME_LIB").map_or_else(
        || PathBuf::from("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1"),
        PathBuf::from,
    );
    lib.exists()
}

/// Waits (up to 30 s) until `standby`'s WAL receiver streams from `port`.
async fn streaming_from(standby: &str, port: u16) -> Result<(), Error> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        // A standby that is starting refuses connections for a moment.
        let sender = query_one(
            standby,
            "SELECT sender_port FROM pg_stat_wal_receiver WHERE status = 'streaming'",
        )
        .await;
        if sender
            .as_ref()
            .is_ok_and(|s| s.as_deref() == Some(port.to_string().as_str()))
        {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            sender?;
            return Err(failed(format_args!(
                "the standby at {standby} never streamed through port {port}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

impl Links {
    /// Ends every session to the primary: the clients' connections and
    /// the standbys' replication streams.
    fn end_primary_sessions(&self) {
        if let Some(clients) = &self.clients {
            clients.reset_server(0);
        }
        for proxy in &self.replication {
            proxy.reset();
        }
    }

    /// Sets the proxies to `state`'s links, the servers' regions named
    /// `names`.
    fn steer(&self, names: &[String], state: &FaultState) {
        let Some(home) = names.first() else {
            return;
        };
        if let Some(clients) = &self.clients {
            clients.steer_named(names, state);
        }
        // A standby is the client of its replication link.
        for (proxy, standby) in self.replication.iter().zip(names.iter().skip(1)) {
            steer_link(proxy, state, standby, home);
        }
    }

    /// Brings the standbys' replay and clocks from `from` to `to`.
    async fn replay(&self, names: &[String], from: &FaultState, to: &FaultState) -> Vec<Error> {
        let mut errors = Vec::new();
        // Nodes come back before anything is asked of them, and go down
        // after; what is set by statements is set only on a node that
        // answers, and brought to the state in force when it is back.
        for (i, region) in names.iter().enumerate().skip(1) {
            if from.crashed.contains(region) && !to.crashed.contains(region) {
                errors.extend(self.script(&["start-standby", &i.to_string()]).await.err());
                self.down(i, false);
                // A restarted standby replays again.
                self.applied
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .stalled
                    .remove(&i);
            }
            if from.paused.contains(region) && !to.paused.contains(region) {
                errors.extend(self.script(&["resume-standby", &i.to_string()]).await.err());
                self.frozen(i, false);
            }
        }
        for (i, region) in names.iter().enumerate().skip(1) {
            let standby = &self.servers[i];
            // Up now (one coming back was brought back above) and not
            // going down at this boundary.
            let answers = !to.crashed.contains(region) && !to.paused.contains(region);
            let (applied_lag, applied_stall) = {
                let a = self.applied.lock().unwrap_or_else(|p| p.into_inner());
                (a.lag.get(&i).copied().unwrap_or(0), a.stalled.contains(&i))
            };
            let lag = to.lag_ms.get(region).copied().unwrap_or(0);
            if answers && lag != applied_lag {
                let value = format!("{lag}ms");
                let value = (lag > 0).then_some(value.as_str());
                match alter_system(standby, "recovery_min_apply_delay", value).await {
                    Ok(()) => {
                        self.applied
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .lag
                            .insert(i, lag);
                    }
                    Err(e) => errors.push(e),
                }
            }
            let stalled = to.stalled.contains(region);
            if answers && stalled != applied_stall {
                let sql = if stalled {
                    "SELECT pg_wal_replay_pause()"
                } else {
                    "SELECT pg_wal_replay_resume()"
                };
                match exec(standby, sql).await {
                    Ok(()) => {
                        let mut a = self.applied.lock().unwrap_or_else(|p| p.into_inner());
                        if stalled {
                            a.stalled.insert(i);
                        } else {
                            a.stalled.remove(&i);
                        }
                    }
                    Err(e) => errors.push(e),
                }
            }
        }
        // The clock file is read by libfaketime: it changes whether the
        // node answers or not. The primary's clock too.
        for (i, region) in names.iter().enumerate() {
            let skew = to.skew_ms.get(region).copied().unwrap_or(0);
            if skew != from.skew_ms.get(region).copied().unwrap_or(0) {
                let seconds = format!("{:+.3}", skew as f64 / 1000.0);
                // Recorded first, so that the restore takes the node off
                // libfaketime whatever the script got to.
                self.skew_ms
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(i, skew);
                if let Err(e) = self.script(&["skew", &i.to_string(), &seconds]).await {
                    errors.push(e);
                }
            }
        }
        for (i, region) in names.iter().enumerate().skip(1) {
            if to.paused.contains(region) && !from.paused.contains(region) {
                self.frozen(i, true);
                errors.extend(self.script(&["pause-standby", &i.to_string()]).await.err());
            }
            if to.crashed.contains(region) && !from.crashed.contains(region) {
                self.down(i, true);
                errors.extend(self.script(&["crash-standby", &i.to_string()]).await.err());
            }
        }
        errors
    }

    /// Runs `scripts/pg` with `args`.
    async fn script(&self, args: &[&str]) -> Result<(), Error> {
        let script = self
            .script
            .clone()
            .ok_or_else(|| failed("this fault needs scripts/pg (QUORATE_PG_SCRIPT)"))?;
        let owned: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        let status = tokio::task::spawn_blocking(move || {
            std::process::Command::new(&script).args(&owned).status()
        })
        .await
        .map_err(failed)?
        .map_err(failed)?;
        if !status.success() {
            return Err(failed(format_args!(
                "scripts/pg {} failed ({status})",
                args.join(" ")
            )));
        }
        Ok(())
    }

    /// Records that standby `n` is (or no longer is) down.
    fn down(&self, n: usize, down: bool) {
        let mut nodes = self.crashed.lock().unwrap_or_else(|p| p.into_inner());
        if down {
            nodes.insert(n);
        } else {
            nodes.remove(&n);
        }
    }

    /// Records that standby `n` is (or no longer is) frozen.
    fn frozen(&self, n: usize, frozen: bool) {
        let mut nodes = self.paused.lock().unwrap_or_else(|p| p.into_inner());
        if frozen {
            nodes.insert(n);
        } else {
            nodes.remove(&n);
        }
    }

    async fn restore(&self) -> Result<(), Error> {
        use std::sync::atomic::Ordering;
        if self.restored.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        let names = self.regions.clone();
        self.steer(&names, &FaultState::default());
        let mut first = None;
        let frozen: Vec<usize> =
            std::mem::take(&mut *self.paused.lock().unwrap_or_else(|p| p.into_inner()))
                .into_iter()
                .collect();
        let down: Vec<usize> =
            std::mem::take(&mut *self.crashed.lock().unwrap_or_else(|p| p.into_inner()))
                .into_iter()
                .collect();
        for n in frozen {
            if let Err(e) = self.script(&["resume-standby", &n.to_string()]).await {
                first.get_or_insert(e);
            }
        }
        for n in down {
            if let Err(e) = self.script(&["start-standby", &n.to_string()]).await {
                first.get_or_insert(e);
            }
        }
        // A server under libfaketime runs on the true clock again even at
        // a zero offset. The primary first: the standbys' own restarts
        // below then stream from it at once, where a primary restarted
        // after them would leave them retrying (and quorum commit waiting)
        // for seconds.
        let skewed: Vec<usize> = self
            .skew_ms
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .copied()
            .collect();
        if skewed.contains(&0) {
            if let Err(e) = self.script(&["skew", "0", "off"]).await {
                first.get_or_insert(e);
            }
        }
        for (i, standby) in self.servers.iter().enumerate().skip(1) {
            let steps = [
                alter_system(standby, "recovery_min_apply_delay", None).await,
                exec(standby, "SELECT pg_wal_replay_resume()").await,
                alter_system(standby, "primary_conninfo", Some(&self.conninfo[i - 1])).await,
            ];
            for r in steps {
                if let Err(e) = r {
                    first.get_or_insert(e);
                }
            }
            if skewed.contains(&i) {
                if let Err(e) = self.script(&["skew", &i.to_string(), "off"]).await {
                    first.get_or_insert(e);
                }
            }
        }
        // Streaming straight from the primary before anything else writes:
        // quorum commit waits for a standby.
        if let Ok(primary) = loopback(&self.servers[0]) {
            for standby in self.servers.iter().skip(1) {
                if let Err(e) = streaming_from(standby, primary.port()).await {
                    first.get_or_insert(e);
                }
            }
        }
        match first {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

impl Drop for Links {
    fn drop(&mut self) {
        if self.restored.load(std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        // No runtime can be borrowed in a destructor: the restore gets one
        // of its own, on a thread of its own.
        let links = Links {
            regions: std::mem::take(&mut self.regions),
            servers: std::mem::take(&mut self.servers),
            clients: None,
            replication: Vec::new(),
            conninfo: std::mem::take(&mut self.conninfo),
            script: self.script.take(),
            skew_ms: Mutex::new(std::mem::take(
                &mut *self.skew_ms.lock().unwrap_or_else(|p| p.into_inner()),
            )),
            crashed: Mutex::new(std::mem::take(
                &mut *self.crashed.lock().unwrap_or_else(|p| p.into_inner()),
            )),
            paused: Mutex::new(std::mem::take(
                &mut *self.paused.lock().unwrap_or_else(|p| p.into_inner()),
            )),
            applied: Mutex::new(std::mem::take(
                &mut *self.applied.lock().unwrap_or_else(|p| p.into_inner()),
            )),
            restored: std::sync::atomic::AtomicBool::new(false),
        };
        self.restored
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let restored = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(failed)
                .and_then(|rt| rt.block_on(links.restore()))
        })
        .join();
        if !matches!(restored, Ok(Ok(()))) {
            tracing::error!("the drill deployment could not put the standbys back; run scripts/pg stop && scripts/pg start");
        }
    }
}

impl Deployment for PgDeployment {
    type Backend = PgBackend;

    fn regions(&self) -> Vec<String> {
        self.names.to_vec()
    }

    fn at(&self, region: &str) -> Result<PgBackend, Error> {
        let mut backends = self.backends.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(b) = backends.get(region) {
            return Ok(b.clone());
        }
        let mut endpoints = Vec::new();
        for (s, to) in self.names.iter().enumerate() {
            endpoints.push(Endpoint {
                region: Region::new(to)?,
                role: if s == 0 { Role::Primary } else { Role::Standby },
                connection: self.connection(region, to)?,
            });
        }
        let config = PgConfig {
            table: self.table.clone(),
            ..PgConfig::new("quorate-drill", Dialect::Postgres, endpoints, region)?
        };
        let backend = PgBackend::new(config)?;
        backends.insert(region.to_owned(), backend.clone());
        Ok(backend)
    }

    fn clock(&self, region: &str) -> Result<Arc<dyn Clock>, Error> {
        self.index(region)?;
        Ok(Arc::new(SystemClock))
    }

    async fn apply(&self, from: &FaultState, to: &FaultState) -> Vec<Error> {
        // A primary down or paused answers nothing: its links hold every
        // byte (steer). Down, its sessions end too: what was in flight is
        // aborted by the server, or committed with its answer lost, as in
        // a crash.
        self.links.steer(&self.names, to);
        let home = &self.names[0];
        if to.crashed.contains(home) && !from.crashed.contains(home) {
            self.links.end_primary_sessions();
        }
        self.links.replay(&self.names, from, to).await
    }

    fn unsupported(&self, windows: &[Window]) -> Vec<String> {
        let home = &self.names[0];
        let known = |r: &str| self.names.iter().any(|x| x == r);
        refusals(windows, known, |fault| match *fault {
            Fault::Crash(r) | Fault::Pause(r) if r == home && self.links.clients.is_none() => {
                Some("stopping the primary without its fault proxies")
            }
            Fault::Crash(r) | Fault::Pause(r) if r != home && self.links.script.is_none() => {
                Some("stopping a standby without scripts/pg")
            }
            Fault::Drift(..) => Some("clock drift"),
            Fault::LeaseTo(_) => Some("moving a lease (PostgreSQL has one primary)"),
            Fault::Skew(..) if self.links.script.is_none() => Some("clock skew without scripts/pg"),
            Fault::Lag(r, _) | Fault::Stall(r) if r == home => {
                Some("delaying the primary's replay (it has none)")
            }
            _ => None,
        })
    }

    fn prevents(&self, scenario: &str) -> Option<String> {
        let why = match scenario {
            "clock-skew-600ms" => {
                "every write commits on the one primary, in the order of its WAL; no other server's clock orders anything, so a skewed server cannot place a write before one already read"
            }
            "partition-global-tables" => {
                "there is one primary, not a writer per region: a region cut off from it cannot write, and a conditional write refused there cannot apply a transition twice"
            }
            _ => return None,
        };
        Some(why.to_owned())
    }

    fn home(&self) -> Option<String> {
        self.names.first().cloned()
    }

    fn clock_offset(&self, region: &str) -> Option<i64> {
        let server = self.index(region).ok()?;
        let skew = self
            .links
            .skew_ms
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&server)
            .copied()
            .unwrap_or(0);
        Some(skew * 1_000_000)
    }

    fn max_offset(&self) -> Duration {
        // PostgreSQL has none; CockroachDB's default, for the report's
        // clock panel.
        Duration::from_millis(500)
    }
}

/// A cluster of the team's own (staging) as a drill deployment (see
/// [`OwnCluster`]): the scenarios' workloads run against the endpoints its
/// settings name while the team's own tools inject faults.
pub type PgCluster = OwnCluster<PgBackend>;

/// The cluster `settings` describe, with `scenario_regions` (home first)
/// mapped onto its regions: the scenario's home onto the region of the
/// primary (or the first region of a CockroachDB cluster). The records go
/// to `table`, created if missing and left in place.
pub async fn pg_cluster(
    settings: &crate::settings::PgSettings,
    scenario_regions: &[&str],
    table: &str,
) -> Result<PgCluster, Error> {
    // Every field checked, as a service would.
    PgConfig::from_settings(settings)?;
    let home = settings
        .regions
        .iter()
        .find(|(_, s)| s.primary.is_some())
        .map(|(r, _)| r.clone())
        .or_else(|| settings.regions.keys().next().cloned())
        .ok_or_else(|| failed("the cluster's settings name no region"))?;
    let regions: Vec<String> = settings.regions.keys().cloned().collect();
    // Checked before anything is created.
    OwnCluster::<PgBackend>::map_regions(scenario_regions, &regions)?;
    let mut settings = settings.clone();
    settings.table = table.to_owned();
    settings.local = home.clone();
    PgBackend::new(PgConfig::from_settings(&settings)?)?
        .create_schema()
        .await?;
    // A table of its own per run: no key prefix needed.
    OwnCluster::connect(scenario_regions, &home, &regions, "", |local| {
        let mut settings = settings.clone();
        settings.local = local;
        async move { PgBackend::new(PgConfig::from_settings(&settings)?) }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_strings_are_rewritten_and_checked() {
        let c = "host=127.0.0.1 port=54321 user=postgres dbname=postgres";
        assert_eq!(setting(c, "port"), Some("54321"));
        assert_eq!(
            with_port(c, 7),
            "host=127.0.0.1 user=postgres dbname=postgres port=7"
        );
        assert_eq!(loopback(c).unwrap().port(), 54321);
        assert!(matches!(
            loopback("host=192.0.2.1 port=5432"),
            Err(Error::InvalidInput(m)) if m.contains("loopback")
        ));
        assert!(loopback("host=127.0.0.1 port=x").is_err());
    }
}
