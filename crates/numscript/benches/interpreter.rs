//! Parse + interpret benchmarks for the scripts Coffer runs most.
//! `cargo bench -p numscript --bench interpreter`

use std::collections::BTreeMap;
use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use numscript::{
    run, BalanceRequest, BalanceRow, FeatureFlags, Program, ProgramCache, Store, StoreError,
};

/// A store answering from a fixed list of rows, as a ledger's batched read would.
struct RowsStore {
    rows: Vec<BalanceRow>,
}

impl Store for RowsStore {
    fn get_balances(&mut self, requests: &[BalanceRequest]) -> Result<Vec<BalanceRow>, StoreError> {
        Ok(self
            .rows
            .iter()
            .filter(|row| {
                requests.iter().any(|r| {
                    r.account == row.account && r.asset == row.asset && r.color == row.color
                })
            })
            .cloned()
            .collect())
    }
    fn get_account_metadata(&mut self, _: &str, _: &str) -> Result<Option<String>, StoreError> {
        Ok(None)
    }
}

const WALLET_DEBIT: &str = "vars { monetary $amount }
send $amount (
  source = {
    @wallets:w1:promo
    @wallets:w1:main
    @wallets:w1:credit allowing overdraft up to [USD/2 5000]
  }
  destination = @merchants:42
)
";

const ALLOTMENT_10: &str = "send [USD/2 100000] (
  source = @wallets:w1:main
  destination = {
    10% to @d:1
    10% to @d:2
    10% to @d:3
    10% to @d:4
    10% to @d:5
    10% to @d:6
    10% to @d:7
    10% to @d:8
    10% to @d:9
    10% to @d:10
  }
)
";

fn row(account: &str, amount: i128) -> BalanceRow {
    BalanceRow {
        account: account.into(),
        asset: "USD/2".into(),
        color: String::new(),
        amount,
    }
}

fn benches(c: &mut Criterion) {
    let flags = FeatureFlags::none();
    let mut vars = BTreeMap::new();
    vars.insert("amount".to_string(), "USD/2 2500".to_string());
    let debit_rows = vec![
        row("wallets:w1:promo", 1000),
        row("wallets:w1:main", 1000),
        row("wallets:w1:credit", 0),
    ];
    let allot_rows = vec![row("wallets:w1:main", 1_000_000)];
    let no_vars = BTreeMap::new();

    // Sanity: the scripts do what the benchmark claims.
    let debit = run(
        &Program::parse(WALLET_DEBIT).unwrap(),
        &vars,
        &flags,
        &mut RowsStore {
            rows: debit_rows.clone(),
        },
    )
    .unwrap();
    assert_eq!(debit.postings.len(), 3);
    let allot = run(
        &Program::parse(ALLOTMENT_10).unwrap(),
        &no_vars,
        &flags,
        &mut RowsStore {
            rows: allot_rows.clone(),
        },
    )
    .unwrap();
    assert_eq!(allot.postings.len(), 10);

    c.bench_function("wallet_debit/parse_and_run", |b| {
        b.iter(|| {
            let program = Program::parse(black_box(WALLET_DEBIT)).unwrap();
            let mut store = RowsStore {
                rows: debit_rows.clone(),
            };
            black_box(run(&program, &vars, &flags, &mut store).unwrap())
        })
    });
    c.bench_function("allotment_10/parse_and_run", |b| {
        b.iter(|| {
            let program = Program::parse(black_box(ALLOTMENT_10)).unwrap();
            let mut store = RowsStore {
                rows: allot_rows.clone(),
            };
            black_box(run(&program, &no_vars, &flags, &mut store).unwrap())
        })
    });

    let cache = ProgramCache::new(64);
    c.bench_function("wallet_debit/cached_run", |b| {
        b.iter(|| {
            let program = cache.get_or_parse(black_box(WALLET_DEBIT)).unwrap();
            let mut store = RowsStore {
                rows: debit_rows.clone(),
            };
            black_box(run(&program, &vars, &flags, &mut store).unwrap())
        })
    });
    c.bench_function("allotment_10/cached_run", |b| {
        b.iter(|| {
            let program = cache.get_or_parse(black_box(ALLOTMENT_10)).unwrap();
            let mut store = RowsStore {
                rows: allot_rows.clone(),
            };
            black_box(run(&program, &no_vars, &flags, &mut store).unwrap())
        })
    });

    c.bench_function("wallet_debit/parse_only", |b| {
        b.iter(|| Program::parse(black_box(WALLET_DEBIT)).unwrap())
    });
}

criterion_group!(numscript_benches, benches);
criterion_main!(numscript_benches);
