//! Fuzz target: any bytes, read as a script, are checked, parsed and (when they parse) run
//! with every feature flag against a small store. Nothing may panic.
#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use numscript::{run, BalanceRow, FeatureFlags, MemoryStore, Program};

fuzz_target!(|data: &[u8]| {
    let Ok(source) = std::str::from_utf8(data) else {
        return;
    };
    let _ = numscript::check(source);
    let Ok(program) = Program::parse(source) else {
        return;
    };
    let mut store = MemoryStore::default();
    for (account, asset, amount) in [
        ("a", "COIN", 100i128),
        ("b", "COIN", -5),
        ("a", "EUR/2", 1_000),
        ("a", "EUR", 3),
        ("c", "COIN", i128::MAX),
    ] {
        store.balances.push(BalanceRow {
            account: account.into(),
            asset: asset.into(),
            color: String::new(),
            amount,
        });
    }
    store.balances.push(BalanceRow { account: "a".into(), asset: "COIN".into(), color: "RED".into(), amount: 7 });
    store.metadata.entry("a".into()).or_default().insert("k".into(), "COIN 5".into());
    let vars: BTreeMap<String, String> = [("x", "COIN 10"), ("n", "3"), ("acc", "a"), ("p", "1/3"), ("s", "RED")]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let _ = run(&program, &vars, &FeatureFlags::all(), &mut store);
});
