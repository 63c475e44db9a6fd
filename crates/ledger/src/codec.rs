//! How postings, metadata and volumes are stored: metadata as JSON text, and the postings and
//! post-commit volumes of transactions, like the engine's NEW_TRANSACTION log data, in a compact
//! binary form (see [`compact`]) in both stores. Readers accept either, whatever a row holds:
//! text, or bytes holding JSON text (PostgreSQL rows written before its migration 0003) or the
//! compact form (whose first byte, its version, is never JSON's `[` or `{`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::StoreError;
use crate::log::{LogPosting, LogTransaction, NewTransactionPayload};
use crate::sql::SqlValue;
use crate::time::Timestamp;
use crate::types::{Metadata, Posting, Transaction, Volumes, VolumesByAccount};

/// Postings from a stored column: JSON text or the compact binary form.
pub fn decode_postings_value(value: Option<&SqlValue>) -> Result<Vec<Posting>, StoreError> {
    match value {
        Some(SqlValue::Text(text)) => decode_postings(text),
        Some(SqlValue::Blob(bytes)) => decode_postings_bytes(bytes),
        _ => Err(StoreError::new("corrupt postings: not text nor bytes")),
    }
}

/// Postings from stored bytes: JSON text or the compact form.
pub fn decode_postings_bytes(bytes: &[u8]) -> Result<Vec<Posting>, StoreError> {
    match json_text(bytes, "postings")? {
        Some(text) => decode_postings(text),
        None => compact::decode_postings(bytes),
    }
}

/// Post-commit volumes from a stored column: JSON text or the compact binary form.
pub fn decode_volumes_value(value: Option<&SqlValue>) -> Result<VolumesByAccount, StoreError> {
    match value {
        Some(SqlValue::Text(text)) => decode_volumes(text),
        Some(SqlValue::Blob(bytes)) => decode_volumes_bytes(bytes),
        _ => Err(StoreError::new("corrupt volumes: not text nor bytes")),
    }
}

/// Post-commit volumes from stored bytes: JSON text or the compact form.
pub fn decode_volumes_bytes(bytes: &[u8]) -> Result<VolumesByAccount, StoreError> {
    match json_text(bytes, "volumes")? {
        Some(text) => decode_volumes(text),
        None => compact::decode_volumes(bytes),
    }
}

/// A log entry's data from its stored column, as the JSON text that was hashed: the text
/// itself (as text or as bytes), or a NEW_TRANSACTION entry kept in the compact form.
pub fn decode_log_data(value: Option<&SqlValue>) -> Result<String, StoreError> {
    match value {
        Some(SqlValue::Text(text)) => Ok(text.clone()),
        Some(SqlValue::Blob(bytes)) => match json_text(bytes, "log data")? {
            Some(text) => Ok(text.to_string()),
            None => Ok(crate::log::encode(&compact::decode_new_transaction(bytes)?)),
        },
        _ => Err(StoreError::new("corrupt log data: not text nor bytes")),
    }
}

/// The JSON text stored bytes hold, if they hold JSON rather than the compact form.
fn json_text<'a>(bytes: &'a [u8], what: &str) -> Result<Option<&'a str>, StoreError> {
    match bytes.first() {
        Some(b'[' | b'{') => std::str::from_utf8(bytes)
            .map(Some)
            .map_err(|_| StoreError::new(format!("corrupt {what}: JSON that is not UTF-8"))),
        _ => Ok(None),
    }
}

/// A binary form of postings and volumes, about half the size of their JSON and cheaper to
/// write and read, and of the NEW_TRANSACTION log entries the engine makes (a fifth of their
/// JSON): a version byte, then counts, strings and amounts as LEB128 varints
/// (amounts zigzag-encoded, so any `i128` fits in at most 19 bytes); strings are their length
/// and UTF-8 bytes.
pub mod compact {
    use super::*;

    const VERSION: u8 = 1;
    // Stored bytes that start with `[` or `{` are read as JSON text (`json_text`).
    const _: () = assert!(VERSION != b'[' && VERSION != b'{');
    /// A stored string or list longer than this is corrupt (no address, asset or posting list
    /// comes near it).
    const LENGTH_MAX: u64 = 1 << 24;

