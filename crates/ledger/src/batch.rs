//! One batch: commands executed in order against the ledgers' state, then written at once.
//!
//! A command either applies completely or not at all: it computes its effects on a private
//! overlay, and only a command that succeeds folds the overlay into the batch state.

use std::collections::{BTreeMap, BTreeSet};

// The batch's maps are rebuilt for every batch and keyed by our own data: a fast hasher
// (foldhash, hashbrown's default) rather than SipHash.
use hashbrown::{HashMap, HashSet};

use crate::cache::Caches;
use crate::codec;
use crate::command::{Command, NewTransaction, Outcome, Request, Response, Target, TxBody};
use crate::error::LedgerError;
use crate::log::{
    self, chain_hash, DeleteMetadataPayload, Hash, Log, LogId, LogTransaction, LogType,
    NewTransactionPayload, RevertedTransactionPayload, SetMetadataPayload, TargetId,
    TARGET_ACCOUNT, TARGET_TRANSACTION,
};
use crate::store::{
    AccountWrite, BatchWrites, ChangedTarget, LedgerHead, LogWrite, MetadataChange, NewLedger,
    StoreWriter, TransactionUpdate, VolumeKey,
};
use crate::time::Timestamp;
use crate::types::{
    default_features, is_valid_address, LedgerId, Metadata, Posting, Transaction, TxId, Volumes,
    VolumesByAccount, FEATURE_VALUES, POSTINGS_MAX, WORLD,
};

/// Metadata key Formance sets on the transaction that reverts another.
pub const REVERTS_METADATA_KEY: &str = "com.formance.spec/state/reverts";

/// A script parsed before it reached the writer thread.
pub type PreparedScript = Option<numscript::Program>;

struct AccountEntry {
    /// Whether the account has a row in the store (or will, after this batch).
    exists: bool,
    first_usage: Option<Timestamp>,
    /// Loaded lazily: only scripts and metadata commands need it.
    metadata: Option<Metadata>,
    metadata_dirty: bool,
    /// The account row must be written (new, earlier first usage, or metadata).
    dirty: bool,
    updated_at: Option<Timestamp>,
    /// The batch's clock when this batch first touched the account: its insertion date if new
    /// (an import's is the log's date, not the import's).
    touched_at: Option<Timestamp>,
    /// Came from the engine's cache unchanged: no need to put it back.
    from_cache: bool,
}

/// The one field of a logged transaction that `prepare` reads.
#[derive(serde::Deserialize)]
struct LoggedReference {
    transaction: LoggedReferenceOf,
}

#[derive(serde::Deserialize)]
struct LoggedReferenceOf {
    #[serde(default)]
    reference: Option<String>,
}

struct TxEntry {
    tx: Transaction,
    new: bool,
    dirty: bool,
}

/// What a replay needs: the log that answered the key the first time.
#[derive(Clone)]
struct IdempotencyEntry {
    log_id: LogId,
    fingerprint: Option<Hash>,
    kind: LogType,
    data: String,
}

pub struct Batch<'w> {
    writer: &'w mut dyn StoreWriter,
    caches: &'w mut Caches,
    now: Timestamp,
    script_flags: &'w numscript::FeatureFlags,
    heads: HashMap<String, LedgerHead>,
    touched_heads: BTreeSet<String>,
    volumes: HashMap<VolumeKey, Volumes>,
    dirty_volumes: BTreeSet<VolumeKey>,
    /// Keys read from the store in this batch (not from the cache).
    loaded_volumes: Vec<VolumeKey>,
    accounts: HashMap<(LedgerId, String), AccountEntry>,
    transactions: HashMap<(LedgerId, TxId), TxEntry>,
    references: HashSet<(LedgerId, String)>,
    idempotency: HashMap<(LedgerId, String), IdempotencyEntry>,
    /// Postings of the transactions the batch wrote (reverts and scripts included, whose
    /// postings are known only once they run): the engine ends a batch past its bound.
    postings_written: usize,
    ledger_metadata: HashMap<LedgerId, Metadata>,
    logs: Vec<LogWrite>,
    /// Per target and date, its metadata before the batch's first change of that date.
    metadata_changes: BTreeMap<(LedgerId, ChangedTarget, Timestamp), Metadata>,
}

/// Postings applied on top of the batch state, not yet folded in.
#[derive(Default)]
struct Overlay {
    volumes: BTreeMap<(String, String), Volumes>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Funds {
    /// Every source but `world` must hold what it sends.
    Check,
    /// `force`, or a script that already enforced its own overdraft rules.
    Skip,
}

impl<'w> Batch<'w> {
    pub fn new(
        writer: &'w mut dyn StoreWriter,
        caches: &'w mut Caches,
        now: Timestamp,
        script_flags: &'w numscript::FeatureFlags,
    ) -> Batch<'w> {
        Batch {
            writer,
            caches,
            now,
            script_flags,
            heads: HashMap::new(),
            touched_heads: BTreeSet::new(),
            volumes: HashMap::new(),
            dirty_volumes: BTreeSet::new(),
            loaded_volumes: Vec::new(),
            accounts: HashMap::new(),
            transactions: HashMap::new(),
            references: HashSet::new(),
            idempotency: HashMap::new(),
            postings_written: 0,
            ledger_metadata: HashMap::new(),
            logs: Vec::new(),
            metadata_changes: BTreeMap::new(),
        }
    }

