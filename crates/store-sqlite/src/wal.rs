//! Keeps each WAL bounded without pausing commits for long.
//!
//! A PASSIVE checkpoint never blocks a writer, but under steady commits it never reaches the end
//! of the WAL either, and SQLite starts a WAL over only when a write transaction begins with
//! every frame copied back. So a background thread copies frames often (`Checkpointer`), and the
//! file's only writer, once its WAL holds more than `WAL_FRAMES_CATCH_UP` frames, checkpoints
//! the few frames left between two of its transactions (`WalCatchUp::run`): its next
//! transaction then starts the WAL over. A RESTART checkpoint would instead hold off every
//! commit while it waits and copies (pauses of 0.2–3 s were measured).
//!
//! The writer's catch-up is on the path of every request waiting for it, so it runs only when
//! the checkpointer has just copied nearly everything (`CATCH_UP_FRAMES_LEFT_MAX`); past
//! `WAL_FRAMES_CATCH_UP` the checkpointer copies at each of its polls to make that so. Before,
//! the writer copied whatever was left (up to a quarter of a second of commits): batches of
//! 4–11 ms, about 80 in 10 s at 65,000 transfers/s; now 4–6 ms, nearly all of it the two syncs.

use std::os::raw::c_int;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use coffer_ledger::store::StoreResult;
use parking_lot::{Condvar, Mutex};
use rusqlite::Connection;

use crate::conn::{err, open_main, READ_CACHE_KIB};

/// Frames past which a writer checkpoints between its transactions. (16,384 made the catch-ups
/// four times rarer and `coffer bench`'s p99 lower, but the HTTP transfers' p99 higher:
/// BENCHMARKS.md.)
pub const WAL_FRAMES_CATCH_UP: u64 = 4096;
/// Frames past which the writer waits for a background checkpoint in progress rather than
/// trying again after its next transaction: the WAL's hard bound, short of readers holding old
/// snapshots.
pub const WAL_FRAMES_MAX: u64 = 2 * WAL_FRAMES_CATCH_UP;
/// The writer catches up only when at most this many frames are left to copy (unless its WAL
/// is past `WAL_FRAMES_MAX`): what it then costs is mostly its two syncs.
pub const CATCH_UP_FRAMES_LEFT_MAX: u64 = 512;
/// How often the checkpointer looks at the WALs.
pub const CHECKPOINT_POLL_MS: u64 = 50;
/// The checkpointer copies every `CHECKPOINT_INTERVAL_MS`, and when a WAL comes within this
/// many frames of `WAL_FRAMES_CATCH_UP` (once this many frames were added since its last copy).
pub const CHECKPOINT_FRAMES_MIN: u64 = 1024;
pub const CHECKPOINT_INTERVAL_MS: u64 = 250;
/// The `nice` value of the background threads (Linux: per thread).
pub const BACKGROUND_NICE: i32 = 5;

/// What a database file's writer and the checkpointer share.
#[derive(Default)]
pub struct WalWatch {
    /// Frames in the WAL after the writer's last commit (from SQLite's WAL hook).
    frames: AtomicU64,
    /// Frames of the current WAL copied back by the last checkpoint (0 once the WAL started
    /// over): what a catch-up would leave to copy is `frames - copied`.
    copied: AtomicU64,
    /// Times the WAL started over (seen by the hook: its frame count fell).
    restarts: AtomicU64,
    /// Held while checkpointing, so that the writer can wait for the checkpointer's copy.
    checkpoint: Mutex<()>,
}

impl WalWatch {
    /// Registers the hook that tells `frames` on `conn`, the file's only writer.
    pub fn watch(self: &Arc<Self>, conn: &mut Connection) -> StoreResult<WalCatchUp> {
        let watch = self.clone();
        conn.wal_hook(Some(move |_: &mut rusqlite::hooks::Wal, pages: c_int| {
            let frames = pages.max(0) as u64;
            if frames < watch.frames.swap(frames, Ordering::Relaxed) {
                watch.restarts.fetch_add(1, Ordering::Relaxed);
                watch.copied.store(0, Ordering::Relaxed);
            }
            Ok(())
        }))
        .map_err(err)?;
        Ok(WalCatchUp {
            watch: self.clone(),
            next_try_frames: WAL_FRAMES_CATCH_UP,
        })
    }

    fn frames(&self) -> u64 {
        self.frames.load(Ordering::Relaxed)
    }

