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
