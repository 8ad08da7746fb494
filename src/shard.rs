//! Per-thread sharding of state that every request updates.
//!
//! A lock or counter that every request writes moves its cache line between
//! cores on every request. State split into [`SHARDS`] cache-line-aligned
//! parts, each used by the threads that map to it, stays in one core's cache
//! while a runtime's worker threads run requests side by side.

use std::sync::atomic::{AtomicUsize, Ordering};

/// How many shards sharded state has.
pub(crate) const SHARDS: usize = 8;

/// The shard of the calling thread: threads take shards in turn as they
/// first ask, so a runtime's few worker threads get distinct ones.
pub(crate) fn current() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static INDEX: usize = NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS;
    }
    INDEX.with(|i| *i)
}

/// A value alone on its cache lines (crossbeam's `CachePadded`: 128 bytes
/// on x86-64 and aarch64, where CPUs prefetch pairs of lines).
pub(crate) use crossbeam_utils::CachePadded as Padded;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_keeps_its_shard_and_threads_spread() {
        let here = current();
        assert_eq!(here, current());
        assert!(here < SHARDS);
        let others: std::collections::HashSet<usize> = (0..SHARDS)
            .map(|_| std::thread::spawn(current).join().unwrap())
            .collect();
        assert!(others.len() > 1, "threads share one shard: {others:?}");
        assert!(std::mem::align_of::<Padded<u8>>() >= 64);
    }
}
