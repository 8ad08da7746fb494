//! The backend-agnostic conformance suite (feature `testing`).
//!
//! Every adapter runs the same cases against its real server, and the core
//! runs them against the simulator, plain and wrapped in [`Chaos`]: all
//! backends honour the same semantics. Cases that need faults wrap the given
//! backend in [`Chaos`] themselves.
//!
//! ```no_run
//! # async fn demo(backend: quorate::sim::Sim) {
//! use quorate::conformance::{run_all, Fixture};
//! let report = run_all(&Fixture::new(backend)).await;
//! assert!(report.iter().all(|(_, r)| r.is_ok()), "{report:?}");
//! # }
//! ```
//!
//! Keys are prefixed with a random run id, so a shared server needs no reset
//! between runs.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use tokio::time::Instant;

use crate::backend::{Backend, IdempotencyKey, TxOp};
use crate::chaos::Chaos;
use crate::client::{Client, ClientConfig, Verify, VerifyRegions, WriteOptions};
use crate::error::Error;
use crate::policy::{ReadPolicy, Staleness};
use crate::record::{Precondition, ReplicaRole, Version};
use crate::session::{Scope, SessionToken, TokenError};

/// The values of `vars`, which a server script exports, or `None` when one
/// is missing outside CI (the caller's test then says it is skipped). In CI
/// (`CI` set and not `false`) a missing server is a failure, never a skip:
/// this panics naming `server` and the `script` that starts it.
pub fn server_env<const N: usize>(
    vars: [&str; N],
    server: &str,
    script: &str,
) -> Option<[String; N]> {
    let values = vars.map(|v| std::env::var(v).ok());
    if values.iter().all(Option::is_some) {
        return Some(values.map(Option::unwrap_or_default));
    }
    if std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false") {
        panic!("{server} is required in CI: run the tests through scripts/test (it runs {script} start)");
    }
    eprintln!("skipping: no {server} (run scripts/test, or eval \"$({script} start)\")");
    None
}

/// The outcome of one case: `Err` says what did not hold.
pub type CaseResult = Result<(), String>;

/// The future a [`HoldFollowers`] hook returns.
pub type HoldFuture = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;

/// A way to make the follower replicas of a region stop applying what they
/// receive (`true`) and go on again (`false`), the way the server itself
/// lags: PostgreSQL's `pg_wal_replay_pause()`, a paused replicator, a
/// stalled simulated replica. With it, [`follower_freshness_claims_hold`]
/// checks the backend's freshness claims while its followers really are
/// behind.
#[derive(Clone)]
pub struct HoldFollowers(
    pub std::sync::Arc<dyn Fn(crate::Region, bool) -> HoldFuture + Send + Sync>,
);

impl HoldFollowers {
    /// A hook from a function of the region and whether to hold it.
    pub fn new<F, Fut>(f: F) -> HoldFollowers
    where
        F: Fn(crate::Region, bool) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        HoldFollowers(std::sync::Arc::new(move |region, hold| {
            Box::pin(f(region, hold))
        }))
    }

    async fn set(&self, region: &crate::Region, hold: bool) -> CaseResult {
        (self.0)(region.clone(), hold).await.map_err(|e| {
            format!(
                "{} the followers of {region}: {e}",
                if hold { "holding" } else { "releasing" }
            )
        })
    }
}

impl std::fmt::Debug for HoldFollowers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HoldFollowers(..)")
    }
}

/// What a [`QueryHook`] returns.
pub type QueryFuture = Pin<Box<dyn Future<Output = Result<Option<Version>, Error>> + Send>>;

/// How to read one record through a backend's query path (an SQL query, a
/// partition `Query`) under a policy in a session: the version the query
/// returned for `key` (`None`: not among its rows). With it,
/// [`read_your_writes_through_a_query`] runs.
pub struct QueryHook<B>(
    #[allow(clippy::type_complexity)]
    pub  std::sync::Arc<
        dyn Fn(Client<B>, crate::Session, ReadPolicy, String) -> QueryFuture + Send + Sync,
    >,
);

impl<B> QueryHook<B> {
    /// A hook from a function of the client, the session, the policy and
    /// the key.
    pub fn new<F, Fut>(f: F) -> QueryHook<B>
    where
        F: Fn(Client<B>, crate::Session, ReadPolicy, String) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Option<Version>, Error>> + Send + 'static,
    {
        QueryHook(std::sync::Arc::new(move |c, s, p, k| {
            Box::pin(f(c, s, p, k))
        }))
    }
}

impl<B> Clone for QueryHook<B> {
    fn clone(&self) -> Self {
        QueryHook(self.0.clone())
    }
}

impl<B> std::fmt::Debug for QueryHook<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("QueryHook(..)")
    }
}

/// What the cases run against.
#[derive(Clone, Debug)]
pub struct Fixture<B> {
    /// The backend, seen from its topology's local region.
    pub backend: B,
    /// The client configuration the cases use.
    pub config: ClientConfig,
    /// Prefix of every key the cases write.
    pub prefix: String,
    /// How to hold a region's followers back, when the server allows it.
    pub hold_followers: Option<HoldFollowers>,
    /// How to read through the backend's query path, when it has one for
    /// the fixture's keys.
    pub query: Option<QueryHook<B>>,
}

impl<B: Backend + Clone> Fixture<B> {
    /// A fixture with the default (strict) configuration and a fresh key
    /// prefix.
    pub fn new(backend: B) -> Fixture<B> {
        Fixture {
            backend,
            config: ClientConfig::default(),
            prefix: format!(
                "conf-{:012x}",
                crate::random::process_entropy() & 0xffff_ffff_ffff
            ),
            hold_followers: None,
            query: None,
        }
    }

    /// The fixture with a way to read through the backend's query path.
    pub fn with_query(mut self, query: QueryHook<B>) -> Fixture<B> {
        self.query = Some(query);
        self
    }

    /// The fixture with a way to hold followers back.
    pub fn with_hold_followers(mut self, hold: HoldFollowers) -> Fixture<B> {
        self.hold_followers = Some(hold);
        self
    }

    fn key(&self, case: &str, n: u32) -> String {
        format!("{}/{case}/{n}", self.prefix)
    }

