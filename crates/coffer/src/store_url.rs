//! Stores are named by URL everywhere: `sqlite://PATH` or `postgres://…`.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context};
use coffer_ledger::store::Store;

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Access {
    ReadWrite,
    /// Inspect a store another process may be writing (SQLite), or never write (PostgreSQL).
    ReadOnly,
}

pub fn sqlite_path(url: &str) -> Option<PathBuf> {
    url.strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .map(PathBuf::from)
}

pub fn open(url: &str, access: Access) -> anyhow::Result<Arc<dyn Store>> {
    if let Some(path) = sqlite_path(url) {
        if path.as_os_str().is_empty() {
            bail!("store URL {url:?} has no path (expected sqlite://PATH)");
        }
        let store = match access {
            Access::ReadWrite => coffer_store_sqlite::SqliteStore::open(&path),
            Access::ReadOnly => coffer_store_sqlite::SqliteStore::open_read_only(&path),
        }
        .with_context(|| format!("opening {url}"))?;
        return Ok(store);
    }
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let store = coffer_store_postgres::PostgresStore::open(url)
            .context("opening the PostgreSQL store")?;
        return Ok(store);
    }
    bail!("unknown store URL {url:?}: expected sqlite://PATH or postgres://USER@HOST/DATABASE")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            sqlite_path("sqlite://./a/b.db"),
            Some(PathBuf::from("./a/b.db"))
        );
        assert_eq!(
            sqlite_path("sqlite:///tmp/x.db"),
            Some(PathBuf::from("/tmp/x.db"))
        );
        assert_eq!(sqlite_path("postgres://x"), None);
        let err = open("mysql://x", Access::ReadWrite)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("unknown store URL"), "{err}");
        let err = open("sqlite://", Access::ReadWrite)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("has no path"), "{err}");
    }
}
