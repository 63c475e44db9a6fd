//! The engine orders writes: one writer thread drains a bounded queue and commits everything
//! it finds in one store transaction (group commit).
//!
//! Callers get their answer once the commit is durable, so an acknowledged write is. Stores
//! whose commits become durable later are synced by a second thread, once for many commits,
//! while the writer goes on with the next batches.
//! Balances of hot accounts stay in a bounded cache between batches, so a hot account costs no
//! database round-trip per transaction.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::AtomicI64;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError};
use parking_lot::Mutex;
use tokio::sync::oneshot;

use crate::batch::{Batch, PreparedScript};
use crate::cache::Caches;
use crate::command::{Command, Request, Response, TxBody};
use crate::error::LedgerError;
use crate::store::{Durability, ProjectionTicket, Store, StoreWriter, WriteFailure};
use crate::time::Timestamp;

#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Most requests committed together.
    pub batch_requests_max: usize,
    /// Most postings committed together (a batch closes once it holds this many, though a
    /// single larger request still runs, alone): bounds a batch's memory when requests are big.
    pub batch_postings_max: usize,
    /// Requests waiting for the writer; beyond this, callers are told to retry.
    pub queue_requests_max: usize,
    /// Cached (account, asset) volumes kept between batches.
    pub volume_cache_entries_max: usize,
    /// Cached known accounts.
    pub account_cache_entries_max: usize,
    /// Parsed Numscript programs kept, keyed by source text.
    pub script_cache_entries_max: usize,
    /// Projection rows (volumes, moves) a store may hold back before they are written.
    pub projection_rows_max: usize,
    /// Longest a store may hold projections back, in milliseconds.
    pub projection_delay_ms_max: u64,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            batch_requests_max: 4096,
            batch_postings_max: 16_384,
            queue_requests_max: 65_536,
            volume_cache_entries_max: 500_000,
            account_cache_entries_max: 500_000,
            script_cache_entries_max: 1024,
            projection_rows_max: 200_000,
            projection_delay_ms_max: 200,
        }
    }
}

type ReplySender = oneshot::Sender<Result<Response, LedgerError>>;

struct Job {
    request: Request,
    script: PreparedScript,
    reply: ReplySender,
}

impl Job {
    /// Imports run alone so that a failure rolls back nothing but themselves.
    fn exclusive(&self) -> bool {
        matches!(self.request.command, Command::ImportLogs { .. })
    }

    /// Postings the request is expected to write, for `batch_postings_max`: its postings, or
    /// for a script (whose postings are known only once it runs) one per 64 bytes of source.
    fn postings(&self) -> usize {
        match &self.request.command {
            Command::CreateTransaction(tx) => match &tx.body {
                TxBody::Postings(postings) => postings.len().max(1),
                TxBody::Script { plain, .. } => 1 + plain.len() / 64,
            },
            _ => 1,
        }
    }
}

/// Requests committed together or not at all (an atomic bulk), alone in their store
/// transaction. An element refused before it reached the writer is carried as its error.
struct AtomicJob {
    elements: Vec<Result<(Request, PreparedScript), LedgerError>>,
    reply: oneshot::Sender<Result<AtomicOutcome, LedgerError>>,
}

/// What an atomic group came to. Elements run in order and stop at the first failure, which is
/// the last result; then nothing is committed.
#[derive(Debug)]
pub struct AtomicOutcome {
    pub results: Vec<Result<Response, LedgerError>>,
    pub committed: bool,
}

/// What the writer thread receives.
// Writes are nearly all messages: boxing them would allocate once more per request.
#[allow(clippy::large_enum_variant)]
enum Message {
    Write(Job),
    Atomic(AtomicJob),
    /// Answered with a ticket that resolves once every projection of committed transactions
    /// is stored.
    Sync(oneshot::Sender<Result<ProjectionTicket, LedgerError>>),
}

pub struct Engine {
    sender: Mutex<Option<Sender<Message>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    scripts: numscript::ProgramCache,
}

/// An answer that will arrive once the request's batch is committed.
pub struct Pending(oneshot::Receiver<Result<Response, LedgerError>>);