    fn client(&self) -> Result<Client<B>, String> {
        Client::new(self.backend.clone(), self.config.clone()).map_err(|e| e.to_string())
    }

    fn chaos_client(&self) -> Result<(Client<Chaos<B>>, crate::chaos::ChaosControl), String> {
        let (backend, control) = Chaos::new(self.backend.clone());
        let client = Client::new(backend, self.config.clone()).map_err(|e| e.to_string())?;
        Ok((client, control))
    }
}

/// The value the cases write for `text`: a JSON document in canonical
/// form, so that the cases run on native tables too (which store
/// documents and read them back canonical) and compare bytes.
fn doc(text: impl std::fmt::Display) -> bytes::Bytes {
    bytes::Bytes::from(format!(r#"{{"v":"{text}"}}"#))
}

macro_rules! ensure {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err(format!($($fmt)+));
        }
    };
}

fn fail(context: &str) -> impl FnOnce(Error) -> String + '_ {
    move |e| format!("{context}: {}", e.report())
}

/// A case of the suite.
pub type Case<B> =
    for<'a> fn(&'a Fixture<B>) -> Pin<Box<dyn Future<Output = CaseResult> + Send + 'a>>;

/// Every case with its name.
pub fn cases<B: Backend + Clone>() -> Vec<(&'static str, Case<B>)> {
    vec![
        ("read_your_writes", |f| Box::pin(read_your_writes(f))),
        ("read_your_writes_across_services", |f| {
            Box::pin(read_your_writes_across_services(f))
        }),
        ("monotonic_reads", |f| Box::pin(monotonic_reads(f))),
        ("conditional_write_conflicts", |f| {
            Box::pin(conditional_write_conflicts(f))
        }),
        ("exactly_once_after_ambiguous_commit", |f| {
            Box::pin(exactly_once_after_ambiguous_commit(f))
        }),
        ("retry_after_failure_before_send", |f| {
            Box::pin(retry_after_failure_before_send(f))
        }),
        ("bounded_staleness_honoured", |f| {
            Box::pin(bounded_staleness_honoured(f))
        }),
        ("wrong_scope_token_rejected", |f| {
            Box::pin(wrong_scope_token_rejected(f))
        }),
        ("not_visible_deadline", |f| {
            Box::pin(not_visible_deadline(f))
        }),
        ("read_deadline_bounds_waiting", |f| {
            Box::pin(read_deadline_bounds_waiting(f))
        }),
        ("reads_state_the_point_they_reflect", |f| {
            Box::pin(reads_state_the_point_they_reflect(f))
        }),
        ("reused_idempotency_key_refused", |f| {
            Box::pin(reused_idempotency_key_refused(f))
        }),
        ("follower_freshness_claims_hold", |f| {
            Box::pin(follower_freshness_claims_hold(f))
        }),
        ("deletes_leave_tombstones_that_recreation_continues", |f| {
            Box::pin(deletes_leave_tombstones_that_recreation_continues(f))
        }),
        ("multi_record_writes_apply_all_or_nothing", |f| {
            Box::pin(multi_record_writes_apply_all_or_nothing(f))
        }),
        (
            "multi_record_write_exactly_once_after_ambiguous_commit",
            |f| Box::pin(multi_record_write_exactly_once_after_ambiguous_commit(f)),
        ),
    ]
}

/// Runs every case, in order, and returns each outcome by name;
/// [`read_your_writes_through_a_query`] runs when the fixture has a
/// [`QueryHook`] (a backend with no query path for its keys has nothing
/// for it to check).
pub async fn run_all<B: Backend + Clone>(fixture: &Fixture<B>) -> Vec<(&'static str, CaseResult)> {
    let mut out = Vec::new();
    for (name, case) in cases::<B>() {
        out.push((name, case(fixture).await));
    }
    if fixture.query.is_some() {
        out.push((
            "read_your_writes_through_a_query",
            read_your_writes_through_a_query(fixture).await,
        ));
    }
    out
}

/// A session's query sees the session's writes, under `Session` and
/// `Strong`, with the followers held back where the server allows it, and
/// advances the session so that a point read after it is no older.
pub async fn read_your_writes_through_a_query<B: Backend + Clone>(f: &Fixture<B>) -> CaseResult {
    let Some(query) = &f.query else {
        return Err("the fixture has no query hook".into());
    };
    let client = f.client()?;
    let session = client.session();
    let key = f.key("query", 0);
    let local = client.backend().topology().local().clone();
    let held = match &f.hold_followers {
        Some(hold) => {
            hold.set(&local, true).await?;
            true
        }
        None => false,
    };
    let outcome = async {
        let mut expect = Precondition::IfAbsent;
        for i in 0..3u32 {
            let c = client
                .write(&session, &key, doc(i), expect, &WriteOptions::default())
                .await
                .map_err(fail("write"))?;
            for policy in [ReadPolicy::Session, ReadPolicy::Strong] {
                let seen = (query.0)(client.clone(), session.clone(), policy, key.clone())
                    .await
                    .map_err(fail("query"))?;
                ensure!(
                    seen == Some(c.version),
                    "{policy} query after writing {} saw {seen:?}",
                    c.version
                );
            }
            expect = Precondition::IfVersion(c.version);
        }
        // Another session that only ran the query reads no older.
        let reader = client.session();
        let seen = (query.0)(
            client.clone(),
            reader.clone(),
            ReadPolicy::Strong,
            key.clone(),
        )
        .await
        .map_err(fail("query"))?;
        let r = client
            .read(&reader, &key, ReadPolicy::Session)
            .await
            .map_err(fail("read"))?;
        ensure!(
            r.version() >= seen,
            "a session read after a query that saw {seen:?} saw {:?}",
            r.version()
        );
        Ok(())
    }
    .await;
    if held {
        if let Some(hold) = &f.hold_followers {
            hold.set(&local, false).await?;
        }
    }
    outcome
}

