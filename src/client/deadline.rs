//! Attempt deadlines without a runtime timer per request.
//!
//! Every attempt is bounded by a deadline, yet almost every attempt ends
//! long before it. Arming a tokio timer per attempt is not free: when no
//! other timer is pending, registering one wakes the runtime's driver so
//! that it parks again with a timeout — a thread wake-up per request, which
//! shows on point reads that take a tenth of a millisecond. Instead, an
//! attempt that is still pending after its first poll registers its
//! deadline and waker in a slot table, and one sweeper task per client
//! wakes every tick while attempts are in flight, firing the expired ones.
//! A deadline therefore fires at most one tick late; ticks are a tenth of
//! the shortest attempt timeout, at most 10 ms.
//!
//! The table is sharded by thread ([`crate::shard`]): every attempt writes
//! it twice, and one shared table would move its lock between cores on
//! every request.
//!
//! A client outlives runtimes (one shared across tests, or handed from one
//! runtime to another), so each runtime that registers an attempt has a
//! sweeper of its own, and each slot is fired by the sweeper of the runtime
//! that registered it: a runtime that shuts down takes only its own sweeper
//! (and its own attempts) with it.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;
use tokio::runtime::Id as RuntimeId;

use tokio::time::Instant;

use crate::shard::{self, Padded, SHARDS};

/// Ticks without a registered attempt before the sweeper stops; the next
/// registration starts it again.
const IDLE_TICKS: u32 = 100;

/// How long a sweeper can outlive a client's last attempt: its idle ticks
/// at the longest tick.
#[cfg_attr(not(any(test, feature = "testing")), allow(dead_code))]
pub(crate) const SWEEPER_LINGER: Duration = Duration::from_millis(10 * IDLE_TICKS as u64);

/// The deadlines of a client's in-flight attempts.
#[derive(Debug)]
pub(crate) struct Deadlines {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    tick: Duration,
    shards: [Padded<Mutex<State>>; SHARDS],
    /// The sweeper of each runtime that has registered attempts.
    sweepers: Mutex<Vec<(RuntimeId, Arc<Sweeper>)>>,
}

/// One runtime's sweeper.
#[derive(Debug)]
struct Sweeper {
    /// Whether it runs. Cleared when it stops, or when its task is dropped
    /// (its runtime shut down); set again if it finds work while stopping.
    running: AtomicBool,
}

#[derive(Debug, Default)]
struct State {
    slots: Vec<Slot>,
    free: Vec<usize>,
    waiting: usize,
    /// The sweepers this shard has seen, so that a registration takes the
    /// shared list's lock only when its runtime's sweeper is not running.
    known: Vec<(RuntimeId, Arc<Sweeper>)>,
}

#[derive(Debug)]
enum Slot {
    Vacant,
    Waiting {
        deadline: Instant,
        waker: Waker,
        runtime: RuntimeId,
    },
    Fired,
}

impl Shared {
    fn lock(&self, shard: usize) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the table
        // inconsistent: every update is a single assignment.
        self.shards[shard].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether any shard has a registered attempt of `runtime`.
    fn any_waiting(&self, runtime: RuntimeId) -> bool {
        (0..SHARDS).any(|s| {
            self.lock(s)
                .slots
                .iter()
                .any(|slot| matches!(slot, Slot::Waiting { runtime: r, .. } if *r == runtime))
        })
    }

    /// The running sweeper of `runtime`, started on it if there is none.
    fn sweeper(
        self: &Arc<Self>,
        runtime: RuntimeId,
        handle: &tokio::runtime::Handle,
    ) -> Arc<Sweeper> {
        let mut sweepers = self.sweepers.lock().unwrap_or_else(|p| p.into_inner());
        sweepers.retain(|(_, s)| s.running.load(Ordering::SeqCst));
        if let Some((_, s)) = sweepers.iter().find(|(r, _)| *r == runtime) {
            return Arc::clone(s);
        }
        let sweeper = Arc::new(Sweeper {
            running: AtomicBool::new(true),
        });
        sweepers.push((runtime, Arc::clone(&sweeper)));
        handle.spawn(sweep(Arc::clone(self), runtime, Arc::clone(&sweeper)));
        sweeper
    }
}

