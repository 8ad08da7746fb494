//! Randomized fault schedules: per seed, a system, a schedule of
//! overlapping faults and a workload, run once with the naive client and
//! once with the strict one, and both histories checked.
//!
//! The faults are drawn from what region-failure drills inject: isolation,
//! cuts between two regions, one-way cuts (requests arrive, answers are
//! lost: ambiguous commits), latency spikes, clock skew and steps within
//! and beyond `max_offset`, drifting clocks, replicas that apply late or
//! stall, node crashes and restarts, node pauses, and lease moves. The
//! workload mixes read-modify-write updaters (strong read, conditional
//! idempotent write), strong readers, users whose session travels between
//! services in several regions as an encoded token (session reads and
//! writes), background readers under a staleness bound, and one-shot
//! writers (one attempt per write, as a handler that leaves retries to its
//! caller). A quarter of the systems are
//! multi-writer tables (global tables).
//!
//! Nothing here decides an outcome: a schedule is a seed's random draw, and
//! anomalies come from the simulator's mechanics and the client.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::time::sleep;

use super::actor::{Actor, Stage};
use super::deploy::Deployment;
use super::naive::NaiveReads;
use super::scenarios::{
    pause, reader, rng_for, roamer, three_regions, updater, Fault, Scenario, Task, Window, AP, EU,
    US,
};
use super::{run_variant, Configuration, Variant};
use crate::client::VerifyRegions;
use crate::error::Error;
use crate::history::{Anomaly, HistoryPolicy, ANOMALIES};
use crate::policy::{ReadPolicy, Staleness};
use crate::random::SplitMix64;
use crate::record::Precondition;
use crate::sim::{Replication, Sim, SimConfig};

const REGIONS: [&str; 3] = [EU, US, AP];

/// How long a schedule's workload runs.
pub const DURATION: Duration = Duration::from_secs(12);

/// Every random choice of one seed, drawn in one fixed order.
struct Plan {
    multi_writer: bool,
    /// A consensus database that trusts every clock (no `max_offset`
    /// enforcement): the client's own clock guard is all there is.
    trusts_clocks: bool,
    /// A consensus database with Spanner's commit wait (ε = 10 ms) instead
    /// of CockroachDB's uncertainty restarts.
    commit_wait: bool,
    /// How many ranges (each with its own lease) a consensus keyspace has.
    ranges: usize,
    /// A multi-writer table homing each key by its hash.
    hashed_homes: bool,
    /// Users whose sessions range over many records (more than a session
    /// token names), each travelling between the regions listed.
    browsers: Vec<Vec<&'static str>>,
    /// Users who sweep many records strongly, then again under their
    /// session elsewhere.
    auditors: Vec<Vec<&'static str>>,
    home: &'static str,
    keys: u64,
    updaters: Vec<&'static str>,
    readers: Vec<&'static str>,
    roamers: Vec<Vec<&'static str>>,
    bounded: Vec<&'static str>,
    settlers: Vec<&'static str>,
    windows: Vec<Window>,
    /// The region a clock drill centres on, if the seed is one.
    clock_focus: Option<&'static str>,
    /// Services that write straight to the database, not through quorate
    /// (in both configurations), each through its region's gateway.
    direct: Vec<&'static str>,
    /// Writers whose client makes one attempt per operation: a handler
    /// that reports a definite failure to its caller, who moves on.
    one_shot: Vec<&'static str>,
    /// A quiet-reader drill, if the seed is one: its workload replaces the
    /// schedule's.
    quiet: Option<Quiet>,
    /// Tellers: services that move two records at once in one multi-record
    /// write, each in its region.
    tellers: Vec<&'static str>,
}

/// A quiet-reader drill: strong readers in a region that has no other
/// traffic, so that its gateway's hybrid-logical clock hears from the
/// leaseholder only through them, while a clock runs ahead elsewhere on a
/// database that trusts every clock. A busy gateway's clock keeps up with
/// a fast leaseholder's (every answer carries it); a quiet one's does not,
/// and its strong reads are timestamped below what the leaseholder stamps
/// meanwhile. What keeps them from missing completed writes is the
/// client: commit wait, the refusal of a strong read served by a
/// leaseholder whose clock is excluded, and read-after-write checks that
/// never read through an excluded gateway.
#[derive(Clone, Copy, Debug)]
struct Quiet {
    /// The region whose only traffic is the quiet readers.
    reader: &'static str,
    /// The region the writers are in.
    busy: &'static str,
    kind: QuietKind,
}

#[derive(Clone, Copy, Debug)]
enum QuietKind {
    /// The leaseholder's clock is `skew` ms ahead from `from` to `until`
    /// (ms into the run): quorate's blind writers write all along, and a
    /// service without quorate writes only while the step has more than
    /// `skew` ms to run (later, its stamps would still be ahead once the
    /// clock is back, beyond what any reader's client can see).
    FastLeader { from: u64, until: u64, skew: u64 },
    /// The busy region's clock is `skew` ms ahead from `from` on: its
    /// updaters check their writes where their local readers read, which
    /// must not be through their own gateway; a service without quorate
    /// writes through the home once the clients have had time to see the
    /// step and the stamps their requests carried before that have been
    /// overtaken by true time.
    FastGateway { from: u64, skew: u64 },
}

impl Quiet {
    fn label(&self) -> String {
        let kind = match self.kind {
            QuietKind::FastLeader { .. } => "fast leaseholder",
            QuietKind::FastGateway { .. } => "fast gateway",
        };
        format!(
            "quiet-reader drill ({kind}), readers in {}, writers in {}",
            self.reader, self.busy
        )
    }
}