    fn put_varint(out: &mut Vec<u8>, mut value: u128) {
        loop {
            let byte = (value & 0x7f) as u8;
            value >>= 7;
            if value == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }

    pub(crate) fn put_amount(out: &mut Vec<u8>, amount: i128) {
        put_varint(out, ((amount << 1) ^ (amount >> 127)) as u128);
    }

    fn put_str(out: &mut Vec<u8>, text: &str) {
        put_varint(out, text.len() as u128);
        out.extend_from_slice(text.as_bytes());
    }

    pub fn encode_postings(postings: &[Posting]) -> Vec<u8> {
        let mut out = Vec::with_capacity(1 + postings.len() * 40);
        out.push(VERSION);
        put_varint(&mut out, postings.len() as u128);
        for posting in postings {
            put_str(&mut out, &posting.source);
            put_str(&mut out, &posting.destination);
            put_amount(&mut out, posting.amount);
            put_str(&mut out, &posting.asset);
        }
        out
    }

    pub fn encode_volumes(volumes: &VolumesByAccount) -> Vec<u8> {
        let mut out = Vec::with_capacity(1 + volumes.len() * 40);
        out.push(VERSION);
        put_varint(&mut out, volumes.len() as u128);
        for (account, assets) in volumes {
            put_str(&mut out, account);
            put_varint(&mut out, assets.len() as u128);
            for (asset, v) in assets {
                put_str(&mut out, asset);
                put_amount(&mut out, v.input);
                put_amount(&mut out, v.output);
            }
        }
        out
    }

    /// The data of a NEW_TRANSACTION log entry the engine made: everything
    /// [`crate::log::encode_new_transaction`] writes, so that [`decode_new_transaction`] gives the
    /// payload whose JSON is exactly the text that was hashed. About a fifth of the JSON's size.
    pub fn encode_new_transaction(
        tx: &Transaction,
        account_metadata: &BTreeMap<String, Metadata>,
    ) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 + tx.postings.len() * 40);
        out.push(VERSION);
        put_varint(&mut out, u128::from(tx.id));
        put_amount(&mut out, i128::from(tx.timestamp.micros()));
        // Usually the same as the timestamp: one byte.
        put_amount(
            &mut out,
            i128::from(tx.inserted_at.micros()) - i128::from(tx.timestamp.micros()),
        );
        match &tx.reference {
            Some(reference) => {
                out.push(1);
                put_str(&mut out, reference);
            }
            None => out.push(0),
        }
        put_metadata(&mut out, &tx.metadata);
        put_varint(&mut out, tx.postings.len() as u128);
        for posting in &tx.postings {
            put_str(&mut out, &posting.source);
            put_str(&mut out, &posting.destination);
            put_amount(&mut out, posting.amount);
            put_str(&mut out, &posting.asset);
        }
        put_varint(&mut out, account_metadata.len() as u128);
        for (address, metadata) in account_metadata {
            put_str(&mut out, address);
            put_metadata(&mut out, metadata);
        }
        out
    }

    fn put_metadata(out: &mut Vec<u8>, metadata: &Metadata) {
        put_varint(out, metadata.len() as u128);
        for (key, value) in metadata {
            put_str(out, key);
            put_str(out, value);
        }
    }

    struct Reader<'a> {
        bytes: &'a [u8],
        what: &'static str,
    }

    impl<'a> Reader<'a> {
        fn new(bytes: &'a [u8], what: &'static str) -> Result<Reader<'a>, StoreError> {
            let mut reader = Reader { bytes, what };
            match reader.byte()? {
                VERSION => Ok(reader),
                other => Err(reader.corrupt(&format!("unknown version {other}"))),
            }
        }

        fn corrupt(&self, why: &str) -> StoreError {
            StoreError::new(format!("corrupt {}: {why}", self.what))
        }

        fn byte(&mut self) -> Result<u8, StoreError> {
            let (first, rest) = self
                .bytes
                .split_first()
                .ok_or_else(|| self.corrupt("truncated"))?;
            self.bytes = rest;
            Ok(*first)
        }

        fn varint(&mut self) -> Result<u128, StoreError> {
            let mut value: u128 = 0;
            for shift in (0..128).step_by(7) {
                let byte = self.byte()?;
                let bits = u128::from(byte & 0x7f);
                if shift == 126 && bits > 0b11 {
                    return Err(self.corrupt("varint overflows 128 bits"));
                }
                value |= bits << shift;
                if byte & 0x80 == 0 {
                    return Ok(value);
                }
            }
            Err(self.corrupt("varint too long"))
        }

        fn length(&mut self) -> Result<usize, StoreError> {
            let length = self.varint()?;
            if length > u128::from(LENGTH_MAX) {
                return Err(self.corrupt("length out of bounds"));
            }
            Ok(length as usize)
        }

        fn amount(&mut self) -> Result<i128, StoreError> {
            let zigzag = self.varint()?;
            Ok(((zigzag >> 1) as i128) ^ -((zigzag & 1) as i128))
        }

        fn string(&mut self) -> Result<String, StoreError> {
            let length = self.length()?;
            if length > self.bytes.len() {
                return Err(self.corrupt("truncated"));
            }
            let (text, rest) = self.bytes.split_at(length);
            self.bytes = rest;
            String::from_utf8(text.to_vec()).map_err(|_| self.corrupt("invalid UTF-8"))
        }

        fn metadata(&mut self) -> Result<Metadata, StoreError> {
            let mut metadata = Metadata::new();
            for _ in 0..self.length()? {
                let key = self.string()?;
                metadata.insert(key, self.string()?);
            }
            Ok(metadata)
        }

        fn finish<T>(self, value: T) -> Result<T, StoreError> {
            if self.bytes.is_empty() {
                Ok(value)
            } else {
                Err(self.corrupt("trailing bytes"))
            }
        }
    }

    /// The payload of a NEW_TRANSACTION entry stored by [`encode_new_transaction`].
    pub fn decode_new_transaction(bytes: &[u8]) -> Result<NewTransactionPayload, StoreError> {
        let mut reader = Reader::new(bytes, "log data")?;
        let id = u64::try_from(reader.varint()?).map_err(|_| reader.corrupt("id out of range"))?;
        // Dates the engine can make, so that printing them cannot fail.
        let date = |reader: &Reader<'_>, micros: Option<i128>| {
            micros
                .and_then(|micros| i64::try_from(micros).ok())
                .and_then(Timestamp::from_micros)
                .ok_or_else(|| reader.corrupt("date out of range"))
        };
        let timestamp = reader.amount()?;
        let timestamp = date(&reader, Some(timestamp))?;
        let delta = reader.amount()?;
        let inserted_at = date(&reader, i128::from(timestamp.micros()).checked_add(delta))?;
        let reference = match reader.byte()? {
            0 => None,
            1 => Some(reader.string()?),
            _ => return Err(reader.corrupt("reference flag")),
        };
        let metadata = reader.metadata()?;
        let count = reader.length()?;
        let mut postings = Vec::with_capacity(count.min(1024));
        for _ in 0..count {
            postings.push(LogPosting {
                source: reader.string()?,
                destination: reader.string()?,
                amount: reader.amount()?,
                asset: reader.string()?,
            });
        }
        let mut account_metadata = BTreeMap::new();
        for _ in 0..reader.length()? {
            let address = reader.string()?;
            account_metadata.insert(address, reader.metadata()?);
        }
        let transaction = LogTransaction {
            postings,
            metadata,
            timestamp: timestamp.to_rfc3339(),
            reference,
            id,
            reverted: false,
            inserted_at: Some(inserted_at.to_rfc3339()),
        };
        reader.finish(NewTransactionPayload {
            transaction,
            account_metadata,
        })
    }

    pub fn decode_postings(bytes: &[u8]) -> Result<Vec<Posting>, StoreError> {
        let mut reader = Reader::new(bytes, "postings")?;
        let count = reader.length()?;
        let mut postings = Vec::with_capacity(count.min(1024));
        for _ in 0..count {
            postings.push(Posting {
                source: reader.string()?,
                destination: reader.string()?,
                amount: reader.amount()?,
                asset: reader.string()?,
            });
        }
        reader.finish(postings)
    }

    pub fn decode_volumes(bytes: &[u8]) -> Result<VolumesByAccount, StoreError> {
        let mut reader = Reader::new(bytes, "volumes")?;
        let mut volumes = VolumesByAccount::new();
        for _ in 0..reader.length()? {
            let account = reader.string()?;
            let mut assets = BTreeMap::new();
            for _ in 0..reader.length()? {
                let asset = reader.string()?;
                let input = reader.amount()?;
                let output = reader.amount()?;
                assets.insert(asset, Volumes { input, output });
            }
            volumes.insert(account, assets);
        }
        reader.finish(volumes)
    }
}

