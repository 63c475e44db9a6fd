//! The behavioural suite every store must pass. Each backend's test file invokes
//! [`store_suite!`] with a way to open its store; each scenario runs on a fresh store.
//!
//! Scenarios drive the public service ([`Ledgers`]): engine, batching, caches and the store
//! together, as the server uses them.

use std::collections::BTreeMap;
use std::sync::Arc;

use coffer_ledger::command::{Command, NewTransaction, Outcome, Request, Target, TxBody};
use coffer_ledger::service::{
    AccountsQuery, LogsQuery, PageRequest, TransactionsQuery, VolumesQuery,
};
use coffer_ledger::store::Store;
use coffer_ledger::{
    EngineConfig, LedgerError, Ledgers, Metadata, Posting, Timestamp, Transaction,
};

pub mod batching;
pub mod workload;

/// A store under test. `open` must return the same store each time (a restart).
pub trait Backend: Send + Sync {
    fn open(&self) -> Arc<dyn Store>;
}

/// Small caches so that eviction paths run too.
pub fn config() -> EngineConfig {
    EngineConfig {
        volume_cache_entries_max: 64,
        account_cache_entries_max: 64,
        ..EngineConfig::default()
    }
}

pub fn service(backend: &dyn Backend) -> Ledgers {
    Ledgers::open(backend.open(), config()).expect("engine starts")
}

pub fn posting(source: &str, destination: &str, amount: i128, asset: &str) -> Posting {
    Posting {
        source: source.into(),
        destination: destination.into(),
        amount,
        asset: asset.into(),
    }
}

