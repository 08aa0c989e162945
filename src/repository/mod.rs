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
pub mod crypto;
pub mod hasher;
pub mod index;
pub mod keys;
pub mod locks;
pub mod log_archive;
pub mod manifest;
pub mod materialize;
pub mod pack;
mod placing;
pub mod prune;
pub mod read;
pub mod repair;
pub mod source;
pub mod spill;
pub mod trust;
pub mod verify;

use std::io::Read;
use std::sync::Arc;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::ids::{ChunkId, Hash256, IndexId, PackId, SnapshotId};
use crate::plan::PlanName;
use crate::store::{PutOptions, Retention, Store, StoreError};

pub use crypto::Crypto;
pub use index::{ChunkLocation, Index, SourceId};
pub use keys::RepoKey;
pub use manifest::{EntriesRef, Manifest, ManifestEntry, ManifestHead, SnapshotRef, SourceRecord};
pub use trust::{PlanSnapshots, RejectKind, Rejected};

/// The repository format version this build writes and reads.
pub const FORMAT_VERSION: u32 = 2;

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
    /// A metadata object larger than its kind's cap (see [`MetadataCap`]).
    #[error("{what} {key} is over the {cap}-byte cap for {what}s: {detail}; not read (a damaged or planted object: run `holdfast verify`)")]
    OverCap {
        what: &'static str,
        key: String,
        detail: String,
        cap: u64,
    },
    /// Metadata this holdfast would write over its kind's cap: no reader
    /// would read it back, so it is not written.
    #[error("{what} {key} would be over the {cap}-byte cap for {what}s, so it is not written; split the plan's source into smaller plans")]
    TooLargeToWrite {
        what: &'static str,
        key: String,
        cap: u64,
    },
    /// An object that fails authentication: altered, copied under another
    /// name, or written by someone without the repository's key.
    #[error("{what} {key} is not authentic: {why}; it was not written by a holder of this repository's key (run `holdfast verify`)")]
    Unauthenticated {
        what: &'static str,
        key: String,
        why: crypto::OpenError,
    },
    #[error("repository {url} has format version {found}; this holdfast reads version {FORMAT_VERSION}{hint}")]
    UnsupportedVersion {
        url: String,
        found: u32,
        hint: &'static str,
    },
    #[error("no key object of repository {url} opens with the plan's key ({tried} tried): wrong passphrase or key file")]
    WrongKey { url: String, tried: usize },
    #[error(
        "repository {url} is encrypted but has no key object under keys/; it cannot be opened"
    )]
    NoKeyObjects { url: String },
    #[error("repository {url} is encrypted and {why}")]
    NoKey { url: String, why: String },
    #[error("{0}")]
    EncryptionMismatch(String),
    #[error("unable to read this backup's chunk lists back from its temporary file in {dir} (TMPDIR): {source}")]
    Spill {
        dir: String,
        #[source]
        source: std::io::Error,
    },
    #[error("unable to keep the index in a temporary file in {dir} (TMPDIR): {source}")]
    IndexSpill {
        dir: String,
        #[source]
        source: std::io::Error,
    },
    #[error("plan {plan} has no snapshot matching `{selector}` in {url}")]
    NoSuchSnapshot {
        plan: String,
        selector: String,
        url: String,
    },
    #[error("snapshot {key} of plan {plan} is not believed, so it is not restored: {why}; run `holdfast verify --plan …` (see `docs/runbook.md`, rejected objects)")]
    RejectedSnapshot {
        plan: String,
        key: String,
        why: String,
    },
    /// A manifest (version 4 on) whose entries object (or, version 7 on,
    /// one of its chunk-list objects: `what`) is not in the store.
    #[error("{what} {key} is missing: snapshot manifest {manifest} names it, so the snapshot cannot be read (run `holdfast verify`)")]
    MissingEntries {
        what: &'static str,
        manifest: String,
        key: String,
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
            RepoError::Corrupt { .. }
            | RepoError::OverCap { .. }
            | RepoError::Unauthenticated { .. }
            | RepoError::RejectedSnapshot { .. }
            | RepoError::MissingEntries { .. } => Exit::Verify,
            RepoError::NoSuchSnapshot { .. } | RepoError::AmbiguousSnapshot { .. } => Exit::Usage,
            RepoError::Store(
                crate::store::StoreError::Busy { .. } | crate::store::StoreError::LeaseLost { .. },
            ) => Exit::Busy,
            RepoError::Store(crate::store::StoreError::TooLarge { .. }) => Exit::Verify,
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
    /// `None` (`null`): `encryption: none`, nothing sealed, SHA-256 chunk ids.
    pub encryption: Option<EncryptionConfig>,
}

/// How an encrypted repository's objects are sealed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EncryptionConfig {
    /// `xchacha20-poly1305`.
    pub cipher: String,
    /// `hkdf-sha256`: how the data keys come from the master secret.
    pub key_derivation: String,
    /// Where the key objects wrapping the master secret are: `keys/`.
    pub keys: String,
    /// HMAC-SHA-256 (hex) under the config MAC key of this config, as compact
    /// JSON with `mac` set to "".
    pub mac: String,
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
    /// The bytes the config MAC covers: the config as compact JSON with the
    /// MAC itself blanked.
    fn mac_input(&self) -> Vec<u8> {
        let mut c = self.clone();
        if let Some(e) = &mut c.encryption {
            e.mac.clear();
        }
        serde_json::to_vec(&c).expect("config serialises")
    }

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

/// An open repository: a store, its config, and (when encrypted) the keys
/// the plan's passphrase unlocked.
#[derive(Debug, Clone)]
pub struct Repository {
    store: Arc<dyn Store>,
    config: RepoConfig,
    crypto: Crypto,
    master: Option<Arc<crypto::MasterSecret>>,
    /// The key object the plan's passphrase opened.
    key_id: Option<Hash256>,
    /// About how many JSON bytes of chunk lists a backup puts in one
    /// chunk-list object ([`manifest::LIST_PART_TARGET`]).
    list_part_target: usize,
    /// How many new chunks a generation of a backup's memory of them holds
    /// ([`placing::RECENT_GENERATION`]).
    recent_generation: usize,
    /// How many chunk ids a backup keeps in memory before it spills them
    /// to a temporary file ([`spill::IN_MEMORY`]).
    spill_after: usize,
    /// Chunks an index loaded by this handle keeps in memory before it
    /// keeps them on disk ([`index::IN_MEMORY`]).
    index_in_memory: usize,
}