/// A session reads its own writes, under `Session` and `Strong`, even where
/// followers lag.
pub async fn read_your_writes<B: Backend + Clone>(f: &Fixture<B>) -> CaseResult {
    let (client, control) = f.chaos_client()?;
    control.set_replica_lag(client.backend().topology().local(), Duration::from_secs(30));
    let session = client.session();
    let key = f.key("ryw", 0);
    let mut expect = Precondition::IfAbsent;
    for i in 0..5u32 {
        let c = client
            .write(&session, &key, doc(i), expect, &WriteOptions::default())
            .await
            .map_err(fail("write"))?;
        for policy in [ReadPolicy::Session, ReadPolicy::Strong] {
            let r = client
                .read(&session, &key, policy)
                .await
                .map_err(fail("read"))?;
            ensure!(
                r.version() == Some(c.version),
                "{policy} read after writing {} saw {:?} at {:?}",
                c.version,
                r.version(),
                r.freshness
            );
            ensure!(
                r.value.as_ref().is_some_and(|v| v.value == doc(i)),
                "{policy} read returned another value"
            );
        }
        expect = Precondition::IfVersion(c.version);
    }
    Ok(())
}

/// A token carried as text to another client (another service) gives it
/// read-your-writes too.
pub async fn read_your_writes_across_services<B: Backend + Clone>(f: &Fixture<B>) -> CaseResult {
    let writer = f.client()?;
    let (reader, control) = f.chaos_client()?;
    control.set_replica_lag(reader.backend().topology().local(), Duration::from_secs(30));
    let key = f.key("ryw-x", 0);
    let session = writer.session();
    let c = writer
        .write(
            &session,
            &key,
            doc("a"),
            Precondition::IfAbsent,
            &WriteOptions::default(),
        )
        .await
        .map_err(fail("write"))?;
    let header = writer.encode_token(&session);
    let continued = reader.resume_session(&header).map_err(fail("resume"))?;
    let r = reader
        .read(&continued, &key, ReadPolicy::Session)
        .await
        .map_err(fail("read"))?;
    ensure!(
        r.version() == Some(c.version),
        "other service saw {:?}, wrote {}",
        r.version(),
        c.version
    );
    Ok(())
}

/// Once a session has seen a version, it never sees an older one.
pub async fn monotonic_reads<B: Backend + Clone>(f: &Fixture<B>) -> CaseResult {
    let writer = f.client()?;
    let (client, control) = f.chaos_client()?;
    let key = f.key("monotonic", 0);
    let w = writer.session();
    let mut last = Version(0);
    let mut expect = Precondition::IfAbsent;
    for i in 0..3 {
        let c = writer
            .write(&w, &key, doc(i), expect, &WriteOptions::default())
            .await
            .map_err(fail("write"))?;
        expect = Precondition::IfVersion(c.version);
        last = c.version;
    }
    let session = client.session();
    let strong = client
        .read(&session, &key, ReadPolicy::Strong)
        .await
        .map_err(fail("strong read"))?;
    ensure!(
        strong.version() == Some(last),
        "strong read saw {:?}, newest is {last}",
        strong.version()
    );
    control.set_replica_lag(client.backend().topology().local(), Duration::from_secs(30));
    for _ in 0..10 {
        let r = client
            .read(&session, &key, ReadPolicy::Session)
            .await
            .map_err(fail("session read"))?;
        ensure!(
            r.version() >= Some(last),
            "session read went back to {:?} after {last}",
            r.version()
        );
    }
    Ok(())
}

/// Conditional writes detect every intervening commit and report the
/// current version; of two concurrent writers on one version, one wins.
pub async fn conditional_write_conflicts<B: Backend + Clone>(f: &Fixture<B>) -> CaseResult {
    let client = f.client()?;
    let s = client.session();
    let key = f.key("conflict", 0);
    let opts = WriteOptions::default();
    let v1 = client
        .write(&s, &key, doc("1"), Precondition::IfAbsent, &opts)
        .await
        .map_err(fail("create"))?;
    match client
        .write(&s, &key, doc("x"), Precondition::IfAbsent, &opts)
        .await
    {
        Err(Error::Conflict { current, .. }) => {
            ensure!(
                current == Some(v1.version),
                "conflict reported {current:?}, expected {}",
                v1.version
            )
        }
        other => return Err(format!("second create: expected a conflict, got {other:?}")),
    }
    let v2 = client
        .write(
            &s,
            &key,
            doc("2"),
            Precondition::IfVersion(v1.version),
            &opts,
        )
        .await
        .map_err(fail("update"))?;
    ensure!(
        v2.version > v1.version,
        "versions must increase: {} then {}",
        v1.version,
        v2.version
    );
    match client
        .write(
            &s,
            &key,
            doc("stale"),
            Precondition::IfVersion(v1.version),
            &opts,
        )
        .await
    {
        Err(Error::Conflict { current, .. }) => {
            ensure!(
                current == Some(v2.version),
                "conflict reported {current:?}, expected {}",
                v2.version
            )
        }
        other => return Err(format!("stale update: expected a conflict, got {other:?}")),
    }
    let other = client.session();
    let (a, b) = tokio::join!(
        client.write(
            &s,
            &key,
            doc("a"),
            Precondition::IfVersion(v2.version),
            &opts
        ),
        client.write(
            &other,
            &key,
            doc("b"),
            Precondition::IfVersion(v2.version),
            &opts
        ),
    );
    let wins = [&a, &b].iter().filter(|r| r.is_ok()).count();
    let conflicts = [&a, &b]
        .iter()
        .filter(|r| matches!(r, Err(Error::Conflict { .. })))
        .count();
    ensure!(
        wins == 1 && conflicts == 1,
        "two writers on one version: {a:?} / {b:?}"
    );
    Ok(())
}

