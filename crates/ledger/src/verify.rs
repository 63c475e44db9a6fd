//! `coffer verify`: recompute what the store claims and report every discrepancy.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;

use crate::error::StoreError;
use crate::log::{
    chain_hash, Log, LogTransaction, LogType, NewTransactionPayload, RevertedTransactionPayload,
};
use crate::store::{Store, StoreReader, TimeOrder, VolumeRow};
use crate::types::{Amount, LedgerId, LedgerInfo, Posting, Transaction, TxId, Volumes};

const SCAN_PAGE: u32 = 10_000;

#[derive(Debug, Default)]
pub struct LedgerReport {
    pub name: String,
    pub logs: u64,
    pub transactions: u64,
    pub volumes_rows: u64,
    pub moves_rows: u64,
    pub assets: u64,
    /// Transactions whose volumes the store has not written yet (rebuilt when it reopens).
    pub unprojected: u64,
    pub problems: Vec<String>,
}

#[derive(Debug, Default)]
pub struct Report {
    pub ledgers: Vec<LedgerReport>,
}

impl Report {
    pub fn is_ok(&self) -> bool {
        self.ledgers.iter().all(|l| l.problems.is_empty())
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for ledger in &self.ledgers {
            writeln!(
                f,
                "ledger {}: {} logs (hash chain recomputed), {} transactions, {} volume rows, {} moves, {} assets summed",
                ledger.name,
                ledger.logs,
                ledger.transactions,
                ledger.volumes_rows,
                ledger.moves_rows,
                ledger.assets
            )?;
            if ledger.unprojected > 0 {
                writeln!(
                    f,
                    "  volumes checked as of transaction {}; the {} later ones are projected when the store reopens",
                    ledger.transactions - ledger.unprojected,
                    ledger.unprojected
                )?;
            }
            for problem in &ledger.problems {
                writeln!(f, "  PROBLEM: {problem}")?;
            }
        }
        let problems: usize = self.ledgers.iter().map(|l| l.problems.len()).sum();
        write!(
            f,
            "{} ledgers checked, {} problems",
            self.ledgers.len(),
            problems
        )
    }
}

/// Verifies every ledger of a store, reading from one consistent snapshot (the store may be in
/// use by a running server).
pub fn verify(store: &dyn Store) -> Result<Report, StoreError> {
    let snapshot = store.snapshot()?;
    let reader = snapshot.as_ref();
    let mut report = Report::default();
    for ledger in reader.all_ledgers()? {
        report.ledgers.push(verify_ledger(reader, &ledger)?);
    }
    Ok(report)
}

