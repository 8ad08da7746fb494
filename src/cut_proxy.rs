//! A TCP proxy that loses one exchange on purpose (feature `testing`).
//!
//! Adapters use it to make a real server's commit ambiguous: armed with a
//! byte pattern, it either forwards the client's message that contains it
//! and then closes the connection before any answer reaches the client (the
//! server acted, the client cannot know), or closes the connection without
//! forwarding that message (the server never saw it), or holds the message
//! until released and only then delivers it (a late commit: the client has
//! long given up). Everything else is relayed untouched. It listens on
//! loopback only.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

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

struct Shared {
    armed: Mutex<Option<(Vec<u8>, Cut)>>,
    fired: AtomicU32,
    /// Permits to deliver held messages.
    release: tokio::sync::Semaphore,
    /// Messages delivered late (their answers read and dropped).
    delivered: AtomicU32,
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
                let Ok(server) = TcpStream::connect(upstream).await else {
                    continue;
                };
                tokio::spawn(relay(client, server, s.clone()));
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
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn relay(client: TcpStream, server: TcpStream, shared: Arc<Shared>) {
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
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
                        if sw.write_all(&buf[..n]).await.is_ok() {
                            std::future::pending::<()>().await;
                        }
                        break;
                    }
                    None => {}
                }
                if sw.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        }
    };
    let downstream = async move {
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
            if cw.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
        let _ = cw.shutdown().await;
    };
    // Whichever side ends first ends the connection (both halves drop).
    tokio::select! {
        _ = upstream => {}
        _ = downstream => {}
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
}
