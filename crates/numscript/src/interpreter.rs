//! The interpreter.
//!
//! A run has three phases:
//! 1. Collect: variables and statements are evaluated once in a lenient mode where `balance()`
//!    and `overdraft()` only record what they need (returning 0) and errors are ignored. Every
//!    balance found is then fetched in one store call.
//! 2. Pre-fetch (as upstream): variables are evaluated for real, then every statement's sent
//!    value and source accounts; whatever phase 1 could not foresee is fetched in one more call.
//! 3. Execution, statement by statement, against an in-memory balance table. Sources push
//!    chunks of funds on a FIFO queue (debiting balances at once); destinations pull them,
//!    emitting one posting per pulled run of chunks from the same account and color.

use std::collections::{BTreeMap, HashMap as StdHashMap};
use std::hash::{BuildHasherDefault, Hasher};

use crate::syntax::*;
use crate::value::{
    asset_base_and_scale, is_valid_account, is_valid_asset, is_valid_color, parse_integer,
    percentage_ratio, same_text, Ratio, Text, Value,
};
use crate::{
    Amount, BalanceRequest, Execution, FeatureFlags, Posting, ProgramInner, RuntimeError, Store,
    ACCOUNT_NAME_BYTES_MAX, BALANCE_REQUESTS_MAX, POSTINGS_MAX,
};

/// A small, fast, non-cryptographic hasher (FxHash's mixing): the keys are account and asset
/// names from one run, so there is no adversarial-collision concern worth SipHash's cost.
#[derive(Default)]
struct FxHasher {
    hash: u64,
}

const FX_SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

impl FxHasher {
    fn add(&mut self, word: u64) {
        self.hash = (self.hash.rotate_left(5) ^ word).wrapping_mul(FX_SEED);
    }
}

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            self.add(u64::from_le_bytes(chunk.try_into().expect("8 bytes")));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut buffer = [0u8; 8];
            buffer[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(buffer));
        }
    }
    fn write_u8(&mut self, byte: u8) {
        self.add(u64::from(byte));
    }
    fn write_usize(&mut self, value: usize) {
        self.add(value as u64);
    }
    fn finish(&self) -> u64 {
        self.hash
    }
}

type HashMap<K, V> = StdHashMap<K, V, BuildHasherDefault<FxHasher>>;

const OVERDRAFT_FUNCTION: u16 = 1 << 0;
const GET_ASSET_FUNCTION: u16 = 1 << 1;
const GET_AMOUNT_FUNCTION: u16 = 1 << 2;
const ONEOF: u16 = 1 << 3;
const ACCOUNT_INTERPOLATION: u16 = 1 << 4;
const MID_SCRIPT_FUNCTION_CALL: u16 = 1 << 5;
const ASSET_COLORS: u16 = 1 << 6;
const ASSET_SCALING: u16 = 1 << 7;

fn flag_bit(name: &str) -> Option<u16> {
    FeatureFlags::ALL_NAMES
        .iter()
        .position(|n| *n == name)
        .map(|i| 1 << i)
}

type Key<'a> = (Text<'a>, Text<'a>, Text<'a>);

const UNCOLORED: Text<'static> = Text::Borrowed("");

#[derive(Clone, Copy, Debug)]
struct Entry {
    /// The stored balance (once fetched) plus every change made by the run.
    amount: Amount,
    /// A store row has been added to `amount` (guards against duplicate rows).
    loaded: bool,
    fetch: Fetch,
}

/// Where a balance stands with the store. `world` is never fetched: it counts as `Loaded`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fetch {
    No,
    Pending,
    Loaded,
}

/// The balance table: a vector searched linearly while small (keys borrowed from the script
/// compare by pointer), indexed by a hash map once it grows.
#[derive(Default)]
struct Table<'a> {
    entries: Vec<(Key<'a>, Entry)>,
    index: Option<HashMap<Key<'a>, usize>>,
}

const TABLE_LINEAR_ENTRIES_MAX: usize = 16;

impl<'a> Table<'a> {
    fn find(&self, key: &Key<'a>) -> Option<usize> {
        match &self.index {
            Some(index) => index.get(key).copied(),
            None => self.entries.iter().position(|(k, _)| k == key),
        }
    }

    fn get(&self, key: &Key<'a>) -> Option<&Entry> {
        self.find(key).map(|i| &self.entries[i].1)
    }

    fn entry(&mut self, key: &Key<'a>, make: impl FnOnce() -> Entry) -> &mut Entry {
        let position = match self.find(key) {
            Some(position) => position,
            None => {
                let position = self.entries.len();
                self.entries.push((key.clone(), make()));
                match &mut self.index {
                    Some(index) => {
                        index.insert(key.clone(), position);
                    }
                    None if self.entries.len() > TABLE_LINEAR_ENTRIES_MAX => {
                        let index = self
                            .entries
                            .iter()
                            .enumerate()
                            .map(|(i, (k, _))| (k.clone(), i))
                            .collect();
                        self.index = Some(index);
                    }
                    None => {}
                }
                position
            }
        };
        &mut self.entries[position].1
    }

    fn iter(&self) -> impl Iterator<Item = (&Key<'a>, &Entry)> {
        self.entries.iter().map(|(k, e)| (k, e))
    }

    fn iter_mut(&mut self) -> impl Iterator<Item = (&Key<'a>, &mut Entry)> {
        self.entries.iter_mut().map(|(k, e)| (&*k, e))
    }
}

/// Whether a `BASE/*` request for `account` covers `key`.
fn covers(account: &Text<'_>, base: &Text<'_>, key: &Key<'_>) -> bool {
    key.2.is_empty() && *account == key.0 && **base == *asset_base_and_scale(&key.1).0
}

fn initial_fetch(wildcards: &HashMap<(Text<'_>, Text<'_>), Fetch>, key: &Key<'_>) -> Fetch {
    if &*key.0 == "world" {
        return Fetch::Loaded;
    }
    if key.2.is_empty() && !wildcards.is_empty() {
        let base = asset_base_and_scale(&key.1).0;
        if let Some(fetch) = wildcards.get(&(key.0.clone(), Text::Borrowed(base))) {
            return *fetch;
        }
    }
    Fetch::No
}

/// Funds taken from a source, waiting for a destination.
#[derive(Clone, Debug)]
struct Chunk<'a> {
    account: Text<'a>,
    color: Text<'a>,
    amount: Amount,
}

pub(crate) fn run(
    program: &ProgramInner,
    inputs: &BTreeMap<String, String>,
    flags: &FeatureFlags,
    store: &mut dyn Store,
) -> Result<Execution, RuntimeError> {
    let source: &str = &program.source;
    let mut flag_bits = 0u16;
    for name in &flags.names {
        flag_bits |=
            flag_bit(name).ok_or_else(|| RuntimeError::InvalidFeature { name: name.clone() })?;
    }
    for span in &program.ast.features {
        let name = span.text(source);
        flag_bits |= flag_bit(name).ok_or_else(|| RuntimeError::InvalidFeature {
            name: name.to_string(),
        })?;
    }
    let interpreter = Interpreter {
        source,
        ast: &program.ast,
        inputs,
        flags: flag_bits,
        store,
        vars: vec![None; program.ast.var_slots as usize],
        collecting: false,
        collect_failed: false,
        placeholders_read: false,
        var_origin: false,
        asset: UNCOLORED,
        balances: Table::default(),
        wildcards: HashMap::default(),
        pending: Vec::with_capacity(8),
        pending_wildcards: Vec::new(),
        requests_total: 0,
        metadata: HashMap::default(),
        queue: Vec::with_capacity(8),
        head: 0,
        postings: Vec::with_capacity(8),
        tx_metadata: Vec::new(),
        account_metadata: BTreeMap::new(),
    };
    interpreter.run()
}

