//! What the client learns of regions: probes, clock offsets, circuits.

use super::*;

/// What a client knows of one region.
#[derive(Clone, Debug, PartialEq)]
pub struct RegionHealth {
    /// The region.
    pub region: Region,
    /// Its circuit breaker.
    pub circuit: Circuit,
    /// Smoothed latency of successful attempts and probes.
    pub latency: Option<Duration>,
    /// Replica lag it last reported.
    pub replica_lag: Option<Duration>,
    /// How far its clock strays from the median of all regions (with the
    /// estimate's error), once probed.
    pub clock_deviation: Option<Duration>,
    /// Whether the clock guard keeps it from assigning timestamps.
    pub clock_excluded: bool,
}

impl<B: Backend> Client<B> {
    /// Probes a region: the server's clock and replica lag, and this
    /// process's estimate of the offset between the two clocks. The estimate
    /// feeds the clock guard; a region that does not answer is ejected.
    pub async fn probe(&self, region: &Region) -> Result<crate::clock::OffsetSample, Error> {
        let inner = &*self.inner;
        inner.guard.probing();
        let index = inner
            .router
            .index_of(region)
            .ok_or_else(|| Error::Topology(crate::TopologyError::UnknownRegion(region.clone())))?;
        let sent_at = Instant::now();
        let deadline = sent_at + inner.config.attempt_timeout;
        let probe = match inner
            .deadlines
            .run(deadline, inner.backend.probe(region))
            .await
        {
            Some(Ok(p)) => p,
            Some(Err(e)) => {
                self.probe_failed(index, region, e.reason());
                return Err(e);
            }
            None => {
                self.probe_failed(index, region, "timeout");
                return Err(Error::Timeout {
                    after: inner.config.attempt_timeout,
                    sent: true,
                });
            }
        };
        let received = inner.config.clock.now_nanos();
        let rtt = Instant::now() - sent_at;
        inner.router.success(index, Kind::FollowerRead, rtt);
        // Timed on the monotonic clock and placed in the frame the answer
        // came in: a step of this process's clock while the probe was out
        // does not skew the sample.
        let sample = crate::clock::OffsetSample::timed(probe.server_time_nanos, received, rtt);
        let was_excluded = inner.guard.excluded(index);
        let deviation = inner.guard.record(index, &sample, received);
        inner
            .metrics
            .clock_offset(index, sample.offset_nanos as f64 / 1e9);
        inner
            .metrics
            .clock_deviation(index, deviation.as_secs_f64());
        if deviation > inner.guard.warning() {
            tracing::warn!(
                quorate.region = region.as_str(),
                deviation_ms = deviation.as_millis() as u64,
                "clock offset above the warning threshold"
            );
        }
        if !was_excluded && inner.guard.excluded(index) {
            inner.metrics.ejection(region, "clock_offset");
        }
        if let Some(lag) = probe.replica_lag {
            inner.router.set_replica_lag(index, lag);
            inner.metrics.replica_lag(index, lag.as_secs_f64());
        }
        Ok(sample)
    }

    fn probe_failed(&self, index: usize, region: &Region, reason: &'static str) {
        // Its clock is unknown now, not what it was when last seen.
        self.inner.guard.forget(index);
        if self.inner.router.failure(index, true) {
            self.inner.metrics.ejection(region, reason);
        }
    }

    /// Probes every region once, concurrently: clock offsets and replica lag
    /// feed the clock guard and the metrics, and unreachable regions are
    /// ejected. It returns when the slowest probe has answered or timed out;
    /// [`Client::health_checks`] probes each region on its own schedule
    /// instead, so that one unreachable region delays no other's probes.
    pub async fn refresh_health(&self) {
        let regions: Vec<Region> = self.inner.backend.topology().regions().cloned().collect();
        let probes = regions.iter().map(|r| self.probe(r));
        for result in join_all(probes).await {
            if let Err(e) = result {
                tracing::debug!(error = %e, "probe failed");
            }
        }
    }

    /// Probes every region every `period`, each on its own schedule: a
    /// region that does not answer delays only its own next probe. Runs
    /// until dropped; spawn it, or select it against a shutdown signal.
    /// Clock samples count for [`ClientConfig::clock_sample_ttl`], so the
    /// period must be positive and shorter: any other period returns
    /// [`Error::InvalidInput`] at once.
    ///
    /// ```
    /// use std::time::Duration;
    /// use quorate::sim::{Sim, SimConfig};
    /// use quorate::{Client, ClientConfig};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), quorate::Error> {
    /// let sim = Sim::new(SimConfig::new(["eu", "us"])?)?;
    /// let client = Client::new(sim.at("eu")?, ClientConfig::default())?;
    /// let checks = tokio::spawn({
    ///     let client = client.clone();
    ///     async move { client.health_checks(Duration::from_millis(500)).await }
    /// });
    /// tokio::time::sleep(Duration::from_secs(2)).await;
    /// assert!(client.health().iter().all(|h| h.clock_deviation.is_some()));
    /// checks.abort();
    /// assert!(client.health_checks(Duration::ZERO).await.is_err());
    /// # Ok(()) }
    /// ```
    pub async fn health_checks(&self, period: Duration) -> Result<(), Error> {
        if period.is_zero() || period >= self.inner.config.clock_sample_ttl {
            return Err(Error::InvalidInput(format!(
                "health check period must be positive and below clock_sample_ttl ({:?}), got {period:?}",
                self.inner.config.clock_sample_ttl
            )));
        }
        let regions: Vec<Region> = self.inner.backend.topology().regions().cloned().collect();
        let loops = regions.iter().map(|region| async move {
            loop {
                let next = Instant::now() + period;
                if let Err(e) = self.probe(region).await {
                    tracing::debug!(quorate.region = region.as_str(), error = %e, "probe failed");
                }
                tokio::time::sleep_until(next).await;
            }
        });
        join_all(loops).await;
        Ok(())
    }

    /// What the client knows of each region now: circuit, latency estimate,
    /// replica lag and clock deviation.
    pub fn health(&self) -> Vec<RegionHealth> {
        let inner = &*self.inner;
        (0..inner.router.len())
            .map(|i| {
                let (circuit, latency, replica_lag) = inner.router.status(i);
                RegionHealth {
                    region: inner.router.region(i).clone(),
                    circuit,
                    latency,
                    replica_lag,
                    clock_deviation: inner.guard.deviation(i),
                    clock_excluded: inner.guard.excluded(i),
                }
            })
            .collect()
    }

    /// Whether the clock guard currently excludes `region`.
    pub fn clock_excluded(&self, region: &Region) -> bool {
        self.inner
            .router
            .index_of(region)
            .is_some_and(|i| self.inner.guard.excluded(i))
    }
}

/// Runs futures concurrently on the current task and collects their outputs
/// in order.
pub(crate) async fn join_all<F: std::future::Future>(
    futures: impl IntoIterator<Item = F>,
) -> Vec<F::Output> {
    let mut pending: Vec<_> = futures.into_iter().map(|f| Some(Box::pin(f))).collect();
    let mut out: Vec<Option<F::Output>> = pending.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut done = true;
        for (slot, result) in pending.iter_mut().zip(out.iter_mut()) {
            if let Some(f) = slot {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => {
                        *result = Some(v);
                        *slot = None;
                    }
                    std::task::Poll::Pending => done = false,
                }
            }
        }
        if done {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
    out.into_iter().flatten().collect()
}
