//! Numscript: parser, checker and interpreter. Pure: no I/O, no database.
//!
//! Brief overview:
//! - [`Program::parse`] turns a script into a shareable [`Program`], or reports every syntax
//!   error as a [`Diagnostic`] with line and column. [`ProgramCache`] avoids parsing a repeated
//!   script again.
//! - [`run`] executes a program against a caller-provided [`Store`] (balances and account
//!   metadata) and returns the [`Execution`]: postings plus transaction and account metadata,
//!   or a typed [`RuntimeError`].
//! - [`check`] returns diagnostics (syntax errors plus cheap static checks) without running.
//! - [`specs`] runs upstream-format spec tests (`*.num.specs.json`) from their text.
//!
//! Amounts are `i128`. All arithmetic is checked: a result beyond the range is
//! [`RuntimeError::Overflow`], never a wrap. Portions are exact rationals.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

mod check;
mod error;
mod interpreter;
mod lexer;
mod parser;
pub mod specs;
mod syntax;
mod value;

pub use error::RuntimeError;

/// Amounts are exact integers; anything outside i128 is an error, never a wrap.
pub type Amount = i128;

/// Every bound the engine enforces. Units come last in the names.
pub mod limits {
    /// Largest accepted script, in bytes.
    pub const SCRIPT_BYTES_MAX: usize = 256 * 1024;
    /// Most statements in one script.
    pub const STATEMENTS_MAX: usize = 1024;
    /// Most variable declarations in one `vars` block (a wallet's void names two per balance
    /// it returns to, and a wallet has up to 1,000 balances).
    pub const VARIABLES_MAX: usize = 4096;
    /// Deepest nesting of sources, destinations and expressions (a chain `a + b + c` counts
    /// one level per operator).
    pub const NESTING_DEPTH_MAX: u32 = 64;
    /// Most items in one allotment.
    pub const ALLOTMENT_ITEMS_MAX: usize = 256;
    /// Most sources in one in-order or `oneof` block, or `max` clauses in a destination block
    /// (a wallet's `*` debit draws from each of its up to 1,000 balances).
    pub const BLOCK_ITEMS_MAX: usize = 1024;
    /// Most arguments in one function call.
    pub const FUNCTION_ARGS_MAX: usize = 8;
    /// Most names in `#![feature(…)]`.
    pub const FEATURES_MAX: usize = 16;
    /// Most diagnostics reported for one script.
    pub const DIAGNOSTICS_MAX: usize = 100;
    /// Most postings one run may emit.
    pub const POSTINGS_MAX: usize = 10_000;
    /// Longest account name built by interpolation, in bytes.
    pub const ACCOUNT_NAME_BYTES_MAX: usize = 1024;
    /// Most balance requests one run may send to the store, over all calls.
    pub const BALANCE_REQUESTS_MAX: usize = 10_000;
    /// Most entries in a [`crate::ProgramCache`].
    pub const CACHE_ENTRIES_MAX: usize = 1 << 16;
}

pub(crate) use limits::*;

/// A parsed script. Cheap to clone, shareable across threads.
#[derive(Clone, Debug)]
pub struct Program {
    inner: Arc<ProgramInner>,
}

#[derive(Debug)]
pub(crate) struct ProgramInner {
    pub(crate) source: Box<str>,
    pub(crate) ast: syntax::Ast,
}

impl Program {
    /// Parses a script, reporting every syntax error at once.
    pub fn parse(source: &str) -> Result<Program, ParseErrors> {
        if source.len() > SCRIPT_BYTES_MAX {
            return Err(ParseErrors {
                diagnostics: vec![Diagnostic {
                    line: 1,
                    column: 1,
                    end_line: 1,
                    end_column: 1,
                    severity: Severity::Error,
                    message: format!(
                        "script too large: {} bytes (at most {SCRIPT_BYTES_MAX})",
                        source.len()
                    ),
                }],
            });
        }
        let (ast, raw) = parser::parse(source);
        let diagnostics: Vec<Diagnostic> = raw
            .iter()
            .filter(|d| d.severity == Severity::Error)
            .map(|d| Diagnostic::from_raw(source, d))
            .collect();
        if !diagnostics.is_empty() {
            return Err(ParseErrors { diagnostics });
        }
        Ok(Program {
            inner: Arc::new(ProgramInner {
                source: source.into(),
                ast,
            }),
        })
    }

    pub fn source(&self) -> &str {
        &self.inner.source
    }

    /// The declared variables that must come from the caller (no `= origin`), with their types,
    /// in declaration order.
    pub fn needed_variables(&self) -> Vec<(String, String)> {
        let source = self.source();
        self.inner
            .ast
            .vars
            .iter()
            .filter(|decl| decl.origin.is_none())
            .map(|decl| {
                let name = &decl.name.text(source)[1..];
                (name.to_string(), decl.ty.text(source).to_string())
            })
            .collect()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    Error,
    Warning,
}

/// A message about a script position. Lines and columns are 1-based; columns count characters.
/// `end_line:end_column` is the position just after the offending text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    pub line: u32,
    pub column: u32,
    pub end_line: u32,
    pub end_column: u32,
    pub severity: Severity,
    pub message: String,
}