/// A write whose answer is lost after it committed is resolved through its
/// idempotency record: applied exactly once, with its original result.
pub async fn exactly_once_after_ambiguous_commit<B: Backend + Clone>(f: &Fixture<B>) -> CaseResult {
    let (client, control) = f.chaos_client()?;
    let s = client.session();
    let key = f.key("ambiguous", 0);
    let opts = WriteOptions::default();
    let v1 = client
        .write(&s, &key, doc("1"), Precondition::IfAbsent, &opts)
        .await
        .map_err(fail("create"))?;
    control.drop_write_responses(1);
    let v2 = client
        .write(
            &s,
            &key,
            doc("2"),
            Precondition::IfVersion(v1.version),
            &opts,
        )
        .await
        .map_err(fail("ambiguous write"))?;
    ensure!(control.injected() >= 1, "no fault was injected");
    let r = client
        .read(&s, &key, ReadPolicy::Strong)
        .await
        .map_err(fail("read"))?;
    ensure!(
        r.version() == Some(v2.version),
        "after the ambiguous write the key is at {:?}, write said {}",
        r.version(),
        v2.version
    );
    ensure!(
        v2.version == v1.version.next(),
        "the write applied more than once: {} then {}",
        v1.version,
        v2.version
    );
    // The resolved write's point is its commit's (or later): a session
    // that records it keeps covering it.
    ensure!(
        v2.point >= v1.point,
        "the resolved write's point {} is below the earlier write's {}",
        v2.point,
        v1.point
    );
    // A caller retrying the same logical write gets the same result.
    let idem = IdempotencyKey::generate();
    let opts = WriteOptions {
        idempotency_key: Some(idem),
        ..WriteOptions::default()
    };
    let first = client
        .write(
            &s,
            &key,
            doc("3"),
            Precondition::IfVersion(v2.version),
            &opts,
        )
        .await
        .map_err(fail("keyed write"))?;
    let again = client
        .write(
            &s,
            &key,
            doc("3"),
            Precondition::IfVersion(v2.version),
            &opts,
        )
        .await
        .map_err(fail("keyed retry"))?;
    ensure!(
        again.version == first.version,
        "retry of one logical write gave {} then {}",
        first.version,
        again.version
    );
    ensure!(
        again.point >= first.point,
        "the retry's point {} is below the commit's {}",
        again.point,
        first.point
    );
    let r = client
        .read(&s, &key, ReadPolicy::Strong)
        .await
        .map_err(fail("read"))?;
    ensure!(
        r.version() == Some(first.version),
        "the keyed write applied twice: at {:?}",
        r.version()
    );
    Ok(())
}

/// A write that failed before it was sent is retried and applied once.
pub async fn retry_after_failure_before_send<B: Backend + Clone>(f: &Fixture<B>) -> CaseResult {
    let (client, control) = f.chaos_client()?;
    let s = client.session();
    let key = f.key("retry", 0);
    control.fail_writes_before_send(2);
    let c = client
        .write(
            &s,
            &key,
            doc("1"),
            Precondition::IfAbsent,
            &WriteOptions::default(),
        )
        .await
        .map_err(fail("write"))?;
    ensure!(
        control.injected() == 2,
        "expected two injected failures, saw {}",
        control.injected()
    );
    ensure!(c.version == Version::FIRST, "created at {}", c.version);
    Ok(())
}

/// A bounded read never returns data beyond its bound: when the local
/// followers lag past it, the read is escalated.
pub async fn bounded_staleness_honoured<B: Backend + Clone>(f: &Fixture<B>) -> CaseResult {
    let (client, control) = f.chaos_client()?;
    let s = client.session();
    let key = f.key("bounded", 0);
    let v1 = client
        .write(
            &s,
            &key,
            doc("1"),
            Precondition::IfAbsent,
            &WriteOptions::default(),
        )
        .await
        .map_err(fail("create"))?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let bound = Staleness::new(Duration::from_millis(500)).map_err(|e| e.to_string())?;
    control.set_replica_lag(
        client.backend().topology().local(),
        Duration::from_secs(3600),
    );
    let reader = client.session();
    for _ in 0..5 {
        let r = client
            .read(&reader, &key, ReadPolicy::BoundedStaleness(bound))
            .await
            .map_err(fail("bounded read"))?;
        let fresh = &r.freshness;
        ensure!(
            fresh.role == ReplicaRole::Leader
                || fresh.staleness_bound.is_some_and(|b| b <= bound.duration()),
            "bounded read returned {fresh:?}"
        );
        ensure!(
            r.version() >= Some(v1.version),
            "a 500 ms bounded read missed a version committed a second before: {:?} ({fresh:?})",
            r.version()
        );
    }
    ensure!(
        control.injected() > 0,
        "the lagging replica was never consulted"
    );
    Ok(())
}

/// Tokens of another scope, garbled ones and oversize ones are refused with
/// typed errors.
pub async fn wrong_scope_token_rejected<B: Backend + Clone>(f: &Fixture<B>) -> CaseResult {
    let client = f.client()?;
    let other = Scope::new(&format!("{}-other", client.scope()))
        .or_else(|_| Scope::new("other-scope"))
        .map_err(|e| e.to_string())?;
    let foreign = SessionToken::new(other).encode();
    ensure!(
        matches!(
            client.resume_session(&foreign),
            Err(Error::Token(TokenError::WrongScope { .. }))
        ),
        "a token of another scope was accepted"
    );
    ensure!(
        matches!(
            client.resume_session("%%%"),
            Err(Error::Token(TokenError::Garbled(_)))
        ),
        "a garbled token was accepted"
    );
    ensure!(
        matches!(
            client.resume_session(&"A".repeat(4096)),
            Err(Error::Token(TokenError::Oversize { .. }))
        ),
        "an oversize token was accepted"
    );
    let own = client.encode_token(&client.session());
    ensure!(
        client.resume_session(&own).is_ok(),
        "the client's own token was refused"
    );
    Ok(())
}