fn verify_ledger(
    reader: &dyn StoreReader,
    ledger: &LedgerInfo,
) -> Result<LedgerReport, StoreError> {
    let mut out = LedgerReport {
        name: ledger.name.clone(),
        ..LedgerReport::default()
    };
    let head = reader.ledger_head(ledger.id)?;
    let projected = reader.projected_tx_id(ledger.id)?;

    // 1. The hash chain, from the first log; each stored transaction is the one its log created
    //    (stores may derive transaction rows from the log); and, in the same pass over the
    //    transactions, volumes recomputed from every posting (up to what the store has
    //    projected, when it writes projections lazily: the rest is rebuilt from the log when it
    //    reopens).
    let mut stored = TxCursor::new(reader, ledger.id);
    let mut volumes = VolumesPass {
        projected,
        ..VolumesPass::default()
    };
    let mut created = 0;
    let mut time_order = TimeOrder::EMPTY;
    let mut previous = None;
    let mut expected_id = 1;
    loop {
        let logs = reader.scan_logs(ledger.id, expected_id - 1, SCAN_PAGE)?;
        if logs.is_empty() {
            break;
        }
        for log in logs {
            if log.id != expected_id {
                out.problems.push(format!(
                    "log {} follows log {} (gap)",
                    log.id,
                    expected_id - 1
                ));
            }
            let hash = chain_hash(
                previous.as_ref(),
                log.id,
                log.kind,
                log.date,
                log.idempotency_key.as_deref(),
                &log.data,
            );
            if hash != log.hash {
                out.problems
                    .push(format!("log {}: hash does not match the chain", log.id));
            }
            previous = Some(log.hash);
            expected_id = log.id + 1;
            out.logs += 1;
            if let Some(logged) = created_transaction(&log, &mut out.problems) {
                created = logged.id;
                match logged.timestamp() {
                    Ok(timestamp) => time_order.add(logged.id, timestamp),
                    Err(err) => out.problems.push(format!("log {}: {err}", log.id)),
                }
                let tx = check_against_log(&mut stored, &log, &logged, projected, &mut out)?;
                if let Some(tx) = tx {
                    volumes.visit(&tx, &mut out);
                }
            }
        }
    }
    // Transactions no log created, or not compared once out of step with the log.
    let mut extra_reported = stored.lost;
    while let Some(tx) = stored.next()? {
        if !extra_reported {
            out.problems.push(format!(
                "transaction {} is stored but no log created it (the last created is {created})",
                tx.id
            ));
            extra_reported = true;
        }
        volumes.visit(&tx, &mut out);
    }
    if head.next_log_id != expected_id {
        out.problems.push(format!(
            "head says next log is {}, logs end at {}",
            head.next_log_id,
            expected_id - 1
        ));
    }
    if head.last_hash != previous {
        out.problems
            .push("head's last hash differs from the last log's hash".to_string());
    }
    // Point-in-time lists by id start where it says: one that is wrong would miss transactions.
    if head.time_order.is_some_and(|kept| kept != time_order) {
        out.problems.push(format!(
            "head's time order {:?} differs from its transactions' {time_order:?}",
            head.time_order
        ));
    }

    // A store that writes transaction rows behind the commit holds them up to its projected
    // point; the later ones are in the log and rebuilt from it when the store reopens.
    let after = volumes.after;
    let behind = projected.is_some_and(|last| last == after && head.next_tx_id > after + 1);
    if behind {
        let missing = head.next_tx_id - 1 - after;
        out.transactions += missing;
        out.unprojected += missing;
    } else if head.next_tx_id != after + 1 {
        out.problems.push(format!(
            "head says next transaction is {}, transactions end at {after}",
            head.next_tx_id
        ));
    }
    let mut computed = volumes.computed;

    // 2. Stored volumes equal the recomputed ones, and each asset sums to zero.
    let mut sums: BTreeMap<String, WideSum> = BTreeMap::new();
    let mut volume_rows = VolumeCursor::new(reader, ledger.id);
    while let Some(row) = volume_rows.next()? {
        out.volumes_rows += 1;
        match computed.remove(&(row.address.clone(), row.asset.clone())) {
            Some(expected) if expected == row.volumes => {}
            Some(expected) => out.problems.push(format!(
                "volumes of {} {}: stored in={} out={}, postings give in={} out={}",
                row.address,
                row.asset,
                row.volumes.input,
                row.volumes.output,
                expected.input,
                expected.output
            )),
            None if row.volumes == Volumes::default() => {}
            None => out.problems.push(format!(
                "volumes of {} {} have no postings",
                row.address, row.asset
            )),
        }
        // Balances each fit 128 bits (volumes are at most 2^127 - 1), their running sum may not.
        match row.volumes.balance() {
            Ok(balance) => sums.entry(row.asset.clone()).or_default().add(balance),
            Err(_) => out.problems.push(format!(
                "balance of {} {} overflows",
                row.address, row.asset
            )),
        }
    }
    for ((address, asset), _) in computed {
        out.problems.push(format!(
            "postings move {address} {asset} but no volumes are stored"
        ));
    }
    out.assets = sums.len() as u64;
    for (asset, sum) in sums {
        if sum.wraps != 0 {
            out.problems.push(format!(
                "asset {asset} sums to more than 128 bits hold, not 0"
            ));
        } else if sum.low != 0 {
            out.problems
                .push(format!("asset {asset} sums to {}, not 0", sum.low));
        }
    }

    // 3. The moves of each account and asset sum to its volumes (less the transactions whose
    //    moves the store writes after their commit and has not written yet).
    let mut check = MovesCheck {
        volumes: VolumeCursor::new(reader, ledger.id),
        pending: pending_moves(reader, ledger.id)?,
        problems: &mut out.problems,
    };
    let mut cursor: Option<(String, TxId, String)> = None;
    let mut address: Option<String> = None;
    let mut moved: BTreeMap<String, Volumes> = BTreeMap::new();
    loop {
        let rows = reader.scan_moves(ledger.id, cursor.as_ref(), SCAN_PAGE)?;
        if rows.is_empty() {
            break;
        }
        for row in rows {
            out.moves_rows += 1;
            if address.as_deref() != Some(row.address.as_str()) {
                if let Some(done) = address.take() {
                    check.account(&done, std::mem::take(&mut moved))?;
                }
                address = Some(row.address.clone());
            }
            let sum = moved.entry(row.asset.clone()).or_default();
            let added = sum
                .receive(row.input_delta)
                .and_then(|()| sum.send(row.output_delta));
            if added.is_err() {
                check
                    .problems
                    .push(format!("moves of {} {} overflow", row.address, row.asset));
            }
            cursor = Some((row.address, row.tx_id, row.asset));
        }
    }
    if let Some(done) = address.take() {
        check.account(&done, moved)?;
    }
    check.rest()?;
    Ok(out)
}

