//! Commits made durable after they return, so the writer never waits for the disk.
//!
//! The writer's connection runs with `synchronous=NORMAL`: a commit appends its frames to the
//! WAL and returns, without an fsync (checkpoints still sync the WAL before copying it and the
//! database after, and a WAL is started over only once everything in it is copied and synced).
//! [`WalSync`] then syncs the WAL file for every commit that returned so far, once, for
//! whoever needs it: the engine's sync thread before it answers, the flusher before it writes
//! projections, readers before they return rows. So:
//! - an answered write is durable (its frames were written before the sync started);
//! - a read never returns a write that a power loss could still take back: after its query, a
//!   reader waits until every commit begun so far is synced (it may have seen a commit whose
//!   `COMMIT` had not yet returned, since SQLite makes frames visible before it returns);
//! - projections are never ahead of the durable transactions they are derived from.

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use coffer_ledger::store::{Durability, StoreResult};
use parking_lot::{Condvar, Mutex};

use crate::conn::err;

pub struct WalSync {
    wal_path: PathBuf,
    /// The WAL, opened at the first sync; the lock also makes syncs take turns, so one fsync
    /// serves every caller that waited for it.
    file: Mutex<Option<File>>,
    /// Commits whose `COMMIT` was issued.
    begun: AtomicU64,
    /// Commits whose `COMMIT` returned (their frames are written to the file).
    returned: AtomicU64,
    /// Commits known durable.
    synced: AtomicU64,
    /// Signalled when a commit returns, for readers that saw a commit still returning.
    returning: (Mutex<()>, Condvar),
}

impl WalSync {
    pub fn new(database: &Path) -> WalSync {
        WalSync {
            wal_path: PathBuf::from(format!("{}-wal", database.display())),
            file: Mutex::new(None),
            begun: AtomicU64::new(0),
            returned: AtomicU64::new(0),
            synced: AtomicU64::new(0),
            returning: (Mutex::new(()), Condvar::new()),
        }
    }

    /// The writer, right before `COMMIT`.
    pub fn commit_begins(&self) {
        self.begun.fetch_add(1, Ordering::SeqCst);
    }

    /// The writer, once `COMMIT` returned (succeeded or not).
    pub fn commit_returned(&self) {
        self.returned.fetch_add(1, Ordering::SeqCst);
        let (lock, condvar) = &self.returning;
        let _guard = lock.lock();
        condvar.notify_all();
    }

    /// Commits begun and not yet known durable.
    pub fn unsynced_commits(&self) -> u64 {
        self.begun
            .load(Ordering::SeqCst)
            .saturating_sub(self.synced.load(Ordering::SeqCst))
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
        let mut file = self.file.lock();
        if self.synced.load(Ordering::SeqCst) >= target {
            return Ok(()); // synced by the caller that held the lock before us
        }
        let upto = self.returned.load(Ordering::SeqCst);
        // SQLite deletes the WAL when the last connection closes; a file opened before that
        // would sync nothing of its successor, so check it is still the one at the path.
        let current = std::fs::metadata(&self.wal_path)
            .map_err(|e| err(format!("cannot stat {}: {e}", self.wal_path.display())))?;
        let stale = match file.as_ref() {
            Some(open) => open.metadata().map_err(err)?.ino() != current.ino(),
            None => true,
        };
        if stale {
            let opened = File::open(&self.wal_path)
                .map_err(|e| err(format!("cannot open {}: {e}", self.wal_path.display())))?;
            *file = Some(opened);
        }
        file.as_ref()
            .expect("opened above")
            .sync_data()
            .map_err(|e| err(format!("cannot sync {}: {e}", self.wal_path.display())))?;
        self.synced.fetch_max(upto, Ordering::SeqCst);
        Ok(())
    }
}

impl Durability for WalSync {
    fn sync(&self) -> StoreResult<()> {
        self.sync_to(self.returned.load(Ordering::SeqCst))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    fn wal_sync() -> (tempfile::TempDir, Arc<WalSync>) {
        let dir = tempfile::tempdir().unwrap();
        let database = dir.path().join("coffer.db");
        std::fs::write(dir.path().join("coffer.db-wal"), b"frames").unwrap();
        (dir, Arc::new(WalSync::new(&database)))
    }

    #[test]
    fn a_sync_covers_the_commits_that_returned_before_it() {
        let (_dir, sync) = wal_sync();
        assert_eq!(sync.unsynced_commits(), 0);
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
        sync.commit_returned();
        sync.sync().unwrap();
        assert_eq!(sync.unsynced_commits(), 0);
    }

    #[test]
    fn a_reader_that_may_have_seen_a_returning_commit_waits_for_it() {
        let (_dir, sync) = wal_sync();
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
    }

    #[test]
    fn a_wal_replaced_on_disk_is_reopened() {
        let (dir, sync) = wal_sync();
        sync.commit_begins();
        sync.commit_returned();
        sync.sync().unwrap();
        let wal = dir.path().join("coffer.db-wal");
        std::fs::remove_file(&wal).unwrap();
        std::fs::write(&wal, b"new frames").unwrap();
        sync.commit_begins();
        sync.commit_returned();
        sync.sync().unwrap();
        let file = sync.file.lock();
        let open = file.as_ref().unwrap().metadata().unwrap().ino();
        assert_eq!(open, std::fs::metadata(&wal).unwrap().ino());
    }
}