/// A read-after-write check that cannot see the version fails with
/// `NotVisible` at its deadline, not later.
pub async fn not_visible_deadline<B: Backend + Clone>(f: &Fixture<B>) -> CaseResult {
    let (client, control) = f.chaos_client()?;
    let s = client.session();
    let key = f.key("not-visible", 0);
    let local = client.backend().topology().local().clone();
    // Every region's replicas lag: a check redirected away from a local
    // region the router left (a slow first write on a loaded server) must
    // find the version missing as well.
    for region in client.backend().topology().regions() {
        control.set_replica_lag(region, Duration::from_secs(3600));
    }
    // Create first so the lagging replica has a version older than the next.
    let c = client
        .write(
            &s,
            &key,
            doc("1"),
            Precondition::IfAbsent,
            &WriteOptions::default(),
        )
        .await
        .map_err(fail("create"))?;
    let deadline = Duration::from_millis(300);
    let opts = WriteOptions {
        verify: Some(Verify {
            regions: VerifyRegions::These(vec![local]),
            policy: ReadPolicy::BoundedStaleness(
                Staleness::from_millis(1000).map_err(|e| e.to_string())?,
            ),
            deadline,
        }),
        ..WriteOptions::default()
    };
    let start = Instant::now();
    let result = client
        .write(
            &s,
            &key,
            doc("2"),
            Precondition::IfVersion(c.version),
            &opts,
        )
        .await;
    let waited = start.elapsed();
    match result {
        Err(Error::NotVisible { version, .. }) => {
            ensure!(version == c.version.next(), "NotVisible names {version}")
        }
        other => return Err(format!("expected NotVisible, got {other:?}")),
    }
    ensure!(
        waited >= deadline,
        "gave up after {waited:?}, before the {deadline:?} deadline"
    );
    ensure!(
        waited < deadline + Duration::from_secs(2),
        "waited {waited:?} for a {deadline:?} deadline"
    );
    Ok(())
}

/// When no region answers, a read fails at its deadline instead of waiting
/// for the regions to come back.
pub async fn read_deadline_bounds_waiting<B: Backend + Clone>(f: &Fixture<B>) -> CaseResult {
    let (backend, control) = Chaos::new(f.backend.clone());
    let deadline = Duration::from_millis(400);
    let config = ClientConfig {
        read_deadline: deadline,
        ..f.config.clone()
    };
    let client = Client::new(backend, config).map_err(|e| e.to_string())?;
    control.set_isolation_timeout(Duration::from_secs(30));
    let regions: Vec<_> = client.backend().topology().regions().cloned().collect();
    for r in &regions {
        control.isolate(r);
    }
    let start = Instant::now();
    let result = client
        .read(
            &client.session(),
            &f.key("deadline", 0),
            ReadPolicy::Session,
        )
        .await;
    let waited = start.elapsed();
    ensure!(
        result.is_err(),
        "a read succeeded with every region isolated"
    );
    ensure!(
        waited < deadline + Duration::from_millis(200),
        "the read waited {waited:?} past its {deadline:?} deadline"
    );
    Ok(())
}

/// Every read that returns a record states the point it reflects (a leader
/// read's at or after the record's commit), in the backend's own freshness
/// (not a wrapper's): a session that forgets the key keeps covering it
/// through that point.
pub async fn reads_state_the_point_they_reflect<B: Backend + Clone>(f: &Fixture<B>) -> CaseResult {
    let client = f.client()?;
    let session = client.session();
    let key = f.key("points", 0);
    let c = client
        .write(
            &session,
            &key,
            doc("v"),
            Precondition::IfAbsent,
            &WriteOptions::default(),
        )
        .await
        .map_err(fail("write"))?;
    let backend = client.backend();
    let topology = backend.topology();
    for region in topology.regions() {
        for role in [ReplicaRole::Leader, ReplicaRole::Follower] {
            let plan = crate::ReadPlan {
                key: &key,
                region,
                role,
                policy: if role == ReplicaRole::Leader {
                    ReadPolicy::Strong
                } else {
                    ReadPolicy::Session
                },
                floor: crate::SessionFloor::default(),
                deadline: tokio::time::Instant::now() + Duration::from_secs(5),
            };
            let r = match backend.read(&plan).await {
                Ok(r) => r,
                // A backend may refuse a role a region does not serve.
                Err(e) if e.retryability() != crate::Retryability::Permanent => continue,
                Err(e) => return Err(format!("{role:?} read in {region}: {e}")),
            };
            if r.version() == Some(c.version) {
                ensure!(
                    r.freshness.point.is_some(),
                    "a {role:?} read in {region} returned the record but no point: {:?}",
                    r.freshness
                );
                // A linearizable read reflects everything committed before
                // it, the write included.
                ensure!(
                    r.freshness.role != ReplicaRole::Leader
                        || r.freshness.point.is_some_and(|p| p >= c.point),
                    "a leader read in {region} states a point below the write's commit {}: {:?}",
                    c.point,
                    r.freshness
                );
            }
        }
    }
    Ok(())
}

/// An idempotency key names one logical write of one record: reused for
/// another record it is refused, and the other record is not written.
pub async fn reused_idempotency_key_refused<B: Backend + Clone>(f: &Fixture<B>) -> CaseResult {
    let client = f.client()?;
    let session = client.session();
    let (a, b) = (f.key("reuse", 0), f.key("reuse", 1));
    let options = WriteOptions {
        idempotency_key: Some(
            crate::IdempotencyKey::new(&format!("{a}-once")).map_err(fail("key"))?,
        ),
        ..WriteOptions::default()
    };
    client
        .write(&session, &a, doc("1"), Precondition::IfAbsent, &options)
        .await
        .map_err(fail("first write"))?;
    match client
        .write(&session, &b, doc("1"), Precondition::IfAbsent, &options)
        .await
    {
        Err(Error::IdempotencyKeyReused { .. }) => {}
        other => return Err(format!("a reused key gave {other:?}")),
    }
    let r = client
        .read(&session, &b, ReadPolicy::Strong)
        .await
        .map_err(fail("read"))?;
    ensure!(r.version().is_none(), "the other record was written");
    Ok(())
}