    /// Locks the ledgers the batch needs and loads, in a few queries, what its commands read.
    pub fn prepare(&mut self, requests: &[&Request]) -> Result<(), LedgerError> {
        let names: BTreeSet<String> = requests.iter().map(|r| r.ledger.clone()).collect();
        let names: Vec<String> = names.into_iter().collect();
        for head in self.writer.lock_ledgers(&names)? {
            self.caches.validate_ledger(head.id, head.next_log_id);
            self.heads.insert(head.name.clone(), head);
        }
        let mut keys: HashMap<LedgerId, (BTreeSet<String>, BTreeSet<String>)> = HashMap::new();
        let mut volume_keys = BTreeSet::new();
        for request in requests {
            let Some(head) = self.heads.get(&request.ledger) else {
                continue;
            };
            let entry = keys.entry(head.id).or_default();
            if let Some(key) = &request.idempotency_key {
                entry.0.insert(key.clone());
            }
            if let Command::ImportLogs { logs } = &request.command {
                // Asked once for the whole import, not once per log: a malformed payload is
                // left for the import itself to report.
                for log in logs {
                    if let Some(key) = &log.idempotency_key {
                        entry.0.insert(key.clone());
                    }
                    if matches!(
                        log.kind,
                        LogType::NewTransaction | LogType::RevertedTransaction
                    ) {
                        if let Ok(payload) = serde_json::from_str::<LoggedReference>(&log.data) {
                            entry.1.extend(payload.transaction.reference);
                        }
                    }
                }
            }
            if let Command::CreateTransaction(tx) = &request.command {
                if let Some(reference) = &tx.reference {
                    entry.1.insert(reference.clone());
                }
                if let TxBody::Postings(postings) = &tx.body {
                    for posting in postings {
                        for address in [&posting.source, &posting.destination] {
                            volume_keys.insert(VolumeKey {
                                ledger: head.id,
                                address: address.clone(),
                                asset: posting.asset.clone(),
                            });
                        }
                    }
                }
            }
        }
        for (ledger, (idempotency_keys, references)) in keys {
            if !idempotency_keys.is_empty() {
                let keys: Vec<String> = idempotency_keys.into_iter().collect();
                for log in self.writer.find_logs_by_idempotency_keys(ledger, &keys)? {
                    let key = log.idempotency_key.clone().expect("queried by key");
                    let entry = IdempotencyEntry {
                        log_id: log.id,
                        fingerprint: log.idempotency_hash,
                        kind: log.kind,
                        data: log.data,
                    };
                    self.idempotency.insert((ledger, key), entry);
                }
            }
            if !references.is_empty() {
                let references: Vec<String> = references.into_iter().collect();
                for reference in self.writer.find_references(ledger, &references)? {
                    self.references.insert((ledger, reference));
                }
            }
        }
        let keys: Vec<VolumeKey> = volume_keys.into_iter().collect();
        self.load_volumes(&keys)?;
        Ok(())
    }

    fn load_volumes(&mut self, keys: &[VolumeKey]) -> Result<(), LedgerError> {
        let mut missing = Vec::new();
        for key in keys {
            if self.volumes.contains_key(key) {
                continue;
            }
            match self.caches.volumes(key) {
                Some((volumes, first_usage)) => {
                    self.volumes.insert(key.clone(), volumes);
                    if let Some(first_usage) = first_usage {
                        // Spares `touch_account` a lookup in the accounts cache.
                        self.accounts
                            .entry((key.ledger, key.address.clone()))
                            .or_insert(AccountEntry {
                                exists: true,
                                first_usage: Some(first_usage),
                                metadata: None,
                                metadata_dirty: false,
                                dirty: false,
                                updated_at: None,
                                touched_at: None,
                                from_cache: true,
                            });
                    }
                }
                None => missing.push(key.clone()),
            }
        }
        if missing.is_empty() {
            return Ok(());
        }
        let loaded = self.writer.load_volumes(&missing)?;
        assert_eq!(
            loaded.len(),
            missing.len(),
            "store answered a different number of volumes"
        );
        for (key, volumes) in missing.into_iter().zip(loaded) {
            if volumes.is_some() {
                // An account with volumes has a row: remember it to skip the upsert.
                self.accounts
                    .entry((key.ledger, key.address.clone()))
                    .or_insert(AccountEntry {
                        exists: true,
                        first_usage: None,
                        metadata: None,
                        metadata_dirty: false,
                        dirty: false,
                        updated_at: None,
                        touched_at: None,
                        from_cache: false,
                    });
            }
            self.loaded_volumes.push(key.clone());
            self.volumes.insert(key, volumes.unwrap_or_default());
        }
        Ok(())
    }

    fn volumes_of(
        &mut self,
        ledger: LedgerId,
        address: &str,
        asset: &str,
    ) -> Result<Volumes, LedgerError> {
        let key = VolumeKey {
            ledger,
            address: address.to_string(),
            asset: asset.to_string(),
        };
        if let Some(volumes) = self.volumes.get(&key) {
            return Ok(*volumes);
        }
        self.load_volumes(std::slice::from_ref(&key))?;
        Ok(self.volumes[&key])
    }

    fn head(&self, name: &str) -> Result<&LedgerHead, LedgerError> {
        self.heads
            .get(name)
            .ok_or_else(|| LedgerError::LedgerNotFound(name.to_string()))
    }

    /// Executes one request. Errors leave the batch state as it was.
    pub fn execute(
        &mut self,
        request: &Request,
        script: &PreparedScript,
    ) -> Result<Response, LedgerError> {
        if let Command::CreateLedger {
            bucket,
            metadata,
            features,
        } = &request.command
        {
            return self.create_ledger(&request.ledger, bucket.as_deref(), metadata, features);
        }
        let head = self.head(&request.ledger)?.clone();
        // Only requests with an idempotency key need their input hashed.
        let fingerprint = request
            .idempotency_key
            .as_ref()
            .map(|_| request.key_fingerprint());
        if let Some(key) = &request.idempotency_key {
            if let Some(entry) = self.idempotency.get(&(head.id, key.clone())).cloned() {
                // Keys stored before the caller's input fingerprint was used, or before the
                // encoding was made explicit, hold the command's own fingerprint.
                let same = entry.fingerprint == fingerprint
                    || (request.input_fingerprint.is_some()
                        && entry.fingerprint == Some(request.fingerprint()))
                    || entry.fingerprint == Some(request.legacy_fingerprint());
                if !same {
                    return Err(LedgerError::IdempotencyKeyConflict(key.clone()));
                }
                let outcome = self.replay(head.id, &entry)?;
                return Ok(Response {
                    outcome,
                    idempotency_hit: true,
                    log_id: Some(entry.log_id),
                    dated_last: None,
                });
            }
        }
        let dry_run = request.dry_run;
        let logs_before = self.logs.len();
        let outcome = match &request.command {
            Command::CreateLedger { .. } => unreachable!("handled above"),
            Command::UpdateLedgerMetadata { metadata } => {
                let mut current = self.ledger_metadata(head.id)?;
                current.extend(metadata.clone());
                if !dry_run {
                    self.ledger_metadata.insert(head.id, current);
                }
                Outcome::Done
            }
            Command::DeleteLedgerMetadata { key } => {
                let mut current = self.ledger_metadata(head.id)?;
                current.remove(key);
                if !dry_run {
                    self.ledger_metadata.insert(head.id, current);
                }
                Outcome::Done
            }
            Command::CreateTransaction(input) => {
                self.create_transaction(&head, request, input, script, fingerprint)?
            }
            Command::RevertTransaction {
                id,
                force,
                at_effective_date,
                metadata,
            } => self.revert_transaction(
                &head,
                request,
                *id,
                *force,
                *at_effective_date,
                metadata,
                fingerprint,
            )?,
            Command::SaveMetadata { target, metadata } => {
                self.save_metadata(&head, request, target, metadata, fingerprint)?
            }
            Command::DeleteMetadata { target, key } => {
                self.delete_metadata(&head, request, target, key, fingerprint)?
            }
            Command::ImportLogs { logs } => self.import_logs(&head, logs)?,
        };
        let log_id =
            (self.logs.len() > logs_before).then(|| self.logs.last().expect("appended").log.id);
        // `head` is as it was before this request: its latest timestamp is the earlier ones'.
        let dated_last = match &outcome {
            Outcome::Transaction(tx) => head
                .time_order
                .map(|order| order.latest.is_none_or(|latest| tx.timestamp >= latest)),
            _ => None,
        };
        Ok(Response {
            outcome,
            idempotency_hit: false,
            log_id,
            dated_last,
        })
    }

