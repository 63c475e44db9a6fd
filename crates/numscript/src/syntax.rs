//! The syntax tree. Names and literals are byte spans into the script source, so building the
//! tree allocates only the nodes themselves.

use crate::value::Ratio;
use crate::Amount;

/// A byte range into the script source.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub(crate) struct Span {
    pub(crate) start: u32,
    pub(crate) end: u32,
}

impl Span {
    pub(crate) fn text(self, source: &str) -> &str {
        &source[self.start as usize..self.end as usize]
    }
    pub(crate) fn to(self, other: Span) -> Span {
        Span {
            start: self.start,
            end: other.end,
        }
    }
}

#[derive(Debug, Default)]
pub(crate) struct Ast {
    /// Names from `#![feature("…")]`, quotes stripped.
    pub(crate) features: Vec<Span>,
    pub(crate) vars: Vec<VarDecl>,
    pub(crate) statements: Vec<Statement>,
    /// Number of distinct variable slots (one per distinct declared name).
    pub(crate) var_slots: u32,
}

#[derive(Debug)]
pub(crate) struct VarDecl {
    pub(crate) ty: Span,
    pub(crate) name: Span,
    pub(crate) slot: u32,
    pub(crate) origin: Option<Expr>,
}

#[derive(Debug)]
pub(crate) enum Statement {
    Send {
        value: SentValue,
        source: Source,
        destination: Destination,
    },
    Save {
        value: SentValue,
        account: Expr,
    },
    Call(Call),
}

#[derive(Debug)]
pub(crate) enum SentValue {
    /// A monetary expression.
    Amount(Expr),
    /// `[ASSET *]`.
    All(Expr),
}

#[derive(Debug)]
pub(crate) struct Expr {
    pub(crate) kind: ExprKind,
    pub(crate) span: Span,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BinaryOp {
    Add,
    Sub,
    Div,
}

#[derive(Debug)]
pub(crate) enum ExprKind {
    /// `$name`. Every distinct name has a slot; a slot that no declaration fills is unbound.
    Variable {
        name: Span,
        slot: u32,
    },
    Asset,
    /// The span of the contents, without the quotes.
    String(Span),
    Account(AccountLiteral),
    Number(Amount),
    Percentage(Ratio),
    Monetary {
        asset: Box<Expr>,
        amount: Box<Expr>,
    },
    Negate(Box<Expr>),
    Binary {
        op: BinaryOp,
        left: Box<Expr>,
        right: Box<Expr>,
    },
    Call(Call),
}

#[derive(Debug)]
pub(crate) struct AccountLiteral {
    /// The name without `@` (only meaningful when there is no interpolation).
    pub(crate) name: Span,
    /// Present only when some segment is a `$variable`.
    pub(crate) segments: Option<Vec<AccountSegment>>,
}

#[derive(Debug)]
pub(crate) enum AccountSegment {
    Text(Span),
    Variable { name: Span, slot: u32 },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Function {
    Meta,
    Balance,
    Overdraft,
    GetAsset,
    GetAmount,
    SetTxMeta,
    SetAccountMeta,
    Unknown,
}

impl Function {
    pub(crate) fn from_name(name: &str) -> Function {
        match name {
            "meta" => Function::Meta,
            "balance" => Function::Balance,
            "overdraft" => Function::Overdraft,
            "get_asset" => Function::GetAsset,
            "get_amount" => Function::GetAmount,
            "set_tx_meta" => Function::SetTxMeta,
            "set_account_meta" => Function::SetAccountMeta,
            _ => Function::Unknown,
        }
    }
}

#[derive(Debug)]
pub(crate) struct Call {
    pub(crate) name: Span,
    pub(crate) function: Function,
    pub(crate) args: Vec<Expr>,
}

#[derive(Debug)]
pub(crate) enum Source {
    /// `@a`, `@a \ "COLOR"`.
    Account {
        account: Expr,
        color: Option<Expr>,
    },
    /// `… allowing unbounded overdraft` (`bound: None`) or `… allowing overdraft up to X`.
    Overdraft {
        account: Expr,
        color: Option<Expr>,
        bound: Option<Expr>,
    },
    /// `@a with scaling through @swap`.
    Scaling {
        account: Expr,
        through: Expr,
    },
    InOrder(Vec<Source>),
    Oneof(Vec<Source>),
    Allotment(Vec<(Allot, Source)>),
    Capped {
        cap: Expr,
        from: Box<Source>,
    },
}

#[derive(Debug)]
pub(crate) enum Allot {
    Portion(Expr),
    Remaining(Span),
}

#[derive(Debug)]
pub(crate) enum Destination {
    Account(Expr),
    Allotment(Vec<(Allot, KeptOrDestination)>),
    InOrder {
        clauses: Vec<(Expr, KeptOrDestination)>,
        remaining: Box<KeptOrDestination>,
    },
    Oneof {
        clauses: Vec<(Expr, KeptOrDestination)>,
        remaining: Box<KeptOrDestination>,
    },
}

#[derive(Debug)]
pub(crate) enum KeptOrDestination {
    Kept,
    To(Destination),
}