impl Repository {
    /// Whether `store` holds a repository (a `config` object).
    pub async fn exists(store: &dyn Store) -> Result<bool, RepoError> {
        match store.head(CONFIG_KEY).await {
            Ok(_) => Ok(true),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Opens the repository in `store` with `key`, failing if there is none.
    pub async fn open(store: Arc<dyn Store>, key: &RepoKey) -> Result<Self, RepoError> {
        let bytes = match store.get_at_most(CONFIG_KEY, CONFIG_CAP).await {
            Ok(b) => b,
            Err(e) if e.is_not_found() => {
                return Err(RepoError::NotARepository { url: store.url() })
            }
            Err(e) => return Err(e.into()),
        };
        let url = store.url();
        let config = Self::parse_config(&url, &bytes)?;
        let Some(enc) = &config.encryption else {
            if let RepoKey::Passphrase(_) = key {
                return Err(RepoError::EncryptionMismatch(format!(
                    "repository {url} is not encrypted (it was created with `encryption: none`), but the plan gives a key; say `repository.encryption: none` in the plan (and unset HOLDFAST_KEY / HOLDFAST_KEY_FILE)"
                )));
            }
            return Ok(Repository {
                store,
                config,
                crypto: Crypto::none(),
                master: None,
                key_id: None,
                list_part_target: manifest::LIST_PART_TARGET,
                recent_generation: placing::RECENT_GENERATION,
                spill_after: spill::IN_MEMORY,
                index_in_memory: index::IN_MEMORY,
            });
        };
        if enc.cipher != "xchacha20-poly1305" || enc.key_derivation != "hkdf-sha256" {
            return Err(RepoError::Corrupt {
                what: "repository config",
                key: format!("{url}/{CONFIG_KEY}"),
                why: format!(
                    "unknown cipher {} or key derivation {}",
                    enc.cipher, enc.key_derivation
                ),
            });
        }
        let passphrase = match key {
            RepoKey::Passphrase(p) => p,
            RepoKey::Unencrypted => {
                return Err(RepoError::EncryptionMismatch(format!(
                    "repository {url} is encrypted, but the plan says `encryption: none`; give the repository's key instead (`repository.key` or `repository.key_file`)"
                )))
            }
            RepoKey::Missing(why) => {
                return Err(RepoError::NoKey {
                    url,
                    why: why.clone(),
                })
            }
        };
        let (master, key_id) = keys::unlock(store.as_ref(), &config.id, passphrase).await?;
        let data = crypto::DataKeys::derive(&master, &config.id);
        let mac = hex::decode(&enc.mac).unwrap_or_default();
        if !data.config_mac_matches(&config.mac_input(), &mac) {
            return Err(RepoError::Unauthenticated {
                what: "repository config",
                key: format!("{url}/{CONFIG_KEY}"),
                why: crypto::OpenError::Tag,
            });
        }
        Ok(Repository {
            store,
            config,
            crypto: Crypto::with_keys(data),
            master: Some(Arc::new(master)),
            key_id: Some(key_id),
            list_part_target: manifest::LIST_PART_TARGET,
            recent_generation: placing::RECENT_GENERATION,
            spill_after: spill::IN_MEMORY,
            index_in_memory: index::IN_MEMORY,
        })
    }

    /// Opens the repository in `store`, creating it if the store holds none:
    /// encrypted, with a first key object for the plan's passphrase, unless
    /// the plan says `encryption: none`.
    pub async fn open_or_init(
        store: Arc<dyn Store>,
        key: &RepoKey,
        retention: Option<Retention>,
        now: DateTime<Utc>,
    ) -> Result<Self, RepoError> {
        match Self::open(store.clone(), key).await {
            Err(RepoError::NotARepository { .. }) => {}
            other => return other,
        }
        let mut config = RepoConfig::new(now);
        let mut master = None;
        let mut key_id = None;
        match key {
            RepoKey::Unencrypted => {
                tracing::warn!(url = %store.url(), "creating an UNENCRYPTED repository (`encryption: none`): anyone with write access to it can forge snapshots, and anyone with read access reads the data");
            }
            RepoKey::Missing(why) => {
                return Err(RepoError::NoKey {
                    url: store.url(),
                    why: format!("{why} (a new repository is encrypted unless the plan says `repository.encryption: none`)"),
                })
            }
            RepoKey::Passphrase(passphrase) => {
                let m = crypto::MasterSecret::random();
                config.chunk_id = "hmac-sha256".into();
                config.encryption = Some(EncryptionConfig {
                    cipher: "xchacha20-poly1305".into(),
                    key_derivation: "hkdf-sha256".into(),
                    keys: keys::KEYS_PREFIX.into(),
                    mac: String::new(),
                });
                let data = crypto::DataKeys::derive(&m, &config.id);
                let mac = hex::encode(data.config_mac(&config.mac_input()));
                if let Some(e) = &mut config.encryption {
                    e.mac = mac;
                }
                // The key object first: a config without one could never be opened.
                key_id = Some(keys::add(store.as_ref(), &config.id, &m, passphrase, retention).await?);
                master = Some(m);
            }
        }
        let body = serde_json::to_vec_pretty(&config).expect("config serialises");
        let body_for_check = body.clone();
        let opts = PutOptions {
            sha256: Hash256::digest(&body),
            retention,
        };
        match store.put(CONFIG_KEY, Bytes::from(body), &opts).await {
            Ok(()) => {
                tracing::info!(url = %store.url(), id = %config.id, encrypted = master.is_some(), "created repository");
                // The config as any later process will read it (the key
                // object was written from the same master secret, and
                // unlocking it again would cost a second key derivation).
                let config = Self::parse_config(&store.url(), &body_for_check)?;
                let crypto = match &master {
                    Some(m) => Crypto::with_keys(crypto::DataKeys::derive(m, &config.id)),
                    None => Crypto::none(),
                };
                Ok(Repository {
                    store,
                    config,
                    crypto,
                    master: master.map(Arc::new),
                    key_id,
                    list_part_target: manifest::LIST_PART_TARGET,
                    recent_generation: placing::RECENT_GENERATION,
                    spill_after: spill::IN_MEMORY,
                    index_in_memory: index::IN_MEMORY,
                })
            }
            // Another process created it first: use theirs.
            Err(StoreError::AlreadyExists { .. }) => Self::open(store, key).await,
            Err(e) => Err(e.into()),
        }
    }

    /// How this repository's objects are sealed.
    pub fn crypto(&self) -> &Crypto {
        &self.crypto
    }

    /// The master secret, in an encrypted repository (for `key add`).
    pub fn master_secret(&self) -> Option<&crypto::MasterSecret> {
        self.master.as_deref()
    }

    /// The key object the plan's passphrase opened.
    pub fn key_id(&self) -> Option<Hash256> {
        self.key_id
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
                    hint: if found < FORMAT_VERSION {
                        " (version 1 repositories are unauthenticated and unencrypted and are no longer read: back up into a new repository, and restore from this one with holdfast 0.1 built before format version 2)"
                    } else {
                        ". Upgrade holdfast"
                    },
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
            warn_index_fault(&key, &e);
        }
        Ok(index)
    }

    /// Like [`Repository::load_index`], but any unreadable index object is an
    /// error: for `prune`, which must know everything a snapshot needs. One
    /// that fails authentication is not the repository's (nobody holding the
    /// key wrote it): it is ignored with a warning, as every reader does.
    pub async fn load_index_strict(&self) -> Result<Index, RepoError> {
        let (index, faults) = self.load_index_lenient().await?;
        strict_faults(faults)?;
        Ok(index)
    }

    /// Reads every readable index object, returning the unreadable ones
    /// beside the index instead of failing (for `verify`).
    pub async fn load_index_lenient(&self) -> Result<(Index, Vec<(String, RepoError)>), RepoError> {
        let (index, _, faults) = self.load_index_split().await?;
        Ok((index, faults))
    }

    /// The index for a restore: every chunk's location outside packs that
    /// prune records name, and, for a chunk found nowhere else, its location
    /// in such a pack. A real prune never names a pack a remaining snapshot
    /// needs, so a record that would hide one is wrong about it (forged, or
    /// written by hand): the restore reads the pack, whose bytes are checked
    /// like any other. A pack that is really gone is then named as missing.
    pub async fn load_index_for_restore(&self) -> Result<Index, RepoError> {
        self.load_index_for_restore_of(None).await
    }

    /// [`Repository::load_index_for_restore`] holding only the chunks in
    /// `needed`, sorted and without repeats (all with `None`): a restore of one snapshot needs its own
    /// chunks' locations, not those of every chunk that every snapshot of
    /// every plan sharing the repository stored.
    pub async fn load_index_for_restore_of(
        &self,
        needed: Option<&[ChunkId]>,
    ) -> Result<Index, RepoError> {
        debug_assert!(needed.is_none_or(|n| n.windows(2).all(|w| w[0] < w[1])));
        let keep = |c: &ChunkId| needed.is_none_or(|n| n.binary_search(c).is_ok());
        let (mut index, pruned, faults) = self.load_index_split_where(&keep).await?;
        for (key, e) in faults {
            warn_index_fault(&key, &e);
        }
        index.add_fallback(&pruned)?;
        Ok(index)
    }

    /// A reader of the files `entries` of a manifest naming `packs`. A
    /// version 6 manifest places its chunks: the index is then read only if
    /// a place fails its check; for entries without places, the locations
    /// of their chunks are loaded now (only theirs).
    pub async fn reader_for(
        &self,
        packs: &[PackId],
        entries: &[ManifestEntry],
    ) -> Result<read::ChunkReader, RepoError> {
        let unplaced = entries
            .iter()
            .filter(|e| e.kind == source::EntryKind::File && e.placed(packs).is_none());
        // Sorted, without repeats: 32 bytes a chunk, where a hash set took
        // about half as much again beside the entries and the index being read.
        let mut needed: Vec<ChunkId> = unplaced.flat_map(|e| e.chunks.iter().copied()).collect();
        let index = if needed.is_empty() {
            let repo = self.clone();
            let runtime = tokio::runtime::Handle::current();
            read::LazyIndex::on_demand(move || {
                runtime
                    .block_on(repo.load_index_for_restore())
                    .map_err(|e| e.to_string())
            })
        } else {
            needed.sort_unstable();
            needed.dedup();
            let index = self.load_index_for_restore_of(Some(&needed)).await?;
            read::LazyIndex::loaded(Arc::new(index))
        };
        Ok(read::ChunkReader::new(
            self.store.clone(),
            self.crypto.clone(),
            index,
            tokio::runtime::Handle::current(),
        )
        .placing_by(packs))
    }

    /// Like [`Repository::load_index_strict`], with beside it the index of
    /// the packs prune records name (for `prune`'s liveness check).
    pub async fn load_index_strict_split(&self) -> Result<(Index, Index), RepoError> {
        let (index, pruned, faults) = self.load_index_split().await?;
        strict_faults(faults)?;
        Ok((index, pruned))
    }

    /// Every readable index object, split into the packs no prune record
    /// names and those one does; and the unreadable objects.
    #[allow(clippy::type_complexity)]
    pub async fn load_index_split(
        &self,
    ) -> Result<(Index, Index, Vec<(String, RepoError)>), RepoError> {
        self.load_index_split_where(&|_| true).await
    }

    /// [`Repository::load_index_split`] for the chunks `keep` says yes to.
    #[allow(clippy::type_complexity)]
    async fn load_index_split_where(
        &self,
        keep: &(dyn Fn(&ChunkId) -> bool + Sync),
    ) -> Result<(Index, Index, Vec<(String, RepoError)>), RepoError> {
        let mut index = Index::with_memory_cap(self.index_in_memory);
        let mut named = Index::with_memory_cap(self.index_in_memory);
        let mut faults = Vec::new();
        let pruned = self.pruned_packs().await?;
        let crypto = &self.crypto;
        self.each_index_object(
            |key, bytes| async move { index::IndexFile::decode_blocking(&key, bytes, crypto).await },
            |key, decoded| match decoded {
                Ok(mut file) => {
                    let (gone, kept): (Vec<_>, Vec<_>) =
                        file.packs.drain(..).partition(|p| pruned.contains(&p.id));
                    named.add_file_where(
                        &key,
                        &index::IndexFile {
                            version: file.version,
                            packs: gone,
                        },
                        keep,
                    );
                    file.packs = kept;
                    index.add_file_where(&key, &file, keep)
                }
                Err(e) => faults.push((key, e)),
            },
        )
        .await?;
        // Merging what went to disk reads and writes it all: off the
        // runtime's workers.
        let (index, named) = tokio::task::spawn_blocking(move || {
            index.finish()?;
            named.finish()?;
            Ok::<_, RepoError>((index, named))
        })
        .await
        .expect("merging the index panicked")?;
        Ok((index, named, faults))
    }

    /// Every index object's key and the packs it describes, read one at a
    /// time keeping only pack ids (see [`index::IndexFile::decode_pack_ids`]):
    /// what prune and keep-locks need of the index when manifests name their
    /// packs, a few bytes a pack where [`Index`] holds one location per
    /// chunk. Errors as [`Repository::load_index_strict`] does.
    pub async fn index_object_packs_strict(&self) -> Result<Vec<(String, Vec<PackId>)>, RepoError> {
        let (mut objects, mut faults) = (Vec::new(), Vec::new());
        let crypto = &self.crypto;
        self.each_index_object(
            |key, bytes| async move { index::IndexFile::decode_pack_ids(&key, bytes, crypto).await },
            |key, decoded| match decoded {
                Ok(packs) => objects.push((key, packs)),
                Err(e) => faults.push((key, e)),
            },
        )
        .await?;
        strict_faults(faults)?;
        Ok(objects)
    }

    /// Reads each listed index object (at most [`INDEX_CAP`]), decodes it
    /// with `decode` and hands the result to `each`, one object at a time.
    /// One removed since the listing is skipped; another store error stops.
    async fn each_index_object<T, D, Fut>(
        &self,
        decode: D,
        mut each: impl FnMut(String, Result<T, RepoError>),
    ) -> Result<(), RepoError>
    where
        D: Fn(String, Bytes) -> Fut,
        Fut: std::future::Future<Output = Result<T, RepoError>>,
    {
        // The next few objects are read while this one is decoded: on S3 a
        // repository of a large database has thousands of index objects,
        // and one request at a time would wait out each round trip. In
        // listing order; what is still being read when this returns early
        // is aborted.
        let mut listed = self.store.list("index/").await?.into_iter().peekable();
        let mut ahead = ReadAhead(std::collections::VecDeque::new());
        loop {
            while ahead.0.len() < INDEX_READ_AHEAD {
                let pending: u64 = ahead.0.iter().map(|(_, size, _)| size).sum();
                let Some(info) = listed.next_if(|i| {
                    pending == 0 || pending + i.size.min(INDEX_CAP.bytes) <= INDEX_READ_AHEAD_BYTES
                }) else {
                    break;
                };
                let store = self.store.clone();
                let key = info.key.clone();
                let read =
                    tokio::spawn(async move { store.get_at_most(&key, INDEX_CAP.bytes).await });
                ahead
                    .0
                    .push_back((info.key, info.size.min(INDEX_CAP.bytes), read));
            }
            let Some((key, _, read)) = ahead.0.pop_front() else {
                break;
            };
            let decoded = match read.await.expect("index object read panicked") {
                Ok(bytes) => decode(key.clone(), bytes).await,
                Err(e) if e.is_not_found() => continue, // removed since the listing
                Err(e) => Err(e.into()),
            };
            each(key, decoded);
        }
        Ok(())
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
    ///
    /// A record that fails authentication was not written by a prune of
    /// this repository: it is ignored with a warning naming it (it can hide
    /// nothing, so it need not stop anything) and reported by `verify`.
    pub async fn prune_records(&self) -> Result<Vec<prune::PruneRecord>, RepoError> {
        let mut out = Vec::new();
        for info in self.store.list(prune::PRUNES_PREFIX).await? {
            let bytes = self
                .store
                .get_at_most(&info.key, PRUNE_RECORD_CAP.bytes)
                .await?;
            match prune::PruneRecord::decode(&info.key, &bytes, &self.crypto) {
                Ok(r) => out.push(r),
                Err(e @ RepoError::Unauthenticated { .. }) => warn_unauthentic(&info.key, &e),
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// Every readable prune record; unreadable ones are logged. Restores and
    /// backups go on without them: a pack a lost record named is simply
    /// found missing (and named) if anything still asks for it.
    pub async fn prune_records_lenient(&self) -> Result<Vec<prune::PruneRecord>, RepoError> {
        Ok(self
            .prune_records_keyed()
            .await?
            .into_iter()
            .map(|(_, r)| r)
            .collect())
    }

    /// [`Repository::prune_records_lenient`], each with its key.
    pub async fn prune_records_keyed(
        &self,
    ) -> Result<Vec<(String, prune::PruneRecord)>, RepoError> {
        let (out, faults) = self.prune_records_checked().await?;
        for (key, e) in faults {
            match e {
                RepoError::Unauthenticated { .. } => warn_unauthentic(&key, &e),
                _ => {
                    tracing::warn!(object = %key, "skipping an unreadable prune record (run `holdfast verify`): {e}")
                }
            }
        }
        Ok(out)
    }

    /// Every readable prune record with its key, and beside them the
    /// unreadable or unauthentic ones with why (for `verify`).
    #[allow(clippy::type_complexity)]
    pub async fn prune_records_checked(
        &self,
    ) -> Result<(Vec<(String, prune::PruneRecord)>, Vec<(String, RepoError)>), RepoError> {
        let mut out = Vec::new();
        let mut faults = Vec::new();
        for info in self.store.list(prune::PRUNES_PREFIX).await? {
            let decoded = match self
                .store
                .get_at_most(&info.key, PRUNE_RECORD_CAP.bytes)
                .await
            {
                Ok(bytes) => prune::PruneRecord::decode(&info.key, &bytes, &self.crypto),
                Err(e) if e.is_not_found() => continue,
                Err(e) => Err(e.into()),
            };
            match decoded {
                Ok(r) => out.push((info.key.clone(), r)),
                Err(e) => faults.push((info.key.clone(), e)),
            }
        }
        Ok((out, faults))
    }

    /// A plan's believed snapshots, oldest first (see [`trust`]); every
    /// rejected object is logged by name. Reads each manifest's header.
    pub async fn list_snapshots(&self, plan: &PlanName) -> Result<Vec<SnapshotRef>, RepoError> {
        let all = self.snapshots(plan).await?;
        all.warn(plan);
        Ok(all.refs())
    }

    /// Reads a manifest's header (everything but its entries), checking its
    /// bytes against the id in its name.
    pub async fn load_manifest_head(&self, snap: &SnapshotRef) -> Result<ManifestHead, RepoError> {
        self.read_manifest(snap, ManifestHead::decode).await
    }

    /// Cuts the chunk lists of the snapshots this handle writes into
    /// objects of about `bytes` of JSON instead of
    /// [`manifest::LIST_PART_TARGET`] (tests: many parts from small data).
    pub fn with_list_part_target(mut self, bytes: usize) -> Self {
        self.list_part_target = bytes;
        self
    }

    /// Has the backups this handle takes remember `chunks` new chunks a
    /// generation instead of [`placing::RECENT_GENERATION`] (tests: a
    /// backup that forgets, from small data).
    pub fn with_recent_generation(mut self, chunks: usize) -> Self {
        self.recent_generation = chunks;
        self
    }

    /// See [`Repository::with_recent_generation`].
    pub(crate) fn recent_generation(&self) -> usize {
        self.recent_generation
    }

    /// Has the backups this handle takes keep `ids` chunk ids in memory
    /// before spilling them to a temporary file, instead of
    /// [`spill::IN_MEMORY`] (tests: a spill from small data).
    pub fn with_spill_after(mut self, ids: usize) -> Self {
        self.spill_after = ids;
        self
    }

    /// See [`Repository::with_spill_after`].
    pub(crate) fn spill_after(&self) -> usize {
        self.spill_after
    }

    /// Has the indexes this handle loads keep `chunks` chunks in memory
    /// before keeping them on disk, instead of [`index::IN_MEMORY`] (tests:
    /// an index on disk from small data).
    pub fn with_index_in_memory(mut self, chunks: usize) -> Self {
        self.index_in_memory = chunks;
        self
    }

    /// Reads a manifest, checking its bytes against the id in its name, and
    /// (version 4 on) its entries object against the hash and size the
    /// manifest gives; from version 7, each of its chunk-list objects too,
    /// filled into its file entries.
    pub async fn load_manifest(&self, snap: &SnapshotRef) -> Result<Manifest, RepoError> {
        let mut m = self.load_manifest_tree(snap).await?;
        let Some(parts) = m.list_parts(&snap.key) else {
            return Ok(m);
        };
        let (mut first, mut at) = (0u64, 0usize);
        for part in 0..parts.parts.len() {
            let lists = self.read_list_part(&parts, part, first).await?;
            let count = lists.len() as u64;
            at = parts.fill_files(part, lists, &mut m.entries, at, first)?;
            first += count;
        }
        if first != parts.files {
            return Err(parts.miscounted(first));
        }
        Ok(m)
    }

    /// [`Repository::load_manifest`] without the chunk lists of a version 7
    /// manifest: its entries are the tree (file entries without chunks),
    /// for [`Repository::read_list_part`] to complete a part at a time.
    /// Earlier versions are read whole.
    pub async fn load_manifest_tree(&self, snap: &SnapshotRef) -> Result<Manifest, RepoError> {
        let mut m = self.read_manifest(snap, Manifest::decode).await?;
        let Some(r) = &m.entries_object else {
            return Ok(m);
        };
        let bytes = self.get_entries_object(&snap.key, r, ENTRIES_CAP).await?;
        let (key, crypto) = (snap.key.clone(), self.crypto.clone());
        tokio::task::spawn_blocking(move || {
            m.decode_entries(&key, bytes, &crypto)?;
            Ok(m)
        })
        .await
        .expect("entries decode panicked")
    }

    /// Reads part `part` of a version 7 manifest's chunk lists, checking it
    /// ([`manifest::ListParts::decode`]): the lists of its file entries
    /// from number `first` on.
    pub async fn read_list_part(
        &self,
        parts: &manifest::ListParts,
        part: usize,
        first: u64,
    ) -> Result<Vec<manifest::ChunkList>, RepoError> {
        let r = &parts.parts[part];
        let bytes = self
            .get_entries_object(&parts.manifest, r, LISTS_CAP)
            .await?;
        let (parts, crypto) = (parts.clone(), self.crypto.clone());
        tokio::task::spawn_blocking(move || parts.decode(part, first, bytes, &crypto))
            .await
            .expect("chunk-list decode panicked")
    }

    /// The stored bytes of an entries or chunk-list object `r` that the
    /// manifest at key `manifest` names, read with its size (and `cap`) as
    /// the cap.
    async fn get_entries_object(
        &self,
        manifest: &str,
        r: &EntriesRef,
        cap: MetadataCap,
    ) -> Result<Vec<u8>, RepoError> {
        match self
            .store
            .get_at_most(&r.key, r.size.min(cap.bytes + crypto::SEAL_OVERHEAD as u64))
            .await
        {
            Ok(b) => Ok(Vec::from(b)),
            Err(e) if e.is_not_found() => Err(RepoError::MissingEntries {
                what: cap.what,
                manifest: manifest.to_string(),
                key: r.key.clone(),
            }),
            Err(e) => Err(e.into()),
        }
    }

    /// Writes `m` as a snapshot: its entries object first (version 4 on,
    /// setting `m.entries_object`), then its manifest, both under
    /// `retention`. `before_commit` runs between the two (a backup confirms
    /// its locks there). Returns the manifest's key and id.
    pub async fn put_manifest<F, Fut>(
        &self,
        m: Manifest,
        retention: Option<Retention>,
        before_commit: F,
    ) -> Result<(String, SnapshotId), RepoError>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<(), RepoError>>,
    {
        self.put_manifest_with(m, None, retention, before_commit)
            .await
    }

    /// [`Repository::put_manifest`] for a manifest (version 7 on) whose
    /// entries' chunk lists are in `spilled` (a backup's, see
    /// [`spill::ChunkSpill`]) rather than in the entries themselves.
    pub async fn put_manifest_with<F, Fut>(
        &self,
        m: Manifest,
        spilled: Option<spill::SpilledLists>,
        retention: Option<Retention>,
        before_commit: F,
    ) -> Result<(String, SnapshotId), RepoError>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<(), RepoError>>,
    {
        assert!(
            spilled.is_none() || m.version >= manifest::LISTS_APART_FROM,
            "chunk lists are kept apart from version 7"
        );
        let what = format!("the new manifest of plan {}", m.plan);
        let (plan, started_at) = (m.plan.clone(), m.started_at);
        let (crypto, part_target) = (self.crypto.clone(), self.list_part_target);
        // The chunk-list objects are put while the rest are encoded, a few
        // at once (each put to the local store is flushed on its own, and
        // one after another a 3 GB cluster's eight objects wait for eight
        // flushes), and let go once put: never all of them in memory. A
        // backup killed before the manifest leaves objects no manifest
        // names, which prune removes.
        const AT_ONCE: usize = 8;
        let (parts_tx, mut parts_rx) = tokio::sync::mpsc::channel::<(EntriesRef, Vec<u8>)>(2);
        let encode = tokio::task::spawn_blocking(move || {
            let mut m = m;
            let mut tree = None;
            if m.version >= manifest::ENTRIES_APART_FROM {
                let mut refs = Vec::new();
                let encoded = m.encode_entries_each(
                    &crypto,
                    part_target,
                    spilled.as_ref(),
                    &mut |r, bytes| {
                        refs.push(r.clone());
                        parts_tx.blocking_send((r, bytes)).is_ok()
                    },
                )?;
                // Stopped: a put failed, and its error is the one to give.
                let Some(encoded) = encoded else {
                    return Ok(None);
                };
                m.entries_object = Some(encoded.0.clone());
                if m.version >= manifest::LISTS_APART_FROM {
                    m.chunk_lists = Some(refs);
                }
                tree = Some(encoded);
            }
            drop(parts_tx);
            let (id, bytes) = m.encode_within_cap(&what, &crypto)?;
            Ok::<_, RepoError>(Some((tree, id, bytes)))
        });
        let put = |r: EntriesRef, bytes: Vec<u8>| {
            let store = self.store.clone();
            async move {
                let opts = PutOptions {
                    sha256: r.sha256,
                    retention,
                };
                store.put(&r.key, Bytes::from(bytes), &opts).await
            }
        };
        let mut puts = tokio::task::JoinSet::new();
        let mut failed = None;
        while let Some((r, bytes)) = parts_rx.recv().await {
            while puts.len() >= AT_ONCE {
                if let Err(e) = puts
                    .join_next()
                    .await
                    .expect("puts running")
                    .expect("put panicked")
                {
                    failed = Some(e);
                    break;
                }
            }
            if failed.is_some() {
                break;
            }
            puts.spawn(put(r, bytes));
        }
        // Closing the channel stops the encoding after a failed put.
        drop(parts_rx);
        let encoded = encode.await.expect("manifest encode panicked");
        while let Some(done) = puts.join_next().await {
            if let Err(e) = done.expect("put panicked") {
                failed.get_or_insert(e);
            }
        }
        if let Some(e) = failed {
            return Err(e.into());
        }
        let (tree, id, bytes) = encoded?.expect("stopped only by a failed put");
        if let Some((r, bytes)) = tree {
            put(r, bytes).await?;
        }
        before_commit().await?;
        let key = snapshot_key(&plan, started_at, &id);
        self.store
            .put(
                &key,
                Bytes::from(bytes),
                &PutOptions {
                    sha256: id.0,
                    retention,
                },
            )
            .await?;
        Ok((key, id))
    }

    /// Fetches `snap`'s manifest object and decodes it with `decode` on a
    /// blocking thread: a whole manifest holds one chunk id per 8 KiB page,
    /// tens of MB of JSON for a big database.
    async fn read_manifest<T: Send + 'static>(
        &self,
        snap: &SnapshotRef,
        decode: fn(&str, &SnapshotId, &[u8], &Crypto) -> Result<T, RepoError>,
    ) -> Result<T, RepoError> {
        let bytes = self
            .store
            .get_at_most(&snap.key, MANIFEST_CAP.bytes)
            .await?;
        let (key, id, crypto) = (snap.key.clone(), snap.id, self.crypto.clone());
        tokio::task::spawn_blocking(move || decode(&key, &id, &bytes, &crypto))
            .await
            .expect("manifest decode panicked")
    }

    /// Resolves `latest` or an id prefix to one snapshot of a plan.
    pub async fn find_snapshot(
        &self,
        plan: &PlanName,
        selector: &str,
    ) -> Result<SnapshotRef, RepoError> {
        let listed = self.snapshots(plan).await?;
        listed.warn(plan);
        let all = listed.refs();
        let not_found = || RepoError::NoSuchSnapshot {
            plan: plan.to_string(),
            selector: selector.to_string(),
            url: self.url(),
        };
        if selector == "latest" {
            // None believed, but one that cannot be read: that is damage
            // (exit 5, named), not a plan without snapshots.
            let unreadable = || {
                listed
                    .rejected
                    .iter()
                    .rev()
                    .find(|r| r.kind == RejectKind::Unreadable)
                    .map(|r| RepoError::RejectedSnapshot {
                        plan: plan.to_string(),
                        key: r.object.clone(),
                        why: r.detail.clone(),
                    })
            };
            return all
                .last()
                .cloned()
                .ok_or_else(|| unreadable().unwrap_or_else(not_found));
        }
        let selector_lc = selector.to_ascii_lowercase();
        let matches: Vec<_> = all
            .iter()
            .filter(|s| s.id.to_hex().starts_with(&selector_lc))
            .collect();
        match matches.as_slice() {
            [] => {
                // Named, but not believed: say why instead of "no such".
                let rejected = listed.rejected.iter().find(|r| {
                    SnapshotRef::from_key(&r.object)
                        .is_some_and(|s| s.id.to_hex().starts_with(&selector_lc))
                });
                Err(match rejected {
                    Some(r) => RepoError::RejectedSnapshot {
                        plan: plan.to_string(),
                        key: r.object.clone(),
                        why: r.detail.clone(),
                    },
                    None => not_found(),
                })
            }
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

/// Logs an index object a reader skips: unauthentic ones as not the
/// repository's, others as unreadable.
fn warn_index_fault(key: &str, e: &RepoError) {
    match e {
        RepoError::Unauthenticated { .. } => warn_unauthentic(key, e),
        _ => {
            tracing::warn!(object = %key, "skipping an unreadable index object (run `holdfast verify`): {e}")
        }
    }
}

/// Logs a metadata object that fails authentication: ignored, by name.
fn warn_unauthentic(key: &str, e: &RepoError) {
    tracing::warn!(object = %key, kind = ?RejectKind::Unauthenticated, "ignoring {key}: {e} (see `docs/runbook.md`, rejected objects; `holdfast verify` reports it)");
}

/// For readers that must know everything (prune): an unreadable index object
/// is an error, an unauthentic one is ignored with a warning.
fn strict_faults(faults: Vec<(String, RepoError)>) -> Result<(), RepoError> {
    let mut first = None;
    for (key, e) in faults {
        match e {
            RepoError::Unauthenticated { .. } => warn_unauthentic(&key, &e),
            e => {
                first.get_or_insert(e);
            }
        }
    }
    first.map_or(Ok(()), Err)
}

/// The index objects describing each pack, from
/// [`Repository::index_object_packs_strict`].
pub fn describing(
    objects: &[(String, Vec<PackId>)],
) -> std::collections::HashMap<PackId, Vec<&str>> {
    let mut by_pack: std::collections::HashMap<PackId, Vec<&str>> = Default::default();
    for (key, packs) in objects {
        for p in packs {
            by_pack.entry(*p).or_default().push(key);
        }
    }
    by_pack
}

/// zstd-compressed JSON, the encoding of index objects and manifests.
pub(crate) fn encode_json_zst<T: Serialize>(value: &T) -> Vec<u8> {
    json_zst(value, u64::MAX).expect("no cap to pass")
}

/// `value` as JSON, compressed as it is written: the JSON is never held
/// whole (an index object or a manifest holds one chunk id per 8 KiB page:
/// tens of MB of JSON for a 3 GB database). `None` once the JSON would pass
/// `cap` bytes.
fn json_zst<T: Serialize>(value: &T, cap: u64) -> Option<Vec<u8>> {
    /// Passes bytes on while fewer than `left` have been written.
    struct Capped<W> {
        inner: W,
        left: u64,
    }
    impl<W: std::io::Write> std::io::Write for Capped<W> {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.left = self
                .left
                .checked_sub(buf.len() as u64)
                .ok_or_else(|| std::io::Error::other("over the cap"))?;
            self.inner.write_all(buf)?;
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            self.inner.flush()
        }
    }
    let encoder = zstd::stream::write::Encoder::new(Vec::new(), 3).expect("zstd starts in memory");
    // serde_json writes token by token: batched before the compressor.
    let mut out = std::io::BufWriter::with_capacity(
        256 << 10,
        Capped {
            inner: encoder,
            left: cap,
        },
    );
    match serde_json::to_writer(&mut out, value) {
        // Writing into memory fails only at the cap.
        Err(e) if e.is_io() => return None,
        Err(e) => panic!("repository metadata serialises: {e}"),
        Ok(()) => {}
    }
    let capped = out.into_inner().ok()?;
    Some(capped.inner.finish().expect("zstd compresses in memory"))
}

/// Opens a sealed metadata object (after its size was checked against `cap`
/// and before anything decompresses it): an unauthentic one is an error
/// naming it.
pub(crate) fn open_sealed<'a>(
    crypto: &Crypto,
    cap: MetadataCap,
    key: &str,
    ad: &str,
    bytes: &'a [u8],
) -> Result<std::borrow::Cow<'a, [u8]>, RepoError> {
    if bytes.len() as u64 > cap.bytes.saturating_add(crypto::SEAL_OVERHEAD as u64) {
        return Err(RepoError::OverCap {
            what: cap.what,
            key: key.to_string(),
            detail: format!("it is {} bytes stored", bytes.len()),
            cap: cap.bytes,
        });
    }
    crypto
        .open(ad, bytes)
        .map_err(|why| RepoError::Unauthenticated {
            what: cap.what,
            key: key.to_string(),
            why,
        })
}

/// Like [`encode_json_zst`], but refuses to write what no reader would read
/// back: JSON over `cap` is an error naming what would have been written.
pub(crate) fn encode_json_zst_within<T: Serialize>(
    cap: MetadataCap,
    key: &str,
    value: &T,
) -> Result<Vec<u8>, RepoError> {
    json_zst(value, cap.bytes).ok_or_else(|| RepoError::TooLargeToWrite {
        what: cap.what,
        key: key.to_string(),
        cap: cap.bytes,
    })
}

/// The most a metadata object may decompress to, and the most its stored
/// (compressed) bytes may be, by kind: fixed caps, because nothing authenticated
/// gives a size before the object is read. Writers keep well inside them (a
/// backup starts a new index object every [`MAX_CHUNKS_PER_INDEX`] chunks and
/// refuses a manifest over its cap); readers refuse anything larger, naming the
/// object and the cap, before it can claim memory. See
/// `docs/repository-format.md`, *Size caps*.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetadataCap {
    pub what: &'static str,
    pub bytes: u64,
}

/// Index objects: at most [`MAX_CHUNKS_PER_INDEX`] chunks of about 140 JSON
/// bytes each, so about 14 MiB; 64 MiB leaves room.
pub const INDEX_CAP: MetadataCap = MetadataCap {
    what: "index object",
    bytes: 64 << 20,
};

/// How many index objects are read ahead of the one being decoded, and how
/// many stored bytes they may hold together by the listing's sizes (one is
/// always read, up to [`INDEX_CAP`]): a backup's are a few MB each, and
/// objects planted to be large cannot hold more than this many beside it.
const INDEX_READ_AHEAD: usize = 4;
const INDEX_READ_AHEAD_BYTES: u64 = 64 << 20;

/// An index object read started ahead: its key, its size by the listing
/// (at most [`INDEX_CAP`]), the read.
type IndexRead = (
    String,
    u64,
    tokio::task::JoinHandle<Result<Bytes, crate::store::StoreError>>,
);

/// Index object reads started ahead, aborted if the reader stops early.
struct ReadAhead(std::collections::VecDeque<IndexRead>);

impl Drop for ReadAhead {
    fn drop(&mut self) {
        for (_, _, read) in &self.0 {
            read.abort();
        }
    }
}

/// Manifests: about 250 JSON bytes per file plus 67 per chunk. PostgreSQL
/// images are cut into 8 KiB chunks, so their manifests are 0.8 % of the
/// cluster's size: 4 GiB holds a 500 GiB cluster, or some sixteen million
/// files. (A manifest this size is parsed as it streams, never held as text.)
pub const MANIFEST_CAP: MetadataCap = MetadataCap {
    what: "snapshot manifest",
    bytes: 4 << 30,
};

/// Entries objects (manifest version 4 on): what a manifest held before, so
/// the same cap. They are read with their manifest's size as a tighter one.
pub const ENTRIES_CAP: MetadataCap = MetadataCap {
    what: "entries object",
    bytes: 4 << 30,
};

/// Prune records: 67 JSON bytes per pack or snapshot named, so about a million
/// packs (16 TiB of packs at the default size) per record.
/// Chunk-list objects (manifest version 7 on): a few MB each, larger only
/// for one file's list; capped as entries objects are, and read with their
/// manifest's size as a tighter cap.
pub const LISTS_CAP: MetadataCap = MetadataCap {
    what: "chunk-list object",
    bytes: 4 << 30,
};

pub const PRUNE_RECORD_CAP: MetadataCap = MetadataCap {
    what: "prune record",
    bytes: 64 << 20,
};

/// The `config` object is a few hundred bytes of JSON.
const CONFIG_CAP: u64 = 1 << 20;

/// A backup writes an index object when this many chunks are unindexed, even
/// before [`PACKS_PER_INDEX`] packs, so small files cannot push an index object
/// past [`INDEX_CAP`].
pub const MAX_CHUNKS_PER_INDEX: usize = 100_000;

/// What [`Guarded`] stopped a read for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    OverCap,
    Whitespace(u64),
}

/// The reader between the decompressor and the JSON parser. It fails once
/// more than `cap` bytes pass, and at the first whitespace outside a string:
/// holdfast writes compact JSON (`serde_json::to_vec`), so whitespace means a
/// foreign object, and refusing it stops a whitespace bomb at its first byte
/// instead of after the cap. It notes why it stopped (the parser reports only
/// "I/O error").
struct Guarded<R> {
    inner: R,
    left: u64,
    read: u64,
    in_string: bool,
    escaped: bool,
    stopped: Option<Stop>,
}

impl<R: Read> Read for Guarded<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.left == 0 {
            // One byte more means the content is over the cap.
            let mut probe = [0u8; 1];
            if self.inner.read(&mut probe)? == 0 {
                return Ok(0);
            }
            self.stopped = Some(Stop::OverCap);
            return Err(std::io::Error::other("over the size cap"));
        }
        let want = buf.len().min(self.left.min(usize::MAX as u64) as usize);
        let n = self.inner.read(&mut buf[..want])?;
        let data = &buf[..n];
        let mut i = 0;
        while i < n {
            if self.in_string {
                if self.escaped {
                    self.escaped = false;
                    i += 1;
                    continue;
                }
                // Most bytes are inside strings (ids, paths): skip to the
                // next quote or backslash at once.
                match memchr::memchr2(b'"', b'\\', &data[i..]) {
                    None => i = n,
                    Some(at) => {
                        if data[i + at] == b'\\' {
                            self.escaped = true;
                        } else {
                            self.in_string = false;
                        }
                        i += at + 1;
                    }
                }
                continue;
            }
            match data[i] {
                b'"' => self.in_string = true,
                b' ' | b'\n' | b'\r' | b'\t' => {
                    self.stopped = Some(Stop::Whitespace(self.read + i as u64));
                    return Err(std::io::Error::other("whitespace outside a string"));
                }
                _ => {}
            }
            i += 1;
        }
        self.left -= n as u64;
        self.read += n as u64;
        Ok(n)
    }
}

