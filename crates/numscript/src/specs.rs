//! Spec tests in the upstream format (`X.num` + `X.num.specs.json`). Pure: the caller reads
//! the files and passes their text.
//!
//! Supported: top-level `featureFlags`, `balances`, `variables`, `metadata` merged with each
//! case's own (variables per key, metadata per (account, key), balances per (account, asset,
//! color)); balances as a list of rows `{account, asset, amount, color?}` (or the older nested
//! map); `focus`/`skip`; expectations `expect.postings`, `expect.txMetadata`,
//! `expect.metadata`, `expect.endBalances`, `expect.endBalances.include`, `expect.movements`,
//! `expect.error.missingFunds` and `expect.error.negativeAmount`. JSON numbers are read
//! losslessly as i128.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value as Json};

use crate::{run, Amount, BalanceRow, FeatureFlags, MemoryStore, Posting, Program, RuntimeError};

/// The outcome of one spec file.
#[derive(Clone, Debug, Default)]
pub struct SpecFileReport {
    pub cases: Vec<CaseReport>,
    /// A problem with the file as a whole (bad JSON, a script that does not parse, no cases…).
    pub error: Option<String>,
    /// Some case used `focus` or `skip`: the run must not count as green.
    pub focus_or_skip: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CaseStatus {
    Passed,
    Failed,
    Skipped,
}

#[derive(Clone, Debug)]
pub struct CaseReport {
    /// The case's `it`.
    pub it: String,
    pub status: CaseStatus,
    pub failures: Vec<Failure>,
}

/// One failed expectation, with both sides rendered as compact JSON.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    pub assertion: String,
    pub expected: String,
    pub got: String,
}

impl SpecFileReport {
    pub fn passed(&self) -> usize {
        self.cases
            .iter()
            .filter(|c| c.status == CaseStatus::Passed)
            .count()
    }
    pub fn failed(&self) -> usize {
        self.cases
            .iter()
            .filter(|c| c.status == CaseStatus::Failed)
            .count()
    }
}

type Balances = BTreeMap<(String, String, String), Amount>;
type Metadata = BTreeMap<String, BTreeMap<String, String>>;

/// Runs every case of a spec file against its script.
pub fn run_spec_file(script: &str, specs_json: &str) -> SpecFileReport {
    match run_inner(script, specs_json) {
        Ok(report) => report,
        Err(error) => SpecFileReport {
            error: Some(error),
            ..SpecFileReport::default()
        },
    }
}

fn run_inner(script: &str, specs_json: &str) -> Result<SpecFileReport, String> {
    let specs: Json = serde_json::from_str(specs_json).map_err(|e| format!("invalid JSON: {e}"))?;
    let specs = specs.as_object().ok_or("the specs must be a JSON object")?;
    let program = Program::parse(script).map_err(|e| format!("the script does not parse:\n{e}"))?;
    let flags = match specs.get("featureFlags") {
        None => FeatureFlags::none(),
        Some(flags) => {
            let names = flags.as_array().ok_or("`featureFlags` must be a list")?;
            let names: Vec<&str> = names
                .iter()
                .map(|n| n.as_str().ok_or("feature flags are strings"))
                .collect::<Result<_, _>>()?;
            FeatureFlags::from_names(names).map_err(|e| e.to_string())?
        }
    };
    let top_balances = balances(specs.get("balances"), "balances")?;
    let top_variables = variables(specs.get("variables"))?;
    let top_metadata = metadata(specs.get("metadata"), "metadata")?;
    let cases = specs
        .get("testCases")
        .and_then(Json::as_array)
        .ok_or("`testCases` must be a list")?;
    if cases.is_empty() {
        return Err("empty test suite: `testCases` has no case".into());
    }
    let focused = cases
        .iter()
        .any(|c| c.get("focus").and_then(Json::as_bool) == Some(true));
    let mut report = SpecFileReport::default();
    for case in cases {
        let case = case.as_object().ok_or("each test case must be an object")?;
        let it = case
            .get("it")
            .and_then(Json::as_str)
            .ok_or("each test case needs an `it` string")?
            .to_string();
        let skip = case.get("skip").and_then(Json::as_bool) == Some(true);
        let focus = case.get("focus").and_then(Json::as_bool) == Some(true);
        report.focus_or_skip |= skip || focus;
        if skip || (focused && !focus) {
            report.cases.push(CaseReport {
                it,
                status: CaseStatus::Skipped,
                failures: Vec::new(),
            });
            continue;
        }
        let mut merged_balances = top_balances.clone();
        merged_balances.extend(balances(case.get("balances"), "balances")?);
        let mut merged_variables = top_variables.clone();
        merged_variables.extend(variables(case.get("variables"))?);
        let mut merged_metadata = top_metadata.clone();
        for (account, entries) in metadata(case.get("metadata"), "metadata")? {
            merged_metadata.entry(account).or_default().extend(entries);
        }
        let failures = run_case(
            &program,
            &flags,
            case,
            merged_balances,
            &merged_variables,
            merged_metadata,
        )?;
        let status = if failures.is_empty() {
            CaseStatus::Passed
        } else {
            CaseStatus::Failed
        };
        report.cases.push(CaseReport {
            it,
            status,
            failures,
        });
    }
    Ok(report)
}