/// Moves a posting's amount out of its source and into its destination; the addresses whose
/// volumes would overflow.
fn apply_posting<'p>(
    volumes: &mut BTreeMap<(String, String), Volumes>,
    posting: &'p Posting,
) -> impl Iterator<Item = &'p str> {
    let source = volumes
        .entry((posting.source.clone(), posting.asset.clone()))
        .or_default()
        .send(posting.amount)
        .is_err();
    let destination = volumes
        .entry((posting.destination.clone(), posting.asset.clone()))
        .or_default()
        .receive(posting.amount)
        .is_err();
    [
        source.then_some(posting.source.as_str()),
        destination.then_some(posting.destination.as_str()),
    ]
    .into_iter()
    .flatten()
}

/// Per account and asset, what the transactions whose moves are not written yet moved.
fn pending_moves(
    reader: &dyn StoreReader,
    ledger: LedgerId,
) -> Result<BTreeMap<(String, String), Volumes>, StoreError> {
    let mut pending: BTreeMap<(String, String), Volumes> = BTreeMap::new();
    for (first, last) in reader.pending_move_ranges(ledger)? {
        let mut after = first.saturating_sub(1);
        'range: loop {
            let transactions = reader.scan_transactions(ledger, after, SCAN_PAGE)?;
            if transactions.is_empty() {
                break;
            }
            for tx in transactions {
                if tx.id > last {
                    break 'range;
                }
                after = tx.id;
                for posting in &tx.postings {
                    // Overflows are reported by the volumes check.
                    let _ = apply_posting(&mut pending, posting);
                }
            }
        }
    }
    Ok(pending)
}

/// Compares sums of moves, account by account in key order, with the volumes rows, read in the
/// same order.
struct MovesCheck<'a, 'r> {
    volumes: VolumeCursor<'r>,
    pending: BTreeMap<(String, String), Volumes>,
    problems: &'a mut Vec<String>,
}

impl MovesCheck<'_, '_> {
    /// Volumes less what pending moves will add.
    fn expected(&self, address: &str, asset: &str, stored: Volumes) -> Option<Volumes> {
        let pending = self
            .pending
            .get(&(address.to_string(), asset.to_string()))
            .copied()
            .unwrap_or_default();
        Some(Volumes {
            input: stored.input.checked_sub(pending.input)?,
            output: stored.output.checked_sub(pending.output)?,
        })
    }

    fn account(
        &mut self,
        address: &str,
        moved: BTreeMap<String, Volumes>,
    ) -> Result<(), StoreError> {
        for (asset, sum) in moved {
            let key = (address.to_string(), asset);
            // Volumes rows before this one have no moves at all.
            while let Some(row) = self.volumes.peek()? {
                if (row.address.as_str(), row.asset.as_str()) >= (key.0.as_str(), key.1.as_str()) {
                    break;
                }
                let row = self.volumes.next()?.expect("peeked");
                self.unmoved(&row.address, &row.asset, row.volumes);
            }
            let stored = match self.volumes.peek()? {
                Some(row) if row.address == key.0 && row.asset == key.1 => {
                    self.volumes.next()?.expect("peeked").volumes
                }
                _ => Volumes::default(),
            };
            let expected = self.expected(&key.0, &key.1, stored);
            if expected != Some(sum) {
                self.problems.push(format!(
                    "moves of {} {} sum to in={} out={}, volumes (less moves not written yet) say {}",
                    key.0,
                    key.1,
                    sum.input,
                    sum.output,
                    match expected {
                        Some(v) => format!("in={} out={}", v.input, v.output),
                        None => "less than the pending moves".to_string(),
                    }
                ));
            }
        }
        Ok(())
    }