fn pick<T: Copy>(rng: &mut SplitMix64, items: &[T]) -> T {
    items[rng.below(items.len() as u64) as usize]
}

fn two(rng: &mut SplitMix64) -> (&'static str, &'static str) {
    let a = pick(rng, &REGIONS);
    let others: Vec<&'static str> = REGIONS.iter().copied().filter(|r| *r != a).collect();
    (a, pick(rng, &others))
}

impl Plan {
    /// The plan of `seed`.
    fn of(seed: u64) -> Plan {
        Plan::drawn(seed, true, false)
    }

    /// The plan of `seed` for deployment `D`: on a multi-writer database
    /// ([`Deployment::MULTI_WRITER`]) every plan is one for a multi-writer
    /// table (no service writing outside quorate next to a home it does
    /// not own, which no client could keep strict reads ahead of).
    fn of_for<D: Deployment>(seed: u64) -> Plan {
        Plan::drawn(seed, true, D::MULTI_WRITER)
    }

    /// The plan of `seed` as the schedules first drew it: every database
    /// enforcing `max_offset`, no sessions over many records. The seeds
    /// caught then replay this way.
    fn first(seed: u64) -> Plan {
        Plan::drawn(seed, false, false)
    }

    fn drawn(seed: u64, current: bool, multi_writer_only: bool) -> Plan {
        let mut rng = SplitMix64::new(seed ^ 0x6e65_6d65_7369_7321);
        let multi_writer = rng.below(4) == 0 || multi_writer_only;
        // Drawn from a stream of its own, so that adding it left every
        // other choice of a seed as it was.
        let trusts_clocks =
            current && !multi_writer && SplitMix64::new(seed ^ 0x7472_7573_7473_2121).below(4) == 0;
        let commit_wait = current
            && !multi_writer
            && !trusts_clocks
            && SplitMix64::new(seed ^ 0x7370_616e_6e65_7221).below(3) == 0;
        let ranges = if current && !multi_writer {
            1 + SplitMix64::new(seed ^ 0x7261_6e67_6573_2121).below(3) as usize
        } else {
            1
        };
        let hashed_homes =
            current && multi_writer && SplitMix64::new(seed ^ 0x686f_6d65_7321_2121).below(2) == 0;
        let mut own = SplitMix64::new(seed ^ 0x6272_6f77_7365_7273);
        let browsers = (0..1 + own.below(2))
            .map(|_| {
                let (a, b) = two(&mut own);
                vec![a, b]
            })
            .filter(|_| current)
            .collect();
        let auditors = (0..1 + own.below(2))
            .map(|_| {
                let (a, b) = two(&mut own);
                vec![a, b]
            })
            .filter(|_| current)
            .collect();
        let home = pick(&mut rng, &REGIONS);
        let keys = 2 + rng.below(4);
        let some = |rng: &mut SplitMix64, lo: u64, hi: u64| -> Vec<&'static str> {
            (0..lo + rng.below(hi - lo + 1))
                .map(|_| pick(rng, &REGIONS))
                .collect()
        };
        let updaters = some(&mut rng, 2, 3);
        let readers = some(&mut rng, 1, 2);
        let roamers = (0..1 + rng.below(2))
            .map(|_| {
                let (a, b) = two(&mut rng);
                if rng.below(2) == 0 {
                    vec![a, b]
                } else {
                    let c = REGIONS
                        .iter()
                        .copied()
                        .find(|r| *r != a && *r != b)
                        .unwrap_or(a);
                    vec![a, b, c]
                }
            })
            .collect();
        let bounded = some(&mut rng, 0, 1);
        let settlers = some(&mut rng, 0, 2);
        let faults = 2 + rng.below(5);
        let mut windows: Vec<Window> = (0..faults)
            .map(|_| {
                let fault = match rng.below(6) {
                    0 => Fault::Isolate(pick(&mut rng, &REGIONS)),
                    1 => {
                        let (a, b) = two(&mut rng);
                        Fault::Cut(a, b)
                    }
                    2 => {
                        let (a, b) = two(&mut rng);
                        Fault::OneWay(a, b)
                    }
                    3 => {
                        let (a, b) = two(&mut rng);
                        Fault::Latency(a, b, 50 + rng.below(351))
                    }
                    4 => Fault::Skew(
                        pick(&mut rng, &REGIONS),
                        pick(&mut rng, &[-1500, -600, -300, -100, 100, 300, 600, 1500]),
                    ),
                    _ => Fault::Lag(pick(&mut rng, &REGIONS), 200 + rng.below(2801)),
                };
                let from = 500 + rng.below(8500);
                let until = from + 300 + rng.below(3700);
                Window {
                    from: Duration::from_millis(from),
                    until: Duration::from_millis(until.min(11_500)),
                    fault,
                }
            })
            .collect();
        // Crashes and lease moves come from a stream of their own, so that
        // adding them left every other choice of a seed as it was.
        let mut ops = SplitMix64::new(seed ^ 0x6372_6173_6865_7321);
        let timed = |ops: &mut SplitMix64, fault: Fault, shortest: u64, spread: u64| {
            let from = 500 + ops.below(8500);
            let until = from + shortest + ops.below(spread);
            Window {
                from: Duration::from_millis(from),
                until: Duration::from_millis(until.min(11_500)),
                fault,
            }
        };
        if current && ops.below(3) == 0 {
            let fault = Fault::Crash(pick(&mut ops, &REGIONS));
            let w = timed(&mut ops, fault, 500, 3001);
            windows.push(w);
        }
        let mut stalls = SplitMix64::new(seed ^ 0x7374_616c_6c73_2121);
        if current && stalls.below(4) == 0 {
            let fault = Fault::Stall(pick(&mut stalls, &REGIONS));
            let w = timed(&mut stalls, fault, 500, 3501);
            windows.push(w);
        }
        let mut drifts = SplitMix64::new(seed ^ 0x6472_6966_7473_2121);
        if current && drifts.below(4) == 0 {
            let ppm = pick(
                &mut drifts,
                &[-300_000, -150_000, -50_000, 50_000, 150_000, 300_000],
            );
            let fault = Fault::Drift(pick(&mut drifts, &REGIONS), ppm);
            let w = timed(&mut drifts, fault, 1000, 4001);
            windows.push(w);
        }
        // Pauses come from a stream of their own, so that adding them left
        // every other choice of a seed as it was.
        let mut pauses = SplitMix64::new(seed ^ 0x7061_7573_6573_2121);
        let mut paused = None;
        if current && pauses.below(3) == 0 {
            let region = pick(&mut pauses, &REGIONS);
            let w = timed(&mut pauses, Fault::Pause(region), 500, 3501);
            windows.push(w);
            paused = Some(region);
        }
        if current && !multi_writer && ops.below(3) == 0 {
            let elsewhere: Vec<&'static str> =
                REGIONS.iter().copied().filter(|r| *r != home).collect();
            let fault = Fault::LeaseTo(pick(&mut ops, &elsewhere));
            let w = timed(&mut ops, fault, 1000, 5001);
            windows.push(w);
        }
        let mut bounded = bounded;
        // A clock drill's faults replace the others: the steps it takes
        // are narrow, and other faults would drown them.
        let mut clock_windows = Vec::new();
        let drill = if current {
            clock_faults(seed, home, &mut clock_windows, &mut bounded)
        } else {
            None
        };
        if drill.is_some() {
            windows = clock_windows;
        }
        let clock_focus = drill.map(|(focus, _)| focus);
        // A quiet-reader drill, from a stream of its own, on consensus
        // tables that are not clock drills: its faults and workload
        // replace the schedule's.
        let mut quiet_windows = Vec::new();
        let quiet = if current && drill.is_none() && !multi_writer {
            quiet_faults(seed, home, &mut quiet_windows)
        } else {
            None
        };
        if quiet.is_some() {
            windows = quiet_windows;
        }
        // A clock drill on a consensus table has a service writing next to
        // the home that does not use quorate: its writes keep landing
        // through a leaseholder whose clock the strict clients distrust,
        // as another team's would, and the strict readers must not read
        // behind them. (On a multi-writer table such writes would lose
        // the strict clients' updates, which no client can prevent.)
        let direct = if clock_focus.is_some() && !multi_writer {
            vec![home]
        } else {
            Vec::new()
        };
        // A clock drill may run on a database that trusts every clock,
        // which lets a stepped clock keep serving and replicating: only
        // the client's guard stands in the way.
        let trusts_clocks =
            trusts_clocks || drill.is_some_and(|(_, trusting)| trusting) || quiet.is_some();
        let commit_wait = commit_wait && !trusts_clocks;
        // One range: the leaseholder the drill steps holds every key.
        let ranges = if quiet.is_some() { 1 } else { ranges };
        let mut shots = SplitMix64::new(seed ^ 0x6f6e_6573_686f_7421);
        // Not in clock drills, whose steps are narrow and whose load is
        // their own.
        let mut one_shot: Vec<&'static str> = (0..shots.below(3))
            .map(|_| pick(&mut shots, &REGIONS))
            .filter(|_| current && drill.is_none())
            .collect();
        // Where a node pauses, requests wait in it while their clients
        // move on: two more one-shot writers there.
        if let Some(r) = paused.filter(|_| drill.is_none()) {
            one_shot.extend([r, r]);
        }
        // Tellers come from a stream of their own; clock drills keep their
        // load as it was.
        let mut tell = SplitMix64::new(seed ^ 0x7465_6c6c_6572_7321);
        let tellers = (0..tell.below(3))
            .map(|_| pick(&mut tell, &REGIONS))
            .filter(|_| current && drill.is_none() && keys >= 2)
            .collect();
        Plan {
            multi_writer,
            trusts_clocks,
            commit_wait,
            ranges,
            hashed_homes,
            browsers,
            auditors,
            home,
            keys,
            updaters,
            readers,
            roamers,
            bounded,
            settlers,
            windows,
            clock_focus,
            direct,
            one_shot,
            quiet,
            tellers,
        }
    }
}

