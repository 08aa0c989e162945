//! Typed identifiers: every object in a repository is named by the SHA-256 of
//! what it holds, and these newtypes keep a chunk id from being mistaken for a
//! pack id or a snapshot id.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};

/// The hasher of the maps keyed by chunk id, which hold an entry a
/// chunk (an 8 KiB page of a database): foldhash, seeded at random for each
/// process and each table, in place of std's SipHash. Those ids come from
/// the repository, where an insider can add any (`docs/repository-format.md`,
/// *Candidate locations*), so a hash of only their first bytes would let
/// them collide on purpose; foldhash hashes all 32 bytes under secrets the
/// process never shows, and whoever writes the ids cannot watch the process
/// that reads them.
pub type ChunkHasher = foldhash::fast::RandomState;
/// A map keyed by chunk id (see [`ChunkHasher`]).
pub type ChunkMap<V> = std::collections::HashMap<ChunkId, V, ChunkHasher>;

/// A SHA-256 digest, shown and serialised as 64 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Hash256(pub [u8; 32]);

/// The bytes' order, compared as two big-endian 128-bit numbers (the same
/// order, without a call to `memcmp` for each comparison: sorting and
/// searching chunk ids compares them millions of times).
impl Ord for Hash256 {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        let half = |h: &Hash256, i: usize| {
            u128::from_be_bytes(h.0[i * 16..(i + 1) * 16].try_into().expect("16 bytes"))
        };
        half(self, 0)
            .cmp(&half(other, 0))
            .then_with(|| half(self, 1).cmp(&half(other, 1)))
    }
}

impl PartialOrd for Hash256 {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Hash256 {
    /// The first 8 bytes as a big-endian number: ordered as the ids are.
    pub fn prefix(&self) -> u64 {
        u64::from_be_bytes(self.0[..8].try_into().expect("8 bytes"))
    }

    pub fn digest(data: &[u8]) -> Self {
        Hash256(Sha256::digest(data).into())
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The first 8 hex digits, as `holdfast snapshots` shows them.
    pub fn short(&self) -> String {
        hex::encode(&self.0[..4])
    }
}

impl fmt::Display for Hash256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Hash256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}…", &self.to_hex()[..12])
    }
}

#[derive(Debug, thiserror::Error)]
#[error("`{0}` is not a SHA-256 id (expected 64 hex digits)")]
pub struct BadId(pub String);

/// Each ASCII byte's value as a hex digit, 0xff for a byte that is none.
const NIBBLE: [u8; 256] = {
    let mut t = [0xffu8; 256];
    let mut i = 0;
    while i < 10 {
        t[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        t[b'a' as usize + i] = 10 + i as u8;
        t[b'A' as usize + i] = 10 + i as u8;
        i += 1;
    }
    t
};

impl FromStr for Hash256 {
    type Err = BadId;
    /// 64 hex digits (either case). By table: manifests and index objects
    /// hold one id per chunk, and a restore parses them all.
    fn from_str(s: &str) -> Result<Self, BadId> {
        let digits = s.as_bytes();
        let bad = || BadId(s.chars().take(80).collect());
        if digits.len() != 64 {
            return Err(bad());
        }
        let mut out = [0u8; 32];
        let mut invalid = 0u8;
        for (o, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
            let (hi, lo) = (NIBBLE[pair[0] as usize], NIBBLE[pair[1] as usize]);
            invalid |= hi | lo;
            *o = (hi << 4) | (lo & 0x0f);
        }
        if invalid & 0xf0 != 0 {
            return Err(bad());
        }
        Ok(Hash256(out))
    }
}

impl Serialize for Hash256 {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // On the stack: a manifest or index serialises one id per chunk.
        let mut buf = [0u8; 64];
        hex::encode_to_slice(self.0, &mut buf).expect("64 digits for 32 bytes");
        s.serialize_str(std::str::from_utf8(&buf).expect("hex digits are ASCII"))
    }
}

impl<'de> Deserialize<'de> for Hash256 {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        /// Decodes the digits where the parser holds them: no `String` per
        /// id (a manifest or index holds one per chunk).
        struct Digits;
        impl serde::de::Visitor<'_> for Digits {
            type Value = Hash256;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a SHA-256 id (64 hex digits)")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Hash256, E> {
                s.parse().map_err(E::custom)
            }
        }
        d.deserialize_str(Digits)
    }
}

macro_rules! typed_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub Hash256);

        impl $name {
            pub fn to_hex(&self) -> String {
                self.0.to_hex()
            }
            pub fn short(&self) -> String {
                self.0.short()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), self.0)
            }
        }

        impl FromStr for $name {
            type Err = BadId;
            fn from_str(s: &str) -> Result<Self, BadId> {
                Ok($name(s.parse()?))
            }
        }
    };
}

typed_id!(
    /// SHA-256 of a chunk's uncompressed bytes (a keyed hash once encryption exists).
    ChunkId
);
typed_id!(
    /// SHA-256 of a pack object's stored bytes.
    PackId
);
typed_id!(
    /// SHA-256 of an index object's stored bytes.
    IndexId
);
typed_id!(
    /// SHA-256 of a snapshot manifest's stored bytes.
    SnapshotId
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_ordered_as_their_bytes_are() {
        let mut seed = 3u64;
        let mut byte = || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            // Few values, so that long common beginnings occur.
            ((seed >> 33) % 3) as u8
        };
        for _ in 0..5000 {
            let (mut a, mut b) = ([0u8; 32], [0u8; 32]);
            a.iter_mut().for_each(|x| *x = byte());
            b.iter_mut().for_each(|x| *x = byte());
            if byte() == 0 {
                b[..20].copy_from_slice(&a[..20]);
            }
            assert_eq!(Hash256(a).cmp(&Hash256(b)), a.cmp(&b), "{a:?} {b:?}");
            assert_eq!(
                Hash256(a).prefix().cmp(&Hash256(b).prefix()),
                a[..8].cmp(&b[..8])
            );
        }
    }

    #[test]
    fn hex_round_trip() {
        let h = Hash256::digest(b"holdfast");
        let back: Hash256 = h.to_hex().parse().unwrap();
        assert_eq!(h, back);
        assert_eq!(h.short().len(), 8);
        assert!("xyz".parse::<Hash256>().is_err());
        // Either case reads; every other byte, anywhere, and any other
        // length is refused.
        assert_eq!(h.to_hex().to_uppercase().parse::<Hash256>().unwrap(), h);
        let hex = h.to_hex();
        for at in 0..64 {
            for bad in ['g', 'G', '/', ':', '@', '`', ' ', 'é'] {
                let mut s: Vec<char> = hex.chars().collect();
                s[at] = bad;
                let s: String = s.into_iter().collect();
                assert!(s.parse::<Hash256>().is_err(), "{s}");
            }
        }
        for len in [0, 63, 65, 128] {
            assert!("a".repeat(len).parse::<Hash256>().is_err());
        }
        // Through serde: a string, not a number, and the same errors.
        let json = format!("\"{hex}\"");
        assert_eq!(serde_json::from_str::<Hash256>(&json).unwrap(), h);
        assert_eq!(serde_json::to_string(&h).unwrap(), json);
        assert!(serde_json::from_str::<Hash256>("12").is_err());
        assert!(serde_json::from_str::<Hash256>("\"zz\"")
            .unwrap_err()
            .to_string()
            .contains("is not a SHA-256 id"));
    }
}