/// Decodes a zstd JSON metadata object without ever holding more than `cap`
/// bytes of it: the stored bytes are checked against the cap, and the JSON is
/// parsed as it streams out of the decompressor, which stops at the cap. A
/// decompression bomb of zeros or whitespace fails at its first byte; one of
/// well-formed JSON (a string that never ends) is refused at the cap.
pub(crate) fn decode_json_zst<T: for<'de> Deserialize<'de>>(
    cap: MetadataCap,
    key: &str,
    bytes: &[u8],
) -> Result<T, RepoError> {
    decode_json_zst_buffering(cap, key, bytes, BUFFERED_JSON)
}

/// [`decode_json_zst`], parsing from memory up to `buffered` bytes of JSON.
pub(crate) fn decode_json_zst_buffering<T: for<'de> Deserialize<'de>>(
    cap: MetadataCap,
    key: &str,
    bytes: &[u8],
    buffered: u64,
) -> Result<T, RepoError> {
    let what = cap.what;
    if bytes.len() as u64 > cap.bytes {
        return Err(RepoError::OverCap {
            what,
            key: key.to_string(),
            detail: format!("it is {} bytes stored", bytes.len()),
            cap: cap.bytes,
        });
    }
    let corrupt = |why: String| RepoError::Corrupt {
        what,
        key: key.to_string(),
        why,
    };
    let decoder = zstd::stream::read::Decoder::with_buffer(bytes)
        .map_err(|e| corrupt(format!("cannot decompress: {e}")))?;
    let mut guarded = Guarded {
        inner: decoder,
        left: cap.bytes,
        read: 0,
        in_string: false,
        escaped: false,
        stopped: None,
    };
    // Up to BUFFERED_JSON is decompressed into memory and parsed from there
    // (serde_json parses a slice several times faster than a reader, which
    // it reads byte by byte); a bigger object streams on from where that
    // left off, so memory stays bounded by the buffer, not the cap.
    let mut head = Vec::new();
    let parsed: Result<T, serde_json::Error> =
        match (&mut guarded).take(buffered).read_to_end(&mut head) {
            Err(e) => Err(serde_json::Error::io(e)),
            Ok(n) if (n as u64) < buffered => serde_json::from_slice(&head),
            Ok(_) => {
                let mut reader = std::io::BufReader::with_capacity(
                    64 * 1024,
                    std::io::Cursor::new(head).chain(&mut guarded),
                );
                serde_json::from_reader(&mut reader)
            }
        };
    match guarded.stopped {
        Some(Stop::OverCap) => {
            return Err(RepoError::OverCap {
                what,
                key: key.to_string(),
                detail: "it decompresses to more than that".into(),
                cap: cap.bytes,
            })
        }
        Some(Stop::Whitespace(at)) => {
            return Err(corrupt(format!(
                "whitespace outside a string at byte {at} of its JSON; holdfast writes compact JSON, so it did not write this"
            )))
        }
        None => {}
    }
    parsed.map_err(|e| match e.io_error_kind() {
        Some(_) => corrupt(format!("cannot decompress: {e}")),
        None => corrupt(format!("cannot parse: {e}")),
    })
}

