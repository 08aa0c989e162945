//! The repository's cryptography (format version 2, `docs/repository-format.md`,
//! *Encryption*): the data keys derived from a repository's master secret,
//! sealing and opening objects with XChaCha20-Poly1305, keyed chunk ids, the
//! config MAC, and wrapping the master secret under a passphrase (Argon2id).
//!
//! Everything here is pure computation on bytes; which object is sealed under
//! which associated data is decided by the callers in `repository`.

use std::borrow::Cow;
use std::sync::Arc;

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use zeroize::{Zeroize, Zeroizing};

use crate::ids::{ChunkId, Hash256};

/// First bytes of every sealed object or blob: "HFX" and the sealing version.
pub const SEAL_MAGIC: &[u8; 4] = b"HFX\x01";
pub const NONCE_LEN: usize = 24;
pub const TAG_LEN: usize = 16;
/// Bytes a sealed object has beyond its plaintext.
pub const SEAL_OVERHEAD: usize = SEAL_MAGIC.len() + NONCE_LEN + TAG_LEN;
/// Length of a repository's master secret.
pub const MASTER_SECRET_LEN: usize = 64;

const INFO_SEAL: &[u8] = b"holdfast v2 object sealing key";
const INFO_CHUNK_ID: &[u8] = b"holdfast v2 chunk id key";
const INFO_CONFIG_MAC: &[u8] = b"holdfast v2 config mac key";
const INFO_SYNTHETIC_NONCE: &[u8] = b"holdfast v2 synthetic nonce key";

/// Why a sealed object did not open. Deliberately vague: the AEAD cannot
/// tell a wrong key from altered bytes or a wrong name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    #[error("it is {0} bytes, too short to be a sealed object")]
    TooShort(usize),
    #[error(
        "it does not start with the sealed-object magic (not written by an encrypting holdfast)"
    )]
    Magic,
    #[error("it fails authentication (altered, written under another name, or sealed with another repository's key)")]
    Tag,
}

/// A repository's master secret: 64 random bytes, wiped on drop.
#[derive(Clone)]
pub struct MasterSecret([u8; MASTER_SECRET_LEN]);

impl Drop for MasterSecret {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl MasterSecret {
    pub fn random() -> Self {
        let mut s = [0u8; MASTER_SECRET_LEN];
        getrandom::fill(&mut s).expect("the OS has a random source");
        MasterSecret(s)
    }

    fn from_slice(bytes: &[u8]) -> Option<Self> {
        Some(MasterSecret(bytes.try_into().ok()?))
    }
}

impl std::fmt::Debug for MasterSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterSecret(***)")
    }
}

/// The keys derived from a master secret (HKDF-SHA256, salt = the repository
/// id): one seals objects, one keys chunk ids, one MACs the config. Wiped on
/// drop.
pub struct DataKeys {
    seal: [u8; 32],
    chunk_id: [u8; 32],
    config_mac: [u8; 32],
}

impl Drop for DataKeys {
    fn drop(&mut self) {
        self.seal.zeroize();
        self.chunk_id.zeroize();
        self.config_mac.zeroize();
    }
}

impl std::fmt::Debug for DataKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DataKeys(***)")
    }
}

impl DataKeys {
    pub fn derive(master: &MasterSecret, repository_id: &str) -> Self {
        let hk = hkdf::Hkdf::<Sha256>::new(Some(repository_id.as_bytes()), &master.0);
        let mut keys = DataKeys {
            seal: [0; 32],
            chunk_id: [0; 32],
            config_mac: [0; 32],
        };
        hk.expand(INFO_SEAL, &mut keys.seal).expect("32 bytes");
        hk.expand(INFO_CHUNK_ID, &mut keys.chunk_id)
            .expect("32 bytes");
        hk.expand(INFO_CONFIG_MAC, &mut keys.config_mac)
            .expect("32 bytes");
        keys
    }

