//! A TCP fault proxy (feature `testing`), on loopback only.
//!
//! It relays bytes between clients and one upstream server and can, while
//! running:
//!
//! - **lose one exchange** on purpose: armed with a byte pattern, it either
//!   forwards the client's message that contains it and then closes the
//!   connection before any answer reaches the client (the server acted, the
//!   client cannot know), or closes the connection without forwarding that
//!   message (the server never saw it), or holds the message until released
//!   and only then delivers it (a late commit: the client has long given
//!   up). Adapters use this to make a real server's commit ambiguous;
//! - **delay** each direction by a latency plus a random jitter, keeping
//!   the order of the bytes ([`Link`], [`CutProxy::set_link`]);
//! - **partition** one direction or both: bytes are held, as TCP keeps
//!   retransmitting across a partition, and flow again when it heals; a
//!   connection opened during a partition reaches the server only then;
//! - **reset** every open connection ([`CutProxy::reset`]).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Which half of the exchange is lost.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cut {
    /// The message reaches the server; its answer never reaches the client.
    Answer,
    /// The message never reaches the server.
    Request,
    /// The message is held until [`CutProxy::release`], then delivered;
    /// its answer never reaches the client.
    Late,
}

/// One direction of the proxy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// From the clients to the server.
    ToServer,
    /// From the server to the clients.
    ToClient,
}

/// What one direction does to the bytes it relays.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Link {
    /// Added to the delivery of everything read.
    pub latency: Duration,
    /// Up to this much more, drawn anew for each read (bytes keep their
    /// order: a read never overtakes the one before).
    pub jitter: Duration,
    /// Partitioned: nothing is delivered until this is lifted.
    pub blocked: bool,
}

struct Shared {
    armed: Mutex<Option<(Vec<u8>, Cut)>>,
    fired: AtomicU32,
    /// Permits to deliver held messages.
    release: tokio::sync::Semaphore,
    /// Messages delivered late (their answers read and dropped).
    delivered: AtomicU32,
    /// Each direction's link.
    links: [watch::Sender<Link>; 2],
    /// Bumped by [`CutProxy::reset`]: open connections end.
    resets: watch::Sender<u64>,
    /// The jitter's random stream.
    seed: AtomicU64,
}

impl Shared {
    fn link(&self, d: Direction) -> &watch::Sender<Link> {
        &self.links[d as usize]
    }

    /// A draw in `[0, 1)`.
    fn unit(&self) -> f64 {
        let mut z = self
            .seed
            .fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed)
            .wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// A running proxy; it stops when dropped.
pub struct CutProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for CutProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CutProxy")
            .field("addr", &self.addr)
            .field("fired", &self.fired())
            .finish_non_exhaustive()
    }
}

impl Default for Shared {
    fn default() -> Shared {
        Shared {
            armed: Mutex::new(None),
            fired: AtomicU32::new(0),
            release: tokio::sync::Semaphore::new(0),
            delivered: AtomicU32::new(0),
            links: [
                watch::Sender::new(Link::default()),
                watch::Sender::new(Link::default()),
            ],
            resets: watch::Sender::new(0),
            seed: AtomicU64::new(1),
        }
    }
}

