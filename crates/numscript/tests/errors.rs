//! Runtime error kinds, including the upstream interpreter's error cases that the spec format
//! cannot express (`interpreter_test.go`). Each case runs a script and compares the error code
//! and message.

use std::collections::BTreeMap;

use numscript::{
    run, BalanceRequest, BalanceRow, FeatureFlags, MemoryStore, Program, Store, StoreError,
};

/// Runs `script` with `flags` and `vars`; `balances` are `(account, asset, amount)` rows and
/// `meta` `(account, key, value)`. Compares `CODE: message` of the error (or `ok`).
#[track_caller]
fn check(
    script: &str,
    flags: &[&str],
    vars: &[(&str, &str)],
    balances: &[(&str, &str, i128)],
    meta: &[(&str, &str, &str)],
    expected: &str,
) {
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
    for (account, key, value) in meta {
        store
            .metadata
            .entry(account.to_string())
            .or_default()
            .insert(key.to_string(), value.to_string());
    }
    let flags = FeatureFlags::from_names(flags).expect("known flags");
    let got = match run(&program, &vars, &flags, &mut store) {
        Ok(_) => "ok".to_string(),
        Err(error) => format!("{}: {error}", error.code()),
    };
    assert_eq!(got, expected, "\nscript:\n{script}");
}

const MID_SCRIPT: &str = "experimental-mid-script-function-call";

#[test]
fn bad_portion_syntax() {
    let script = "vars { portion $p } send [COIN 3] (source = @world destination = { $p to @a remaining kept })";
    check(
        script,
        &[],
        &[("p", "abc")],
        &[],
        &[],
        "BAD_PORTION_PARSING: invalid portion `abc`: invalid format",
    );
    check(
        script,
        &[],
        &[("p", "1/0")],
        &[],
        &[],
        "BAD_PORTION_PARSING: invalid portion `1/0`: invalid fractional format",
    );
    check(
        script,
        &[],
        &[("p", "100.1%")],
        &[],
        &[],
        "BAD_PORTION_PARSING: invalid portion `100.1%`: portion must be between 0% and 100% inclusive",
    );
    check(
        script,
        &[],
        &[("p", "2/1")],
        &[],
        &[],
        "BAD_PORTION_PARSING: invalid portion `2/1`: portion must be between 0% and 100% inclusive",
    );
    check(script, &[], &[("p", "1 / 3")], &[], &[], "ok");
    check(script, &[], &[("p", "0.0%")], &[], &[], "ok");
}

#[test]
fn bad_asset_in_meta() {
    check(
        "vars { asset $a = meta(@acc, \"k\") } send [$a 1] (source = @world destination = @d)",
        &[],
        &[],
        &[],
        &[("acc", "k", "not an asset")],
        "INVALID_ASSET: invalid asset: not an asset",
    );
}

#[test]
fn metadata_not_found_and_nested_meta() {
    check(
        "vars { number $n = meta(@acc, \"missing\") }",
        &[],
        &[],
        &[],
        &[],
        "METADATA_NOT_FOUND: account @acc has no metadata under the key `missing`",
    );
    check(
        "vars { number $n = 1 + meta(@acc, \"k\") }",
        &[MID_SCRIPT],
        &[],
        &[],
        &[("acc", "k", "2")],
        "INVALID_NESTED_META: meta() can only be the whole origin of a variable, not part of an expression",
    );
}

#[test]
fn allotments_in_send_all_and_bad_sums() {
    check(
        "send [COIN *] (source = { 50% from @a remaining from @b } destination = @d)",
        &[],
        &[],
        &[],
        &[],
        "INVALID_ALLOTMENT_IN_SEND_ALL: cannot send all from an allotment source",
    );
    check(
        "send [COIN 10] (source = { 30% from @a 30% from @b } destination = @d)",
        &[],
        &[],
        &[],
        &[],
        "INVALID_ALLOTMENT_SUM: invalid allotment: portions must sum to 1 (got 3/5)",
    );
    check(
        "send [COIN 10] (source = @world destination = { 1/2 to @a 1/3 to @b })",
        &[],
        &[],
        &[],
        &[],
        "INVALID_ALLOTMENT_SUM: invalid allotment: portions must sum to 1 (got 5/6)",
    );
    check(
        "send [COIN 10] (source = @world destination = { 80% to @a 30% to @b remaining kept })",
        &[],
        &[],
        &[],
        &[],
        "INVALID_ALLOTMENT_SUM: invalid allotment: portions must sum to 1 (got 11/10)",
    );
}

#[test]
fn division_by_zero() {
    check(
        "set_tx_meta(\"k\", 1/0)",
        &[],
        &[],
        &[],
        &[],
        "DIVIDE_BY_ZERO: cannot divide by zero (1/0)",
    );
}