impl Pending {
    pub async fn wait(self) -> Result<Response, LedgerError> {
        self.0.await.map_err(|_| LedgerError::Unavailable)?
    }

    /// For callers outside an async runtime (CLI, benchmarks, tests).
    pub fn wait_blocking(self) -> Result<Response, LedgerError> {
        self.0
            .blocking_recv()
            .map_err(|_| LedgerError::Unavailable)?
    }
}

impl Engine {
    pub fn start(store: Arc<dyn Store>, config: EngineConfig) -> Result<Engine, LedgerError> {
        assert!(
            config.batch_requests_max > 0
                && config.batch_postings_max > 0
                && config.queue_requests_max > 0
        );
        let writer = store.writer()?;
        let (sender, receiver) = crossbeam_channel::bounded(config.queue_requests_max);
        let thread_config = config.clone();
        let thread = std::thread::Builder::new()
            .name("coffer-writer".into())
            .spawn(move || {
                let run = std::panic::catch_unwind(AssertUnwindSafe(|| {
                    writer_loop(writer, receiver, thread_config)
                }));
                if run.is_err() {
                    // A ledger that is wrong must stop: no write may follow a broken invariant.
                    eprintln!("fatal: the ledger writer stopped on a broken invariant; exiting");
                    std::process::abort();
                }
            })
            .map_err(|err| LedgerError::Store(format!("cannot start the writer thread: {err}")))?;
        Ok(Engine {
            sender: Mutex::new(Some(sender)),
            thread: Mutex::new(Some(thread)),
            scripts: numscript::ProgramCache::new(config.script_cache_entries_max),
        })
    }

    /// Validates a request and parses its script (through the cache).
    fn prepare(&self, request: &Request) -> Result<PreparedScript, LedgerError> {
        request.validate()?;
        Ok(match &request.command {
            Command::CreateTransaction(tx) => match &tx.body {
                TxBody::Script { plain, .. } => Some(
                    self.scripts
                        .get_or_parse(plain)
                        .map_err(|err| LedgerError::ScriptParse(err.to_string()))?,
                ),
                TxBody::Postings(_) => None,
            },
            _ => None,
        })
    }

    /// Commits `requests` in one store transaction, in order, or none of them: the first that
    /// fails rolls back all. An element given as an error (refused by the caller) fails there.
    pub async fn execute_atomic(
        &self,
        requests: Vec<Result<Request, LedgerError>>,
    ) -> Result<AtomicOutcome, LedgerError> {
        let receiver = self.submit_atomic(requests)?;
        receiver.await.map_err(|_| LedgerError::Unavailable)?
    }

    /// [`Engine::execute_atomic`] for callers outside an async runtime.
    pub fn execute_atomic_blocking(
        &self,
        requests: Vec<Result<Request, LedgerError>>,
    ) -> Result<AtomicOutcome, LedgerError> {
        let receiver = self.submit_atomic(requests)?;
        receiver
            .blocking_recv()
            .map_err(|_| LedgerError::Unavailable)?
    }

    fn submit_atomic(
        &self,
        requests: Vec<Result<Request, LedgerError>>,
    ) -> Result<oneshot::Receiver<Result<AtomicOutcome, LedgerError>>, LedgerError> {
        let mut elements = Vec::with_capacity(requests.len());
        for request in requests {
            let prepared =
                request.and_then(|request| self.prepare(&request).map(|script| (request, script)));
            let refused = prepared.is_err();
            elements.push(prepared);
            if refused {
                break;
            }
        }
        let (reply, receiver) = oneshot::channel();
        {
            let guard = self.sender.lock();
            let sender = guard.as_ref().ok_or(LedgerError::Unavailable)?;
            sender
                .try_send(Message::Atomic(AtomicJob { elements, reply }))
                .map_err(|_| LedgerError::Unavailable)?;
        }
        Ok(receiver)
    }

