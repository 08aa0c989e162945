//! The repository format (see `docs/repository-format.md`): chunking, packs,
//! index objects and snapshot manifests on top of any [`Store`].
//!
//! This module owns what the bytes in a repository mean; `store` owns where
//! they live. It is engine-neutral: the backup pipeline ([`backup`]) reads
//! from any [`source::Source`], [`materialize`] writes a snapshot's entries
//! back to disk, [`log_archive`] holds a database's archived log files, and
//! [`verify`] and [`prune`] are defined by the format. Which database a
//! snapshot came from matters only to `crate::engine`.

pub mod backup;
pub mod confine;
pub mod hasher;
pub mod index;
pub mod locks;
pub mod log_archive;
pub mod manifest;
pub mod materialize;
pub mod pack;
pub mod prune;
pub mod read;
pub mod source;
pub mod verify;

use std::io::Read;
use std::sync::Arc;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::ids::{Hash256, IndexId, PackId, SnapshotId};
use crate::plan::PlanName;
use crate::store::{PutOptions, Retention, Store, StoreError};

pub use index::{ChunkLocation, Index};
pub use manifest::{Manifest, ManifestEntry, SnapshotRef};

/// The repository format version this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;

/// The lock every backup holds shared and a prune holds exclusively.
pub const REPOSITORY_LOCK: &str = "repository";

/// A backup writes an index object after every this many packs (and one at
/// the end), so the packs of a killed backup are known to the next one.
pub const PACKS_PER_INDEX: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("no holdfast repository at {url} (no `config` object); a first backup creates one")]
    NotARepository { url: String },
    #[error("{what} {key} is corrupt: {why}")]
    Corrupt {
        what: &'static str,
        key: String,
        why: String,
    },
    #[error("repository {url} has format version {found}; this holdfast reads version {FORMAT_VERSION}. Upgrade holdfast")]
    UnsupportedVersion { url: String, found: u32 },
    #[error("plan {plan} has no snapshot matching `{selector}` in {url}")]
    NoSuchSnapshot {
        plan: String,
        selector: String,
        url: String,
    },
    #[error("snapshot id prefix `{selector}` is ambiguous for plan {plan}: {candidates}")]
    AmbiguousSnapshot {
        plan: String,
        selector: String,
        candidates: String,
    },
}

impl crate::error::HasExit for RepoError {
    fn exit(&self) -> crate::error::Exit {
        use crate::error::Exit;
        match self {
            RepoError::Corrupt { .. } => Exit::Verify,
            RepoError::NoSuchSnapshot { .. } | RepoError::AmbiguousSnapshot { .. } => Exit::Usage,
            RepoError::Store(crate::store::StoreError::Busy { .. }) => Exit::Busy,
            _ => Exit::Repository,
        }
    }
}

/// The `config` object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepoConfig {
    pub format: String,
    pub version: u32,
    pub id: String,
    pub created_at: DateTime<Utc>,
    pub chunker: ChunkerConfig,
    pub chunk_id: String,
    pub compression: String,
    pub pack_target_size: u64,
    pub encryption: Option<serde_json::Value>,
}

/// How chunks are cut; fixed for the life of a repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkerConfig {
    pub algorithm: ChunkerAlgorithm,
    pub min_size: u32,
    pub avg_size: u32,
    pub max_size: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChunkerAlgorithm {
    #[serde(rename = "fastcdc-2020")]
    FastCdc2020,
}

impl RepoConfig {
    pub fn new(now: DateTime<Utc>) -> Self {
        let mut id = [0u8; 16];
        getrandom::fill(&mut id).expect("the OS has a random source");
        RepoConfig {
            format: "holdfast-repository".into(),
            version: FORMAT_VERSION,
            id: hex::encode(id),
            created_at: now,
            chunker: ChunkerConfig {
                algorithm: ChunkerAlgorithm::FastCdc2020,
                min_size: 256 * 1024,
                avg_size: 1024 * 1024,
                max_size: 4 * 1024 * 1024,
            },
            chunk_id: "sha256".into(),
            compression: "zstd".into(),
            pack_target_size: 16 * 1024 * 1024,
            encryption: None,
        }
    }
}

pub const CONFIG_KEY: &str = "config";

/// The time in a snapshot's key: UTC, millisecond precision, sorts as text.
pub const SNAPSHOT_TIME_FORMAT: &str = "%Y%m%dT%H%M%S%.3fZ";

pub fn pack_key(id: &PackId) -> String {
    let hex = id.to_hex();
    format!("packs/{}/{}", &hex[..2], hex)
}

pub fn index_key(id: &IndexId) -> String {
    format!("index/{id}")
}

pub fn snapshots_prefix(plan: &PlanName) -> String {
    format!("snapshots/{plan}/")
}

