//! Coffer's double-entry ledger: domain rules, the storage contract, and the engine that
//! orders and batches commits.
//!
//! Brief overview:
//! - [`types`]: addresses, assets, postings, transactions, accounts, volumes (pure).
//! - [`command`]: validated write requests and their outcomes (pure).
//! - [`query`]: the v2 filter language (pure); [`sql`] turns it into SQL for the stores.
//! - [`log`]: the hash-chained log format (pure).
//! - [`store`]: the storage traits that `coffer-store-sqlite` and `coffer-store-postgres` implement.
//! - [`engine`]: the single writer that executes batches of commands and group-commits them.
//! - [`service`]: the read/write facade used by the HTTP layer and the wallets.
//! - [`verify`]: recomputes hash chains and volumes from a store.

pub mod batch;
pub mod cache;
pub mod codec;
pub mod command;
pub mod durability;
pub mod engine;
pub mod error;
pub mod log;
pub mod pool;
pub mod query;
pub mod script;
pub mod service;
pub mod sql;
pub mod sql_reader;
pub mod store;
pub mod time;
pub mod types;
pub mod verify;

pub use command::{Command, NewTransaction, Outcome, Request, Response, Target, TxBody};
pub use engine::{AtomicOutcome, Engine, EngineConfig};
pub use error::{LedgerError, StoreError};
pub use service::Ledgers;
pub use time::Timestamp;
pub use types::{Account, Amount, LedgerInfo, Metadata, Posting, Transaction, TxId, Volumes};