/// One seed in four is a clock drill instead, from a stream of its own,
/// centred on one region (the focus): its replica runs behind while its
/// clock (the clock of the clients there with it) steps, in half of them
/// its link to another region is slow all along (so that probes straddle
/// the steps), and background readers there read under a staleness bound,
/// which only the clock guard keeps honest. In two of three, when the home
/// region is another, the home's clock also steps ahead while requests
/// from the focus to it are lost, its replication still arriving. Returns
/// the focus and whether the database should trust every clock (always
/// with the home's step, which a database enforcing `max_offset` would
/// stop; otherwise half the time).
fn clock_faults(
    seed: u64,
    home: &'static str,
    windows: &mut Vec<Window>,
    bounded: &mut Vec<&'static str>,
) -> Option<(&'static str, bool)> {
    let mut rng = SplitMix64::new(seed ^ 0x636c_6f63_6b73_2121);
    if rng.below(4) != 0 {
        return None;
    }
    let focus = pick(&mut rng, &REGIONS);
    let mut trusting = rng.below(2) == 0;
    let others: Vec<&'static str> = REGIONS.iter().copied().filter(|r| *r != focus).collect();
    let ms = Duration::from_millis;
    let from = 1000 + rng.below(3000);
    let until = (from + 4000 + rng.below(4000)).min(11_500);
    let lag = 1200 + rng.below(1301);
    windows.push(Window {
        from: ms(from),
        until: ms(until),
        fault: Fault::Lag(focus, lag),
    });
    // Slow enough for a probe to straddle a step, not so slow that the
    // probes' own error hides the steps.
    if rng.below(2) == 0 {
        windows.push(Window {
            from: ms(0),
            until: ms(11_500),
            fault: Fault::Latency(focus, pick(&mut rng, &others), 40 + rng.below(81)),
        });
    }
    const STEPS: [i64; 8] = [-1500, -1200, -900, -600, 600, 900, 1200, 1500];
    // One or two steps, the second after the first is undone: each lasts
    // long enough for a probe to see it (a glitch shorter than the probe
    // period leaves a lead on a trusting database's hybrid-logical clocks
    // that no sample of a clock shows).
    let mut at = from + rng.below(until - from - 500);
    for _ in 0..1 + rng.below(2) {
        if at + 300 > 11_500 {
            break;
        }
        let end = (at + 300 + rng.below(3000)).min(11_500);
        windows.push(Window {
            from: ms(at),
            until: ms(end),
            fault: Fault::Skew(focus, pick(&mut rng, &STEPS)),
        });
        at = end + 200 + rng.below(2000);
    }
    if focus != home && rng.below(3) != 0 {
        trusting = true;
        let at = from + rng.below(until - from - 500);
        let end = (at + lag + 500 + rng.below(2500)).min(11_500);
        windows.push(Window {
            from: ms(at),
            until: ms(end),
            fault: Fault::OneWay(focus, home),
        });
        windows.push(Window {
            from: ms(at + rng.below(300)),
            until: ms(end),
            fault: Fault::Skew(home, pick(&mut rng, &STEPS[4..])),
        });
    }
    for _ in 0..2 + rng.below(2) {
        bounded.push(focus);
    }
    Some((focus, trusting))
}