    fn unmoved(&mut self, address: &str, asset: &str, stored: Volumes) {
        if self.expected(address, asset, stored) != Some(Volumes::default()) {
            self.problems.push(format!(
                "volumes of {address} {asset} are in={} out={} but it has no moves",
                stored.input, stored.output
            ));
        }
    }

    /// Volumes rows after the last account with moves.
    fn rest(&mut self) -> Result<(), StoreError> {
        while let Some(row) = self.volumes.next()? {
            self.unmoved(&row.address, &row.asset, row.volumes);
        }
        Ok(())
    }
}

/// Volumes rows in (address, asset) order, a page at a time.
struct VolumeCursor<'r> {
    reader: &'r dyn StoreReader,
    ledger: LedgerId,
    after: Option<(String, String)>,
    page: VecDeque<VolumeRow>,
    done: bool,
}

impl<'r> VolumeCursor<'r> {
    fn new(reader: &'r dyn StoreReader, ledger: LedgerId) -> VolumeCursor<'r> {
        VolumeCursor {
            reader,
            ledger,
            after: None,
            page: VecDeque::new(),
            done: false,
        }
    }

    fn fill(&mut self) -> Result<(), StoreError> {
        if self.page.is_empty() && !self.done {
            self.page = self
                .reader
                .scan_volumes(self.ledger, self.after.as_ref(), SCAN_PAGE)?
                .into();
            self.done = self.page.is_empty();
        }
        Ok(())
    }

    fn peek(&mut self) -> Result<Option<&VolumeRow>, StoreError> {
        self.fill()?;
        Ok(self.page.front())
    }

    fn next(&mut self) -> Result<Option<VolumeRow>, StoreError> {
        self.fill()?;
        let next = self.page.pop_front();
        if let Some(row) = &next {
            self.after = Some((row.address.clone(), row.asset.clone()));
        }
        Ok(next)
    }
}

/// The transaction a log entry creates, if any; an unreadable payload is a problem.
fn created_transaction(log: &Log, problems: &mut Vec<String>) -> Option<LogTransaction> {
    let parsed = match log.kind {
        LogType::NewTransaction => serde_json::from_str::<NewTransactionPayload>(&log.data)
            .map(|payload| payload.transaction),
        LogType::RevertedTransaction => {
            serde_json::from_str::<RevertedTransactionPayload>(&log.data)
                .map(|payload| payload.transaction)
        }
        LogType::SetMetadata | LogType::DeleteMetadata => return None,
    };
    match parsed {
        Ok(logged) => Some(logged),
        Err(error) => {
            problems.push(format!("log {}: unreadable payload: {error}", log.id));
            None
        }
    }
}

/// Compares the next stored transaction with the one `log` created: same id, postings,
/// timestamp, reference, and inserted at the log's date. Metadata and reverts change later,
/// through later logs. Returns the transaction read, for the volumes pass.
fn check_against_log(
    stored: &mut TxCursor<'_>,
    log: &Log,
    logged: &LogTransaction,
    projected: Option<TxId>,
    out: &mut LedgerReport,
) -> Result<Option<Transaction>, StoreError> {
    if stored.lost {
        return Ok(None);
    }
    let Some(tx) = stored.next()? else {
        // Not written yet by a store that writes transaction rows behind the commit.
        if projected.is_none_or(|last| logged.id <= last) {
            out.problems.push(format!(
                "log {} created transaction {}, which is not stored",
                log.id, logged.id
            ));
            stored.lost = true;
        }
        return Ok(None);
    };
    if tx.id != logged.id {
        out.problems.push(format!(
            "log {} created transaction {}, but the next stored one is {} (later ones not compared)",
            log.id, logged.id, tx.id
        ));
        stored.lost = true;
        return Ok(Some(tx));
    }
    let timestamp = logged.timestamp().ok();
    let same = tx.postings == logged.postings()
        && Some(tx.timestamp) == timestamp
        && tx.reference == logged.reference
        && tx.inserted_at == log.date;
    if !same {
        out.problems.push(format!(
            "transaction {} differs from what log {} created (postings, timestamp, reference or insertion date)",
            tx.id, log.id
        ));
    }
    Ok(Some(tx))
}

/// Volumes recomputed from the stored transactions, visited in id order.
#[derive(Default)]
struct VolumesPass {
    projected: Option<TxId>,
    computed: BTreeMap<(String, String), Volumes>,
    /// The last transaction visited.
    after: TxId,
}

impl VolumesPass {
    fn visit(&mut self, tx: &Transaction, out: &mut LedgerReport) {
        if tx.id != self.after + 1 {
            out.problems.push(format!(
                "transaction {} follows transaction {} (gap)",
                tx.id, self.after
            ));
        }
        self.after = tx.id;
        out.transactions += 1;
        if self.projected.is_some_and(|last| tx.id > last) {
            out.unprojected += 1;
            return;
        }
        for posting in &tx.postings {
            if posting.amount < 0 {
                out.problems
                    .push(format!("transaction {} has a negative posting", tx.id));
                continue;
            }
            for address in apply_posting(&mut self.computed, posting) {
                out.problems.push(format!("volumes of {address} overflow"));
            }
        }
        // Its post-commit volumes are the volumes right after it, in id order.
        for posting in &tx.postings {
            for address in [&posting.source, &posting.destination] {
                let key = (address.clone(), posting.asset.clone());
                let after_it = self.computed.get(&key).copied().unwrap_or_default();
                let stored = tx
                    .post_commit_volumes
                    .get(address)
                    .and_then(|assets| assets.get(&posting.asset));
                if stored != Some(&after_it) {
                    out.problems.push(format!(
                        "transaction {}: post-commit volumes of {address} {} are {}, its postings and those before give in={} out={}",
                        tx.id,
                        posting.asset,
                        stored.map_or("missing".to_string(), |v| format!("in={} out={}", v.input, v.output)),
                        after_it.input,
                        after_it.output
                    ));
                }
            }
        }
    }
}

/// Stored transactions in id order, a page at a time.
struct TxCursor<'r> {
    reader: &'r dyn StoreReader,
    ledger: LedgerId,
    after: TxId,
    page: VecDeque<Transaction>,
    done: bool,
    /// Out of step with the log: later transactions are not compared.
    lost: bool,
}