pub fn snapshot_key(plan: &PlanName, started_at: DateTime<Utc>, id: &SnapshotId) -> String {
    format!(
        "snapshots/{plan}/{}-{id}",
        started_at.format(SNAPSHOT_TIME_FORMAT)
    )
}

/// An open repository: a store plus its config.
#[derive(Debug, Clone)]
pub struct Repository {
    store: Arc<dyn Store>,
    config: RepoConfig,
}

impl Repository {
    /// Opens the repository in `store`, failing if there is none.
    pub async fn open(store: Arc<dyn Store>) -> Result<Self, RepoError> {
        let bytes = match store.get(CONFIG_KEY).await {
            Ok(b) => b,
            Err(e) if e.is_not_found() => {
                return Err(RepoError::NotARepository { url: store.url() })
            }
            Err(e) => return Err(e.into()),
        };
        let config = Self::parse_config(&store.url(), &bytes)?;
        Ok(Repository { store, config })
    }

    /// Opens the repository in `store`, creating it if the store holds none.
    pub async fn open_or_init(
        store: Arc<dyn Store>,
        retention: Option<Retention>,
        now: DateTime<Utc>,
    ) -> Result<Self, RepoError> {
        match Self::open(store.clone()).await {
            Err(RepoError::NotARepository { .. }) => {}
            other => return other,
        }
        let config = RepoConfig::new(now);
        let body = serde_json::to_vec_pretty(&config).expect("config serialises");
        let opts = PutOptions {
            sha256: Hash256::digest(&body),
            retention,
        };
        match store.put(CONFIG_KEY, Bytes::from(body), &opts).await {
            Ok(()) => {
                tracing::info!(url = %store.url(), id = %config.id, "created repository");
                Ok(Repository { store, config })
            }
            // Another process created it first: use theirs.
            Err(StoreError::AlreadyExists { .. }) => Self::open(store).await,
            Err(e) => Err(e.into()),
        }
    }