/// A delete is a version of its record: conditional (a delete on another
/// version conflicts, naming the current one), idempotent (the same
/// logical delete again returns its first outcome, and a lookup of its key
/// finds it), visible to strong and session reads as a tombstone at its
/// version, never the base of an `IfVersion` write, and continued from
/// when the record is written again with `IfAbsent`. Deleting a record
/// that never existed leaves a tombstone too.
pub async fn deletes_leave_tombstones_that_recreation_continues<B: Backend + Clone>(
    f: &Fixture<B>,
) -> CaseResult {
    let client = f.client()?;
    let session = client.session();
    let key = f.key("delete", 0);
    let plain = WriteOptions::default();
    let first = client
        .write(&session, &key, doc("a"), Precondition::IfAbsent, &plain)
        .await
        .map_err(fail("write"))?;
    match client
        .delete(
            &session,
            &key,
            Precondition::IfVersion(first.version.next()),
            &plain,
        )
        .await
    {
        Err(Error::Conflict { current, .. }) => ensure!(
            current == Some(first.version),
            "a refused delete named {current:?}, not {}",
            first.version
        ),
        other => return Err(format!("a delete on another version gave {other:?}")),
    }
    let idem = IdempotencyKey::new(&format!("{key}-delete")).map_err(fail("key"))?;
    let once = WriteOptions {
        idempotency_key: Some(idem.clone()),
        ..WriteOptions::default()
    };
    let deleted = client
        .delete(
            &session,
            &key,
            Precondition::IfVersion(first.version),
            &once,
        )
        .await
        .map_err(fail("delete"))?;
    ensure!(
        deleted.version > first.version,
        "the delete's version {} is not after {}",
        deleted.version,
        first.version
    );
    let again = client
        .delete(
            &session,
            &key,
            Precondition::IfVersion(first.version),
            &once,
        )
        .await
        .map_err(fail("the same delete again"))?;
    ensure!(
        again.version == deleted.version,
        "the same logical delete applied twice: {} then {}",
        deleted.version,
        again.version
    );
    // Asked where the delete committed: a multi-writer table keeps its
    // idempotency records in the key's home region.
    let found = client
        .backend()
        .lookup(&deleted.region, &key, &idem)
        .await
        .map_err(fail("lookup"))?;
    ensure!(
        found.as_ref().map(|c| c.version) == Some(deleted.version),
        "the delete's idempotency key holds {found:?}"
    );
    let elsewhere = f.client()?.session();
    for (who, s, policy) in [
        ("the session", &session, ReadPolicy::Session),
        ("the session", &session, ReadPolicy::Strong),
        ("another session", &elsewhere, ReadPolicy::Strong),
    ] {
        let r = client
            .read(s, &key, policy)
            .await
            .map_err(fail("read after the delete"))?;
        ensure!(
            r.value.is_none() && r.deleted == Some(deleted.version),
            "{who}'s {policy} read after the delete saw {:?} (deleted: {:?})",
            r.version(),
            r.deleted
        );
    }
    for stale in [first.version, deleted.version] {
        match client
            .write(
                &session,
                &key,
                doc("b"),
                Precondition::IfVersion(stale),
                &plain,
            )
            .await
        {
            Err(Error::Conflict { current: None, .. }) => {}
            other => {
                return Err(format!(
                    "IfVersion({stale}) of a deleted record gave {other:?}"
                ))
            }
        }
    }
    let recreated = client
        .write(&session, &key, doc("c"), Precondition::IfAbsent, &plain)
        .await
        .map_err(fail("re-create"))?;
    ensure!(
        recreated.version > deleted.version,
        "the re-created record restarted at {} after the delete's {}",
        recreated.version,
        deleted.version
    );
    let r = client
        .read(&session, &key, ReadPolicy::Strong)
        .await
        .map_err(fail("read after re-creating"))?;
    ensure!(
        r.version() == Some(recreated.version)
            && r.deleted.is_none()
            && r.value.as_ref().is_some_and(|v| v.value == doc("c")),
        "the re-created record reads as {:?} (deleted: {:?})",
        r.version(),
        r.deleted
    );
    let never = f.key("delete", 1);
    let tombstone = client
        .delete(&session, &never, Precondition::Any, &plain)
        .await
        .map_err(fail("delete of an absent record"))?;
    let r = client
        .read(&session, &never, ReadPolicy::Strong)
        .await
        .map_err(fail("read of the tombstone"))?;
    ensure!(
        r.value.is_none() && r.deleted == Some(tombstone.version),
        "an absent record deleted reads as {:?} (deleted: {:?})",
        r.version(),
        r.deleted
    );
    Ok(())
}

/// Strong reads of `keys` in a fresh session: each one's observed
/// version (`None`: never written).
async fn strong_versions<B: Backend + Clone>(
    f: &Fixture<B>,
    keys: &[&str],
) -> Result<Vec<Option<Version>>, String> {
    let client = f.client()?;
    let session = client.session();
    let mut out = Vec::with_capacity(keys.len());
    for key in keys {
        let r = client
            .read(&session, key, ReadPolicy::Strong)
            .await
            .map_err(fail("strong read"))?;
        out.push(r.observed());
    }
    Ok(out)
}

