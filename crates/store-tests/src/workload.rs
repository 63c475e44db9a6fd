//! Concurrent and randomised workloads: whatever the interleaving, every asset sums to zero,
//! no account without overdraft goes negative, and every acknowledged transaction survives a
//! restart.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use coffer_ledger::command::{Command, Outcome, Request};
use coffer_ledger::service::{AccountsQuery, PageRequest};
use coffer_ledger::{LedgerError, Ledgers, Transaction};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

use crate::{commit, create_ledger, new_tx, posting, service, Backend};

/// Every account's balance per asset, read back from the store through the API.
fn balances(ledgers: &Ledgers, ledger: &str) -> BTreeMap<(String, String), i128> {
    let mut out = BTreeMap::new();
    let query = AccountsQuery {
        with_volumes: true,
        ..AccountsQuery::default()
    };
    let mut page = ledgers
        .list_accounts(
            ledger,
            query.clone(),
            &PageRequest {
                page_size: Some(100),
                cursor: None,
            },
        )
        .unwrap();
    loop {
        for account in &page.data {
            for (asset, volumes) in &account.volumes {
                out.insert(
                    (account.address.clone(), asset.clone()),
                    volumes.balance().unwrap(),
                );
            }
        }
        match page.next.take() {
            Some(cursor) => {
                page = ledgers
                    .list_accounts(
                        ledger,
                        query.clone(),
                        &PageRequest {
                            page_size: None,
                            cursor: Some(cursor),
                        },
                    )
                    .unwrap()
            }
            None => return out,
        }
    }
}

fn check_invariants(ledgers: &Ledgers, ledger: &str, overdraft_allowed: &[&str]) {
    let balances = balances(ledgers, ledger);
    let mut sums: BTreeMap<&str, i128> = BTreeMap::new();
    for ((address, asset), balance) in &balances {
        *sums.entry(asset).or_default() += balance;
        if address != "world" && !overdraft_allowed.contains(&address.as_str()) {
            assert!(
                *balance >= 0,
                "{address} went negative in {asset}: {balance}"
            );
        }
    }
    assert!(
        sums.values().all(|sum| *sum == 0),
        "assets do not sum to zero: {sums:?}"
    );
    let verified = coffer_ledger::verify::verify(ledgers.store().as_ref()).unwrap();
    assert!(verified.is_ok(), "{verified}");
}

pub fn concurrent_transfers(backend: &dyn Backend) {
    let ledgers = Arc::new(service(backend));
    create_ledger(&ledgers, "main");
    const ACCOUNTS: usize = 8;
    for i in 0..ACCOUNTS {
        commit(
            &ledgers,
            "main",
            new_tx(vec![posting("world", &format!("acc:{i}"), 100, "USD")]),
        )
        .unwrap();
    }
    let rejected = Arc::new(AtomicU32::new(0));
    let threads: Vec<_> = (0..8)
        .map(|thread| {
            let ledgers = ledgers.clone();
            let rejected = rejected.clone();
            std::thread::spawn(move || {
                let mut acknowledged = Vec::new();
                for i in 0..60usize {
                    // Three senders that never receive: each can pay 37 twice out of 100, so all
                    // threads race to double-spend the same balances.
                    let from = format!("acc:{}", (thread + i) % 3);
                    let to = format!("acc:{}", 3 + (thread + i) % (ACCOUNTS - 3));
                    match commit(
                        &ledgers,
                        "main",
                        new_tx(vec![posting(&from, &to, 37, "USD")]),
                    ) {
                        Ok(tx) => acknowledged.push(tx),
                        Err(LedgerError::InsufficientFunds { .. }) => {
                            rejected.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(err) => panic!("{err}"),
                    }
                }
                acknowledged
            })
        })
        .collect();
    let acknowledged: Vec<Transaction> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    assert_eq!(acknowledged.len(), 6, "each sender pays exactly twice");
    assert_eq!(rejected.load(Ordering::Relaxed), 8 * 60 - 6);
    check_invariants(&ledgers, "main", &[]);
    let count = ledgers.count_transactions("main", None, None).unwrap();
    assert_eq!(count as usize, acknowledged.len() + ACCOUNTS);
    let ledgers = Arc::try_unwrap(ledgers).ok().expect("threads joined");
    ledgers.shutdown();
    drop(ledgers);
    let ledgers = service(backend);
    for tx in &acknowledged {
        assert_eq!(&ledgers.get_transaction("main", tx.id, None).unwrap(), tx);
    }
}

#[derive(Clone, Debug)]
enum Op {
    Transfer {
        from: usize,
        to: usize,
        amount: i128,
        asset: usize,
    },
    Forced {
        from: usize,
        to: usize,
        amount: i128,
    },
    Revert {
        back: usize,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..6usize, 0..6usize, 0..200i128, 0..2usize).prop_map(|(from, to, amount, asset)| Op::Transfer { from, to, amount, asset }),
        1 => (0..6usize, 0..6usize, 0..50i128).prop_map(|(from, to, amount)| Op::Forced { from, to, amount }),
        1 => (0..5usize).prop_map(|back| Op::Revert { back }),
    ]
}

