//! Volumes and transactions handed to the flusher and not yet confirmed written.
//!
//! The writer's truth for them (it reads them before the projections file), and what readers of
//! balances add to the projections they read, so that a balance read need not wait for the
//! flusher to write seconds of gathered projections.
//!
//! Why a reader that takes this overlay first, then reads the projections file, sees every
//! acknowledged write: an entry leaves the overlay only once the flusher has committed its value
//! (or a later one) to the file, so a value missing from the overlay when it is read is in any
//! snapshot of the file taken after. Both sources can hold a value of the same key, taken at
//! different times; input and output volumes only ever grow, so the later value of each is the
//! greater one (`Volumes::later`). Entries are put in after the commit returns and before its requests
//! are answered (the engine answers only after `StoreWriter::commit` returns).

use std::sync::Arc;

use hashbrown::{Equivalent, HashMap};
use parking_lot::{RwLock, RwLockWriteGuard};

use coffer_ledger::store::VolumeKey;
use coffer_ledger::types::{LedgerId, TxId, Volumes};

use crate::projections::TxRow;

#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct AccountKey {
    ledger: LedgerId,
    address: String,
}

/// Looks an account up without allocating; hashes as `AccountKey` (same fields, same order).
#[derive(Hash)]
struct AccountRef<'a> {
    ledger: LedgerId,
    address: &'a str,
}

impl Equivalent<AccountKey> for AccountRef<'_> {
    fn equivalent(&self, key: &AccountKey) -> bool {
        self.ledger == key.ledger && self.address == key.address
    }
}

/// One account's assets: (asset, volumes, generation of their hand-over). Few per account.
type Assets = Vec<(String, Volumes, u64)>;

#[derive(Default)]
struct Accounts {
    map: HashMap<AccountKey, Assets>,
    /// (account, asset) entries over all accounts: what the bound counts, as an account may
    /// hold many assets.
    entries: usize,
}

#[derive(Default)]
pub struct RecentVolumes {
    accounts: RwLock<Accounts>,
}

impl RecentVolumes {
    /// Records the volumes of one hand-over (writer only).
    pub fn put<'a>(
        &self,
        volumes: impl IntoIterator<Item = (&'a VolumeKey, &'a Volumes)>,
        generation: u64,
    ) {
        let mut guard = self.accounts.write();
        let Accounts {
            map: accounts,
            entries,
        } = &mut *guard;
        for (key, value) in volumes {
            let lookup = AccountRef {
                ledger: key.ledger,
                address: &key.address,
            };
            let assets = match accounts.get_mut(&lookup) {
                Some(assets) => assets,
                None => accounts
                    .entry(AccountKey {
                        ledger: key.ledger,
                        address: key.address.clone(),
                    })
                    .or_default(),
            };
            match assets.iter_mut().find(|(asset, _, _)| *asset == key.asset) {
                Some(slot) => {
                    slot.1 = *value;
                    slot.2 = generation;
                }
                None => {
                    assets.push((key.asset.clone(), *value, generation));
                    *entries += 1;
                }
            }
        }
    }

    /// The latest volumes of one key, if not yet confirmed written.
    pub fn get(&self, key: &VolumeKey) -> Option<Volumes> {
        let accounts = self.accounts.read();
        let assets = accounts.map.get(&AccountRef {
            ledger: key.ledger,
            address: &key.address,
        })?;
        assets
            .iter()
            .find(|(asset, _, _)| *asset == key.asset)
            .map(|(_, volumes, _)| *volumes)
    }

    /// Every unconfirmed (address, asset, volumes) of these accounts.
    pub fn of_accounts(
        &self,
        ledger: LedgerId,
        addresses: &[String],
    ) -> Vec<(String, String, Volumes)> {
        let accounts = self.accounts.read();
        let mut out = Vec::new();
        for address in addresses {
            if let Some(assets) = accounts.map.get(&AccountRef { ledger, address }) {
                for (asset, volumes, _) in assets {
                    out.push((address.clone(), asset.clone(), *volumes));
                }
            }
        }
        out
    }

    /// (account, asset) entries held: the bound the writer keeps.
    pub fn len(&self) -> usize {
        self.accounts.read().entries
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops what the flusher has written: every entry of a generation up to `flushed`.
    pub fn drop_flushed(&self, flushed: u64) {
        let mut guard = self.accounts.write();
        let Accounts { map, entries } = &mut *guard;
        let (mut kept, mut dropped) = (0, 0);
        map.retain(|_, assets| {
            let before = assets.len();
            assets.retain(|(_, _, generation)| *generation > flushed);
            kept += assets.len();
            dropped += before - assets.len();
            !assets.is_empty()
        });
        assert_eq!(*entries, kept + dropped, "entries miscounted");
        *entries = kept;
    }

    /// Drops everything: only once the flusher has written every hand-over.
    pub fn clear(&self) {
        *self.accounts.write() = Accounts::default();
    }
}