/// Metadata JSON up to this size is parsed from memory, bigger objects as
/// they stream (see [`decode_json_zst`]). A PostgreSQL manifest lists one
/// chunk id (67 bytes of JSON) per 8 KiB page: 64 MiB covers a 7 GiB
/// cluster (a 3 GB one, pgbench scale 200, has 27 MB manifests).
const BUFFERED_JSON: u64 = 64 << 20;

#[cfg(test)]
mod cap_tests {
    use super::*;

    #[test]
    fn metadata_is_compressed_as_it_is_written_and_refused_past_its_cap() {
        let value: Vec<String> = (0..20_000).map(|i| format!("entry {i}")).collect();
        let json = serde_json::to_vec(&value).unwrap();
        let bytes = encode_json_zst(&value);
        assert!(bytes.len() < json.len() / 2, "compressed");
        let back: Vec<String> = decode_json_zst(INDEX_CAP, "index/x", &bytes).unwrap();
        assert_eq!(back, value);
        // Parsed from memory below the buffered size, and from a stream above.
        let back: Vec<String> =
            decode_json_zst_buffering(INDEX_CAP, "index/x", &bytes, json.len() as u64 / 3).unwrap();
        assert_eq!(back, value);
        let cap = |bytes: u64| MetadataCap {
            what: "manifest",
            bytes,
        };
        let fits = encode_json_zst_within(cap(json.len() as u64), "snapshots/x", &value).unwrap();
        assert_eq!(fits, bytes);
        let over = encode_json_zst_within(cap(json.len() as u64 - 1), "snapshots/x", &value)
            .unwrap_err()
            .to_string();
        assert!(
            over.contains("manifest snapshots/x would be over the")
                && over.contains("not written")
                && !over.contains("not read"),
            "{over}"
        );
    }