struct Interpreter<'a, 's> {
    source: &'a str,
    ast: &'a Ast,
    inputs: &'a BTreeMap<String, String>,
    flags: u16,
    store: &'s mut dyn Store,
    /// Variable values by slot; `None` is unbound.
    vars: Vec<Option<Value<'a>>>,
    /// Phase 1: record balance needs, never fail.
    collecting: bool,
    /// Phase 1 ignored an error.
    collect_failed: bool,
    /// Phase 1 read a balance as a placeholder 0.
    placeholders_read: bool,
    /// Evaluating a variable origin (function calls need no flag there).
    var_origin: bool,
    /// The asset of the statement being run.
    asset: Text<'a>,
    balances: Table<'a>,
    /// Every (account, base) asked for with `BASE/*`.
    wildcards: HashMap<(Text<'a>, Text<'a>), Fetch>,
    pending: Vec<Key<'a>>,
    pending_wildcards: Vec<(Text<'a>, Text<'a>)>,
    requests_total: usize,
    metadata: HashMap<(String, String), Option<String>>,
    queue: Vec<Chunk<'a>>,
    head: usize,
    postings: Vec<Posting>,
    tx_metadata: Vec<(String, String)>,
    account_metadata: BTreeMap<String, BTreeMap<String, String>>,
}

fn overflow(operation: &str) -> RuntimeError {
    RuntimeError::Overflow {
        operation: operation.to_string(),
    }
}

fn type_error(expected: &'static str, value: &Value<'_>) -> RuntimeError {
    RuntimeError::TypeError {
        expected,
        got: value.type_name(),
        value: value.render(),
    }
}

fn internal(message: &str) -> RuntimeError {
    RuntimeError::Internal {
        message: message.to_string(),
    }
}

/// A sub-slice of `text` as text of the same lifetime (shared texts are copied).
fn sub_text<'a>(text: &Text<'a>, part: &str) -> Text<'a> {
    match text {
        Text::Borrowed(full) => {
            let start = part.as_ptr() as usize - full.as_ptr() as usize;
            Text::Borrowed(&full[start..start + part.len()])
        }
        Text::Shared(_) => Text::owned(part.to_string()),
    }
}