    /// Seals `plain` with associated data `ad`: magic, random 192-bit nonce,
    /// ciphertext and tag.
    pub fn seal(&self, ad: &[u8], plain: &[u8]) -> Vec<u8> {
        seal_with(&self.seal, ad, plain)
    }

    /// Seals like [`DataKeys::seal`], but with a synthetic nonce (a MAC of
    /// `ad` and `plain` under a key derived from the sealing key), so the
    /// same plaintext under the same name always seals to the same bytes.
    /// For objects whose name must follow from their content across runs
    /// (`holdfast repair index`); it reveals only that two such objects are
    /// equal, which their equal names say anyway. Opened by [`DataKeys::open`].
    pub fn seal_deterministic(&self, ad: &[u8], plain: &[u8]) -> Vec<u8> {
        let nonce_key = mac(&self.seal, INFO_SYNTHETIC_NONCE);
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(&nonce_key).expect("any key length");
        m.update(&(ad.len() as u64).to_le_bytes());
        m.update(ad);
        m.update(plain);
        let full: [u8; 32] = m.finalize().into_bytes().into();
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&full[..NONCE_LEN]);
        seal_with_nonce(&self.seal, &nonce, ad, plain)
    }

    /// Opens what [`DataKeys::seal`] made under the same `ad`.
    pub fn open(&self, ad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, OpenError> {
        open_with(&self.seal, ad, sealed)
    }

    /// HMAC-SHA-256 of a chunk's plaintext under the chunk-id key.
    pub fn chunk_id(&self, plain: &[u8]) -> ChunkId {
        ChunkId(Hash256(mac(&self.chunk_id, plain)))
    }

    /// HMAC-SHA-256 of the config's bytes under the config MAC key.
    pub fn config_mac(&self, bytes: &[u8]) -> [u8; 32] {
        mac(&self.config_mac, bytes)
    }

    pub fn config_mac_matches(&self, bytes: &[u8], expected: &[u8]) -> bool {
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(&self.config_mac).expect("any length");
        m.update(bytes);
        m.verify_slice(expected).is_ok()
    }
}

fn mac(key: &[u8; 32], bytes: &[u8]) -> [u8; 32] {
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("any key length");
    m.update(bytes);
    m.finalize().into_bytes().into()
}

fn seal_with(key: &[u8; 32], ad: &[u8], plain: &[u8]) -> Vec<u8> {
    let mut nonce = [0u8; NONCE_LEN];
    getrandom::fill(&mut nonce).expect("the OS has a random source");
    seal_with_nonce(key, &nonce, ad, plain)
}

/// XChaCha20-Poly1305 as draft-irtf-cfrg-xchacha defines it: HChaCha20 of
/// the key and the nonce's first 16 bytes gives a subkey, then
/// ChaCha20-Poly1305 (RFC 8439) under it with the 96-bit nonce `0^4 ||` the
/// nonce's last 8 bytes. The AEAD itself runs in `ring` (BoringSSL's
/// assembly: about three times the RustCrypto crate's throughput here);
/// the bytes are the same (a unit test seals with one and opens with the
/// other, both ways).
fn xchacha(key: &[u8; 32], nonce: &[u8]) -> (ring::aead::LessSafeKey, ring::aead::Nonce) {
    use chacha20::cipher::consts::U10;
    let sub = chacha20::hchacha::<U10>(key.into(), nonce[..16].into());
    let aead = ring::aead::UnboundKey::new(&ring::aead::CHACHA20_POLY1305, &sub)
        .expect("a 32-byte ChaCha20-Poly1305 key");
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&nonce[16..NONCE_LEN]);
    (
        ring::aead::LessSafeKey::new(aead),
        ring::aead::Nonce::assume_unique_for_key(n),
    )
}