pub fn encode_postings(postings: &[Posting]) -> String {
    let rows: Vec<LogPosting> = postings
        .iter()
        .map(|p| LogPosting {
            source: p.source.clone(),
            destination: p.destination.clone(),
            amount: p.amount,
            asset: p.asset.clone(),
        })
        .collect();
    serde_json::to_string(&rows).expect("postings serialise")
}

pub fn decode_postings(text: &str) -> Result<Vec<Posting>, StoreError> {
    let rows: Vec<LogPosting> = serde_json::from_str(text)
        .map_err(|err| StoreError::new(format!("corrupt postings: {err}")))?;
    Ok(rows
        .into_iter()
        .map(|p| Posting {
            source: p.source,
            destination: p.destination,
            amount: p.amount,
            asset: p.asset,
        })
        .collect())
}

pub fn encode_metadata(metadata: &Metadata) -> String {
    serde_json::to_string(metadata).expect("metadata serialises")
}

pub fn decode_metadata(text: &str) -> Result<Metadata, StoreError> {
    serde_json::from_str(text).map_err(|err| StoreError::new(format!("corrupt metadata: {err}")))
}

#[derive(Serialize, Deserialize)]
struct StoredVolumes {
    input: i128,
    output: i128,
}

pub fn encode_volumes(volumes: &VolumesByAccount) -> String {
    let map: BTreeMap<&String, BTreeMap<&String, StoredVolumes>> = volumes
        .iter()
        .map(|(account, assets)| {
            let assets = assets
                .iter()
                .map(|(asset, v)| {
                    (
                        asset,
                        StoredVolumes {
                            input: v.input,
                            output: v.output,
                        },
                    )
                })
                .collect();
            (account, assets)
        })
        .collect();
    serde_json::to_string(&map).expect("volumes serialise")
}

