//! Keeps each WAL bounded without pausing commits for long.
//!
//! A PASSIVE checkpoint never blocks a writer, but under steady commits it never reaches the end
//! of the WAL either, and SQLite starts a WAL over only when a write transaction begins with
//! every frame copied back. So a background thread copies frames often (`Checkpointer`), and the
//! file's only writer, once its WAL holds more than `WAL_FRAMES_CATCH_UP` frames, checkpoints
//! the few frames left between two of its transactions (`WalCatchUp::run`): its next
//! transaction then starts the WAL over. A RESTART checkpoint would instead hold off every
//! commit while it waits and copies (pauses of 0.2–3 s were measured).

use std::os::raw::c_int;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use coffer_ledger::store::StoreResult;
use parking_lot::{Condvar, Mutex};
use rusqlite::Connection;

use crate::conn::{err, open_main, READ_CACHE_KIB};

/// Frames past which a writer checkpoints between its transactions.
pub const WAL_FRAMES_CATCH_UP: u64 = 4096;
/// Frames past which the writer waits for a background checkpoint in progress rather than
/// trying again after its next transaction: the WAL's hard bound, short of readers holding old
/// snapshots.
pub const WAL_FRAMES_MAX: u64 = 2 * WAL_FRAMES_CATCH_UP;
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
    /// Held while checkpointing, so that the writer can wait for the checkpointer's copy.
    checkpoint: Mutex<()>,
}

impl WalWatch {
    /// Registers the hook that tells `frames` on `conn`, the file's only writer.
    pub fn watch(self: &Arc<Self>, conn: &mut Connection) -> StoreResult<WalCatchUp> {
        let watch = self.clone();
        conn.wal_hook(Some(move |_: &mut rusqlite::hooks::Wal, pages: c_int| {
            watch.frames.store(pages.max(0) as u64, Ordering::Relaxed);
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
        // Below the hard bound, a checkpoint in progress means: try after the next transaction.
        let _guard = if frames > WAL_FRAMES_MAX {
            Some(self.watch.checkpoint.lock())
        } else {
            self.watch.checkpoint.try_lock()
        };
        if _guard.is_none() {
            return;
        }
        match checkpoint_passive(conn, schema) {
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
                        // Copy ahead of the writer's catch-up, so that it finds little left.
                        let grown = frames >= WAL_FRAMES_CATCH_UP - CHECKPOINT_FRAMES_MIN
                            && frames - *frames_then >= CHECKPOINT_FRAMES_MIN;
                        let due = at.elapsed() >= Duration::from_millis(CHECKPOINT_INTERVAL_MS);
                        if !grown && !due {
                            continue;
                        }
                        let _guard = watch.checkpoint.lock();
                        if let Err(error) = checkpoint_passive(&conn, schema) {
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
