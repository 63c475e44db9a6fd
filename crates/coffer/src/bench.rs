//! `coffer bench`: durable transfers per second through the engine, with N concurrent
//! submitters that each wait for their transfer's commit before sending the next.

use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use coffer_ledger::command::{Command, NewTransaction, Outcome, Request, TxBody};
use coffer_ledger::{EngineConfig, LedgerError, Ledgers, Metadata, Posting};

use crate::store_url;

#[derive(clap::Args)]
pub struct BenchArgs {
    /// `sqlite://PATH` or `postgres://…`.
    #[arg(long, env = "COFFER_STORE", default_value = crate::DEFAULT_STORE)]
    store: String,
    /// Ledger the benchmark writes to (created if missing).
    #[arg(long, default_value = "bench")]
    ledger: String,
    /// Concurrent submitters, each with one transfer in flight.
    #[arg(long, default_value_t = 64)]
    submitters: usize,
    /// Accounts transfers are spread over (uniformly at random).
    #[arg(long, default_value_t = 10_000)]
    accounts: u64,
    /// Every transfer leaves one hot account (its balance is checked every time).
    #[arg(long)]
    hot: bool,
    /// Measured duration, after one second of warm-up.
    #[arg(long, default_value_t = 10)]
    duration_secs: u64,
    /// Initial balance of every account.
    #[arg(long, default_value_t = 1_000_000_000)]
    initial_balance: i128,
    /// Amount of each transfer.
    #[arg(long, default_value_t = 1)]
    amount: i128,
    /// Appends the id of every acknowledged transaction to this file (for crash tests).
    #[arg(long)]
    ack_log: Option<PathBuf>,
    /// Transactions written before measuring, to measure on a store with history.
    #[arg(long, default_value_t = 0)]
    preload_transactions: u64,
    /// Distinct accounts the preloaded transactions are spread over.
    #[arg(long, default_value_t = 1_000_000)]
    preload_accounts: u64,
    /// Cached balances kept by the engine between batches.
    #[arg(long, default_value_t = EngineConfig::default().volume_cache_entries_max)]
    volume_cache_entries_max: usize,
    /// Seed of the account choices (runs are repeatable).
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

/// xorshift64*: the benchmark needs speed and repeatability, not quality.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound.max(1)
    }
}

fn account(index: u64) -> String {
    format!("bench:{index}")
}

const HOT: &str = "bench:hot";

fn transfer(postings: Vec<Posting>) -> Command {
    Command::CreateTransaction(NewTransaction {
        body: TxBody::Postings(postings),
        timestamp: None,
        reference: None,
        metadata: Metadata::new(),
        account_metadata: Default::default(),
        force: false,
    })
}

fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// CPU time used so far by the whole process and by the engine's writer thread, in clock
/// ticks (Linux `/proc`; zeros elsewhere; see [`clock_tick_us`]).
fn cpu_ticks() -> (u64, u64) {
    let (mut total, mut writer) = (0, 0);
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return (0, 0);
    };
    for task in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        // Fields after the parenthesised name: utime and stime are the 12th and 13th.
        let Some((name, rest)) = stat.rsplit_once(") ") else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks = fields
            .get(11..13)
            .map(|f| f.iter().filter_map(|v| v.parse::<u64>().ok()).sum())
            .unwrap_or(0);
        total += ticks;
        if name.ends_with("(coffer-writer") {
            writer += ticks;
        }
    }
    (total, writer)
}

/// Busy CPU time of the whole machine so far, in clock ticks: every process, the kernel's
/// interrupt work included (`/proc/stat`: user, nice, system, irq, softirq; 0 elsewhere). With
/// PostgreSQL on the same machine, this counts its backends too.
fn machine_busy_ticks() -> u64 {
    let Ok(stat) = std::fs::read_to_string("/proc/stat") else {
        return 0;
    };
    let Some(line) = stat.lines().find(|l| l.starts_with("cpu ")) else {
        return 0;
    };
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    [0, 1, 2, 5, 6].iter().filter_map(|&i| fields.get(i)).sum()
}

/// Length of a `/proc` clock tick in microseconds.
fn clock_tick_us() -> f64 {
    // SAFETY: sysconf only reads a system constant.
    let ticks_per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    1e6 / (ticks_per_second.max(1) as f64)
}