#[test]
fn unbounded_sources_in_send_all() {
    check(
        "send [COIN *] (source = @world destination = @d)",
        &[],
        &[],
        &[],
        &[],
        "INVALID_UNBOUNDED_IN_SEND_ALL: cannot send all from an unbounded source (@world)",
    );
    check(
        "send [COIN *] (source = @a allowing unbounded overdraft destination = @d)",
        &[],
        &[],
        &[],
        &[],
        "INVALID_UNBOUNDED_IN_SEND_ALL: cannot send all from an unbounded source (@a)",
    );
}

#[test]
fn negative_balances_and_amounts() {
    check(
        "vars { monetary $b = balance(@a, COIN) }",
        &[],
        &[],
        &[("a", "COIN", -10)],
        &[],
        "NEGATIVE_BALANCE: cannot read the negative balance of @a (COIN -10)",
    );
    check(
        "send [COIN -10] (source = @world destination = @d)",
        &[],
        &[],
        &[],
        &[],
        "NEGATIVE_AMOUNT: cannot send or save a negative amount: -10",
    );
    check(
        "save [COIN -10] from @a",
        &[],
        &[],
        &[],
        &[],
        "NEGATIVE_AMOUNT: cannot send or save a negative amount: -10",
    );
}

#[test]
fn currency_mismatches() {
    check(
        "send [COIN 10] (source = @a allowing overdraft up to [EUR 10] destination = @d)",
        &[],
        &[],
        &[],
        &[],
        "MISMATCHED_CURRENCY: mismatched currency: expected COIN, got EUR",
    );
    check(
        "set_tx_meta(\"k\", [COIN 1] + [EUR 1])",
        &[],
        &[],
        &[],
        &[],
        "MISMATCHED_CURRENCY: mismatched currency: expected COIN, got EUR",
    );
    check(
        "send [COIN 10] (source = max [EUR 10] from @a destination = @d)",
        &[],
        &[],
        &[],
        &[],
        "MISMATCHED_CURRENCY: mismatched currency: expected COIN, got EUR",
    );
}

#[test]
fn invalid_literals_in_inputs() {
    let script = "vars { number $n monetary $m } set_tx_meta(\"k\", $n)";
    check(
        script,
        &[],
        &[("n", "abc"), ("m", "COIN 1")],
        &[],
        &[],
        "INVALID_NUMBER_LITERAL: invalid number `abc`",
    );
    check(
        script,
        &[],
        &[("n", "1"), ("m", "COIN abc")],
        &[],
        &[],
        "INVALID_NUMBER_LITERAL: invalid number `abc`",
    );
    check(
        script,
        &[],
        &[("n", "1"), ("m", "COIN")],
        &[],
        &[],
        "INVALID_MONETARY_LITERAL: invalid monetary `COIN`: expected `ASSET AMOUNT`",
    );
    check(
        script,
        &[],
        &[("n", "1"), ("m", "coin 1")],
        &[],
        &[],
        "INVALID_ASSET: invalid asset: coin",
    );
}

#[test]
fn type_errors() {
    check(
        "set_tx_meta(\"k\", 1 + [COIN 1])",
        &[],
        &[],
        &[],
        &[],
        "TYPE_ERROR: type error: expected a value of type number, got monetary `COIN 1`",
    );
    check(
        "set_tx_meta(\"k\", @a + 1)",
        &[],
        &[],
        &[],
        &[],
        "TYPE_ERROR: type error: expected a value of type monetary|number, got account `a`",
    );
    check(
        "send @a (source = @world destination = @d)",
        &[],
        &[],
        &[],
        &[],
        "TYPE_ERROR: type error: expected a value of type monetary, got account `a`",
    );
    check(
        "send [COIN 1] (source = [COIN 10] destination = @d)",
        &[],
        &[],
        &[],
        &[],
        "TYPE_ERROR: type error: expected a value of type account, got monetary `COIN 10`",
    );
    check(
        "send [COIN 1] (source = max @a from @b destination = @d)",
        &[],
        &[],
        &[],
        &[],
        "TYPE_ERROR: type error: expected a value of type monetary, got account `a`",
    );
    check(
        "set_tx_meta(1, 2)",
        &[],
        &[],
        &[],
        &[],
        "TYPE_ERROR: type error: expected a value of type string, got number `1`",
    );
}

#[test]
fn invalid_accounts() {
    check(
        "vars { account $a } send [COIN 1] (source = @world destination = $a)",
        &[],
        &[("a", "!invalid")],
        &[],
        &[],
        "INVALID_ACCOUNT_NAME: invalid account name: @!invalid",
    );
    let interpolation = ["experimental-account-interpolation"];
    check(
        "vars { string $s } set_tx_meta(\"k\", @acc:$s)",
        &interpolation,
        &[("s", "!invalid acc..")],
        &[],
        &[],
        "INVALID_ACCOUNT_NAME: invalid account name: @acc:!invalid acc..",
    );
    check(
        "vars { monetary $m } set_tx_meta(\"k\", @acc:$m)",
        &interpolation,
        &[("m", "COIN 1")],
        &[],
        &[],
        "CANNOT_CAST_TO_STRING: cannot use a monetary as part of an account name: `COIN 1`",
    );
}