/// One seed in five of the rest is a quiet-reader drill, from a stream of
/// its own (see [`Quiet`]): the quiet region and the busy one are the two
/// that are not the home, a clock steps 900 to 1,500 ms ahead, and, when
/// the busy region's clock is the fast one, its link to the quiet region
/// is slower, so that its clients route around their own gateway through
/// the home's and the quiet gateway stays quiet.
fn quiet_faults(seed: u64, home: &'static str, windows: &mut Vec<Window>) -> Option<Quiet> {
    let mut rng = SplitMix64::new(seed ^ 0x7175_6965_7421_2121);
    if rng.below(5) != 0 {
        return None;
    }
    let others: Vec<&'static str> = REGIONS.iter().copied().filter(|r| *r != home).collect();
    let reader = pick(&mut rng, &others);
    let busy = others
        .iter()
        .copied()
        .find(|r| *r != reader)
        .unwrap_or(home);
    let skew = pick(&mut rng, &[900u64, 1200, 1500]);
    let ms = Duration::from_millis;
    let kind = if rng.below(2) == 0 {
        let from = 1500 + rng.below(3000);
        let until = (from + skew + 1500 + rng.below(2500)).min(11_000);
        windows.push(Window {
            from: ms(from),
            until: ms(until),
            fault: Fault::Skew(home, skew as i64),
        });
        QuietKind::FastLeader { from, until, skew }
    } else {
        let from = 1000 + rng.below(2000);
        let until = (from + 3000 + rng.below(4000)).min(11_500);
        windows.push(Window {
            from: ms(from),
            until: ms(until),
            fault: Fault::Skew(busy, skew as i64),
        });
        windows.push(Window {
            from: ms(0),
            until: ms(11_500),
            fault: Fault::Latency(busy, reader, 60),
        });
        QuietKind::FastGateway { from, skew }
    };
    Some(Quiet { reader, busy, kind })
}

fn system_for<D: Deployment>(seed: u64) -> SimConfig {
    system_of(Plan::of_for::<D>(seed), seed)
}

fn first_system(seed: u64) -> SimConfig {
    system_of(Plan::first(seed), seed)
}

fn system_of(plan: Plan, seed: u64) -> SimConfig {
    let mut c = three_regions(seed, plan.home);
    if plan.multi_writer {
        c.replication = Replication::MultiWriter;
    }
    c.enforce_max_offset = !plan.trusts_clocks;
    if plan.commit_wait {
        c.commit_wait = Some(Duration::from_millis(10));
    }
    c.ranges = plan.ranges;
    c.hashed_homes = plan.hashed_homes;
    c
}

/// Reads under a staleness bound (a background job): the naive client
/// reads the local replica, the history records the bound it promised.
fn bounded_reader<D: Deployment>(stage: &Stage<D>, region: &str, keys: u64) -> Task {
    bounded_reader_of(stage, region, "acct", keys)
}

/// The same over the records named `prefix:N`.
fn bounded_reader_of<D: Deployment>(
    stage: &Stage<D>,
    region: &str,
    prefix: &'static str,
    keys: u64,
) -> Task {
    let mut actor = Actor::new(stage, &[region]);
    let mut rng = rng_for(stage, 0x99 + stage.recorder.process());
    let bound = Staleness::from_millis(1_000).map(ReadPolicy::BoundedStaleness);
    Box::pin(async move {
        let Ok(policy) = bound else { return };
        while actor.running() {
            let key = format!("{prefix}:{}", rng.below(keys));
            actor
                .read(0, &key, policy, HistoryPolicy::Bounded(1_000))
                .await;
            sleep(pause(&mut rng, (60, 140))).await;
        }
    })
}