    fn ledger_metadata(&mut self, ledger: LedgerId) -> Result<Metadata, LedgerError> {
        if let Some(metadata) = self.ledger_metadata.get(&ledger) {
            return Ok(metadata.clone());
        }
        Ok(self.writer.load_ledger_metadata(ledger)?)
    }

    fn create_ledger(
        &mut self,
        name: &str,
        bucket: Option<&str>,
        metadata: &Metadata,
        features: &Metadata,
    ) -> Result<Response, LedgerError> {
        if self.heads.contains_key(name) {
            return Err(LedgerError::LedgerAlreadyExists(name.to_string()));
        }
        let mut all_features = default_features();
        for (key, value) in features {
            let Some((_, accepted)) = FEATURE_VALUES.iter().find(|(name, _)| name == key) else {
                return Err(LedgerError::Validation(format!(
                    "features: unknown feature {key:?}"
                )));
            };
            if !accepted.contains(&value.as_str()) {
                return Err(LedgerError::Validation(format!(
                    "features: {key} cannot be {value:?} (one of {})",
                    accepted.join(", ")
                )));
            }
            all_features.insert(key.clone(), value.clone());
        }
        let ledger = NewLedger {
            name: name.to_string(),
            bucket: bucket.unwrap_or(name).to_string(),
            metadata: metadata.clone(),
            features: all_features,
            added_at: self.now,
        };
        let head = self
            .writer
            .insert_ledger(&ledger)?
            .ok_or_else(|| LedgerError::LedgerAlreadyExists(name.to_string()))?;
        self.caches.validate_ledger(head.id, head.next_log_id);
        self.heads.insert(name.to_string(), head);
        Ok(Response {
            outcome: Outcome::Done,
            idempotency_hit: false,
            log_id: None,
            dated_last: None,
        })
    }

    fn replay(
        &mut self,
        ledger: LedgerId,
        entry: &IdempotencyEntry,
    ) -> Result<Outcome, LedgerError> {
        let corrupt =
            |err: serde_json::Error| LedgerError::Store(format!("corrupt log payload: {err}"));
        let logged = match entry.kind {
            LogType::NewTransaction => {
                let payload: NewTransactionPayload =
                    serde_json::from_str(&entry.data).map_err(corrupt)?;
                payload.transaction
            }
            LogType::RevertedTransaction => {
                let payload: RevertedTransactionPayload =
                    serde_json::from_str(&entry.data).map_err(corrupt)?;
                payload.transaction
            }
            LogType::SetMetadata | LogType::DeleteMetadata => return Ok(Outcome::Done),
        };
        // The answer the write gave: the transaction as logged, before any later change
        // (metadata, a revert); its post-commit volumes and insertion date never change.
        let id = logged.id;
        let stored = self.transaction(ledger, id)?.ok_or_else(|| {
            LedgerError::Store(format!("transaction {id} of an idempotency log is missing"))
        })?;
        Ok(Outcome::Transaction(Transaction {
            id,
            timestamp: logged.timestamp()?,
            inserted_at: stored.inserted_at,
            updated_at: stored.inserted_at,
            postings: logged.postings(),
            reference: logged.reference,
            metadata: logged.metadata,
            reverted_at: None,
            post_commit_volumes: stored.post_commit_volumes,
        }))
    }

    fn transaction(
        &mut self,
        ledger: LedgerId,
        id: TxId,
    ) -> Result<Option<Transaction>, LedgerError> {
        if let Some(entry) = self.transactions.get(&(ledger, id)) {
            return Ok(Some(entry.tx.clone()));
        }
        let Some(tx) = self.writer.load_transaction(ledger, id)? else {
            return Ok(None);
        };
        self.transactions.insert(
            (ledger, id),
            TxEntry {
                tx: tx.clone(),
                new: false,
                dirty: false,
            },
        );
        Ok(Some(tx))
    }

    fn account_metadata(
        &mut self,
        ledger: LedgerId,
        address: &str,
    ) -> Result<Option<Metadata>, LedgerError> {
        let key = (ledger, address.to_string());
        if let Some(entry) = self.accounts.get(&key) {
            if let Some(metadata) = &entry.metadata {
                return Ok(Some(metadata.clone()));
            }
            if !entry.exists {
                return Ok(None);
            }
        }
        let stored = self
            .writer
            .load_accounts(ledger, std::slice::from_ref(&key.1))?
            .pop()
            .flatten();
        let entry = self.accounts.entry(key).or_insert(AccountEntry {
            exists: false,
            first_usage: None,
            metadata: None,
            metadata_dirty: false,
            dirty: false,
            updated_at: None,
            touched_at: None,
            from_cache: false,
        });
        match stored {
            Some(stored) => {
                entry.exists = true;
                if entry.first_usage.is_none() {
                    entry.first_usage = Some(stored.first_usage);
                }
                entry.metadata = Some(stored.metadata.clone());
                Ok(Some(stored.metadata))
            }
            None => {
                if !entry.dirty {
                    entry.exists = false;
                }
                Ok(if entry.dirty {
                    Some(Metadata::new())
                } else {
                    None
                })
            }
        }
    }

    /// Records that an account is used at `timestamp`; creates its row if needed.
    fn touch_account(&mut self, ledger: LedgerId, address: &str, timestamp: Timestamp) {
        let key = (ledger, address.to_string());
        let cached = if self.accounts.contains_key(&key) {
            None
        } else {
            self.caches.account(ledger, address)
        };
        let entry = self.accounts.entry(key).or_insert_with(|| AccountEntry {
            exists: cached.is_some(),
            first_usage: cached,
            metadata: None,
            metadata_dirty: false,
            dirty: false,
            updated_at: None,
            touched_at: None,
            from_cache: cached.is_some(),
        });
        entry.touched_at.get_or_insert(self.now);
        match entry.first_usage {
            Some(first_usage) if entry.exists && first_usage <= timestamp => {}
            Some(first_usage) => {
                entry.first_usage = Some(first_usage.min(timestamp));
                entry.dirty = true;
            }
            None => {
                entry.first_usage = Some(timestamp);
                entry.dirty = true;
            }
        }
        entry.exists = true;
    }