fn seal_with_nonce(key: &[u8; 32], nonce: &[u8; NONCE_LEN], ad: &[u8], plain: &[u8]) -> Vec<u8> {
    // Encrypted in place in the output (one copy of the plaintext, no
    // second buffer): magic, nonce, ciphertext, then the tag.
    let header = SEAL_MAGIC.len() + NONCE_LEN;
    let mut out = Vec::with_capacity(SEAL_OVERHEAD + plain.len());
    out.extend_from_slice(SEAL_MAGIC);
    out.extend_from_slice(nonce);
    out.extend_from_slice(plain);
    let (aead, n) = xchacha(key, nonce);
    let tag = aead
        .seal_in_place_separate_tag(n, ring::aead::Aad::from(ad), &mut out[header..])
        .expect("XChaCha20-Poly1305 seals any length we write");
    out.extend_from_slice(tag.as_ref());
    out
}

fn open_with(key: &[u8; 32], ad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, OpenError> {
    if sealed.len() < SEAL_OVERHEAD {
        return Err(OpenError::TooShort(sealed.len()));
    }
    if &sealed[..SEAL_MAGIC.len()] != SEAL_MAGIC {
        return Err(OpenError::Magic);
    }
    let header = SEAL_MAGIC.len() + NONCE_LEN;
    let (aead, n) = xchacha(key, &sealed[SEAL_MAGIC.len()..header]);
    let mut buf = sealed[header..].to_vec();
    let len = aead
        .open_in_place(n, ring::aead::Aad::from(ad), &mut buf)
        .map_err(|_| OpenError::Tag)?
        .len();
    buf.truncate(len);
    Ok(buf)
}

/// What a repository's objects are sealed with: its data keys, or nothing
/// under `encryption: none` (then sealing and opening pass bytes through and
/// chunk ids are plain SHA-256). Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct Crypto(Option<Arc<DataKeys>>);

impl Crypto {
    /// No encryption: `encryption: none` repositories.
    pub const fn none() -> Self {
        Crypto(None)
    }

    pub fn with_keys(keys: DataKeys) -> Self {
        Crypto(Some(Arc::new(keys)))
    }

    pub fn keys(&self) -> Option<&DataKeys> {
        self.0.as_deref()
    }

    pub fn is_encrypted(&self) -> bool {
        self.0.is_some()
    }

    /// The chunk id of `plain`: HMAC-SHA-256 in an encrypted repository,
    /// SHA-256 otherwise.
    pub fn chunk_id(&self, plain: &[u8]) -> ChunkId {
        match &self.0 {
            Some(k) => k.chunk_id(plain),
            None => ChunkId(Hash256::digest(plain)),
        }
    }

    /// Seals `plain` under `ad`, or passes it through unencrypted.
    pub fn seal(&self, ad: &str, plain: Vec<u8>) -> Vec<u8> {
        match &self.0 {
            Some(k) => k.seal(ad.as_bytes(), &plain),
            None => plain,
        }
    }

    /// [`Crypto::seal`] with a synthetic nonce (see
    /// [`DataKeys::seal_deterministic`]): equal inputs, equal bytes.
    pub fn seal_deterministic(&self, ad: &str, plain: Vec<u8>) -> Vec<u8> {
        match &self.0 {
            Some(k) => k.seal_deterministic(ad.as_bytes(), &plain),
            None => plain,
        }
    }

    /// Opens `sealed` under `ad`, or passes it through unencrypted.
    pub fn open<'a>(&self, ad: &str, sealed: &'a [u8]) -> Result<Cow<'a, [u8]>, OpenError> {
        match &self.0 {
            Some(k) => k.open(ad.as_bytes(), sealed).map(Cow::Owned),
            None => Ok(Cow::Borrowed(sealed)),
        }
    }

    /// Bytes sealing adds to an object.
    pub fn overhead(&self) -> usize {
        if self.0.is_some() {
            SEAL_OVERHEAD
        } else {
            0
        }
    }
}