impl Deadlines {
    /// Deadlines checked every `tick` (clamped to 1–10 ms).
    pub(crate) fn new(tick: Duration) -> Deadlines {
        Deadlines {
            shared: Arc::new(Shared {
                tick: tick.clamp(Duration::from_millis(1), Duration::from_millis(10)),
                shards: std::array::from_fn(|_| Padded::new(Mutex::new(State::default()))),
                sweepers: Mutex::new(Vec::new()),
            }),
        }
    }

    /// Runs `request` until it completes (`Some`) or `deadline` passes
    /// (`None`, and the request is dropped). The request is stored once,
    /// inside the returned future.
    pub(crate) fn run<F: Future>(&self, deadline: Instant, request: F) -> Bounded<'_, F> {
        Bounded {
            request,
            deadline,
            registration: Registration {
                shared: &self.shared,
                slot: None,
            },
        }
    }
}

pin_project_lite::pin_project! {
    /// A request bounded by a deadline; see [`Deadlines::run`].
    pub(crate) struct Bounded<'a, F> {
        #[pin]
        request: F,
        deadline: Instant,
        registration: Registration<'a>,
    }
}

impl<F: Future> Future for Bounded<'_, F> {
    type Output = Option<F::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(out) = this.request.poll(cx) {
            return Poll::Ready(Some(out));
        }
        if this.registration.expired(*this.deadline, cx.waker()) {
            Poll::Ready(None)
        } else {
            Poll::Pending
        }
    }
}

/// An attempt's slot (shard, index), released when the attempt ends or is
/// dropped. The slot stays in the shard it was taken from even if the
/// attempt moves to another thread.
struct Registration<'a> {
    shared: &'a Arc<Shared>,
    slot: Option<(usize, usize)>,
}

impl Registration<'_> {
    /// Whether the deadline has passed; otherwise makes sure `waker` is
    /// woken when it does.
    fn expired(&mut self, deadline: Instant, waker: &Waker) -> bool {
        if let Some((shard, index)) = self.slot {
            return match &mut self.shared.lock(shard).slots[index] {
                Slot::Fired => true,
                Slot::Waiting { waker: w, .. } => {
                    if !w.will_wake(waker) {
                        w.clone_from(waker);
                    }
                    false
                }
                Slot::Vacant => unreachable_vacant(),
            };
        }
        // Not compared with the clock here: a deadline already past fires at
        // the sweeper's next tick, like any other, and a request that waits
        // has no clock read of its own to spare. Outside a runtime nothing
        // can fire it: the request runs to completion.
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return false;
        };
        let runtime = handle.id();
        let shard = shard::current();
        let mut state = self.shared.lock(shard);
        let slot = Slot::Waiting {
            deadline,
            waker: waker.clone(),
            runtime,
        };
        let index = match state.free.pop() {
            Some(i) => {
                state.slots[i] = slot;
                i
            }
            None => {
                state.slots.push(slot);
                state.slots.len() - 1
            }
        };
        state.waiting += 1;
        self.slot = Some((shard, index));
        // After the slot is visible: a sweeper that is stopping re-checks
        // the shards after clearing its flag, so either it sees this slot
        // or this sees the flag cleared and starts a new sweeper.
        let running = state
            .known
            .iter()
            .any(|(r, s)| *r == runtime && s.running.load(Ordering::SeqCst));
        if !running {
            state
                .known
                .retain(|(_, s)| s.running.load(Ordering::SeqCst));
            drop(state);
            let sweeper = self.shared.sweeper(runtime, &handle);
            self.shared.lock(shard).known.push((runtime, sweeper));
        }
        false
    }
}

