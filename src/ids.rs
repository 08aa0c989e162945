//! Typed identifiers: every object in a repository is named by the SHA-256 of
//! what it holds, and these newtypes keep a chunk id from being mistaken for a
//! pack id or a snapshot id.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};

/// A SHA-256 digest, shown and serialised as 64 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Hash256(pub [u8; 32]);

impl Hash256 {
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

impl FromStr for Hash256 {
    type Err = BadId;
    fn from_str(s: &str) -> Result<Self, BadId> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).map_err(|_| BadId(s.to_string()))?;
        Ok(Hash256(out))
    }
}

impl Serialize for Hash256 {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for Hash256 {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
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
    fn hex_round_trip() {
        let h = Hash256::digest(b"holdfast");
        let back: Hash256 = h.to_hex().parse().unwrap();
        assert_eq!(h, back);
        assert_eq!(h.short().len(), 8);
        assert!("xyz".parse::<Hash256>().is_err());
    }
}