    /// Callers read the account's metadata first (`account_metadata`), so `before` is known.
    fn set_account_metadata(&mut self, ledger: LedgerId, address: &str, metadata: Metadata) {
        let now = self.now;
        self.touch_account(ledger, address, now);
        let entry = self
            .accounts
            .get_mut(&(ledger, address.to_string()))
            .expect("touched");
        let before = entry.metadata.clone().unwrap_or_default();
        self.metadata_changes
            .entry((ledger, ChangedTarget::Account(address.to_string()), now))
            .or_insert(before);
        entry.metadata = Some(metadata);
        entry.metadata_dirty = true;
        entry.dirty = true;
        entry.updated_at = Some(now);
    }

    /// Moves the ledger's head past a new transaction.
    fn next_transaction(&mut self, head_name: &str, tx: &Transaction) {
        let head = self.heads.get_mut(head_name).expect("locked");
        assert_eq!(tx.id, head.next_tx_id, "transactions are numbered in turn");
        head.next_tx_id += 1;
        if let Some(order) = &mut head.time_order {
            order.add(tx.id, tx.timestamp);
        }
    }

    /// Remembers a loaded transaction's metadata before the change about to be made to it.
    fn note_transaction_change(&mut self, ledger: LedgerId, id: TxId) {
        let before = &self
            .transactions
            .get(&(ledger, id))
            .expect("loaded before its change")
            .tx
            .metadata;
        self.metadata_changes
            .entry((ledger, ChangedTarget::Transaction(id), self.now))
            .or_insert_with(|| before.clone());
    }

    /// Applies postings on an overlay, checking funds unless told not to.
    fn simulate(
        &mut self,
        ledger: LedgerId,
        postings: &[Posting],
        funds: Funds,
    ) -> Result<Overlay, LedgerError> {
        let keys: Vec<VolumeKey> = postings
            .iter()
            .flat_map(|p| {
                [
                    VolumeKey {
                        ledger,
                        address: p.source.clone(),
                        asset: p.asset.clone(),
                    },
                    VolumeKey {
                        ledger,
                        address: p.destination.clone(),
                        asset: p.asset.clone(),
                    },
                ]
            })
            .filter(|key| !self.volumes.contains_key(key))
            .collect();
        self.load_volumes(&keys)?;
        let mut overlay = Overlay::default();
        for posting in postings {
            assert!(posting.amount >= 0, "negative posting reached the engine");
            let source_key = (posting.source.clone(), posting.asset.clone());
            let mut source = match overlay.volumes.get(&source_key) {
                Some(volumes) => *volumes,
                None => self.volumes_of(ledger, &posting.source, &posting.asset)?,
            };
            if funds == Funds::Check && posting.source != WORLD {
                let available = source.balance()?;
                if available < posting.amount {
                    return Err(LedgerError::InsufficientFunds {
                        account: posting.source.clone(),
                        asset: posting.asset.clone(),
                        needed: posting.amount,
                        available: available.max(0),
                    });
                }
            }
            source.send(posting.amount)?;
            overlay.volumes.insert(source_key, source);

            let destination_key = (posting.destination.clone(), posting.asset.clone());
            let mut destination = match overlay.volumes.get(&destination_key) {
                Some(volumes) => *volumes,
                None => self.volumes_of(ledger, &posting.destination, &posting.asset)?,
            };
            destination.receive(posting.amount)?;
            overlay.volumes.insert(destination_key, destination);
        }
        Ok(overlay)
    }

    fn post_commit_volumes(overlay: &Overlay) -> VolumesByAccount {
        let mut out = VolumesByAccount::new();
        for ((address, asset), volumes) in &overlay.volumes {
            out.entry(address.clone())
                .or_default()
                .insert(asset.clone(), *volumes);
        }
        out
    }

    /// Folds a successful command's overlay into the batch state.
    fn apply(&mut self, ledger: LedgerId, tx: &Transaction, overlay: Overlay) {
        self.postings_written = self.postings_written.saturating_add(tx.postings.len());
        for ((address, asset), volumes) in overlay.volumes {
            self.touch_account(ledger, &address, tx.timestamp);
            let key = VolumeKey {
                ledger,
                address,
                asset,
            };
            self.volumes.insert(key.clone(), volumes);
            self.dirty_volumes.insert(key);
        }
    }

    fn append_log(
        &mut self,
        head_name: &str,
        kind: LogType,
        data: String,
        packed: Option<Vec<u8>>,
        request: &Request,
        fingerprint: Option<Hash>,
    ) -> Result<(), LedgerError> {
        if cfg!(debug_assertions) {
            if let Some(packed) = &packed {
                let decoded = codec::compact::decode_new_transaction(packed)
                    .expect("packed log data decodes");
                assert_eq!(
                    log::encode(&decoded),
                    data,
                    "packed log data gives the hashed text"
                );
            }
        }
        let head = self.heads.get_mut(head_name).expect("locked ledger");
        let id = head.next_log_id;
        let hash = chain_hash(
            head.last_hash.as_ref(),
            id,
            kind,
            self.now,
            request.idempotency_key.as_deref(),
            &data,
        );
        head.next_log_id += 1;
        head.last_hash = Some(hash);
        let ledger = head.id;
        self.touched_heads.insert(head_name.to_string());
        if let Some(key) = &request.idempotency_key {
            let entry = IdempotencyEntry {
                log_id: id,
                fingerprint,
                kind,
                data: data.clone(),
            };
            self.idempotency.insert((ledger, key.clone()), entry);
        }
        let log = Log {
            id,
            kind,
            date: self.now,
            data,
            idempotency_key: request.idempotency_key.clone(),
            idempotency_hash: fingerprint,
            hash,
        };
        self.logs.push(LogWrite {
            ledger,
            log,
            packed,
        });
        Ok(())
    }

    fn run_script(
        &mut self,
        ledger: LedgerId,
        program: &numscript::Program,
        vars: &BTreeMap<String, String>,
    ) -> Result<numscript::Execution, LedgerError> {
        let flags = self.script_flags;
        let mut view = ScriptView {
            batch: self,
            ledger,
            store_error: None,
        };
        let result = numscript::run(program, vars, flags, &mut view);
        if let Some(err) = view.store_error.take() {
            return Err(err);
        }
        result.map_err(map_script_error)
    }