impl CutProxy {
    /// Starts a proxy on a free loopback port in front of `upstream`.
    pub async fn start(upstream: SocketAddr) -> std::io::Result<CutProxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::default());
        let s = shared.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let s = s.clone();
                tokio::spawn(async move {
                    // Across a partition the connection is made when it
                    // heals (the client's handshake retried till then).
                    let mut to_server = s.link(Direction::ToServer).subscribe();
                    if to_server.wait_for(|l| !l.blocked).await.is_err() {
                        return;
                    }
                    if let Ok(server) = TcpStream::connect(upstream).await {
                        relay(client, server, s).await;
                    }
                });
            }
        });
        Ok(CutProxy { addr, shared, task })
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Loses one exchange: the next client message containing `pattern`.
    pub fn arm(&self, pattern: &[u8], cut: Cut) {
        *self.shared.armed.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((pattern.to_vec(), cut));
    }

    /// Delivers the message a [`Cut::Late`] holds (now, or as soon as one
    /// is held).
    pub fn release(&self) {
        self.shared.release.add_permits(1);
    }

    /// How many held messages were delivered and answered by the server.
    pub fn delivered(&self) -> u32 {
        self.shared.delivered.load(Ordering::SeqCst)
    }

    /// How many exchanges were lost so far.
    pub fn fired(&self) -> u32 {
        self.shared.fired.load(Ordering::SeqCst)
    }

    /// Sets what `direction` does from now on (to bytes already read too,
    /// when they are still waiting: a partition holds them).
    pub fn set_link(&self, direction: Direction, link: Link) {
        self.shared.link(direction).send_replace(link);
    }

    /// What `direction` does now.
    pub fn link(&self, direction: Direction) -> Link {
        *self.shared.link(direction).borrow()
    }

    /// Partitions both directions (latencies stay).
    pub fn partition(&self) {
        for d in [Direction::ToServer, Direction::ToClient] {
            self.shared.link(d).send_modify(|l| l.blocked = true);
        }
    }

    /// Lifts the partition of both directions.
    pub fn heal(&self) {
        for d in [Direction::ToServer, Direction::ToClient] {
            self.shared.link(d).send_modify(|l| l.blocked = false);
        }
    }

    /// Ends every open connection, as a server restart or a terminated
    /// backend does; new ones are relayed as before.
    pub fn reset(&self) {
        self.shared.resets.send_modify(|n| *n += 1);
    }
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Delivers what `bytes` receives to `w`, each read at the time it was
/// read plus its direction's latency and a jitter, never before the one
/// before it, and nothing while the direction is partitioned.
async fn deliver(
    mut w: OwnedWriteHalf,
    mut bytes: mpsc::UnboundedReceiver<(Instant, Vec<u8>)>,
    shared: Arc<Shared>,
    direction: Direction,
) {
    let mut link = shared.link(direction).subscribe();
    let mut last = Instant::now();
    while let Some((read_at, chunk)) = bytes.recv().await {
        let l = *link.borrow_and_update();
        let mut at = read_at + l.latency;
        if !l.jitter.is_zero() {
            at += l.jitter.mul_f64(shared.unit());
        }
        last = last.max(at);
        tokio::time::sleep_until(last).await;
        if link.wait_for(|l| !l.blocked).await.is_err() {
            break;
        }
        if w.write_all(&chunk).await.is_err() {
            return;
        }
    }
    let _ = w.shutdown().await;
}