/// Transactions handed to the flusher (new or changed) in their latest state, with the
/// generation of that hand-over, until it confirms them written: the writer's truth for them,
/// and what a read of a transaction by id returns first. A reader that finds none reads the
/// projections file, which then holds every acknowledged state of it (an entry leaves only
/// once written); one found is at least as new as the file's as of the moment it looked.
#[derive(Default)]
pub struct RecentTransactions {
    rows: RwLock<TransactionRows>,
}

pub type TransactionRows = HashMap<(LedgerId, TxId), (Arc<TxRow>, u64)>;

impl RecentTransactions {
    pub fn get(&self, ledger: LedgerId, id: TxId) -> Option<(Arc<TxRow>, u64)> {
        self.rows.read().get(&(ledger, id)).cloned()
    }

    /// The writer's access, for several changes under one lock.
    pub fn write(&self) -> RwLockWriteGuard<'_, TransactionRows> {
        self.rows.write()
    }

    pub fn len(&self) -> usize {
        self.rows.read().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(address: &str, asset: &str) -> VolumeKey {
        VolumeKey {
            ledger: 1,
            address: address.into(),
            asset: asset.into(),
        }
    }

    fn volumes(input: i128, output: i128) -> Volumes {
        Volumes { input, output }
    }

    #[test]
    fn keeps_the_latest_until_flushed() {
        let recent = RecentVolumes::default();
        let put = |entries: &[(VolumeKey, Volumes)], generation| {
            recent.put(entries.iter().map(|(k, v)| (k, v)), generation)
        };
        put(
            &[
                (key("a", "USD"), volumes(5, 0)),
                (key("a", "EUR"), volumes(1, 0)),
            ],
            1,
        );
        put(
            &[
                (key("a", "USD"), volumes(5, 2)),
                (key("b", "USD"), volumes(2, 0)),
            ],
            2,
        );
        assert_eq!(recent.get(&key("a", "USD")), Some(volumes(5, 2)));
        assert_eq!(recent.get(&key("a", "GBP")), None);
        assert_eq!(recent.len(), 3, "entries, not accounts");
        let mut of = recent.of_accounts(1, &["a".into(), "c".into()]);
        of.sort_by(|x, y| x.1.cmp(&y.1));
        assert_eq!(
            of,
            [
                ("a".to_string(), "EUR".to_string(), volumes(1, 0)),
                ("a".to_string(), "USD".to_string(), volumes(5, 2)),
            ]
        );
        assert!(
            recent.of_accounts(2, &["a".into()]).is_empty(),
            "another ledger"
        );
        recent.drop_flushed(1);
        assert_eq!(
            recent.get(&key("a", "EUR")),
            None,
            "written by generation 1"
        );
        assert_eq!(
            recent.get(&key("a", "USD")),
            Some(volumes(5, 2)),
            "handed over again"
        );
        assert_eq!(recent.len(), 2);
        recent.drop_flushed(2);
        assert!(recent.is_empty());
    }
}
