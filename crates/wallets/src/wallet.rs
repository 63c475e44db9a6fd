//! Wallets themselves: create, read, list, update metadata, summary.

use coffer_ledger::command::{Command, Target};
use coffer_ledger::service::{Page, PageRequest};
use coffer_ledger::{Account, Metadata, Timestamp};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::chart::{self, *};
use crate::model::{CreateWallet, ListWallets, Summary, Wallet};
use crate::{
    add_to, assets_of, custom_conditions, metadata_filter, validate, WalletError, Wallets,
    BALANCES_PER_WALLET_MAX, WALLET_NAME_BYTES_MAX,
};

impl Wallets {
    /// Creates a wallet. With an Idempotency-Key the id is derived from the key and a retry
    /// with the same request returns the wallet first created; another request with the
    /// same key is refused.
    pub fn create_wallet(
        &self,
        request: &CreateWallet,
        idempotency_key: Option<&str>,
    ) -> Result<Wallet, WalletError> {
        validate::text("name", &request.name, WALLET_NAME_BYTES_MAX)?;
        validate::custom_metadata("metadata", &request.metadata)?;
        let now = Timestamp::now();
        let Some(key) = idempotency_key else {
            let id = uuid::Uuid::new_v4().to_string();
            let wallet = self.new_wallet(id, request, now);
            self.save(
                &chart::main_account(&wallet.id),
                self.wallet_metadata(&wallet),
                None,
            )?;
            return Ok(wallet);
        };
        let id = crate::deterministic_id("wallet", key);
        let hash = request_hash(request);
        if let Some(wallet) = self.replay_create(&id, &hash)? {
            return Ok(wallet);
        }
        let wallet = self.new_wallet(id, request, now);
        let mut metadata = self.wallet_metadata(&wallet);
        metadata.insert(KEY_CREATE_REQUEST_HASH.into(), hash.clone());
        metadata.insert(
            KEY_CREATE_RESPONSE.into(),
            wallet_snapshot(&wallet).to_string(),
        );
        match self.save(&chart::main_account(&wallet.id), metadata, Some(key)) {
            Ok(()) => Ok(wallet),
            // A concurrent first attempt may have won; answer as it did.
            Err(err) => match self.replay_create(&wallet.id, &hash)? {
                Some(existing) => Ok(existing),
                None => Err(err),
            },
        }
    }

    fn new_wallet(&self, id: String, request: &CreateWallet, now: Timestamp) -> Wallet {
        Wallet {
            id,
            name: request.name.clone(),
            metadata: request.metadata.clone(),
            created_at: now,
            ledger: self.ledger.clone(),
            main_assets: Default::default(),
        }
    }

    fn wallet_metadata(&self, wallet: &Wallet) -> Metadata {
        let mut metadata = chart::encode_custom(&wallet.metadata);
        for (key, value) in [
            (KEY_SPEC_TYPE, SPEC_PRIMARY),
            (KEY_WALLET_NAME, wallet.name.as_str()),
            (KEY_WALLET_ID, wallet.id.as_str()),
            (KEY_BALANCES, TRUE),
            (KEY_BALANCE_NAME, MAIN_BALANCE),
        ] {
            metadata.insert(key.into(), value.into());
        }
        metadata.insert(KEY_CREATED_AT.into(), wallet.created_at.to_rfc3339());
        metadata
    }

    /// The wallet an earlier request with the same key created, if any.
    fn replay_create(&self, id: &str, hash: &str) -> Result<Option<Wallet>, WalletError> {
        let Some(account) = self.account_row(&chart::main_account(id))? else {
            return Ok(None);
        };
        if !chart::is_primary(&account.metadata) {
            // A bare account (credited before it became a wallet): creating fills it in.
            return Ok(None);
        }
        if account
            .metadata
            .get(KEY_CREATE_REQUEST_HASH)
            .map(String::as_str)
            != Some(hash)
        {
            return Err(WalletError::validation(
                "Idempotency-Key was already used to create a wallet with a different request",
            ));
        }
        let snapshot = account.metadata.get(KEY_CREATE_RESPONSE).and_then(|text| {
            serde_json::from_str::<Value>(text)
                .ok()
                .and_then(|v| wallet_from_snapshot(&v))
        });
        Ok(Some(match snapshot {
            Some(wallet) => wallet,
            None => self.wallet_of(&account, false)?,
        }))
    }