pub fn decode_volumes(text: &str) -> Result<VolumesByAccount, StoreError> {
    let map: BTreeMap<String, BTreeMap<String, StoredVolumes>> = serde_json::from_str(text)
        .map_err(|err| StoreError::new(format!("corrupt volumes: {err}")))?;
    Ok(map
        .into_iter()
        .map(|(account, assets)| {
            let assets = assets
                .into_iter()
                .map(|(asset, v)| {
                    (
                        asset,
                        Volumes {
                            input: v.input,
                            output: v.output,
                        },
                    )
                })
                .collect();
            (account, assets)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let postings = vec![Posting {
            source: "world".into(),
            destination: "a".into(),
            amount: i128::MAX,
            asset: "USD/2".into(),
        }];
        assert_eq!(
            decode_postings(&encode_postings(&postings)).unwrap(),
            postings
        );
        let mut volumes = VolumesByAccount::new();
        volumes.entry("a".into()).or_default().insert(
            "USD".into(),
            Volumes {
                input: 5,
                output: i128::MAX,
            },
        );
        assert_eq!(decode_volumes(&encode_volumes(&volumes)).unwrap(), volumes);
        let metadata: Metadata = [("k".to_string(), "v\"".to_string())].into();
        assert_eq!(
            decode_metadata(&encode_metadata(&metadata)).unwrap(),
            metadata
        );
        assert!(decode_postings("[{").is_err());
    }

    fn check_compact(postings: Vec<Posting>, volumes: VolumesByAccount) {
        let bytes = compact::encode_postings(&postings);
        let json = encode_postings(&postings);
        assert!(
            postings.is_empty() || bytes.len() < json.len(),
            "{} bytes vs {} of JSON",
            bytes.len(),
            json.len()
        );
        let blob = SqlValue::Blob(bytes.clone());
        assert_eq!(decode_postings_value(Some(&blob)).unwrap(), postings);
        assert_eq!(
            decode_postings_value(Some(&SqlValue::Text(json))).unwrap(),
            postings
        );
        let vbytes = compact::encode_volumes(&volumes);
        assert_eq!(
            decode_volumes_value(Some(&SqlValue::Blob(vbytes.clone()))).unwrap(),
            volumes
        );
        assert_eq!(
            decode_volumes_value(Some(&SqlValue::Text(encode_volumes(&volumes)))).unwrap(),
            volumes
        );
        // JSON text kept as bytes (PostgreSQL's rows from before its migration 0003).
        let json_bytes = SqlValue::Blob(encode_postings(&postings).into_bytes());
        assert_eq!(decode_postings_value(Some(&json_bytes)).unwrap(), postings);
        let json_bytes = SqlValue::Blob(encode_volumes(&volumes).into_bytes());
        assert_eq!(decode_volumes_value(Some(&json_bytes)).unwrap(), volumes);
        // Every truncation and a trailing byte are errors, never a wrong value.
        for cut in 0..bytes.len() {
            assert!(
                compact::decode_postings(&bytes[..cut]).is_err(),
                "cut {cut}"
            );
        }
        for cut in 0..vbytes.len() {
            assert!(
                compact::decode_volumes(&vbytes[..cut]).is_err(),
                "cut {cut}"
            );
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(compact::decode_postings(&longer).is_err());
    }

    #[test]
    fn compact_round_trips() {
        let posting = |source: &str, destination: &str, amount: i128, asset: &str| Posting {
            source: source.into(),
            destination: destination.into(),
            amount,
            asset: asset.into(),
        };
        let volumes = |entries: &[(&str, &str, i128, i128)]| {
            let mut out = VolumesByAccount::new();
            for (account, asset, input, output) in entries {
                out.entry(account.to_string()).or_default().insert(
                    asset.to_string(),
                    Volumes {
                        input: *input,
                        output: *output,
                    },
                );
            }
            out
        };
        check_compact(Vec::new(), VolumesByAccount::new());
        check_compact(
            vec![posting("bench:1", "bench:2", 1, "USD")],
            volumes(&[
                ("bench:1", "USD", 1_000_000_000, 81),
                ("bench:2", "USD", 7, 0),
            ]),
        );
        check_compact(
            vec![
                posting("world", "users:\u{e9}t\u{e9}", i128::MAX, "BTC/8"),
                posting("a", "b", 0, "X"),
                posting("a", "b", i128::MIN, "X"),
            ],
            volumes(&[("a", "X", i128::MAX, i128::MIN), ("a", "Y", -1, 0)]),
        );
        assert!(
            compact::decode_postings(&[9, 0]).is_err(),
            "unknown version"
        );
        assert!(
            compact::decode_postings(&[1, 1, 2, 0xff, 0xfe, 0, 0, 0]).is_err(),
            "invalid UTF-8"
        );
        let overlong = [1u8, 1, 0, 0]
            .iter()
            .copied()
            .chain(std::iter::repeat_n(0xff, 19))
            .chain([0x7f])
            .collect::<Vec<u8>>();
        assert!(
            compact::decode_postings(&overlong).is_err(),
            "varint overflow"
        );
    }

    /// The compact log data gives back exactly the JSON text the engine hashed, and any cut of
    /// it is an error rather than a different text.
    fn check_log_data(tx: &Transaction, account_metadata: &BTreeMap<String, Metadata>) {
        let json = crate::log::encode_new_transaction(tx, account_metadata);
        let bytes = compact::encode_new_transaction(tx, account_metadata);
        assert!(
            bytes.len() < json.len(),
            "{} bytes vs {}",
            bytes.len(),
            json.len()
        );
        assert_eq!(
            decode_log_data(Some(&SqlValue::Blob(bytes.clone()))).unwrap(),
            json
        );
        assert_eq!(
            decode_log_data(Some(&SqlValue::Text(json.clone()))).unwrap(),
            json
        );
        assert_eq!(
            decode_log_data(Some(&SqlValue::Blob(json.clone().into_bytes()))).unwrap(),
            json,
            "JSON text kept as bytes"
        );
        for cut in 0..bytes.len() {
            assert!(
                compact::decode_new_transaction(&bytes[..cut]).is_err(),
                "cut {cut}"
            );
        }
        let mut longer = bytes;
        longer.push(0);
        assert!(compact::decode_new_transaction(&longer).is_err());
    }

    #[test]
    fn bytes_that_look_like_json_but_are_not_utf8_are_corrupt() {
        for bytes in [b"[\xff]".to_vec(), b"{\xfe}".to_vec()] {
            let value = SqlValue::Blob(bytes);
            assert!(decode_postings_value(Some(&value)).is_err());
            assert!(decode_volumes_value(Some(&value)).is_err());
            assert!(decode_log_data(Some(&value)).is_err());
        }
    }

    fn transaction(
        id: u64,
        timestamp: i64,
        inserted_at: i64,
        reference: Option<String>,
        metadata: Metadata,
        postings: Vec<Posting>,
    ) -> Transaction {
        Transaction {
            id,
            timestamp: Timestamp(timestamp),
            inserted_at: Timestamp(inserted_at),
            updated_at: Timestamp(inserted_at),
            postings,
            reference,
            metadata,
            reverted_at: None,
            post_commit_volumes: VolumesByAccount::new(),
        }
    }

    #[test]
    fn compact_log_data_round_trips() {
        let posting = Posting {
            source: "bench:1".into(),
            destination: "bench:2".into(),
            amount: 1,
            asset: "USD".into(),
        };
        let now = 1_796_077_958_124_534;
        check_log_data(
            &transaction(1, now, now, None, Metadata::new(), vec![posting.clone()]),
            &BTreeMap::new(),
        );
        let metadata: Metadata = [("k\"ey".to_string(), "\u{e9}\n\u{1}".to_string())].into();
        let mut account_metadata = BTreeMap::new();
        account_metadata.insert("users:\u{e9}".to_string(), metadata.clone());
        account_metadata.insert("world".to_string(), Metadata::new());
        let extreme = Posting {
            amount: i128::MAX,
            ..posting.clone()
        };
        // Backdated by years, at the edges of the dates the engine keeps, with a reference.
        check_log_data(
            &transaction(
                u64::MAX,
                -62_135_596_800_000_000,
                253_402_300_799_999_999,
                Some("ref \"1\"".into()),
                metadata,
                vec![posting, extreme],
            ),
            &account_metadata,
        );
        assert!(
            compact::decode_new_transaction(&[2]).is_err(),
            "unknown version"
        );
        // A date the engine cannot make is refused, not printed.
        let mut out = vec![1u8, 1];
        compact::put_amount(&mut out, i128::from(i64::MAX));
        out.extend_from_slice(&[0, 0, 0, 0, 0]);
        assert!(
            compact::decode_new_transaction(&out).is_err(),
            "date out of range"
        );
    }

    proptest::proptest! {
        #[test]
        fn compact_log_data_round_trips_any(
            id in proptest::num::u64::ANY,
            timestamp in -62_135_596_800_000_000i64..=253_402_300_799_999_999,
            inserted_at in -62_135_596_800_000_000i64..=253_402_300_799_999_999,
            reference in proptest::option::of(".{0,12}"),
            metadata in proptest::collection::btree_map(".{0,8}", ".{0,8}", 0..4),
            postings in proptest::collection::vec(
                (".{0,10}", ".{0,10}", proptest::num::i128::ANY, "[A-Z]{1,4}(/[0-9])?"),
                1..4,
            ),
            account_metadata in proptest::collection::btree_map(
                ".{0,10}",
                proptest::collection::btree_map(".{0,6}", ".{0,6}", 0..3),
                0..3,
            ),
        ) {
            let postings = postings
                .into_iter()
                .map(|(source, destination, amount, asset)| Posting {
                    source,
                    destination,
                    amount: amount.checked_abs().unwrap_or(i128::MAX),
                    asset,
                })
                .collect();
            check_log_data(
                &transaction(id, timestamp, inserted_at, reference, metadata, postings),
                &account_metadata,
            );
        }
    }
}
