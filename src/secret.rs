//! A credential that never prints: shared by plans (which read it) and stores
//! (which hand it to a client library), so neither depends on the other.

use std::fmt;

use serde::{Serialize, Serializer};

/// A credential. Debug, Display and Serialize all print `***`; only
/// [`Secret::expose`] gives the value, so every use is greppable.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The value, for handing to a client library. Never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// The prefix of a key holdfast generates: `hfkey1-` and 64 lowercase hex
/// digits (256 random bits).
pub const GENERATED_KEY_PREFIX: &str = "hfkey1-";

/// A fresh key for a key file: [`GENERATED_KEY_PREFIX`] and 32 random bytes
/// as hex. Key objects for a key of this form are wrapped under HKDF, not
/// Argon2id: 256 random bits cannot be guessed, stretched or not, and every
/// `archive_command` and `restore_command` (one process each) is spared an
/// Argon2id run. Write a key of this form only from a random source.
pub fn generate_key() -> String {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the OS has a random source");
    format!("{GENERATED_KEY_PREFIX}{}", hex::encode(bytes))
}

/// Whether `key` has the form of [`generate_key`]'s keys.
pub fn is_generated_key(key: &str) -> bool {
    key.strip_prefix(GENERATED_KEY_PREFIX).is_some_and(|h| {
        h.len() == 64
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// Percent-encodes everything but RFC 3986's unreserved characters: a
/// password put into a URL's userinfo, where a raw `/`, `?`, `@` or `:`
/// would move the rest of it into the host, port or database name.
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("***")
    }
}

/// Undoes URL percent-encoding (`%40` → `@`); a `%` not followed by two hex
/// digits stays as it is.
pub fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("");
            if let Ok(v) = u8::from_str_radix(hex, 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