    /// Validates and queues a request; the answer comes once its batch is committed.
    pub fn submit(&self, request: Request) -> Result<Pending, LedgerError> {
        let script = self.prepare(&request)?;
        let (reply, receiver) = oneshot::channel();
        let job = Job {
            request,
            script,
            reply,
        };
        let guard = self.sender.lock();
        let sender = guard.as_ref().ok_or(LedgerError::Unavailable)?;
        match sender.try_send(Message::Write(job)) {
            Ok(()) => Ok(Pending(receiver)),
            Err(TrySendError::Full(_)) => {
                metrics::counter!("coffer_queue_rejections_total").increment(1);
                Err(LedgerError::Unavailable)
            }
            Err(TrySendError::Disconnected(_)) => Err(LedgerError::Unavailable),
        }
    }

    pub async fn execute(&self, request: Request) -> Result<Response, LedgerError> {
        self.submit(request)?.wait().await
    }

    pub fn execute_blocking(&self, request: Request) -> Result<Response, LedgerError> {
        self.submit(request)?.wait_blocking()
    }

    /// Waits until the projections of every transaction committed so far are stored, so that
    /// a read of volumes or moves that follows sees all acknowledged writes.
    pub fn sync_blocking(&self) -> Result<(), LedgerError> {
        let (reply, receiver) = oneshot::channel();
        {
            let guard = self.sender.lock();
            let sender = guard.as_ref().ok_or(LedgerError::Unavailable)?;
            sender
                .try_send(Message::Sync(reply))
                .map_err(|_| LedgerError::Unavailable)?;
        }
        let ticket = receiver
            .blocking_recv()
            .map_err(|_| LedgerError::Unavailable)??;
        Ok(ticket.wait()?)
    }