fn run_case(
    program: &Program,
    flags: &FeatureFlags,
    case: &Map<String, Json>,
    balances_in: Balances,
    variables: &BTreeMap<String, String>,
    metadata_in: Metadata,
) -> Result<Vec<Failure>, String> {
    let mut store = MemoryStore {
        balances: balances_in
            .iter()
            .map(|((account, asset, color), amount)| BalanceRow {
                account: account.clone(),
                asset: asset.clone(),
                color: color.clone(),
                amount: *amount,
            })
            .collect(),
        metadata: metadata_in,
        ..MemoryStore::default()
    };
    let result = run(program, variables, flags, &mut store);
    let mut failures = Vec::new();
    let expect_flag = |key: &str| case.get(key).and_then(Json::as_bool).unwrap_or(false);
    let expect_missing_funds = expect_flag("expect.error.missingFunds");
    let expect_negative_amount = expect_flag("expect.error.negativeAmount");
    let execution = match result {
        Err(error) => {
            let (missing_funds, negative_amount) = match &error {
                RuntimeError::MissingFunds { .. } => (true, false),
                RuntimeError::NegativeAmount { .. } => (false, true),
                _ => {
                    failures.push(Failure {
                        assertion: "run".into(),
                        expected: "success".into(),
                        got: format!("runtime error {}: {error}", error.code()),
                    });
                    return Ok(failures);
                }
            };
            for (assertion, expected, got) in [
                (
                    "expect.error.missingFunds",
                    expect_missing_funds,
                    missing_funds,
                ),
                (
                    "expect.error.negativeAmount",
                    expect_negative_amount,
                    negative_amount,
                ),
            ] {
                if expected != got {
                    let got_text = if got {
                        format!("true ({error})")
                    } else {
                        "false".into()
                    };
                    failures.push(Failure {
                        assertion: assertion.into(),
                        expected: expected.to_string(),
                        got: got_text,
                    });
                }
            }
            return Ok(failures);
        }
        Ok(execution) => execution,
    };
    for (assertion, expected) in [
        ("expect.error.missingFunds", expect_missing_funds),
        ("expect.error.negativeAmount", expect_negative_amount),
    ] {
        if expected {
            failures.push(Failure {
                assertion: assertion.into(),
                expected: "true".into(),
                got: "false (the run succeeded)".into(),
            });
        }
    }
    if let Some(expected) = case.get("expect.postings") {
        let expected = postings(expected)?;
        if expected != execution.postings {
            failures.push(Failure {
                assertion: "expect.postings".into(),
                expected: postings_json(&expected),
                got: postings_json(&execution.postings),
            });
        }
    }
    if let Some(expected) = case.get("expect.txMetadata") {
        let expected = string_map(expected, "expect.txMetadata")?;
        let got: BTreeMap<String, String> = execution.tx_metadata.iter().cloned().collect();
        if expected != got {
            failures.push(Failure {
                assertion: "expect.txMetadata".into(),
                expected: json!(expected).to_string(),
                got: json!(got).to_string(),
            });
        }
    }
    if let Some(expected) = case.get("expect.metadata") {
        let expected = metadata(Some(expected), "expect.metadata")?;
        if expected != execution.account_metadata {
            failures.push(Failure {
                assertion: "expect.metadata".into(),
                expected: json!(expected).to_string(),
                got: json!(execution.account_metadata).to_string(),
            });
        }
    }
    let end_balances = || -> Result<Balances, String> {
        let mut end = balances_in.clone();
        for posting in &execution.postings {
            for (account, delta) in [
                (&posting.source, -posting.amount),
                (&posting.destination, posting.amount),
            ] {
                let key = (
                    account.clone(),
                    posting.asset.clone(),
                    posting.color.clone(),
                );
                let entry = end.entry(key).or_insert(0);
                *entry = entry
                    .checked_add(delta)
                    .ok_or("end balance overflows i128")?;
            }
        }
        Ok(end)
    };
    if let Some(expected) = case.get("expect.endBalances") {
        let expected = balances(Some(expected), "expect.endBalances")?;
        let got = end_balances()?;
        if expected != got {
            failures.push(Failure {
                assertion: "expect.endBalances".into(),
                expected: balances_json(&expected),
                got: balances_json(&got),
            });
        }
    }
    if let Some(expected) = case.get("expect.endBalances.include") {
        let expected = balances(Some(expected), "expect.endBalances.include")?;
        let got = end_balances()?;
        let matches = expected
            .iter()
            .all(|(key, amount)| got.get(key).copied().unwrap_or(0) == *amount);
        if !matches {
            failures.push(Failure {
                assertion: "expect.endBalances.include".into(),
                expected: balances_json(&expected),
                got: balances_json(&got),
            });
        }
    }
    if let Some(expected) = case.get("expect.movements") {
        let expected = movements(expected)?;
        let mut got: BTreeMap<(String, String, String, String), Amount> = BTreeMap::new();
        for posting in &execution.postings {
            let key = (
                posting.source.clone(),
                posting.destination.clone(),
                posting.asset.clone(),
                posting.color.clone(),
            );
            let entry = got.entry(key).or_insert(0);
            *entry = entry
                .checked_add(posting.amount)
                .ok_or("movement overflows i128")?;
        }
        if expected != got {
            failures.push(Failure {
                assertion: "expect.movements".into(),
                expected: movements_json(&expected),
                got: movements_json(&got),
            });
        }
    }
    Ok(failures)
}