    fn create_transaction(
        &mut self,
        head: &LedgerHead,
        request: &Request,
        input: &NewTransaction,
        script: &PreparedScript,
        fingerprint: Option<Hash>,
    ) -> Result<Outcome, LedgerError> {
        let ledger = head.id;
        if let Some(reference) = &input.reference {
            if self.references.contains(&(ledger, reference.clone())) {
                return Err(LedgerError::DuplicateReference(reference.clone()));
            }
        }
        let mut metadata = input.metadata.clone();
        let mut account_metadata = BTreeMap::new();
        let (postings, funds) = match &input.body {
            TxBody::Postings(postings) => (
                postings.clone(),
                if input.force {
                    Funds::Skip
                } else {
                    Funds::Check
                },
            ),
            TxBody::Script { vars, .. } => {
                let program = script
                    .as_ref()
                    .expect("scripts are parsed before the writer");
                let execution = self.run_script(ledger, program, vars)?;
                for (key, value) in execution.tx_metadata {
                    if metadata.contains_key(&key) {
                        return Err(LedgerError::MetadataOverride(key));
                    }
                    metadata.insert(key, value);
                }
                account_metadata = execution.account_metadata;
                let postings: Vec<Posting> = execution
                    .postings
                    .into_iter()
                    .map(|p| Posting {
                        asset: colored_asset(&p.asset, &p.color),
                        source: p.source,
                        destination: p.destination,
                        amount: p.amount,
                    })
                    .collect();
                // A script's variables and colours are not checked against the ledger's own
                // rules until here (an address's length, an asset coloured twice).
                if postings.len() > POSTINGS_MAX {
                    return Err(LedgerError::Validation(format!(
                        "the script makes {} postings: at most {POSTINGS_MAX}",
                        postings.len()
                    )));
                }
                for (index, posting) in postings.iter().enumerate() {
                    posting.validate(index)?;
                }
                (postings, Funds::Skip)
            }
        };
        for (address, extra) in &input.account_metadata {
            account_metadata
                .entry(address.clone())
                .or_default()
                .extend(extra.clone());
        }
        let overlay = self.simulate(ledger, &postings, funds)?;
        let timestamp = input.timestamp.unwrap_or(self.now);
        let tx = Transaction {
            id: head.next_tx_id,
            timestamp,
            inserted_at: self.now,
            updated_at: self.now,
            postings,
            reference: input.reference.clone(),
            metadata,
            reverted_at: None,
            post_commit_volumes: Self::post_commit_volumes(&overlay),
        };
        tx.assert_balanced();
        if request.dry_run {
            return Ok(Outcome::Transaction(tx));
        }
        self.append_log(
            &request.ledger,
            LogType::NewTransaction,
            log::encode_new_transaction(&tx, &account_metadata),
            Some(codec::compact::encode_new_transaction(
                &tx,
                &account_metadata,
            )),
            request,
            fingerprint,
        )?;
        self.next_transaction(&request.ledger, &tx);
        self.apply(ledger, &tx, overlay);
        for (address, extra) in account_metadata {
            let mut current = self.account_metadata(ledger, &address)?.unwrap_or_default();
            current.extend(extra);
            self.set_account_metadata(ledger, &address, current);
        }
        if let Some(reference) = &tx.reference {
            self.references.insert((ledger, reference.clone()));
        }
        self.transactions.insert(
            (ledger, tx.id),
            TxEntry {
                tx: tx.clone(),
                new: true,
                dirty: true,
            },
        );
        Ok(Outcome::Transaction(tx))
    }

    #[allow(clippy::too_many_arguments)]
    fn revert_transaction(
        &mut self,
        head: &LedgerHead,
        request: &Request,
        id: TxId,
        force: bool,
        at_effective_date: bool,
        metadata: &Metadata,
        fingerprint: Option<Hash>,
    ) -> Result<Outcome, LedgerError> {
        let ledger = head.id;
        let original = self
            .transaction(ledger, id)?
            .ok_or_else(|| LedgerError::NotFound(format!("transaction {id}")))?;
        if original.reverted_at.is_some() {
            return Err(LedgerError::AlreadyReverted(id));
        }
        let postings: Vec<Posting> = original
            .postings
            .iter()
            .rev()
            .map(|p| Posting {
                source: p.destination.clone(),
                destination: p.source.clone(),
                amount: p.amount,
                asset: p.asset.clone(),
            })
            .collect();
        let overlay = self.simulate(
            ledger,
            &postings,
            if force { Funds::Skip } else { Funds::Check },
        )?;
        let mut revert_metadata = metadata.clone();
        revert_metadata.insert(REVERTS_METADATA_KEY.to_string(), id.to_string());
        let tx = Transaction {
            id: head.next_tx_id,
            timestamp: if at_effective_date {
                original.timestamp
            } else {
                self.now
            },
            inserted_at: self.now,
            updated_at: self.now,
            postings,
            reference: None,
            metadata: revert_metadata,
            reverted_at: None,
            post_commit_volumes: Self::post_commit_volumes(&overlay),
        };
        tx.assert_balanced();
        if request.dry_run {
            return Ok(Outcome::Transaction(tx));
        }
        let mut reverted = LogTransaction::from_transaction(&original);
        reverted.reverted = true;
        let payload = RevertedTransactionPayload {
            reverted_transaction: reverted,
            transaction: LogTransaction::from_transaction(&tx),
        };
        self.append_log(
            &request.ledger,
            LogType::RevertedTransaction,
            log::encode(&payload),
            None,
            request,
            fingerprint,
        )?;
        self.next_transaction(&request.ledger, &tx);
        self.apply(ledger, &tx, overlay);
        let entry = self
            .transactions
            .get_mut(&(ledger, id))
            .expect("loaded above");
        entry.tx.reverted_at = Some(self.now);
        entry.tx.updated_at = self.now;
        entry.dirty = true;
        self.transactions.insert(
            (ledger, tx.id),
            TxEntry {
                tx: tx.clone(),
                new: true,
                dirty: true,
            },
        );
        Ok(Outcome::Transaction(tx))
    }