    fn save(
        &self,
        address: &str,
        metadata: Metadata,
        key: Option<&str>,
    ) -> Result<(), WalletError> {
        let target = Target::Account(address.to_string());
        self.write(Command::SaveMetadata { target, metadata }, key)?;
        Ok(())
    }

    /// The wallet with its main balance, or `NotFound`.
    pub fn get_wallet(&self, id: &str) -> Result<Wallet, WalletError> {
        let account = self
            .wallet_account(id)?
            .ok_or_else(|| WalletError::NotFound("wallet".into()))?;
        self.wallet_of(&account, true)
    }

    /// The main account of wallet `id` if it is a wallet.
    pub(crate) fn wallet_account(&self, id: &str) -> Result<Option<Account>, WalletError> {
        self.wallet_account_with(id, true)
    }

    fn wallet_account_with(
        &self,
        id: &str,
        with_volumes: bool,
    ) -> Result<Option<Account>, WalletError> {
        if !chart::is_segment(id) {
            return Ok(None);
        }
        let address = chart::main_account(id);
        let account = if with_volumes {
            self.account(&address)?
        } else {
            self.account_row(&address)?
        };
        // Addresses drop dashes, so several spellings of an id reach one account: only the one
        // the wallet was created with names it (holds and lists find a wallet by that id).
        Ok(account.filter(|account| {
            chart::is_primary(&account.metadata)
                && account
                    .metadata
                    .get(chart::KEY_WALLET_ID)
                    .is_none_or(|stored| stored == id)
        }))
    }

    /// Wallet `field` must exist (for operations where an unknown wallet is a client mistake).
    /// Whether `id` is known to be a wallet without a lookup (then planning a debit from its main
    /// balance does no I/O).
    pub fn knows_wallet(&self, id: &str) -> bool {
        self.known_wallets.lock().get(id).is_some()
    }

    pub(crate) fn require_wallet(&self, field: &str, id: &str) -> Result<(), WalletError> {
        validate::wallet_id(field, id)?;
        if self.known_wallets.lock().get(id).is_some() {
            return Ok(());
        }
        self.wallet_account_with(id, false)?
            .ok_or_else(|| WalletError::validation(format!("{field}: wallet {id:?} not found")))?;
        self.known_wallets.lock().put(id.to_string(), ());
        Ok(())
    }

    pub(crate) fn wallet_of(
        &self,
        account: &Account,
        with_assets: bool,
    ) -> Result<Wallet, WalletError> {
        let metadata = &account.metadata;
        let created_at = metadata
            .get(KEY_CREATED_AT)
            .and_then(|text| Timestamp::parse(text))
            .unwrap_or(account.insertion_date);
        Ok(Wallet {
            id: metadata.get(KEY_WALLET_ID).cloned().unwrap_or_default(),
            name: metadata.get(KEY_WALLET_NAME).cloned().unwrap_or_default(),
            metadata: chart::extract_custom(metadata),
            created_at,
            ledger: self.ledger.clone(),
            main_assets: if with_assets {
                assets_of(account)?
            } else {
                Default::default()
            },
        })
    }

    /// Wallets by name and custom metadata. A cursor carries the original filters.
    pub fn list_wallets(
        &self,
        query: &ListWallets,
        page: &PageRequest,
    ) -> Result<Page<Wallet>, WalletError> {
        let kind = [(KEY_SPEC_TYPE.to_string(), SPEC_PRIMARY.to_string())];
        let mut conditions = Vec::new();
        if let Some(name) = &query.name {
            conditions.push((KEY_WALLET_NAME.to_string(), name.clone()));
        }
        custom_conditions(&query.metadata, &mut conditions)?;
        let accounts = self.list_accounts(&kind, &conditions, query.expand_balances, page)?;
        map_page(accounts, |account| {
            // The volumes the ledger read: asked for by this query or, with a cursor, by the
            // query that started the listing (the cursor carries it).
            self.wallet_of(account, true)
        })
    }