    /// Frames a catch-up would copy now.
    fn frames_left(&self) -> u64 {
        self.frames()
            .saturating_sub(self.copied.load(Ordering::Relaxed))
    }

    /// A PASSIVE checkpoint of `schema` on `conn`, the caller holding `checkpoint`; records how
    /// far it copied unless the WAL started over meanwhile (the count would be the old WAL's).
    fn checkpoint_passive(&self, conn: &Connection, schema: &str) -> StoreResult<WalState> {
        let restarts = self.restarts.load(Ordering::Relaxed);
        let wal = checkpoint_passive(conn, schema)?;
        if self.restarts.load(Ordering::Relaxed) == restarts {
            self.copied.store(wal.checkpointed, Ordering::Relaxed);
        }
        Ok(wal)
    }
}

/// The writer's side of a [`WalWatch`].
pub struct WalCatchUp {
    watch: Arc<WalWatch>,
    /// Past a catch-up that could not copy everything (readers on old snapshots), the next try
    /// waits for more frames rather than costing every transaction a checkpoint.
    next_try_frames: u64,
}

impl WalCatchUp {
    /// Between two of the writer's transactions, on its connection; `schema` names the file.
    pub fn run(&mut self, conn: &Connection, schema: &str) {
        let frames = self.watch.frames();
        if frames < WAL_FRAMES_CATCH_UP {
            self.next_try_frames = WAL_FRAMES_CATCH_UP;
            return;
        }
        if frames < self.next_try_frames {
            return;
        }
        let started = Instant::now();
        // Below the hard bound, a checkpoint in progress, or more than a few frames left to
        // copy, means: try after the next transaction (the checkpointer is copying them).
        let _guard = if frames > WAL_FRAMES_MAX {
            Some(self.watch.checkpoint.lock())
        } else if self.watch.frames_left() <= CATCH_UP_FRAMES_LEFT_MAX {
            self.watch.checkpoint.try_lock()
        } else {
            None
        };
        if _guard.is_none() {
            return;
        }
        match self.watch.checkpoint_passive(conn, schema) {
            Ok(wal) if !wal.busy && wal.checkpointed == wal.frames => {
                self.next_try_frames = WAL_FRAMES_CATCH_UP;
                metrics::histogram!("coffer_wal_catch_up_seconds")
                    .record(started.elapsed().as_secs_f64());
            }
            Ok(_) => self.next_try_frames = frames + WAL_FRAMES_CATCH_UP / 4,
            Err(error) => {
                self.next_try_frames = frames + WAL_FRAMES_CATCH_UP / 4;
                tracing::warn!(error = %error, schema, "checkpoint failed");
            }
        }
    }
}

struct WalState {
    /// Another checkpoint was running.
    pub busy: bool,
    pub frames: u64,
    pub checkpointed: u64,
}

/// A PASSIVE checkpoint of `schema`: never waits for readers or writers.
fn checkpoint_passive(conn: &Connection, schema: &str) -> StoreResult<WalState> {
    conn.query_row(
        &format!("PRAGMA {schema}.wal_checkpoint(PASSIVE)"),
        [],
        |row| {
            Ok(WalState {
                busy: row.get::<_, i64>(0)? != 0,
                frames: row.get::<_, i64>(1)?.max(0) as u64,
                checkpointed: row.get::<_, i64>(2)?.max(0) as u64,
            })
        },
    )
    .map_err(err)
}

/// Lowers the calling thread's scheduling priority: background work (checkpoints, projections)
/// yields the CPU to the threads that answer requests.
pub(crate) fn lower_thread_priority() {
    // SAFETY: plain syscalls on the calling thread; no memory is shared.
    let done = unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, BACKGROUND_NICE)
    };
    if done != 0 {
        tracing::debug!("cannot lower a background thread's priority");
    }
}