/// The associated data of a content-addressed object: its key without the
/// trailing id (which is the SHA-256 of the sealed bytes, so cannot be in
/// them). `snapshots/app/20261203T040000.000Z-<id>` → `snapshots/app/20261203T040000.000Z-`.
pub fn content_addressed_ad(key: &str) -> &str {
    let cut = key.rfind(['/', '-']).map(|i| i + 1).unwrap_or(0);
    &key[..cut]
}

/// The associated data of a blob inside a pack.
pub fn blob_ad(id: &ChunkId) -> String {
    format!("chunk/{id}")
}

/// The associated data of a bundle (several small chunks compressed as one
/// frame). The bundle's own header, inside the sealed bytes, names its
/// chunks, so a bundle moved to another place still yields only the chunks
/// it holds.
pub const BUNDLE_AD: &str = "bundle/";

/// The associated data of a pack's trailer (a pack's name is the hash of its
/// bytes, so cannot be in them).
pub const PACK_TRAILER_AD: &str = "packs/";

// ---------------------------------------------------------------------------
// Passphrase wrapping (key objects)

/// How one key object turns its passphrase into a key-encryption key:
/// Argon2id for passphrases, or HKDF-SHA256 for a key holdfast generated
/// (256 random bits need no stretching; see [`crate::secret::generate_key`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KdfParams {
    /// `argon2id` or `hkdf-sha256`.
    pub algorithm: String,
    /// Argon2id's; 0 under `hkdf-sha256`.
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
    /// Hex.
    pub salt: String,
}

/// Caps on a key object's KDF parameters: a planted key object must not make
/// unlocking take gigabytes of memory or hours.
/// Four times the recommended memory and about three times its passes: room
/// for a stronger setting, and a planted key object costs an unlock at most
/// 256 MiB and a few seconds (of at most `MAX_KEY_OBJECTS` tried).
pub const MAX_KDF_MEMORY_KIB: u32 = 256 * 1024;
pub const MAX_KDF_ITERATIONS: u32 = 10;
pub const MAX_KDF_PARALLELISM: u32 = 16;

/// HKDF's info for a generated key's key-encryption key.
const INFO_GENERATED_KEK: &[u8] = b"holdfast generated key: key-encryption key";

fn fresh_salt() -> String {
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).expect("the OS has a random source");
    hex::encode(salt)
}

impl KdfParams {
    /// RFC 9106's second recommended option: Argon2id, 64 MiB, 3 passes, 1
    /// lane, with a fresh 16-byte salt.
    pub fn recommended() -> Self {
        KdfParams {
            algorithm: "argon2id".into(),
            memory_kib: 64 * 1024,
            iterations: 3,
            parallelism: 1,
            salt: fresh_salt(),
        }
    }

    /// HKDF-SHA256 with a fresh salt: for a key with 256 random bits, where
    /// stretching adds nothing an attacker would notice and costs every
    /// `archive_command` a fraction of a second.
    pub fn for_generated_key() -> Self {
        KdfParams {
            algorithm: "hkdf-sha256".into(),
            memory_kib: 0,
            iterations: 0,
            parallelism: 0,
            salt: fresh_salt(),
        }
    }

    /// The parameters for wrapping under `passphrase`: HKDF when it is a key
    /// holdfast generated, Argon2id otherwise.
    pub fn for_passphrase(passphrase: &str) -> Self {
        if crate::secret::is_generated_key(passphrase) {
            Self::for_generated_key()
        } else {
            Self::recommended()
        }
    }