fn account(index: usize) -> String {
    // Account 0 is the world, so money enters; account 5 may overdraw (forced transfers).
    match index {
        0 => "world".to_string(),
        n => format!("acc:{n}"),
    }
}

/// Random operations submitted from several threads at once, on a fresh ledger per case.
pub fn random_workload(backend: &dyn Backend) {
    let ledgers = Arc::new(service(backend));
    let case = AtomicU32::new(0);
    let mut runner = TestRunner::new(Config {
        cases: 12,
        failure_persistence: None,
        ..Config::default()
    });
    let strategy = proptest::collection::vec(proptest::collection::vec(op(), 1..30), 1..4);
    runner
        .run(&strategy, |threads| {
            let ledger = format!("case{}", case.fetch_add(1, Ordering::Relaxed));
            create_ledger(&ledgers, &ledger);
            let handles: Vec<_> = threads
                .into_iter()
                .map(|ops| {
                    let ledgers = ledgers.clone();
                    let ledger = ledger.clone();
                    std::thread::spawn(move || {
                        let mut acknowledged: Vec<Transaction> = Vec::new();
                        for op in ops {
                            let result = match op {
                                Op::Transfer {
                                    from,
                                    to,
                                    amount,
                                    asset,
                                } => {
                                    let asset = ["USD/2", "EUR"][asset];
                                    commit(
                                        &ledgers,
                                        &ledger,
                                        new_tx(vec![posting(
                                            &account(from),
                                            &account(to),
                                            amount,
                                            asset,
                                        )]),
                                    )
                                }
                                Op::Forced { from, to, amount } => {
                                    let from = if from == 0 { 5 } else { from };
                                    let mut tx = new_tx(vec![posting(
                                        &account(from.max(5)),
                                        &account(to),
                                        amount,
                                        "USD/2",
                                    )]);
                                    tx.force = true;
                                    commit(&ledgers, &ledger, tx)
                                }
                                Op::Revert { back } => {
                                    match acknowledged.len().checked_sub(back + 1) {
                                        Some(index) => {
                                            let id = acknowledged[index].id;
                                            let command = Command::RevertTransaction {
                                                id,
                                                force: false,
                                                at_effective_date: false,
                                                metadata: Default::default(),
                                            };
                                            match ledgers
                                                .write_blocking(Request::new(&ledger, command))
                                            {
                                                Ok(response) => match response.outcome {
                                                    Outcome::Transaction(tx) => Ok(tx),
                                                    other => panic!("{other:?}"),
                                                },
                                                Err(err) => Err(err),
                                            }
                                        }
                                        None => continue,
                                    }
                                }
                            };
                            match result {
                                Ok(tx) => acknowledged.push(tx),
                                Err(
                                    LedgerError::InsufficientFunds { .. }
                                    | LedgerError::AlreadyReverted(_),
                                ) => {}
                                Err(err) => panic!("unexpected error: {err}"),
                            }
                        }
                        acknowledged
                    })
                })
                .collect();
            let acknowledged: Vec<Transaction> = handles
                .into_iter()
                .flat_map(|h| h.join().unwrap())
                .collect();
            check_invariants(&ledgers, &ledger, &["acc:5"]);
            for tx in &acknowledged {
                let stored = ledgers.get_transaction(&ledger, tx.id, None).unwrap();
                prop_assert_eq!(&stored.postings, &tx.postings);
            }
            Ok(())
        })
        .unwrap();
    // After a restart every ledger still verifies.
    let ledgers = Arc::try_unwrap(ledgers).ok().expect("threads joined");
    ledgers.shutdown();
    drop(ledgers);
    let ledgers = service(backend);
    let verified = coffer_ledger::verify::verify(ledgers.store().as_ref()).unwrap();
    assert!(verified.is_ok(), "{verified}");
}