impl<'a> Interpreter<'a, '_> {
    fn run(mut self) -> Result<Execution, RuntimeError> {
        let statements = &self.ast.statements;

        // Phase 1: find every balance the script will need, ignoring errors.
        self.collecting = true;
        let vars = self.eval_vars();
        self.swallow(vars);
        if !self.collect_failed {
            for statement in statements {
                let result = self.prefetch_statement(statement);
                self.swallow(result);
            }
        }
        self.collecting = false;
        self.flush()?;

        // Phase 2: as upstream, variables then the pre-fetch pass. When phase 1 read no
        // placeholder balance and met no error, it computed exactly this: skip it.
        if self.placeholders_read || self.collect_failed {
            self.vars.iter_mut().for_each(|v| *v = None);
            self.eval_vars()?;
            for statement in statements {
                self.prefetch_statement(statement)?;
            }
            self.flush()?;
        }

        // Phase 3.
        for statement in statements {
            self.exec_statement(statement)?;
        }
        for posting in &self.postings {
            assert!(posting.amount > 0);
            if !is_valid_asset(&posting.asset) {
                return Err(RuntimeError::InvalidAsset {
                    name: posting.asset.clone(),
                });
            }
            if !is_valid_account(&posting.source) || !is_valid_account(&posting.destination) {
                return Err(internal("a posting has an invalid account name"));
            }
        }
        Ok(Execution {
            postings: self.postings,
            tx_metadata: self.tx_metadata,
            account_metadata: self.account_metadata,
        })
    }

    fn require(&self, flag: u16) -> Result<(), RuntimeError> {
        if self.flags & flag != 0 {
            return Ok(());
        }
        let name = FeatureFlags::ALL_NAMES[flag.trailing_zeros() as usize];
        Err(RuntimeError::ExperimentalFeature { flag: name })
    }

    // ----- Balances and the store -----

    /// The table entry for `key`, created on first use.
    fn entry(&mut self, key: &Key<'a>) -> &mut Entry {
        let wildcards = &self.wildcards;
        self.balances.entry(key, || Entry {
            amount: 0,
            loaded: false,
            fetch: initial_fetch(wildcards, key),
        })
    }

    fn request(&mut self, key: Key<'a>) {
        let entry = self.entry(&key);
        if entry.fetch == Fetch::No {
            entry.fetch = Fetch::Pending;
            self.pending.push(key);
        }
    }

    fn request_wildcard(&mut self, account: Text<'a>, base: Text<'a>) {
        if &*account == "world"
            || self
                .wildcards
                .contains_key(&(account.clone(), base.clone()))
        {
            return;
        }
        for (key, entry) in self.balances.iter_mut() {
            if entry.fetch == Fetch::No && covers(&account, &base, key) {
                entry.fetch = Fetch::Pending;
            }
        }
        self.wildcards
            .insert((account.clone(), base.clone()), Fetch::Pending);
        self.pending_wildcards.push((account, base));
    }

    /// Sends every pending request in one store call and merges the rows.
    fn flush(&mut self) -> Result<(), RuntimeError> {
        if self.pending.is_empty() && self.pending_wildcards.is_empty() {
            return Ok(());
        }
        let pending = std::mem::take(&mut self.pending);
        let pending_wildcards = std::mem::take(&mut self.pending_wildcards);
        let covered = |key: &Key<'a>| {
            pending_wildcards
                .iter()
                .any(|(account, base)| covers(account, base, key))
        };
        let mut requests = Vec::with_capacity(pending.len() + pending_wildcards.len());
        for key in pending.iter().filter(|key| !covered(key)) {
            requests.push(BalanceRequest {
                account: key.0.to_string(),
                asset: key.1.to_string(),
                color: key.2.to_string(),
            });
        }
        for (account, base) in &pending_wildcards {
            requests.push(BalanceRequest {
                account: account.to_string(),
                asset: format!("{}/*", &**base),
                color: String::new(),
            });
        }
        self.requests_total += requests.len();
        if self.requests_total > BALANCE_REQUESTS_MAX {
            return Err(RuntimeError::LimitExceeded {
                what: "balance requests",
                max: BALANCE_REQUESTS_MAX as u64,
            });
        }
        let rows = self
            .store
            .get_balances(&requests)
            .map_err(RuntimeError::Store)?;
        for row in rows {
            let exact = if pending.len() <= 16 {
                pending
                    .iter()
                    .find(|k| {
                        same_text(&k.0, &row.account)
                            && same_text(&k.1, &row.asset)
                            && same_text(&k.2, &row.color)
                    })
                    .cloned()
            } else {
                let key = (
                    Text::owned(row.account.clone()),
                    Text::owned(row.asset.clone()),
                    Text::owned(row.color.clone()),
                );
                (self.balances.get(&key).map(|e| e.fetch) == Some(Fetch::Pending)).then_some(key)
            };
            let key = match exact {
                Some(key) => key,
                None => {
                    let key = (Text::owned(row.account), Text::owned(row.asset), UNCOLORED);
                    if !covered(&key) {
                        continue; // Not asked for: ignored, as documented on `Store`.
                    }
                    key
                }
            };
            let entry = self.entry(&key);
            if entry.loaded {
                continue;
            }
            entry.loaded = true;
            entry.amount = entry
                .amount
                .checked_add(row.amount)
                .ok_or_else(|| overflow("balance"))?;
        }
        for key in &pending {
            self.entry(key).fetch = Fetch::Loaded;
        }
        if !pending_wildcards.is_empty() {
            for (key, entry) in self.balances.iter_mut() {
                if entry.fetch == Fetch::Pending && covered(key) {
                    entry.fetch = Fetch::Loaded;
                }
            }
            for wildcard in pending_wildcards {
                self.wildcards.insert(wildcard, Fetch::Loaded);
            }
        }
        Ok(())
    }

    /// The current balance of `key`, fetching it first if it was never asked for.
    fn balance(&mut self, key: &Key<'a>) -> Result<Amount, RuntimeError> {
        let entry = self.entry(key);
        match entry.fetch {
            Fetch::Loaded => return Ok(entry.amount),
            Fetch::Pending => self.flush()?,
            Fetch::No => {
                self.request(key.clone());
                self.flush()?;
            }
        }
        let entry = self.entry(key);
        assert!(entry.fetch == Fetch::Loaded);
        Ok(entry.amount)
    }

    fn add_balance(&mut self, key: Key<'a>, delta: Amount) -> Result<(), RuntimeError> {
        let entry = self.entry(&key);
        entry.amount = entry
            .amount
            .checked_add(delta)
            .ok_or_else(|| overflow("balance update"))?;
        Ok(())
    }

    fn key(&self, account: Text<'a>, color: Text<'a>) -> Key<'a> {
        (account, self.asset.clone(), color)
    }

    // ----- Variables and expressions -----

    fn eval_vars(&mut self) -> Result<(), RuntimeError> {
        let ast = self.ast;
        for decl in &ast.vars {
            let ty = decl.ty.text(self.source);
            let value = match &decl.origin {
                None => {
                    let name = &decl.name.text(self.source)[1..];
                    let raw =
                        self.inputs
                            .get(name)
                            .ok_or_else(|| RuntimeError::MissingVariable {
                                name: name.to_string(),
                            })?;
                    parse_var(ty, Text::Borrowed(raw))?
                }
                Some(origin) => {
                    self.var_origin = true;
                    let value = self.eval_origin(ty, origin);
                    self.var_origin = false;
                    value?
                }
            };
            self.vars[decl.slot as usize] = Some(value);
        }
        Ok(())
    }

    fn eval_origin(&mut self, ty: &'a str, origin: &'a Expr) -> Result<Value<'a>, RuntimeError> {
        match &origin.kind {
            ExprKind::Call(call) if call.function == Function::Meta => {
                self.eval_call(call, Some(ty))
            }
            ExprKind::Call(_) => self.eval(origin),
            _ => {
                self.require(MID_SCRIPT_FUNCTION_CALL)?;
                self.eval(origin)
            }
        }
    }

    fn eval(&mut self, expr: &'a Expr) -> Result<Value<'a>, RuntimeError> {
        match &expr.kind {
            ExprKind::Variable { name, slot } => self.variable(*name, *slot),
            ExprKind::Asset => Ok(Value::Asset(Text::Borrowed(expr.span.text(self.source)))),
            ExprKind::String(span) => Ok(Value::String(Text::Borrowed(span.text(self.source)))),
            ExprKind::Account(literal) => self.eval_account_literal(literal).map(Value::Account),
            ExprKind::Number(n) => Ok(Value::Number(*n)),
            ExprKind::Percentage(ratio) => Ok(Value::Portion(*ratio)),
            ExprKind::Monetary { asset, amount } => {
                let asset = self.eval_asset(asset)?;
                let amount = self.eval_number(amount)?;
                Ok(Value::Monetary { asset, amount })
            }
            ExprKind::Negate(inner) => match self.eval(inner)? {
                Value::Number(n) => Ok(Value::Number(
                    n.checked_neg().ok_or_else(|| overflow("negation"))?,
                )),
                Value::Monetary { asset, amount } => Ok(Value::Monetary {
                    asset,
                    amount: amount.checked_neg().ok_or_else(|| overflow("negation"))?,
                }),
                other => Err(type_error("monetary|number", &other)),
            },
            ExprKind::Binary {
                op: BinaryOp::Div,
                left,
                right,
            } => {
                let numerator = self.eval_number(left)?;
                let denominator = self.eval_number(right)?;
                Ok(Value::Portion(Ratio::new(numerator, denominator)?))
            }
            ExprKind::Binary { op, left, right } => self.eval_add_sub(*op, left, right),
            ExprKind::Call(call) => {
                if !self.var_origin {
                    self.require(MID_SCRIPT_FUNCTION_CALL)?;
                }
                self.eval_call(call, None)
            }
        }
    }

    fn variable(&self, name: Span, slot: u32) -> Result<Value<'a>, RuntimeError> {
        self.vars[slot as usize]
            .clone()
            .ok_or_else(|| RuntimeError::UnboundVariable {
                name: name.text(self.source).to_string(),
            })
    }

    fn eval_add_sub(
        &mut self,
        op: BinaryOp,
        left: &'a Expr,
        right: &'a Expr,
    ) -> Result<Value<'a>, RuntimeError> {
        let apply = |a: Amount, b: Amount| match op {
            BinaryOp::Add => a.checked_add(b).ok_or_else(|| overflow("addition")),
            _ => a.checked_sub(b).ok_or_else(|| overflow("subtraction")),
        };
        match self.eval(left)? {
            Value::Number(a) => {
                let b = self.eval_number(right)?;
                Ok(Value::Number(apply(a, b)?))
            }
            Value::Monetary { asset, amount } => {
                let (right_asset, right_amount) = self.eval_monetary(right)?;
                if right_asset != asset {
                    return Err(RuntimeError::MismatchedCurrency {
                        expected: asset.to_string(),
                        got: right_asset.to_string(),
                    });
                }
                Ok(Value::Monetary {
                    asset,
                    amount: apply(amount, right_amount)?,
                })
            }
            other => Err(type_error("monetary|number", &other)),
        }
    }

    fn eval_account_literal(
        &mut self,
        literal: &'a AccountLiteral,
    ) -> Result<Text<'a>, RuntimeError> {
        let Some(segments) = &literal.segments else {
            return Ok(Text::Borrowed(literal.name.text(self.source)));
        };
        self.require(ACCOUNT_INTERPOLATION)?;
        let mut name = String::with_capacity(literal.name.text(self.source).len() + 16);
        for segment in segments {
            match segment {
                AccountSegment::Text(span) => name.push_str(span.text(self.source)),
                AccountSegment::Variable { name: var, slot } => match self.variable(*var, *slot)? {
                    Value::Account(text) | Value::String(text) => name.push_str(&text),
                    Value::Number(n) => name.push_str(&n.to_string()),
                    other => {
                        return Err(RuntimeError::CannotCastToString {
                            got: other.type_name(),
                            value: other.render(),
                        })
                    }
                },
            }
            if name.len() > ACCOUNT_NAME_BYTES_MAX {
                return Err(RuntimeError::LimitExceeded {
                    what: "bytes in an account name",
                    max: ACCOUNT_NAME_BYTES_MAX as u64,
                });
            }
        }
        if !is_valid_account(&name) {
            return Err(RuntimeError::InvalidAccountName { name });
        }
        Ok(Text::owned(name))
    }

    fn eval_number(&mut self, expr: &'a Expr) -> Result<Amount, RuntimeError> {
        match self.eval(expr)? {
            Value::Number(n) => Ok(n),
            other => Err(type_error("number", &other)),
        }
    }

    fn eval_asset(&mut self, expr: &'a Expr) -> Result<Text<'a>, RuntimeError> {
        match self.eval(expr)? {
            Value::Asset(asset) => Ok(asset),
            other => Err(type_error("asset", &other)),
        }
    }

    fn eval_account(&mut self, expr: &'a Expr) -> Result<Text<'a>, RuntimeError> {
        if let ExprKind::Account(literal) = &expr.kind {
            return self.eval_account_literal(literal);
        }
        match self.eval(expr)? {
            Value::Account(account) => Ok(account),
            other => Err(type_error("account", &other)),
        }
    }

    fn eval_monetary(&mut self, expr: &'a Expr) -> Result<(Text<'a>, Amount), RuntimeError> {
        match self.eval(expr)? {
            Value::Monetary { asset, amount } => Ok((asset, amount)),
            other => Err(type_error("monetary", &other)),
        }
    }

    fn eval_portion(&mut self, expr: &'a Expr) -> Result<Ratio, RuntimeError> {
        match self.eval(expr)? {
            Value::Portion(portion) => Ok(portion),
            other => Err(type_error("portion", &other)),
        }
    }

    /// A monetary of the current asset (caps and overdraft bounds).
    fn eval_amount_of_asset(&mut self, expr: &'a Expr) -> Result<Amount, RuntimeError> {
        let (asset, amount) = self.eval_monetary(expr)?;
        if asset != self.asset {
            return Err(RuntimeError::MismatchedCurrency {
                expected: self.asset.to_string(),
                got: asset.to_string(),
            });
        }
        Ok(amount)
    }

    fn eval_color(&mut self, expr: Option<&'a Expr>) -> Result<Text<'a>, RuntimeError> {
        let Some(expr) = expr else {
            return Ok(UNCOLORED);
        };
        let color = match self.eval(expr)? {
            Value::String(color) => color,
            other => return Err(type_error("string", &other)),
        };
        if !is_valid_color(&color) {
            return Err(RuntimeError::InvalidColor {
                color: color.to_string(),
            });
        }
        Ok(color)
    }

    fn eval_call(
        &mut self,
        call: &'a Call,
        declared_type: Option<&'a str>,
    ) -> Result<Value<'a>, RuntimeError> {
        let mut args = Vec::with_capacity(call.args.len());
        for arg in &call.args {
            args.push(self.eval(arg)?);
        }
        let name = call.name.text(self.source);
        match call.function {
            Function::Meta => {
                let Some(ty) = declared_type else {
                    return Err(RuntimeError::InvalidNestedMeta);
                };
                arity(name, &args, 2)?;
                let mut args = args.into_iter();
                let account = as_account(args.next())?;
                let key = as_string(args.next())?;
                let raw = self.meta(&account, &key)?;
                parse_var(ty, Text::owned(raw))
            }
            Function::Balance => {
                let (account, asset) = account_and_asset(name, args)?;
                let amount = self.function_balance(&account, &asset)?;
                if amount < 0 {
                    return Err(RuntimeError::NegativeBalance {
                        account: account.to_string(),
                        asset: asset.to_string(),
                        amount,
                    });
                }
                Ok(Value::Monetary { asset, amount })
            }
            Function::Overdraft => {
                self.require(OVERDRAFT_FUNCTION)?;
                let (account, asset) = account_and_asset(name, args)?;
                let amount = self.function_balance(&account, &asset)?;
                let amount = if amount > 0 {
                    0
                } else {
                    amount.checked_neg().ok_or_else(|| overflow("overdraft"))?
                };
                Ok(Value::Monetary { asset, amount })
            }
            Function::GetAsset => {
                self.require(GET_ASSET_FUNCTION)?;
                arity(name, &args, 1)?;
                let (asset, _) = as_monetary(args.into_iter().next())?;
                Ok(Value::Asset(asset))
            }
            Function::GetAmount => {
                self.require(GET_AMOUNT_FUNCTION)?;
                arity(name, &args, 1)?;
                let (_, amount) = as_monetary(args.into_iter().next())?;
                Ok(Value::Number(amount))
            }
            Function::SetTxMeta | Function::SetAccountMeta | Function::Unknown => {
                Err(RuntimeError::UnboundFunction {
                    name: name.to_string(),
                })
            }
        }
    }

    /// The uncolored balance read by `balance()` and `overdraft()`. While collecting, it only
    /// records the need and reads 0.
    fn function_balance(
        &mut self,
        account: &Text<'a>,
        asset: &Text<'a>,
    ) -> Result<Amount, RuntimeError> {
        let key = (account.clone(), asset.clone(), UNCOLORED);
        if self.collecting {
            self.placeholders_read = true;
            self.request(key);
            return Ok(0);
        }
        self.balance(&key)
    }

    fn meta(&mut self, account: &str, key: &str) -> Result<String, RuntimeError> {
        let cache_key = (account.to_string(), key.to_string());
        let value = match self.metadata.get(&cache_key) {
            Some(value) => value.clone(),
            None => {
                let value = self
                    .store
                    .get_account_metadata(account, key)
                    .map_err(RuntimeError::Store)?;
                self.metadata.insert(cache_key, value.clone());
                value
            }
        };
        value.ok_or_else(|| RuntimeError::MetadataNotFound {
            account: account.to_string(),
            key: key.to_string(),
        })
    }

    // ----- Pre-fetch -----

    /// Records the balances a statement needs. While collecting, errors are ignored and caps,
    /// portions and function-statement arguments are evaluated too (to find `balance()` calls).
    fn prefetch_statement(&mut self, statement: &'a Statement) -> Result<(), RuntimeError> {
        match statement {
            Statement::Call(call) => {
                if self.collecting {
                    for arg in &call.args {
                        self.collect_eval(arg);
                    }
                }
                Ok(())
            }
            Statement::Save { value, account } => {
                let asset = self.sent_asset(value)?;
                let account = self.eval_account(account)?;
                self.request((account, asset, UNCOLORED));
                Ok(())
            }
            Statement::Send {
                value,
                source,
                destination,
            } => {
                self.asset = self.sent_asset(value)?;
                self.prefetch_source(source)?;
                if self.collecting {
                    self.collect_destination(destination);
                }
                Ok(())
            }
        }
    }

    fn sent_asset(&mut self, value: &'a SentValue) -> Result<Text<'a>, RuntimeError> {
        match value {
            SentValue::All(asset) => self.eval_asset(asset),
            SentValue::Amount(amount) => Ok(self.eval_monetary(amount)?.0),
        }
    }

    fn lenient(&mut self, result: Result<(), RuntimeError>) -> Result<(), RuntimeError> {
        if self.collecting {
            self.swallow(result);
            Ok(())
        } else {
            result
        }
    }

    /// Evaluates an expression only to find the balances it reads (phase 1).
    fn collect_eval(&mut self, expr: &'a Expr) {
        let result = self.eval(expr);
        self.swallow(result);
    }

    /// Records that phase 1 ignored an error.
    fn swallow<T>(&mut self, result: Result<T, RuntimeError>) {
        assert!(self.collecting);
        if result.is_err() {
            self.collect_failed = true;
        }
    }

    fn prefetch_source(&mut self, source: &'a Source) -> Result<(), RuntimeError> {
        match source {
            Source::Account { account, color } => self.prefetch_account(account, color.as_ref()),
            Source::Overdraft {
                account,
                color,
                bound: Some(bound),
            } => {
                if self.collecting {
                    self.collect_eval(bound);
                }
                self.prefetch_account(account, color.as_ref())
            }
            Source::Overdraft { bound: None, .. } => Ok(()),
            Source::Scaling { account, .. } => {
                if self.flags & ASSET_SCALING == 0 {
                    return Ok(());
                }
                let account = self.eval_account(account)?;
                let base = sub_text(&self.asset, asset_base_and_scale(&self.asset).0);
                self.request_wildcard(account, base);
                Ok(())
            }
            Source::InOrder(sources) | Source::Oneof(sources) => {
                for source in sources {
                    let result = self.prefetch_source(source);
                    self.lenient(result)?;
                }
                Ok(())
            }
            Source::Allotment(items) => {
                for (allot, source) in items {
                    if let (true, Allot::Portion(portion)) = (self.collecting, allot) {
                        self.collect_eval(portion);
                    }
                    let result = self.prefetch_source(source);
                    self.lenient(result)?;
                }
                Ok(())
            }
            Source::Capped { cap, from } => {
                if self.collecting {
                    self.collect_eval(cap);
                }
                self.prefetch_source(from)
            }
        }
    }

    fn prefetch_account(
        &mut self,
        account: &'a Expr,
        color: Option<&'a Expr>,
    ) -> Result<(), RuntimeError> {
        let account = self.eval_account(account)?;
        let color = match color {
            // The flag error is raised when the source runs.
            Some(_) if self.flags & ASSET_COLORS == 0 => return Ok(()),
            color => self.eval_color(color)?,
        };
        let key = self.key(account, color);
        self.request(key);
        Ok(())
    }

    fn collect_destination(&mut self, destination: &'a Destination) {
        match destination {
            Destination::Account(account) => {
                self.collect_eval(account);
            }
            Destination::Allotment(items) => {
                for (allot, target) in items {
                    if let Allot::Portion(portion) = allot {
                        self.collect_eval(portion);
                    }
                    if let KeptOrDestination::To(destination) = target {
                        self.collect_destination(destination);
                    }
                }
            }
            Destination::InOrder { clauses, remaining }
            | Destination::Oneof { clauses, remaining } => {
                for (cap, target) in clauses {
                    self.collect_eval(cap);
                    if let KeptOrDestination::To(destination) = target {
                        self.collect_destination(destination);
                    }
                }
                if let KeptOrDestination::To(destination) = &**remaining {
                    self.collect_destination(destination);
                }
            }
        }
    }

    // ----- Statements -----

    fn exec_statement(&mut self, statement: &'a Statement) -> Result<(), RuntimeError> {
        match statement {
            Statement::Call(call) => self.exec_call(call),
            Statement::Save { value, account } => self.exec_save(value, account),
            Statement::Send {
                value,
                source,
                destination,
            } => {
                assert!(self.queue.is_empty() && self.head == 0);
                match value {
                    SentValue::All(asset) => {
                        self.asset = self.eval_asset(asset)?;
                        let total = self.take_all(source)?;
                        self.send_to(destination, total)?;
                    }
                    SentValue::Amount(amount) => {
                        let (asset, amount) = self.eval_monetary(amount)?;
                        self.asset = asset;
                        if amount < 0 {
                            return Err(RuntimeError::NegativeAmount { amount });
                        }
                        self.take_exact(source, amount)?;
                        self.send_to(destination, amount)?;
                    }
                }
                // Every destination form hands out exactly what the sources gave.
                if self.queue[self.head..]
                    .iter()
                    .any(|chunk| chunk.amount != 0)
                {
                    return Err(internal("funds left undistributed after a send"));
                }
                self.queue.clear();
                self.head = 0;
                Ok(())
            }
        }
    }

    fn exec_call(&mut self, call: &'a Call) -> Result<(), RuntimeError> {
        let mut args = Vec::with_capacity(call.args.len());
        for arg in &call.args {
            args.push(self.eval(arg)?);
        }
        let name = call.name.text(self.source);
        match call.function {
            Function::SetTxMeta => {
                arity(name, &args, 2)?;
                let mut args = args.into_iter();
                let key = as_string(args.next())?;
                let value = args.next().expect("arity checked").render();
                match self.tx_metadata.iter_mut().find(|(k, _)| **k == *key) {
                    Some(entry) => entry.1 = value,
                    None => self.tx_metadata.push((key.to_string(), value)),
                }
                Ok(())
            }
            Function::SetAccountMeta => {
                arity(name, &args, 3)?;
                let mut args = args.into_iter();
                let account = as_account(args.next())?;
                let key = as_string(args.next())?;
                let value = args.next().expect("arity checked").render();
                self.account_metadata
                    .entry(account.to_string())
                    .or_default()
                    .insert(key.to_string(), value);
                Ok(())
            }
            _ => Err(RuntimeError::UnboundFunction {
                name: name.to_string(),
            }),
        }
    }

    fn exec_save(&mut self, value: &'a SentValue, account: &'a Expr) -> Result<(), RuntimeError> {
        let (asset, amount) = match value {
            SentValue::All(asset) => (self.eval_asset(asset)?, None),
            SentValue::Amount(amount) => {
                let (asset, amount) = self.eval_monetary(amount)?;
                (asset, Some(amount))
            }
        };
        let account = self.eval_account(account)?;
        if let Some(amount) = amount {
            if amount < 0 {
                return Err(RuntimeError::NegativeAmount { amount });
            }
        }
        let key = (account, asset, UNCOLORED);
        let current = self.balance(&key)?;
        let saved = match amount {
            // Save all: a positive balance becomes 0, a negative one stays.
            None => current.min(0),
            // As upstream: reduce by the amount, never below 0.
            // Below the smallest amount is below 0 as well.
            Some(amount) => current.checked_sub(amount).map_or(0, |left| left.max(0)),
        };
        self.entry(&key).amount = saved;
        Ok(())
    }

    // ----- Sources -----

    fn take_exact(&mut self, source: &'a Source, amount: Amount) -> Result<(), RuntimeError> {
        let taken = self.take_up_to(source, amount)?;
        if taken != amount {
            let account = match source {
                Source::Account { account, .. }
                | Source::Overdraft { account, .. }
                | Source::Scaling { account, .. } => {
                    self.eval_account(account).ok().map(|a| a.to_string())
                }
                _ => None,
            };
            return Err(RuntimeError::MissingFunds {
                account,
                asset: self.asset.to_string(),
                needed: amount,
                available: taken,
            });
        }
        Ok(())
    }

    /// Takes at most `amount` (clamped to ≥ 0) and returns what was taken.
    fn take_up_to(&mut self, source: &'a Source, amount: Amount) -> Result<Amount, RuntimeError> {
        let amount = amount.max(0);
        match source {
            Source::Account { account, color } => {
                self.take_from_account(account, color.as_ref(), Some(0), Some(amount))
            }
            Source::Overdraft {
                account,
                color,
                bound,
            } => {
                let overdraft = match bound {
                    Some(bound) => Some(self.eval_amount_of_asset(bound)?.max(0)),
                    None => None,
                };
                self.take_from_account(account, color.as_ref(), overdraft, Some(amount))
            }
            Source::Scaling { account, through } => {
                self.scale(account, through, Some(amount))?;
                self.take_from_account(account, None, Some(0), Some(amount))
            }
            Source::InOrder(sources) => {
                let mut left = amount;
                for source in sources {
                    let taken = self.take_up_to(source, left)?;
                    assert!(taken >= 0 && taken <= left);
                    left -= taken;
                }
                Ok(amount - left)
            }
            Source::Oneof(sources) => {
                self.require(ONEOF)?;
                let (last, leading) = sources
                    .split_last()
                    .expect("the parser rejects an empty oneof");
                for source in leading {
                    let mark = self.queue.len();
                    if self.take_up_to(source, amount)? == amount {
                        return Ok(amount);
                    }
                    self.rollback(mark)?;
                }
                self.take_up_to(last, amount)
            }
            Source::Allotment(items) => {
                let shares = self.allot(items.iter().map(|(allot, _)| allot), amount)?;
                for ((_, source), share) in items.iter().zip(shares) {
                    self.take_exact(source, share)?;
                }
                Ok(amount)
            }
            Source::Capped { cap, from } => {
                let cap = self.eval_amount_of_asset(cap)?;
                self.take_up_to(from, amount.min(cap).max(0))
            }
        }
    }

    /// Takes everything available and returns it.
    fn take_all(&mut self, source: &'a Source) -> Result<Amount, RuntimeError> {
        match source {
            Source::Account { account, color } => {
                self.take_from_account(account, color.as_ref(), Some(0), None)
            }
            Source::Overdraft {
                account,
                color,
                bound,
            } => {
                let overdraft = match bound {
                    Some(bound) => Some(self.eval_amount_of_asset(bound)?.max(0)),
                    None => None,
                };
                self.take_from_account(account, color.as_ref(), overdraft, None)
            }
            Source::Scaling { account, through } => {
                self.scale(account, through, None)?;
                self.take_from_account(account, None, Some(0), None)
            }
            Source::InOrder(sources) => {
                let mut total: Amount = 0;
                for source in sources {
                    let taken = self.take_all(source)?;
                    total = total
                        .checked_add(taken)
                        .ok_or_else(|| overflow("send all"))?;
                }
                Ok(total)
            }
            Source::Oneof(sources) => {
                self.require(ONEOF)?;
                self.take_all(&sources[0])
            }
            Source::Capped { cap, from } => {
                let cap = self.eval_amount_of_asset(cap)?;
                self.take_up_to(from, cap.max(0))
            }
            Source::Allotment(_) => Err(RuntimeError::InvalidAllotmentInSendAll),
        }
    }

    /// Takes from one account: up to `amount`, or everything when `amount` is `None`.
    /// `overdraft` is the allowed overdraft (≥ 0), `None` when unbounded.
    fn take_from_account(
        &mut self,
        account: &'a Expr,
        color: Option<&'a Expr>,
        overdraft: Option<Amount>,
        amount: Option<Amount>,
    ) -> Result<Amount, RuntimeError> {
        if color.is_some() {
            self.require(ASSET_COLORS)?;
        }
        let account = self.eval_account(account)?;
        let is_world = &*account == "world";
        if amount.is_none() && (is_world || overdraft.is_none()) {
            return Err(RuntimeError::InvalidUnboundedInSendAll {
                account: account.to_string(),
            });
        }
        let overdraft = if is_world { None } else { overdraft };
        let color = self.eval_color(color)?;
        let key = self.key(account, color);
        let taken = match (overdraft, amount) {
            (None, Some(amount)) => amount,
            (None, None) => unreachable!("rejected above"),
            (Some(overdraft), amount) => {
                assert!(overdraft >= 0);
                let balance = self.balance(&key)?;
                match (balance.checked_add(overdraft), amount) {
                    (Some(available), amount) => {
                        let available = available.max(0);
                        amount.map_or(available, |amount| available.min(amount))
                    }
                    // More than the largest amount is available: any amount can be taken, but
                    // not all of it.
                    (None, Some(amount)) => amount,
                    (None, None) => return Err(overflow("overdraft")),
                }
            }
        };
        assert!(taken >= 0);
        if taken > 0 {
            self.add_balance(key.clone(), -taken)?;
            self.queue.push(Chunk {
                account: key.0,
                color: key.2,
                amount: taken,
            });
        }
        Ok(taken)
    }

    /// Undoes the chunks pushed since `mark` (a failed `oneof` branch), repaying their sources.
    fn rollback(&mut self, mark: usize) -> Result<(), RuntimeError> {
        assert!(self.head == 0 && mark <= self.queue.len());
        let undone: Vec<Chunk<'a>> = self.queue.drain(mark..).collect();
        for chunk in undone {
            let key = self.key(chunk.account, chunk.color);
            self.add_balance(key, chunk.amount)?;
        }
        Ok(())
    }

    /// Asset scaling: converts other precisions of the current asset held by `account` into the
    /// current one through `through`, emitting the conversion postings at once.
    fn scale(
        &mut self,
        account: &'a Expr,
        through: &'a Expr,
        needed: Option<Amount>,
    ) -> Result<(), RuntimeError> {
        self.require(ASSET_SCALING)?;
        let account = self.eval_account(account)?;
        let through = self.eval_account(through)?;
        let (base, scale) = asset_base_and_scale(&self.asset);
        let base = sub_text(&self.asset, base);
        if &*account != "world" {
            self.request_wildcard(account.clone(), base.clone());
            if self.wildcards.get(&(account.clone(), base.clone())) != Some(&Fetch::Loaded) {
                self.flush()?;
            }
        }
        let mut has_balances = false;
        let mut scales: BTreeMap<u32, Amount> = BTreeMap::new();
        for (key, entry) in self.balances.iter() {
            if key.0 != account {
                continue;
            }
            has_balances = true;
            let (row_base, row_scale) = asset_base_and_scale(&key.1);
            // Only an asset spelt as its conversion posting will spell it (`EUR`, `EUR/2`; not
            // `EUR/0` or `EUR/02`): the posting must leave the asset the balance was read of.
            let canonical = match key.1.split_once('/') {
                None => true,
                Some((_, digits)) => row_scale != 0 && digits == row_scale.to_string(),
            };
            if key.2.is_empty() && row_base == &*base && canonical {
                scales.insert(row_scale, entry.amount);
            }
        }
        if &*account == "world" || !has_balances {
            return Err(RuntimeError::InvalidUnboundedAddressInScalingAddress {
                account: account.to_string(),
            });
        }
        let (conversions, total) = scaling_solution(needed, scale, &scales)?;
        for (from_scale, units) in conversions {
            let asset = if from_scale == 0 {
                base.clone()
            } else {
                Text::owned(format!("{}/{from_scale}", &*base))
            };
            self.force_posting(account.clone(), through.clone(), asset, units)?;
        }
        let asset = self.asset.clone();
        self.force_posting(through, account, asset, total)
    }

    /// Emits an uncolored posting directly (asset scaling), updating both balances.
    fn force_posting(
        &mut self,
        source: Text<'a>,
        destination: Text<'a>,
        asset: Text<'a>,
        amount: Amount,
    ) -> Result<(), RuntimeError> {
        assert!(amount >= 0);
        if amount == 0 {
            return Ok(());
        }
        self.add_balance((source.clone(), asset.clone(), UNCOLORED), -amount)?;
        self.add_balance((destination.clone(), asset.clone(), UNCOLORED), amount)?;
        self.push_posting(Posting {
            source: source.to_string(),
            destination: destination.to_string(),
            asset: asset.to_string(),
            color: String::new(),
            amount,
        })
    }

    fn push_posting(&mut self, posting: Posting) -> Result<(), RuntimeError> {
        if self.postings.len() >= POSTINGS_MAX {
            return Err(RuntimeError::LimitExceeded {
                what: "postings",
                max: POSTINGS_MAX as u64,
            });
        }
        self.postings.push(posting);
        Ok(())
    }

    // ----- Allotments -----

    /// Splits `amount` by the items' portions: floors, then the leftover units one by one to
    /// the items in order.
    fn allot(
        &mut self,
        items: impl Iterator<Item = &'a Allot>,
        amount: Amount,
    ) -> Result<Vec<Amount>, RuntimeError> {
        assert!(amount >= 0);
        let mut portions = Vec::with_capacity(items.size_hint().0);
        let mut remaining = None;
        let mut sum = Ratio::ZERO;
        for (index, item) in items.enumerate() {
            match item {
                Allot::Portion(expr) => {
                    let portion = self.eval_portion(expr)?;
                    if portion < Ratio::ZERO || portion > Ratio::ONE {
                        return Err(RuntimeError::InvalidAllotmentPortion {
                            portion: portion.to_string(),
                        });
                    }
                    sum = sum.checked_add(portion)?;
                    portions.push(portion);
                }
                Allot::Remaining(_) => {
                    // With several `remaining`, the last one gets the rest, as upstream.
                    remaining = Some(index);
                    portions.push(Ratio::ZERO);
                }
            }
        }
        match remaining {
            Some(index) if sum <= Ratio::ONE => portions[index] = Ratio::ONE.checked_sub(sum)?,
            None if sum == Ratio::ONE => {}
            _ => {
                return Err(RuntimeError::InvalidAllotmentSum {
                    sum: sum.to_string(),
                })
            }
        }
        let mut shares: Vec<Amount> = portions.iter().map(|p| p.mul_floor(amount)).collect();
        let floors: Amount = shares.iter().sum();
        assert!(floors <= amount);
        let mut leftover = amount - floors;
        assert!(leftover < shares.len().max(1) as Amount);
        for share in shares.iter_mut() {
            if leftover == 0 {
                break;
            }
            *share += 1;
            leftover -= 1;
        }
        assert_eq!(leftover, 0);
        Ok(shares)
    }

    // ----- Destinations -----

    fn send_to(
        &mut self,
        destination: &'a Destination,
        amount: Amount,
    ) -> Result<(), RuntimeError> {
        assert!(amount >= 0);
        match destination {
            Destination::Account(account) => {
                let account = self.eval_account(account)?;
                self.receive(Some(account), amount)
            }
            Destination::Allotment(items) => {
                let shares = self.allot(items.iter().map(|(allot, _)| allot), amount)?;
                for ((_, target), share) in items.iter().zip(shares) {
                    self.send_to_target(target, share)?;
                }
                Ok(())
            }
            Destination::InOrder { clauses, remaining } => {
                let mut left = amount;
                for (cap, target) in clauses {
                    if left == 0 {
                        break;
                    }
                    let cap = self.eval_amount_of_asset(cap)?;
                    let share = cap.min(left).max(0);
                    if share != 0 {
                        self.send_to_target(target, share)?;
                        left -= share;
                    }
                }
                if left != 0 {
                    self.send_to_target(remaining, left)?;
                }
                Ok(())
            }
            Destination::Oneof { clauses, remaining } => {
                self.require(ONEOF)?;
                for (cap, target) in clauses {
                    if self.eval_amount_of_asset(cap)? >= amount {
                        return self.send_to_target(target, amount);
                    }
                }
                self.send_to_target(remaining, amount)
            }
        }
    }

    fn send_to_target(
        &mut self,
        target: &'a KeptOrDestination,
        amount: Amount,
    ) -> Result<(), RuntimeError> {
        match target {
            KeptOrDestination::Kept => self.receive(None, amount),
            KeptOrDestination::To(destination) => self.send_to(destination, amount),
        }
    }

    /// Pulls `amount` from the front of the queue for `destination` (`None`: kept, the funds
    /// go back to their sources), one posting per run of chunks from the same account and color.
    fn receive(
        &mut self,
        destination: Option<Text<'a>>,
        amount: Amount,
    ) -> Result<(), RuntimeError> {
        assert!(amount >= 0);
        let first_posting = self.postings.len();
        let mut left = amount;
        while left > 0 {
            let Some(chunk) = self.queue.get_mut(self.head) else {
                return Err(internal(
                    "a destination asked for more than the sources gave",
                ));
            };
            let taken = chunk.amount.min(left);
            chunk.amount -= taken;
            left -= taken;
            let (account, color) = (chunk.account.clone(), chunk.color.clone());
            if chunk.amount == 0 {
                self.head += 1;
            }
            let Some(destination) = &destination else {
                let key = self.key(account, color);
                self.add_balance(key, taken)?;
                continue;
            };
            let key = self.key(destination.clone(), color.clone());
            self.add_balance(key, taken)?;
            if self.postings.len() > first_posting {
                let last = self.postings.last_mut().expect("not empty");
                if last.source == *account && last.color == *color {
                    last.amount = last
                        .amount
                        .checked_add(taken)
                        .ok_or_else(|| overflow("posting"))?;
                    continue;
                }
            }
            self.push_posting(Posting {
                source: account.to_string(),
                destination: destination.to_string(),
                asset: self.asset.to_string(),
                color: color.to_string(),
                amount: taken,
            })?;
        }
        Ok(())
    }
}

fn arity(function: &str, args: &[Value<'_>], expected: usize) -> Result<(), RuntimeError> {
    if args.len() != expected {
        return Err(RuntimeError::BadArity {
            function: function.to_string(),
            expected: expected as u32,
            given: args.len() as u32,
        });
    }
    Ok(())
}

fn as_account<'a>(value: Option<Value<'a>>) -> Result<Text<'a>, RuntimeError> {
    match value.expect("arity checked") {
        Value::Account(account) => Ok(account),
        other => Err(type_error("account", &other)),
    }
}

fn as_string<'a>(value: Option<Value<'a>>) -> Result<Text<'a>, RuntimeError> {
    match value.expect("arity checked") {
        Value::String(text) => Ok(text),
        other => Err(type_error("string", &other)),
    }
}