/// A multi-record write applies every record or none: a transfer moves
/// both records; one whose second record's precondition fails (or whose
/// condition check fails) conflicts naming that record and its current
/// version, and changes nothing; puts, deletes and checks mix; the writing
/// session reads its writes; the same logical write again returns its
/// first outcome, and a lookup of its key finds every version; its key
/// reused for other records is refused.
pub async fn multi_record_writes_apply_all_or_nothing<B: Backend + Clone>(
    f: &Fixture<B>,
) -> CaseResult {
    let (client, control) = f.chaos_client()?;
    control.set_replica_lag(client.backend().topology().local(), Duration::from_secs(30));
    let session = client.session();
    let (a, b, c) = (f.key("tx", 0), f.key("tx", 1), f.key("tx", 2));
    let plain = WriteOptions::default();
    let (hundred, zero) = (doc(100), doc(0));
    let opened = client
        .transact(
            &session,
            &[
                TxOp::put(&a, &hundred, Precondition::IfAbsent),
                TxOp::put(&b, &zero, Precondition::IfAbsent),
            ],
            &plain,
        )
        .await
        .map_err(fail("open both"))?;
    let (va, vb) = (opened.version_of(&a), opened.version_of(&b));
    ensure!(
        va.is_some() && vb.is_some() && opened.versions.len() == 2,
        "the write reported {:?}",
        opened.versions
    );
    for (key, version) in [(&a, va), (&b, vb)] {
        for policy in [ReadPolicy::Session, ReadPolicy::Strong] {
            let r = client
                .read(&session, key, policy)
                .await
                .map_err(fail("read own write"))?;
            ensure!(
                r.version() == version,
                "the session's {policy} read of {key} saw {:?}, wrote {version:?}",
                r.version()
            );
        }
    }
    let (seventy, thirty) = (doc(70), doc(30));
    let stale = vb.map(Version::next).unwrap_or(Version(99));
    match client
        .transact(
            &session,
            &[
                TxOp::put(
                    &a,
                    &seventy,
                    Precondition::IfVersion(va.unwrap_or(Version(1))),
                ),
                TxOp::put(&b, &thirty, Precondition::IfVersion(stale)),
            ],
            &plain,
        )
        .await
    {
        Err(Error::Conflict { key, current }) => ensure!(
            key == b && current == vb,
            "the conflict named {key} at {current:?}, not {b} at {vb:?}"
        ),
        other => return Err(format!("a transfer on a stale version gave {other:?}")),
    }
    ensure!(
        strong_versions(f, &[&a, &b]).await? == vec![va, vb],
        "a refused multi-record write applied in part"
    );
    match client
        .transact(
            &session,
            &[
                TxOp::put(
                    &a,
                    &seventy,
                    Precondition::IfVersion(va.unwrap_or(Version(1))),
                ),
                TxOp::check(&c, Precondition::IfVersion(Version(1))),
            ],
            &plain,
        )
        .await
    {
        Err(Error::Conflict { key, current: None }) if key == c => {}
        other => return Err(format!("a failing condition check gave {other:?}")),
    }
    ensure!(
        strong_versions(f, &[&a]).await? == vec![va],
        "a write whose condition check failed applied"
    );
    let idem = IdempotencyKey::new(&format!("{a}-transfer")).map_err(fail("key"))?;
    let once = WriteOptions {
        idempotency_key: Some(idem.clone()),
        ..WriteOptions::default()
    };
    let ops = [
        TxOp::delete(&a, Precondition::IfVersion(va.unwrap_or(Version(1)))),
        TxOp::put(
            &b,
            &thirty,
            Precondition::IfVersion(vb.unwrap_or(Version(1))),
        ),
        TxOp::check(&c, Precondition::IfAbsent),
    ];
    let moved = client
        .transact(&session, &ops, &once)
        .await
        .map_err(fail("delete, put and check"))?;
    ensure!(
        moved.versions.len() == 2 && moved.version_of(&c).is_none(),
        "the write reported {:?}",
        moved.versions
    );
    let again = client
        .transact(&session, &ops, &once)
        .await
        .map_err(fail("the same write again"))?;
    ensure!(
        again.versions == moved.versions,
        "the same logical write applied twice: {:?} then {:?}",
        moved.versions,
        again.versions
    );
    let keys = [a.as_str(), b.as_str(), c.as_str()];
    let found = client
        .backend()
        .lookup_transaction(&moved.region, &keys, &idem)
        .await
        .map_err(fail("lookup"))?;
    ensure!(
        found.as_ref().map(|t| &t.versions) == Some(&moved.versions),
        "its idempotency key holds {found:?}"
    );
    ensure!(
        strong_versions(f, &[&a, &b, &c]).await?
            == vec![moved.version_of(&a), moved.version_of(&b), None],
        "after the write the records are not at its versions"
    );
    let r = client
        .read(&session, &a, ReadPolicy::Session)
        .await
        .map_err(fail("read the deleted record"))?;
    ensure!(
        r.value.is_none() && r.deleted == moved.version_of(&a),
        "the session read its deleted record as {:?} (deleted: {:?})",
        r.version(),
        r.deleted
    );
    match client
        .transact(
            &session,
            &[
                TxOp::put(&c, &zero, Precondition::IfAbsent),
                TxOp::put(&b, &zero, Precondition::Any),
            ],
            &once,
        )
        .await
    {
        Err(Error::IdempotencyKeyReused { .. }) => {}
        other => return Err(format!("a reused key gave {other:?}")),
    }
    ensure!(
        strong_versions(f, &[&c]).await? == vec![None],
        "a write under a reused key applied"
    );
    Ok(())
}

/// A multi-record write whose commit answer is lost is resolved through
/// its idempotency record: it applies once, every record once.
pub async fn multi_record_write_exactly_once_after_ambiguous_commit<B: Backend + Clone>(
    f: &Fixture<B>,
) -> CaseResult {
    let (client, control) = f.chaos_client()?;
    let session = client.session();
    let (a, b) = (f.key("tx-ambiguous", 0), f.key("tx-ambiguous", 1));
    let one = doc(1);
    let first = client
        .transact(
            &session,
            &[
                TxOp::put(&a, &one, Precondition::IfAbsent),
                TxOp::put(&b, &one, Precondition::IfAbsent),
            ],
            &WriteOptions::default(),
        )
        .await
        .map_err(fail("create"))?;
    control.drop_write_responses(1);
    let two = doc(2);
    let ops: Vec<TxOp<'_>> = [&a, &b]
        .iter()
        .map(|k| {
            TxOp::put(
                k,
                &two,
                Precondition::IfVersion(first.version_of(k).unwrap_or(Version(1))),
            )
        })
        .collect();
    let second = client
        .transact(&session, &ops, &WriteOptions::default())
        .await
        .map_err(fail("ambiguous write"))?;
    ensure!(control.injected() >= 1, "no fault was injected");
    for key in [&a, &b] {
        ensure!(
            second.version_of(key) == first.version_of(key).map(Version::next),
            "{key}: {:?} then {:?}: not applied exactly once",
            first.version_of(key),
            second.version_of(key)
        );
    }
    ensure!(
        strong_versions(f, &[&a, &b]).await? == vec![second.version_of(&a), second.version_of(&b)],
        "after the ambiguous write the records are not at its versions"
    );
    Ok(())
}

/// One acknowledged write of the claims case.
#[derive(Clone, Copy, Debug)]
struct Acked {
    version: Version,
    point: crate::Point,
    at: Instant,
}

