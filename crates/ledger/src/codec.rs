//! How postings, metadata and volumes are stored as JSON text in both stores.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::StoreError;
use crate::log::LogPosting;
use crate::types::{Metadata, Posting, Volumes, VolumesByAccount};

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
}