impl Diagnostic {
    fn from_raw(source: &str, raw: &parser::RawDiagnostic) -> Diagnostic {
        let (line, column) = line_column(source, raw.span.start as usize);
        let (end_line, end_column) = line_column(source, raw.span.end as usize);
        Diagnostic {
            line,
            column,
            end_line,
            end_column,
            severity: raw.severity,
            message: raw.message.clone(),
        }
    }
}

impl std::fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let severity = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(
            f,
            "{}:{}: {severity}: {}",
            self.line, self.column, self.message
        )
    }
}

fn line_column(source: &str, offset: usize) -> (u32, u32) {
    let offset = offset.min(source.len());
    let before = &source[..offset];
    let line = before.bytes().filter(|b| *b == b'\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = source[line_start..offset].chars().count() + 1;
    (line as u32, column as u32)
}

#[derive(Clone, Debug, thiserror::Error)]
#[error("{}", .diagnostics.iter().map(|d| format!("{}:{}: {}", d.line, d.column, d.message)).collect::<Vec<_>>().join("\n"))]
pub struct ParseErrors {
    pub diagnostics: Vec<Diagnostic>,
}

/// Diagnostics for a script without running it: every syntax error, plus static checks
/// (unbound variables, unknown functions and types, duplicate declarations, unknown feature
/// flags, misplaced `meta()`), sorted by position.
pub fn check(source: &str) -> Vec<Diagnostic> {
    if source.len() > SCRIPT_BYTES_MAX {
        return Program::parse(source)
            .err()
            .map(|e| e.diagnostics)
            .unwrap_or_default();
    }
    let (ast, mut raw) = parser::parse(source);
    if raw.iter().all(|d| d.severity != Severity::Error) {
        raw.extend(check::check(source, &ast));
    }
    raw.sort_by_key(|d| (d.span.start, d.span.end));
    raw.truncate(DIAGNOSTICS_MAX);
    raw.iter()
        .map(|d| Diagnostic::from_raw(source, d))
        .collect()
}

/// The experimental features the host enables. A script may enable more with
/// `#![feature("…")]`.
#[derive(Clone, Debug, Default)]
pub struct FeatureFlags {
    pub names: BTreeSet<String>,
}

impl FeatureFlags {
    /// Every known flag name.
    pub const ALL_NAMES: [&'static str; 8] = [
        "experimental-overdraft-function",
        "experimental-get-asset-function",
        "experimental-get-amount-function",
        "experimental-oneof",
        "experimental-account-interpolation",
        "experimental-mid-script-function-call",
        "experimental-asset-colors",
        "experimental-asset-scaling",
    ];

    pub fn none() -> FeatureFlags {
        FeatureFlags::default()
    }

    /// Every experimental feature enabled.
    pub fn all() -> FeatureFlags {
        FeatureFlags {
            names: FeatureFlags::ALL_NAMES
                .iter()
                .map(|n| n.to_string())
                .collect(),
        }
    }

    /// The given flags; an unknown name is an error.
    pub fn from_names<I, S>(names: I) -> Result<FeatureFlags, RuntimeError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut flags = FeatureFlags::default();
        for name in names {
            let name = name.as_ref();
            if !FeatureFlags::ALL_NAMES.contains(&name) {
                return Err(RuntimeError::InvalidFeature {
                    name: name.to_string(),
                });
            }
            flags.names.insert(name.to_string());
        }
        Ok(flags)
    }
}

/// One balance the interpreter needs. `asset` is either an asset (`USD/2`) or `BASE/*`,
/// meaning every precision of `BASE` (`BASE`, `BASE/1`, `BASE/2`, …), used by asset scaling.
/// `color` is `""` for uncoloured funds.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BalanceRequest {
    pub account: String,
    pub asset: String,
    pub color: String,
}

/// One balance as the store holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BalanceRow {
    pub account: String,
    pub asset: String,
    pub color: String,
    pub amount: Amount,
}

#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct StoreError(pub String);

