//! What teams run by default, written against the backend directly: reads
//! from the local replica (or through the local gateway), one sticky region,
//! no freshness checks, no read-after-write check, no clock guard, and blind
//! retries without idempotency keys.

use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use crate::backend::{Backend, ReadPlan, WriteRequest};
use crate::error::Error;
use crate::policy::ReadPolicy;
use crate::record::{Committed, Precondition, Read, ReplicaRole};
use crate::session::SessionFloor;
use crate::sim::Sim;
use crate::topology::Region;

/// How the naive client reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NaiveReads {
    /// From the nearest replica, whatever the policy asked (the "prefer
    /// local replica" default).
    LocalReplica,
    /// Through the local gateway's leader path, trusting its clock.
    LocalGateway,
}

/// A client pinned to one region with no consistency checks, over any
/// backend (the simulator, a chaos-wrapped one, a real database's
/// adapter).
#[derive(Clone, Debug)]
pub struct NaiveClient<B = Sim> {
    backend: B,
    region: Region,
    reads: NaiveReads,
    attempts: u32,
    timeout: Duration,
}

impl<B: Backend> NaiveClient<B> {
    /// A client in `backend`'s local region that always uses it.
    pub fn new(backend: B, reads: NaiveReads) -> NaiveClient<B> {
        NaiveClient {
            region: backend.topology().local().clone(),
            backend,
            reads,
            attempts: 3,
            timeout: Duration::from_secs(2),
        }
    }

    /// The region every request goes to.
    pub fn region(&self) -> &Region {
        &self.region
    }

    /// Reads `key` where this client always reads; retries the same region.
    pub async fn read(&self, key: &str) -> Result<Read<Bytes>, Error> {
        let mut last = None;
        for _ in 0..self.attempts {
            let plan = ReadPlan {
                key,
                region: &self.region,
                role: match self.reads {
                    NaiveReads::LocalReplica => ReplicaRole::Follower,
                    NaiveReads::LocalGateway => ReplicaRole::Leader,
                },
                policy: ReadPolicy::Strong,
                floor: SessionFloor::default(),
                deadline: Instant::now() + self.timeout,
            };
            match tokio::time::timeout(self.timeout, self.backend.read(&plan)).await {
                Ok(Ok(read)) => return Ok(read),
                Ok(Err(e)) => last = Some(e),
                Err(_) => {
                    last = Some(Error::Timeout {
                        after: self.timeout,
                        sent: true,
                    })
                }
            }
        }
        Err(last.unwrap_or(Error::Timeout {
            after: self.timeout,
            sent: true,
        }))
    }

    /// Writes through the sticky region; on any error, including an
    /// ambiguous one, re-executes the write as if it had not happened.
    pub async fn write(
        &self,
        key: &str,
        value: Bytes,
        precondition: Precondition,
    ) -> Result<Committed, Error> {
        self.mutate(key, crate::Mutation::Put(&value), precondition)
            .await
    }

    /// Deletes through the sticky region, retrying as blindly as
    /// [`NaiveClient::write`].
    pub async fn delete(&self, key: &str, precondition: Precondition) -> Result<Committed, Error> {
        self.mutate(key, crate::Mutation::Delete, precondition)
            .await
    }

    /// A multi-record write through the sticky region, retried as blindly
    /// as [`NaiveClient::write`] (no idempotency key: a retry after a lost
    /// answer applies it again).
    pub async fn transact(&self, ops: &[crate::TxOp<'_>]) -> Result<crate::Transacted, Error> {
        let mut last = None;
        for _ in 0..self.attempts {
            let request = crate::TransactRequest {
                ops,
                idempotency_key: None,
                region: &self.region,
                deadline: Instant::now() + self.timeout,
            };
            match tokio::time::timeout(self.timeout, self.backend.transact(&request)).await {
                Ok(Ok(t)) => return Ok(t),
                Ok(Err(e @ Error::Conflict { .. })) => return Err(e),
                Ok(Err(e)) => last = Some(e),
                Err(_) => {
                    last = Some(Error::Timeout {
                        after: self.timeout,
                        sent: true,
                    })
                }
            }
        }
        Err(last.map_or_else(
            || Error::InvalidInput("no attempt".into()),
            |e| Error::backend(crate::Retryability::Permanent, None, e.to_string()),
        ))
    }

    async fn mutate(
        &self,
        key: &str,
        mutation: crate::Mutation<'_>,
        precondition: Precondition,
    ) -> Result<Committed, Error> {
        let mut last = None;
        for _ in 0..self.attempts {
            let request = WriteRequest {
                key,
                mutation,
                precondition,
                idempotency_key: None,
                region: &self.region,
                deadline: Instant::now() + self.timeout,
            };
            match tokio::time::timeout(self.timeout, self.backend.write(&request)).await {
                Ok(Ok(c)) => return Ok(c),
                Ok(Err(e @ Error::Conflict { .. })) => return Err(e),
                Ok(Err(e)) => last = Some(e),
                Err(_) => {
                    last = Some(Error::Timeout {
                        after: self.timeout,
                        sent: true,
                    })
                }
            }
        }
        // The naive client reports every exhausted write as failed, whatever
        // actually happened.
        Err(last.map_or_else(
            || Error::InvalidInput("no attempt".into()),
            |e| Error::backend(crate::Retryability::Permanent, None, e.to_string()),
        ))
    }
}