#[test]
fn variables_and_functions() {
    check(
        "send $x (source = @world destination = @d)",
        &[],
        &[],
        &[],
        &[],
        "UNBOUND_VARIABLE: unbound variable: $x",
    );
    check(
        "vars { monetary $m } send $m (source = @world destination = @d)",
        &[],
        &[],
        &[],
        &[],
        "MISSING_VARIABLE: missing variable: $m is declared but has no value",
    );
    check(
        "foo()",
        &[],
        &[],
        &[],
        &[],
        "UNBOUND_FUNCTION: unknown function: foo",
    );
    check(
        "vars { number $n = foo() }",
        &[],
        &[],
        &[],
        &[],
        "UNBOUND_FUNCTION: unknown function: foo",
    );
    check(
        "set_tx_meta(\"k\")",
        &[],
        &[],
        &[],
        &[],
        "BAD_ARITY: wrong number of arguments for set_tx_meta: expected 2, got 1",
    );
    check(
        "vars { foo $x }",
        &[],
        &[("x", "1")],
        &[],
        &[],
        "INVALID_TYPE: unknown type: foo",
    );
}

#[test]
fn feature_flags() {
    check(
        "send [COIN 1] (source = oneof { @world } destination = @d)",
        &[],
        &[],
        &[],
        &[],
        "EXPERIMENTAL_FEATURE: this feature is experimental: enable the `experimental-oneof` feature flag to use it",
    );
    check(
        "send [COIN 1] (source = oneof { @world } destination = @d)",
        &["experimental-oneof"],
        &[],
        &[],
        &[],
        "ok",
    );
    check(
        "set_tx_meta(\"k\", balance(@a, COIN))",
        &[],
        &[],
        &[],
        &[],
        "EXPERIMENTAL_FEATURE: this feature is experimental: enable the `experimental-mid-script-function-call` feature flag to use it",
    );
    check(
        "#![feature(\"nope\")]",
        &[],
        &[],
        &[],
        &[],
        "INVALID_FEATURE: unknown feature flag: `nope`",
    );
    assert!(FeatureFlags::from_names(["nope"]).is_err());
}

#[test]
fn invalid_color_and_scaling_from_world() {
    check(
        "send [COIN 1] (source = @a \\ \"red\" destination = @d)",
        &["experimental-asset-colors"],
        &[],
        &[],
        &[],
        "INVALID_COLOR: invalid color `red`: colors are made of uppercase letters",
    );
    check(
        "send [EUR/2 *] (source = @world with scaling through @swap destination = @dest)",
        &["experimental-asset-scaling"],
        &[],
        &[],
        &[],
        "INVALID_UNBOUNDED_ADDRESS_IN_SCALING_ADDRESS: cannot scale from @world: it has no balances (an unbounded account cannot be scaled)",
    );
}

#[test]
fn missing_funds_reports_account_needed_and_available() {
    let program = Program::parse("send [COIN 10] (source = @a destination = @d)").unwrap();
    let mut store = MemoryStore::default();
    store.balances.push(BalanceRow {
        account: "a".into(),
        asset: "COIN".into(),
        color: String::new(),
        amount: 4,
    });
    let error = run(
        &program,
        &BTreeMap::new(),
        &FeatureFlags::none(),
        &mut store,
    )
    .unwrap_err();
    assert_eq!(
        error,
        numscript::RuntimeError::MissingFunds {
            account: Some("a".into()),
            asset: "COIN".into(),
            needed: 10,
            available: 4
        }
    );
    let program = Program::parse("send [COIN 10] (source = { @a @b } destination = @d)").unwrap();
    let error = run(
        &program,
        &BTreeMap::new(),
        &FeatureFlags::none(),
        &mut store,
    )
    .unwrap_err();
    assert!(matches!(
        error,
        numscript::RuntimeError::MissingFunds {
            account: None,
            needed: 10,
            available: 4,
            ..
        }
    ));
}

struct FailingStore;

impl Store for FailingStore {
    fn get_balances(&mut self, _: &[BalanceRequest]) -> Result<Vec<BalanceRow>, StoreError> {
        Err(StoreError("database is down".into()))
    }
    fn get_account_metadata(&mut self, _: &str, _: &str) -> Result<Option<String>, StoreError> {
        Err(StoreError("database is down".into()))
    }
}

#[test]
fn store_errors_surface() {
    let program = Program::parse("send [COIN 10] (source = @a destination = @d)").unwrap();
    let error = run(
        &program,
        &BTreeMap::new(),
        &FeatureFlags::none(),
        &mut FailingStore,
    )
    .unwrap_err();
    assert_eq!(error.code(), "STORE_ERROR");
    assert_eq!(error.to_string(), "store error: database is down");
}
