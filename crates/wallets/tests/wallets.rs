//! Behaviour of the wallets against a real ledger on a SQLite store in a temporary directory.

use std::collections::BTreeMap;
use std::sync::Arc;

use coffer_ledger::service::{PageRequest, TransactionsQuery};
use coffer_ledger::{EngineConfig, Ledgers, Metadata, Timestamp};
use coffer_store_sqlite::SqliteStore;
use coffer_wallets::*;

mod support;

const LEDGER: &str = "wallets-002";
const MINUTE_MICROS: i64 = 60_000_000;

struct Fixture {
    _dir: tempfile::TempDir,
    wallets: Wallets,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("temporary directory");
    let store = SqliteStore::open(&dir.path().join("coffer.db")).expect("store opens");
    let ledgers = Arc::new(Ledgers::open(store, EngineConfig::default()).expect("engine starts"));
    let wallets = Wallets::open(ledgers, LEDGER).expect("wallets open");
    Fixture { _dir: dir, wallets }
}

fn meta(pairs: &[(&str, &str)]) -> Metadata {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn usd(amount: i128) -> Monetary {
    Monetary {
        asset: "USD".into(),
        amount,
    }
}

fn page(size: u32) -> PageRequest {
    PageRequest {
        page_size: Some(size),
        cursor: None,
    }
}

impl Fixture {
    fn ledgers(&self) -> &Ledgers {
        self.wallets.ledgers()
    }

    fn wallet(&self, name: &str) -> Wallet {
        let request = CreateWallet {
            name: name.into(),
            metadata: Metadata::new(),
        };
        self.wallets.create_wallet(&request, None).unwrap()
    }

    fn balance(&self, wallet: &Wallet, name: &str, expires_at: Option<Timestamp>, priority: i64) {
        let request = CreateBalance {
            name: name.into(),
            expires_at,
            priority,
        };
        self.wallets
            .create_balance(&wallet.id, &request, None)
            .unwrap();
    }

    fn credit(&self, wallet: &Wallet, balance: Option<&str>, amount: i128) {
        self.wallets
            .credit(&credit(wallet, balance, amount), None)
            .unwrap();
    }

    /// Balance of a wallet's balance in USD, read from the raw ledger.
    fn usd_of(&self, address: &str) -> i128 {
        support::usd_of(&self.wallets, address)
    }

    fn usd_in(&self, wallet: &Wallet, balance: &str) -> i128 {
        self.usd_of(&chart::balance_account(&wallet.id, balance))
    }

    fn transaction_count(&self) -> usize {
        let query = TransactionsQuery::default();
        self.ledgers()
            .list_transactions(LEDGER, query, &page(100))
            .unwrap()
            .data
            .len()
    }
}

fn credit(wallet: &Wallet, balance: Option<&str>, amount: i128) -> Credit {
    Credit {
        wallet_id: wallet.id.clone(),
        amount: usd(amount),
        sources: vec![],
        balance: balance.map(str::to_string),
        reference: None,
        timestamp: None,
        metadata: Metadata::new(),
    }
}

fn debit(wallet: &Wallet, amount: i128, sources: DebitSources) -> Debit {
    Debit {
        wallet_id: wallet.id.clone(),
        amount: usd(amount),
        pending: false,
        metadata: Metadata::new(),
        description: String::new(),
        destination: None,
        sources,
        reference: None,
        timestamp: None,
    }
}

fn named(names: &[&str]) -> DebitSources {
    DebitSources::Named(names.iter().map(|n| n.to_string()).collect())
}

fn pending(wallet: &Wallet, amount: i128, sources: DebitSources) -> Debit {
    Debit {
        pending: true,
        ..debit(wallet, amount, sources)
    }
}

#[track_caller]
fn check_validation<T: std::fmt::Debug>(result: Result<T, WalletError>, needle: &str) {
    match result {
        Err(WalletError::Validation(message)) => {
            assert!(
                message.contains(needle),
                "{message:?} does not mention {needle:?}"
            )
        }
        other => panic!("expected a validation error mentioning {needle:?}, got {other:?}"),
    }
}

#[test]
fn open_creates_the_ledger_once() {
    let f = fixture();
    assert_eq!(f.ledgers().ledger(LEDGER).unwrap().name, LEDGER);
    let again = Wallets::open(f.wallets.ledgers().clone(), LEDGER).unwrap();
    assert_eq!(again.ledger(), LEDGER);
}

#[test]
fn create_get_update_wallet() {
    let f = fixture();
    let request = CreateWallet {
        name: "alice".into(),
        metadata: meta(&[("team", "a")]),
    };
    let created = f.wallets.create_wallet(&request, None).unwrap();
    assert!(uuid::Uuid::parse_str(&created.id).is_ok());
    assert_eq!(
        (created.name.as_str(), created.ledger.as_str()),
        ("alice", LEDGER)
    );
    assert!(created.main_assets.is_empty());

    f.credit(&created, None, 42);
    let read = f.wallets.get_wallet(&created.id).unwrap();
    assert_eq!(read.metadata, meta(&[("team", "a")]));
    assert_eq!(read.created_at, created.created_at);
    assert_eq!(read.main_assets.get("USD"), Some(&42));

    f.wallets
        .update_wallet(&created.id, &meta(&[("team", "b"), ("tier", "gold")]), None)
        .unwrap();
    f.wallets
        .update_wallet(&created.id, &meta(&[("city", "Paris")]), None)
        .unwrap();
    let read = f.wallets.get_wallet(&created.id).unwrap();
    assert_eq!(
        read.metadata,
        meta(&[("city", "Paris"), ("team", "b"), ("tier", "gold")])
    );
    assert_eq!(read.name, "alice");

    let unknown = uuid::Uuid::new_v4().to_string();
    assert!(matches!(
        f.wallets.get_wallet(&unknown),
        Err(WalletError::NotFound(_))
    ));
    assert!(matches!(
        f.wallets.get_wallet("not a:segment"),
        Err(WalletError::NotFound(_))
    ));
    let patch = f
        .wallets
        .update_wallet(&unknown, &meta(&[("a", "b")]), None);
    assert!(matches!(patch, Err(WalletError::NotFound(_))));
}

#[test]
fn raw_ledger_accounts_and_metadata_follow_formance() {
    let f = fixture();
    let request = CreateWallet {
        name: "w".into(),
        metadata: meta(&[("k", "v")]),
    };
    let wallet = f.wallets.create_wallet(&request, None).unwrap();
    let bare_id = wallet.id.replace('-', "");
    let main = f
        .ledgers()
        .get_account(LEDGER, &format!("wallets:{bare_id}:main"), None)
        .unwrap();
    let mut expected = meta(&[
        ("wallets/spec/type", "wallets.primary"),
        ("wallets/name", "w"),
        ("wallets/id", &wallet.id),
        ("wallets/balances", "true"),
        ("wallets/balances/name", "main"),
        ("wallets/custom_data_k", "v"),
    ]);
    expected.insert("wallets/createdAt".into(), wallet.created_at.to_rfc3339());
    assert_eq!(main.metadata, expected);

    let expires_at = Timestamp::parse("2099-01-02T03:04:05Z").unwrap();
    f.balance(&wallet, "coupon", Some(expires_at), 7);
    let coupon = f
        .ledgers()
        .get_account(LEDGER, &format!("wallets:{bare_id}:coupon"), None)
        .unwrap();
    assert_eq!(
        coupon.metadata,
        meta(&[
            ("wallets/id", &wallet.id),
            ("wallets/balances", "true"),
            ("wallets/balances/name", "coupon"),
            ("wallets/balances/expiresAt", "2099-01-02T03:04:05Z"),
            ("wallets/balances/priority", "7"),
        ])
    );

    f.credit(&wallet, None, 100);
    let mut request = pending(&wallet, 30, DebitSources::Main);
    request.metadata = meta(&[("order", "42")]);
    request.description = "a hold".into();
    let other = f.wallet("other");
    f.balance(&other, "b", None, 0);
    let other_bare = other.id.replace('-', "");
    request.destination = Some(Subject::Wallet {
        id: other.id.clone(),
        balance: Some("b".into()),
    });
    let hold = f.wallets.debit(&request, None).unwrap().expect("a hold");
    let hold_address = format!("wallets:holds:{}", hold.id.replace('-', ""));
    let account = f
        .ledgers()
        .get_account(LEDGER, &hold_address, None)
        .unwrap();
    assert_eq!(
        account.metadata,
        meta(&[
            ("wallets/spec/type", "wallets.hold"),
            ("wallets/holds/wallet_id", &wallet.id),
            ("wallets/holds/id", &hold.id),
            ("wallets/holds/asset", "USD"),
            ("wallets/holds/description", "a hold"),
            (
                "wallets/holds/subject",
                &format!(
                    r#"{{"balance":"b","identifier":"{}","type":"WALLET"}}"#,
                    other.id
                )
            ),
            (
                "destination",
                &format!(r#"{{"type":"account","value":"wallets:{other_bare}:b"}}"#)
            ),
            (
                "void_destination",
                &format!(r#"{{"type":"account","value":"wallets:{bare_id}:main"}}"#)
            ),
            ("wallets/custom_data_order", "42"),
        ])
    );
    let query = TransactionsQuery::default();
    let txs = f
        .ledgers()
        .list_transactions(LEDGER, query, &page(10))
        .unwrap()
        .data;
    assert_eq!(
        txs[0].metadata,
        meta(&[
            ("wallets/transaction", "true"),
            ("wallets/custom_data_order", "42")
        ])
    );
    assert_eq!(txs[0].postings.len(), 1);
    assert_eq!(txs[0].postings[0].source, format!("wallets:{bare_id}:main"));
    assert_eq!(txs[0].postings[0].destination, hold_address);
    assert_eq!(txs[1].postings[0].source, "world");
}

#[test]
fn list_wallets_filters_and_pages() {
    let f = fixture();
    let mut ids = Vec::new();
    for (name, team) in [("a", "red"), ("b", "blue"), ("c", "red"), ("d", "red")] {
        let request = CreateWallet {
            name: name.into(),
            metadata: meta(&[("team", team)]),
        };
        ids.push(f.wallets.create_wallet(&request, None).unwrap().id);
    }
    let reds = ListWallets {
        metadata: meta(&[("team", "red")]),
        ..Default::default()
    };
    let first = f.wallets.list_wallets(&reds, &page(2)).unwrap();
    assert_eq!(
        (first.data.len(), first.has_more, first.page_size),
        (2, true, 2)
    );
    let cursor = PageRequest {
        page_size: None,
        cursor: first.next.clone(),
    };
    let second = f
        .wallets
        .list_wallets(&ListWallets::default(), &cursor)
        .unwrap();
    assert_eq!((second.data.len(), second.has_more), (1, false));
    let mut names: Vec<String> = first
        .data
        .iter()
        .chain(&second.data)
        .map(|w| w.name.clone())
        .collect();
    names.sort();
    assert_eq!(names, ["a", "c", "d"]);
    assert!(first.data.iter().all(|w| w.main_assets.is_empty()));

    let by_name = ListWallets {
        name: Some("b".into()),
        ..Default::default()
    };
    let found = f.wallets.list_wallets(&by_name, &page(15)).unwrap();
    assert_eq!(
        found.data.iter().map(|w| w.id.as_str()).collect::<Vec<_>>(),
        [ids[1].as_str()]
    );

    f.wallets
        .credit(
            &Credit {
                wallet_id: ids[1].clone(),
                ..credit(&found.data[0], None, 5)
            },
            None,
        )
        .unwrap();
    let expanded = ListWallets {
        name: Some("b".into()),
        expand_balances: true,
        ..Default::default()
    };
    let found = f.wallets.list_wallets(&expanded, &page(15)).unwrap();
    assert_eq!(found.data[0].main_assets.get("USD"), Some(&5));

    let all = f
        .wallets
        .list_wallets(&ListWallets::default(), &page(100))
        .unwrap();
    assert_eq!(all.data.len(), 4, "balances and holds are not wallets");
    check_validation(
        f.wallets.list_wallets(
            &ListWallets::default(),
            &PageRequest {
                page_size: None,
                cursor: Some("bad".into()),
            },
        ),
        "cursor",
    );
}

#[test]
fn balances_rules() {
    let f = fixture();
    let wallet = f.wallet("w");
    let expires_at = Timestamp(Timestamp::now().0 + MINUTE_MICROS);
    f.balance(&wallet, "coupon", Some(expires_at), 0);
    f.balance(&wallet, "bonus", None, 10);
    let create = |name: &str| {
        let request = CreateBalance {
            name: name.into(),
            expires_at: None,
            priority: 0,
        };
        f.wallets.create_balance(&wallet.id, &request, None)
    };
    check_validation(create("main"), "reserved");
    check_validation(create("coupon"), "already exists");
    check_validation(create("bad name"), "invalid balance name");
    check_validation(create("a:b"), "invalid balance name");
    let request = CreateBalance {
        name: "x".into(),
        expires_at: None,
        priority: 0,
    };
    check_validation(
        f.wallets.create_balance("nope", &request, None),
        "not found",
    );

    let listed = f
        .wallets
        .list_balances(&wallet.id, &Metadata::new(), &page(15))
        .unwrap();
    let names: Vec<(&str, Option<Timestamp>, i64)> = listed
        .data
        .iter()
        .map(|b| (b.name.as_str(), b.expires_at, b.priority))
        .collect();
    assert_eq!(
        names,
        [
            ("bonus", None, 10),
            ("coupon", Some(expires_at), 0),
            ("main", None, 0)
        ]
    );

    f.credit(&wallet, Some("bonus"), 70);
    let bonus = f.wallets.get_balance(&wallet.id, "bonus").unwrap();
    assert_eq!(
        (bonus.balance.priority, bonus.assets.get("USD")),
        (10, Some(&70))
    );
    assert!(matches!(
        f.wallets.get_balance(&wallet.id, "nope"),
        Err(WalletError::NotFound(_))
    ));
    assert!(matches!(
        f.wallets.get_balance(&wallet.id, "bo-nus"),
        Err(WalletError::NotFound(_))
    ));
    assert!(matches!(
        f.wallets.get_balance("nope", "bonus"),
        Err(WalletError::NotFound(_))
    ));
    assert_eq!(
        f.wallets
            .get_balance(&wallet.id, "main")
            .unwrap()
            .assets
            .len(),
        0
    );
}

#[test]
fn credit_rules() {
    let f = fixture();
    let wallet = f.wallet("w");
    let other = f.wallet("other");
    f.credit(&wallet, None, 100);
    assert_eq!(f.usd_in(&wallet, "main"), 100);

    f.balance(&other, "savings", None, 0);
    let mut from_wallet = credit(&other, Some("savings"), 60);
    from_wallet.sources = vec![Subject::Wallet {
        id: wallet.id.clone(),
        balance: None,
    }];
    from_wallet.reference = Some("ref-1".into());
    from_wallet.metadata = meta(&[("why", "gift")]);
    f.wallets.credit(&from_wallet, None).unwrap();
    assert_eq!(
        (f.usd_in(&wallet, "main"), f.usd_in(&other, "savings")),
        (40, 60)
    );
    check_validation(f.wallets.credit(&from_wallet, None), "reference");

    let mut underfunded = credit(&other, None, 500);
    underfunded.sources = vec![Subject::Account("treasury:eur".into())];
    assert_eq!(
        f.wallets.credit(&underfunded, None),
        Err(WalletError::InsufficientFund)
    );

    check_validation(
        f.wallets.credit(&credit(&wallet, Some("nope"), 1), None),
        "balance",
    );
    check_validation(
        f.wallets.credit(&credit(&wallet, None, -1), None),
        "amount.amount",
    );
    let mut bad_asset = credit(&wallet, None, 1);
    bad_asset.amount.asset = "usd".into();
    check_validation(f.wallets.credit(&bad_asset, None), "amount.asset");
    let mut bad_source = credit(&wallet, None, 1);
    bad_source.sources = vec![Subject::Account("not valid".into())];
    check_validation(f.wallets.credit(&bad_source, None), "sources[0].identifier");
    let mut unknown = credit(&wallet, None, 1);
    unknown.wallet_id = uuid::Uuid::new_v4().to_string();
    check_validation(f.wallets.credit(&unknown, None), "not found");

    let mut dated = credit(&wallet, None, 1);
    dated.timestamp = Timestamp::parse("2020-01-01T00:00:00Z");
    f.wallets.credit(&dated, None).unwrap();
    let txs = f
        .wallets
        .list_transactions(Some(&wallet.id), &page(1))
        .unwrap();
    assert_eq!(txs.data[0].timestamp.to_rfc3339(), "2020-01-01T00:00:00Z");
}

#[test]
fn debit_from_main_explicit_and_wildcard() {
    let f = fixture();
    let wallet = f.wallet("w");
    let now = Timestamp::now().0;
    f.balance(&wallet, "late", Some(Timestamp(now + 2 * MINUTE_MICROS)), 0);
    f.balance(&wallet, "soon", Some(Timestamp(now + MINUTE_MICROS)), 0);
    f.balance(&wallet, "gone", Some(Timestamp(now - MINUTE_MICROS)), 0);
    f.balance(&wallet, "p10", None, 10);
    f.balance(&wallet, "p1", None, 1);
    for name in [
        None,
        Some("late"),
        Some("soon"),
        Some("gone"),
        Some("p10"),
        Some("p1"),
    ] {
        f.credit(&wallet, name, 10);
    }

    f.wallets
        .debit(&debit(&wallet, 4, DebitSources::Main), None)
        .unwrap();
    assert_eq!(f.usd_in(&wallet, "main"), 6);
    assert_eq!(f.usd_of("world"), -60 + 4);

    f.wallets
        .debit(&debit(&wallet, 15, named(&["p10", "p1"])), None)
        .unwrap();
    assert_eq!((f.usd_in(&wallet, "p10"), f.usd_in(&wallet, "p1")), (0, 5));

    // Expiring first (earliest first), then by priority, main last; "gone" is expired.
    f.wallets
        .debit(&debit(&wallet, 27, DebitSources::All), None)
        .unwrap();
    let left: Vec<i128> = ["soon", "late", "p1", "main", "gone"]
        .iter()
        .map(|b| f.usd_in(&wallet, b))
        .collect();
    assert_eq!(left, [0, 0, 0, 4, 10]);

    let mut to_wallet = debit(&wallet, 1, DebitSources::Main);
    let other = f.wallet("other");
    to_wallet.destination = Some(Subject::Wallet {
        id: other.id.clone(),
        balance: None,
    });
    f.wallets.debit(&to_wallet, None).unwrap();
    assert_eq!(f.usd_in(&other, "main"), 1);

    assert_eq!(
        f.wallets.debit(&debit(&wallet, 4, DebitSources::All), None),
        Err(WalletError::InsufficientFund)
    );
    assert_eq!(f.usd_in(&wallet, "main"), 3, "a failed debit moves nothing");
    assert_eq!(
        f.wallets.debit(&debit(&wallet, 1, named(&["gone"])), None),
        Err(WalletError::InsufficientFund)
    );
    check_validation(
        f.wallets.debit(&debit(&wallet, 1, named(&["nope"])), None),
        "balances[0]",
    );
    check_validation(
        f.wallets
            .debit(&debit(&wallet, 1, named(&["main", "*"])), None),
        "*",
    );
    check_validation(
        f.wallets
            .debit(&debit(&wallet, -1, DebitSources::Main), None),
        "amount.amount",
    );
    let mut dated = pending(&wallet, 1, DebitSources::Main);
    dated.timestamp = Some(Timestamp::now());
    check_validation(f.wallets.debit(&dated, None), "timestamp");
    let mut unknown = debit(&wallet, 1, DebitSources::Main);
    unknown.wallet_id = "ghost".into();
    check_validation(f.wallets.debit(&unknown, None), "not found");
    let mut bad_destination = debit(&wallet, 1, DebitSources::Main);
    bad_destination.destination = Some(Subject::Account("a::b".into()));
    check_validation(
        f.wallets.debit(&bad_destination, None),
        "destination.identifier",
    );
}

#[test]
fn holds_confirm_partially_then_finally() {
    let f = fixture();
    let wallet = f.wallet("w");
    f.credit(&wallet, None, 100);
    let hold = f
        .wallets
        .debit(&pending(&wallet, 60, DebitSources::Main), None)
        .unwrap()
        .unwrap();
    assert_eq!(
        (hold.wallet_id.as_str(), hold.asset.as_str()),
        (wallet.id.as_str(), "USD")
    );
    assert_eq!(hold.destination, Subject::world());
    assert_eq!(f.usd_in(&wallet, "main"), 40);
    let read = f.wallets.get_hold(&hold.id).unwrap();
    assert_eq!(
        (read.original_amount, read.remaining, read.hold.clone()),
        (60, 60, hold.clone())
    );

    let confirm = |amount: Option<i128>, final_: bool| {
        f.wallets
            .confirm_hold(&hold.id, &ConfirmHold { amount, final_ }, None)
    };
    assert_eq!(confirm(Some(61), false), Err(WalletError::InsufficientFund));
    check_validation(confirm(Some(-1), false), "amount");
    confirm(Some(20), false).unwrap();
    assert_eq!(f.wallets.get_hold(&hold.id).unwrap().remaining, 40);
    assert_eq!(f.usd_of("world"), -100 + 20);
    confirm(Some(15), true).unwrap();
    let read = f.wallets.get_hold(&hold.id).unwrap();
    assert_eq!((read.original_amount, read.remaining), (60, 0));
    assert_eq!(
        f.usd_in(&wallet, "main"),
        40 + 25,
        "final sends the rest to main"
    );
    assert_eq!(confirm(None, false), Err(WalletError::HoldClosed));
    assert_eq!(
        f.wallets.void_hold(&hold.id, None),
        Err(WalletError::HoldClosed)
    );

    let all = f
        .wallets
        .debit(&pending(&wallet, 30, DebitSources::Main), None)
        .unwrap()
        .unwrap();
    f.wallets
        .confirm_hold(
            &all.id,
            &ConfirmHold {
                amount: Some(0),
                final_: false,
            },
            None,
        )
        .unwrap();
    assert_eq!(f.wallets.get_hold(&all.id).unwrap().remaining, 0);
    assert_eq!(f.usd_of("world"), -100 + 35 + 30);

    let unknown = uuid::Uuid::new_v4().to_string();
    assert!(matches!(
        f.wallets.get_hold(&unknown),
        Err(WalletError::NotFound(_))
    ));
    assert!(matches!(
        confirm_unknown(&f, &unknown),
        Err(WalletError::NotFound(_))
    ));
    assert!(matches!(
        f.wallets.void_hold(&unknown, None),
        Err(WalletError::NotFound(_))
    ));
    // A wallet's main account is not a hold.
    assert!(matches!(
        f.wallets.get_hold(&wallet.id),
        Err(WalletError::NotFound(_))
    ));
}

fn confirm_unknown(f: &Fixture, id: &str) -> Result<(), WalletError> {
    f.wallets.confirm_hold(id, &ConfirmHold::default(), None)
}

#[test]
fn void_after_partial_confirm_returns_the_rest_to_the_sources() {
    let f = fixture();
    let wallet = f.wallet("w");
    f.balance(&wallet, "b1", None, 0);
    f.credit(&wallet, Some("b1"), 30);
    f.credit(&wallet, None, 100);
    let mut request = pending(&wallet, 80, named(&["b1", "main"]));
    request.destination = Some(Subject::Account("shop".into()));
    let hold = f.wallets.debit(&request, None).unwrap().unwrap();
    assert_eq!(
        (f.usd_in(&wallet, "b1"), f.usd_in(&wallet, "main")),
        (0, 50)
    );

    f.wallets
        .confirm_hold(
            &hold.id,
            &ConfirmHold {
                amount: Some(45),
                final_: false,
            },
            None,
        )
        .unwrap();
    assert_eq!(f.usd_of("shop"), 45);
    f.wallets.void_hold(&hold.id, None).unwrap();
    // 35 remained: b1 gave 30 first and gets 30 back, main gets the other 5.
    assert_eq!(
        (f.usd_in(&wallet, "b1"), f.usd_in(&wallet, "main")),
        (30, 55)
    );
    assert_eq!(f.wallets.get_hold(&hold.id).unwrap().remaining, 0);
    assert_eq!(
        f.wallets.void_hold(&hold.id, None),
        Err(WalletError::HoldClosed)
    );
}

/// Addresses drop dashes, so an id spelled without them reaches the wallet's accounts; but it
/// is not the wallet's id, and holds made through it would not be found by that id.
#[test]
fn a_wallet_id_spelled_without_its_dashes_is_not_found() {
    let f = fixture();
    let wallet = f.wallet("w");
    assert!(wallet.id.contains('-'), "{}", wallet.id);
    f.credit(&wallet, None, 100);
    let undashed = Wallet {
        id: wallet.id.replace('-', ""),
        ..wallet.clone()
    };
    assert!(matches!(
        f.wallets.get_wallet(&undashed.id),
        Err(WalletError::NotFound(_))
    ));
    let refused = f
        .wallets
        .debit(&pending(&undashed, 60, named(&["main"])), None);
    assert!(refused.is_err(), "{refused:?}");
    assert_eq!(f.usd_in(&wallet, "main"), 100);
}

/// A confirm and a void of one hold at the same time: one of them takes what the hold has,
/// the other is told the hold is closed; never both "done" with one of them moving nothing.
#[test]
fn a_confirm_and_a_void_racing_on_one_hold_do_not_both_succeed() {
    // Through two `Wallets` on one ledger, which share no turns, as two processes do.
    let f = fixture();
    let second = Wallets::open(f.wallets.ledgers().clone(), LEDGER).unwrap();
    support::racing_services_close_a_hold_once(&f.wallets, &second);
}

#[test]
fn summary_matches_the_formance_e2e_example() {
    let f = fixture();
    let wallet = f.wallet("w");
    let now = Timestamp::now().0;
    f.credit(&wallet, None, 1000);
    f.balance(&wallet, "balance1", None, 10);
    f.credit(&wallet, Some("balance1"), 1000);
    f.balance(&wallet, "balance2", Some(Timestamp(now + MINUTE_MICROS)), 0);
    f.credit(&wallet, Some("balance2"), 1000);
    f.balance(&wallet, "balance3", Some(Timestamp(now - MINUTE_MICROS)), 0);
    f.credit(&wallet, Some("balance3"), 1000);
    f.balance(&wallet, "balance4", None, 0);
    for (amount, names) in [
        (1500, ["main", "balance1"]),
        (500, ["main", "balance2"]),
        (700, ["balance1", "balance2"]),
    ] {
        f.wallets
            .debit(&pending(&wallet, amount, named(&names)), None)
            .unwrap();
    }
    let summary = f.wallets.summary(&wallet.id).unwrap();
    let usd = |amount: i128| -> Assets { [("USD".to_string(), amount)].into_iter().collect() };
    assert_eq!(summary.available_funds, usd(300));
    assert_eq!(summary.expirable_funds, usd(300));
    assert_eq!(summary.expired_funds, usd(1000));
    assert_eq!(summary.hold_funds, usd(2700));
    let balances: Vec<(&str, Option<&i128>)> = summary
        .balances
        .iter()
        .map(|b| (b.balance.name.as_str(), b.assets.get("USD")))
        .collect();
    assert_eq!(
        balances,
        [
            ("balance1", Some(&0)),
            ("balance2", Some(&300)),
            ("balance3", Some(&1000)),
            ("balance4", None),
            ("main", Some(&0)),
        ]
    );
    assert_eq!(summary.balances[0].balance.priority, 10);

    let empty = f
        .wallets
        .summary(&uuid::Uuid::new_v4().to_string())
        .unwrap();
    assert_eq!(empty, Summary::default());
}

#[test]
fn idempotent_create_wallet() {
    let f = fixture();
    let request = CreateWallet {
        name: "w".into(),
        metadata: meta(&[("a", "1")]),
    };
    let first = f.wallets.create_wallet(&request, Some("key-1")).unwrap();
    assert_eq!(first.id, deterministic_id("wallet", "key-1"));
    // Formance's namespace and name: the same key gives the same id as Formance Wallets.
    assert_eq!(
        first.id,
        uuid::Uuid::new_v5(
            &uuid::Uuid::parse_str("0b6f2d6e-4e2a-4f3a-9f0a-2b9c1d8e7a31").unwrap(),
            b"wallet:key-1"
        )
        .to_string()
    );
    f.wallets
        .update_wallet(&first.id, &meta(&[("a", "2")]), None)
        .unwrap();
    let replay = f.wallets.create_wallet(&request, Some("key-1")).unwrap();
    assert_eq!(
        replay, first,
        "a replay answers the first response, not the patched wallet"
    );
    let other = CreateWallet {
        name: "w2".into(),
        metadata: Metadata::new(),
    };
    check_validation(
        f.wallets.create_wallet(&other, Some("key-1")),
        "Idempotency-Key",
    );
    let all = f
        .wallets
        .list_wallets(&ListWallets::default(), &page(100))
        .unwrap();
    assert_eq!(all.data.len(), 1);
    let main = f
        .ledgers()
        .get_account(LEDGER, &chart::main_account(&first.id), None)
        .unwrap();
    assert!(main.metadata.contains_key("wallets/createRequestHash"));
    assert!(main.metadata.contains_key("wallets/createResponse"));

    let fresh = f.wallets.create_wallet(&request, None).unwrap();
    assert_ne!(fresh.id, first.id);
}

#[test]
fn idempotent_balance_and_movements() {
    let f = fixture();
    let wallet = f.wallet("w");
    let request = CreateBalance {
        name: "b".into(),
        expires_at: None,
        priority: 3,
    };
    let first = f
        .wallets
        .create_balance(&wallet.id, &request, Some("bal"))
        .unwrap();
    assert_eq!(
        f.wallets
            .create_balance(&wallet.id, &request, Some("bal"))
            .unwrap(),
        first
    );
    let different = CreateBalance {
        priority: 4,
        ..request.clone()
    };
    check_validation(
        f.wallets
            .create_balance(&wallet.id, &different, Some("bal")),
        "Idempotency-Key",
    );
    check_validation(
        f.wallets.create_balance(&wallet.id, &request, None),
        "already exists",
    );

    f.wallets
        .credit(&credit(&wallet, None, 100), Some("credit-1"))
        .unwrap();
    f.wallets
        .credit(&credit(&wallet, None, 100), Some("credit-1"))
        .unwrap();
    assert_eq!(
        f.usd_in(&wallet, "main"),
        100,
        "a replayed credit credits once"
    );
    check_validation(
        f.wallets
            .credit(&credit(&wallet, None, 7), Some("credit-1")),
        "Idempotency-Key",
    );

    let hold = f
        .wallets
        .debit(&pending(&wallet, 40, DebitSources::Main), Some("debit-1"))
        .unwrap();
    let count = f.transaction_count();
    let again = f
        .wallets
        .debit(&pending(&wallet, 40, DebitSources::Main), Some("debit-1"))
        .unwrap();
    assert_eq!(again, hold);
    assert_eq!(hold.unwrap().id, deterministic_id("hold", "debit-1"));
    assert_eq!(
        (f.transaction_count(), f.usd_in(&wallet, "main")),
        (count, 60)
    );

    let hold_id = deterministic_id("hold", "debit-1");
    let all = ConfirmHold::default();
    f.wallets
        .confirm_hold(&hold_id, &all, Some("confirm-1"))
        .unwrap();
    f.wallets
        .confirm_hold(&hold_id, &all, Some("confirm-1"))
        .unwrap();
    assert_eq!(f.usd_of("world"), -100 + 40);
    assert_eq!(
        f.wallets.confirm_hold(&hold_id, &all, Some("confirm-2")),
        Err(WalletError::HoldClosed)
    );
    assert_eq!(
        f.wallets.confirm_hold(&hold_id, &all, None),
        Err(WalletError::HoldClosed)
    );

    let other = f
        .wallets
        .debit(&pending(&wallet, 10, DebitSources::Main), None)
        .unwrap()
        .unwrap();
    f.wallets.void_hold(&other.id, Some("void-1")).unwrap();
    f.wallets.void_hold(&other.id, Some("void-1")).unwrap();
    assert_eq!(f.usd_in(&wallet, "main"), 60);
    assert_eq!(
        f.wallets.void_hold(&other.id, Some("void-2")),
        Err(WalletError::HoldClosed)
    );
}

#[test]
fn list_holds_and_transactions() {
    let f = fixture();
    let a = f.wallet("a");
    let b = f.wallet("b");
    f.credit(&a, None, 100);
    f.credit(&b, None, 100);
    let mut tagged = pending(&a, 1, DebitSources::Main);
    tagged.metadata = meta(&[("order", "7")]);
    let h1 = f.wallets.debit(&tagged, None).unwrap().unwrap();
    let h2 = f
        .wallets
        .debit(&pending(&a, 2, DebitSources::Main), None)
        .unwrap()
        .unwrap();
    let h3 = f
        .wallets
        .debit(&pending(&b, 3, DebitSources::Main), None)
        .unwrap()
        .unwrap();

    let of_a = ListHolds {
        wallet_id: Some(a.id.clone()),
        metadata: Metadata::new(),
    };
    let mut ids: Vec<String> = f
        .wallets
        .list_holds(&of_a, &page(15))
        .unwrap()
        .data
        .into_iter()
        .map(|h| h.id)
        .collect();
    ids.sort();
    let mut expected = vec![h1.id.clone(), h2.id.clone()];
    expected.sort();
    assert_eq!(ids, expected);
    let by_meta = ListHolds {
        wallet_id: None,
        metadata: meta(&[("order", "7")]),
    };
    assert_eq!(
        f.wallets.list_holds(&by_meta, &page(15)).unwrap().data,
        std::slice::from_ref(&h1)
    );
    let all = f
        .wallets
        .list_holds(&ListHolds::default(), &page(2))
        .unwrap();
    assert_eq!((all.data.len(), all.has_more), (2, true));
    assert!(all.data.iter().chain([&h3]).all(|h| h.asset == "USD"));

    // Transactions touching a's main account, newest first.
    let txs = f.wallets.list_transactions(Some(&a.id), &page(15)).unwrap();
    let amounts: Vec<i128> = txs.data.iter().map(|tx| tx.postings[0].amount).collect();
    assert_eq!(amounts, [2, 1, 100]);
    let everything = f.wallets.list_transactions(None, &page(4)).unwrap();
    assert_eq!((everything.data.len(), everything.has_more), (4, true));
    let next = PageRequest {
        page_size: None,
        cursor: everything.next.clone(),
    };
    assert_eq!(
        f.wallets.list_transactions(None, &next).unwrap().data.len(),
        1
    );
    check_validation(
        f.wallets.list_transactions(Some("a:b"), &page(1)),
        "walletID",
    );
    let bad_wallet = ListHolds {
        wallet_id: Some("a:b".into()),
        metadata: Metadata::new(),
    };
    check_validation(f.wallets.list_holds(&bad_wallet, &page(1)), "walletID");
}

#[test]
fn zero_amount_hold_is_closed_from_the_start() {
    let f = fixture();
    let wallet = f.wallet("w");
    let hold = f
        .wallets
        .debit(&pending(&wallet, 0, DebitSources::Main), None)
        .unwrap()
        .unwrap();
    let read = f.wallets.get_hold(&hold.id).unwrap();
    assert_eq!(
        (read.original_amount, read.remaining, read.is_closed()),
        (0, 0, true)
    );
    assert_eq!(
        f.wallets.void_hold(&hold.id, None),
        Err(WalletError::HoldClosed)
    );
    let all = ConfirmHold::default();
    assert_eq!(
        f.wallets.confirm_hold(&hold.id, &all, None),
        Err(WalletError::HoldClosed)
    );
}

#[test]
fn a_debit_retried_under_its_key_replays_though_its_sources_changed() {
    // The key is matched on the debit as sent, not on the sources "*" resolves to now: a
    // balance created since does not make the retry a conflict, nor a second debit.
    let f = fixture();
    let wallet = f.wallet("w");
    f.balance(&wallet, "b", None, 0);
    f.credit(&wallet, Some("b"), 10);
    f.credit(&wallet, None, 10);
    let request = debit(&wallet, 15, DebitSources::All);
    f.wallets.debit(&request, Some("star")).unwrap();
    f.wallets.debit(&request, Some("star")).unwrap();
    assert_eq!((f.usd_in(&wallet, "b"), f.usd_in(&wallet, "main")), (0, 5));
    f.balance(
        &wallet,
        "c",
        Some(Timestamp(Timestamp::now().0 + MINUTE_MICROS)),
        0,
    );
    f.credit(&wallet, Some("c"), 4);
    f.wallets.debit(&request, Some("star")).unwrap();
    assert_eq!(
        (
            f.usd_in(&wallet, "b"),
            f.usd_in(&wallet, "c"),
            f.usd_in(&wallet, "main")
        ),
        (0, 4, 5)
    );
    // The same key with another input is still refused.
    let other = debit(&wallet, 1, DebitSources::All);
    check_validation(f.wallets.debit(&other, Some("star")), "Idempotency-Key");
    assert_eq!(f.usd_in(&wallet, "main"), 5);
}

#[test]
fn a_debit_retried_after_its_balance_expired_replays() {
    // The retry can no longer be planned (nothing left to draw from), yet it was made.
    let f = fixture();
    let wallet = f.wallet("w");
    let expires_at = Timestamp(Timestamp::now().0 + 1_500_000);
    f.balance(&wallet, "soon", Some(expires_at), 0);
    f.credit(&wallet, Some("soon"), 10);
    let pending = Debit {
        pending: true,
        ..debit(&wallet, 4, DebitSources::Named(vec!["soon".into()]))
    };
    let first = f
        .wallets
        .debit(&pending, Some("hold-key"))
        .unwrap()
        .unwrap();
    while Timestamp::now() <= expires_at {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // Without the key the same debit is refused now.
    assert!(matches!(
        f.wallets.debit(&pending, None),
        Err(WalletError::InsufficientFund)
    ));
    let retried = f
        .wallets
        .debit(&pending, Some("hold-key"))
        .unwrap()
        .unwrap();
    assert_eq!(retried, first);
    assert_eq!(f.usd_in(&wallet, "soon"), 6);
    // A new key, or the key with another input, gets the refusal a new debit gets.
    assert!(matches!(
        f.wallets.debit(&pending, Some("new-key")),
        Err(WalletError::InsufficientFund)
    ));
    let other = Debit {
        pending: true,
        ..debit(&wallet, 5, DebitSources::Named(vec!["soon".into()]))
    };
    assert!(matches!(
        f.wallets.debit(&other, Some("hold-key")),
        Err(WalletError::InsufficientFund)
    ));
    assert_eq!(f.usd_in(&wallet, "soon"), 6);
}

#[test]
fn a_cursor_keeps_expand_balances() {
    let f = fixture();
    for name in ["a", "b"] {
        let wallet = f.wallet(name);
        f.credit(&wallet, None, 3);
    }
    let expanded = ListWallets {
        expand_balances: true,
        ..Default::default()
    };
    let first = f.wallets.list_wallets(&expanded, &page(1)).unwrap();
    assert_eq!(first.data[0].main_assets.get("USD"), Some(&3));
    let next = PageRequest {
        page_size: None,
        cursor: first.next,
    };
    let second = f
        .wallets
        .list_wallets(&ListWallets::default(), &next)
        .unwrap();
    assert_eq!(second.data[0].main_assets.get("USD"), Some(&3));
    let plain = f
        .wallets
        .list_wallets(&ListWallets::default(), &page(1))
        .unwrap();
    assert!(plain.data[0].main_assets.is_empty());
}

#[test]
fn balance_creations_racing_on_one_wallet_keep_its_cap_and_each_name_once() {
    let f = fixture();
    let wallet = f.wallet("w");
    let create = |name: String, priority: i64| {
        let request = CreateBalance {
            name,
            expires_at: None,
            priority,
        };
        f.wallets.create_balance(&wallet.id, &request, None)
    };
    // One name, eight racers with different settings: one is created, the rest refused,
    // and what is stored is the one that was answered as created.
    let results: Vec<_> = std::thread::scope(|scope| {
        let racers: Vec<_> = (0..8)
            .map(|priority| scope.spawn(move || create("coupon".into(), priority)))
            .collect();
        racers.into_iter().map(|r| r.join().unwrap()).collect()
    });
    let created: Vec<&Balance> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    assert_eq!(created.len(), 1, "{results:?}");
    for refused in results.iter().filter_map(|r| r.as_ref().err()) {
        check_validation::<()>(Err(refused.clone()), "already exists");
    }
    let stored = f.wallets.get_balance(&wallet.id, "coupon").unwrap();
    assert_eq!(&stored.balance, created[0]);
    // Up to the cap less two ("main" and "coupon" count), then sixteen racers for the last
    // two places.
    let filler = BALANCES_PER_WALLET_MAX - 4;
    std::thread::scope(|scope| {
        for part in 0..8 {
            let create = &create;
            scope.spawn(move || {
                for index in (part..filler).step_by(8) {
                    create(format!("filler{index}"), 0).unwrap();
                }
            });
        }
    });
    let last: Vec<_> = std::thread::scope(|scope| {
        let racers: Vec<_> = (0..16)
            .map(|index| {
                let create = &create;
                scope.spawn(move || create(format!("last{index}"), 0))
            })
            .collect();
        racers.into_iter().map(|r| r.join().unwrap()).collect()
    });
    let won = last.iter().filter(|r| r.is_ok()).count();
    assert_eq!(won, 2, "{last:?}");
    for refused in last.iter().filter_map(|r| r.as_ref().err()) {
        check_validation::<()>(Err(refused.clone()), "at most");
    }
    assert_eq!(
        support::balances_stored(&f.wallets, &wallet.id),
        BALANCES_PER_WALLET_MAX
    );
}

#[test]
fn balance_creations_racing_through_two_services_keep_the_cap() {
    // Two `Wallets` on one ledger share no turns, as two processes on one database do.
    let f = fixture();
    let second = Wallets::open(f.wallets.ledgers().clone(), LEDGER).unwrap();
    support::racing_services_keep_the_balance_cap(&f.wallets, &second);
}

#[test]
fn a_wildcard_debit_draws_from_more_balances_than_a_named_list_may_hold() {
    // `*` takes every live balance a wallet can have (the cap, main included); its hold's
    // void returns to each.
    let f = fixture();
    let wallet = f.wallet("w");
    let named = BALANCES_PER_WALLET_MAX - 1;
    assert!(named > DEBIT_SOURCES_MAX);
    std::thread::scope(|scope| {
        for part in 0..4 {
            let (f, wallet) = (&f, &wallet);
            scope.spawn(move || {
                for index in (part..named).step_by(4) {
                    let name = format!("b{index}");
                    f.balance(wallet, &name, None, 0);
                    f.credit(wallet, Some(&name), 1);
                }
            });
        }
    });
    f.credit(&wallet, None, 1);
    let pending = Debit {
        pending: true,
        ..debit(&wallet, named as i128 + 1, DebitSources::All)
    };
    let hold = f.wallets.debit(&pending, None).unwrap().unwrap();
    assert_eq!(f.usd_in(&wallet, "b0"), 0);
    assert_eq!(f.usd_in(&wallet, "main"), 0);
    f.wallets.void_hold(&hold.id, None).unwrap();
    for index in 0..named {
        assert_eq!(f.usd_in(&wallet, &format!("b{index}")), 1, "b{index}");
    }
    assert_eq!(f.usd_in(&wallet, "main"), 1);
}

#[test]
fn hold_funds_count_only_each_holds_own_asset() {
    let f = fixture();
    let wallet = f.wallet("w");
    let other = f.wallet("x");
    f.credit(&wallet, None, 40);
    let eur = Monetary {
        asset: "EUR".into(),
        amount: 50,
    };
    f.wallets
        .credit(
            &Credit {
                amount: eur.clone(),
                ..credit(&other, None, 0)
            },
            None,
        )
        .unwrap();
    let hold = f
        .wallets
        .debit(&pending(&wallet, 40, DebitSources::Main), None)
        .unwrap()
        .unwrap();
    // Another wallet pays EUR into the hold's account: not funds the wallet holds.
    let stray = Debit {
        amount: eur,
        destination: Some(Subject::Account(chart::hold_account(&hold.id))),
        ..debit(&other, 0, DebitSources::Main)
    };
    f.wallets.debit(&stray, None).unwrap();
    let held = |f: &Fixture| f.wallets.summary(&wallet.id).unwrap().hold_funds;
    assert_eq!(held(&f), BTreeMap::from([("USD".to_string(), 40)]));
    f.wallets.void_hold(&hold.id, None).unwrap();
    assert_eq!(held(&f), BTreeMap::from([("USD".to_string(), 0)]));
}

#[test]
fn one_balance_name_is_created_once_by_racers_that_do_not_take_turns() {
    // Two `Wallets` on one ledger share no turns, as two processes on one database do.
    let f = fixture();
    let second = Wallets::open(f.wallets.ledgers().clone(), LEDGER).unwrap();
    let wallet = f.wallet("w");
    for round in 0..10 {
        let name = format!("coupon{round}");
        let results: Vec<_> = std::thread::scope(|scope| {
            let racers: Vec<_> = (0..8)
                .map(|priority| {
                    let wallets = if priority % 2 == 0 {
                        &f.wallets
                    } else {
                        &second
                    };
                    let (name, id) = (name.clone(), wallet.id.clone());
                    scope.spawn(move || {
                        let request = CreateBalance {
                            name,
                            expires_at: None,
                            priority,
                        };
                        wallets.create_balance(&id, &request, None)
                    })
                })
                .collect();
            racers.into_iter().map(|r| r.join().unwrap()).collect()
        });
        let created: Vec<&Balance> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
        assert_eq!(created.len(), 1, "{results:?}");
        let stored = f.wallets.get_balance(&wallet.id, &name).unwrap();
        assert_eq!(&stored.balance, created[0]);
    }
    // A retry under the client's key is still answered with the balance.
    let request = CreateBalance {
        name: "keyed".into(),
        expires_at: None,
        priority: 3,
    };
    let first = second
        .create_balance(&wallet.id, &request, Some("k"))
        .unwrap();
    assert_eq!(
        f.wallets
            .create_balance(&wallet.id, &request, Some("k"))
            .unwrap(),
        first
    );
    check_validation(
        f.wallets
            .create_balance(&wallet.id, &request, Some("other")),
        "already exists",
    );
}

#[test]
fn a_hold_whose_metadata_was_rewritten_through_the_ledger_is_refused_not_a_failure() {
    let f = fixture();
    let wallet = f.wallet("w");
    f.credit(&wallet, None, 10);
    let hold = f
        .wallets
        .debit(&pending(&wallet, 5, DebitSources::Main), None)
        .unwrap()
        .unwrap();
    let rewrite = coffer_ledger::Command::SaveMetadata {
        target: coffer_ledger::Target::Account(chart::hold_account(&hold.id)),
        metadata: meta(&[
            (chart::KEY_HOLD_SUBJECT, "{not json"),
            (chart::KEY_HOLD_DESTINATION, "zzz"),
        ]),
    };
    f.ledgers()
        .write_blocking(coffer_ledger::command::Request::new(LEDGER, rewrite))
        .unwrap();
    let refused = f
        .wallets
        .confirm_hold(&hold.id, &ConfirmHold::default(), None)
        .unwrap_err();
    assert!(
        matches!(refused, WalletError::Validation(ref m) if m.contains("no longer names")),
        "{refused:?}"
    );
    assert_eq!(f.wallets.get_hold(&hold.id).unwrap().remaining, 5);
    // A void reads the asset from the metadata: another asset than the hold was funded in.
    let rewrite_asset = |hold: &str, asset: &str| {
        let command = coffer_ledger::Command::SaveMetadata {
            target: coffer_ledger::Target::Account(chart::hold_account(hold)),
            metadata: meta(&[(chart::KEY_HOLD_ASSET, asset)]),
        };
        f.ledgers()
            .write_blocking(coffer_ledger::command::Request::new(LEDGER, command))
            .unwrap();
    };
    rewrite_asset(&hold.id, "EUR");
    let refused = f.wallets.void_hold(&hold.id, None).unwrap_err();
    assert!(
        matches!(refused, WalletError::Validation(ref m) if m.contains("no longer matches")),
        "{refused:?}"
    );
    // Put back, the hold voids as it would have.
    rewrite_asset(&hold.id, "USD");
    f.wallets.void_hold(&hold.id, None).unwrap();
    assert_eq!(f.usd_in(&wallet, "main"), 10);
}

#[test]
fn a_balance_whose_name_was_rewritten_through_the_ledger_refuses_wildcard_debits() {
    let f = fixture();
    let wallet = f.wallet("w");
    f.balance(&wallet, "coupon", None, 1);
    f.credit(&wallet, Some("coupon"), 4);
    f.credit(&wallet, None, 10);
    let rename = |name: &str| {
        let command = coffer_ledger::Command::SaveMetadata {
            target: coffer_ledger::Target::Account(chart::balance_account(&wallet.id, "coupon")),
            metadata: meta(&[(chart::KEY_BALANCE_NAME, name)]),
        };
        f.ledgers()
            .write_blocking(coffer_ledger::command::Request::new(LEDGER, command))
            .unwrap();
    };
    for name in ["", "main", "other", "garb\"age{"] {
        rename(name);
        let refused = f
            .wallets
            .debit(&debit(&wallet, 6, DebitSources::All), None)
            .unwrap_err();
        assert!(
            matches!(refused, WalletError::Validation(ref m) if m.contains("no longer names it")),
            "{name:?}: {refused:?}"
        );
    }
    // Named back, `*` takes the coupon first, then main.
    rename("coupon");
    f.wallets
        .debit(&debit(&wallet, 6, DebitSources::All), None)
        .unwrap();
    assert_eq!(
        (f.usd_in(&wallet, "coupon"), f.usd_in(&wallet, "main")),
        (0, 8)
    );
}

#[test]
fn a_debit_pays_only_into_a_wallet_and_balance_that_exist() {
    let f = fixture();
    let wallet = f.wallet("w");
    let shop = f.wallet("shop");
    f.balance(&shop, "tips", None, 0);
    f.credit(&wallet, None, 10);
    let to = |id: &str, balance: Option<&str>| Debit {
        destination: Some(Subject::Wallet {
            id: id.to_string(),
            balance: balance.map(str::to_string),
        }),
        ..debit(&wallet, 1, DebitSources::Main)
    };
    let unknown = "00000000-0000-0000-0000-000000000000";
    check_validation(f.wallets.debit(&to(unknown, None), None), "not found");
    check_validation(
        f.wallets.debit(&to(&shop.id, Some("nope")), None),
        "destination: balance \"nope\" does not exist",
    );
    f.wallets.debit(&to(&shop.id, None), None).unwrap();
    f.wallets.debit(&to(&shop.id, Some("tips")), None).unwrap();
    assert_eq!(f.usd_in(&wallet, "main"), 8, "only two debits went through");
    assert_eq!((f.usd_in(&shop, "main"), f.usd_in(&shop, "tips")), (1, 1));
}

#[test]
fn a_cursor_of_one_list_is_refused_by_another() {
    let f = fixture();
    let a = f.wallet("a");
    let b = f.wallet("b");
    f.credit(&a, None, 10);
    for _ in 0..2 {
        f.wallets
            .debit(&pending(&a, 1, DebitSources::Main), None)
            .unwrap();
    }
    let next = |cursor: Option<String>| PageRequest {
        page_size: None,
        cursor,
    };
    let holds = f
        .wallets
        .list_holds(&ListHolds::default(), &page(1))
        .unwrap();
    check_validation(
        f.wallets
            .list_wallets(&ListWallets::default(), &next(holds.next.clone())),
        "another list",
    );
    assert_eq!(
        f.wallets
            .list_holds(&ListHolds::default(), &next(holds.next))
            .unwrap()
            .data
            .len(),
        1
    );
    let wallets = f
        .wallets
        .list_wallets(&ListWallets::default(), &page(1))
        .unwrap();
    // The cursor's next row is the second wallet's main balance: foreign to the first.
    let first = &wallets.data[0].id;
    assert!(*first == a.id || *first == b.id);
    check_validation(
        f.wallets
            .list_balances(first, &Metadata::new(), &next(wallets.next)),
        "another list",
    );
}