async fn relay(client: TcpStream, server: TcpStream, shared: Arc<Shared>) {
    let (mut cr, cw) = client.into_split();
    let (mut sr, sw) = server.into_split();
    let (to_server, to_server_rx) = mpsc::unbounded_channel();
    let (to_client, to_client_rx) = mpsc::unbounded_channel();
    let mut resets = shared.resets.subscribe();
    let cut_answer = Arc::new(AtomicBool::new(false));
    let late = Arc::new(AtomicBool::new(false));
    let upstream = {
        let (shared, cut_answer, late) = (shared.clone(), cut_answer.clone(), late.clone());
        async move {
            let mut buf = vec![0u8; 64 * 1024];
            while let Ok(n) = cr.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                let hit = {
                    let mut armed = shared.armed.lock().unwrap_or_else(|p| p.into_inner());
                    let hit = armed.as_ref().and_then(|(pattern, cut)| {
                        buf[..n]
                            .windows(pattern.len().max(1))
                            .any(|w| w == &pattern[..])
                            .then_some(*cut)
                    });
                    if hit.is_some() {
                        *armed = None;
                    }
                    hit
                };
                match hit {
                    Some(Cut::Request) => {
                        shared.fired.fetch_add(1, Ordering::SeqCst);
                        break;
                    }
                    Some(Cut::Answer) => cut_answer.store(true, Ordering::SeqCst),
                    Some(Cut::Late) => {
                        shared.fired.fetch_add(1, Ordering::SeqCst);
                        late.store(true, Ordering::SeqCst);
                        if let Ok(permit) = shared.release.acquire().await {
                            permit.forget();
                        }
                        // Delivered whole, whatever the client did since;
                        // the connection ends once the server answers.
                        if to_server.send((Instant::now(), buf[..n].to_vec())).is_ok() {
                            std::future::pending::<()>().await;
                        }
                        break;
                    }
                    None => {}
                }
                if to_server.send((Instant::now(), buf[..n].to_vec())).is_err() {
                    break;
                }
            }
        }
    };
    let downstream = {
        let shared = shared.clone();
        async move {
            let mut buf = vec![0u8; 64 * 1024];
            while let Ok(n) = sr.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                if late.load(Ordering::SeqCst) {
                    // The late message's answer; the client is long gone.
                    shared.delivered.fetch_add(1, Ordering::SeqCst);
                    break;
                }
                if cut_answer.load(Ordering::SeqCst) {
                    // The server answered; the client never hears it.
                    shared.fired.fetch_add(1, Ordering::SeqCst);
                    break;
                }
                if to_client.send((Instant::now(), buf[..n].to_vec())).is_err() {
                    break;
                }
            }
        }
    };
    let to_server = deliver(sw, to_server_rx, shared.clone(), Direction::ToServer);
    let to_client = deliver(cw, to_client_rx, shared, Direction::ToClient);
    // Whichever side ends first ends the connection (what it had read is
    // delivered first); a reset ends it at once.
    tokio::select! {
        _ = async { tokio::join!(upstream, to_server) } => {}
        _ = async { tokio::join!(downstream, to_client) } => {}
        _ = resets.changed() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        addr
    }

    async fn exchange(addr: SocketAddr, msg: &[u8]) -> Option<Vec<u8>> {
        let mut s = TcpStream::connect(addr).await.ok()?;
        s.write_all(msg).await.ok()?;
        let mut buf = vec![0u8; msg.len()];
        s.read_exact(&mut buf).await.ok()?;
        Some(buf)
    }

    #[tokio::test]
    async fn relays_until_armed_then_loses_one_exchange() {
        let proxy = CutProxy::start(echo_server().await).await.unwrap();
        assert_eq!(
            exchange(proxy.addr(), b"hello").await.as_deref(),
            Some(&b"hello"[..])
        );
        proxy.arm(b"commit", Cut::Answer);
        assert_eq!(
            exchange(proxy.addr(), b"hello").await.as_deref(),
            Some(&b"hello"[..])
        );
        assert_eq!(exchange(proxy.addr(), b"do commit").await, None);
        assert_eq!(proxy.fired(), 1);
        assert_eq!(
            exchange(proxy.addr(), b"do commit").await.as_deref(),
            Some(&b"do commit"[..]),
            "disarmed after one"
        );
        proxy.arm(b"commit", Cut::Request);
        assert_eq!(exchange(proxy.addr(), b"do commit").await, None);
        assert_eq!(proxy.fired(), 2);
    }

    #[tokio::test]
    async fn a_late_message_is_delivered_after_the_client_gave_up() {
        // A server that records what reaches it.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let upstream = listener.local_addr().unwrap();
        let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let seen_tx = seen_tx.clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        let _ = seen_tx.send(buf[..n].to_vec());
                        if s.write_all(b"ok").await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        let proxy = CutProxy::start(upstream).await.unwrap();
        proxy.arm(b"commit", Cut::Late);
        let gave_up = tokio::time::timeout(
            std::time::Duration::from_millis(200),
            exchange(proxy.addr(), b"do commit"),
        )
        .await;
        assert!(gave_up.is_err(), "the client heard nothing");
        assert_eq!(proxy.fired(), 1);
        assert!(seen.try_recv().is_err(), "held back while not released");
        proxy.release();
        let late = tokio::time::timeout(std::time::Duration::from_secs(5), seen.recv())
            .await
            .expect("delivered once released");
        assert_eq!(late.as_deref(), Some(&b"do commit"[..]));
        for _ in 0..100 {
            if proxy.delivered() == 1 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(proxy.delivered(), 1, "the server answered the late message");
    }

    /// One request and its echo over `s`, timed.
    async fn round_trip(s: &mut TcpStream, msg: &[u8]) -> Option<Duration> {
        let start = std::time::Instant::now();
        s.write_all(msg).await.ok()?;
        let mut buf = vec![0u8; msg.len()];
        s.read_exact(&mut buf).await.ok()?;
        (buf == msg).then(|| start.elapsed())
    }

    #[tokio::test]
    async fn each_direction_adds_its_latency_and_jitter() {
        let proxy = CutProxy::start(echo_server().await).await.unwrap();
        let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
        // The fastest of a few, so that a busy machine does not decide.
        let mut fastest = Duration::MAX;
        for _ in 0..5 {
            fastest = fastest.min(round_trip(&mut s, b"ping").await.unwrap());
        }
        assert!(fastest < Duration::from_millis(60), "{fastest:?}");
        proxy.set_link(
            Direction::ToServer,
            Link {
                latency: Duration::from_millis(60),
                ..Link::default()
            },
        );
        proxy.set_link(
            Direction::ToClient,
            Link {
                latency: Duration::from_millis(40),
                jitter: Duration::from_millis(30),
                blocked: false,
            },
        );
        for _ in 0..5 {
            let t = round_trip(&mut s, b"ping").await.unwrap();
            assert!(t >= Duration::from_millis(100), "{t:?}");
        }
        proxy.set_link(Direction::ToServer, Link::default());
        proxy.set_link(Direction::ToClient, Link::default());
        let mut fastest = Duration::MAX;
        for _ in 0..5 {
            fastest = fastest.min(round_trip(&mut s, b"ping").await.unwrap());
        }
        assert!(fastest < Duration::from_millis(60), "{fastest:?}");
    }

    #[tokio::test]
    async fn jitter_never_reorders_bytes() {
        let proxy = CutProxy::start(echo_server().await).await.unwrap();
        proxy.set_link(
            Direction::ToServer,
            Link {
                latency: Duration::from_millis(1),
                jitter: Duration::from_millis(20),
                blocked: false,
            },
        );
        let s = TcpStream::connect(proxy.addr()).await.unwrap();
        let (mut r, mut w) = s.into_split();
        let sent: Vec<u8> = (0..200u32).flat_map(|i| i.to_be_bytes()).collect();
        let writer = {
            let sent = sent.clone();
            tokio::spawn(async move {
                for chunk in sent.chunks(4) {
                    w.write_all(chunk).await.unwrap();
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                w
            })
        };
        let mut got = vec![0u8; sent.len()];
        r.read_exact(&mut got).await.unwrap();
        drop(writer.await.unwrap());
        assert_eq!(got, sent);
    }

    #[tokio::test]
    async fn a_partition_holds_traffic_until_it_heals() {
        let proxy = CutProxy::start(echo_server().await).await.unwrap();
        let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
        round_trip(&mut s, b"before").await.unwrap();
        proxy.partition();
        let held =
            tokio::time::timeout(Duration::from_millis(300), round_trip(&mut s, b"during")).await;
        assert!(held.is_err(), "nothing crosses a partition");
        // A connection made during the partition waits too.
        let fresh = tokio::spawn(exchange(proxy.addr(), b"new"));
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!fresh.is_finished());
        proxy.heal();
        let mut buf = [0u8; 6];
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut buf))
            .await
            .expect("the held bytes arrive once healed")
            .unwrap();
        assert_eq!(&buf, b"during");
        let fresh = tokio::time::timeout(Duration::from_secs(5), fresh)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(fresh.as_deref(), Some(&b"new"[..]));
    }

    #[tokio::test]
    async fn a_one_way_partition_lets_requests_through_and_holds_answers() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let upstream = listener.local_addr().unwrap();
        let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let seen_tx = seen_tx.clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 64];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        let _ = seen_tx.send(buf[..n].to_vec());
                        if s.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        let proxy = CutProxy::start(upstream).await.unwrap();
        let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
        proxy.set_link(
            Direction::ToClient,
            Link {
                blocked: true,
                ..Link::default()
            },
        );
        let held =
            tokio::time::timeout(Duration::from_millis(300), round_trip(&mut s, b"commit")).await;
        assert!(held.is_err(), "the answer is held");
        let reached = tokio::time::timeout(Duration::from_secs(5), seen.recv())
            .await
            .unwrap();
        assert_eq!(
            reached.as_deref(),
            Some(&b"commit"[..]),
            "the request reached the server"
        );
        proxy.set_link(Direction::ToClient, Link::default());
        let mut buf = [0u8; 6];
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&buf, b"commit");
    }

    #[tokio::test]
    async fn a_reset_ends_open_connections_only() {
        let proxy = CutProxy::start(echo_server().await).await.unwrap();
        let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
        round_trip(&mut s, b"hello").await.unwrap();
        proxy.reset();
        let mut buf = [0u8; 1];
        let ended = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("the connection ends");
        assert!(matches!(ended, Ok(0) | Err(_)), "{ended:?}");
        assert_eq!(
            exchange(proxy.addr(), b"again").await.as_deref(),
            Some(&b"again"[..])
        );
    }
}