fn as_monetary<'a>(value: Option<Value<'a>>) -> Result<(Text<'a>, Amount), RuntimeError> {
    match value.expect("arity checked") {
        Value::Monetary { asset, amount } => Ok((asset, amount)),
        other => Err(type_error("monetary", &other)),
    }
}

fn account_and_asset<'a>(
    function: &str,
    args: Vec<Value<'a>>,
) -> Result<(Text<'a>, Text<'a>), RuntimeError> {
    arity(function, &args, 2)?;
    let mut args = args.into_iter();
    let account = as_account(args.next())?;
    let asset = match args.next().expect("arity checked") {
        Value::Asset(asset) => asset,
        other => return Err(type_error("asset", &other)),
    };
    Ok((account, asset))
}

/// Parses a raw input (or metadata) value as the declared type.
fn parse_var<'a>(ty: &str, raw: Text<'a>) -> Result<Value<'a>, RuntimeError> {
    match ty {
        "monetary" => {
            let mut parts = raw.split(' ');
            let (Some(asset), Some(amount), None) = (parts.next(), parts.next(), parts.next())
            else {
                return Err(RuntimeError::InvalidMonetaryLiteral {
                    text: raw.to_string(),
                });
            };
            let amount = parse_number(amount)?;
            if !is_valid_asset(asset) {
                return Err(RuntimeError::InvalidAsset {
                    name: asset.to_string(),
                });
            }
            Ok(Value::Monetary {
                asset: sub_text(&raw, asset),
                amount,
            })
        }
        "account" => {
            if !is_valid_account(&raw) {
                return Err(RuntimeError::InvalidAccountName {
                    name: raw.to_string(),
                });
            }
            Ok(Value::Account(raw))
        }
        "portion" => parse_portion(&raw).map(Value::Portion),
        "asset" => {
            if !is_valid_asset(&raw) {
                return Err(RuntimeError::InvalidAsset {
                    name: raw.to_string(),
                });
            }
            Ok(Value::Asset(raw))
        }
        "number" => parse_number(&raw).map(Value::Number),
        "string" => Ok(Value::String(raw)),
        _ => Err(RuntimeError::InvalidType {
            name: ty.to_string(),
        }),
    }
}

