//! Key objects (`keys/<id>`): the repository's master secret wrapped under a
//! passphrase through Argon2id, one object per passphrase, so passphrases can
//! be added and removed without touching the data. Removal markers
//! (`keys/<id>.removed`), sealed under the data key, record a removal only a
//! key holder can prove. See `docs/repository-format.md`, *Key objects*.

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::crypto::{self, Crypto, DataKeys, KdfParams, MasterSecret};
use super::RepoError;
use crate::ids::Hash256;
use crate::secret::Secret;
use crate::store::{PutOptions, Retention, Store, StoreError};

pub const KEYS_PREFIX: &str = "keys/";
/// A key object is a few hundred bytes of JSON.
pub const KEY_OBJECT_CAP: u64 = 64 * 1024;
/// At most this many key objects are tried when unlocking: each may cost
/// one Argon2id run (about 64 MiB and a fraction of a second).
pub const MAX_KEY_OBJECTS: usize = 32;
const REMOVAL_SUFFIX: &str = ".removed";

/// What the plan gives to open a repository.
#[derive(Debug, Clone)]
pub enum RepoKey {
    /// `encryption: none`.
    Unencrypted,
    /// A passphrase (from `key: ${VAR}`, a key file's trimmed contents, or
    /// `HOLDFAST_KEY` / `HOLDFAST_KEY_FILE`).
    Passphrase(Secret),
    /// Nothing gives a key; the text says where one could come from.
    Missing(String),
}

/// One key object, as stored (plain JSON: it is what unlocks the rest).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyObject {
    pub format: String,
    pub version: u32,
    /// The repository id the wrapped secret is bound to.
    pub repository: String,
    pub created_at: DateTime<Utc>,
    pub host: Option<String>,
    pub user: Option<String>,
    pub kdf: KdfParams,
    /// The sealed master secret, hex.
    pub wrapped: String,
}

/// A sealed removal marker's content.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RemovalMarker {
    pub key: String,
    pub removed_at: DateTime<Utc>,
    pub host: Option<String>,
    pub user: Option<String>,
}

pub fn key_object_key(id: &Hash256) -> String {
    format!("{KEYS_PREFIX}{id}")
}

pub fn removal_marker_key(id: &Hash256) -> String {
    format!("{KEYS_PREFIX}{id}{REMOVAL_SUFFIX}")
}

/// The id of a key object's name, `None` for markers and anything else.
pub fn key_id_of(key: &str) -> Option<Hash256> {
    key.strip_prefix(KEYS_PREFIX)?.parse().ok()
}

fn user() -> Option<String> {
    std::env::var("USER")
        .ok()
        .or_else(|| std::env::var("LOGNAME").ok())
        .filter(|u| !u.is_empty())
}

/// Writes a new key object wrapping `master` under `passphrase`; returns its id.
pub async fn add(
    store: &dyn Store,
    repository_id: &str,
    master: &MasterSecret,
    passphrase: &Secret,
    retention: Option<Retention>,
) -> Result<Hash256, RepoError> {
    let kdf = KdfParams::for_passphrase(passphrase.expose());
    let pass = passphrase.expose().as_bytes().to_vec();
    let (rid, m) = (repository_id.to_string(), master.clone());
    let (kdf, wrapped) = tokio::task::spawn_blocking(move || {
        let w = crypto::wrap(&kdf, &pass, &rid, &m);
        (kdf, w)
    })
    .await
    .expect("key wrapping panicked");
    let wrapped = wrapped.map_err(|why| RepoError::Corrupt {
        what: "key object",
        key: KEYS_PREFIX.into(),
        why,
    })?;
    let object = KeyObject {
        format: "holdfast-key".into(),
        version: 1,
        repository: repository_id.to_string(),
        created_at: crate::clock::now(),
        host: crate::hostname(),
        user: user(),
        kdf,
        wrapped: hex::encode(wrapped),
    };
    let body = serde_json::to_vec_pretty(&object).expect("key object serialises");
    let id = Hash256::digest(&body);
    let opts = PutOptions {
        sha256: id,
        retention,
    };
    store
        .put(&key_object_key(&id), Bytes::from(body), &opts)
        .await?;
    Ok(id)
}

/// Key object names in the store, markers left out: oldest first by the
/// storage service's own creation time where it vouches for one (S3), then
/// in name order. Anyone with the bucket's credentials can add key objects,
/// and a name is the SHA-256 of content they choose, so name order alone
/// would let [`MAX_KEY_OBJECTS`] planted objects sorting first crowd out the
/// real ones; they cannot be created before the repository's own keys.
pub async fn list_key_objects(store: &dyn Store) -> Result<Vec<(Hash256, String)>, RepoError> {
    let mut listed: Vec<_> = store
        .list(KEYS_PREFIX)
        .await?
        .into_iter()
        .filter_map(|i| key_id_of(&i.key).map(|id| (i.created, id, i.key)))
        .collect();
    // `None` (a store that cannot vouch) sorts before any time: the local
    // store gives `None` for all, so its order is the name order.
    listed.sort_by(|a, b| (a.0, &a.2).cmp(&(b.0, &b.2)));
    Ok(listed.into_iter().map(|(_, id, key)| (id, key)).collect())
}