/// A user whose session travels between services in `regions`: it reads
/// under its session and now and then writes what it read on.
fn session_writer<D: Deployment>(
    stage: &Stage<D>,
    regions: &[&str],
    keys: u64,
    deleting: bool,
) -> Task {
    let mut actor = Actor::new(stage, regions);
    let p = stage.recorder.process();
    let mut rng = rng_for(stage, 0x77 + p);
    // Which writes are deletes: a stream of its own (none when not
    // `deleting`), taking no process number of its own, so that every
    // later actor keeps its streams.
    let mut deletes = rng_for(stage, 0xde1e_7e00 + p);
    let mut delete = move || deleting && deletes.below(4) == 0;
    Box::pin(async move {
        let mut turn = 0;
        let mut n = 0u64;
        while actor.running() {
            let key = format!("acct:{}", rng.below(keys));
            let seen = actor
                .read(turn, &key, ReadPolicy::Session, HistoryPolicy::Session)
                .await;
            turn += 1;
            if rng.below(3) == 0 {
                if let Some(seen) = seen {
                    n += 1;
                    match seen.version {
                        // Now and then the record is closed: deleted on
                        // top of what was read.
                        Some(v) if delete() => {
                            actor.delete(turn, &key, Precondition::IfVersion(v)).await;
                        }
                        version => {
                            let precondition = match version {
                                Some(v) => Precondition::IfVersion(v),
                                None => Precondition::IfAbsent,
                            };
                            actor
                                .write(turn, &key, &format!("session-{n}"), precondition, None)
                                .await;
                        }
                    }
                    turn += 1;
                }
            }
            sleep(pause(&mut rng, (60, 140))).await;
        }
    })
}

/// How many records a browser ranges over: more than a session token
/// names (16), so that keys leave the token and only the session's point
/// covers them.
const BROWSED: u64 = 40;

/// A user who ranges over many records in one session, travelling between
/// services in `regions`: it reads them under its session (now and then
/// strongly) and writes some, unconditionally or on top of what it read.
/// Its session must keep covering what it wrote and saw once the keys have
/// left the token.
fn browser<D: Deployment>(stage: &Stage<D>, regions: &[&str], deleting: bool) -> Task {
    let mut actor = Actor::new(stage, regions);
    let p = stage.recorder.process();
    let mut rng = rng_for(stage, 0xaa + p);
    // Which writes are deletes: a stream of its own (none when not
    // `deleting`), taking no process number of its own.
    let mut deletes = rng_for(stage, 0xde1e_7e00 + p);
    let mut delete = move || deleting && deletes.below(4) == 0;
    Box::pin(async move {
        let mut turn = 0;
        let mut n = 0u64;
        while actor.running() {
            let key = format!("item:{}", rng.below(BROWSED));
            match rng.below(6) {
                0 | 3 if delete() => {
                    actor.delete(turn, &key, Precondition::Any).await;
                }
                0 | 3 => {
                    n += 1;
                    actor
                        .write(turn, &key, &format!("browse-{n}"), Precondition::Any, None)
                        .await;
                }
                1 => {
                    actor
                        .read(turn, &key, ReadPolicy::Strong, HistoryPolicy::Strong)
                        .await;
                }
                _ => {
                    actor
                        .read(turn, &key, ReadPolicy::Session, HistoryPolicy::Session)
                        .await;
                }
            }
            turn += 1;
            sleep(pause(&mut rng, (20, 80))).await;
        }
    })
}

/// A user who sweeps a run of records strongly in one region, then reads
/// the same run under its session in another: what a strong read saw, the
/// session must not read behind later, though the keys have left the token.
fn auditor<D: Deployment>(stage: &Stage<D>, regions: &[&str]) -> Task {
    let mut actor = Actor::new(stage, regions);
    let mut rng = rng_for(stage, 0xbb + stage.recorder.process());
    Box::pin(async move {
        while actor.running() {
            let start = rng.below(BROWSED);
            let run: Vec<String> = (0..24)
                .map(|i| format!("item:{}", (start + i) % BROWSED))
                .collect();
            for key in &run {
                actor
                    .read(0, key, ReadPolicy::Strong, HistoryPolicy::Strong)
                    .await;
                sleep(pause(&mut rng, (5, 20))).await;
            }
            for key in &run {
                actor
                    .read(1, key, ReadPolicy::Session, HistoryPolicy::Session)
                    .await;
                sleep(pause(&mut rng, (5, 20))).await;
            }
        }
    })
}

/// A worker that settles records: it reads one strongly and moves it on,
/// naming the state transition after the version it saw
/// (`settle-<key>-<version>`), so that workers in two regions that see the
/// same version perform the same transition — once, if the client keeps
/// its promises.
fn settler<D: Deployment>(stage: &Stage<D>, region: &str, keys: u64) -> Task {
    let mut actor = Actor::new(stage, &[region]);
    let mut rng = rng_for(stage, 0x88 + stage.recorder.process());
    Box::pin(async move {
        while actor.running() {
            let key = format!("acct:{}", rng.below(keys));
            let seen = actor
                .read(0, &key, ReadPolicy::Strong, HistoryPolicy::Strong)
                .await;
            if let Some(v) = seen.and_then(|s| s.version) {
                actor
                    .write(
                        0,
                        &key,
                        "settled",
                        Precondition::IfVersion(v),
                        Some(format!("settle-{key}-{}", v.0)),
                    )
                    .await;
            }
            sleep(pause(&mut rng, (100, 300))).await;
        }
    })
}

