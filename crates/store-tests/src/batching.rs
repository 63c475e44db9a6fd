//! How the engine groups requests into store transactions, seen from the store: a wrapper
//! that counts the transactions each commit holds and can hold the writer at its next batch.

use std::sync::{Arc, Condvar, Mutex};

use coffer_ledger::command::{Command, Request};
use coffer_ledger::log::Log;
use coffer_ledger::store::{
    BatchWrites, Durability, LedgerHead, NewLedger, ProjectionTicket, Store, StoreReader,
    StoreResult, StoreWriter, StoredAccount, VolumeKey,
};
use coffer_ledger::types::{LedgerId, Metadata, Transaction, TxId, Volumes};
use coffer_ledger::{EngineConfig, Ledgers};

use crate::{balance, commit, config, create_ledger, new_tx, posting, Backend};

#[derive(Default)]
struct Shared {
    /// Transactions written by each commit, in order.
    commits: Mutex<Vec<usize>>,
    gate: Mutex<Gate>,
    changed: Condvar,
}

#[derive(Default)]
struct Gate {
    /// While true, the writer's next `begin` waits.
    held: bool,
    /// The writer waits at the gate.
    waiting: bool,
}

struct CountingStore {
    inner: Arc<dyn Store>,
    shared: Arc<Shared>,
}

impl Store for CountingStore {
    fn reader(&self) -> &dyn StoreReader {
        self.inner.reader()
    }
    fn snapshot(&self) -> StoreResult<Box<dyn StoreReader + '_>> {
        self.inner.snapshot()
    }
    fn writer(&self) -> StoreResult<Box<dyn StoreWriter>> {
        Ok(Box::new(CountingWriter {
            inner: self.inner.writer()?,
            shared: self.shared.clone(),
            written: 0,
        }))
    }
    fn describe(&self) -> String {
        self.inner.describe()
    }
    fn durability(&self) -> Option<Arc<dyn Durability>> {
        self.inner.durability()
    }
    fn transactions_behind_commit(&self) -> bool {
        self.inner.transactions_behind_commit()
    }
}

struct CountingWriter {
    inner: Box<dyn StoreWriter>,
    shared: Arc<Shared>,
    written: usize,
}

impl StoreWriter for CountingWriter {
    fn begin(&mut self) -> StoreResult<()> {
        let mut gate = self.shared.gate.lock().expect("gate");
        while gate.held {
            gate.waiting = true;
            self.shared.changed.notify_all();
            gate = self.shared.changed.wait(gate).expect("gate");
        }
        gate.waiting = false;
        drop(gate);
        self.written = 0;
        self.inner.begin()
    }
    fn commit(&mut self) -> StoreResult<()> {
        self.inner.commit()?;
        if self.written > 0 {
            self.shared
                .commits
                .lock()
                .expect("commits")
                .push(self.written);
        }
        Ok(())
    }
    fn rollback(&mut self) -> StoreResult<()> {
        self.inner.rollback()
    }
    fn account_assets_of_base(
        &mut self,
        ledger: LedgerId,
        address: &str,
        base: &str,
        limit: usize,
    ) -> StoreResult<Vec<String>> {
        self.inner
            .account_assets_of_base(ledger, address, base, limit)
    }
    fn lock_ledgers(&mut self, names: &[String]) -> StoreResult<Vec<LedgerHead>> {
        self.inner.lock_ledgers(names)
    }
    fn insert_ledger(&mut self, ledger: &NewLedger) -> StoreResult<Option<LedgerHead>> {
        self.inner.insert_ledger(ledger)
    }
    fn load_ledger_metadata(&mut self, ledger: LedgerId) -> StoreResult<Metadata> {
        self.inner.load_ledger_metadata(ledger)
    }
    fn load_volumes(&mut self, keys: &[VolumeKey]) -> StoreResult<Vec<Option<Volumes>>> {
        self.inner.load_volumes(keys)
    }
    fn load_accounts(
        &mut self,
        ledger: LedgerId,
        addresses: &[String],
    ) -> StoreResult<Vec<Option<StoredAccount>>> {
        self.inner.load_accounts(ledger, addresses)
    }
    fn load_transaction(&mut self, ledger: LedgerId, id: TxId) -> StoreResult<Option<Transaction>> {
        self.inner.load_transaction(ledger, id)
    }
    fn find_logs_by_idempotency_keys(
        &mut self,
        ledger: LedgerId,
        keys: &[String],
    ) -> StoreResult<Vec<Log>> {
        self.inner.find_logs_by_idempotency_keys(ledger, keys)
    }
    fn find_references(
        &mut self,
        ledger: LedgerId,
        references: &[String],
    ) -> StoreResult<Vec<String>> {
        self.inner.find_references(ledger, references)
    }
    fn write(&mut self, writes: &BatchWrites) -> StoreResult<()> {
        self.written += writes.transactions.len();
        self.inner.write(writes)
    }
    fn flush_projections(&mut self) -> StoreResult<ProjectionTicket> {
        self.inner.flush_projections()
    }
    fn durability(&self) -> Option<Arc<dyn Durability>> {
        self.inner.durability()
    }
    fn pending_projections(&self) -> usize {
        self.inner.pending_projections()
    }
}

