//! Property tests.
//! - Robustness: parsing and running arbitrary text, or random streams of Numscript tokens,
//!   never panics.
//! - Conservation: for every successful run of a generated well-formed script, per asset, what
//!   leaves the sources equals what reaches the destinations (balances sum to the same total),
//!   postings are positive, and no account used only without overdraft ends below zero.
//!
//! Each property runs a bounded number of cases (a few seconds in all). Set `PROPTEST_CASES`
//! for a longer run.

use std::collections::{BTreeMap, BTreeSet};

use numscript::{run, BalanceRow, FeatureFlags, MemoryStore, Program};
use proptest::prelude::*;

/// `PROPTEST_CASES` when set (a longer run), else `default`.
fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

const ACCOUNTS: [&str; 5] = ["a", "b", "c", "d", "e"];

fn store_with(balances: &[i128]) -> MemoryStore {
    let mut store = MemoryStore::default();
    for (account, amount) in ACCOUNTS.iter().zip(balances) {
        for asset in ["COIN", "EUR/2"] {
            store.balances.push(BalanceRow {
                account: account.to_string(),
                asset: asset.to_string(),
                color: String::new(),
                amount: *amount,
            });
        }
    }
    store.balances.push(BalanceRow {
        account: "a".into(),
        asset: "EUR".into(),
        color: String::new(),
        amount: 3,
    });
    store.balances.push(BalanceRow {
        account: "b".into(),
        asset: "COIN".into(),
        color: "RED".into(),
        amount: 9,
    });
    store
        .metadata
        .entry("a".into())
        .or_default()
        .insert("k".into(), "COIN 5".into());
    store
}

/// Parses and, when it parses, runs `source` with every flag on; must not panic.
fn parse_and_run(source: &str, balances: &[i128]) {
    let _ = numscript::check(source);
    if let Ok(program) = Program::parse(source) {
        let vars: BTreeMap<String, String> =
            [("x", "COIN 10"), ("n", "3"), ("acc", "a"), ("p", "1/3")]
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
        let _ = run(
            &program,
            &vars,
            &FeatureFlags::all(),
            &mut store_with(balances),
        );
    }
}

const TOKENS: &[&str] = &[
    "send",
    "save",
    "vars",
    "source",
    "destination",
    "=",
    "(",
    ")",
    "[",
    "]",
    "{",
    "}",
    "*",
    "+",
    "-",
    "/",
    ",",
    "\\",
    "max",
    "from",
    "to",
    "kept",
    "remaining",
    "allowing",
    "overdraft",
    "unbounded",
    "up",
    "oneof",
    "with",
    "scaling",
    "through",
    "COIN",
    "EUR/2",
    "EUR",
    "0",
    "1",
    "10",
    "100",
    "170141183460469231731687303715884105727",
    "50%",
    "12.5%",
    "1/3",
    "@a",
    "@b",
    "@world",
    "@c:$acc",
    "$x",
    "$n",
    "$acc",
    "$p",
    "\"RED\"",
    "\"k\"",
    "monetary",
    "number",
    "account",
    "portion",
    "balance",
    "overdraft",
    "meta",
    "get_asset",
    "get_amount",
    "set_tx_meta",
    "set_account_meta",
    "#!",
    "feature",
    "\"experimental-oneof\"",
    "//",
    "/*",
    "*/",
    "$",
];

