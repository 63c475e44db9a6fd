//! Makes the writer's commits durable after they return (see `coffer_ledger::durability`).
//!
//! The writer's connection runs with `synchronous=NORMAL`: a commit appends its frames to the
//! WAL and returns without an fsync. Checkpoints still sync the WAL before copying it and the
//! database after, and a WAL is started over only once everything in it is copied and synced,
//! so one `fdatasync` of the WAL makes every commit that returned before it durable.

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use coffer_ledger::durability::CommitSync;
use coffer_ledger::store::StoreResult;

use crate::conn::err;

/// The commit sync of the database file at `database`.
pub fn wal_sync(database: &Path) -> CommitSync {
    let mut wal = WalFile {
        path: PathBuf::from(format!("{}-wal", database.display())),
        file: None,
    };
    // Early: the sync overlaps the writer's work after its commit (BENCHMARKS.md).
    CommitSync::new(move || wal.sync()).early()
}

struct WalFile {
    path: PathBuf,
    file: Option<File>,
}

impl WalFile {
    fn sync(&mut self) -> StoreResult<()> {
        // SQLite deletes the WAL when the last connection closes; a file opened before that
        // would sync nothing of its successor, so check it is still the one at the path.
        let current = std::fs::metadata(&self.path)
            .map_err(|e| err(format!("cannot stat {}: {e}", self.path.display())))?;
        let stale = match &self.file {
            Some(open) => open.metadata().map_err(err)?.ino() != current.ino(),
            None => true,
        };
        if stale {
            let opened = File::open(&self.path)
                .map_err(|e| err(format!("cannot open {}: {e}", self.path.display())))?;
            self.file = Some(opened);
        }
        let file = self.file.as_ref().expect("opened above");
        if let Err(e) = file.sync_data() {
            // After a failed fsync the kernel may have dropped the unwritten pages and will
            // report the next fsync as a success: nothing can be trusted, the process must
            // stop (the WAL on disk is the truth at the next start).
            eprintln!("fatal: cannot sync {}: {e}; exiting", self.path.display());
            std::process::abort();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use coffer_ledger::store::Durability;

    #[test]
    fn a_wal_replaced_on_disk_is_reopened() {
        let dir = tempfile::tempdir().unwrap();
        let wal = dir.path().join("coffer.db-wal");
        std::fs::write(&wal, b"frames").unwrap();
        let mut file = WalFile {
            path: wal.clone(),
            file: None,
        };
        file.sync().unwrap();
        std::fs::remove_file(&wal).unwrap();
        std::fs::write(&wal, b"new frames").unwrap();
        file.sync().unwrap();
        let open = file.file.as_ref().unwrap().metadata().unwrap().ino();
        assert_eq!(open, std::fs::metadata(&wal).unwrap().ino());
        // And through the commit sync: a missing WAL is an error, not a silent success.
        std::fs::remove_file(&wal).unwrap();
        let sync = wal_sync(&dir.path().join("coffer.db"));
        sync.commit_begins();
        sync.commit_returned();
        assert!(sync.sync().is_err());
    }
}
