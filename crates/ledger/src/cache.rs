//! Bounded caches the engine keeps between batches: memory is set by configuration, not history.
//!
//! Entries carry the epoch of their ledger. When another process has written to a ledger
//! (its head moved without us), the ledger's epoch is bumped and its entries become stale.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;

use crate::log::LogId;
use crate::store::VolumeKey;
use crate::time::Timestamp;
use crate::types::{LedgerId, Volumes};

/// A map bounded to `entries_max` entries that keeps what was used recently: two generations,
/// a lookup that finds an entry in the old one moves it to the young one, and when the young
/// one is full it becomes the old one (the previous old one is dropped). Cheaper than an LRU
/// list (one hash lookup, no list to relink, so fewer cache misses per lookup), and it grows
/// with use rather than allocating for its bound up front.
struct Bounded<K: Hash + Eq, V: Copy> {
    young: hashbrown::HashMap<K, V>,
    old: hashbrown::HashMap<K, V>,
    /// Each generation holds at most this many entries, so both hold at most `entries_max`.
    generation_entries_max: usize,
}

impl<K: Hash + Eq, V: Copy> Bounded<K, V> {
    fn new(entries_max: usize) -> Self {
        assert!(
            entries_max >= 2,
            "a two-generation cache holds at least 2 entries"
        );
        Bounded {
            young: hashbrown::HashMap::new(),
            old: hashbrown::HashMap::new(),
            generation_entries_max: entries_max / 2,
        }
    }

    fn get<Q>(&mut self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        if let Some(value) = self.young.get(key) {
            return Some(*value);
        }
        let (key, value) = self.old.remove_entry(key)?;
        self.insert_young(key, value);
        Some(value)
    }

    /// Inserts or replaces. The key is cloned only when it is not in the young generation
    /// already (the common case, an entry updated again, then allocates nothing).
    fn put<Q>(&mut self, key: &Q, value: V)
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        if let Some(slot) = self.young.get_mut(key) {
            *slot = value;
            return;
        }
        let key = match self.old.remove_entry(key) {
            Some((key, _)) => key,
            None => key.to_owned(),
        };
        self.insert_young(key, value);
    }

    fn insert_young(&mut self, key: K, value: V) {
        if self.young.len() >= self.generation_entries_max {
            self.old = std::mem::take(&mut self.young);
        }
        self.young.insert(key, value);
        debug_assert!(self.young.len() <= self.generation_entries_max);
        debug_assert!(self.old.len() <= self.generation_entries_max);
    }

    fn len(&self) -> usize {
        self.young.len() + self.old.len()
    }
}

pub struct Caches {
    /// With each entry, a first usage of its account when known: never earlier than the true
    /// one (a backdated transaction may have lowered it since), so it can only cause a needless
    /// account upsert, which keeps the earlier date (`MIN`).
    volumes: Bounded<VolumeKey, (u64, Volumes, Option<Timestamp>)>,
    /// Keyed by ledger and address joined (see `account_key`), so a lookup borrows a `str`.
    accounts: Bounded<String, (u64, Timestamp)>,
    /// Reused to build account keys without allocating.
    account_key: String,
    /// Per ledger: current epoch and the next log id we expect to find in its head.
    ledgers: HashMap<LedgerId, LedgerMark>,
    next_epoch: u64,
}

#[derive(Clone, Copy, Debug)]
struct LedgerMark {
    epoch: u64,
    next_log_id: LogId,
}

impl Caches {
    pub fn new(volume_entries_max: usize, account_entries_max: usize) -> Caches {
        Caches {
            volumes: Bounded::new(volume_entries_max.max(2)),
            accounts: Bounded::new(account_entries_max.max(2)),
            account_key: String::new(),
            ledgers: HashMap::new(),
            next_epoch: 1,
        }
    }

    /// Called with the head read under lock: entries stay valid only if nobody else wrote.
    pub fn validate_ledger(&mut self, ledger: LedgerId, next_log_id: LogId) {
        let valid =
            matches!(self.ledgers.get(&ledger), Some(mark) if mark.next_log_id == next_log_id);
        if !valid {
            let epoch = self.next_epoch;
            self.next_epoch += 1;
            self.ledgers
                .insert(ledger, LedgerMark { epoch, next_log_id });
        }
    }

    /// After a commit: our own writes moved the head.
    pub fn advance_ledger(&mut self, ledger: LedgerId, next_log_id: LogId) {
        if let Some(mark) = self.ledgers.get_mut(&ledger) {
            mark.next_log_id = next_log_id;
        }
    }

    /// After a failed batch nothing cached about these ledgers can be trusted.
    pub fn invalidate_ledger(&mut self, ledger: LedgerId) {
        self.ledgers.remove(&ledger);
    }

    fn epoch(&self, ledger: LedgerId) -> Option<u64> {
        self.ledgers.get(&ledger).map(|mark| mark.epoch)
    }

    /// Volumes, and a first usage of their account if known (see `Caches::volumes`' field).
    pub fn volumes(&mut self, key: &VolumeKey) -> Option<(Volumes, Option<Timestamp>)> {
        let epoch = self.epoch(key.ledger)?;
        match self.volumes.get(key) {
            Some((entry_epoch, volumes, first_usage)) if entry_epoch == epoch => {
                Some((volumes, first_usage))
            }
            _ => None,
        }
    }