    const SMALL: MetadataCap = MetadataCap {
        what: "index object",
        bytes: 64,
    };

    fn zst(json: &str) -> Vec<u8> {
        zstd::bulk::compress(json.as_bytes(), 3).unwrap()
    }

    #[test]
    fn json_up_to_the_cap_is_read_and_one_byte_more_is_refused_by_name() {
        // Exactly 64 bytes of compact JSON.
        let at_cap = format!("[\"{}\"]", "a".repeat(60));
        assert_eq!(at_cap.len(), 64);
        let got: Vec<String> = decode_json_zst(SMALL, "index/k", &zst(&at_cap)).unwrap();
        assert_eq!(got[0].len(), 60);
        let over = format!("[\"{}\"]", "a".repeat(61));
        match decode_json_zst::<Vec<String>>(SMALL, "index/k", &zst(&over)) {
            Err(e @ RepoError::OverCap { .. }) => {
                let msg = e.to_string();
                assert!(
                    msg.contains("index/k") && msg.contains("64-byte cap for index objects"),
                    "{msg}"
                );
            }
            other => panic!("{other:?}"),
        }
        // Stored bytes over the cap are refused before decompressing.
        let noise: Vec<u8> = (0..200u32).map(|i| (i * 7919 % 251) as u8).collect();
        match decode_json_zst::<Vec<String>>(SMALL, "index/k", &noise) {
            Err(RepoError::OverCap { detail, .. }) => {
                assert!(detail.contains("200 bytes stored"), "{detail}")
            }
            other => panic!("{other:?}"),
        }
    }