fn fund(ledgers: &Ledgers, args: &BenchArgs) -> anyhow::Result<()> {
    let create = Command::CreateLedger {
        bucket: None,
        metadata: Metadata::new(),
        features: Metadata::new(),
    };
    match ledgers.write_blocking(Request::new(&args.ledger, create)) {
        Ok(_) | Err(LedgerError::LedgerAlreadyExists(_)) => {}
        Err(err) => return Err(err).context("creating the benchmark ledger"),
    }
    const PER_TRANSACTION: u64 = 500;
    let mut pending = Vec::new();
    let mut start = 0;
    while start < args.accounts {
        let end = (start + PER_TRANSACTION).min(args.accounts);
        let postings = (start..end)
            .map(|i| Posting {
                source: "world".into(),
                destination: account(i),
                amount: args.initial_balance,
                asset: "USD".into(),
            })
            .collect();
        pending.push(ledgers.submit(Request::new(&args.ledger, transfer(postings)))?);
        start = end;
    }
    if args.hot {
        let total = args
            .initial_balance
            .saturating_mul(i128::from(args.accounts.max(1)));
        let postings = vec![Posting {
            source: "world".into(),
            destination: HOT.into(),
            amount: total,
            asset: "USD".into(),
        }];
        pending.push(ledgers.submit(Request::new(&args.ledger, transfer(postings)))?);
    }
    for answer in pending {
        answer.wait_blocking().context("funding accounts")?;
    }
    Ok(())
}