pub fn meta(pairs: &[(&str, &str)]) -> Metadata {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

pub fn new_tx(postings: Vec<Posting>) -> NewTransaction {
    NewTransaction {
        body: TxBody::Postings(postings),
        timestamp: None,
        reference: None,
        metadata: Metadata::new(),
        account_metadata: BTreeMap::new(),
        force: false,
    }
}

pub fn script(plain: &str, vars: &[(&str, &str)]) -> NewTransaction {
    NewTransaction {
        body: TxBody::Script {
            plain: plain.into(),
            vars: vars
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        },
        ..new_tx(vec![])
    }
}

pub fn create_ledger(ledgers: &Ledgers, name: &str) {
    let command = Command::CreateLedger {
        bucket: None,
        metadata: Metadata::new(),
        features: Metadata::new(),
    };
    ledgers
        .write_blocking(Request::new(name, command))
        .expect("ledger created");
}

pub fn commit(
    ledgers: &Ledgers,
    ledger: &str,
    tx: NewTransaction,
) -> Result<Transaction, LedgerError> {
    match ledgers
        .write_blocking(Request::new(ledger, Command::CreateTransaction(tx)))?
        .outcome
    {
        Outcome::Transaction(tx) => Ok(tx),
        other => panic!("unexpected outcome {other:?}"),
    }
}

/// Creates ledger "main" and commits three transactions with references and metadata that JSON
/// must escape; returns their log entries and the transactions as read back. For the tests of
/// rows that older versions stored in another form.
pub fn three_transactions_to_store_in_another_form(
    ledgers: &Ledgers,
) -> (Vec<coffer_ledger::log::Log>, Vec<Transaction>) {
    create_ledger(ledgers, "main");
    for amount in [5, 7, 9] {
        let mut tx = new_tx(vec![
            posting("world", "users:1", amount, "USD/2"),
            posting("users:1", "users:2", 1, "USD/2"),
        ]);
        tx.reference = Some(format!("ref-{amount}"));
        tx.metadata
            .insert("why".into(), "a \"quoted\" reason".into());
        commit(ledgers, "main", tx).unwrap();
    }
    let logs = ledgers.scan_logs("main", 0, 100).unwrap();
    let transactions = (1..=3)
        .map(|id| ledgers.get_transaction("main", id, None).unwrap())
        .collect();
    (logs, transactions)
}

/// Each transaction of ledger "main" reads back as given, and `verify` finds no problem.
pub fn check_reads_back(ledgers: &Ledgers, transactions: &[Transaction]) {
    for tx in transactions {
        assert_eq!(&ledgers.get_transaction("main", tx.id, None).unwrap(), tx);
    }
    let report = coffer_ledger::verify::verify(ledgers.store().as_ref()).unwrap();
    assert!(report.is_ok(), "{report}");
}

pub fn balance(ledgers: &Ledgers, ledger: &str, address: &str, asset: &str) -> i128 {
    match ledgers.get_account(ledger, address, None) {
        Ok(account) => account
            .volumes
            .get(asset)
            .map(|v| v.balance().unwrap())
            .unwrap_or(0),
        Err(LedgerError::NotFound(_)) => 0,
        Err(err) => panic!("{err}"),
    }
}

fn all_pages<T>(
    mut fetch: impl FnMut(PageRequest) -> coffer_ledger::service::Page<T>,
    page_size: u32,
) -> Vec<T> {
    let mut out = Vec::new();
    let mut page = fetch(PageRequest {
        page_size: Some(page_size),
        cursor: None,
    });
    loop {
        let next = page.next.clone();
        out.append(&mut page.data);
        match next {
            Some(cursor) => {
                page = fetch(PageRequest {
                    page_size: None,
                    cursor: Some(cursor),
                })
            }
            None => return out,
        }
    }
}

pub fn ledger_lifecycle(backend: &dyn Backend) {
    let ledgers = service(backend);
    create_ledger(&ledgers, "main");
    let again = Command::CreateLedger {
        bucket: None,
        metadata: Metadata::new(),
        features: Metadata::new(),
    };
    assert_eq!(
        ledgers
            .write_blocking(Request::new("main", again))
            .unwrap_err(),
        LedgerError::LedgerAlreadyExists("main".into())
    );
    let info = ledgers.ledger("main").unwrap();
    assert_eq!(info.bucket, "main");
    assert_eq!(
        info.features.get("HASH_LOGS").map(String::as_str),
        Some("SYNC")
    );
    assert!(matches!(
        ledgers.ledger("nope"),
        Err(LedgerError::LedgerNotFound(_))
    ));
    // Feature names and values are Formance's; anything else is refused and creates nothing.
    let with_features = |name: &str, pairs: &[(&str, &str)]| {
        let command = Command::CreateLedger {
            bucket: None,
            metadata: Metadata::new(),
            features: meta(pairs),
        };
        match ledgers.write_blocking(Request::new(name, command)) {
            Ok(_) => "created".to_string(),
            Err(err) => err.to_string(),
        }
    };
    for (pairs, expected) in [
        (&[("HASH_LOGS", "NOPE")][..], "HASH_LOGS cannot be \"NOPE\""),
        (&[("MOVES_HISTORY", "")][..], "MOVES_HISTORY cannot be \"\""),
        (&[("WHATEVER", "ON")][..], "unknown feature \"WHATEVER\""),
    ] {
        let got = with_features("featured", pairs);
        assert!(got.contains(expected), "{pairs:?}: {got}");
    }
    assert!(ledgers.reader().get_ledger("featured").unwrap().is_none());
    assert_eq!(
        with_features(
            "featured",
            &[("HASH_LOGS", "DISABLED"), ("MOVES_HISTORY", "OFF")]
        ),
        "created"
    );
    let info = ledgers.ledger("featured").unwrap();
    assert_eq!(
        info.features.get("MOVES_HISTORY").map(String::as_str),
        Some("OFF")
    );
    assert_eq!(info.features.len(), 5);
    let update = Command::UpdateLedgerMetadata {
        metadata: meta(&[("team", "payments"), ("tier", "1")]),
    };
    ledgers
        .write_blocking(Request::new("main", update))
        .unwrap();
    ledgers
        .write_blocking(Request::new(
            "main",
            Command::DeleteLedgerMetadata { key: "tier".into() },
        ))
        .unwrap();
    assert_eq!(
        ledgers.ledger_fresh("main").unwrap().metadata,
        meta(&[("team", "payments")])
    );
    for name in ["b", "a", "c"] {
        create_ledger(&ledgers, name);
    }
    let names: Vec<String> = all_pages(
        |page| ledgers.list_ledgers(Default::default(), &page).unwrap(),
        2,
    )
    .into_iter()
    .map(|l| l.name)
    .collect();
    assert_eq!(names, ["a", "b", "c", "featured", "main"]);
    let unknown = ledgers.write_blocking(Request::new(
        "ghost",
        Command::CreateTransaction(new_tx(vec![posting("world", "a", 1, "USD")])),
    ));
    assert_eq!(
        unknown.unwrap_err(),
        LedgerError::LedgerNotFound("ghost".into())
    );
}

pub fn postings_and_volumes(backend: &dyn Backend) {
    let ledgers = service(backend);
    create_ledger(&ledgers, "main");
    let first = commit(
        &ledgers,
        "main",
        new_tx(vec![posting("world", "users:1", 100, "USD/2")]),
    )
    .unwrap();
    assert_eq!(first.id, 1);
    assert_eq!(first.post_commit_volumes["users:1"]["USD/2"].input, 100);
    assert_eq!(first.post_commit_volumes["world"]["USD/2"].output, 100);
    let second = commit(
        &ledgers,
        "main",
        new_tx(vec![
            posting("users:1", "users:2", 30, "USD/2"),
            posting("users:2", "users:3", 30, "USD/2"),
        ]),
    )
    .unwrap();
    assert_eq!(second.id, 2);
    let pre = second.pre_commit_volumes().unwrap();
    assert_eq!(pre["users:1"]["USD/2"].balance().unwrap(), 100);
    assert_eq!(
        second.post_commit_volumes["users:2"]["USD/2"]
            .balance()
            .unwrap(),
        0
    );
    assert_eq!(balance(&ledgers, "main", "users:1", "USD/2"), 70);
    assert_eq!(balance(&ledgers, "main", "users:3", "USD/2"), 30);
    assert_eq!(balance(&ledgers, "main", "world", "USD/2"), -100);

    let err = commit(
        &ledgers,
        "main",
        new_tx(vec![posting("users:1", "users:2", 71, "USD/2")]),
    )
    .unwrap_err();
    assert_eq!(
        err,
        LedgerError::InsufficientFunds {
            account: "users:1".into(),
            asset: "USD/2".into(),
            needed: 71,
            available: 70
        }
    );
    // A failed transaction takes no id and leaves no trace.
    let forced = NewTransaction {
        force: true,
        ..new_tx(vec![posting("users:1", "users:2", 71, "USD/2")])
    };
    assert_eq!(commit(&ledgers, "main", forced).unwrap().id, 3);
    assert_eq!(balance(&ledgers, "main", "users:1", "USD/2"), -1);
    let stored = ledgers.get_transaction("main", 2, None).unwrap();
    assert_eq!(stored.postings, second.postings);
    assert!(matches!(
        ledgers.get_transaction("main", 99, None),
        Err(LedgerError::NotFound(_))
    ));

    // Assets never mix and huge amounts stay exact.
    let huge = i128::MAX / 2;
    commit(
        &ledgers,
        "main",
        new_tx(vec![posting("world", "whale", huge, "BTC/8")]),
    )
    .unwrap();
    commit(
        &ledgers,
        "main",
        new_tx(vec![posting("world", "whale", huge, "BTC/8")]),
    )
    .unwrap();
    assert_eq!(balance(&ledgers, "main", "whale", "BTC/8"), huge * 2);
    let overflow = commit(
        &ledgers,
        "main",
        new_tx(vec![posting("world", "whale", huge, "BTC/8")]),
    )
    .unwrap_err();
    assert_eq!(overflow, LedgerError::Overflow);
    assert_eq!(balance(&ledgers, "main", "whale", "BTC/8"), huge * 2);
    // A read whose sum passes the amount range is the query's overflow (a 400), not a store
    // failure: two whales' balances together.
    let forced = NewTransaction {
        force: true,
        ..new_tx(vec![posting("deep", "whale2", huge * 2, "BTC/8")])
    };
    commit(&ledgers, "main", forced).unwrap();
    let whales = r#"{"$or":[{"$match":{"address":"whale"}},{"$match":{"address":"whale2"}}]}"#;
    let now = Some(Timestamp(i64::MAX / 2));
    for pit in [None, now] {
        assert_eq!(
            ledgers.aggregate_balances("main", Some(whales), pit, false),
            Err(LedgerError::Overflow),
            "pit {pit:?}"
        );
    }
    let both = ledgers
        .aggregate_balances(
            "main",
            Some(r#"{"$match":{"address":"whale2"}}"#),
            None,
            false,
        )
        .unwrap();
    assert_eq!(both["BTC/8"], huge * 2);

    let invalid = commit(
        &ledgers,
        "main",
        new_tx(vec![posting("world", "bad address", 1, "USD")]),
    )
    .unwrap_err();
    assert!(
        matches!(invalid, LedgerError::Validation(ref m) if m.contains("postings[0].destination")),
        "{invalid:?}"
    );
    let negative = commit(
        &ledgers,
        "main",
        new_tx(vec![posting("world", "a", -1, "USD")]),
    )
    .unwrap_err();
    assert!(
        matches!(negative, LedgerError::Validation(ref m) if m.contains("negative")),
        "{negative:?}"
    );
    assert_eq!(
        commit(&ledgers, "main", new_tx(vec![])).unwrap_err(),
        LedgerError::NoPostings
    );
    let verified = coffer_ledger::verify::verify(ledgers.store().as_ref()).unwrap();
    assert!(verified.is_ok(), "{verified}");
}

pub fn scripts(backend: &dyn Backend) {
    let ledgers = service(backend);
    create_ledger(&ledgers, "main");
    commit(
        &ledgers,
        "main",
        new_tx(vec![posting("world", "users:1:main", 500, "USD/2")]),
    )
    .unwrap();
    commit(
        &ledgers,
        "main",
        new_tx(vec![posting("world", "users:1:coupon", 100, "USD/2")]),
    )
    .unwrap();
    let debit = "vars {\n  monetary $amount\n  account $user\n}\n\
        send $amount (\n  source = { @users:1:coupon @users:1:main }\n  destination = @shop\n)\n\
        set_tx_meta(\"kind\", \"debit\")\nset_account_meta(@shop, \"last\", $amount)\n";
    // Asset scaling reads every precision of the base the account holds (not EURO, not a
    // coloured EUR), as in upstream's spec: 4 EUR become 400 EUR/2 through @swap.
    commit(
        &ledgers,
        "main",
        new_tx(vec![
            posting("world", "scaling:src", 99, "EUR"),
            posting("world", "scaling:src", 1, "EUR/2"),
            posting("world", "scaling:src", 1000, "EURO"),
            posting("world", "scaling:src", 1000, "EUR_RED/2"),
        ]),
    )
    .unwrap();
    let scaling = "#![feature(\"experimental-asset-scaling\")]\n\
        send [EUR/2 400] (source = @scaling:src with scaling through @swap destination = @x)\n";
    let scaled = commit(&ledgers, "main", script(scaling, &[])).unwrap();
    assert_eq!(
        scaled.postings,
        [
            posting("scaling:src", "swap", 4, "EUR"),
            posting("swap", "scaling:src", 400, "EUR/2"),
            posting("scaling:src", "x", 400, "EUR/2"),
        ]
    );
    assert_eq!(balance(&ledgers, "main", "scaling:src", "EUR"), 95);
    assert_eq!(balance(&ledgers, "main", "scaling:src", "EUR/2"), 1);
    // Within one batch: a precision the batch itself gave the account counts.
    let group = ledgers
        .write_atomic_blocking(vec![
            Ok(Request::new(
                "main",
                Command::CreateTransaction(new_tx(vec![posting(
                    "world",
                    "scaling:fresh",
                    3,
                    "EUR/1",
                )])),
            )),
            Ok(Request::new(
                "main",
                Command::CreateTransaction(script(
                    &scaling
                        .replace("scaling:src", "scaling:fresh")
                        .replace("EUR/2 400", "EUR/2 30"),
                    &[],
                )),
            )),
        ])
        .unwrap();
    assert!(group.committed, "{:?}", group.results);
    assert_eq!(balance(&ledgers, "main", "scaling:fresh", "EUR/1"), 0);
    assert_eq!(balance(&ledgers, "main", "x", "EUR/2"), 430);
    // What the batch merely looked up (here a later element's postings) is not a balance:
    // the account holds nothing, as it would alone.
    let group = ledgers
        .write_atomic_blocking(vec![
            Ok(Request::new(
                "main",
                Command::CreateTransaction(script(
                    &scaling.replace("scaling:src", "scaling:none"),
                    &[],
                )),
            )),
            Ok(Request::new(
                "main",
                Command::CreateTransaction(new_tx(vec![posting("scaling:none", "w", 1, "EUR/3")])),
            )),
        ])
        .unwrap();
    assert!(!group.committed);
    assert!(
        matches!(&group.results[0], Err(LedgerError::ScriptRuntime { code, .. })
            if *code == "INVALID_UNBOUNDED_ADDRESS_IN_SCALING_ADDRESS"),
        "{:?}",
        group.results
    );
    // After a restart, the precisions come from the store's tables alone.
    ledgers.shutdown();
    drop(ledgers);
    let ledgers = service(backend);
    // Not enough over every precision (95 EUR and 1 EUR/2; EURO and the coloured EUR do not
    // count): refused, nothing written.
    let short = commit(
        &ledgers,
        "main",
        script(&scaling.replace("EUR/2 400", "EUR/2 10000"), &[]),
    )
    .unwrap_err();
    assert!(
        matches!(
            short,
            LedgerError::InsufficientFunds {
                available: 9501,
                ..
            }
        ),
        "{short:?}"
    );
    assert_eq!(balance(&ledgers, "main", "scaling:src", "EUR"), 95);
    // A variable is held to the ledger's own rules for addresses (here, their length).
    let long = "a".repeat(coffer_ledger::types::ADDRESS_BYTES_MAX + 1);
    let refused = commit(
        &ledgers,
        "main",
        script(
            "vars {\n  account $to\n}\nsend [USD/2 1] (\n  source = @world\n  destination = $to\n)\n",
            &[("to", &long)],
        ),
    )
    .unwrap_err();
    assert!(
        matches!(refused, LedgerError::Validation(ref m) if m.contains("invalid account address")),
        "{refused:?}"
    );
    let tx = commit(
        &ledgers,
        "main",
        script(debit, &[("amount", "USD/2 150"), ("user", "users:1")]),
    )
    .unwrap();
    assert_eq!(
        tx.postings,
        vec![
            posting("users:1:coupon", "shop", 100, "USD/2"),
            posting("users:1:main", "shop", 50, "USD/2")
        ]
    );
    assert_eq!(tx.metadata, meta(&[("kind", "debit")]));
    assert_eq!(
        ledgers.get_account("main", "shop", None).unwrap().metadata,
        meta(&[("last", "USD/2 150")])
    );
    assert_eq!(balance(&ledgers, "main", "users:1:main", "USD/2"), 450);

    let too_much = commit(
        &ledgers,
        "main",
        script(debit, &[("amount", "USD/2 451"), ("user", "users:1")]),
    )
    .unwrap_err();
    assert!(
        matches!(too_much, LedgerError::InsufficientFunds { .. }),
        "{too_much:?}"
    );
    let parse = ledgers
        .submit(Request::new(
            "main",
            Command::CreateTransaction(script("send (", &[])),
        ))
        .err()
        .unwrap();
    assert!(matches!(parse, LedgerError::ScriptParse(_)), "{parse:?}");
    let missing = commit(&ledgers, "main", script(debit, &[("user", "users:1")])).unwrap_err();
    assert!(
        matches!(missing, LedgerError::Compilation(_)),
        "{missing:?}"
    );
    let clash = NewTransaction {
        metadata: meta(&[("kind", "other")]),
        ..script(debit, &[("amount", "USD/2 1"), ("user", "users:1")])
    };
    assert_eq!(
        commit(&ledgers, "main", clash).unwrap_err(),
        LedgerError::MetadataOverride("kind".into())
    );

    // meta() reads account metadata, including metadata written earlier in the same batch.
    let set = Command::SaveMetadata {
        target: Target::Account("shop".into()),
        metadata: meta(&[("fee", "users:1:main")]),
    };
    let pending_meta = ledgers.submit(Request::new("main", set)).unwrap();
    let reader = "vars { account $payer = meta(@shop, \"fee\") }\nsend [USD/2 5] ( source = $payer destination = @fees )";
    let pending_tx = ledgers
        .submit(Request::new(
            "main",
            Command::CreateTransaction(script(reader, &[])),
        ))
        .unwrap();
    pending_meta.wait_blocking().unwrap();
    let Outcome::Transaction(fee) = pending_tx.wait_blocking().unwrap().outcome else {
        panic!()
    };
    assert_eq!(
        fee.postings,
        vec![posting("users:1:main", "fees", 5, "USD/2")]
    );
    let verified = coffer_ledger::verify::verify(ledgers.store().as_ref()).unwrap();
    assert!(verified.is_ok(), "{verified}");
}

pub fn idempotency_and_references(backend: &dyn Backend) {
    let ledgers = service(backend);
    create_ledger(&ledgers, "main");
    let request = |amount: i128| {
        Request::new(
            "main",
            Command::CreateTransaction(new_tx(vec![posting("world", "a", amount, "EUR")])),
        )
        .with_idempotency_key("key-1")
    };
    let first = ledgers.write_blocking(request(10)).unwrap();
    assert!(!first.idempotency_hit);
    let again = ledgers.write_blocking(request(10)).unwrap();
    assert!(again.idempotency_hit);
    assert_eq!(again.outcome, first.outcome);
    assert_eq!(
        ledgers.write_blocking(request(11)).unwrap_err(),
        LedgerError::IdempotencyKeyConflict("key-1".into())
    );
    // Two requests with one key in the same batch: one commits, the other replays it.
    let a = ledgers.submit(request_with_key(20, "key-2")).unwrap();
    let b = ledgers.submit(request_with_key(20, "key-2")).unwrap();
    let (a, b) = (a.wait_blocking().unwrap(), b.wait_blocking().unwrap());
    assert_eq!(a.outcome, b.outcome);
    assert!(a.idempotency_hit != b.idempotency_hit);
    assert_eq!(balance(&ledgers, "main", "a", "EUR"), 30);

    let with_reference = |reference: &str| NewTransaction {
        reference: Some(reference.into()),
        ..new_tx(vec![posting("world", "a", 1, "EUR")])
    };
    commit(&ledgers, "main", with_reference("order-1")).unwrap();
    assert_eq!(
        commit(&ledgers, "main", with_reference("order-1")).unwrap_err(),
        LedgerError::DuplicateReference("order-1".into())
    );
    let c = ledgers
        .submit(Request::new(
            "main",
            Command::CreateTransaction(with_reference("order-2")),
        ))
        .unwrap();
    let d = ledgers
        .submit(Request::new(
            "main",
            Command::CreateTransaction(with_reference("order-2")),
        ))
        .unwrap();
    let results = [c.wait_blocking(), d.wait_blocking()];
    assert_eq!(
        results.iter().filter(|r| r.is_ok()).count(),
        1,
        "{results:?}"
    );

    // Replays survive a restart.
    ledgers.shutdown();
    drop(ledgers);
    let ledgers = service(backend);
    let replay = ledgers.write_blocking(request(10)).unwrap();
    assert!(replay.idempotency_hit);
    assert_eq!(replay.outcome, first.outcome);
    assert_eq!(
        ledgers.write_blocking(request(12)).unwrap_err(),
        LedgerError::IdempotencyKeyConflict("key-1".into())
    );
    assert_eq!(
        commit(&ledgers, "main", with_reference("order-1")).unwrap_err(),
        LedgerError::DuplicateReference("order-1".into())
    );

    // A replay answers what the write answered, not the transaction as it is now: changed
    // since (metadata), reverted since; a revert's replay likewise.
    let save = |id: u64| {
        let command = Command::SaveMetadata {
            target: Target::Transaction(id),
            metadata: meta(&[("later", "yes")]),
        };
        ledgers
            .write_blocking(Request::new("main", command))
            .unwrap();
    };
    let revert = || {
        let command = Command::RevertTransaction {
            id: 1,
            force: true,
            at_effective_date: false,
            metadata: Metadata::new(),
        };
        Request::new("main", command).with_idempotency_key("revert-1")
    };
    save(1);
    let reverted = ledgers.write_blocking(revert()).unwrap();
    let Outcome::Transaction(reversal) = &reverted.outcome else {
        panic!("{reverted:?}");
    };
    save(reversal.id);
    let replay = ledgers.write_blocking(request(10)).unwrap();
    assert!(replay.idempotency_hit);
    assert_eq!(replay.outcome, first.outcome);
    let replay = ledgers.write_blocking(revert()).unwrap();
    assert!(replay.idempotency_hit);
    assert_eq!(replay.outcome, reverted.outcome);
}

fn request_with_key(amount: i128, key: &str) -> Request {
    Request::new(
        "main",
        Command::CreateTransaction(new_tx(vec![posting("world", "a", amount, "EUR")])),
    )
    .with_idempotency_key(key)
}

pub fn revert_and_metadata(backend: &dyn Backend) {
    let ledgers = service(backend);
    create_ledger(&ledgers, "main");
    let tx = commit(
        &ledgers,
        "main",
        new_tx(vec![
            posting("world", "a", 100, "USD"),
            posting("a", "b", 60, "USD"),
        ]),
    )
    .unwrap();
    let revert = |id, force| {
        Request::new(
            "main",
            Command::RevertTransaction {
                id,
                force,
                at_effective_date: false,
                metadata: meta(&[("why", "test")]),
            },
        )
    };
    commit(&ledgers, "main", new_tx(vec![posting("b", "c", 60, "USD")])).unwrap();
    // b spent what it would have to give back.
    let err = ledgers.write_blocking(revert(tx.id, false)).unwrap_err();
    assert!(
        matches!(err, LedgerError::InsufficientFunds { ref account, .. } if account == "b"),
        "{err:?}"
    );
    let Outcome::Transaction(reversal) =
        ledgers.write_blocking(revert(tx.id, true)).unwrap().outcome
    else {
        panic!()
    };
    assert_eq!(
        reversal.postings,
        vec![
            posting("b", "a", 60, "USD"),
            posting("a", "world", 100, "USD")
        ]
    );
    assert_eq!(
        reversal
            .metadata
            .get("com.formance.spec/state/reverts")
            .map(String::as_str),
        Some("1")
    );
    assert_eq!(
        reversal.metadata.get("why").map(String::as_str),
        Some("test")
    );
    assert!(ledgers
        .get_transaction("main", tx.id, None)
        .unwrap()
        .reverted_at
        .is_some());
    assert_eq!(
        ledgers.write_blocking(revert(tx.id, true)).unwrap_err(),
        LedgerError::AlreadyReverted(tx.id)
    );
    assert!(matches!(
        ledgers.write_blocking(revert(999, true)),
        Err(LedgerError::NotFound(_))
    ));
    assert_eq!(balance(&ledgers, "main", "b", "USD"), -60);

    let set = |target, pairs: &[(&str, &str)]| {
        Request::new(
            "main",
            Command::SaveMetadata {
                target,
                metadata: meta(pairs),
            },
        )
    };
    ledgers
        .write_blocking(set(Target::Transaction(tx.id), &[("a", "1"), ("b", "2")]))
        .unwrap();
    ledgers
        .write_blocking(Request::new(
            "main",
            Command::DeleteMetadata {
                target: Target::Transaction(tx.id),
                key: "a".into(),
            },
        ))
        .unwrap();
    assert_eq!(
        ledgers
            .get_transaction("main", tx.id, None)
            .unwrap()
            .metadata,
        meta(&[("b", "2")])
    );
    assert!(matches!(
        ledgers.write_blocking(set(Target::Transaction(404), &[("a", "1")])),
        Err(LedgerError::NotFound(_))
    ));
    // Metadata on an unknown account creates it.
    ledgers
        .write_blocking(set(
            Target::Account("merchants:42".into()),
            &[("name", "Bob's")],
        ))
        .unwrap();
    let account = ledgers.get_account("main", "merchants:42", None).unwrap();
    assert_eq!(account.metadata, meta(&[("name", "Bob's")]));
    assert!(account.volumes.is_empty());
    ledgers
        .write_blocking(Request::new(
            "main",
            Command::DeleteMetadata {
                target: Target::Account("merchants:42".into()),
                key: "name".into(),
            },
        ))
        .unwrap();
    assert!(ledgers
        .get_account("main", "merchants:42", None)
        .unwrap()
        .metadata
        .is_empty());
    let missing = Request::new(
        "main",
        Command::DeleteMetadata {
            target: Target::Account("nobody".into()),
            key: "k".into(),
        },
    );
    assert!(matches!(
        ledgers.write_blocking(missing),
        Err(LedgerError::NotFound(_))
    ));

    // Dry runs report without keeping anything.
    let mut dry = Request::new(
        "main",
        Command::CreateTransaction(new_tx(vec![posting("world", "dry", 5, "USD")])),
    );
    dry.dry_run = true;
    let Outcome::Transaction(preview) = ledgers.write_blocking(dry).unwrap().outcome else {
        panic!()
    };
    assert_eq!(preview.post_commit_volumes["dry"]["USD"].input, 5);
    assert!(matches!(
        ledgers.get_account("main", "dry", None),
        Err(LedgerError::NotFound(_))
    ));
    assert!(matches!(
        ledgers.get_transaction("main", preview.id, None),
        Err(LedgerError::NotFound(_))
    ));

    // Every write left one log; the chain verifies.
    let logs = all_pages(
        |page| {
            ledgers
                .list_logs("main", LogsQuery::default(), &page)
                .unwrap()
        },
        3,
    );
    let kinds: Vec<&str> = logs.iter().rev().map(|l| l.kind.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "NEW_TRANSACTION",
            "NEW_TRANSACTION",
            "REVERTED_TRANSACTION",
            "SET_METADATA",
            "DELETE_METADATA",
            "SET_METADATA",
            "DELETE_METADATA"
        ]
    );
    let verified = coffer_ledger::verify::verify(ledgers.store().as_ref()).unwrap();
    assert!(verified.is_ok(), "{verified}");
}

pub fn lists_and_filters(backend: &dyn Backend) {
    let ledgers = service(backend);
    create_ledger(&ledgers, "main");
    let base = Timestamp::parse("2024-01-01T00:00:00Z").unwrap();
    for i in 1..=12i64 {
        let user = format!("users:{}:main", i % 4);
        let tx = NewTransaction {
            timestamp: Some(Timestamp(base.micros() + i * 1_000_000)),
            metadata: meta(&[("parity", if i % 2 == 0 { "even" } else { "odd" })]),
            reference: Some(format!("ref-{i}")),
            ..new_tx(vec![
                posting("world", &user, i as i128 * 10, "USD"),
                posting(&user, "fees", 1, "USD"),
            ])
        };
        commit(&ledgers, "main", tx).unwrap();
    }
    let account_meta = Command::SaveMetadata {
        target: Target::Account("users:1:main".into()),
        metadata: meta(&[("vip", "yes")]),
    };
    ledgers
        .write_blocking(Request::new("main", account_meta))
        .unwrap();
    let revert = Command::RevertTransaction {
        id: 12,
        force: true,
        at_effective_date: true,
        metadata: Metadata::new(),
    };
    ledgers
        .write_blocking(Request::new("main", revert))
        .unwrap();

    let ids = |filter: &str, page_size: u32| -> Vec<u64> {
        let query = TransactionsQuery {
            filter: Some(filter.to_string()),
            ..TransactionsQuery::default()
        };
        all_pages(
            |page| {
                ledgers
                    .list_transactions("main", query.clone(), &page)
                    .unwrap()
            },
            page_size,
        )
        .into_iter()
        .map(|tx| tx.id)
        .collect()
    };
    assert_eq!(ids("{}", 5), (1..=13).rev().collect::<Vec<_>>());
    assert_eq!(
        ids(r#"{"$match":{"account":"users:1:main"}}"#, 2),
        [9, 5, 1]
    );
    assert_eq!(
        ids(r#"{"$match":{"account":"users:0:main"}}"#, 2),
        [13, 12, 8, 4]
    );
    assert_eq!(ids(r#"{"$match":{"destination":"world"}}"#, 2), [13]);
    assert_eq!(ids(r#"{"$match":{"source":"world"}}"#, 5).len(), 12);
    assert_eq!(
        ids(r#"{"$match":{"destination":"users::main"}}"#, 100),
        (1..=13).rev().collect::<Vec<_>>()
    );
    assert_eq!(ids(r#"{"$match":{"account":"users:"}}"#, 100).len(), 13);
    assert_eq!(
        ids(r#"{"$match":{"metadata[parity]":"even"}}"#, 4),
        [12, 10, 8, 6, 4, 2]
    );
    assert_eq!(
        ids(r#"{"$and":[{"$gte":{"id":3}},{"$lt":{"id":6}}]}"#, 1),
        [5, 4, 3]
    );
    assert_eq!(
        ids(
            r#"{"$or":[{"$match":{"reference":"ref-2"}},{"$in":{"id":[7,8]}}]}"#,
            10
        ),
        [8, 7, 2]
    );
    assert_eq!(ids(r#"{"$match":{"reverted":true}}"#, 10), [12]);
    assert_eq!(
        ids(r#"{"$not":{"$exists":{"metadata":"parity"}}}"#, 10),
        [13]
    );
    // `$not` keeps what its condition cannot match: the revert has no reference and no parity.
    assert_eq!(
        ids(r#"{"$not":{"$match":{"reference":"ref-2"}}}"#, 100),
        [13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 1]
    );
    assert_eq!(
        ids(r#"{"$not":{"$match":{"metadata[parity]":"even"}}}"#, 100),
        [13, 11, 9, 7, 5, 3, 1]
    );
    assert_eq!(
        ids(r#"{"$lte":{"timestamp":"2024-01-01T00:00:03Z"}}"#, 10),
        [3, 2, 1]
    );
    assert_eq!(
        ledgers
            .count_transactions(
                "main",
                Some(r#"{"$match":{"metadata[parity]":"odd"}}"#),
                None
            )
            .unwrap(),
        6
    );

    // Cursors walk back as well as forward.
    let query = TransactionsQuery::default();
    let first = ledgers
        .list_transactions(
            "main",
            query.clone(),
            &PageRequest {
                page_size: Some(5),
                cursor: None,
            },
        )
        .unwrap();
    let second = ledgers
        .list_transactions(
            "main",
            query.clone(),
            &PageRequest {
                page_size: None,
                cursor: first.next.clone(),
            },
        )
        .unwrap();
    let back = ledgers
        .list_transactions(
            "main",
            query.clone(),
            &PageRequest {
                page_size: None,
                cursor: second.previous.clone(),
            },
        )
        .unwrap();
    assert_eq!(
        back.data.iter().map(|t| t.id).collect::<Vec<_>>(),
        first.data.iter().map(|t| t.id).collect::<Vec<_>>()
    );
    let oldest = TransactionsQuery {
        effective_order: true,
        ascending: true,
        ..TransactionsQuery::default()
    };
    let by_time = ledgers
        .list_transactions(
            "main",
            oldest,
            &PageRequest {
                page_size: Some(3),
                cursor: None,
            },
        )
        .unwrap();
    // The reversal of 12 is dated like 12, so effective order puts it after 12.
    assert_eq!(
        by_time.data.iter().map(|t| t.id).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    let bad = ledgers.list_transactions(
        "main",
        TransactionsQuery::default(),
        &PageRequest {
            page_size: None,
            cursor: Some("garbage".into()),
        },
    );
    assert!(matches!(bad, Err(LedgerError::Validation(_))));

    let addresses = |filter: &str| -> Vec<String> {
        let query = AccountsQuery {
            filter: Some(filter.to_string()),
            ..AccountsQuery::default()
        };
        all_pages(
            |page| ledgers.list_accounts("main", query.clone(), &page).unwrap(),
            2,
        )
        .into_iter()
        .map(|a| a.address)
        .collect()
    };
    assert_eq!(
        addresses("{}"),
        [
            "fees",
            "users:0:main",
            "users:1:main",
            "users:2:main",
            "users:3:main",
            "world"
        ]
    );
    assert_eq!(
        addresses(r#"{"$match":{"address":"users::main"}}"#).len(),
        4
    );
    assert_eq!(
        addresses(r#"{"$match":{"metadata[vip]":"yes"}}"#),
        ["users:1:main"]
    );
    assert_eq!(
        addresses(r#"{"$not":{"$match":{"metadata[vip]":"yes"}}}"#),
        [
            "fees",
            "users:0:main",
            "users:2:main",
            "users:3:main",
            "world"
        ]
    );
    // users:k receives 10*i for each i ≡ k (mod 4) and pays 1 each time; 12 was reverted.
    assert_eq!(
        addresses(r#"{"$gt":{"balance[USD]":200}}"#),
        ["users:3:main"]
    );
    assert_eq!(addresses(r#"{"$gte":{"balance[USD]":118}}"#).len(), 4);
    assert_eq!(addresses(r#"{"$lt":{"balance":0}}"#), ["world"]);
    assert_eq!(addresses(r#"{"$match":{"balance[USD]":11}}"#), ["fees"]);
    assert_eq!(
        ledgers
            .count_accounts("main", Some(r#"{"$match":{"address":"users:"}}"#), None)
            .unwrap(),
        4
    );
    let with_volumes = AccountsQuery {
        with_volumes: true,
        ..AccountsQuery::default()
    };
    let accounts = ledgers
        .list_accounts("main", with_volumes, &PageRequest::default())
        .unwrap();
    let fees = accounts.data.iter().find(|a| a.address == "fees").unwrap();
    assert_eq!(fees.volumes["USD"].input, 12);

    let all = ledgers
        .aggregate_balances("main", None, None, false)
        .unwrap();
    assert_eq!(all.get("USD"), Some(&0));
    let users = ledgers
        .aggregate_balances(
            "main",
            Some(r#"{"$match":{"address":"users:"}}"#),
            None,
            false,
        )
        .unwrap();
    let world = balance(&ledgers, "main", "world", "USD");
    assert_eq!(users["USD"] + 11, -world);

    let volumes = all_pages(
        |page| {
            ledgers
                .list_volumes("main", VolumesQuery::default(), &page)
                .unwrap()
        },
        4,
    );
    assert_eq!(volumes.len(), 6);
    assert_eq!(
        volumes
            .iter()
            .map(|v| v.volumes.balance().unwrap())
            .sum::<i128>(),
        0
    );
    let filtered = VolumesQuery {
        filter: Some(r#"{"$match":{"address":"fees"}}"#.into()),
        ..VolumesQuery::default()
    };
    assert_eq!(
        ledgers
            .list_volumes("main", filtered, &PageRequest::default())
            .unwrap()
            .data
            .len(),
        1
    );
}

/// `groupBy`: volumes summed per address prefix, filtered per account first, paginated.
pub fn grouped_volumes(backend: &dyn Backend) {
    let ledgers = service(backend);
    create_ledger(&ledgers, "main");
    let big = 1i128 << 100;
    for (source, destination, amount, asset) in [
        ("world", "users:1:main", 100, "USD"),
        ("world", "users:1:main", 5, "EUR"),
        ("world", "users:1:bonus", 20, "USD"),
        ("world", "users:2:main", 7, "USD"),
        ("users:2:main", "shops:1", 3, "USD"),
        ("world", "users:3:main", big, "BIG"),
        ("world", "users:3:spare", big, "BIG"),
    ] {
        commit(
            &ledgers,
            "main",
            new_tx(vec![posting(source, destination, amount, asset)]),
        )
        .unwrap();
    }
    let grouped = |segments: u32, filter: Option<&str>, descending: bool, page_size: u32| {
        let query = VolumesQuery {
            group_by: Some(segments),
            filter: filter.map(str::to_string),
            descending,
            ..VolumesQuery::default()
        };
        all_pages(
            |page| ledgers.list_volumes("main", query.clone(), &page).unwrap(),
            page_size,
        )
        .into_iter()
        .map(|row| {
            (
                row.address,
                row.asset,
                row.volumes.input,
                row.volumes.output,
            )
        })
        .collect::<Vec<_>>()
    };
    let row = |address: &str, asset: &str, input: i128, output: i128| {
        (address.to_string(), asset.to_string(), input, output)
    };
    let by_root = vec![
        row("shops", "USD", 3, 0),
        row("users", "BIG", 2 * big, 0),
        row("users", "EUR", 5, 0),
        row("users", "USD", 127, 3),
        row("world", "BIG", 0, 2 * big),
        row("world", "EUR", 0, 5),
        row("world", "USD", 0, 127),
    ];
    assert_eq!(grouped(1, None, false, 100), by_root);
    // Page by page, and backwards.
    assert_eq!(grouped(1, None, false, 2), by_root);
    let mut reversed = by_root.clone();
    reversed.reverse();
    assert_eq!(grouped(1, None, true, 3), reversed);
    assert_eq!(
        grouped(2, Some(r#"{"$match":{"address":"users:"}}"#), false, 100),
        vec![
            row("users:1", "EUR", 5, 0),
            row("users:1", "USD", 120, 0),
            row("users:2", "USD", 7, 3),
            row("users:3", "BIG", 2 * big, 0),
        ]
    );
    // Fewer segments than the group: the whole address.
    assert_eq!(
        grouped(5, Some(r#"{"$match":{"address":"shops:"}}"#), false, 100),
        vec![row("shops:1", "USD", 3, 0)]
    );
    assert_eq!(
        grouped(
            u32::MAX,
            Some(r#"{"$match":{"address":"shops:"}}"#),
            false,
            100
        ),
        vec![row("shops:1", "USD", 3, 0)]
    );
    // The filter picks accounts before their volumes are summed.
    assert_eq!(
        grouped(1, Some(r#"{"$match":{"address":"users:1:"}}"#), false, 100),
        vec![row("users", "EUR", 5, 0), row("users", "USD", 120, 0)]
    );
}

/// Atomic groups (bulk `atomic=true`): all committed together, or none; later elements see
/// earlier ones; a failure rolls back everything, idempotency keys included.
pub fn atomic_groups(backend: &dyn Backend) {
    let ledgers = service(backend);
    create_ledger(&ledgers, "main");
    let transfer = |source: &str, destination: &str, amount: i128| {
        Ok(Request::new(
            "main",
            Command::CreateTransaction(new_tx(vec![posting(source, destination, amount, "USD")])),
        ))
    };
    let logs_before = ledgers
        .list_logs("main", LogsQuery::default(), &PageRequest::default())
        .unwrap()
        .data
        .len();
    let failed = ledgers
        .write_atomic_blocking(vec![
            transfer("world", "a", 10).map(|r: Request| r.with_idempotency_key("group-1")),
            transfer("a", "b", 4),
            transfer("a", "b", 7),
            transfer("world", "c", 1),
        ])
        .unwrap();
    assert!(!failed.committed);
    assert_eq!(failed.results.len(), 3, "stops at the failure");
    assert!(failed.results[..2].iter().all(Result::is_ok));
    assert!(matches!(
        failed.results[2],
        Err(LedgerError::InsufficientFunds { .. })
    ));
    assert_eq!(balance(&ledgers, "main", "a", "USD"), 0);
    assert_eq!(
        ledgers
            .list_logs("main", LogsQuery::default(), &PageRequest::default())
            .unwrap()
            .data
            .len(),
        logs_before
    );
    // An element refused before the writer fails the group at its place.
    let refused = ledgers
        .write_atomic_blocking(vec![
            transfer("world", "a", 10),
            Err(LedgerError::Validation("refused".into())),
        ])
        .unwrap();
    assert!(!refused.committed);
    assert_eq!(refused.results.len(), 2);
    assert_eq!(balance(&ledgers, "main", "a", "USD"), 0);

    let done = ledgers
        .write_atomic_blocking(vec![
            transfer("world", "a", 10).map(|r: Request| r.with_idempotency_key("group-1")),
            transfer("a", "b", 4),
            transfer("a", "b", 6),
        ])
        .unwrap();
    assert!(done.committed);
    let ids: Vec<u64> = done
        .results
        .iter()
        .map(|result| match &result.as_ref().unwrap().outcome {
            Outcome::Transaction(tx) => tx.id,
            other => panic!("unexpected outcome {other:?}"),
        })
        .collect();
    assert_eq!(ids, [1, 2, 3], "rolled-back groups use no ids");
    assert!(!done.results[0].as_ref().unwrap().idempotency_hit);
    assert_eq!(balance(&ledgers, "main", "a", "USD"), 0);
    assert_eq!(balance(&ledgers, "main", "b", "USD"), 10);
    // Plain writes still batch around groups.
    commit(
        &ledgers,
        "main",
        new_tx(vec![posting("world", "c", 5, "USD")]),
    )
    .unwrap();
    assert_eq!(balance(&ledgers, "main", "c", "USD"), 5);
    let verified = coffer_ledger::verify::verify(ledgers.store().as_ref()).unwrap();
    assert!(verified.is_ok(), "{verified}");
}

pub fn point_in_time(backend: &dyn Backend) {
    let ledgers = service(backend);
    create_ledger(&ledgers, "main");
    let at = |text: &str| Timestamp::parse(text).unwrap();
    let dated = |ts: &str, amount: i128| NewTransaction {
        timestamp: Some(at(ts)),
        ..new_tx(vec![posting("world", "a", amount, "USD")])
    };
    commit(&ledgers, "main", dated("2024-03-01T00:00:00Z", 5)).unwrap();
    commit(&ledgers, "main", dated("2024-01-01T00:00:00Z", 7)).unwrap();
    commit(&ledgers, "main", dated("2024-05-01T00:00:00Z", 11)).unwrap();
    let inserted = Timestamp::now();
    let pit = Some(at("2024-04-01T00:00:00Z"));
    let account = ledgers.get_account("main", "a", pit).unwrap();
    // By their dates, two of them were in effect then; by insertion, none was written yet.
    assert_eq!(account.effective_volumes["USD"].input, 12);
    assert!(account.volumes.is_empty(), "{:?}", account.volumes);
    assert_eq!(account.first_usage, at("2024-01-01T00:00:00Z"));
    let account = ledgers.get_account("main", "a", Some(inserted)).unwrap();
    assert_eq!(account.volumes["USD"].input, 23);
    assert_eq!(account.effective_volumes["USD"].input, 23);
    let only_a = Some(r#"{"$match":{"address":"a"}}"#);
    let sums = |pit, by_insertion| {
        ledgers
            .aggregate_balances("main", only_a, pit, by_insertion)
            .unwrap()
            .get("USD")
            .copied()
    };
    assert_eq!(sums(pit, true), None);
    assert_eq!(sums(Some(inserted), true), Some(23));
    assert_eq!(sums(pit, false), Some(12));
    let inserted_in = |start: Option<Timestamp>, end: Option<Timestamp>| {
        let query = VolumesQuery {
            start_time: start.map(Timestamp::micros),
            end_time: end.map(Timestamp::micros),
            insertion_date: true,
            filter: only_a.map(str::to_string),
            ..VolumesQuery::default()
        };
        let rows = ledgers
            .list_volumes("main", query, &PageRequest::default())
            .unwrap()
            .data;
        rows.first().map(|row| row.volumes.input)
    };
    assert_eq!(inserted_in(None, pit), None);
    assert_eq!(inserted_in(None, Some(inserted)), Some(23));
    assert_eq!(
        inserted_in(Some(Timestamp(inserted.micros() + 1)), None),
        None
    );
    let now = ledgers.get_account("main", "a", None).unwrap();
    assert_eq!(now.volumes["USD"].input, 23);
    assert_eq!(now.effective_volumes, now.volumes);
    assert!(matches!(
        ledgers.get_account("main", "a", Some(at("2023-01-01T00:00:00Z"))),
        Err(LedgerError::NotFound(_))
    ));
    let query = TransactionsQuery {
        pit: pit.map(|p| p.micros()),
        ..TransactionsQuery::default()
    };
    let ids: Vec<u64> = ledgers
        .list_transactions("main", query, &PageRequest::default())
        .unwrap()
        .data
        .iter()
        .map(|t| t.id)
        .collect();
    assert_eq!(ids, [2, 1]);
    assert_eq!(
        ledgers
            .aggregate_balances("main", Some(r#"{"$match":{"address":"a"}}"#), pit, false)
            .unwrap()["USD"],
        12
    );
    let rich = ledgers
        .count_accounts("main", Some(r#"{"$gte":{"balance[USD]":12}}"#), pit)
        .unwrap();
    assert_eq!(rich, 1);
    let richer = ledgers
        .count_accounts("main", Some(r#"{"$gt":{"balance[USD]":12}}"#), pit)
        .unwrap();
    assert_eq!(richer, 0);
    let window = VolumesQuery {
        start_time: Some(at("2024-02-01T00:00:00Z").micros()),
        end_time: Some(at("2024-06-01T00:00:00Z").micros()),
        filter: Some(r#"{"$match":{"address":"a"}}"#.into()),
        ..VolumesQuery::default()
    };
    let rows = ledgers
        .list_volumes("main", window.clone(), &PageRequest::default())
        .unwrap()
        .data;
    assert_eq!(rows[0].volumes.input, 16);
    // The window's start is inclusive, as in Formance.
    let from_the_first = VolumesQuery {
        start_time: Some(at("2024-03-01T00:00:00Z").micros()),
        ..window
    };
    let rows = ledgers
        .list_volumes("main", from_the_first, &PageRequest::default())
        .unwrap()
        .data;
    assert_eq!(rows[0].volumes.input, 16);
    // "Not reverted at the pit" keeps the transactions never reverted.
    create_ledger(&ledgers, "reverts");
    let kept = commit(&ledgers, "reverts", dated("2024-01-01T00:00:00Z", 1)).unwrap();
    let reverted = commit(&ledgers, "reverts", dated("2024-01-02T00:00:00Z", 2)).unwrap();
    let revert = Command::RevertTransaction {
        id: reverted.id,
        force: false,
        at_effective_date: false,
        metadata: Metadata::new(),
    };
    ledgers
        .write_blocking(Request::new("reverts", revert))
        .unwrap();
    for (filter, expected) in [
        (
            r#"{"$not":{"$match":{"reverted":true}}}"#,
            vec![reverted.id + 1, kept.id],
        ),
        (
            r#"{"$match":{"reverted":false}}"#,
            vec![reverted.id + 1, kept.id],
        ),
        (r#"{"$match":{"reverted":true}}"#, vec![reverted.id]),
        (
            r#"{"$not":{"$match":{"reverted":false}}}"#,
            vec![reverted.id],
        ),
    ] {
        let query = TransactionsQuery {
            pit: Some(at("2100-01-01T00:00:00Z").micros()),
            filter: Some(filter.into()),
            ..TransactionsQuery::default()
        };
        let ids: Vec<u64> = ledgers
            .list_transactions("reverts", query, &PageRequest::default())
            .unwrap()
            .data
            .iter()
            .map(|t| t.id)
            .collect();
        assert_eq!(ids, expected, "{filter}");
    }
    // Balances summed per account: sums of inputs and of outputs apart would pass 128 bits.
    create_ledger(&ledgers, "big");
    let huge = 10i128.pow(38);
    commit(
        &ledgers,
        "big",
        new_tx(vec![posting("world", "u", huge, "COIN")]),
    )
    .unwrap();
    commit(
        &ledgers,
        "big",
        new_tx(vec![posting("u", "v", huge, "COIN")]),
    )
    .unwrap();
    for pit in [None, Some(at("2100-01-01T00:00:00Z"))] {
        let sums = ledgers.aggregate_balances("big", None, pit, false).unwrap();
        assert_eq!(sums["COIN"], 0, "pit {pit:?}");
        let users = ledgers
            .aggregate_balances("big", Some(r#"{"$match":{"address":"u"}}"#), pit, false)
            .unwrap();
        assert_eq!(users["COIN"], 0, "pit {pit:?}");
    }
    // First usage follows backdated transactions whichever asset they move (the engine caches
    // a first usage with each balance; one asset's entry may lag behind another's).
    let moved = |ts: &str, asset: &str| NewTransaction {
        timestamp: Some(at(ts)),
        ..new_tx(vec![posting("world", "b", 1, asset)])
    };
    let first_usage =
        |ledgers: &Ledgers| ledgers.get_account("main", "b", None).unwrap().first_usage;
    commit(&ledgers, "main", moved("2024-03-01T00:00:00Z", "USD")).unwrap();
    commit(&ledgers, "main", moved("2024-03-02T00:00:00Z", "EUR")).unwrap();
    commit(&ledgers, "main", moved("2024-01-01T00:00:00Z", "EUR")).unwrap();
    assert_eq!(first_usage(&ledgers), at("2024-01-01T00:00:00Z"));
    commit(&ledgers, "main", moved("2024-02-01T00:00:00Z", "USD")).unwrap();
    assert_eq!(
        first_usage(&ledgers),
        at("2024-01-01T00:00:00Z"),
        "kept the earlier"
    );
    commit(&ledgers, "main", moved("2023-06-01T00:00:00Z", "USD")).unwrap();
    assert_eq!(first_usage(&ledgers), at("2023-06-01T00:00:00Z"));
}

/// A point-in-time read shows, and filters on, the metadata accounts and transactions had then;
/// an import of the logs gives the same history (its changes are dated by their logs).
pub fn metadata_history(backend: &dyn Backend) {
    let ledgers = service(backend);
    create_ledger(&ledgers, "main");
    create_ledger(&ledgers, "copy");
    // Each instant lies strictly between the batches before and after it.
    let instant = || {
        std::thread::sleep(std::time::Duration::from_millis(3));
        let now = Timestamp::now();
        std::thread::sleep(std::time::Duration::from_millis(3));
        Some(now)
    };
    let save = |target: Target, pairs: &[(&str, &str)]| Command::SaveMetadata {
        target,
        metadata: meta(pairs),
    };
    let write = |command: Command| {
        ledgers
            .write_blocking(Request::new("main", command))
            .unwrap();
    };
    let before_all = instant();
    let tx = commit(
        &ledgers,
        "main",
        NewTransaction {
            metadata: meta(&[("v", "0")]),
            ..new_tx(vec![posting("world", "a", 5, "USD")])
        },
    )
    .unwrap();
    let created = instant();
    write(save(Target::Account("a".into()), &[("tier", "gold")]));
    write(save(Target::Transaction(tx.id), &[("v", "1")]));
    let first_change = instant();
    // Two changes of one account in one commit: a read before it sees the state before both.
    let group = ledgers
        .write_atomic_blocking(vec![
            Ok(Request::new(
                "main",
                save(Target::Account("a".into()), &[("tier", "silver")]),
            )),
            Ok(Request::new(
                "main",
                save(Target::Account("a".into()), &[("tier", "platinum")]),
            )),
            Ok(Request::new(
                "main",
                Command::DeleteMetadata {
                    target: Target::Transaction(tx.id),
                    key: "v".into(),
                },
            )),
        ])
        .unwrap();
    assert!(group.committed);
    let second_change = instant();
    // An account's metadata set by the transaction that first uses it.
    commit(
        &ledgers,
        "main",
        NewTransaction {
            account_metadata: BTreeMap::from([("b".to_string(), meta(&[("tier", "new")]))]),
            ..new_tx(vec![posting("world", "b", 1, "USD")])
        },
    )
    .unwrap();
    let after_all = instant();
    let logs = ledgers.scan_logs("main", 0, 1000).unwrap();
    ledgers
        .write_blocking(Request::new("copy", Command::ImportLogs { logs }))
        .unwrap();

    // (pit, a's tier, transaction 1's `v`, b's tier); `None` where it did not exist yet.
    type Then<'a> = (
        Option<Timestamp>,
        Option<&'a str>,
        Option<&'a str>,
        Option<&'a str>,
    );
    let expected: [Then; 6] = [
        (before_all, None, None, None),
        (created, Some(""), Some("0"), None),
        (first_change, Some("gold"), Some("1"), None),
        (second_change, Some("platinum"), Some(""), None),
        // No change after it: the current metadata, without looking up any history.
        (after_all, Some("platinum"), Some(""), Some("new")),
        (None, Some("platinum"), Some(""), Some("new")),
    ];
    let check = |ledger: &str,
                 pit: Option<Timestamp>,
                 a: Option<&str>,
                 v: Option<&str>,
                 b: Option<&str>| {
        let context = format!("ledger {ledger}, pit {pit:?}");
        let tier = |address: &str| match ledgers.get_account(ledger, address, pit) {
            Ok(account) => Some(account.metadata.get("tier").cloned().unwrap_or_default()),
            Err(LedgerError::NotFound(_)) => None,
            Err(other) => panic!("{context}: {other}"),
        };
        assert_eq!(tier("a").as_deref(), a, "{context}: a");
        assert_eq!(tier("b").as_deref(), b, "{context}: b");
        let listed: Vec<(String, String)> = ledgers
            .list_accounts(
                ledger,
                AccountsQuery {
                    pit: pit.map(|p| p.micros()),
                    ..AccountsQuery::default()
                },
                &PageRequest::default(),
            )
            .unwrap()
            .data
            .into_iter()
            .filter(|account| account.address != "world")
            .map(|account| {
                let tier = account.metadata.get("tier").cloned().unwrap_or_default();
                (account.address, tier)
            })
            .collect();
        let mut expected_list = Vec::new();
        for (address, tier) in [("a", a), ("b", b)] {
            if let Some(tier) = tier {
                expected_list.push((address.to_string(), tier.to_string()));
            }
        }
        assert_eq!(listed, expected_list, "{context}: listed");
        if let Some(tier) = a.filter(|t| !t.is_empty()) {
            let filter = format!(r#"{{"$match":{{"metadata[tier]":"{tier}"}}}}"#);
            assert_eq!(
                ledgers.count_accounts(ledger, Some(&filter), pit).unwrap(),
                1,
                "{context}: {filter}"
            );
            let gold = ledgers
                .count_accounts(ledger, Some(r#"{"$match":{"metadata[tier]":"gold"}}"#), pit)
                .unwrap();
            assert_eq!(gold, u64::from(tier == "gold"), "{context}: gold");
        }
        let value = |tx: &Transaction| tx.metadata.get("v").cloned().unwrap_or_default();
        match ledgers.get_transaction(ledger, tx.id, pit) {
            Ok(got) => assert_eq!(Some(value(&got).as_str()), v, "{context}: get"),
            Err(LedgerError::NotFound(_)) => assert_eq!(v, None, "{context}: get"),
            Err(other) => panic!("{context}: {other}"),
        }
        let listed = ledgers
            .list_transactions(
                ledger,
                TransactionsQuery {
                    pit: pit.map(|p| p.micros()),
                    filter: Some(format!(r#"{{"$match":{{"id":{}}}}}"#, tx.id)),
                    ..TransactionsQuery::default()
                },
                &PageRequest::default(),
            )
            .unwrap()
            .data;
        assert_eq!(
            listed.first().map(value).as_deref(),
            v,
            "{context}: listed transaction"
        );
        let ones = ledgers
            .count_transactions(ledger, Some(r#"{"$match":{"metadata[v]":"1"}}"#), pit)
            .unwrap();
        assert_eq!(ones, u64::from(v == Some("1")), "{context}: v = 1");
    };
    for (pit, a, v, b) in expected {
        check("main", pit, a, v, b);
    }
    // The copy's rows are dated by the logs, so its history is the same (but for `before_all`,
    // when the copy's accounts did not exist either).
    for (pit, a, v, b) in expected {
        check("copy", pit, a, v, b);
    }
}

pub fn export_import(backend: &dyn Backend) {
    let ledgers = service(backend);
    create_ledger(&ledgers, "source");
    create_ledger(&ledgers, "copy");
    commit(
        &ledgers,
        "source",
        new_tx(vec![posting("world", "a", 50, "USD")]),
    )
    .unwrap();
    let with_key = Request::new(
        "source",
        Command::CreateTransaction(new_tx(vec![posting("a", "b", 20, "USD")])),
    )
    .with_idempotency_key("ik");
    ledgers.write_blocking(with_key).unwrap();
    let set = Command::SaveMetadata {
        target: Target::Account("b".into()),
        metadata: meta(&[("k", "v")]),
    };
    ledgers.write_blocking(Request::new("source", set)).unwrap();
    let revert = Command::RevertTransaction {
        id: 2,
        force: false,
        at_effective_date: false,
        metadata: Metadata::new(),
    };
    ledgers
        .write_blocking(Request::new("source", revert))
        .unwrap();
    let logs = ledgers.scan_logs("source", 0, 1000).unwrap();
    assert_eq!(logs.len(), 4);
    let imported = ledgers
        .write_blocking(Request::new(
            "copy",
            Command::ImportLogs { logs: logs.clone() },
        ))
        .unwrap();
    assert_eq!(imported.outcome, Outcome::Imported(4));
    let copied = ledgers.scan_logs("copy", 0, 1000).unwrap();
    assert_eq!(
        copied.iter().map(|l| l.hash).collect::<Vec<_>>(),
        logs.iter().map(|l| l.hash).collect::<Vec<_>>()
    );
    assert_eq!(balance(&ledgers, "copy", "a", "USD"), 50);
    assert_eq!(
        ledgers.get_account("copy", "b", None).unwrap().metadata,
        meta(&[("k", "v")])
    );
    assert!(ledgers
        .get_transaction("copy", 2, None)
        .unwrap()
        .reverted_at
        .is_some());
    // Imported rows are dated by their logs, not by the import: logs dated a day back, with
    // their hashes left for the import to compute.
    create_ledger(&ledgers, "dated");
    let day_micros = 86_400_000_000;
    let mut dated = logs.clone();
    for log in &mut dated {
        log.date = Timestamp(log.date.micros() - day_micros);
        log.hash = [0; 32];
    }
    ledgers
        .write_blocking(Request::new(
            "dated",
            Command::ImportLogs {
                logs: dated.clone(),
            },
        ))
        .unwrap();
    let a = ledgers.get_account("dated", "a", None).unwrap();
    assert_eq!(a.insertion_date, dated[0].date);
    assert_eq!(a.updated_at, dated[0].date);
    let b = ledgers.get_account("dated", "b", None).unwrap();
    assert_eq!(b.insertion_date, dated[1].date);
    assert_eq!(
        b.updated_at, dated[2].date,
        "b's metadata was set by the third log"
    );
    let first = ledgers.get_transaction("dated", 1, None).unwrap();
    assert_eq!(first.inserted_at, dated[0].date);
    // The idempotency key came along.
    let replay = Request::new(
        "copy",
        Command::CreateTransaction(new_tx(vec![posting("a", "b", 20, "USD")])),
    )
    .with_idempotency_key("ik");
    assert!(ledgers.write_blocking(replay).unwrap().idempotency_hit);
    // Importing again conflicts (ids must continue the ledger) and changes nothing.
    let again = ledgers
        .write_blocking(Request::new(
            "copy",
            Command::ImportLogs { logs: logs.clone() },
        ))
        .unwrap_err();
    assert!(matches!(again, LedgerError::Import(_)), "{again:?}");
    // A tampered log breaks the chain.
    create_ledger(&ledgers, "tampered");
    let mut bad = logs.clone();
    bad[1].data = bad[1].data.replace("20", "21");
    let err = ledgers
        .write_blocking(Request::new("tampered", Command::ImportLogs { logs: bad }))
        .unwrap_err();
    assert!(
        matches!(err, LedgerError::Import(ref m) if m.contains("hash")),
        "{err:?}"
    );
    assert!(
        ledgers.scan_logs("tampered", 0, 10).unwrap().is_empty(),
        "a failed import leaves nothing"
    );
    // An imported transaction's reference, or a log's idempotency key, the ledger already has:
    // refused, and the ledger goes on (stores may write transactions behind their commit, where
    // a duplicate would fail for ever).
    create_ledger(&ledgers, "dup");
    let mut first = new_tx(vec![posting("world", "a", 5, "USD")]);
    first.reference = Some("R".into());
    let first = Request::new("dup", Command::CreateTransaction(first)).with_idempotency_key("K");
    ledgers.write_blocking(first).unwrap();
    for (source, with_reference) in [("refsrc", true), ("keysrc", false)] {
        create_ledger(&ledgers, source);
        commit(
            &ledgers,
            source,
            new_tx(vec![posting("world", "a", 1, "USD")]),
        )
        .unwrap();
        let mut second = new_tx(vec![posting("world", "a", 2, "USD")]);
        let mut request = Request::new(source, Command::CreateTransaction(second.clone()));
        if with_reference {
            second.reference = Some("R".into());
            request = Request::new(source, Command::CreateTransaction(second));
        } else {
            request = request.with_idempotency_key("K");
        }
        ledgers.write_blocking(request).unwrap();
        let mut logs = ledgers.scan_logs(source, 1, 10).unwrap();
        assert_eq!(logs.len(), 1);
        logs[0].hash = [0; 32]; // no hash: the chain is not checked
        let err = ledgers
            .write_blocking(Request::new("dup", Command::ImportLogs { logs }))
            .unwrap_err();
        let expected = if with_reference {
            "reference"
        } else {
            "idempotency key"
        };
        assert!(
            matches!(err, LedgerError::Import(ref m) if m.contains(expected)),
            "{err:?}"
        );
    }
    // A log written before the fingerprint was made explicit holds the older one: a retry of
    // that write still replays it (the log comes in by import here, as an older store's would
    // be read).
    create_ledger(&ledgers, "older-src");
    create_ledger(&ledgers, "older");
    let write = || {
        Request::new(
            "older",
            Command::CreateTransaction(new_tx(vec![posting("world", "a", 3, "USD")])),
        )
        .with_idempotency_key("old-key")
    };
    let mut source = write();
    source.ledger = "older-src".into();
    ledgers.write_blocking(source).unwrap();
    let mut logs = ledgers.scan_logs("older-src", 0, 10).unwrap();
    logs[0].idempotency_hash = Some(write().legacy_fingerprint());
    logs[0].hash = [0; 32];
    ledgers
        .write_blocking(Request::new("older", Command::ImportLogs { logs }))
        .unwrap();
    let replay = ledgers.write_blocking(write()).unwrap();
    assert!(replay.idempotency_hit);
    let mut other = write();
    other.command = Command::CreateTransaction(new_tx(vec![posting("world", "a", 4, "USD")]));
    assert_eq!(
        ledgers.write_blocking(other).unwrap_err(),
        LedgerError::IdempotencyKeyConflict("old-key".into())
    );
    // A caller's input fingerprint: a retry replays whatever command it derives now, and the
    // key is matched on that fingerprint alone (a different input conflicts).
    let derived = |amount: i128, fingerprint: u8| {
        Request::new(
            "older",
            Command::CreateTransaction(new_tx(vec![posting("world", "a", amount, "USD")])),
        )
        .with_idempotency_key("input-key")
        .with_input_fingerprint([fingerprint; 32])
    };
    assert!(
        !ledgers
            .write_blocking(derived(5, 1))
            .unwrap()
            .idempotency_hit
    );
    assert!(
        ledgers
            .write_blocking(derived(6, 1))
            .unwrap()
            .idempotency_hit
    );
    assert_eq!(
        ledgers.write_blocking(derived(5, 2)).unwrap_err(),
        LedgerError::IdempotencyKeyConflict("input-key".into())
    );
    // A key stored with the command's own fingerprint (before its caller sent one) still
    // replays the same command.
    let plain = || {
        let mut request = derived(7, 0);
        request.idempotency_key = Some("plain-key".into());
        request.input_fingerprint = None;
        request
    };
    assert!(!ledgers.write_blocking(plain()).unwrap().idempotency_hit);
    let mut upgraded = plain();
    upgraded.input_fingerprint = Some([9; 32]);
    assert!(ledgers.write_blocking(upgraded).unwrap().idempotency_hit);
    let mut changed = derived(8, 9);
    changed.idempotency_key = Some("plain-key".into());
    assert_eq!(
        ledgers.write_blocking(changed).unwrap_err(),
        LedgerError::IdempotencyKeyConflict("plain-key".into())
    );
    let a = ledgers.find_account("older", "a", true).unwrap().unwrap();
    assert_eq!(
        a.volumes["USD"].input, 15,
        "3 imported, 5 and 7 written once"
    );
    commit(
        &ledgers,
        "dup",
        new_tx(vec![posting("world", "a", 1, "USD")]),
    )
    .unwrap();
    let listed = ledgers
        .list_transactions("dup", TransactionsQuery::default(), &PageRequest::default())
        .unwrap();
    assert_eq!(listed.data.len(), 2);
    // Logs that ask for what the API refuses are refused as import errors, and leave nothing:
    // metadata on an address that is not one, a target read against its `targetType`, a
    // transaction reverted twice.
    create_ledger(&ledgers, "revsrc");
    commit(
        &ledgers,
        "revsrc",
        new_tx(vec![posting("world", "a", 10, "USD")]),
    )
    .unwrap();
    let revert = Command::RevertTransaction {
        id: 1,
        force: false,
        at_effective_date: false,
        metadata: Metadata::new(),
    };
    ledgers
        .write_blocking(Request::new("revsrc", revert))
        .unwrap();
    let mut source = ledgers.scan_logs("revsrc", 0, 10).unwrap();
    for log in &mut source {
        log.hash = [0; 32]; // no hash: the chain is not checked
    }
    let mut twice = source[1].clone();
    twice.id = 3;
    let mut data: serde_json::Value = serde_json::from_str(&twice.data).unwrap();
    data["transaction"]["id"] = 3.into();
    twice.data = data.to_string();
    let metadata_log = |kind: coffer_ledger::log::LogType, data: serde_json::Value| {
        vec![coffer_ledger::log::Log {
            kind,
            data: data.to_string(),
            ..source[0].clone()
        }]
    };
    let mut bad_account_metadata = source[0].clone();
    let mut data: serde_json::Value = serde_json::from_str(&bad_account_metadata.data).unwrap();
    data["accountMetadata"] = serde_json::json!({"a::b": {"k": "v"}});
    bad_account_metadata.data = data.to_string();
    use coffer_ledger::log::LogType::{DeleteMetadata, SetMetadata};
    let cases = [
        (
            metadata_log(
                SetMetadata,
                serde_json::json!({"targetType": "ACCOUNT", "targetId": "a::b", "metadata": {"k": "v"}}),
            ),
            "targetId: invalid address",
        ),
        (
            metadata_log(
                DeleteMetadata,
                serde_json::json!({"targetType": "ACCOUNT", "targetId": "", "key": "k"}),
            ),
            "targetId: invalid address",
        ),
        (
            metadata_log(
                SetMetadata,
                serde_json::json!({"targetType": "NOPE", "targetId": "a", "metadata": {"k": "v"}}),
            ),
            "targetType: expected",
        ),
        (
            metadata_log(
                SetMetadata,
                serde_json::json!({"targetType": "TRANSACTION", "targetId": "1", "metadata": {"k": "v"}}),
            ),
            "expected a transaction id",
        ),
        (
            metadata_log(
                SetMetadata,
                serde_json::json!({"targetType": "ACCOUNT", "targetId": 1, "metadata": {"k": "v"}}),
            ),
            "targetId: invalid address",
        ),
        (
            vec![bad_account_metadata],
            "accountMetadata: invalid address",
        ),
        (
            vec![source[0].clone(), source[1].clone(), twice],
            "transaction 1 is already reverted",
        ),
    ];
    for (index, (logs, expected)) in cases.into_iter().enumerate() {
        let name = format!("refused-{index}");
        create_ledger(&ledgers, &name);
        let err = ledgers
            .write_blocking(Request::new(&name, Command::ImportLogs { logs }))
            .unwrap_err();
        assert!(
            matches!(err, LedgerError::Import(ref m) if m.contains(expected)),
            "case {index}: {err:?} does not say {expected:?}"
        );
        assert!(
            ledgers.scan_logs(&name, 0, 10).unwrap().is_empty(),
            "case {index}"
        );
    }
    // The two logs alone import as they were written.
    create_ledger(&ledgers, "revcopy");
    ledgers
        .write_blocking(Request::new(
            "revcopy",
            Command::ImportLogs {
                logs: source.clone(),
            },
        ))
        .unwrap();
    assert_eq!(balance(&ledgers, "revcopy", "a", "USD"), 0);
    let verified = coffer_ledger::verify::verify(ledgers.store().as_ref()).unwrap();
    assert!(verified.is_ok(), "{verified}");
}

/// Acknowledged writes survive a restart, and the caches do not outlive it.
pub fn restart(backend: &dyn Backend) {
    let ledgers = service(backend);
    create_ledger(&ledgers, "main");
    let mut acknowledged = Vec::new();
    for i in 0..50 {
        acknowledged.push(
            commit(
                &ledgers,
                "main",
                new_tx(vec![posting("world", &format!("u:{}", i % 7), 3, "USD")]),
            )
            .unwrap(),
        );
    }
    ledgers.shutdown();
    drop(ledgers);
    let ledgers = service(backend);
    for tx in &acknowledged {
        assert_eq!(&ledgers.get_transaction("main", tx.id, None).unwrap(), tx);
    }
    let next = commit(
        &ledgers,
        "main",
        new_tx(vec![posting("u:0", "u:1", 3, "USD")]),
    )
    .unwrap();
    assert_eq!(next.id, 51);
    assert_eq!(balance(&ledgers, "main", "u:0", "USD"), 8 * 3 - 3);
    let verified = coffer_ledger::verify::verify(ledgers.store().as_ref()).unwrap();
    assert!(verified.is_ok(), "{verified}");
}

/// Stores whose commits return before they are durable: no answer and no read comes before
/// the sync that makes them durable.
fn durable_answers(backend: &dyn Backend) {
    let store = backend.open();
    let Some(durability) = store.durability() else {
        return; // commits are durable when they return
    };
    let ledgers = Arc::new(Ledgers::open(store.clone(), config()).expect("engine starts"));
    create_ledger(&ledgers, "main");
    assert_eq!(durability.unsynced_commits(), 0);
    for i in 0..20 {
        let tx = new_tx(vec![posting("world", &format!("u:{i}"), 5, "USD")]);
        commit(&ledgers, "main", tx).unwrap();
        assert_eq!(durability.unsynced_commits(), 0, "answered before the sync");
    }
    // Reads while other threads write: each read returns only after the sync.
    let writers: Vec<_> = (0..4)
        .map(|t| {
            let ledgers = ledgers.clone();
            std::thread::spawn(move || {
                for i in 0..50 {
                    let tx = new_tx(vec![posting("world", &format!("w:{t}:{i}"), 1, "USD")]);
                    commit(&ledgers, "main", tx).unwrap();
                }
            })
        })
        .collect();
    let ledger = store.reader().get_ledger("main").unwrap().expect("ledger");
    for _ in 0..50 {
        let head = store.reader().ledger_head(ledger.id).unwrap();
        assert!(head.next_tx_id >= 21);
    }
    for writer in writers {
        writer.join().unwrap();
    }
    assert_eq!(durability.unsynced_commits(), 0);
}

/// Runs every scenario as its own test. `$open` builds a fresh [`Backend`].
#[macro_export]
macro_rules! store_suite {
    ($open:expr) => {
        $crate::store_suite!(@tests $open;
            ledger_lifecycle, postings_and_volumes, scripts, idempotency_and_references,
            revert_and_metadata, lists_and_filters, grouped_volumes, atomic_groups, point_in_time,
            metadata_history, metadata_history_random, transactions_at_random_instants,
            effective_volumes_random, export_import, restart, concurrent_transfers, random_workload, durable_answers,
            transactions_of_every_age, batches_bounded_by_postings);
    };
    (@tests $open:expr; $($name:ident),*) => {
        $(
            #[test]
            fn $name() {
                let backend = $open;
                $crate::run(stringify!($name), &backend);
            }
        )*
    };
}

/// Writes that read earlier transactions (references, reverts, metadata) see them whatever
/// their age: committed by the batch just before, written by the store since, or long written
/// and then changed. (Stores may write transactions behind their commits and keep what they have
/// not written in memory; this crosses each of those states.)
pub fn transactions_of_every_age(backend: &dyn Backend) {
    let ledgers = service(backend);
    create_ledger(&ledgers, "main");
    let with_reference = |reference: &str, amount| {
        let mut tx = new_tx(vec![posting("world", "a", amount, "USD")]);
        tx.reference = Some(reference.to_string());
        tx
    };
    let revert = |id| {
        Request::new(
            "main",
            Command::RevertTransaction {
                id,
                force: true,
                at_effective_date: false,
                metadata: Metadata::new(),
            },
        )
    };
    let set = |id, pairs: &[(&str, &str)]| {
        Request::new(
            "main",
            Command::SaveMetadata {
                target: Target::Transaction(id),
                metadata: meta(pairs),
            },
        )
    };
    // Young: each write follows the one it depends on at once.
    let young = commit(&ledgers, "main", with_reference("young", 10)).unwrap();
    assert!(matches!(
        commit(&ledgers, "main", with_reference("young", 1)),
        Err(LedgerError::DuplicateReference(_))
    ));
    ledgers
        .write_blocking(set(young.id, &[("k", "1")]))
        .unwrap();
    ledgers.write_blocking(revert(young.id)).unwrap();
    assert!(matches!(
        ledgers.write_blocking(revert(young.id)),
        Err(LedgerError::AlreadyReverted(_))
    ));
    // Old: read back (which waits for whatever the store writes behind), then many commits
    // after it, so that nothing of it is held back any more.
    let old = commit(&ledgers, "main", with_reference("old", 20)).unwrap();
    assert_eq!(ledgers.get_transaction("main", old.id, None).unwrap(), old);
    for i in 0..3_000 {
        commit(
            &ledgers,
            "main",
            new_tx(vec![posting("world", &format!("u:{}", i % 7), 1, "USD")]),
        )
        .unwrap();
    }
    ledgers.get_transaction("main", 1, None).unwrap();
    for _ in 0..50 {
        commit(
            &ledgers,
            "main",
            new_tx(vec![posting("world", "u:x", 1, "USD")]),
        )
        .unwrap();
    }
    assert!(matches!(
        commit(&ledgers, "main", with_reference("old", 1)),
        Err(LedgerError::DuplicateReference(_))
    ));
    ledgers.write_blocking(set(old.id, &[("k", "2")])).unwrap();
    // Changed, then changed again before the store wrote the first change.
    ledgers.write_blocking(set(old.id, &[("j", "3")])).unwrap();
    ledgers.write_blocking(revert(old.id)).unwrap();
    assert!(matches!(
        ledgers.write_blocking(revert(old.id)),
        Err(LedgerError::AlreadyReverted(_))
    ));
    let check = |ledgers: &Ledgers| {
        let young_now = ledgers.get_transaction("main", young.id, None).unwrap();
        assert_eq!(young_now.metadata, meta(&[("k", "1")]));
        assert!(young_now.reverted_at.is_some());
        let old_now = ledgers.get_transaction("main", old.id, None).unwrap();
        assert_eq!(old_now.metadata, meta(&[("k", "2"), ("j", "3")]));
        assert!(old_now.reverted_at.is_some());
        assert_eq!(balance(ledgers, "main", "a", "USD"), 0);
    };
    check(&ledgers);
    ledgers.shutdown();
    drop(ledgers);
    let ledgers = service(backend);
    check(&ledgers);
    for reference in ["young", "old"] {
        assert!(matches!(
            commit(&ledgers, "main", with_reference(reference, 1)),
            Err(LedgerError::DuplicateReference(_))
        ));
    }
    let verified = coffer_ledger::verify::verify(ledgers.store().as_ref()).unwrap();
    assert!(verified.is_ok(), "{verified}");
}

pub fn run(name: &str, backend: &dyn Backend) {
    match name {
        "ledger_lifecycle" => ledger_lifecycle(backend),
        "postings_and_volumes" => postings_and_volumes(backend),
        "scripts" => scripts(backend),
        "idempotency_and_references" => idempotency_and_references(backend),
        "revert_and_metadata" => revert_and_metadata(backend),
        "lists_and_filters" => lists_and_filters(backend),
        "grouped_volumes" => grouped_volumes(backend),
        "atomic_groups" => atomic_groups(backend),
        "point_in_time" => point_in_time(backend),
        "metadata_history" => metadata_history(backend),
        "metadata_history_random" => workload::metadata_history_random(backend),
        "transactions_at_random_instants" => workload::transactions_at_random_instants(backend),
        "effective_volumes_random" => workload::effective_volumes_random(backend),
        "export_import" => export_import(backend),
        "restart" => restart(backend),
        "concurrent_transfers" => workload::concurrent_transfers(backend),
        "random_workload" => workload::random_workload(backend),
        "durable_answers" => durable_answers(backend),
        "transactions_of_every_age" => transactions_of_every_age(backend),
        "batches_bounded_by_postings" => batching::batches_bounded_by_postings(backend),
        other => panic!("unknown scenario {other}"),
    }
}

/// A store an earlier Coffer wrote keeps no time order for its ledgers: `forget` sets every
/// ledger's back to NULL, as it was then. Reopened, each ledger has it again, as its
/// transactions give it (one with backdated transactions, one in order, one with none), and
/// point-in-time lists rest on it.
pub fn time_order_filled_in_on_open(backend: &dyn Backend, forget: &dyn Fn()) {
    use coffer_ledger::store::TimeOrder;
    use coffer_ledger::Timestamp;

    let at = |seconds: i64| Timestamp(1_735_689_600_000_000 + seconds * 1_000_000);
    let dated = |seconds: i64| NewTransaction {
        timestamp: Some(at(seconds)),
        ..new_tx(vec![posting("world", "a", 1, "USD")])
    };
    let ledgers = service(backend);
    for name in ["backdated", "ordered", "empty"] {
        create_ledger(&ledgers, name);
    }
    for seconds in [5, 3, 7, 7, 1, 9, 8] {
        commit(&ledgers, "backdated", dated(seconds)).unwrap();
    }
    for seconds in [1, 2, 2, 4] {
        commit(&ledgers, "ordered", dated(seconds)).unwrap();
    }
    let heads = |ledgers: &Ledgers| -> Vec<Option<TimeOrder>> {
        ["backdated", "ordered", "empty"]
            .iter()
            .map(|name| {
                let id = ledgers.ledger(name).unwrap().id;
                ledgers.reader().ledger_head(id).unwrap().time_order
            })
            .collect()
    };
    let kept = heads(&ledgers);
    assert_eq!(
        kept,
        [
            Some(TimeOrder {
                latest: Some(at(9)),
                backdated_until: 7
            }),
            Some(TimeOrder {
                latest: Some(at(4)),
                backdated_until: 0
            }),
            Some(TimeOrder::EMPTY),
        ]
    );
    ledgers.shutdown();
    drop(ledgers);
    forget();
    let ledgers = service(backend);
    assert_eq!(heads(&ledgers), kept, "filled in again on open");
    let query = TransactionsQuery {
        pit: Some(at(4).micros()),
        ..TransactionsQuery::default()
    };
    let ids: Vec<u64> = ledgers
        .list_transactions("backdated", query, &PageRequest::default())
        .unwrap()
        .data
        .iter()
        .map(|t| t.id)
        .collect();
    assert_eq!(ids, [5, 2]);
    // Kept from there on.
    commit(&ledgers, "ordered", dated(3)).unwrap();
    let id = ledgers.ledger("ordered").unwrap().id;
    assert_eq!(
        ledgers.reader().ledger_head(id).unwrap().time_order,
        Some(TimeOrder {
            latest: Some(at(4)),
            backdated_until: 5
        })
    );
    let report = coffer_ledger::verify::verify(ledgers.store().as_ref()).unwrap();
    assert!(report.is_ok(), "{report}");
}