/// A batch closes once it holds `batch_postings_max` postings, and a request larger than that
/// runs alone: big requests queued together do not make one huge store transaction.
pub fn batches_bounded_by_postings(backend: &dyn Backend) {
    let shared = Arc::new(Shared::default());
    let store = Arc::new(CountingStore {
        inner: backend.open(),
        shared: shared.clone(),
    });
    let ledgers = Ledgers::open(
        store,
        EngineConfig {
            batch_postings_max: 25,
            ..config()
        },
    )
    .expect("engine starts");
    create_ledger(&ledgers, "main");
    let transfer = |to: &str, postings: usize| {
        let postings = (0..postings)
            .map(|i| posting("world", &format!("{to}:{i}"), 1, "USD"))
            .collect();
        Request::new("main", Command::CreateTransaction(new_tx(postings)))
    };
    // The writer takes the first request and waits at its batch; the other 19 queue behind it.
    shared.gate.lock().expect("gate").held = true;
    let mut answers = vec![ledgers.submit(transfer("a0", 10)).expect("queued")];
    {
        let mut gate = shared.gate.lock().expect("gate");
        while !gate.waiting {
            gate = shared.changed.wait(gate).expect("gate");
        }
    }
    for i in 1..20 {
        answers.push(
            ledgers
                .submit(transfer(&format!("a{i}"), 10))
                .expect("queued"),
        );
    }
    shared.gate.lock().expect("gate").held = false;
    shared.changed.notify_all();
    for answer in answers {
        answer.wait_blocking().expect("committed");
    }
    // Larger than the bound: alone, and committed.
    let big = (0..40)
        .map(|i| posting("world", &format!("big:{i}"), 1, "USD"))
        .collect();
    commit(&ledgers, "main", new_tx(big)).expect("committed");
    let commits = shared.commits.lock().expect("commits").clone();
    assert_eq!(commits.iter().sum::<usize>(), 21, "{commits:?}");
    // 10 + 10 < 25, then a third: three requests of 10 postings at most per batch.
    assert!(commits.iter().all(|&n| n <= 3), "{commits:?}");
    // The first alone, the 19 queued in 7 batches or more, the big one alone.
    assert!(commits.len() >= 9, "{commits:?}");
    assert_eq!(commits.last(), Some(&1), "{commits:?}");
    assert_eq!(balance(&ledgers, "main", "world", "USD"), -240);

    // Reverts of those 20 transactions of 10 postings: each looks like one posting when the
    // batch is gathered, and writes 10. The batch ends once it wrote the bound or more.
    shared.commits.lock().expect("commits").clear();
    let revert = |id: u64| {
        let command = Command::RevertTransaction {
            id,
            force: false,
            at_effective_date: false,
            metadata: Default::default(),
        };
        Request::new("main", command)
    };
    shared.gate.lock().expect("gate").held = true;
    let mut answers = vec![ledgers.submit(revert(1)).expect("queued")];
    {
        let mut gate = shared.gate.lock().expect("gate");
        while !gate.waiting {
            gate = shared.changed.wait(gate).expect("gate");
        }
    }
    for id in 2..=20 {
        answers.push(ledgers.submit(revert(id)).expect("queued"));
    }
    shared.gate.lock().expect("gate").held = false;
    shared.changed.notify_all();
    for answer in answers {
        answer.wait_blocking().expect("reverted");
    }
    let commits = shared.commits.lock().expect("commits").clone();
    assert_eq!(commits.iter().sum::<usize>(), 20, "{commits:?}");
    assert!(commits.iter().all(|&n| n <= 3), "{commits:?}");
    assert_eq!(balance(&ledgers, "main", "world", "USD"), -40);
}