/// Where a run reads balances and account metadata. The caller implements it (the ledger over
/// its database).
///
/// The batching contract, which lets an implementation lock and read everything at once:
/// - Before executing any statement, the interpreter asks for every balance the script needs
///   in **one** `get_balances` call, whenever the script allows it (a pre-fetch pass over the
///   variables and statements). Balance reads that depend on values only known mid-script
///   (e.g. `balance()` of an account computed from another balance) are asked for later, in
///   as few further calls as possible.
/// - It never asks for `world`, and never asks twice for the same (account, asset, color).
/// - A request with asset `BASE/*` (asset scaling) must be answered with one row per
///   precision of `BASE` the account holds (uncoloured, `color == ""`).
/// - Rows that are not returned mean a balance of 0. Rows that were not asked for are ignored.
/// - `get_account_metadata` is called at most once per (account, key) in a run.
pub trait Store {
    fn get_balances(&mut self, requests: &[BalanceRequest]) -> Result<Vec<BalanceRow>, StoreError>;
    fn get_account_metadata(
        &mut self,
        account: &str,
        key: &str,
    ) -> Result<Option<String>, StoreError>;
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Posting {
    pub source: String,
    pub destination: String,
    pub asset: String,
    /// `""` for uncoloured funds.
    pub color: String,
    pub amount: Amount,
}

/// The result of a successful run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Execution {
    /// In emission order; never zero amounts.
    pub postings: Vec<Posting>,
    /// Transaction metadata as (key, rendered value): insertion order, a key appears once and
    /// holds its last written value.
    pub tx_metadata: Vec<(String, String)>,
    /// Account metadata set by the script (never the store's own metadata).
    pub account_metadata: BTreeMap<String, BTreeMap<String, String>>,
}

/// Runs `program` with the caller's variables (`name` without `$` → raw value), feature flags
/// and store.
pub fn run(
    program: &Program,
    vars: &BTreeMap<String, String>,
    flags: &FeatureFlags,
    store: &mut dyn Store,
) -> Result<Execution, RuntimeError> {
    interpreter::run(&program.inner, vars, flags, store)
}

/// A bounded, thread-safe cache of parsed programs keyed by their source text, evicting the
/// least recently used entry when full.
pub struct ProgramCache {
    capacity: usize,
    state: Mutex<CacheState>,
}

struct CacheState {
    tick: u64,
    entries: HashMap<Box<str>, (Program, u64)>,
}

impl ProgramCache {
    /// A cache holding at most `capacity` programs (clamped to `1..=CACHE_ENTRIES_MAX`).
    pub fn new(capacity: usize) -> ProgramCache {
        let capacity = capacity.clamp(1, CACHE_ENTRIES_MAX);
        ProgramCache {
            capacity,
            state: Mutex::new(CacheState {
                tick: 0,
                entries: HashMap::with_capacity(capacity.min(1024)),
            }),
        }
    }

    /// The cached program for `source`, parsing (and caching) it on a miss. Parse errors are
    /// not cached.
    pub fn get_or_parse(&self, source: &str) -> Result<Program, ParseErrors> {
        {
            let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            state.tick += 1;
            let tick = state.tick;
            if let Some((program, used)) = state.entries.get_mut(source) {
                *used = tick;
                return Ok(program.clone());
            }
        }
        let program = Program::parse(source)?;
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.entries.len() >= self.capacity && !state.entries.contains_key(source) {
            let oldest = state
                .entries
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(k, _)| k.clone());
            if let Some(oldest) = oldest {
                state.entries.remove(&oldest);
            }
        }
        state.tick += 1;
        let tick = state.tick;
        state.entries.insert(source.into(), (program.clone(), tick));
        assert!(state.entries.len() <= self.capacity);
        Ok(program)
    }

    /// Number of cached programs.
    pub fn len(&self) -> usize {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entries
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A simple in-memory [`Store`]: rows of balances and account metadata. Useful for tests, the
/// spec runner and the CLI. It records every call it receives.
#[derive(Clone, Debug, Default)]
pub struct MemoryStore {
    pub balances: Vec<BalanceRow>,
    pub metadata: BTreeMap<String, BTreeMap<String, String>>,
    /// Every `get_balances` call, in order.
    pub balance_calls: Vec<Vec<BalanceRequest>>,
    /// Every `get_account_metadata` call, in order.
    pub metadata_calls: Vec<(String, String)>,
}

impl Store for MemoryStore {
    fn get_balances(&mut self, requests: &[BalanceRequest]) -> Result<Vec<BalanceRow>, StoreError> {
        self.balance_calls.push(requests.to_vec());
        let mut rows = Vec::new();
        for request in requests {
            let wildcard_base = request.asset.strip_suffix("/*");
            for row in &self.balances {
                if row.account != request.account || row.color != request.color {
                    continue;
                }
                let matches = match wildcard_base {
                    Some(base) => value::asset_base_and_scale(&row.asset).0 == base,
                    None => row.asset == request.asset,
                };
                if matches {
                    rows.push(row.clone());
                }
            }
        }
        Ok(rows)
    }

    fn get_account_metadata(
        &mut self,
        account: &str,
        key: &str,
    ) -> Result<Option<String>, StoreError> {
        self.metadata_calls
            .push((account.to_string(), key.to_string()));
        Ok(self.metadata.get(account).and_then(|m| m.get(key)).cloned())
    }
}