    pub fn put_volumes(
        &mut self,
        key: &VolumeKey,
        volumes: Volumes,
        first_usage: Option<Timestamp>,
    ) {
        if let Some(epoch) = self.epoch(key.ledger) {
            self.volumes.put(key, (epoch, volumes, first_usage));
        }
    }

    /// First usage of an account known to exist.
    pub fn account(&mut self, ledger: LedgerId, address: &str) -> Option<Timestamp> {
        let epoch = self.epoch(ledger)?;
        set_account_key(&mut self.account_key, ledger, address);
        match self.accounts.get(self.account_key.as_str()) {
            Some((entry_epoch, first_usage)) if entry_epoch == epoch => Some(first_usage),
            _ => None,
        }
    }

    pub fn put_account(&mut self, ledger: LedgerId, address: &str, first_usage: Timestamp) {
        if let Some(epoch) = self.epoch(ledger) {
            set_account_key(&mut self.account_key, ledger, address);
            self.accounts
                .put(self.account_key.as_str(), (epoch, first_usage));
        }
    }

    pub fn volume_entries(&self) -> usize {
        self.volumes.len()
    }
}

/// `ledger` and `address` joined by a space, which an address cannot contain.
fn set_account_key(key: &mut String, ledger: LedgerId, address: &str) {
    use std::fmt::Write;
    key.clear();
    write!(key, "{ledger} {address}").expect("writing to a String");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(ledger: LedgerId) -> VolumeKey {
        VolumeKey {
            ledger,
            address: "a".into(),
            asset: "USD".into(),
        }
    }

    #[test]
    fn entries_expire_when_someone_else_writes() {
        let mut caches = Caches::new(10, 10);
        caches.validate_ledger(1, 5);
        caches.put_volumes(
            &key(1),
            Volumes {
                input: 3,
                output: 0,
            },
            Some(Timestamp(9)),
        );
        assert_eq!(
            caches.volumes(&key(1)),
            Some((
                Volumes {
                    input: 3,
                    output: 0
                },
                Some(Timestamp(9))
            ))
        );
        caches.advance_ledger(1, 7);
        caches.validate_ledger(1, 7);
        assert!(
            caches.volumes(&key(1)).is_some(),
            "our own writes keep the cache valid"
        );
        caches.validate_ledger(1, 9);
        assert_eq!(
            caches.volumes(&key(1)),
            None,
            "another writer moved the head"
        );
    }

    #[test]
    fn bounded_keeps_what_was_used_recently() {
        let mut cache: Bounded<u32, u32> = Bounded::new(4);
        for key in 0..4 {
            cache.put(&key, key * 10);
        }
        // 0 and 1 went to the old generation when 2 arrived; using 0 brings it back.
        assert_eq!(cache.get(&0), Some(0));
        for key in 4..6 {
            cache.put(&key, key * 10);
        }
        assert!(cache.len() <= 4, "bound kept: {}", cache.len());
        assert_eq!(cache.get(&1), None, "least recently used is gone");
        assert_eq!(cache.get(&5), Some(50));
        cache.put(&5, 51);
        assert_eq!(cache.get(&5), Some(51), "put replaces");
        for key in 0..1000 {
            cache.put(&key, key);
            assert!(cache.len() <= 4);
        }
    }

    proptest::proptest! {
        /// Against a plain map of every value put: a lookup finds the last value put or
        /// nothing (never an older one), holds at most the bound, and keeps at least the
        /// entries of the last `bound / 2` distinct keys used.
        #[test]
        fn bounded_never_answers_a_stale_value(
            bound in 2usize..12,
            operations in proptest::collection::vec((proptest::bool::ANY, 0u8..24, 0u32..1000), 1..400),
        ) {
            let mut cache: Bounded<u8, u32> = Bounded::new(bound);
            let mut model = std::collections::HashMap::new();
            let mut recent: Vec<u8> = Vec::new();
            for (is_put, key, value) in operations {
                if is_put {
                    cache.put(&key, value);
                    model.insert(key, value);
                } else if let Some(found) = cache.get(&key) {
                    proptest::prop_assert_eq!(Some(&found), model.get(&key));
                }
                proptest::prop_assert!(cache.len() <= bound);
                proptest::prop_assert!(cache.young.keys().all(|k| !cache.old.contains_key(k)));
                if is_put || cache.young.contains_key(&key) {
                    recent.retain(|k| *k != key);
                    recent.push(key);
                }
                for kept in recent.iter().rev().take(bound / 2) {
                    proptest::prop_assert!(
                        cache.young.contains_key(kept) || cache.old.contains_key(kept),
                        "recently used key {} dropped", kept
                    );
                }
            }
        }
    }

    #[test]
    fn bounded() {
        let mut caches = Caches::new(2, 2);
        caches.validate_ledger(1, 1);
        for asset in ["A", "B", "C"] {
            caches.put_volumes(
                &VolumeKey {
                    ledger: 1,
                    address: "a".into(),
                    asset: asset.into(),
                },
                Volumes::default(),
                None,
            );
        }
        assert_eq!(caches.volume_entries(), 2);
    }
}
