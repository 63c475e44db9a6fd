//! Numscript: parser, checker and interpreter. Pure: no I/O, no database.
//! (Skeleton: the API below is the contract the ledger builds on.)

use std::collections::BTreeMap;

/// Amounts are exact integers; anything outside i128 is an error, never a wrap.
pub type Amount = i128;

/// A parsed script. Cheap to clone, shareable across threads.
#[derive(Clone, Debug)]
pub struct Program {
    source: std::sync::Arc<str>,
}

impl Program {
    pub fn parse(source: &str) -> Result<Program, ParseErrors> {
        Ok(Program { source: source.into() })
    }
    pub fn source(&self) -> &str {
        &self.source
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    pub line: u32,
    pub column: u32,
    pub message: String,
}

#[derive(Clone, Debug, thiserror::Error)]
#[error("{}", .diagnostics.iter().map(|d| format!("{}:{}: {}", d.line, d.column, d.message)).collect::<Vec<_>>().join("\n"))]
pub struct ParseErrors {
    pub diagnostics: Vec<Diagnostic>,
}

#[derive(Clone, Debug, Default)]
pub struct FeatureFlags {
    pub names: std::collections::BTreeSet<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BalanceRequest {
    pub account: String,
    pub asset: String,
    pub color: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BalanceRow {
    pub account: String,
    pub asset: String,
    pub color: String,
    pub amount: Amount,
}

#[derive(Clone, Debug, thiserror::Error)]
#[error("{0}")]
pub struct StoreError(pub String);

pub trait Store {
    fn get_balances(&mut self, requests: &[BalanceRequest]) -> Result<Vec<BalanceRow>, StoreError>;
    fn get_account_metadata(&mut self, account: &str, key: &str) -> Result<Option<String>, StoreError>;
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Posting {
    pub source: String,
    pub destination: String,
    pub asset: String,
    pub color: String,
    pub amount: Amount,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Execution {
    pub postings: Vec<Posting>,
    pub tx_metadata: Vec<(String, String)>,
    pub account_metadata: BTreeMap<String, BTreeMap<String, String>>,
}

#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum RuntimeError {
    #[error("Not enough funds. Needed [{asset} {needed}] (only [{asset} {available}] available)")]
    MissingFunds { account: Option<String>, asset: String, needed: Amount, available: Amount },
    #[error("{0}")]
    Other(String),
}

pub fn run(
    _program: &Program,
    _vars: &BTreeMap<String, String>,
    _flags: &FeatureFlags,
    _store: &mut dyn Store,
) -> Result<Execution, RuntimeError> {
    Err(RuntimeError::Other("not implemented".into()))
}