/// Writes history: transfers from the world to many accounts, 64 in flight.
fn preload(ledgers: &Arc<Ledgers>, args: &BenchArgs) -> anyhow::Result<()> {
    if args.preload_transactions == 0 {
        return Ok(());
    }
    let started = Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let total = args.preload_transactions;
    let spread = args.preload_accounts.max(1);
    let threads: Vec<_> = (0..64)
        .map(|_| {
            let ledgers = ledgers.clone();
            let next = next.clone();
            let ledger = args.ledger.clone();
            std::thread::spawn(move || -> anyhow::Result<()> {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= total {
                        return Ok(());
                    }
                    let posting = Posting {
                        source: "world".into(),
                        destination: format!("history:{}", i % spread),
                        amount: 1,
                        asset: "USD".into(),
                    };
                    ledgers.write_blocking(Request::new(&ledger, transfer(vec![posting])))?;
                    if i.is_multiple_of(1_000_000) && i > 0 {
                        eprintln!("preloaded {i} transactions in {:.0?}", started.elapsed());
                    }
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().expect("preload thread")?;
    }
    eprintln!(
        "preloaded {total} transactions over {spread} accounts in {:.1?}",
        started.elapsed()
    );
    Ok(())
}

pub fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    // The store's warnings and errors (a failed flush, a retried batch) must show during a run.
    crate::serve::init_logging("text")?;
    anyhow::ensure!(
        args.submitters > 0 && args.accounts > 1,
        "need at least one submitter and two accounts"
    );
    let metrics = coffer_server::metrics_handle();
    let store = store_url::open(&args.store, store_url::Access::ReadWrite)?;
    let description = store.describe();
    let config = EngineConfig {
        volume_cache_entries_max: args.volume_cache_entries_max,
        ..EngineConfig::default()
    };
    let ledgers = Arc::new(Ledgers::open(store, config)?);
    fund(&ledgers, &args)?;
    preload(&ledgers, &args)?;

    let ack_log = match &args.ack_log {
        Some(path) => Some(Arc::new(Mutex::new(
            File::options()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("opening {}", path.display()))?,
        ))),
        None => None,
    };
    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    // Submitters are tasks on a runtime like the server's (one worker per core), as HTTP
    // handlers are: waking one costs a task switch, not an OS thread switch.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the submitters' runtime")?;
    let tasks: Vec<_> = (0..args.submitters)
        .map(|task| {
            let ledgers = ledgers.clone();
            let measuring = measuring.clone();
            let stop = stop.clone();
            let ack_log = ack_log.clone();
            let ledger = args.ledger.clone();
            let (accounts, hot, amount) = (args.accounts, args.hot, args.amount);
            let mut rng = Rng(args.seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ (task as u64 + 1));
            runtime.spawn(async move {
                let (mut done, mut refused) = (0u64, 0u64);
                let mut latencies_us = Vec::with_capacity(1 << 16);
                while !stop.load(Ordering::Relaxed) {
                    let destination = rng.below(accounts);
                    let source = if hot {
                        HOT.to_string()
                    } else {
                        let mut source = rng.below(accounts);
                        if source == destination {
                            source = (source + 1) % accounts;
                        }
                        account(source)
                    };
                    let posting = Posting {
                        source,
                        destination: account(destination),
                        amount,
                        asset: "USD".into(),
                    };
                    let sent = Instant::now();
                    let result = ledgers
                        .write(Request::new(&ledger, transfer(vec![posting])))
                        .await;
                    let elapsed_us = sent.elapsed().as_micros().min(u32::MAX as u128) as u32;
                    match result {
                        Ok(response) => {
                            if let (Some(log), Outcome::Transaction(tx)) =
                                (&ack_log, &response.outcome)
                            {
                                // Written before counting: an id in the file was acknowledged.
                                writeln!(log.lock().expect("ack log"), "{}", tx.id)?;
                            }
                            if measuring.load(Ordering::Relaxed) {
                                done += 1;
                                latencies_us.push(elapsed_us);
                            }
                        }
                        Err(LedgerError::InsufficientFunds { .. }) => refused += 1,
                        Err(err) => return Err(anyhow::Error::from(err)),
                    }
                }
                Ok((done, refused, latencies_us))
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(1));
    measuring.store(true, Ordering::Relaxed);
    let started = Instant::now();
    let cpu_before = cpu_ticks();
    let machine_before = machine_busy_ticks();
    let engine_before = EngineFigures::scrape(&metrics);
    std::thread::sleep(Duration::from_secs(args.duration_secs));
    measuring.store(false, Ordering::Relaxed);
    let cpu_after = cpu_ticks();
    let machine_after = machine_busy_ticks();
    let engine = EngineFigures::scrape(&metrics).since(&engine_before);
    let elapsed = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let (mut done, mut refused, mut latencies) = (0, 0, Vec::new());
    for task in tasks {
        let (d, r, mut l) = runtime.block_on(task).context("submitter task")??;
        done += d;
        refused += r;
        latencies.append(&mut l);
    }
    latencies.sort_unstable();
    let percentile = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    let rate = done as f64 / elapsed.as_secs_f64();
    let tick_us = clock_tick_us();
    let per_transfer_us = |before: u64, after: u64| {
        (after.saturating_sub(before) as f64 * tick_us) / done.max(1) as f64
    };
    let cpu_us = per_transfer_us(cpu_before.0, cpu_after.0);
    let writer_cpu_us = per_transfer_us(cpu_before.1, cpu_after.1);
    let machine_cpu_us = per_transfer_us(machine_before, machine_after);
    println!(
        "store={description} mode={} submitters={} accounts={} duration={:.1}s transfers={done} refused={refused} \
         rate={rate:.0}/s p50={}us p99={}us max={}us peak_rss={}MiB \
         cpu_per_transfer={cpu_us:.1}us writer_cpu_per_transfer={writer_cpu_us:.1}us \
         machine_cpu_per_transfer={machine_cpu_us:.1}us \
         commits={} requests_per_commit={:.1} batch_mean={:.0}us sync_mean={:.0}us syncs={} \
         flusher_waits={} flusher_wait={:.0}ms",
        if args.hot { "hot" } else { "uniform" },
        args.submitters,
        args.accounts,
        elapsed.as_secs_f64(),
        percentile(0.50),
        percentile(0.99),
        latencies.last().copied().unwrap_or(0),
        peak_rss_kib().unwrap_or(0) / 1024,
        engine.commits,
        engine.batch_requests / engine.commits.max(1.0),
        engine.batch_seconds / engine.commits.max(1.0) * 1e6,
        engine.sync_seconds / engine.syncs.max(1.0) * 1e6,
        engine.syncs,
        engine.queue_waits,
        engine.queue_wait_seconds * 1e3,
    );
    ledgers.shutdown();
    Ok(ExitCode::SUCCESS)
}

/// Engine totals read from its metrics, to explain a rate: how many commits, how full, how long
/// the batches and the syncs took.
#[derive(Default)]
struct EngineFigures {
    commits: f64,
    batch_requests: f64,
    batch_seconds: f64,
    syncs: f64,
    sync_seconds: f64,
    /// Times the writer waited for the SQLite flusher (its queue full, or too much not yet
    /// confirmed), and how long in all.
    queue_waits: f64,
    queue_wait_seconds: f64,
}

impl EngineFigures {
    fn scrape(handle: &metrics_exporter_prometheus::PrometheusHandle) -> EngineFigures {
        handle.run_upkeep();
        let mut figures = EngineFigures::default();
        for line in handle.render().lines() {
            let Some((name, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let Ok(value) = value.parse::<f64>() else {
                continue;
            };
            match name {
                "coffer_batch_requests_count" => figures.commits = value,
                "coffer_batch_requests_sum" => figures.batch_requests = value,
                "coffer_batch_seconds_sum" => figures.batch_seconds = value,
                "coffer_sync_seconds_count" => figures.syncs = value,
                "coffer_sync_seconds_sum" => figures.sync_seconds = value,
                "coffer_writer_flusher_wait_seconds_count" => figures.queue_waits = value,
                "coffer_writer_flusher_wait_seconds_sum" => figures.queue_wait_seconds = value,
                _ => {}
            }
        }
        figures
    }

    fn since(&self, before: &EngineFigures) -> EngineFigures {
        EngineFigures {
            commits: self.commits - before.commits,
            batch_requests: self.batch_requests - before.batch_requests,
            batch_seconds: self.batch_seconds - before.batch_seconds,
            syncs: self.syncs - before.syncs,
            sync_seconds: self.sync_seconds - before.sync_seconds,
            queue_waits: self.queue_waits - before.queue_waits,
            queue_wait_seconds: self.queue_wait_seconds - before.queue_wait_seconds,
        }
    }
}
