//! The batching contract of `Store`: one pre-fetch call whenever the script allows it, `world`
//! never asked for, no (account, asset, color) asked twice, later calls only for balances that
//! depend on values known mid-script. Each test lists the calls a run makes.

use std::collections::BTreeMap;

use numscript::{run, BalanceRow, FeatureFlags, MemoryStore, Program};

/// Runs `script` (all flags on) and renders each `get_balances` call on one line as
/// `account asset[\color]` items, then `meta account key` lines, then `=> ok|CODE`.
#[track_caller]
fn check(script: &str, vars: &[(&str, &str)], balances: &[(&str, &str, i128)], expected: &str) {
    let program = Program::parse(script).unwrap_or_else(|e| panic!("parse error: {e}"));
    let vars: BTreeMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let mut store = MemoryStore::default();
    for (account, asset, amount) in balances {
        store.balances.push(BalanceRow {
            account: account.to_string(),
            asset: asset.to_string(),
            color: String::new(),
            amount: *amount,
        });
    }
    store
        .metadata
        .entry("cfg".into())
        .or_default()
        .insert("acc".into(), "users:7".into());
    let result = run(&program, &vars, &FeatureFlags::all(), &mut store);
    let mut lines = Vec::new();
    for call in &store.balance_calls {
        let items: Vec<String> = call
            .iter()
            .map(|r| {
                let color = if r.color.is_empty() {
                    String::new()
                } else {
                    format!("\\{}", r.color)
                };
                format!("{} {}{color}", r.account, r.asset)
            })
            .collect();
        lines.push(format!("balances: {}", items.join(", ")));
    }
    for (account, key) in &store.metadata_calls {
        lines.push(format!("meta: {account} {key}"));
    }
    lines.push(match result {
        Ok(_) => "=> ok".to_string(),
        Err(error) => format!("=> {}", error.code()),
    });
    // The contract itself, whatever the script.
    let mut seen = std::collections::BTreeSet::new();
    for request in store.balance_calls.iter().flatten() {
        assert_ne!(request.account, "world", "world must never be queried");
        assert!(seen.insert(request.clone()), "asked twice for {request:?}");
    }
    assert_eq!(lines.join("\n"), expected.trim(), "\nscript:\n{script}");
}

#[test]
fn wallet_debit_is_one_call_and_never_asks_for_world() {
    check(
        "send [USD/2 100] (
           source = { @wallets:1:promo @wallets:1:main @world }
           destination = @merchant
         )",
        &[],
        &[("wallets:1:main", "USD/2", 500)],
        "balances: wallets:1:promo USD/2, wallets:1:main USD/2\n=> ok",
    );
}

#[test]
fn no_duplicate_requests_across_statements() {
    check(
        "send [COIN 1] (source = @a destination = @b)
         send [COIN 1] (source = { @a @b } destination = @c)
         send [EUR 1] (source = @a destination = @c)
         save [COIN 1] from @a",
        &[],
        &[("a", "COIN", 10), ("a", "EUR", 10)],
        "balances: a COIN, b COIN, a EUR\n=> ok",
    );
}

#[test]
fn every_source_form_is_batched() {
    check(
        "send [COIN 10] (
           source = {
             max [COIN 2] from @capped
             @bounded allowing overdraft up to [COIN 1]
             @unbounded allowing unbounded overdraft
           }
           destination = @d
         )
         send [COIN 10] (source = oneof { @o1 @o2 } destination = @d)
         send [COIN 10] (source = { 50% from @p1 remaining from @p2 } destination = @d)
         send [COIN 1] (source = @c \\ \"RED\" destination = @d)",
        &[],
        &[
            ("o2", "COIN", 10),
            ("p1", "COIN", 5),
            ("p2", "COIN", 5),
            ("c", "COIN", 5),
        ],
        "balances: capped COIN, bounded COIN, o1 COIN, o2 COIN, p1 COIN, p2 COIN, c COIN\\RED
=> MISSING_FUNDS",
    );
}

#[test]
fn balances_read_by_variables_join_the_same_call() {
    check(
        "vars {
           monetary $initial = balance(@a, USD/2)
           monetary $debt = overdraft(@b, USD/2)
         }
         send [USD/2 10] (source = { @a @c } destination = { max $initial to @x remaining to @y })
         set_tx_meta(\"debt\", $debt)",
        &[],
        &[("a", "USD/2", 4), ("b", "USD/2", -3), ("c", "USD/2", 50)],
        "balances: a USD/2, b USD/2, c USD/2\n=> ok",
    );
}

#[test]
fn mid_script_balance_reads_are_batched_up_front() {
    check(
        "send [COIN 1] (source = @world destination = @a)
         send balance(@a, COIN) (source = @world destination = @b)
         set_tx_meta(\"b\", balance(@b, COIN))",
        &[],
        &[("a", "COIN", 5)],
        "balances: a COIN, b COIN\n=> ok",
    );
}

#[test]
fn balances_that_depend_on_other_balances_are_asked_for_later() {
    // The account depends on a balance, so it is only known once that balance is read: one
    // more call, asked for nothing twice.
    check(
        "vars {
           monetary $m = balance(@counter, COIN)
           number $n = get_amount($m)
         }
         send [COIN 1] (source = @users:$n destination = @d)",
        &[],
        &[("counter", "COIN", 7), ("users:7", "COIN", 3)],
        "balances: counter COIN, users:0 COIN\nbalances: users:7 COIN\n=> ok",
    );
}

#[test]
fn accounts_from_metadata_are_prefetched_and_metadata_read_once() {
    check(
        "vars { account $acc = meta(@cfg, \"acc\") }
         send [COIN 2] (source = $acc destination = @d)",
        &[],
        &[("users:7", "COIN", 3)],
        "balances: users:7 COIN\nmeta: cfg acc\n=> ok",
    );
}

#[test]
fn scaling_asks_for_every_precision_of_the_base() {
    check(
        "send [EUR/2 100] (source = { @a @b with scaling through @swap } destination = @d)",
        &[],
        &[("a", "EUR/2", 50), ("b", "EUR/3", 500), ("b", "EUR", 1)],
        "balances: a EUR/2, b EUR/*\n=> ok",
    );
}

#[test]
fn scripts_without_sources_ask_nothing() {
    check(
        "set_tx_meta(\"k\", 1)\nsend [COIN 5] (source = @world destination = @d)",
        &[],
        &[],
        "=> ok",
    );
}