    /// The same answers whether the JSON is parsed from memory or, past the
    /// buffer, as it streams (here a buffer of 1 to 70 bytes).
    #[test]
    fn json_bigger_than_the_buffer_streams_on_with_the_same_checks() {
        let json = format!("[\"{}\",\"b c\"]", "a".repeat(50));
        for buffered in [1, 7, 8, 30, 63, 64, 70] {
            let got: Vec<String> =
                decode_json_zst_buffering(SMALL, "k", &zst(&json), buffered).unwrap();
            assert_eq!(got[1], "b c", "buffered {buffered}");
            let spaced = json.replace(",", ", ");
            match decode_json_zst_buffering::<Vec<String>>(SMALL, "k", &zst(&spaced), buffered) {
                Err(RepoError::Corrupt { why, .. }) => {
                    assert!(
                        why.contains("whitespace outside a string at byte 54"),
                        "{why}"
                    )
                }
                other => panic!("buffered {buffered}: {other:?}"),
            }
            let over = format!("[\"{}\"]", "a".repeat(61));
            assert!(
                matches!(
                    decode_json_zst_buffering::<Vec<String>>(SMALL, "k", &zst(&over), buffered),
                    Err(RepoError::OverCap { .. })
                ),
                "buffered {buffered}"
            );
            let cut = &json[..40];
            match decode_json_zst_buffering::<Vec<String>>(SMALL, "k", &zst(cut), buffered) {
                Err(RepoError::Corrupt { why, .. }) => {
                    assert!(why.contains("cannot parse"), "{why}")
                }
                other => panic!("buffered {buffered}: {other:?}"),
            }
        }
    }

    #[test]
    fn whitespace_outside_strings_is_refused_and_inside_them_kept() {
        let got: Vec<String> = decode_json_zst(SMALL, "k", &zst("[\"a b\\\" c\"]")).unwrap();
        assert_eq!(got, vec!["a b\" c".to_string()]);
        match decode_json_zst::<Vec<String>>(SMALL, "k", &zst("[\"a\", \"b\"]")) {
            Err(RepoError::Corrupt { why, .. }) => {
                assert!(
                    why.contains("whitespace outside a string at byte 5"),
                    "{why}"
                )
            }
            other => panic!("{other:?}"),
        }
    }
}