    fn save_metadata(
        &mut self,
        head: &LedgerHead,
        request: &Request,
        target: &Target,
        metadata: &Metadata,
        fingerprint: Option<Hash>,
    ) -> Result<Outcome, LedgerError> {
        let ledger = head.id;
        let target_id = match target {
            Target::Transaction(id) => {
                let tx = self
                    .transaction(ledger, *id)?
                    .ok_or_else(|| LedgerError::NotFound(format!("transaction {id}")))?;
                if request.dry_run {
                    return Ok(Outcome::Done);
                }
                self.note_transaction_change(ledger, tx.id);
                let entry = self
                    .transactions
                    .get_mut(&(ledger, tx.id))
                    .expect("loaded above");
                entry.tx.metadata.extend(metadata.clone());
                entry.tx.updated_at = self.now;
                entry.dirty = true;
                TargetId::Transaction(*id)
            }
            Target::Account(address) => {
                if request.dry_run {
                    return Ok(Outcome::Done);
                }
                let mut current = self.account_metadata(ledger, address)?.unwrap_or_default();
                current.extend(metadata.clone());
                self.set_account_metadata(ledger, address, current);
                TargetId::Account(address.clone())
            }
        };
        let payload = SetMetadataPayload {
            target_type: target_type(target).to_string(),
            target_id,
            metadata: metadata.clone(),
        };
        self.append_log(
            &request.ledger,
            LogType::SetMetadata,
            log::encode(&payload),
            None,
            request,
            fingerprint,
        )?;
        Ok(Outcome::Done)
    }

    fn delete_metadata(
        &mut self,
        head: &LedgerHead,
        request: &Request,
        target: &Target,
        key: &str,
        fingerprint: Option<Hash>,
    ) -> Result<Outcome, LedgerError> {
        let ledger = head.id;
        let target_id = match target {
            Target::Transaction(id) => {
                self.transaction(ledger, *id)?
                    .ok_or_else(|| LedgerError::NotFound(format!("transaction {id}")))?;
                if request.dry_run {
                    return Ok(Outcome::Done);
                }
                self.note_transaction_change(ledger, *id);
                let entry = self
                    .transactions
                    .get_mut(&(ledger, *id))
                    .expect("loaded above");
                entry.tx.metadata.remove(key);
                entry.tx.updated_at = self.now;
                entry.dirty = true;
                TargetId::Transaction(*id)
            }
            Target::Account(address) => {
                let mut current = self
                    .account_metadata(ledger, address)?
                    .ok_or_else(|| LedgerError::NotFound(format!("account {address}")))?;
                if request.dry_run {
                    return Ok(Outcome::Done);
                }
                current.remove(key);
                self.set_account_metadata(ledger, address, current);
                TargetId::Account(address.clone())
            }
        };
        let payload = DeleteMetadataPayload {
            target_type: target_type(target).to_string(),
            target_id,
            key: key.to_string(),
        };
        self.append_log(
            &request.ledger,
            LogType::DeleteMetadata,
            log::encode(&payload),
            None,
            request,
            fingerprint,
        )?;
        Ok(Outcome::Done)
    }

    /// Replays exported logs: ids must continue the ledger's, hashes must match when given.
    fn import_logs(&mut self, head: &LedgerHead, logs: &[Log]) -> Result<Outcome, LedgerError> {
        let ledger = head.id;
        let name = head.name.clone();
        for log in logs {
            let current = self.heads[&name].clone();
            if log.id != current.next_log_id {
                return Err(LedgerError::Import(format!(
                    "log {} does not follow the ledger's last log (expected id {})",
                    log.id, current.next_log_id
                )));
            }
            let hash = chain_hash(
                current.last_hash.as_ref(),
                log.id,
                log.kind,
                log.date,
                log.idempotency_key.as_deref(),
                &log.data,
            );
            if log.hash != [0; 32] && log.hash != hash {
                return Err(LedgerError::Import(format!(
                    "log {}: hash does not match the chain",
                    log.id
                )));
            }
            if let Some(key) = &log.idempotency_key {
                // The store's unique key would refuse it only at commit, as a store error.
                // `prepare` loaded the keys the store has.
                if self.idempotency.contains_key(&(ledger, key.clone())) {
                    return Err(LedgerError::Import(format!(
                        "log {}: duplicate idempotency key {key:?}",
                        log.id
                    )));
                }
            }
            // Rows are dated by their log, and the clock is restored whatever the outcome.
            let saved_now = self.now;
            self.now = log.date;
            let result = self.import_log(&current, log);
            self.now = saved_now;
            result?;
            let head = self.heads.get_mut(&name).expect("locked");
            head.next_log_id += 1;
            head.last_hash = Some(hash);
            self.touched_heads.insert(name.clone());
            self.logs.push(LogWrite {
                ledger,
                log: Log {
                    hash,
                    ..log.clone()
                },
                packed: None,
            });
            if let Some(key) = &log.idempotency_key {
                let entry = IdempotencyEntry {
                    log_id: log.id,
                    fingerprint: log.idempotency_hash,
                    kind: log.kind,
                    data: log.data.clone(),
                };
                self.idempotency.insert((ledger, key.clone()), entry);
            }
        }
        Ok(Outcome::Imported(logs.len() as u64))
    }

    /// Applies one imported log's rows; its chain and ids were checked by `import_logs`.
    fn import_log(&mut self, current: &LedgerHead, log: &Log) -> Result<(), LedgerError> {
        let ledger = current.id;
        let invalid =
            |err: serde_json::Error| LedgerError::Import(format!("log {}: {err}", log.id));
        match log.kind {
            LogType::NewTransaction => {
                let payload: NewTransactionPayload =
                    serde_json::from_str(&log.data).map_err(invalid)?;
                self.import_transaction(current, &payload.transaction, &payload.account_metadata)
            }
            LogType::RevertedTransaction => {
                let payload: RevertedTransactionPayload =
                    serde_json::from_str(&log.data).map_err(invalid)?;
                self.import_transaction(current, &payload.transaction, &BTreeMap::new())
                    .and_then(|_| {
                        let id = payload.reverted_transaction.id;
                        let reverted = self.transaction(ledger, id)?.ok_or_else(|| {
                            LedgerError::Import(format!("reverted transaction {id} is unknown"))
                        })?;
                        if reverted.reverted_at.is_some() {
                            return Err(LedgerError::Import(format!(
                                "transaction {id} is already reverted"
                            )));
                        }
                        let entry = self.transactions.get_mut(&(ledger, id)).expect("loaded");
                        entry.tx.reverted_at = Some(log.date);
                        entry.tx.updated_at = log.date;
                        entry.dirty = true;
                        Ok(())
                    })
            }
            LogType::SetMetadata => {
                let payload: SetMetadataPayload =
                    serde_json::from_str(&log.data).map_err(invalid)?;
                let target = import_target(log.id, &payload.target_type, &payload.target_id)?;
                self.import_metadata(ledger, &target, Some(&payload.metadata), None)
            }
            LogType::DeleteMetadata => {
                let payload: DeleteMetadataPayload =
                    serde_json::from_str(&log.data).map_err(invalid)?;
                let target = import_target(log.id, &payload.target_type, &payload.target_id)?;
                self.import_metadata(ledger, &target, None, Some(&payload.key))
            }
        }
        .map_err(|err| match err {
            // What the log asks for is refused as an import error, naming the log; the store's
            // own failures stay what they are.
            LedgerError::Import(_) | LedgerError::Store(_) | LedgerError::Unavailable => err,
            other => LedgerError::Import(format!("log {}: {other}", log.id)),
        })
    }

