//! An online backup of an embedded store: a consistent copy of its main database (the ledgers,
//! accounts and logs: the durable record), taken while another process may be writing it.
//! The projections are not copied: a store opened read-write rebuilds them from the logs.

use std::path::Path;

use coffer_ledger::store::StoreResult;
use rusqlite::{Connection, OpenFlags};

use crate::conn::{err, main_schema_is_current, BUSY_TIMEOUT};

/// What a backup wrote.
#[derive(Debug)]
pub struct Backup {
    pub bytes: u64,
    pub logs: u64,
}

/// Copies the main database of the store at `path` into a new file `to` (`VACUUM INTO`: one
/// read transaction, so a snapshot of one instant, compacted). Refuses to overwrite `to`.
/// Writes acknowledged before the call are in the copy; later ones may be.
pub fn backup(path: &Path, to: &Path) -> StoreResult<Backup> {
    if !path.exists() {
        return Err(err(format!("no store at {}", path.display())));
    }
    if to.exists() {
        return Err(err(format!(
            "{} already exists: a backup never overwrites a file",
            to.display()
        )));
    }
    let to_text = to
        .to_str()
        .ok_or_else(|| err(format!("{} is not a UTF-8 path", to.display())))?;
    let source = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| err(format!("cannot open {}: {e}", path.display())))?;
    source.busy_timeout(BUSY_TIMEOUT).map_err(err)?;
    if !main_schema_is_current(&source)? {
        return Err(err(
            "the store's schema version differs from this binary's: back it up with the Coffer that wrote it",
        ));
    }
    source
        .execute("VACUUM INTO ?1", [to_text])
        .map_err(|e| err(format!("backing up into {}: {e}", to.display())))?;
    drop(source);
    // The copy is read back whole before it is called a backup.
    let copy = Connection::open_with_flags(to, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|e| err(format!("cannot open the copy {}: {e}", to.display())))?;
    let check: String = copy
        .query_row("PRAGMA integrity_check", [], |row| row.get(0))
        .map_err(err)?;
    if check != "ok" {
        return Err(err(format!(
            "the copy {} fails its integrity check: {check}",
            to.display()
        )));
    }
    let logs: i64 = copy
        .query_row("SELECT COUNT(*) FROM logs", [], |row| row.get(0))
        .map_err(err)?;
    let bytes = std::fs::metadata(to).map_err(err)?.len();
    Ok(Backup {
        bytes,
        logs: logs as u64,
    })
}