/// A service that writes straight to the database through `region`'s
/// gateway, not through quorate, blindly and often, to records of its own
/// (`feed:N`) that background jobs read under a staleness bound. (No strong
/// reader reads them: on a database that trusts every clock, a clock
/// running ahead raises every node's hybrid-logical clock, and a leader
/// whose own clock is right then stamps such writes beyond a reader's
/// uncertainty; only the writer's commit wait, which quorate's writes
/// have, keeps a strong read from missing them.)
fn direct_writer<D: Deployment>(stage: &Stage<D>, region: &str, keys: u64) -> Task {
    direct_writer_during(stage, region, keys, (Duration::ZERO, DURATION))
}

/// The same, writing only from `from` to `until` into the run.
fn direct_writer_during<D: Deployment>(
    stage: &Stage<D>,
    region: &str,
    keys: u64,
    (from, until): (Duration, Duration),
) -> Task {
    let mut actor = Actor::direct(stage, region);
    let mut rng = rng_for(stage, 0xcc + stage.recorder.process());
    let (start, end) = (stage.start + from, stage.start + until);
    Box::pin(async move {
        tokio::time::sleep_until(start).await;
        let mut n = 0u64;
        while actor.running() && tokio::time::Instant::now() < end {
            n += 1;
            let key = format!("feed:{}", rng.below(keys));
            actor
                .write(0, &key, &format!("direct-{n}"), Precondition::Any, None)
                .await;
            sleep(pause(&mut rng, (30, 90))).await;
        }
    })
}

/// A writer whose strict client makes one attempt per operation, as a
/// request handler that leaves retries to its caller: it overwrites
/// records blindly (a status, a heartbeat) and, told that a write did not
/// apply, moves on to the next with a new idempotency key. A write it was
/// told had not applied must never land later.
fn one_shot_writer<D: Deployment>(stage: &Stage<D>, region: &str, keys: u64) -> Task {
    blind_writer(stage, region, keys, Some(1))
}

/// A writer that overwrites records blindly, its client making at most
/// `attempts` attempts per write (`None`: as many as its deadline allows).
fn blind_writer<D: Deployment>(
    stage: &Stage<D>,
    region: &str,
    keys: u64,
    attempts: Option<u32>,
) -> Task {
    let mut actor = Actor::with_attempts(stage, &[region], attempts);
    let mut rng = rng_for(stage, 0xdd + stage.recorder.process());
    Box::pin(async move {
        let mut n = 0u64;
        while actor.running() {
            let key = format!("acct:{}", rng.below(keys));
            n += 1;
            actor
                .write(0, &key, &format!("blind-{n}"), Precondition::Any, None)
                .await;
            sleep(pause(&mut rng, (40, 120))).await;
        }
    })
}

/// A teller: reads two records strongly and moves both on in one
/// multi-record write, each conditioned on the version it read, so that
/// both move or neither does.
fn teller<D: Deployment>(stage: &Stage<D>, region: &str, keys: u64) -> Task {
    let mut actor = Actor::new(stage, &[region]);
    let mut rng = rng_for(stage, 0x7e11 + stage.recorder.process());
    Box::pin(async move {
        let mut n = 0u64;
        while actor.running() {
            let i = rng.below(keys);
            let j = (i + 1 + rng.below(keys - 1)) % keys;
            let (a, b) = (format!("acct:{i}"), format!("acct:{j}"));
            let seen_a = actor
                .read(0, &a, ReadPolicy::Strong, HistoryPolicy::Strong)
                .await;
            let seen_b = actor
                .read(0, &b, ReadPolicy::Strong, HistoryPolicy::Strong)
                .await;
            if let (Some(x), Some(y)) = (seen_a, seen_b) {
                n += 1;
                let on = |v: Option<crate::Version>| match v {
                    Some(v) => Precondition::IfVersion(v),
                    None => Precondition::IfAbsent,
                };
                let records = [
                    (a, Some(format!("moved-{n}")), on(x.version)),
                    (b, Some(format!("moved-{n}")), on(y.version)),
                ];
                actor.transact(0, &records).await;
            }
            sleep(pause(&mut rng, (80, 200))).await;
        }
    })
}

/// A strict user in the quiet region who reads a record strongly now and
/// then, alternating between the records quorate's writers write
/// (`acct:N`) and those the service without quorate writes (`feed:N`).
fn quiet_reader<D: Deployment>(stage: &Stage<D>, region: &str, keys: u64) -> Task {
    let mut actor = Actor::new(stage, &[region]);
    let mut rng = rng_for(stage, 0xee + stage.recorder.process());
    Box::pin(async move {
        let mut turn = 0u64;
        while actor.running() {
            let prefix = if turn.is_multiple_of(2) {
                "acct"
            } else {
                "feed"
            };
            turn += 1;
            let key = format!("{prefix}:{}", rng.below(keys));
            actor
                .read(0, &key, ReadPolicy::Strong, HistoryPolicy::Strong)
                .await;
            sleep(pause(&mut rng, (900, 1200))).await;
        }
    })
}

/// A quiet-reader drill's workload (see [`Quiet`]).
fn quiet_workload<D: Deployment>(
    stage: &Stage<D>,
    home: &'static str,
    keys: u64,
    quiet: Quiet,
) -> Vec<Task> {
    let mut tasks = Vec::new();
    let ms = Duration::from_millis;
    match quiet.kind {
        QuietKind::FastLeader { from, until, skew } => {
            for _ in 0..2 {
                tasks.push(blind_writer(stage, quiet.busy, keys, None));
            }
            let stop = until.saturating_sub(skew + 300);
            tasks.push(direct_writer_during(
                stage,
                quiet.busy,
                keys,
                (ms(from + 200), ms(stop)),
            ));
        }
        QuietKind::FastGateway { from, skew } => {
            for _ in 0..2 {
                tasks.push(updater_verifying(
                    stage,
                    quiet.busy,
                    keys,
                    VerifyRegions::Local,
                ));
            }
            // Until the clients have seen the step (a probe period and a
            // majority of samples), their requests through the fast gateway
            // push the leaseholder's clock ahead, and its stamps stay ahead
            // for as long again: no client can prevent that, and a service
            // without commit wait writing then would be missed.
            tasks.push(direct_writer_during(
                stage,
                home,
                keys,
                (ms(from + skew + 1200), DURATION),
            ));
        }
    }
    tasks.push(quiet_reader(stage, quiet.reader, keys));
    tasks
}