/// A registered slot is only vacated by its own registration's drop, so a
/// live registration never sees its slot vacant.
fn unreachable_vacant() -> bool {
    debug_assert!(false, "a live registration's slot was vacated");
    true
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        if let Some((shard, index)) = self.slot.take() {
            let mut state = self.shared.lock(shard);
            if matches!(state.slots[index], Slot::Waiting { .. }) {
                state.waiting -= 1;
            }
            state.slots[index] = Slot::Vacant;
            state.free.push(index);
        }
    }
}

/// Clears a sweeper's flag when its task ends, however it ends (a runtime
/// that shuts down drops its tasks).
struct Running(Arc<Sweeper>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.running.store(false, Ordering::SeqCst);
    }
}

/// Fires the expired deadlines of `runtime`'s attempts every tick; stops
/// after [`IDLE_TICKS`] ticks with none of them waiting.
async fn sweep(shared: Arc<Shared>, runtime: RuntimeId, sweeper: Arc<Sweeper>) {
    let running = Running(sweeper);
    let mut interval = tokio::time::interval(shared.tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut expired: Vec<Waker> = Vec::new();
    let mut idle = 0;
    loop {
        interval.tick().await;
        let now = Instant::now();
        let mut waiting = 0;
        for shard in 0..SHARDS {
            let mut state = shared.lock(shard);
            let mut fired = 0;
            for slot in state.slots.iter_mut() {
                match slot {
                    Slot::Waiting {
                        deadline,
                        runtime: r,
                        ..
                    } if *r == runtime => {
                        if *deadline <= now {
                            if let Slot::Waiting { waker, .. } =
                                std::mem::replace(slot, Slot::Fired)
                            {
                                expired.push(waker);
                                fired += 1;
                            }
                        } else {
                            waiting += 1;
                        }
                    }
                    _ => {}
                }
            }
            state.waiting -= fired;
        }
        for waker in expired.drain(..) {
            waker.wake();
        }
        if waiting > 0 {
            idle = 0;
            continue;
        }
        idle += 1;
        if idle >= IDLE_TICKS {
            running.0.running.store(false, Ordering::SeqCst);
            // A registration that saw the flag still set before it was
            // cleared did not start a sweeper: keep this one if so.
            if !shared.any_waiting(runtime) || running.0.running.swap(true, Ordering::SeqCst) {
                return;
            }
            idle = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (slots, free slots, waiting) over every shard.
    fn totals(d: &Deadlines) -> (usize, usize, usize) {
        (0..SHARDS).fold((0, 0, 0), |(s, f, w), i| {
            let state = d.shared.lock(i);
            (
                s + state.slots.len(),
                f + state.free.len(),
                w + state.waiting,
            )
        })
    }

    fn sweeping(d: &Deadlines) -> bool {
        d.shared
            .sweepers
            .lock()
            .unwrap()
            .iter()
            .any(|(_, s)| s.running.load(Ordering::SeqCst))
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_that_finishes_is_returned() {
        let d = Deadlines::new(Duration::from_millis(10));
        let out = d
            .run(Instant::now() + Duration::from_millis(100), async {
                tokio::time::sleep(Duration::from_millis(30)).await;
                7
            })
            .await;
        assert_eq!(out, Some(7));
        assert_eq!(totals(&d).2, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_hung_request_ends_within_one_tick_of_its_deadline() {
        let d = Deadlines::new(Duration::from_millis(10));
        let start = Instant::now();
        let out = d
            .run(
                start + Duration::from_millis(95),
                std::future::pending::<()>(),
            )
            .await;
        assert_eq!(out, None);
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(95), "{took:?}");
        assert!(took <= Duration::from_millis(105), "{took:?}");
        let (slots, free, waiting) = totals(&d);
        assert_eq!(waiting, 0);
        assert_eq!(free, slots, "every slot released");
    }

    #[tokio::test(start_paused = true)]
    async fn a_past_deadline_ends_a_pending_request_at_the_next_tick() {
        let d = Deadlines::new(Duration::from_millis(10));
        let start = Instant::now();
        let out = d.run(start, std::future::pending::<()>()).await;
        assert_eq!(out, None);
        assert!(start.elapsed() <= Duration::from_millis(10));
        assert_eq!(totals(&d).2, 0, "nothing left waiting");
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_deadlines_fire_independently_and_slots_are_reused() {
        let d = Deadlines::new(Duration::from_millis(5));
        let start = Instant::now();
        let hung = |ms| {
            d.run(
                start + Duration::from_millis(ms),
                std::future::pending::<()>(),
            )
        };
        let done = d.run(start + Duration::from_millis(500), async {
            tokio::time::sleep(Duration::from_millis(60)).await;
            "done"
        });
        let (a, b, c) = tokio::join!(hung(20), hung(40), done);
        assert_eq!((a, b, c), (None, None, Some("done")));
        assert_eq!(totals(&d), (3, 3, 0));
        let again = d.run(Instant::now(), async { 1 }).await;
        assert_eq!(again, Some(1));
        assert_eq!(totals(&d).0, 3, "no growth");
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_request_releases_its_slot_and_the_sweeper_stops_when_idle() {
        let d = Deadlines::new(Duration::from_millis(10));
        let deadline = Instant::now() + Duration::from_secs(60);
        let raced = tokio::time::timeout(
            Duration::from_millis(50),
            d.run(deadline, std::future::pending::<()>()),
        )
        .await;
        assert!(raced.is_err());
        assert_eq!(totals(&d).2, 0);
        assert!(sweeping(&d));
        tokio::time::sleep(SWEEPER_LINGER + Duration::from_millis(50)).await;
        assert!(!sweeping(&d), "the sweeper stopped within SWEEPER_LINGER");
        // And starts again for the next attempt.
        let out = d
            .run(
                Instant::now() + Duration::from_millis(30),
                std::future::pending::<()>(),
            )
            .await;
        assert_eq!(out, None);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn deadlines_fire_across_threads_and_shards() {
        let d = Arc::new(Deadlines::new(Duration::from_millis(2)));
        let mut tasks = Vec::new();
        for i in 0..64u64 {
            let d = Arc::clone(&d);
            tasks.push(tokio::spawn(async move {
                let start = Instant::now();
                let hung = d
                    .run(
                        start + Duration::from_millis(5 + i % 7),
                        std::future::pending::<()>(),
                    )
                    .await;
                let done = d.run(start + Duration::from_secs(10), async { i }).await;
                (hung, done, start.elapsed())
            }));
        }
        for (i, t) in tasks.into_iter().enumerate() {
            let (hung, done, took) = t.await.unwrap();
            assert_eq!(hung, None);
            assert_eq!(done, Some(i as u64));
            assert!(took < Duration::from_secs(5), "{took:?}");
        }
        let (slots, free, waiting) = totals(&d);
        assert_eq!((free, waiting), (slots, 0), "every slot released");
    }

    fn hung(d: &Deadlines) -> Option<()> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async {
            tokio::time::timeout(
                Duration::from_secs(10),
                d.run(
                    Instant::now() + Duration::from_millis(50),
                    std::future::pending::<()>(),
                ),
            )
            .await
            .expect("the deadline fired")
        })
    }

    #[test]
    fn deadlines_fire_after_the_first_runtime_is_gone() {
        let d = Deadlines::new(Duration::from_millis(5));
        assert_eq!(hung(&d), None, "first runtime");
        // That runtime is dropped, and its sweeper with it.
        assert!(!sweeping(&d), "a dropped sweeper is not running");
        assert_eq!(hung(&d), None, "second runtime");
    }

    #[test]
    fn deadlines_fire_while_another_runtime_is_alive_but_idle() {
        let d = Deadlines::new(Duration::from_millis(5));
        let first = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let out = first.block_on(d.run(
            Instant::now() + Duration::from_millis(20),
            std::future::pending::<()>(),
        ));
        assert_eq!(out, None);
        // `first` lives on, but nothing drives it: its sweeper cannot tick.
        assert_eq!(hung(&d), None);
        drop(first);
    }
}
