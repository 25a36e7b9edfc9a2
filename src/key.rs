//! Raw API keys: minting from the OS CSPRNG, their SHA-256 id, and a type that cannot leak.
//!
//! `RawKey` has no `Display` and a redacting `Debug`, so a raw key cannot reach a log line, an
//! Event or status by accident; the only way out is [`RawKey::expose`].

use sha2::{Digest, Sha256};
use std::fmt;

#[derive(Clone, PartialEq, Eq)]
pub struct RawKey(String);

impl RawKey {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// Mints `prefix` + hex of `random_bytes` bytes from the operating system's CSPRNG.
    pub fn mint(prefix: &str, random_bytes: usize) -> Result<Self, getrandom::Error> {
        let mut bytes = vec![0u8; random_bytes];
        getrandom::fill(&mut bytes)?;
        Ok(Self(format!("{prefix}{}", hex::encode(bytes))))
    }

    /// Lowercase hex SHA-256 of the raw key bytes: Sirius's record id.
    pub fn id(&self) -> KeyId {
        KeyId(hex::encode(Sha256::digest(self.0.as_bytes())))
    }

    /// The raw value, for writing into a Secret or a Valkey lookup only.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Sirius's display prefix: for `sk_` keys the first 11 characters plus `...`, other keys
    /// the first 8 plus `...`; a key of 8 characters or fewer is stored whole.
    pub fn display_prefix(&self) -> String {
        let k = &self.0;
        let take = if k.starts_with("sk_") { 11 } else { 8 };
        if k.chars().count() <= 8 {
            return k.clone();
        }
        let head: String = k.chars().take(take).collect();
        format!("{head}...")
    }
}

impl fmt::Debug for RawKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RawKey(id={})", self.id().short())
    }
}

/// The SHA-256 id of a key: safe to log, store and show.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(pub String);

impl KeyId {
    /// An id as Sirius accepts one (`^[a-f0-9]{64}$`), e.g. read back from a status.
    pub fn parse(text: &str) -> Option<Self> {
        (text.len() == 64 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
            .then(|| KeyId(text.to_string()))
    }
    /// The first 12 characters (ids are ASCII hex; anything else is cut at a character boundary).
    pub fn short(&self) -> &str {
        let end = self
            .0
            .char_indices()
            .nth(12)
            .map_or(self.0.len(), |(i, _)| i);
        &self.0[..end]
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minted_keys_have_the_sirius_format_and_differ() {
        let a = RawKey::mint("sk_", 32).unwrap();
        let b = RawKey::mint("sk_", 32).unwrap();
        assert_eq!(a.expose().len(), 67);
        assert!(a.expose().starts_with("sk_"));
        assert!(
            a.expose()[3..]
                .chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        );
        assert_ne!(a, b);
    }

    #[test]
    fn id_is_lowercase_sha256_hex_of_the_raw_bytes() {
        // sha256("abc")
        let id = RawKey::new("abc").id();
        assert_eq!(
            id.as_str(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn display_prefix_follows_the_contract() {
        assert_eq!(
            RawKey::new(format!("sk_1a2b3c4d{}", "0".repeat(56))).display_prefix(),
            "sk_1a2b3c4d..."
        );
        assert_eq!(
            RawKey::new("0123456789abcdef").display_prefix(),
            "01234567..."
        );
        assert_eq!(RawKey::new("short").display_prefix(), "short");
        assert_eq!(RawKey::new("12345678").display_prefix(), "12345678");
    }

    #[test]
    fn debug_never_shows_the_raw_key() {
        let k = RawKey::new("sk_secretsecret");
        assert!(!format!("{k:?}").contains("secretsecret"));
    }
}