fn balances() -> impl Strategy<Value = Vec<i128>> {
    prop::collection::vec(
        prop_oneof![Just(0i128), -50i128..500, Just(i128::MAX)],
        ACCOUNTS.len(),
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(512), ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_text_never_panics(source in "\\PC{0,200}", balances in balances()) {
        parse_and_run(&source, &balances);
    }

    #[test]
    fn numscript_like_characters_never_panic(
        source in "[a-z@$%\\[\\]{}()=*+/\\\\,:\"0-9A-Z_. \n-]{0,200}",
        balances in balances(),
    ) {
        parse_and_run(&source, &balances);
    }

    #[test]
    fn random_token_streams_never_panic(
        tokens in prop::collection::vec(prop::sample::select(TOKENS), 0..80),
        balances in balances(),
    ) {
        parse_and_run(&tokens.join(" "), &balances);
    }
}

// ----- Well-formed script generation -----

#[derive(Clone, Debug)]
enum Src {
    Account(&'static str),
    World,
    Bounded(&'static str, i128),
    Unbounded(&'static str),
    InOrder(Vec<Src>),
    Capped(i128, Box<Src>),
    Allotment(Vec<(u32, Src)>, Box<Src>),
    Oneof(Vec<Src>),
}

#[derive(Clone, Debug)]
enum Dst {
    Account(&'static str),
    Allotment(Vec<(u32, Target)>, Box<Target>),
    InOrder(Vec<(i128, Target)>, Box<Target>),
}

#[derive(Clone, Debug)]
enum Target {
    Kept,
    To(Dst),
}

fn account() -> impl Strategy<Value = &'static str> {
    prop::sample::select(&ACCOUNTS[..])
}

fn source() -> impl Strategy<Value = Src> {
    let leaf = prop_oneof![
        4 => account().prop_map(Src::Account),
        1 => Just(Src::World),
        1 => (account(), 0i128..100).prop_map(|(a, k)| Src::Bounded(a, k)),
        1 => account().prop_map(Src::Unbounded),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Src::InOrder),
            (-10i128..300, inner.clone()).prop_map(|(cap, s)| Src::Capped(cap, Box::new(s))),
            (
                prop::collection::vec((0u32..60, inner.clone()), 1..3),
                inner.clone()
            )
                .prop_map(|(items, rest)| Src::Allotment(items, Box::new(rest))),
            prop::collection::vec(inner, 1..3).prop_map(Src::Oneof),
        ]
    })
}

fn destination() -> impl Strategy<Value = Dst> {
    let leaf = account().prop_map(Dst::Account);
    leaf.prop_recursive(3, 16, 4, |inner| {
        let target = prop_oneof![1 => Just(Target::Kept), 3 => inner.prop_map(Target::To)];
        prop_oneof![
            (
                prop::collection::vec((0u32..60, target.clone()), 1..3),
                target.clone()
            )
                .prop_map(|(items, rest)| Dst::Allotment(items, Box::new(rest))),
            (
                prop::collection::vec((-10i128..300, target.clone()), 0..3),
                target
            )
                .prop_map(|(caps, rest)| Dst::InOrder(caps, Box::new(rest))),
        ]
    })
}

fn render_source(src: &Src, overdrafts: &mut BTreeSet<&'static str>) -> String {
    match src {
        Src::Account(a) => format!("@{a}"),
        Src::World => "@world".into(),
        Src::Bounded(a, k) => {
            overdrafts.insert(a);
            format!("@{a} allowing overdraft up to [$ASSET {k}]")
        }
        Src::Unbounded(a) => {
            overdrafts.insert(a);
            format!("@{a} allowing unbounded overdraft")
        }
        Src::InOrder(items) => {
            let items: Vec<String> = items.iter().map(|s| render_source(s, overdrafts)).collect();
            format!("{{ {} }}", items.join(" "))
        }
        Src::Capped(cap, s) => format!("max [$ASSET {cap}] from {}", render_source(s, overdrafts)),
        Src::Allotment(items, rest) => {
            let mut out: Vec<String> = items
                .iter()
                .map(|(p, s)| format!("{p}% from {}", render_source(s, overdrafts)))
                .collect();
            out.push(format!(
                "remaining from {}",
                render_source(rest, overdrafts)
            ));
            format!("{{ {} }}", out.join(" "))
        }
        Src::Oneof(items) => {
            let items: Vec<String> = items.iter().map(|s| render_source(s, overdrafts)).collect();
            format!("oneof {{ {} }}", items.join(" "))
        }
    }
}

fn render_target(target: &Target) -> String {
    match target {
        Target::Kept => "kept".into(),
        Target::To(d) => format!("to {}", render_destination(d)),
    }
}

fn render_destination(dst: &Dst) -> String {
    match dst {
        Dst::Account(a) => format!("@{a}"),
        Dst::Allotment(items, rest) => {
            let mut out: Vec<String> = items
                .iter()
                .map(|(p, t)| format!("{p}% {}", render_target(t)))
                .collect();
            out.push(format!("remaining {}", render_target(rest)));
            format!("{{ {} }}", out.join(" "))
        }
        Dst::InOrder(caps, rest) => {
            let mut out: Vec<String> = caps
                .iter()
                .map(|(c, t)| format!("max [$ASSET {c}] {}", render_target(t)))
                .collect();
            out.push(format!("remaining {}", render_target(rest)));
            format!("{{ {} }}", out.join(" "))
        }
    }
}

#[derive(Clone, Debug)]
struct Send {
    asset: &'static str,
    amount: Option<i128>,
    source: Src,
    destination: Dst,
}

fn send() -> impl Strategy<Value = Send> {
    (
        prop::sample::select(&["COIN", "EUR/2"][..]),
        prop::option::weighted(0.8, 0i128..400),
        source(),
        destination(),
    )
        .prop_map(|(asset, amount, source, destination)| Send {
            asset,
            amount,
            source,
            destination,
        })
}

static SUCCESSES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

#[test]
fn successful_runs_conserve_funds() {
    let total = cases(2048);
    let config = ProptestConfig {
        cases: total,
        ..ProptestConfig::default()
    };
    let mut runner = proptest::test_runner::TestRunner::new(config);
    let strategy = (
        prop::collection::vec(send(), 1..4),
        prop::collection::vec(0i128..300, ACCOUNTS.len()),
    );
    let result = runner.run(&strategy, |(sends, balances)| {
        conservation(&sends, &balances)
    });
    if let Err(error) = result {
        panic!("{error}");
    }
    // The property must actually be exercised: a good share of the generated runs succeed.
    let successes = SUCCESSES.load(std::sync::atomic::Ordering::Relaxed) as u64;
    assert!(
        successes > u64::from(total) / 5,
        "only {successes} successful runs"
    );
}

fn conservation(sends: &[Send], balances: &[i128]) -> Result<(), TestCaseError> {
    {
        let mut overdrafts = BTreeSet::new();
        let mut script = String::new();
        for send in sends {
            let value = match send.amount {
                Some(amount) => format!("[{} {amount}]", send.asset),
                None => format!("[{} *]", send.asset),
            };
            let source = render_source(&send.source, &mut overdrafts).replace("$ASSET", send.asset);
            let destination = render_destination(&send.destination).replace("$ASSET", send.asset);
            script.push_str(&format!(
                "send {value} (\n  source = {source}\n  destination = {destination}\n)\n"
            ));
        }
        let program = Program::parse(&script)
            .unwrap_or_else(|e| panic!("generated script must parse: {e}\n{script}"));
        let mut store = MemoryStore::default();
        let mut totals: BTreeMap<(String, String), i128> = BTreeMap::new();
        for (account, amount) in ACCOUNTS.iter().zip(balances) {
            for asset in ["COIN", "EUR/2"] {
                store.balances.push(BalanceRow {
                    account: account.to_string(),
                    asset: asset.to_string(),
                    color: String::new(),
                    amount: *amount,
                });
                totals.insert((account.to_string(), asset.to_string()), *amount);
            }
        }
        let flags = FeatureFlags::all();
        let Ok(execution) = run(&program, &BTreeMap::new(), &flags, &mut store) else {
            return Ok(());
        };
        SUCCESSES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let before: BTreeMap<String, i128> = ["COIN", "EUR/2"]
            .iter()
            .map(|asset| {
                (
                    asset.to_string(),
                    totals
                        .iter()
                        .filter(|((_, a), _)| a == asset)
                        .map(|(_, v)| v)
                        .sum(),
                )
            })
            .collect();
        let (mut left, mut reached): (BTreeMap<String, i128>, BTreeMap<String, i128>) =
            Default::default();
        for posting in &execution.postings {
            prop_assert!(
                posting.amount > 0,
                "non-positive posting {posting:?}\n{script}"
            );
            *left.entry(posting.asset.clone()).or_default() += posting.amount;
            *reached.entry(posting.asset.clone()).or_default() += posting.amount;
            *totals
                .entry((posting.source.clone(), posting.asset.clone()))
                .or_default() -= posting.amount;
            *totals
                .entry((posting.destination.clone(), posting.asset.clone()))
                .or_default() += posting.amount;
        }
        prop_assert_eq!(&left, &reached);
        for (asset, total) in &before {
            let after: i128 = totals
                .iter()
                .filter(|((_, a), _)| a == asset)
                .map(|(_, v)| v)
                .sum();
            prop_assert_eq!(*total, after, "total of {} changed\n{}", asset, script);
        }
        for ((account, asset), amount) in &totals {
            if account != "world" && !overdrafts.contains(account.as_str()) {
                prop_assert!(
                    *amount >= 0,
                    "@{account} ends at {asset} {amount} without overdraft\n{script}\n{:?}",
                    execution.postings
                );
            }
        }
        // Fixed sends deliver exactly their amount to receivers or back to the sources.
        let fixed_total: i128 = sends.iter().filter_map(|s| s.amount).sum();
        let moved: i128 = execution.postings.iter().map(|p| p.amount).sum();
        if sends.iter().all(|s| s.amount.is_some()) && !script.contains("kept") {
            prop_assert!(moved <= fixed_total);
        }
        Ok(())
    }
}
