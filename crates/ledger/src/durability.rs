//! Commits made durable after they return, so that the writer never waits for the disk.
//!
//! A store whose commits return before they are durable (SQLite with `synchronous=NORMAL`,
//! PostgreSQL with `synchronous_commit=off`) counts them in a [`CommitSync`] and gives it a
//! `flush` that makes every commit returned so far durable (an `fdatasync` of the WAL, a
//! synchronous commit). One flush then serves every caller waiting for it:
//! - the engine's sync thread before it answers (so an answered write is durable);
//! - readers after their query (so no read shows a write that a crash could take back; a
//!   reader may have seen a commit whose call had not returned yet, so it waits for every
//!   commit begun);
//! - whatever derives data from commits (the SQLite projections) before it writes.
//!
//! A store may ask for an early flush ([`CommitSync::early`]): a commit that returns then
//! signals [`Durability::returned_signal`], and the engine's sync thread starts the flush while
//! the writer still does its bookkeeping after the commit, rather than once the commit's answers
//! reach it (SQLite: +8 % transfers/s; PostgreSQL, whose flush then competes with the writer's
//! next statement: slower, so it does not ask; BENCHMARKS.md).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender};

use parking_lot::{Condvar, Mutex};

use crate::store::{Durability, StoreResult};

type Flush = Box<dyn FnMut() -> StoreResult<()> + Send>;

pub struct CommitSync {
    /// Makes every commit that returned before the call durable. The lock makes flushes
    /// take turns: callers that waited for it find their commits covered.
    flush: Mutex<Flush>,
    /// Commits whose commit call was issued.
    begun: AtomicU64,
    /// Commits whose commit call returned (succeeded or not).
    returned: AtomicU64,
    /// Commits known durable.
    synced: AtomicU64,
    /// Signalled when a commit returns, for readers that saw a commit still returning.
    returning: (Mutex<()>, Condvar),
    /// With an early flush: one pending signal at most (a flush covers every commit returned
    /// before it).
    returned_signal: Option<(Sender<()>, Receiver<()>)>,
}

impl CommitSync {
    pub fn new(flush: impl FnMut() -> StoreResult<()> + Send + 'static) -> CommitSync {
        CommitSync {
            flush: Mutex::new(Box::new(flush)),
            begun: AtomicU64::new(0),
            returned: AtomicU64::new(0),
            synced: AtomicU64::new(0),
            returning: (Mutex::new(()), Condvar::new()),
            returned_signal: None,
        }
    }

    /// The engine's sync thread flushes as soon as a commit returns.
    pub fn early(mut self) -> CommitSync {
        self.returned_signal = Some(crossbeam_channel::bounded(1));
        self
    }

    /// The writer, right before its commit call.
    pub fn commit_begins(&self) {
        self.begun.fetch_add(1, Ordering::SeqCst);
    }

    /// The writer, once its commit call returned (succeeded or not).
    pub fn commit_returned(&self) {
        let returned = self.returned.fetch_add(1, Ordering::SeqCst) + 1;
        // One more would let a sync count a commit under way as covered.
        assert!(
            returned <= self.begun.load(Ordering::SeqCst),
            "a commit returned that had not begun"
        );
        {
            let (lock, condvar) = &self.returning;
            let _guard = lock.lock();
            condvar.notify_all();
        }
        if let Some((signal, _)) = &self.returned_signal {
            // Full means a signal is pending already, which covers this commit too.
            let _ = signal.try_send(());
        }
    }

    /// After a read: waits until every commit it may have seen is durable.
    pub fn reader_barrier(&self) -> StoreResult<()> {
        self.sync_to(self.begun.load(Ordering::SeqCst))
    }