impl<'r> TxCursor<'r> {
    fn new(reader: &'r dyn StoreReader, ledger: LedgerId) -> TxCursor<'r> {
        TxCursor {
            reader,
            ledger,
            after: 0,
            page: VecDeque::new(),
            done: false,
            lost: false,
        }
    }

    fn next(&mut self) -> Result<Option<Transaction>, StoreError> {
        if self.page.is_empty() && !self.done {
            self.page = self
                .reader
                .scan_transactions(self.ledger, self.after, SCAN_PAGE)?
                .into();
            self.done = self.page.is_empty();
        }
        let next = self.page.pop_front();
        if let Some(tx) = &next {
            self.after = tx.id;
        }
        Ok(next)
    }
}

/// A sum of 128-bit amounts that cannot overflow: `low` wraps, `wraps` counts how often (up
/// for a positive overflow, down for a negative one), so the sum is `wraps * 2^128 + low`.
#[derive(Clone, Copy, Debug, Default)]
pub struct WideSum {
    low: Amount,
    wraps: i64,
}

impl WideSum {
    /// The sum, when it is an amount.
    pub fn total(&self) -> Option<Amount> {
        (self.wraps == 0).then_some(self.low)
    }

    pub fn add(&mut self, amount: Amount) {
        let (low, overflowed) = self.low.overflowing_add(amount);
        self.low = low;
        if overflowed {
            self.wraps += if amount > 0 { 1 } else { -1 };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(amounts: &[Amount], expected: (i64, Amount)) {
        let mut sum = WideSum::default();
        for amount in amounts {
            sum.add(*amount);
        }
        assert_eq!((sum.wraps, sum.low), expected, "{amounts:?}");
    }

    #[test]
    fn sums_of_balances_past_128_bits_are_exact() {
        let big = Amount::MAX;
        check(&[], (0, 0));
        check(&[5, -3, -2], (0, 0));
        // Forced overdrafts: the running sum leaves 128 bits, the total is zero.
        check(&[-big, -big, big, big], (0, 0));
        check(&[big, big, -big, -big], (0, 0));
        check(&[big, 1], (1, Amount::MIN));
        check(&[-big, -2], (-1, Amount::MAX));
    }
}