/// Copies both WALs back into their database files on its own thread.
pub(crate) struct Checkpointer {
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Checkpointer {
    pub fn start(
        path: &Path,
        main: Arc<WalWatch>,
        projections: Arc<WalWatch>,
    ) -> StoreResult<Checkpointer> {
        let conn = open_main(path, READ_CACHE_KIB)?;
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let signal = stop.clone();
        let thread = std::thread::Builder::new()
            .name("coffer-checkpoint".into())
            .spawn(move || {
                lower_thread_priority();
                let files = [("main", main), ("projections", projections)];
                let mut last = [(0u64, Instant::now()); 2];
                let (lock, condvar) = &*signal;
                let mut stopped = lock.lock();
                while !*stopped {
                    condvar.wait_for(&mut stopped, Duration::from_millis(CHECKPOINT_POLL_MS));
                    for ((schema, watch), (frames_then, at)) in files.iter().zip(last.iter_mut()) {
                        let frames = watch.frames();
                        if frames < *frames_then {
                            *frames_then = 0; // the WAL started over
                        }
                        // Copy ahead of the writer's catch-up, so that it finds little left;
                        // past its threshold, at every poll until it has caught up.
                        let grown = frames >= WAL_FRAMES_CATCH_UP - CHECKPOINT_FRAMES_MIN
                            && frames - *frames_then >= CHECKPOINT_FRAMES_MIN;
                        let catching_up = frames >= WAL_FRAMES_CATCH_UP
                            && watch.frames_left() > CATCH_UP_FRAMES_LEFT_MAX;
                        let due = at.elapsed() >= Duration::from_millis(CHECKPOINT_INTERVAL_MS);
                        if !grown && !catching_up && !due {
                            continue;
                        }
                        let _guard = watch.checkpoint.lock();
                        if let Err(error) = watch.checkpoint_passive(&conn, schema) {
                            tracing::warn!(error = %error, schema, "checkpoint failed");
                        }
                        *frames_then = watch.frames();
                        *at = Instant::now();
                    }
                }
            })
            .map_err(|e| err(format!("cannot start the checkpoint thread: {e}")))?;
        Ok(Checkpointer {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        let (lock, condvar) = &*self.stop;
        *lock.lock() = true;
        condvar.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wal_connection(path: &Path) -> Connection {
        let conn = Connection::open(path).unwrap();
        let mode: String = conn
            .query_row("PRAGMA journal_mode=WAL", [], |row| row.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        conn.execute_batch("PRAGMA wal_autocheckpoint=0; PRAGMA synchronous=NORMAL")
            .unwrap();
        conn
    }

    /// One transaction of `rows` rows, one page each.
    fn write(conn: &Connection, rows: usize) {
        conn.execute_batch("BEGIN IMMEDIATE").unwrap();
        for _ in 0..rows {
            conn.execute("INSERT INTO t (v) VALUES (zeroblob(4000))", [])
                .unwrap();
        }
        conn.execute_batch("COMMIT").unwrap();
    }

    /// The writer leaves a catch-up with many frames to copy to the checkpointer, and catches
    /// up (its next transaction starting the WAL over) once only a few are left.
    #[test]
    fn the_writer_catches_up_only_with_few_frames_left() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let mut writer = wal_connection(&path);
        writer
            .execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB)")
            .unwrap();
        let watch = Arc::new(WalWatch::default());
        let mut catch_up = watch.watch(&mut writer).unwrap();
        let mut written = 0;
        while watch.frames() < WAL_FRAMES_CATCH_UP {
            write(&writer, 256);
            written += 256;
        }
        assert!(watch.frames_left() > CATCH_UP_FRAMES_LEFT_MAX);

        // Nothing copied yet: the writer leaves it, and the WAL goes on growing.
        catch_up.run(&writer, "main");
        let before = watch.frames();
        write(&writer, 1);
        written += 1;
        assert!(watch.frames() > before, "the WAL started over");
        assert_eq!(watch.restarts.load(Ordering::Relaxed), 0);

        // The checkpointer copies everything; the writer then commits a little more.
        let checkpointer = wal_connection(&path);
        let copied = watch.checkpoint_passive(&checkpointer, "main").unwrap();
        assert_eq!(copied.checkpointed, copied.frames);
        write(&writer, 4);
        written += 4;
        assert!(watch.frames_left() <= CATCH_UP_FRAMES_LEFT_MAX);

        // The writer copies the rest; its next transaction starts the WAL over.
        catch_up.run(&writer, "main");
        write(&writer, 1);
        written += 1;
        assert_eq!(watch.restarts.load(Ordering::Relaxed), 1);
        assert!(
            watch.frames() < 64,
            "{} frames after the restart",
            watch.frames()
        );
        assert_eq!(
            watch.frames_left(),
            watch.frames(),
            "copied counts the old WAL"
        );
        let rows: i64 = writer
            .query_row("SELECT count(*) FROM t", [], |row| row.get(0))
            .unwrap();
        assert_eq!(rows, written, "rows lost across the restart");
    }
}