    /// Returns once commits `1..=target` are durable.
    fn sync_to(&self, target: u64) -> StoreResult<()> {
        if self.synced.load(Ordering::SeqCst) >= target {
            return Ok(());
        }
        if self.returned.load(Ordering::SeqCst) < target {
            let (lock, condvar) = &self.returning;
            let mut guard = lock.lock();
            while self.returned.load(Ordering::SeqCst) < target {
                condvar.wait(&mut guard);
            }
        }
        let mut flush = self.flush.lock();
        if self.synced.load(Ordering::SeqCst) >= target {
            return Ok(()); // flushed by the caller that held the lock before us
        }
        let upto = self.returned.load(Ordering::SeqCst);
        let started = Instant::now();
        (*flush)()?;
        metrics::histogram!("coffer_sync_seconds").record(started.elapsed().as_secs_f64());
        self.synced.fetch_max(upto, Ordering::SeqCst);
        Ok(())
    }
}

impl Durability for CommitSync {
    fn sync(&self) -> StoreResult<()> {
        self.sync_to(self.returned.load(Ordering::SeqCst))
    }

    fn unsynced_commits(&self) -> u64 {
        self.begun
            .load(Ordering::SeqCst)
            .saturating_sub(self.synced.load(Ordering::SeqCst))
    }

    fn returned_signal(&self) -> Option<Receiver<()>> {
        self.returned_signal
            .as_ref()
            .map(|(_, receiver)| receiver.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    fn counting() -> (Arc<AtomicU64>, Arc<CommitSync>) {
        let flushes = Arc::new(AtomicU64::new(0));
        let counter = flushes.clone();
        let sync = CommitSync::new(move || {
            counter.fetch_add(1, Ordering::SeqCst);
            Ok(())
        });
        (flushes, Arc::new(sync))
    }

    #[test]
    fn a_sync_covers_the_commits_that_returned_before_it() {
        let (flushes, sync) = counting();
        sync.sync().unwrap();
        assert_eq!(flushes.load(Ordering::SeqCst), 0, "nothing to flush");
        sync.commit_begins();
        sync.commit_returned();
        sync.commit_begins();
        assert_eq!(sync.unsynced_commits(), 2);
        sync.sync().unwrap();
        assert_eq!(
            sync.unsynced_commits(),
            1,
            "the second commit had not returned"
        );
        sync.sync().unwrap();
        assert_eq!(flushes.load(Ordering::SeqCst), 1, "no new commit returned");
        sync.commit_returned();
        sync.sync().unwrap();
        assert_eq!(sync.unsynced_commits(), 0);
        assert_eq!(flushes.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn a_reader_that_may_have_seen_a_returning_commit_waits_for_it() {
        let (flushes, sync) = counting();
        sync.commit_begins();
        let reader = {
            let sync = sync.clone();
            std::thread::spawn(move || sync.reader_barrier())
        };
        std::thread::sleep(Duration::from_millis(50));
        assert!(!reader.is_finished(), "the commit has not returned yet");
        sync.commit_returned();
        reader.join().unwrap().unwrap();
        assert_eq!(sync.unsynced_commits(), 0);
        assert_eq!(flushes.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn only_an_early_sync_signals_returned_commits() {
        let (_, plain) = counting();
        assert!(plain.returned_signal().is_none());
        let early = CommitSync::new(|| Ok(())).early();
        let signal = early.returned_signal().expect("early");
        assert!(signal.try_recv().is_err(), "nothing returned yet");
        for _ in 0..3 {
            early.commit_begins();
            early.commit_returned();
        }
        assert!(signal.try_recv().is_ok());
        assert!(
            signal.try_recv().is_err(),
            "returns before a flush share one signal"
        );
    }

    #[test]
    fn a_failed_flush_syncs_nothing() {
        let sync = CommitSync::new(|| Err(crate::error::StoreError::new("disk on fire")));
        sync.commit_begins();
        sync.commit_returned();
        assert!(sync.sync().is_err());
        assert!(sync.reader_barrier().is_err());
        assert_eq!(sync.unsynced_commits(), 1);
    }
}