    fn import_transaction(
        &mut self,
        head: &LedgerHead,
        logged: &LogTransaction,
        account_metadata: &BTreeMap<String, Metadata>,
    ) -> Result<(), LedgerError> {
        let ledger = head.id;
        if logged.id != head.next_tx_id {
            return Err(LedgerError::Import(format!(
                "transaction {} does not follow the ledger's last transaction (expected id {})",
                logged.id, head.next_tx_id
            )));
        }
        let postings = logged.postings();
        for (index, posting) in postings.iter().enumerate() {
            posting
                .validate(index)
                .map_err(|err| LedgerError::Import(err.to_string()))?;
        }
        let overlay = self.simulate(ledger, &postings, Funds::Skip)?;
        let tx = Transaction {
            id: logged.id,
            timestamp: logged.timestamp()?,
            inserted_at: self.now,
            updated_at: self.now,
            postings,
            reference: logged.reference.clone(),
            metadata: logged.metadata.clone(),
            reverted_at: None,
            post_commit_volumes: Self::post_commit_volumes(&overlay),
        };
        if let Some(reference) = &tx.reference {
            // The store may write transactions behind the commit, where a duplicate would fail
            // for ever: `prepare` loaded the references the store has.
            if self.references.contains(&(ledger, reference.clone())) {
                return Err(LedgerError::Import(format!(
                    "duplicate reference {reference:?}"
                )));
            }
            self.references.insert((ledger, reference.clone()));
        }
        self.next_transaction(&head.name, &tx);
        self.apply(ledger, &tx, overlay);
        for (address, extra) in account_metadata {
            if !is_valid_address(address) {
                return Err(LedgerError::Import(format!(
                    "accountMetadata: invalid address {address:?}"
                )));
            }
            let mut current = self.account_metadata(ledger, address)?.unwrap_or_default();
            current.extend(extra.clone());
            self.set_account_metadata(ledger, address, current);
        }
        self.transactions.insert(
            (ledger, tx.id),
            TxEntry {
                tx,
                new: true,
                dirty: true,
            },
        );
        Ok(())
    }

    fn import_metadata(
        &mut self,
        ledger: LedgerId,
        target: &TargetId,
        set: Option<&Metadata>,
        delete: Option<&str>,
    ) -> Result<(), LedgerError> {
        match target {
            TargetId::Transaction(id) => {
                self.transaction(ledger, *id)?
                    .ok_or_else(|| LedgerError::Import(format!("transaction {id} is unknown")))?;
                self.note_transaction_change(ledger, *id);
                let entry = self.transactions.get_mut(&(ledger, *id)).expect("loaded");
                if let Some(set) = set {
                    entry.tx.metadata.extend(set.clone());
                }
                if let Some(key) = delete {
                    entry.tx.metadata.remove(key);
                }
                entry.tx.updated_at = self.now;
                entry.dirty = true;
            }
            TargetId::Account(address) => {
                let mut current = self.account_metadata(ledger, address)?.unwrap_or_default();
                if let Some(set) = set {
                    current.extend(set.clone());
                }
                if let Some(key) = delete {
                    current.remove(key);
                }
                self.set_account_metadata(ledger, address, current);
            }
        }
        Ok(())
    }

    /// Everything the batch changed, as rows for the store.
    /// Everything the batch changed, as rows for the store; new transactions and logs are moved.
    fn take_writes(&mut self) -> BatchWrites {
        let mut writes = BatchWrites::default();
        for name in &self.touched_heads {
            writes.heads.push(self.heads[name].clone());
        }
        writes.ledger_metadata = self
            .ledger_metadata
            .iter()
            .map(|(id, m)| (*id, m.clone()))
            .collect();
        let mut transactions: Vec<((LedgerId, TxId), TxEntry)> =
            std::mem::take(&mut self.transactions)
                .into_iter()
                .filter(|(_, entry)| entry.dirty)
                .collect();
        transactions.sort_by_key(|(key, _)| *key);
        for ((ledger, _), entry) in transactions {
            if entry.new {
                writes.transactions.push((ledger, entry.tx));
            } else {
                writes.transaction_updates.push(TransactionUpdate {
                    ledger,
                    id: entry.tx.id,
                    metadata: entry.tx.metadata.clone(),
                    reverted_at: entry.tx.reverted_at,
                    updated_at: entry.tx.updated_at,
                });
            }
        }
        for key in &self.dirty_volumes {
            writes.volumes.push((key.clone(), self.volumes[key]));
        }
        for ((ledger, address), entry) in &self.accounts {
            if !entry.dirty {
                continue;
            }
            writes.accounts.push(AccountWrite {
                ledger: *ledger,
                address: address.clone(),
                first_usage: entry.first_usage.unwrap_or(self.now),
                insertion_date: entry.touched_at.unwrap_or(self.now),
                updated_at: entry.updated_at.or(entry.touched_at).unwrap_or(self.now),
                metadata: if entry.metadata_dirty {
                    entry.metadata.clone()
                } else {
                    None
                },
            });
        }
        writes
            .accounts
            .sort_by(|a, b| (a.ledger, &a.address).cmp(&(b.ledger, &b.address)));
        writes.logs = std::mem::take(&mut self.logs);
        writes.metadata_changes = std::mem::take(&mut self.metadata_changes)
            .into_iter()
            .map(|((ledger, target, date), before)| MetadataChange {
                ledger,
                target,
                date,
                before,
            })
            .collect();
        writes
    }

    /// Writes and commits the batch; then remembers what it learnt for the next batches.
    pub fn commit(mut self) -> Result<(), LedgerError> {
        let writes = self.take_writes();
        if !writes.is_empty() {
            self.writer.write(&writes)?;
        }
        self.writer.commit()?;
        self.update_caches();
        Ok(())
    }

    fn update_caches(self) {
        for head in self.heads.values() {
            self.caches.advance_ledger(head.id, head.next_log_id);
        }
        // Entries read from the cache are there already; only new values and store reads go in.
        let mut account = (0, String::new());
        for key in self.dirty_volumes.iter().chain(&self.loaded_volumes) {
            if let Some(volumes) = self.volumes.get(key) {
                account.0 = key.ledger;
                account.1.clear();
                account.1.push_str(&key.address);
                let first_usage = self
                    .accounts
                    .get(&account)
                    .filter(|entry| entry.exists)
                    .and_then(|entry| entry.first_usage);
                self.caches.put_volumes(key, *volumes, first_usage);
            }
        }
        for ((ledger, address), entry) in self.accounts {
            if entry.from_cache && !entry.dirty {
                continue;
            }
            if let (true, Some(first_usage)) = (entry.exists, entry.first_usage) {
                self.caches.put_account(ledger, &address, first_usage);
            }
        }
    }