/// What a read returned, judged against the writes acknowledged before it
/// started: a leader read sees all of them; a stated point covers every
/// write committed at or below it; a stated staleness bound covers every
/// write acknowledged more than the bound before the read began.
fn judge_claims(read: &crate::Read<bytes::Bytes>, started: Instant, acked: &[Acked]) -> CaseResult {
    let seen = read.version();
    let fresh = &read.freshness;
    let missed = |w: &Acked| seen.is_none_or(|v| v < w.version);
    if fresh.role == ReplicaRole::Leader {
        if let Some(w) = acked.iter().rev().find(|w| missed(w)) {
            return Err(format!(
                "a leader read in {} returned {seen:?}, below {} acknowledged before it began ({fresh:?})",
                fresh.region, w.version
            ));
        }
    }
    if let Some(point) = fresh.point {
        if let Some(w) = acked.iter().rev().find(|w| w.point <= point && missed(w)) {
            return Err(format!(
                "a read in {} claims point {point} but returned {seen:?}, missing {} committed at {} ({fresh:?})",
                fresh.region, w.version, w.point
            ));
        }
    }
    if let Some(bound) = fresh.staleness_bound {
        let horizon = started.checked_sub(bound);
        if let Some(w) = acked
            .iter()
            .rev()
            .find(|w| horizon.is_some_and(|h| w.at < h) && missed(w))
        {
            return Err(format!(
                "a read in {} claims to be at most {bound:?} behind but returned {seen:?}, missing {} acknowledged {:?} before it began ({fresh:?})",
                fresh.region,
                w.version,
                started.saturating_duration_since(w.at)
            ));
        }
    }
    Ok(())
}

/// A backend's own freshness claims are true (no wrapper states them):
/// every follower and leader read in every region, while a record is
/// rewritten, returns at least what its stated point and staleness bound
/// promise against the writes acknowledged before it began. When the
/// fixture can hold followers back, the writes happen while they are held,
/// and some follower must then be seen behind (the claims are tested on
/// stale replicas, not only on caught-up ones).
pub async fn follower_freshness_claims_hold<B: Backend + Clone>(f: &Fixture<B>) -> CaseResult {
    let client = f.client()?;
    let session = client.session();
    let backend = client.backend();
    let regions: Vec<crate::Region> = backend.topology().regions().cloned().collect();
    let key = f.key("claims", 0);
    let bounded = ReadPolicy::BoundedStaleness(
        Staleness::new(Duration::from_secs(3600)).map_err(|e| e.to_string())?,
    );
    let mut acked: Vec<Acked> = Vec::new();
    let mut stats = ClaimStats::default();
    let mut expect = Precondition::IfAbsent;
    let write = |n: u32, expect: Precondition| {
        let (client, session, key) = (&client, &session, &key);
        async move {
            let c = client
                .write(session, key, doc(n), expect, &WriteOptions::default())
                .await
                .map_err(fail("write"))?;
            Ok::<_, String>(Acked {
                version: c.version,
                point: c.point,
                at: Instant::now(),
            })
        }
    };
    let first = write(0, expect).await?;
    acked.push(first);
    expect = Precondition::IfVersion(first.version);
    // Followers first catch up with the record, so a held one has it.
    let caught_up = Instant::now() + Duration::from_secs(10);
    while !claims_round(backend, &regions, &key, &acked, bounded, &mut stats).await?
        && Instant::now() < caught_up
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let held = if let Some(hold) = &f.hold_followers {
        for region in &regions {
            hold.set(region, true).await?;
        }
        // What was on its way before the hold may still land.
        tokio::time::sleep(Duration::from_millis(300)).await;
        Some(hold)
    } else {
        None
    };
    let behind_before = stats.behind;
    let outcome = async {
        for n in 1..=3 {
            let w = write(n, expect).await?;
            acked.push(w);
            expect = Precondition::IfVersion(w.version);
            tokio::time::sleep(Duration::from_millis(150)).await;
            claims_round(backend, &regions, &key, &acked, bounded, &mut stats).await?;
        }
        Ok::<_, String>(())
    }
    .await;
    if let Some(hold) = held {
        for region in &regions {
            hold.set(region, false).await?;
        }
    }
    outcome?;
    let held_behind = stats.behind - behind_before;
    let caught_up = Instant::now() + Duration::from_secs(10);
    while !claims_round(backend, &regions, &key, &acked, bounded, &mut stats).await?
        && Instant::now() < caught_up
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ensure!(
        stats.follower_records > 0,
        "no follower read returned the record: the claims were never tested"
    );
    ensure!(
        stats.leader > 0,
        "no read was served as a leader read: the leader rule was never tested"
    );
    ensure!(
        held.is_none() || held_behind > 0,
        "the followers were held, yet every follower read was current ({stats:?})"
    );
    Ok(())
}

/// What the claims case saw.
#[derive(Debug, Default)]
struct ClaimStats {
    /// Follower reads that returned the record.
    follower_records: u32,
    /// Follower reads behind the newest acknowledged write.
    behind: u32,
    /// Reads served as leader reads, judged by the leader rule.
    leader: u32,
}

/// One follower read per region and policy, and one leader read per
/// region, each judged; true when every follower read served was current.
async fn claims_round<B: Backend>(
    backend: &B,
    regions: &[crate::Region],
    key: &str,
    acked: &[Acked],
    bounded: ReadPolicy,
    stats: &mut ClaimStats,
) -> Result<bool, String> {
    let newest = acked.last().map(|w| w.version);
    let mut current = true;
    for region in regions {
        for (role, policy) in [
            (ReplicaRole::Follower, ReadPolicy::Session),
            (ReplicaRole::Follower, bounded),
            (ReplicaRole::Leader, ReadPolicy::Strong),
        ] {
            let started = Instant::now();
            let plan = crate::ReadPlan {
                key,
                region,
                role,
                policy,
                floor: crate::SessionFloor::default(),
                deadline: started + Duration::from_secs(5),
            };
            let read = match backend.read(&plan).await {
                Ok(r) => r,
                // A region may not serve a role, or be briefly unreachable.
                Err(e) if e.retryability() != crate::Retryability::Permanent => continue,
                Err(e) => return Err(format!("{role:?} {policy} read in {region}: {e}")),
            };
            judge_claims(&read, started, acked)?;
            if read.freshness.role == ReplicaRole::Leader {
                stats.leader += 1;
            }
            if read.freshness.role == ReplicaRole::Follower {
                if read.version().is_some() {
                    stats.follower_records += 1;
                }
                if read.version() < newest {
                    stats.behind += 1;
                    current = false;
                }
            }
        }
    }
    Ok(current)
}