fn amount(value: &Json, what: &str) -> Result<Amount, String> {
    let text = match value {
        Json::Number(n) => n.to_string(),
        Json::String(s) => s.clone(),
        _ => return Err(format!("{what}: amounts must be integers")),
    };
    match crate::value::parse_integer(&text) {
        Some(Ok(n)) => Ok(n),
        Some(Err(())) => Err(format!(
            "{what}: amount {text} is beyond the supported range (i128)"
        )),
        None => Err(format!("{what}: `{text}` is not an integer amount")),
    }
}

fn text(object: &Map<String, Json>, key: &str, what: &str) -> Result<String, String> {
    match object.get(key) {
        Some(Json::String(s)) => Ok(s.clone()),
        None | Some(Json::Null) if key == "color" => Ok(String::new()),
        _ => Err(format!("{what}: `{key}` must be a string")),
    }
}

/// Balances: a list of rows (duplicates rejected), or the older `{account: {asset: amount}}`.
fn balances(value: Option<&Json>, what: &str) -> Result<Balances, String> {
    let mut out = Balances::new();
    match value {
        None | Some(Json::Null) => {}
        Some(Json::Array(rows)) => {
            for row in rows {
                let row = row
                    .as_object()
                    .ok_or_else(|| format!("{what}: each row must be an object"))?;
                let key = (
                    text(row, "account", what)?,
                    text(row, "asset", what)?,
                    text(row, "color", what)?,
                );
                let value = amount(row.get("amount").unwrap_or(&Json::Null), what)?;
                if out.insert(key.clone(), value).is_some() {
                    return Err(format!(
                        "{what}: duplicate balance for @{} {} {:?}",
                        key.0, key.1, key.2
                    ));
                }
            }
        }
        Some(Json::Object(accounts)) => {
            for (account, assets) in accounts {
                let assets = assets
                    .as_object()
                    .ok_or_else(|| format!("{what}: expected {{asset: amount}}"))?;
                for (asset, value) in assets {
                    out.insert(
                        (account.clone(), asset.clone(), String::new()),
                        amount(value, what)?,
                    );
                }
            }
        }
        Some(_) => return Err(format!("{what}: expected a list of rows")),
    }
    Ok(out)
}