/// An updater (strong read, conditional write) whose writes are checked in
/// `regions`.
fn updater_verifying<D: Deployment>(
    stage: &Stage<D>,
    region: &str,
    keys: u64,
    regions: VerifyRegions,
) -> Task {
    let mut actor = Actor::new(stage, &[region]).verifying(regions);
    let mut rng = rng_for(stage, 0x11 + stage.recorder.process());
    Box::pin(async move {
        let mut n = 0u64;
        while actor.running() {
            let key = format!("acct:{}", rng.below(keys));
            n += 1;
            actor.update(&key, &format!("update-{n}")).await;
            sleep(pause(&mut rng, (60, 200))).await;
        }
    })
}

fn workload<D: Deployment>(stage: &Stage<D>) -> Vec<Task> {
    workload_of(stage, Plan::of_for::<D>(stage.seed))
}

fn first_workload<D: Deployment>(stage: &Stage<D>) -> Vec<Task> {
    workload_of(stage, Plan::first(stage.seed))
}

fn workload_of<D: Deployment>(stage: &Stage<D>, plan: Plan) -> Vec<Task> {
    if let Some(quiet) = plan.quiet {
        return quiet_workload(stage, plan.home, plan.keys, quiet);
    }
    // Clock drills keep their load as it was: their steps are narrow.
    let deleting = plan.clock_focus.is_none();
    let mut tasks = Vec::new();
    for r in &plan.updaters {
        tasks.push(updater(stage, &[r], plan.keys, (60, 200)));
    }
    for r in &plan.readers {
        tasks.push(reader(stage, &[r], plan.keys, (40, 120)));
    }
    for (i, regions) in plan.roamers.iter().enumerate() {
        if i % 2 == 0 {
            tasks.push(session_writer(stage, regions, plan.keys, deleting));
        } else {
            tasks.push(roamer(stage, regions, plan.keys));
        }
    }
    for r in &plan.bounded {
        tasks.push(bounded_reader(stage, r, plan.keys));
    }
    for r in &plan.settlers {
        tasks.push(settler(stage, r, plan.keys));
    }
    for regions in &plan.browsers {
        tasks.push(browser(stage, regions, deleting));
    }
    for regions in &plan.auditors {
        tasks.push(auditor(stage, regions));
    }
    for r in &plan.one_shot {
        tasks.push(one_shot_writer(stage, r, plan.keys));
    }
    for r in &plan.tellers {
        tasks.push(teller(stage, r, plan.keys));
    }
    for r in &plan.direct {
        tasks.push(direct_writer(stage, r, plan.keys));
        // Its records are read in the drill's focus under the bound.
        if let Some(focus) = plan.clock_focus {
            for _ in 0..4 {
                tasks.push(bounded_reader_of(stage, focus, "feed", plan.keys));
            }
        }
    }
    tasks
}

/// The schedule of `seed` as a drill scenario.
pub fn scenario(seed: u64) -> Scenario {
    scenario_on::<Sim>(seed)
}

/// The schedule of `seed` as a drill scenario for clients of deployment
/// `D`.
pub fn scenario_on<D: Deployment>(seed: u64) -> Scenario<D> {
    // The system, the workload and the faults grew since the first
    // schedules: crashes and lease moves come on top of the first faults.
    Scenario {
        system: system_for::<D>,
        workload,
        windows: Plan::of_for::<D>(seed).windows,
        ..first_scenario_on(seed)
    }
}

/// The schedule of `seed` as the randomized schedules first drew it
/// (every database enforcing `max_offset`, no sessions over many records):
/// the seeds that once caught a strict anomaly replay their failing runs
/// this way.
pub fn first_scenario(seed: u64) -> Scenario {
    first_scenario_on::<Sim>(seed)
}

/// [`first_scenario`] for clients of deployment `D`.
pub fn first_scenario_on<D: Deployment>(seed: u64) -> Scenario<D> {
    let plan = Plan::first(seed);
    Scenario {
        name: "nemesis",
        about: Anomaly::StaleRead,
        story: "a random schedule of overlapping faults over a random workload",
        naive: "reads the local replica, sticks to one region, retries blindly",
        mechanism: "quorate's defaults",
        duration: DURATION,
        windows: plan.windows,
        naive_reads: NaiveReads::LocalReplica,
        system: first_system,
        workload: first_workload,
    }
}