/// Reads a key object, checking its id and its size.
pub async fn read_key_object(store: &dyn Store, id: &Hash256) -> Result<KeyObject, RepoError> {
    let key = key_object_key(id);
    let bytes = store.get_at_most(&key, KEY_OBJECT_CAP).await?;
    let corrupt = |why: String| RepoError::Corrupt {
        what: "key object",
        key: key.clone(),
        why,
    };
    let got = Hash256::digest(&bytes);
    if got != *id {
        return Err(corrupt(format!("its SHA-256 is {got}, its name says {id}")));
    }
    let object: KeyObject =
        serde_json::from_slice(&bytes).map_err(|e| corrupt(format!("cannot parse: {e}")))?;
    if object.format != "holdfast-key" || object.version != 1 {
        return Err(corrupt(format!(
            "unknown format {} version {}",
            object.format, object.version
        )));
    }
    object.kdf.check().map_err(corrupt)?;
    Ok(object)
}

/// Tries each key object (at most [`MAX_KEY_OBJECTS`]) until one opens with
/// `passphrase`; returns the master secret and the id of the key that opened.
pub async fn unlock(
    store: &dyn Store,
    repository_id: &str,
    passphrase: &Secret,
) -> Result<(MasterSecret, Hash256), RepoError> {
    let objects = list_key_objects(store).await?;
    if objects.is_empty() {
        return Err(RepoError::NoKeyObjects { url: store.url() });
    }
    if objects.len() > MAX_KEY_OBJECTS {
        tracing::warn!(
            "repository {} has {} key objects; trying the first {MAX_KEY_OBJECTS} only (remove unused keys with `holdfast key remove`)",
            store.url(),
            objects.len()
        );
    }
    let mut tried = 0;
    for (id, key) in objects.into_iter().take(MAX_KEY_OBJECTS) {
        let object = match read_key_object(store, &id).await {
            Ok(o) => o,
            Err(RepoError::Store(e)) if e.is_not_found() => continue,
            Err(e) => {
                tracing::warn!(object = %key, "skipping an unreadable key object: {e}");
                continue;
            }
        };
        if object.repository != repository_id {
            tracing::warn!(object = %key, "skipping a key object of another repository ({})", object.repository);
            continue;
        }
        let Ok(wrapped) = hex::decode(&object.wrapped) else {
            tracing::warn!(object = %key, "skipping a key object whose `wrapped` is not hex");
            continue;
        };
        tried += 1;
        let pass = passphrase.expose().as_bytes().to_vec();
        let rid = repository_id.to_string();
        let opened =
            tokio::task::spawn_blocking(move || crypto::unwrap(&object.kdf, &pass, &rid, &wrapped))
                .await
                .expect("key unwrapping panicked");
        match opened {
            Ok(Some(master)) => return Ok((master, id)),
            Ok(None) => {}
            Err(why) => tracing::warn!(object = %key, "skipping a key object: {why}"),
        }
    }
    Err(RepoError::WrongKey {
        url: store.url(),
        tried,
    })
}

/// Writes the sealed removal marker of key `id`.
pub async fn write_removal_marker(
    store: &dyn Store,
    crypto: &Crypto,
    id: &Hash256,
    retention: Option<Retention>,
) -> Result<(), RepoError> {
    let key = removal_marker_key(id);
    let marker = RemovalMarker {
        key: key_object_key(id),
        removed_at: crate::clock::now(),
        host: crate::hostname(),
        user: user(),
    };
    let body = crypto.seal(
        &key,
        serde_json::to_vec(&marker).expect("marker serialises"),
    );
    let opts = PutOptions {
        sha256: Hash256::digest(&body),
        retention,
    };
    match store.put(&key, Bytes::from(body), &opts).await {
        Ok(()) | Err(StoreError::AlreadyExists { .. }) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Whether key `id` has an authentic removal marker. A marker that does not
/// open is not one (anyone with the bucket's credentials could add it) and
/// is logged.
pub async fn is_removed(store: &dyn Store, crypto: &Crypto, id: &Hash256) -> bool {
    let key = removal_marker_key(id);
    let Ok(bytes) = store.get_at_most(&key, KEY_OBJECT_CAP).await else {
        return false;
    };
    match crypto.open(&key, &bytes) {
        Ok(_) => true,
        Err(e) => {
            tracing::warn!(object = %key, "ignoring a removal marker that is not authentic: {e}");
            false
        }
    }
}

/// Key objects that are not removed: the ones whose locks must outlive
/// every object they decrypt.
pub async fn live_key_objects(
    store: &dyn Store,
    crypto: &Crypto,
) -> Result<Vec<String>, RepoError> {
    let mut out = Vec::new();
    for (id, key) in list_key_objects(store).await? {
        if !is_removed(store, crypto, &id).await {
            out.push(key);
        }
    }
    Ok(out)
}

/// The data keys for a master secret of repository `repository_id`.
pub fn data_keys(master: &MasterSecret, repository_id: &str) -> DataKeys {
    DataKeys::derive(master, repository_id)
}