    /// The parameters' problem, if a reader should refuse them.
    pub fn check(&self) -> Result<(), String> {
        match self.algorithm.as_str() {
            "argon2id" => {
                if !(8..=MAX_KDF_MEMORY_KIB).contains(&self.memory_kib)
                    || !(1..=MAX_KDF_ITERATIONS).contains(&self.iterations)
                    || !(1..=MAX_KDF_PARALLELISM).contains(&self.parallelism)
                {
                    return Err(format!(
                        "KDF parameters out of range (memory_kib {}, iterations {}, parallelism {}; at most {MAX_KDF_MEMORY_KIB}, {MAX_KDF_ITERATIONS}, {MAX_KDF_PARALLELISM})",
                        self.memory_kib, self.iterations, self.parallelism
                    ));
                }
            }
            "hkdf-sha256" => {
                if (self.memory_kib, self.iterations, self.parallelism) != (0, 0, 0) {
                    return Err(
                        "KDF hkdf-sha256 takes no memory_kib, iterations or parallelism (all 0)"
                            .into(),
                    );
                }
            }
            other => return Err(format!("unknown KDF `{other}`")),
        }
        match hex::decode(&self.salt) {
            Ok(s) if (16..=64).contains(&s.len()) => Ok(()),
            _ => Err("the KDF salt is not 16 to 64 bytes of hex".into()),
        }
    }

    /// The 32-byte key-encryption key for `passphrase`.
    pub fn derive(&self, passphrase: &[u8]) -> Result<Zeroizing<[u8; 32]>, String> {
        self.check()?;
        let salt = hex::decode(&self.salt).map_err(|e| e.to_string())?;
        let mut out = Zeroizing::new([0u8; 32]);
        if self.algorithm == "hkdf-sha256" {
            hkdf::Hkdf::<Sha256>::new(Some(&salt), passphrase)
                .expand(INFO_GENERATED_KEK, &mut *out)
                .expect("32 bytes");
            return Ok(out);
        }
        let params =
            argon2::Params::new(self.memory_kib, self.iterations, self.parallelism, Some(32))
                .map_err(|e| e.to_string())?;
        let argon =
            argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
        argon
            .hash_password_into(passphrase, &salt, &mut *out)
            .map_err(|e| e.to_string())?;
        Ok(out)
    }
}

/// The associated data binding a wrapped master secret to its repository.
fn wrap_ad(repository_id: &str) -> Vec<u8> {
    format!("holdfast-key/{repository_id}").into_bytes()
}

/// Wraps `master` under the key `kdf` derives from `passphrase`.
pub fn wrap(
    kdf: &KdfParams,
    passphrase: &[u8],
    repository_id: &str,
    master: &MasterSecret,
) -> Result<Vec<u8>, String> {
    let kek = kdf.derive(passphrase)?;
    Ok(seal_with(&kek, &wrap_ad(repository_id), &master.0))
}