/// A metadata change: on accounts 0–2 or transactions 3–4, set or (without a value) delete a key.
#[derive(Clone, Debug)]
struct MetadataOp {
    target: usize,
    key: usize,
    value: Option<usize>,
}

fn metadata_op() -> impl Strategy<Value = MetadataOp> {
    (0..5usize, 0..3usize, proptest::option::of(0..3usize))
        .prop_map(|(target, key, value)| MetadataOp { target, key, value })
}

/// Random sequences of metadata changes, some committed together (an atomic group shares one
/// date): a point-in-time read at any instant between them shows, and filters on, the metadata
/// a model of the changes had then.
pub fn metadata_history_random(backend: &dyn Backend) {
    use coffer_ledger::command::Target;
    use coffer_ledger::{Metadata, Timestamp};

    let ledgers = service(backend);
    let case = AtomicU32::new(0);
    let mut runner = TestRunner::new(Config {
        cases: 8,
        failure_persistence: None,
        ..Config::default()
    });
    let strategy = proptest::collection::vec(proptest::collection::vec(metadata_op(), 1..4), 1..7);
    runner
        .run(&strategy, |groups| {
            let ledger = format!("history{}", case.fetch_add(1, Ordering::Relaxed));
            create_ledger(&ledgers, &ledger);
            let accounts = ["a:0", "a:1", "a:2"];
            let mut transactions = Vec::new();
            for address in accounts.iter().take(2) {
                let tx = commit(
                    &ledgers,
                    &ledger,
                    new_tx(vec![posting("world", address, 1, "USD")]),
                );
                transactions.push(tx.unwrap().id);
            }
            // Every account exists before the first change (a:2 by a transaction of its own).
            commit(
                &ledgers,
                &ledger,
                new_tx(vec![posting("world", accounts[2], 1, "USD")]),
            )
            .unwrap();
            let target = |index: usize| {
                if index < 3 {
                    Target::Account(accounts[index].to_string())
                } else {
                    Target::Transaction(transactions[index - 3])
                }
            };
            let instant = || {
                std::thread::sleep(std::time::Duration::from_millis(2));
                let now = Timestamp::now();
                std::thread::sleep(std::time::Duration::from_millis(2));
                now
            };
            let mut model = vec![Metadata::new(); 5];
            let mut snapshots = vec![(instant(), model.clone())];
            for group in &groups {
                let requests: Vec<_> = group
                    .iter()
                    .map(|op| {
                        let key = format!("k{}", op.key);
                        let command = match op.value {
                            Some(value) => {
                                model[op.target].insert(key.clone(), format!("v{value}"));
                                Command::SaveMetadata {
                                    target: target(op.target),
                                    metadata: Metadata::from([(key, format!("v{value}"))]),
                                }
                            }
                            None => {
                                model[op.target].remove(&key);
                                Command::DeleteMetadata {
                                    target: target(op.target),
                                    key,
                                }
                            }
                        };
                        Ok(Request::new(&ledger, command))
                    })
                    .collect();
                let done = ledgers.write_atomic_blocking(requests).unwrap();
                prop_assert!(done.committed);
                snapshots.push((instant(), model.clone()));
            }
            for (at, expected) in &snapshots {
                let pit = Some(*at);
                for (index, address) in accounts.iter().enumerate() {
                    let account = ledgers.get_account(&ledger, address, pit).unwrap();
                    prop_assert_eq!(
                        &account.metadata,
                        &expected[index],
                        "{} at {:?}",
                        address,
                        at
                    );
                }
                for (index, id) in transactions.iter().enumerate() {
                    let tx = ledgers.get_transaction(&ledger, *id, pit).unwrap();
                    prop_assert_eq!(&tx.metadata, &expected[3 + index], "tx {} at {:?}", id, at);
                }
                for key in 0..3 {
                    let filter = format!(r#"{{"$match":{{"metadata[k{key}]":"v0"}}}}"#);
                    let want = expected[..3]
                        .iter()
                        .filter(|m| m.get(&format!("k{key}")).map(String::as_str) == Some("v0"))
                        .count() as u64;
                    let got = ledgers.count_accounts(&ledger, Some(&filter), pit).unwrap();
                    prop_assert_eq!(got, want, "{} at {:?}", filter, at);
                    let want = expected[3..]
                        .iter()
                        .filter(|m| m.get(&format!("k{key}")).map(String::as_str) == Some("v0"))
                        .count() as u64;
                    let got = ledgers
                        .count_transactions(&ledger, Some(&filter), pit)
                        .unwrap();
                    prop_assert_eq!(got, want, "{} at {:?}", filter, at);
                }
            }
            Ok(())
        })
        .unwrap();
}

/// Transactions dated at random (backdated, tied, in the future of later ones, and reverts at
/// their effective date): a list at any instant, newest first and paged, holds exactly those
/// dated at or before it, as does its count; and again after a restart.
pub fn transactions_at_random_instants(backend: &dyn Backend) {
    use coffer_ledger::command::NewTransaction;
    use coffer_ledger::service::TransactionsQuery;
    use coffer_ledger::{Metadata, Timestamp};

    let ledgers = service(backend);
    let case = AtomicU32::new(0);
    let base = Timestamp::parse("2025-01-01T00:00:00Z").unwrap().micros();
    let second = 1_000_000;
    // (ledger, every transaction's (id, timestamp))
    let written = std::sync::Mutex::new(Vec::new());
    let list = |ledgers: &Ledgers, ledger: &str, pit: i64| -> Vec<u64> {
        let query = TransactionsQuery {
            pit: Some(pit),
            ..TransactionsQuery::default()
        };
        let mut page = ledgers
            .list_transactions(
                ledger,
                query.clone(),
                &PageRequest {
                    page_size: Some(3),
                    cursor: None,
                },
            )
            .unwrap();
        let mut ids: Vec<u64> = page.data.iter().map(|t| t.id).collect();
        while let Some(cursor) = page.next.take() {
            page = ledgers
                .list_transactions(
                    ledger,
                    query.clone(),
                    &PageRequest {
                        page_size: None,
                        cursor: Some(cursor),
                    },
                )
                .unwrap();
            ids.extend(page.data.iter().map(|t| t.id));
        }
        ids
    };
    let check = |ledgers: &Ledgers, ledger: &str, dated: &[(u64, i64)]| {
        for k in -1..22 {
            let pit = base + k * second;
            let mut want: Vec<u64> = dated
                .iter()
                .filter(|(_, ts)| *ts <= pit)
                .map(|(id, _)| *id)
                .collect();
            want.sort_unstable_by(|a, b| b.cmp(a));
            assert_eq!(list(ledgers, ledger, pit), want, "{ledger} at +{k}s");
            let count = ledgers
                .count_transactions(ledger, None, Some(Timestamp(pit)))
                .unwrap();
            assert_eq!(count as usize, want.len(), "{ledger} count at +{k}s");
        }
    };
    let mut runner = TestRunner::new(Config {
        cases: 12,
        failure_persistence: None,
        ..Config::default()
    });
    // Each transaction: its timestamp (seconds after `base`), and whether it reverts the one
    // before it at that one's effective date.
    let strategy = proptest::collection::vec((0..20i64, proptest::bool::weighted(0.2)), 1..25);
    runner
        .run(&strategy, |steps| {
            let ledger = format!("dated{}", case.fetch_add(1, Ordering::Relaxed));
            create_ledger(&ledgers, &ledger);
            let mut dated: Vec<(u64, i64)> = Vec::new();
            let mut reverted = std::collections::BTreeSet::new();
            for (seconds, revert) in steps {
                let last = dated.last().copied();
                let tx = match last {
                    Some((id, ts)) if revert && !reverted.contains(&id) => {
                        reverted.insert(id);
                        let command = Command::RevertTransaction {
                            id,
                            force: true,
                            at_effective_date: true,
                            metadata: Metadata::new(),
                        };
                        match ledgers
                            .write_blocking(Request::new(&ledger, command))
                            .unwrap()
                            .outcome
                        {
                            Outcome::Transaction(tx) => {
                                prop_assert_eq!(tx.timestamp.micros(), ts);
                                tx
                            }
                            other => panic!("unexpected {other:?}"),
                        }
                    }
                    _ => commit(
                        &ledgers,
                        &ledger,
                        NewTransaction {
                            timestamp: Some(Timestamp(base + seconds * second)),
                            ..new_tx(vec![posting("world", "a", 1, "USD")])
                        },
                    )
                    .unwrap(),
                };
                dated.push((tx.id, tx.timestamp.micros()));
            }
            check(&ledgers, &ledger, &dated);
            written.lock().unwrap().push((ledger, dated));
            Ok(())
        })
        .unwrap();
    ledgers.shutdown();
    drop(ledgers);
    let ledgers = service(backend);
    for (ledger, dated) in written.into_inner().unwrap() {
        check(&ledgers, &ledger, &dated);
    }
}

/// Transactions dated at random among a few accounts (backdated, tied, reverts at their
/// effective date, dry runs): every transaction's effective volumes, as answered to its write
/// and as read back later, are the sums over the transactions up to it in (timestamp, id)
/// order; with the ledger's time order or without it; and again after a restart.
pub fn effective_volumes_random(backend: &dyn Backend) {
    use coffer_ledger::command::NewTransaction;
    use coffer_ledger::types::VolumesByAccount;
    use coffer_ledger::{Metadata, Timestamp};

    let ledgers = service(backend);
    let case = AtomicU32::new(0);
    let base = Timestamp::parse("2025-01-01T00:00:00Z").unwrap().micros();
    let second = 1_000_000;
    let accounts = ["a", "b", "c"];
    // The model: for `tx` among `all`, the sums over those up to it in (timestamp, id) order.
    let model = |all: &[Transaction], tx: &Transaction| -> VolumesByAccount {
        let mut out = VolumesByAccount::new();
        for (account, assets) in &tx.post_commit_volumes {
            for asset in assets.keys() {
                let slot = out
                    .entry(account.clone())
                    .or_default()
                    .entry(asset.clone())
                    .or_default();
                for other in all {
                    if (other.timestamp, other.id) > (tx.timestamp, tx.id) {
                        continue;
                    }
                    for p in other.postings.iter().filter(|p| &p.asset == asset) {
                        if &p.destination == account {
                            slot.input += p.amount;
                        }
                        if &p.source == account {
                            slot.output += p.amount;
                        }
                    }
                }
            }
        }
        out
    };
    let check = |ledgers: &Ledgers, ledger: &str, all: &[Transaction]| {
        use coffer_ledger::sql_reader::EFFECTIVE_DRIVER_FORCED;
        let txs: Vec<&Transaction> = all.iter().collect();
        let info = ledgers.ledger(ledger).unwrap();
        // Chosen by the probes, then each way forced: the same answers.
        for driver in [0, 1, 2, 3] {
            EFFECTIVE_DRIVER_FORCED.store(driver, Ordering::Relaxed);
            let got = ledgers.effective_volumes(ledger, &txs).unwrap();
            let unordered = ledgers
                .reader()
                .effective_volumes(info.id, &txs, None)
                .unwrap();
            for (index, tx) in all.iter().enumerate() {
                let want = model(all, tx);
                assert_eq!(got[index], want, "{ledger}: tx {} (driver {driver})", tx.id);
                assert_eq!(
                    unordered[index], want,
                    "{ledger}: tx {} (no time order, driver {driver})",
                    tx.id
                );
            }
        }
        EFFECTIVE_DRIVER_FORCED.store(0, Ordering::Relaxed);
    };
    let mut runner = TestRunner::new(Config {
        cases: 32,
        failure_persistence: None,
        ..Config::default()
    });
    // Each step: a timestamp (seconds after `base`), source and destination among the
    // accounts (3: world), the amount, whether it reverts the previous transaction at its
    // effective date, and whether it is a dry run.
    let step = (
        0..12i64,
        0..4usize,
        0..3usize,
        1..50i128,
        proptest::bool::weighted(0.15),
        proptest::bool::weighted(0.15),
    );
    let strategy = proptest::collection::vec(step, 1..20);
    let written = std::sync::Mutex::new(Vec::new());
    runner
        .run(&strategy, |steps| {
            let ledger = format!("effective{}", case.fetch_add(1, Ordering::Relaxed));
            create_ledger(&ledgers, &ledger);
            let mut all: Vec<Transaction> = Vec::new();
            let mut reverted = std::collections::BTreeSet::new();
            for (seconds, from, to, amount, revert, dry_run) in steps {
                let command = match all.last() {
                    Some(last) if revert && !reverted.contains(&last.id) => {
                        Command::RevertTransaction {
                            id: last.id,
                            force: true,
                            at_effective_date: true,
                            metadata: Metadata::new(),
                        }
                    }
                    _ => {
                        let source = if from == 3 { "world" } else { accounts[from] };
                        Command::CreateTransaction(NewTransaction {
                            timestamp: Some(Timestamp(base + seconds * second)),
                            force: true,
                            ..new_tx(vec![posting(source, accounts[to], amount, "USD")])
                        })
                    }
                };
                let mut request = Request::new(&ledger, command.clone());
                request.dry_run = dry_run;
                let response = ledgers.write_blocking(request).unwrap();
                let Outcome::Transaction(tx) = &response.outcome else {
                    panic!("unexpected {:?}", response.outcome);
                };
                let answered = ledgers
                    .written_effective_volumes(&ledger, &response)
                    .unwrap()
                    .expect("a transaction");
                let mut with_it = all.clone();
                with_it.push(tx.clone());
                prop_assert_eq!(&answered, &model(&with_it, tx), "answer to {:?}", command);
                if !dry_run {
                    if let Command::RevertTransaction { id, .. } = command {
                        reverted.insert(id);
                    }
                    all = with_it;
                }
            }
            check(&ledgers, &ledger, &all);
            written.lock().unwrap().push((ledger, all));
            Ok(())
        })
        .unwrap();
    // Wider than one statement's addresses: a transaction to 1,200 accounts, then one dated
    // before it to the same accounts.
    let wide = |seconds: i64, amount: i128| NewTransaction {
        timestamp: Some(Timestamp(base + seconds * second)),
        ..new_tx(
            (0..1200)
                .map(|i| posting("world", &format!("w:{i}"), amount, "USD"))
                .collect(),
        )
    };
    create_ledger(&ledgers, "wide");
    let first = commit(&ledgers, "wide", wide(10, 1)).unwrap();
    let second = commit(&ledgers, "wide", wide(5, 2)).unwrap();
    check(&ledgers, "wide", &[first.clone(), second.clone()]);
    let effective = ledgers.effective_volumes("wide", &[&first]).unwrap();
    assert_eq!(effective[0]["w:1199"]["USD"].input, 3);
    assert_eq!(effective[0]["world"]["USD"].output, 3600);
    ledgers.shutdown();
    drop(ledgers);
    let ledgers = service(backend);
    for (ledger, all) in written.into_inner().unwrap() {
        check(&ledgers, &ledger, &all);
    }
}