    fn parse_config(url: &str, bytes: &[u8]) -> Result<RepoConfig, RepoError> {
        #[derive(Deserialize)]
        struct Probe {
            format: Option<String>,
            version: Option<u32>,
        }
        let corrupt = |why: String| RepoError::Corrupt {
            what: "repository config",
            key: format!("{url}/{CONFIG_KEY}"),
            why,
        };
        let probe: Probe = serde_json::from_slice(bytes).map_err(|e| corrupt(e.to_string()))?;
        if probe.format.as_deref() != Some("holdfast-repository") {
            return Err(corrupt("not a holdfast repository config".into()));
        }
        match probe.version {
            Some(FORMAT_VERSION) => {}
            Some(found) => {
                return Err(RepoError::UnsupportedVersion {
                    url: url.to_string(),
                    found,
                })
            }
            None => return Err(corrupt("no `version`".into())),
        }
        serde_json::from_slice(bytes).map_err(|e| corrupt(e.to_string()))
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub fn config(&self) -> &RepoConfig {
        &self.config
    }

    pub fn url(&self) -> String {
        self.store.url()
    }

    /// Reads every index object into one in-memory index. An unreadable one
    /// is logged and skipped: a backup then stores its chunks again, and a
    /// restore that needs one of them names it; neither can go wrong
    /// silently, and nobody who can add a junk object stops either.
    pub async fn load_index(&self) -> Result<Index, RepoError> {
        let (index, faults) = self.load_index_lenient().await?;
        for (key, e) in faults {
            tracing::warn!(object = %key, "skipping an unreadable index object (run `holdfast verify`): {e}");
        }
        Ok(index)
    }

    /// Like [`Repository::load_index`], but any unreadable index object is an
    /// error: for `prune`, which must know everything a snapshot needs.
    pub async fn load_index_strict(&self) -> Result<Index, RepoError> {
        let (index, mut faults) = self.load_index_lenient().await?;
        match faults.pop() {
            Some((_, e)) => Err(e),
            None => Ok(index),
        }
    }

    /// Reads every readable index object, returning the unreadable ones
    /// beside the index instead of failing (for `verify`).
    pub async fn load_index_lenient(&self) -> Result<(Index, Vec<(String, RepoError)>), RepoError> {
        let mut index = Index::default();
        let mut faults = Vec::new();
        let pruned = self.pruned_packs().await?;
        for info in self.store.list("index/").await? {
            let decoded = match self.store.get(&info.key).await {
                Ok(bytes) => index::IndexFile::decode(&info.key, &bytes),
                Err(e) if e.is_not_found() => continue, // removed since the listing
                Err(e) => Err(e.into()),
            };
            match decoded {
                Ok(mut file) => {
                    file.packs.retain(|p| !pruned.contains(&p.id));
                    index.add_file(&info.key, &file)
                }
                Err(e) => faults.push((info.key.clone(), e)),
            }
        }
        Ok((index, faults))
    }

    /// Packs that readable prune records say were (or are being) deleted.
    pub async fn pruned_packs(&self) -> Result<std::collections::HashSet<PackId>, RepoError> {
        Ok(self
            .prune_records_lenient()
            .await?
            .into_iter()
            .flat_map(|r| r.packs)
            .collect())
    }

    /// Every prune record, oldest first. An unreadable one is an error: it
    /// may name packs that are gone (for `prune` itself).
    pub async fn prune_records(&self) -> Result<Vec<prune::PruneRecord>, RepoError> {
        let mut out = Vec::new();
        for info in self.store.list(prune::PRUNES_PREFIX).await? {
            let bytes = self.store.get(&info.key).await?;
            out.push(prune::PruneRecord::decode(&info.key, &bytes)?);
        }
        Ok(out)
    }

    /// Every readable prune record; unreadable ones are logged. Restores and
    /// backups go on without them: a pack a lost record named is simply
    /// found missing (and named) if anything still asks for it.
    pub async fn prune_records_lenient(&self) -> Result<Vec<prune::PruneRecord>, RepoError> {
        let mut out = Vec::new();
        for info in self.store.list(prune::PRUNES_PREFIX).await? {
            let decoded = match self.store.get(&info.key).await {
                Ok(bytes) => prune::PruneRecord::decode(&info.key, &bytes),
                Err(e) if e.is_not_found() => continue,
                Err(e) => Err(e.into()),
            };
            match decoded {
                Ok(r) => out.push(r),
                Err(e) => {
                    tracing::warn!(object = %info.key, "skipping an unreadable prune record (run `holdfast verify`): {e}")
                }
            }
        }
        Ok(out)
    }

    /// A plan's snapshots, oldest first, from the object listing alone.
    pub async fn list_snapshots(&self, plan: &PlanName) -> Result<Vec<SnapshotRef>, RepoError> {
        let mut out = Vec::new();
        for info in self.store.list(&snapshots_prefix(plan)).await? {
            match SnapshotRef::from_key(&info.key) {
                Some(r) => out.push(r),
                None => {
                    tracing::warn!(object = %info.key, "ignoring object with an unexpected name under snapshots/")
                }
            }
        }
        Ok(out)
    }

    /// Reads a manifest, checking its bytes against the id in its name.
    pub async fn load_manifest(&self, snap: &SnapshotRef) -> Result<Manifest, RepoError> {
        let bytes = self.store.get(&snap.key).await?;
        Manifest::decode(&snap.key, &snap.id, &bytes)
    }

    /// Resolves `latest` or an id prefix to one snapshot of a plan.
    pub async fn find_snapshot(
        &self,
        plan: &PlanName,
        selector: &str,
    ) -> Result<SnapshotRef, RepoError> {
        let all = self.list_snapshots(plan).await?;
        let not_found = || RepoError::NoSuchSnapshot {
            plan: plan.to_string(),
            selector: selector.to_string(),
            url: self.url(),
        };
        if selector == "latest" {
            return all.last().cloned().ok_or_else(not_found);
        }
        let selector_lc = selector.to_ascii_lowercase();
        let matches: Vec<_> = all
            .iter()
            .filter(|s| s.id.to_hex().starts_with(&selector_lc))
            .collect();
        match matches.as_slice() {
            [] => Err(not_found()),
            [one] => Ok((*one).clone()),
            many => Err(RepoError::AmbiguousSnapshot {
                plan: plan.to_string(),
                selector: selector.to_string(),
                candidates: many
                    .iter()
                    .map(|s| s.id.short())
                    .collect::<Vec<_>>()
                    .join(", "),
            }),
        }
    }
}

/// zstd-compressed JSON, the encoding of index objects and manifests.
pub(crate) fn encode_json_zst<T: Serialize>(value: &T) -> Vec<u8> {
    let json = serde_json::to_vec(value).expect("repository metadata serialises");
    zstd::bulk::compress(&json, 3).expect("zstd compresses in memory")
}

pub(crate) fn decode_json_zst<T: for<'de> Deserialize<'de>>(
    what: &'static str,
    key: &str,
    bytes: &[u8],
) -> Result<T, RepoError> {
    let corrupt = |why: String| RepoError::Corrupt {
        what,
        key: key.to_string(),
        why,
    };
    let mut json = Vec::new();
    zstd::stream::read::Decoder::new(bytes)
        .and_then(|mut d| d.read_to_end(&mut json))
        .map_err(|e| corrupt(format!("cannot decompress: {e}")))?;
    serde_json::from_slice(&json).map_err(|e| corrupt(format!("cannot parse: {e}")))
}