    /// Stops accepting requests, lets the writer finish what is queued, and waits for it.
    pub fn shutdown(&self) {
        drop(self.sender.lock().take());
        if let Some(thread) = self.thread.lock().take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Answers of one commit, sent once it is durable; given the error instead when the sync
/// failed (the commit's outcome is then unknown).
type Answers = Box<dyn FnOnce(Option<LedgerError>) + Send>;

/// Commits waiting for their durability, in commit order; beyond this the writer waits.
pub const UNSYNCED_COMMITS_MAX: usize = 1024;

/// Sends answers: at once when `commit` made them durable, otherwise from a thread that
/// syncs for many commits at a time while the writer goes on with the next batches.
struct Replier {
    sender: Option<Sender<Answers>>,
    thread: Option<JoinHandle<()>>,
}

impl Replier {
    fn start(durability: Option<Arc<dyn Durability>>) -> Replier {
        let Some(durability) = durability else {
            return Replier {
                sender: None,
                thread: None,
            };
        };
        let (sender, receiver) = crossbeam_channel::bounded::<Answers>(UNSYNCED_COMMITS_MAX);
        let thread = std::thread::Builder::new()
            .name("coffer-sync".into())
            .spawn(move || {
                let returned = durability.returned_signal();
                loop {
                    let first = match &returned {
                        None => receiver.recv(),
                        Some(returned) => crossbeam_channel::select! {
                            recv(receiver) -> answers => answers,
                            recv(returned) -> _ => {
                                // A commit returned: sync it while the writer finishes the
                                // batch, before its answers arrive. A failure is left to the
                                // answers' own sync, which retries and reports it.
                                if let Err(err) = durability.sync() {
                                    tracing::debug!(error = %err, "early sync failed");
                                }
                                continue;
                            }
                        },
                    };
                    let Ok(first) = first else { break };
                    let mut ready = vec![first];
                    ready.extend(receiver.try_iter().take(UNSYNCED_COMMITS_MAX));
                    let failure = match durability.sync() {
                        Ok(()) => None,
                        Err(err) => {
                            // No answer may claim durability; the store decides whether it
                            // can go on (SQLite stops on a failed fsync).
                            metrics::counter!("coffer_sync_failures_total").increment(1);
                            tracing::error!(error = %err, "syncing committed writes failed");
                            Some(LedgerError::Store(format!(
                                "the commit's durability is unknown: {err}"
                            )))
                        }
                    };
                    for answers in ready {
                        answers(failure.clone());
                    }
                }
            })
            .expect("cannot start the sync thread");
        Replier {
            sender: Some(sender),
            thread: Some(thread),
        }
    }

    fn send(&self, answers: Answers) {
        match &self.sender {
            Some(sender) => sender.send(answers).expect("the sync thread stopped"),
            None => answers(None),
        }
    }

    /// Answers everything queued, then stops.
    fn stop(&mut self) {
        drop(self.sender.take());
        if let Some(thread) = self.thread.take() {
            thread.join().expect("the sync thread panicked");
        }
    }
}

fn writer_loop(
    mut writer: Box<dyn StoreWriter>,
    receiver: Receiver<Message>,
    config: EngineConfig,
) {
    let mut replier = Replier::start(writer.durability());
    writer_loop_with(writer.as_mut(), &receiver, &config, &replier);
    replier.stop();
}

fn writer_loop_with(
    writer: &mut dyn StoreWriter,
    receiver: &Receiver<Message>,
    config: &EngineConfig,
    replier: &Replier,
) {
    let mut caches = Caches::new(
        config.volume_cache_entries_max,
        config.account_cache_entries_max,
    );
    // Ledger scripts may opt into experimental features with `#![feature(...)]`.
    let flags = numscript::FeatureFlags::default();
    let projection_delay = Duration::from_millis(config.projection_delay_ms_max);
    let mut held_back_since: Option<Instant> = None;
    let mut pending: Option<Message> = None;
    loop {
        let first = match pending.take() {
            Some(message) => message,
            None => match receiver.recv_timeout(projection_delay) {
                Ok(message) => message,
                Err(RecvTimeoutError::Timeout) => {
                    flush_projections(writer, Vec::new(), &mut held_back_since);
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => {
                    flush_projections(writer, Vec::new(), &mut held_back_since);
                    return;
                }
            },
        };
        let mut jobs: Vec<Job> = Vec::new();
        let mut syncs = Vec::new();
        let mut atomic = None;
        match first {
            Message::Write(job) => jobs.push(job),
            Message::Sync(reply) => syncs.push(reply),
            Message::Atomic(job) => atomic = Some(job),
        }
        // Imports and atomic groups run alone.
        let exclusive = atomic.is_some() || jobs.first().is_some_and(Job::exclusive);
        let mut postings: usize = jobs.iter().map(Job::postings).sum();
        while !exclusive
            && jobs.len() < config.batch_requests_max
            && postings < config.batch_postings_max
        {
            match receiver.try_recv() {
                Ok(Message::Write(job)) if job.exclusive() => {
                    pending = Some(Message::Write(job));
                    break;
                }
                Ok(message @ Message::Atomic(_)) => {
                    pending = Some(message);
                    break;
                }
                Ok(Message::Write(job)) => {
                    postings = postings.saturating_add(job.postings());
                    jobs.push(job);
                }
                Ok(Message::Sync(reply)) => syncs.push(reply),
                Err(_) => break,
            }
        }
        if let Some(job) = atomic {
            run_atomic(writer, &mut caches, &flags, replier, job);
        } else if !jobs.is_empty() {
            run_batch(
                writer,
                &mut caches,
                &flags,
                replier,
                jobs,
                config.batch_postings_max,
            );
        }
        if writer.pending_projections() > 0 && held_back_since.is_none() {
            held_back_since = Some(Instant::now());
        }
        let overdue = held_back_since.is_some_and(|since| since.elapsed() >= projection_delay);
        if !syncs.is_empty()
            || overdue
            || writer.pending_projections() >= config.projection_rows_max
        {
            flush_projections(writer, syncs, &mut held_back_since);
        }
    }
}

/// Starts writing held-back projections and hands the readers waiting for them their ticket.
fn flush_projections(
    writer: &mut dyn StoreWriter,
    syncs: Vec<oneshot::Sender<Result<ProjectionTicket, LedgerError>>>,
    held_back_since: &mut Option<Instant>,
) {
    let started = Instant::now();
    let rows = writer.pending_projections();
    let result = writer.flush_projections().map_err(LedgerError::from);
    if rows > 0 {
        metrics::histogram!("coffer_projection_flush_seconds")
            .record(started.elapsed().as_secs_f64());
        metrics::histogram!("coffer_projection_flush_rows").record(rows as f64);
    }
    if let Err(err) = &result {
        tracing::error!(error = %err, "writing projections failed; will retry");
    }
    if writer.pending_projections() == 0 {
        *held_back_since = None;
    }
    for reply in syncs {
        let _ = reply.send(result.clone());
    }
}

fn run_batch(
    writer: &mut dyn StoreWriter,
    caches: &mut Caches,
    flags: &numscript::FeatureFlags,
    replier: &Replier,
    mut jobs: Vec<Job>,
    postings_max: usize,
) {
    while !jobs.is_empty() {
        jobs = run_batch_once(writer, caches, flags, replier, jobs, postings_max);
    }
}

/// Runs a batch, or its first part when it reaches `postings_max`: returns the rest.
fn run_batch_once(
    writer: &mut dyn StoreWriter,
    caches: &mut Caches,
    flags: &numscript::FeatureFlags,
    replier: &Replier,
    mut jobs: Vec<Job>,
    postings_max: usize,
) -> Vec<Job> {
    let started = Instant::now();
    let count = jobs.len();
    let mut touched = Vec::new();
    let mut rest = Vec::new();
    // The requests the batch took before it ended (all of them, unless it reached its bound).
    let mut included = jobs.len();
    let mut outcome = execute_batch(
        writer,
        caches,
        flags,
        &jobs,
        postings_max,
        &mut touched,
        &mut included,
    );
    let mut failure = WriteFailure::NotWritten;
    if outcome.is_err() {
        let _ = writer.rollback();
        failure = writer.take_failure();
        if failure == WriteFailure::RunAgain {
            // Nothing was written (predicted heads another process had moved, say); once more.
            forget_batch(caches, &mut touched);
            outcome = execute_batch(
                writer,
                caches,
                flags,
                &jobs,
                postings_max,
                &mut touched,
                &mut included,
            );
            if outcome.is_err() {
                let _ = writer.rollback();
                failure = writer.take_failure();
            }
        }
    }
    match outcome {
        Ok(results) => {
            // Those it ended before (past its postings bound) go in a batch of their own.
            rest = jobs.split_off(results.len());
            replier.send(Box::new(move |failure| {
                for (job, result) in jobs.into_iter().zip(results) {
                    let _ = job.reply.send(match &failure {
                        Some(err) => Err(err.clone()),
                        None => result,
                    });
                }
            }));
        }
        Err(err) => {
            for ledger in touched {
                caches.invalidate_ledger(ledger);
            }
            if failure == WriteFailure::Unknown {
                // Only those the batch took may have been written; the rest were not.
                rest = jobs.split_off(included);
            }
            if matches!(err, LedgerError::Store(_))
                && jobs.len() > 1
                && failure != WriteFailure::Unknown
            {
                // One request the store refuses must not fail the others of its batch: nothing
                // was committed, so each runs again alone and gets its own answer. (Unless the
                // batch may have been written: then each gets the store's error.)
                tracing::warn!(error = %err, requests = count, "batch failed; retrying its requests one by one");
                for job in jobs {
                    run_batch(writer, caches, flags, replier, vec![job], postings_max);
                }
                return Vec::new();
            }
            if matches!(err, LedgerError::Store(_)) {
                metrics::counter!("coffer_batch_failures_total").increment(1);
                tracing::error!(error = %err, requests = count, "batch failed; rolled back");
            }
            // Through the replier too: a refusal may rest on writes not yet durable.
            replier.send(Box::new(move |failure| {
                let err = failure.unwrap_or(err);
                for job in jobs {
                    let _ = job.reply.send(Err(err.clone()));
                }
            }));
        }
    }
    record_commit(count - rest.len(), started);
    rest
}

/// Before a batch that wrote nothing runs again: its reads of those ledgers may be stale
/// (another process wrote to them).
fn forget_batch(caches: &mut Caches, touched: &mut Vec<i64>) {
    metrics::counter!("coffer_batch_reruns_total").increment(1);
    for ledger in touched.drain(..) {
        caches.invalidate_ledger(ledger);
    }
}

/// Metrics of one store transaction (batch or atomic group).
fn record_commit(requests: usize, started: Instant) {
    metrics::counter!("coffer_commits_total").increment(1);
    metrics::histogram!("coffer_batch_requests").record(requests as f64);
    metrics::histogram!("coffer_batch_seconds").record(started.elapsed().as_secs_f64());
}

fn run_atomic(
    writer: &mut dyn StoreWriter,
    caches: &mut Caches,
    flags: &numscript::FeatureFlags,
    replier: &Replier,
    job: AtomicJob,
) {
    let started = Instant::now();
    let mut touched = Vec::new();
    let committed = |outcome: &Result<AtomicOutcome, LedgerError>| {
        matches!(
            outcome,
            Ok(AtomicOutcome {
                committed: true,
                ..
            })
        )
    };
    let mut outcome = execute_atomic(writer, caches, flags, &job.elements, &mut touched);
    if !committed(&outcome) {
        // On predicted heads, the rollback checks them: a refusal rests on them too.
        let _ = writer.rollback();
        if writer.take_failure() == WriteFailure::RunAgain {
            forget_batch(caches, &mut touched);
            outcome = execute_atomic(writer, caches, flags, &job.elements, &mut touched);
            if !committed(&outcome) {
                let _ = writer.rollback();
            }
        }
        if !committed(&outcome) {
            for ledger in touched {
                caches.invalidate_ledger(ledger);
            }
        }
    }
    if let Err(err @ LedgerError::Store(_)) = &outcome {
        metrics::counter!("coffer_batch_failures_total").increment(1);
        tracing::error!(error = %err, "atomic group failed; rolled back");
    }
    let elements = job.elements.len();
    replier.send(Box::new(move |failure| {
        let _ = job.reply.send(match failure {
            Some(err) => Err(err),
            None => outcome,
        });
    }));
    record_commit(elements, started);
}

fn execute_atomic(
    writer: &mut dyn StoreWriter,
    caches: &mut Caches,
    flags: &numscript::FeatureFlags,
    elements: &[Result<(Request, PreparedScript), LedgerError>],
    touched: &mut Vec<i64>,
) -> Result<AtomicOutcome, LedgerError> {
    writer.begin()?;
    let mut batch = Batch::new(writer, caches, batch_now(), flags);
    let requests: Vec<&Request> = elements
        .iter()
        .filter_map(|element| element.as_ref().ok().map(|(request, _)| request))
        .collect();
    let prepared = batch.prepare(&requests);
    *touched = batch.ledger_ids();
    prepared?;
    let mut results = Vec::with_capacity(elements.len());
    for element in elements {
        let result = match element {
            Ok((request, script)) => batch.execute(request, script),
            Err(err) => Err(err.clone()),
        };
        *touched = batch.ledger_ids();
        match result {
            Err(err @ LedgerError::Store(_)) => return Err(err),
            Err(err) => {
                results.push(Err(err));
                return Ok(AtomicOutcome {
                    results,
                    committed: false,
                });
            }
            Ok(response) => results.push(Ok(response)),
        }
    }
    batch.commit()?;
    Ok(AtomicOutcome {
        results,
        committed: true,
    })
}

/// The latest time a batch took, in microseconds.
static BATCH_LATEST_US: AtomicI64 = AtomicI64::new(i64::MIN);

/// A batch's time: the clock's, but never before an earlier batch's, so that a clock stepped
/// back does not date logs and insertions before those already written.
fn batch_now() -> Timestamp {
    not_before_latest(Timestamp::now(), &BATCH_LATEST_US)
}

fn not_before_latest(now: Timestamp, latest_us: &AtomicI64) -> Timestamp {
    let before = latest_us.fetch_max(now.0, std::sync::atomic::Ordering::SeqCst);
    Timestamp(before.max(now.0))
}

/// `touched`: the ledgers whose caches a failure must drop; `included`: the requests the batch
/// took (fewer than `jobs` when it reached `postings_max`).
fn execute_batch(
    writer: &mut dyn StoreWriter,
    caches: &mut Caches,
    flags: &numscript::FeatureFlags,
    jobs: &[Job],
    postings_max: usize,
    touched: &mut Vec<i64>,
    included: &mut usize,
) -> Result<Vec<Result<Response, LedgerError>>, LedgerError> {
    *included = jobs.len();
    let exclusive = jobs.len() == 1 && jobs[0].exclusive();
    writer.begin()?;
    let mut batch = Batch::new(writer, caches, batch_now(), flags);
    let requests: Vec<&Request> = jobs.iter().map(|job| &job.request).collect();
    let prepared = batch.prepare(&requests);
    *touched = batch.ledger_ids();
    prepared?;
    let mut results = Vec::with_capacity(jobs.len());
    for job in jobs {
        let result = batch.execute(&job.request, &job.script);
        match result {
            // The store failing poisons the whole batch; nothing of it may be committed.
            Err(err @ LedgerError::Store(_)) => return Err(err),
            // An import is all or nothing.
            Err(err) if exclusive => return Err(err),
            result => results.push(result),
        }
        if batch.postings_written() >= postings_max && results.len() < jobs.len() {
            // Reverts and scripts write more postings than the batch counted on: the rest go
            // in the next one (memory stays bounded).
            break;
        }
    }
    *touched = batch.ledger_ids();
    *included = results.len();
    batch.commit()?;
    Ok(results)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::durability::CommitSync;
    use std::sync::atomic::{AtomicU64, Ordering};

    fn counting_sync(early: bool) -> (Arc<AtomicU64>, Arc<CommitSync>) {
        let flushes = Arc::new(AtomicU64::new(0));
        let counter = flushes.clone();
        let sync = CommitSync::new(move || {
            counter.fetch_add(1, Ordering::SeqCst);
            Ok(())
        });
        (flushes, Arc::new(if early { sync.early() } else { sync }))
    }

    #[test]
    fn batch_times_never_go_back() {
        let latest = AtomicI64::new(i64::MIN);
        let times: Vec<i64> = [10, 12, 5, 12, 13]
            .into_iter()
            .map(|now| not_before_latest(Timestamp(now), &latest).0)
            .collect();
        assert_eq!(times, [10, 12, 12, 12, 13]);
    }

    fn wait_until(what: &str, done: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting until {what}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// With an early flush the sync thread makes a returned commit durable before its answers
    /// reach it; the answers then need no flush of their own.
    #[test]
    fn an_early_sync_starts_when_the_commit_returns() {
        let (flushes, sync) = counting_sync(true);
        let mut replier = Replier::start(Some(sync.clone() as Arc<dyn Durability>));
        sync.commit_begins();
        sync.commit_returned();
        wait_until("the commit is synced", || sync.unsynced_commits() == 0);
        assert_eq!(flushes.load(Ordering::SeqCst), 1);
        let (sender, answered) = crossbeam_channel::bounded(1);
        replier.send(Box::new(move |failure| {
            sender.send(failure.is_none()).unwrap();
        }));
        assert!(answered.recv().unwrap(), "answered without a failure");
        replier.stop();
        assert_eq!(
            flushes.load(Ordering::SeqCst),
            1,
            "the answers flushed again"
        );
    }

    /// Without it the sync thread waits for answers: a returned commit stays unsynced.
    #[test]
    fn without_an_early_sync_the_answers_start_it() {
        let (flushes, sync) = counting_sync(false);
        let mut replier = Replier::start(Some(sync.clone() as Arc<dyn Durability>));
        sync.commit_begins();
        sync.commit_returned();
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(flushes.load(Ordering::SeqCst), 0);
        let (sender, answered) = crossbeam_channel::bounded(1);
        replier.send(Box::new(move |failure| {
            sender.send(failure.is_none()).unwrap();
        }));
        assert!(answered.recv().unwrap());
        assert_eq!(sync.unsynced_commits(), 0);
        replier.stop();
        assert_eq!(flushes.load(Ordering::SeqCst), 1);
    }
}
