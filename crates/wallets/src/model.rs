//! Domain types of the wallets: plain Rust, no wire format (the HTTP crate owns JSON).

use std::collections::BTreeMap;

use coffer_ledger::{Amount, Metadata, Timestamp};

/// Amounts per asset.
pub type Assets = BTreeMap<String, Amount>;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Monetary {
    pub asset: String,
    pub amount: Amount,
}

/// Where money comes from or goes to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Subject {
    /// A ledger account, used verbatim (`ACCOUNT`).
    Account(String),
    /// A wallet's balance, `main` when `balance` is `None` (`WALLET`).
    Wallet { id: String, balance: Option<String> },
}

impl Subject {
    pub fn world() -> Subject {
        Subject::Account(coffer_ledger::types::WORLD.to_string())
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Wallet {
    pub id: String,
    pub name: String,
    /// Custom metadata (without the `wallets/custom_data_` prefix).
    pub metadata: Metadata,
    pub created_at: Timestamp,
    /// The ledger holding the wallet.
    pub ledger: String,
    /// Balances of the main account; empty when volumes were not read.
    pub main_assets: Assets,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Balance {
    pub name: String,
    pub expires_at: Option<Timestamp>,
    pub priority: i64,
}

impl Balance {
    pub fn is_expired(&self, now: Timestamp) -> bool {
        self.expires_at.is_some_and(|at| at < now)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BalanceWithAssets {
    pub balance: Balance,
    pub assets: Assets,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hold {
    pub id: String,
    pub wallet_id: String,
    pub destination: Subject,
    pub asset: String,
    pub metadata: Metadata,
    pub description: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExpandedHold {
    pub hold: Hold,
    /// What the pending debit moved into the hold.
    pub original_amount: Amount,
    /// What is still held.
    pub remaining: Amount,
}

impl ExpandedHold {
    pub fn is_closed(&self) -> bool {
        self.remaining == 0
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub balances: Vec<BalanceWithAssets>,
    pub available_funds: Assets,
    pub expired_funds: Assets,
    pub expirable_funds: Assets,
    pub hold_funds: Assets,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CreateWallet {
    pub name: String,
    pub metadata: Metadata,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CreateBalance {
    pub name: String,
    pub expires_at: Option<Timestamp>,
    pub priority: i64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListWallets {
    pub name: Option<String>,
    /// Custom metadata that must match exactly.
    pub metadata: Metadata,
    /// Read the main balance's assets too.
    pub expand_balances: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListHolds {
    pub wallet_id: Option<String>,
    pub metadata: Metadata,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credit {
    pub wallet_id: String,
    pub amount: Monetary,
    /// Drained in order; `[world]` when empty.
    pub sources: Vec<Subject>,
    /// Target balance, `main` when `None`.
    pub balance: Option<String>,
    pub reference: Option<String>,
    pub timestamp: Option<Timestamp>,
    pub metadata: Metadata,
}

/// Which balances a debit draws from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DebitSources {
    /// `balances` absent or empty: the main balance.
    Main,
    /// `["*"]`: every balance, expiring ones first, main last.
    All,
    /// These balances, in this order.
    Named(Vec<String>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Debit {
    pub wallet_id: String,
    pub amount: Monetary,
    /// Move the funds into a hold instead of paying the destination.
    pub pending: bool,
    pub metadata: Metadata,
    pub description: String,
    /// `world` when `None`.
    pub destination: Option<Subject>,
    pub sources: DebitSources,
    pub reference: Option<String>,
    pub timestamp: Option<Timestamp>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConfirmHold {
    /// `None` or 0: everything that remains.
    pub amount: Option<Amount>,
    /// Send what is left after this confirmation back to the wallet's main balance.
    pub final_: bool,
}