fn variables(value: Option<&Json>) -> Result<BTreeMap<String, String>, String> {
    match value {
        None | Some(Json::Null) => Ok(BTreeMap::new()),
        Some(value) => string_map(value, "variables"),
    }
}

fn string_map(value: &Json, what: &str) -> Result<BTreeMap<String, String>, String> {
    let object = value
        .as_object()
        .ok_or_else(|| format!("{what}: expected an object"))?;
    object
        .iter()
        .map(|(k, v)| match v {
            Json::String(s) => Ok((k.clone(), s.clone())),
            Json::Number(n) => Ok((k.clone(), n.to_string())),
            _ => Err(format!("{what}: `{k}` must be a string")),
        })
        .collect()
}

fn metadata(value: Option<&Json>, what: &str) -> Result<Metadata, String> {
    let mut out = Metadata::new();
    if let Some(value) = value.filter(|v| !v.is_null()) {
        let accounts = value
            .as_object()
            .ok_or_else(|| format!("{what}: expected {{account: {{key: value}}}}"))?;
        for (account, entries) in accounts {
            out.insert(account.clone(), string_map(entries, what)?);
        }
    }
    Ok(out)
}

fn postings(value: &Json) -> Result<Vec<Posting>, String> {
    let what = "expect.postings";
    let rows = value.as_array().ok_or("expect.postings must be a list")?;
    rows.iter()
        .map(|row| {
            let row = row.as_object().ok_or("each posting must be an object")?;
            Ok(Posting {
                source: text(row, "source", what)?,
                destination: text(row, "destination", what)?,
                asset: text(row, "asset", what)?,
                color: text(row, "color", what)?,
                amount: amount(row.get("amount").unwrap_or(&Json::Null), what)?,
            })
        })
        .collect()
}

type Movements = BTreeMap<(String, String, String, String), Amount>;

/// Movements: a list of `{source, destination, asset, amount, color?}`, or the older
/// `{source: {destination: {asset: amount}}}`.
fn movements(value: &Json) -> Result<Movements, String> {
    let what = "expect.movements";
    let mut out = Movements::new();
    match value {
        Json::Array(rows) => {
            for posting in postings(&Json::Array(rows.clone()))? {
                let key = (
                    posting.source,
                    posting.destination,
                    posting.asset,
                    posting.color,
                );
                if out.insert(key, posting.amount).is_some() {
                    return Err(format!("{what}: duplicate movement"));
                }
            }
        }
        Json::Object(sources) => {
            for (source, destinations) in sources {
                let destinations = destinations
                    .as_object()
                    .ok_or_else(|| format!("{what}: bad shape"))?;
                for (destination, assets) in destinations {
                    let assets = assets
                        .as_object()
                        .ok_or_else(|| format!("{what}: bad shape"))?;
                    for (asset, value) in assets {
                        let key = (
                            source.clone(),
                            destination.clone(),
                            asset.clone(),
                            String::new(),
                        );
                        out.insert(key, amount(value, what)?);
                    }
                }
            }
        }
        _ => return Err(format!("{what}: expected a list")),
    }
    Ok(out)
}

/// A JSON number with the exact digits of an i128.
fn number(amount: Amount) -> Json {
    Json::Number(
        amount
            .to_string()
            .parse()
            .expect("an integer is a JSON number"),
    )
}

fn postings_json(postings: &[Posting]) -> String {
    let rows: Vec<Json> = postings
        .iter()
        .map(|p| {
            let mut row = json!({"source": p.source, "destination": p.destination, "asset": p.asset, "amount": number(p.amount)});
            if !p.color.is_empty() {
                row["color"] = json!(p.color);
            }
            row
        })
        .collect();
    Json::Array(rows).to_string()
}

fn balances_json(balances: &Balances) -> String {
    let rows: Vec<Json> = balances
        .iter()
        .map(|((account, asset, color), amount)| {
            let mut row = json!({"account": account, "asset": asset, "amount": number(*amount)});
            if !color.is_empty() {
                row["color"] = json!(color);
            }
            row
        })
        .collect();
    Json::Array(rows).to_string()
}

fn movements_json(movements: &Movements) -> String {
    let postings: Vec<Posting> = movements
        .iter()
        .map(|((source, destination, asset, color), amount)| Posting {
            source: source.clone(),
            destination: destination.clone(),
            asset: asset.clone(),
            color: color.clone(),
            amount: *amount,
        })
        .collect();
    postings_json(&postings)
}