/// Unwraps a master secret; `None` when the passphrase (or anything else)
/// does not fit.
pub fn unwrap(
    kdf: &KdfParams,
    passphrase: &[u8],
    repository_id: &str,
    wrapped: &[u8],
) -> Result<Option<MasterSecret>, String> {
    let kek = kdf.derive(passphrase)?;
    match open_with(&kek, &wrap_ad(repository_id), wrapped) {
        Ok(mut plain) => {
            let secret = MasterSecret::from_slice(&plain);
            plain.zeroize();
            Ok(secret)
        }
        Err(_) => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> DataKeys {
        DataKeys::derive(&MasterSecret::random(), "0123456789abcdef0123456789abcdef")
    }

    /// The bytes are the standard construction's: what the RustCrypto
    /// XChaCha20-Poly1305 seals opens here, and the other way round.
    #[test]
    fn sealing_is_standard_xchacha20_poly1305_both_ways() {
        use chacha20poly1305::aead::{Aead, KeyInit, Payload};
        use chacha20poly1305::{XChaCha20Poly1305, XNonce};
        let key = [7u8; 32];
        let reference = XChaCha20Poly1305::new((&key).into());
        for len in [0usize, 1, 63, 64, 65, 1000, 70_000] {
            let plain: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
            let ad = format!("packs/{len}");
            let sealed = seal_with(&key, ad.as_bytes(), &plain);
            let nonce = &sealed[SEAL_MAGIC.len()..SEAL_MAGIC.len() + NONCE_LEN];
            let body = &sealed[SEAL_MAGIC.len() + NONCE_LEN..];
            let opened = reference
                .decrypt(
                    XNonce::from_slice(nonce),
                    Payload {
                        msg: body,
                        aad: ad.as_bytes(),
                    },
                )
                .expect("the reference opens what we seal");
            assert_eq!(opened, plain);
            let mut theirs = SEAL_MAGIC.to_vec();
            theirs.extend_from_slice(nonce);
            theirs.extend(
                reference
                    .encrypt(
                        XNonce::from_slice(nonce),
                        Payload {
                            msg: &plain,
                            aad: ad.as_bytes(),
                        },
                    )
                    .unwrap(),
            );
            assert_eq!(theirs, sealed, "the same bytes for the same nonce");
            assert_eq!(open_with(&key, ad.as_bytes(), &theirs).unwrap(), plain);
            assert!(open_with(&key, b"packs/other", &theirs).is_err());
        }
    }

    #[test]
    fn sealed_bytes_open_under_their_own_name_only() {
        let k = keys();
        let sealed = k.seal(b"wal/app/000000010000000000000001", b"hello");
        assert_eq!(sealed.len(), 5 + SEAL_OVERHEAD);
        assert_eq!(
            k.open(b"wal/app/000000010000000000000001", &sealed)
                .unwrap(),
            b"hello"
        );
        assert_eq!(
            k.open(b"wal/app/000000010000000000000002", &sealed),
            Err(OpenError::Tag)
        );
        let mut flipped = sealed.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert_eq!(
            k.open(b"wal/app/000000010000000000000001", &flipped),
            Err(OpenError::Tag)
        );
        assert_eq!(k.open(b"x", &sealed[..10]), Err(OpenError::TooShort(10)));
        assert_eq!(k.open(b"x", &[0u8; 64]), Err(OpenError::Magic));
        // Another repository's keys do not open it.
        assert_eq!(
            keys().open(b"wal/app/000000010000000000000001", &sealed),
            Err(OpenError::Tag)
        );
    }

    #[test]
    fn every_seal_draws_a_fresh_nonce() {
        let k = keys();
        let mut nonces = std::collections::HashSet::new();
        for _ in 0..10_000 {
            let s = k.seal(b"ad", b"same plaintext");
            assert!(
                nonces.insert(s[4..4 + NONCE_LEN].to_vec()),
                "nonce repeated"
            );
        }
    }

    #[test]
    fn chunk_ids_are_keyed_per_repository() {
        let (a, b) = (keys(), keys());
        assert_eq!(a.chunk_id(b"data"), a.chunk_id(b"data"));
        assert_ne!(a.chunk_id(b"data"), b.chunk_id(b"data"));
        assert_ne!(a.chunk_id(b"data").0, Hash256::digest(b"data"));
        assert_eq!(Crypto::none().chunk_id(b"data").0, Hash256::digest(b"data"));
    }

    #[test]
    fn the_same_master_secret_derives_the_same_keys_only_for_its_repository() {
        let m = MasterSecret::random();
        let a = DataKeys::derive(&m, "aa");
        let sealed = a.seal(b"ad", b"x");
        assert_eq!(
            DataKeys::derive(&m, "aa").open(b"ad", &sealed).unwrap(),
            b"x"
        );
        assert!(DataKeys::derive(&m, "bb").open(b"ad", &sealed).is_err());
    }

    #[test]
    fn a_wrapped_master_secret_opens_with_its_passphrase_and_repository_only() {
        // Small parameters: the wrapping logic, not Argon2's cost, is under test.
        let kdf = KdfParams {
            memory_kib: 64,
            iterations: 1,
            ..KdfParams::recommended()
        };
        let m = MasterSecret::random();
        let wrapped = wrap(&kdf, b"correct horse", "repo1", &m).unwrap();
        let got = unwrap(&kdf, b"correct horse", "repo1", &wrapped)
            .unwrap()
            .unwrap();
        assert_eq!(got.0, m.0);
        assert!(unwrap(&kdf, b"wrong horse", "repo1", &wrapped)
            .unwrap()
            .is_none());
        assert!(unwrap(&kdf, b"correct horse", "repo2", &wrapped)
            .unwrap()
            .is_none());
        let huge = KdfParams {
            memory_kib: u32::MAX,
            ..kdf.clone()
        };
        assert!(huge.derive(b"x").unwrap_err().contains("out of range"));
    }

    #[test]
    fn content_addressed_names_lose_only_their_id() {
        assert_eq!(
            content_addressed_ad("snapshots/app/20261203T040000.000Z-abcd"),
            "snapshots/app/20261203T040000.000Z-"
        );
        assert_eq!(content_addressed_ad("index/abcd"), "index/");
        assert_eq!(
            content_addressed_ad("prunes/20261203T040000.000Z-abcd"),
            "prunes/20261203T040000.000Z-"
        );
    }

    #[test]
    fn a_generated_key_is_wrapped_under_hkdf_and_a_passphrase_under_argon2id() {
        let generated = crate::secret::generate_key();
        assert!(crate::secret::is_generated_key(&generated), "{generated}");
        for not in [
            "correct horse battery staple",
            &generated[..generated.len() - 1],
            &generated.to_uppercase(),
            &format!("{generated}0"),
            &generated.replace("hfkey1-", "hfkey2-"),
        ] {
            assert!(!crate::secret::is_generated_key(not), "{not}");
            assert_eq!(KdfParams::for_passphrase(not).algorithm, "argon2id");
        }
        let kdf = KdfParams::for_passphrase(&generated);
        assert_eq!(kdf.algorithm, "hkdf-sha256");
        kdf.check().unwrap();
        let master = MasterSecret::random();
        let rid = "0123456789abcdef0123456789abcdef";
        let wrapped = wrap(&kdf, generated.as_bytes(), rid, &master).unwrap();
        let opened = unwrap(&kdf, generated.as_bytes(), rid, &wrapped).unwrap();
        assert!(opened.is_some_and(|m| m.0 == master.0));
        // Another key, another salt, another repository: nothing opens.
        let other = crate::secret::generate_key();
        assert!(unwrap(&kdf, other.as_bytes(), rid, &wrapped)
            .unwrap()
            .is_none());
        let resalted = KdfParams::for_generated_key();
        assert!(unwrap(&resalted, generated.as_bytes(), rid, &wrapped)
            .unwrap()
            .is_none());
        let elsewhere = "fedcba9876543210fedcba9876543210";
        assert!(unwrap(&kdf, generated.as_bytes(), elsewhere, &wrapped)
            .unwrap()
            .is_none());
    }

    #[test]
    fn kdf_parameters_a_reader_refuses() {
        let mut hk = KdfParams::for_generated_key();
        hk.memory_kib = 65536;
        assert!(hk.check().unwrap_err().contains("hkdf-sha256"));
        let mut short = KdfParams::for_generated_key();
        short.salt = "00".repeat(8);
        assert!(short.check().unwrap_err().contains("salt"));
        let mut unknown = KdfParams::recommended();
        unknown.algorithm = "pbkdf2".into();
        assert!(unknown
            .check()
            .unwrap_err()
            .contains("unknown KDF `pbkdf2`"));
        let mut big = KdfParams::recommended();
        big.memory_kib = MAX_KDF_MEMORY_KIB + 1;
        assert!(big.check().unwrap_err().contains("out of range"));
        let mut zero = KdfParams::recommended();
        zero.iterations = 0;
        assert!(zero.check().is_err());
    }

    #[test]
    fn recommended_kdf_is_rfc_9106_second_option() {
        let k = KdfParams::recommended();
        assert_eq!((k.memory_kib, k.iterations, k.parallelism), (65536, 3, 1));
        k.check().unwrap();
    }
}