    /// Postings of the transactions written so far.
    pub fn postings_written(&self) -> usize {
        self.postings_written
    }

    /// Ledgers whose cache must be dropped if the batch fails.
    pub fn ledger_ids(&self) -> Vec<LedgerId> {
        self.heads.values().map(|head| head.id).collect()
    }
}

fn target_type(target: &Target) -> &'static str {
    match target {
        Target::Account(_) => TARGET_ACCOUNT,
        Target::Transaction(_) => TARGET_TRANSACTION,
    }
}

/// Coloured funds are kept as their own asset, `BASE_COLOR[/n]` (Numscript v0.0.24 encoding).
fn colored_asset(asset: &str, color: &str) -> String {
    if color.is_empty() {
        return asset.to_string();
    }
    match asset.split_once('/') {
        Some((base, precision)) => format!("{base}_{color}/{precision}"),
        None => format!("{asset}_{color}"),
    }
}

fn map_script_error(err: numscript::RuntimeError) -> LedgerError {
    match err {
        numscript::RuntimeError::MissingFunds {
            account,
            asset,
            needed,
            available,
        } => LedgerError::InsufficientFunds {
            account: account.unwrap_or_default(),
            asset,
            needed,
            available,
        },
        other => {
            let message = other.to_string();
            let code = crate::script::error_code(&other);
            if crate::script::is_variable_error(code) {
                LedgerError::Compilation(message)
            } else {
                LedgerError::ScriptRuntime { code, message }
            }
        }
    }
}

/// Most precisions of one base an account may hold for a script's asset scaling to read.
pub const ASSET_PRECISIONS_MAX: usize = 64;

impl ScriptView<'_, '_> {
    /// The uncoloured assets of `base` the account holds, in the store or in this batch.
    fn assets_of_base(&mut self, account: &str, base: &str) -> Result<Vec<String>, LedgerError> {
        let mut assets: BTreeSet<String> = self
            .batch
            .writer
            .account_assets_of_base(self.ledger, account, base, ASSET_PRECISIONS_MAX + 1)?
            .into_iter()
            .collect();
        // Only what this batch wrote: `volumes` also holds keys merely looked up, at zero.
        assets.extend(
            self.batch
                .dirty_volumes
                .iter()
                .filter(|key| {
                    key.ledger == self.ledger
                        && key.address == account
                        && crate::types::asset_base(&key.asset) == base
                })
                .map(|key| key.asset.clone()),
        );
        if assets.len() > ASSET_PRECISIONS_MAX {
            return Err(LedgerError::Validation(format!(
                "account {account} holds more than {ASSET_PRECISIONS_MAX} precisions of {base}: \
                 too many for asset scaling"
            )));
        }
        Ok(assets.into_iter().collect())
    }
}

/// The interpreter's view of balances and metadata: the batch state, loading misses at once.
struct ScriptView<'b, 'w> {
    batch: &'b mut Batch<'w>,
    ledger: LedgerId,
    store_error: Option<LedgerError>,
}

impl numscript::Store for ScriptView<'_, '_> {
    fn get_balances(
        &mut self,
        requests: &[numscript::BalanceRequest],
    ) -> Result<Vec<numscript::BalanceRow>, numscript::StoreError> {
        // `BASE/*` (asset scaling) asks for every precision of a base the account holds: one
        // row per asset, in the store or written by this batch so far.
        let mut keys = Vec::with_capacity(requests.len());
        let mut answers = Vec::with_capacity(requests.len());
        for request in requests {
            let Some(base) = request.asset.strip_suffix("/*") else {
                keys.push(VolumeKey {
                    ledger: self.ledger,
                    address: request.account.clone(),
                    asset: colored_asset(&request.asset, &request.color),
                });
                answers.push((request.asset.clone(), request.color.clone()));
                continue;
            };
            let assets = match self.assets_of_base(&request.account, base) {
                Ok(assets) => assets,
                Err(err) => {
                    let message = err.to_string();
                    self.store_error = Some(err);
                    return Err(numscript::StoreError(message));
                }
            };
            for asset in assets {
                keys.push(VolumeKey {
                    ledger: self.ledger,
                    address: request.account.clone(),
                    asset: asset.clone(),
                });
                // Scaling ignores colours: the uncoloured assets only.
                answers.push((asset, String::new()));
            }
        }
        if let Err(err) = self.batch.load_volumes(&keys) {
            let message = err.to_string();
            self.store_error = Some(err);
            return Err(numscript::StoreError(message));
        }
        let mut rows = Vec::with_capacity(keys.len());
        for (key, (asset, color)) in keys.iter().zip(answers) {
            let balance = self.batch.volumes[key]
                .balance()
                .map_err(|err| numscript::StoreError(err.to_string()))?;
            rows.push(numscript::BalanceRow {
                account: key.address.clone(),
                asset,
                color,
                amount: balance,
            });
        }
        Ok(rows)
    }

    fn get_account_metadata(
        &mut self,
        account: &str,
        key: &str,
    ) -> Result<Option<String>, numscript::StoreError> {
        match self.batch.account_metadata(self.ledger, account) {
            Ok(metadata) => Ok(metadata.and_then(|m| m.get(key).cloned())),
            Err(err) => {
                let message = err.to_string();
                self.store_error = Some(err);
                Err(numscript::StoreError(message))
            }
        }
    }
}

/// What an imported metadata log targets, read as its `targetType` says (as Formance does):
/// an account's address, or a transaction's id as a number.
fn import_target(log_id: u64, target_type: &str, id: &TargetId) -> Result<TargetId, LedgerError> {
    let refuse = |message: String| LedgerError::Import(format!("log {log_id}: {message}"));
    match (target_type, id) {
        (TARGET_ACCOUNT, TargetId::Account(address)) if is_valid_address(address) => Ok(id.clone()),
        (TARGET_ACCOUNT, _) => Err(refuse(format!("targetId: invalid address {id:?}"))),
        (TARGET_TRANSACTION, TargetId::Transaction(_)) => Ok(id.clone()),
        (TARGET_TRANSACTION, _) => Err(refuse(format!(
            "targetId: expected a transaction id (a number), got {id:?}"
        ))),
        (other, _) => Err(refuse(format!(
            "targetType: expected {TARGET_ACCOUNT:?} or {TARGET_TRANSACTION:?}, got {other:?}"
        ))),
    }
}