fn parse_number(text: &str) -> Result<Amount, RuntimeError> {
    match parse_integer(text) {
        Some(Ok(n)) => Ok(n),
        Some(Err(())) => Err(RuntimeError::Overflow {
            operation: format!("number `{text}`"),
        }),
        None => Err(RuntimeError::InvalidNumberLiteral {
            text: text.to_string(),
        }),
    }
}

/// `N%`, `N.M%` or `A/B` (one optional whitespace around `/`), between 0 and 1 inclusive.
fn parse_portion(text: &str) -> Result<Ratio, RuntimeError> {
    let bad = |reason: &str| RuntimeError::BadPortionParsing {
        text: text.to_string(),
        reason: reason.to_string(),
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let ratio = if let Some(percent) = text.strip_suffix('%') {
        let (integral, fractional) = match percent.split_once('.') {
            Some((integral, fractional)) if digits(fractional) => (integral, fractional),
            Some(_) => return Err(bad("invalid format")),
            None => (percent, ""),
        };
        if !digits(integral) {
            return Err(bad("invalid format"));
        }
        percentage_ratio(integral, fractional).ok_or_else(|| bad("number too large"))?
    } else if let Some((numerator, denominator)) = text.split_once('/') {
        let strip = |s: &str, trailing: bool| -> String {
            let mut s = s.to_string();
            let ws = |c: char| matches!(c, ' ' | '\t' | '\n' | '\r' | '\x0c');
            if trailing {
                if s.ends_with(ws) {
                    s.pop();
                }
            } else if s.starts_with(ws) {
                s.remove(0);
            }
            s
        };
        let (numerator, denominator) = (strip(numerator, true), strip(denominator, false));
        if !digits(&numerator) || !digits(&denominator) {
            return Err(bad("invalid format"));
        }
        let (Some(Ok(numerator)), Some(Ok(denominator))) =
            (parse_integer(&numerator), parse_integer(&denominator))
        else {
            return Err(bad("number too large"));
        };
        if denominator == 0 {
            return Err(bad("invalid fractional format"));
        }
        Ratio::new(numerator, denominator)?
    } else {
        return Err(bad("invalid format"));
    };
    if ratio < Ratio::ZERO || ratio > Ratio::ONE {
        return Err(bad("portion must be between 0% and 100% inclusive"));
    }
    Ok(ratio)
}

/// Upstream's `findScalingSolution`: which other precisions to convert (precision, units) and
/// how much of the current precision that yields. `needed: None` converts everything.
/// Precisions with a balance ≤ 0 are skipped (upstream would emit negative postings).
fn scaling_solution(
    needed: Option<Amount>,
    scale: u32,
    scales: &BTreeMap<u32, Amount>,
) -> Result<(Vec<(u32, Amount)>, Amount), RuntimeError> {
    let needed = match (needed, scales.get(&scale)) {
        (Some(needed), Some(owned)) => Some(
            needed
                .checked_sub(*owned)
                .ok_or_else(|| overflow("asset scaling"))?,
        ),
        (needed, _) => needed,
    };
    let mut conversions = Vec::new();
    let mut total: Amount = 0;
    // Highest precision first.
    for (&from, &balance) in scales.iter().rev() {
        if from == scale {
            continue;
        }
        if needed.is_some_and(|needed| total >= needed) {
            break;
        }
        if balance <= 0 {
            continue;
        }
        let want = |convertible: Amount| match needed {
            Some(needed) => convertible.min(needed - total),
            None => convertible,
        };
        let (units, credited) = if scale >= from {
            // One unit at `from` is `factor` units at `scale`.
            let factor = 10i128
                .checked_pow(scale - from)
                .ok_or_else(|| overflow("asset scaling"))?;
            let convertible = balance
                .checked_mul(factor)
                .ok_or_else(|| overflow("asset scaling"))?;
            let taken = want(convertible);
            let units = taken / factor + Amount::from(taken % factor != 0);
            (
                units,
                units
                    .checked_mul(factor)
                    .ok_or_else(|| overflow("asset scaling"))?,
            )
        } else {
            // `divisor` units at `from` make one unit at `scale`.
            let Some(divisor) = 10i128.checked_pow(from - scale) else {
                continue; // The whole balance is less than one unit at `scale`.
            };
            let taken = want(balance / divisor);
            let units = taken
                .checked_mul(divisor)
                .ok_or_else(|| overflow("asset scaling"))?;
            (units, units / divisor)
        };
        if units <= 0 {
            continue;
        }
        total = total
            .checked_add(credited)
            .ok_or_else(|| overflow("asset scaling"))?;
        conversions.push((from, units));
    }
    Ok((conversions, total))
}