    /// Merges `metadata` into the wallet's custom metadata (keys are added or replaced).
    pub fn update_wallet(
        &self,
        id: &str,
        metadata: &Metadata,
        idempotency_key: Option<&str>,
    ) -> Result<(), WalletError> {
        if self.wallet_account(id)?.is_none() {
            return Err(WalletError::NotFound("wallet".into()));
        }
        validate::custom_metadata("metadata", metadata)?;
        if metadata.is_empty() {
            return Ok(());
        }
        self.save(
            &chart::main_account(id),
            chart::encode_custom(metadata),
            idempotency_key,
        )
    }

    /// Balances and funds of a wallet; an unknown wallet has an empty summary.
    pub fn summary(&self, id: &str) -> Result<Summary, WalletError> {
        let mut summary = Summary::default();
        let filter = metadata_filter(&[(KEY_WALLET_ID.to_string(), id.to_string())]);
        let accounts = self.all_accounts(filter, true, BALANCES_PER_WALLET_MAX, "balances")?;
        let now = Timestamp::now();
        for account in &accounts {
            let balance = crate::balances::balance_of(account);
            let assets = assets_of(account)?;
            for (asset, amount) in &assets {
                match balance.expires_at {
                    Some(_) if balance.is_expired(now) => {
                        add_to(&mut summary.expired_funds, asset, *amount)?
                    }
                    Some(_) => {
                        add_to(&mut summary.expirable_funds, asset, *amount)?;
                        add_to(&mut summary.available_funds, asset, *amount)?;
                    }
                    None => add_to(&mut summary.available_funds, asset, *amount)?,
                }
            }
            summary
                .balances
                .push(crate::BalanceWithAssets { balance, assets });
        }
        // What holds keep of their own asset (as Formance sums each hold's remaining): funds
        // of another asset sent to a hold account are not the wallet's.
        let holds = |asset: Option<&str>| {
            let mut conditions = vec![(KEY_HOLD_WALLET_ID.to_string(), id.to_string())];
            if let Some(asset) = asset {
                conditions.push((KEY_HOLD_ASSET.to_string(), asset.to_string()));
            }
            metadata_filter(&conditions)
        };
        let held =
            self.ledgers
                .aggregate_balances(&self.ledger, Some(&holds(None)), None, false)?;
        for asset in held.keys() {
            let of_asset = self.ledgers.aggregate_balances(
                &self.ledger,
                Some(&holds(Some(asset))),
                None,
                false,
            )?;
            if let Some(amount) = of_asset.get(asset) {
                summary.hold_funds.insert(asset.clone(), *amount);
            }
        }
        Ok(summary)
    }
}

pub(crate) fn map_page<T>(
    page: Page<Account>,
    map: impl Fn(&Account) -> Result<T, WalletError>,
) -> Result<Page<T>, WalletError> {
    let data = page
        .data
        .iter()
        .map(map)
        .collect::<Result<Vec<T>, WalletError>>()?;
    Ok(Page {
        page_size: page.page_size,
        has_more: page.has_more,
        previous: page.previous,
        next: page.next,
        data,
    })
}

/// SHA-256 of the create request (name and custom metadata), hex.
fn request_hash(request: &CreateWallet) -> String {
    let text = json!({"name": request.name, "metadata": request.metadata}).to_string();
    let digest = Sha256::digest(text.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// The create response as stored in `wallets/createResponse`.
fn wallet_snapshot(wallet: &Wallet) -> Value {
    json!({
        "id": wallet.id,
        "name": wallet.name,
        "metadata": wallet.metadata,
        "createdAt": wallet.created_at.to_rfc3339(),
        "ledger": wallet.ledger,
    })
}

fn wallet_from_snapshot(value: &Value) -> Option<Wallet> {
    let text = |key: &str| value.get(key).and_then(Value::as_str).map(str::to_string);
    let metadata = value
        .get("metadata")?
        .as_object()?
        .iter()
        .map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string())))
        .collect::<Option<Metadata>>()?;
    Some(Wallet {
        id: text("id")?,
        name: text("name")?,
        metadata,
        created_at: Timestamp::parse(&text("createdAt")?)?,
        ledger: text("ledger")?,
        main_assets: Default::default(),
    })
}