/// A description of the schedule of `seed`: the system and each fault.
pub fn describe(seed: u64) -> String {
    let plan = Plan::of(seed);
    let browsers = match plan.browsers.len() {
        0 => String::new(),
        1 => ", 1 browser".to_owned(),
        n => format!(", {n} browsers"),
    };
    let clocks = match (plan.clock_focus, plan.quiet) {
        (Some(r), _) => format!(", clock drill in {r}"),
        (None, Some(q)) => format!(", {}", q.label()),
        (None, None) => String::new(),
    };
    let mut s = format!(
        "seed {seed}: {} table{}, home {}, {} keys{browsers}{clocks}; faults:",
        if plan.multi_writer && plan.hashed_homes && plan.trusts_clocks {
            "multi-writer (homes by key, trusting every clock)"
        } else if plan.multi_writer && plan.hashed_homes {
            "multi-writer (homes by key)"
        } else if plan.multi_writer && plan.trusts_clocks {
            "multi-writer (trusting every clock)"
        } else if plan.multi_writer {
            "multi-writer"
        } else if plan.trusts_clocks {
            "consensus (trusting every clock)"
        } else if plan.commit_wait {
            "consensus (commit wait)"
        } else {
            "consensus"
        },
        if plan.ranges > 1 {
            format!(" in {} ranges", plan.ranges)
        } else {
            String::new()
        },
        plan.home,
        plan.keys
    );
    for w in &plan.windows {
        s.push_str(&format!(
            " [{:.1}-{:.1} s {}]",
            w.from.as_secs_f64(),
            w.until.as_secs_f64(),
            w.fault.label()
        ));
    }
    s
}

/// What a range of seeds showed.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct NemesisSummary {
    /// The first seed.
    pub from: u64,
    /// How many seeds ran (each twice: naive and strict).
    pub seeds: u64,
    /// Per anomaly: how many strict runs showed it.
    pub strict: BTreeMap<&'static str, u64>,
    /// Per anomaly: how many naive runs showed it.
    pub naive: BTreeMap<&'static str, u64>,
    /// The seeds whose strict run showed an anomaly, with its counts.
    pub failures: Vec<(u64, BTreeMap<&'static str, u64>)>,
    /// Operations recorded over every run.
    pub ops: u64,
    /// The anomalies no naive run showed.
    pub unseen_by_naive: Vec<&'static str>,
    /// How the runs departed from the schedules (empty: not at all).
    pub variant: String,
    /// The same as command-line arguments, for replay commands.
    #[serde(skip)]
    replay_args: String,
}

impl NemesisSummary {
    /// Whether every strict run was clean.
    pub fn ok(&self) -> bool {
        self.seeds > 0 && self.failures.is_empty()
    }

    /// The anomalies no naive run showed.
    pub fn unseen_by_naive(&self) -> Vec<&'static str> {
        ANOMALIES
            .iter()
            .copied()
            .filter(|a| self.naive.get(a).copied().unwrap_or(0) == 0)
            .collect()
    }

    /// A table: per anomaly, the strict and naive runs that showed it, then
    /// each failing seed with the command that replays it.
    pub fn render(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "nemesis: seeds {}..{} ({} runs, {} operations){}",
            self.from,
            self.from.saturating_add(self.seeds),
            self.seeds * 2,
            self.ops,
            if self.variant.is_empty() {
                String::new()
            } else {
                format!("; {}", self.variant)
            }
        );
        let _ = writeln!(
            s,
            "{:<24} {:>12} {:>12}",
            "anomaly", "strict runs", "naive runs"
        );
        for a in ANOMALIES {
            let _ = writeln!(
                s,
                "{:<24} {:>12} {:>12}",
                a,
                self.strict.get(a).copied().unwrap_or(0),
                self.naive.get(a).copied().unwrap_or(0)
            );
        }
        if self.failures.is_empty() {
            let _ = writeln!(s, "\nPASS: no strict run showed an anomaly");
        } else {
            let _ = writeln!(
                s,
                "\nFAIL: {} strict run(s) showed anomalies",
                self.failures.len()
            );
            for (seed, counts) in &self.failures {
                let shown: Vec<String> = counts
                    .iter()
                    .filter(|(_, n)| **n > 0)
                    .map(|(a, n)| format!("{a}={n}"))
                    .collect();
                let variant = &self.replay_args;
                let _ = writeln!(
                    s,
                    "  seed {seed}: {}\n    {}\n    replay: cargo run --release --example drill -- --nemesis 1 --seed {seed}{variant} --history h.jsonl --report r.html",
                    shown.join(" "),
                    describe(*seed)
                );
            }
        }
        s
    }
}

/// Runs seeds `from..from + seeds`, each naive then strict, departing from
/// the schedules as `variant` says; `each` sees every run (to save its
/// history or report).
pub fn run_seeds(
    from: u64,
    seeds: u64,
    variant: &Variant,
    mut each: impl FnMut(u64, &super::RunResult),
) -> Result<NemesisSummary, Error> {
    let mut replay_args = String::new();
    if !variant.without.is_empty() {
        let names: Vec<&str> = variant.without.iter().map(|m| m.name()).collect();
        replay_args.push_str(&format!(" --without {}", names.join(",")));
    }
    if variant.enforce_max_offset {
        replay_args.push_str(" --enforce-max-offset");
    }
    let mut summary = NemesisSummary {
        from,
        seeds,
        variant: variant.describe(),
        replay_args,
        ..NemesisSummary::default()
    };
    for seed in from..from.saturating_add(seeds) {
        let scenario = scenario(seed);
        for config in [Configuration::Naive, Configuration::Strict] {
            let result = run_variant(&scenario, config, seed, variant)?;
            summary.ops += result.report.ops;
            let counts = match config {
                Configuration::Naive => &mut summary.naive,
                Configuration::Strict => &mut summary.strict,
            };
            for (a, n) in &result.report.anomalies {
                if *n > 0 {
                    *counts.entry(a).or_default() += 1;
                }
            }
            if config == Configuration::Strict && result.report.total() > 0 {
                summary
                    .failures
                    .push((seed, result.report.anomalies.clone()));
            }
            each(seed, &result);
        }
    }
    for a in ANOMALIES {
        summary.strict.entry(a).or_default();
        summary.naive.entry(a).or_default();
    }
    summary.unseen_by_naive = summary.unseen_by_naive();
    Ok(summary)
}
