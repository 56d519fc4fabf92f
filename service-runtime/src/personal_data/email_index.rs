//! The blind index of an email address: the id of its claim, which the log keeps instead
//! of the address. HMAC-SHA256 under the deployment's `EMAIL_INDEX_KEY`, so that whoever
//! reads the log cannot confirm a guessed address without that secret. The key must never
//! change: claims made under another key would not meet, and one address could be held by
//! two users.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::settings::{Env, Setting, SettingError};

pub const EMAIL_INDEX_KEY: Setting = Setting {
    name: "EMAIL_INDEX_KEY",
    default: Some(""),
    help: "secret (base64, 32 bytes or more) hashing email addresses into the claim ids the log keeps; set once, never change it (empty: a development key anyone can know, with a warning at start); `shopctl email-index-key` makes one",
};

/// The key of the development stack: public, so that the local stack needs no secret.
const DEVELOPMENT_KEY: &[u8] = b"shop development email index key (public; set EMAIL_INDEX_KEY)";

/// The hash keying addresses. Its `Debug` shows nothing of the key.
#[derive(Clone)]
pub struct EmailIndex {
    key: Vec<u8>,
    development: bool,
}

impl std::fmt::Debug for EmailIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmailIndex")
            .field("development", &self.development)
            .finish_non_exhaustive()
    }
}

impl EmailIndex {
    /// From `EMAIL_INDEX_KEY`: base64 of at least 32 bytes, or empty for the development key.
    pub fn from_env(env: &Env) -> Result<Self, SettingError> {
        let text = env.text(&EMAIL_INDEX_KEY)?;
        let text = text.trim();
        if text.is_empty() {
            return Ok(Self::development());
        }
        let invalid = |reason: &str| SettingError::Invalid {
            name: EMAIL_INDEX_KEY.name,
            value: "(secret)".into(),
            reason: reason.into(),
        };
        let key = STANDARD
            .decode(text)
            .map_err(|_| invalid("not base64 (make one with `shopctl email-index-key`)"))?;
        if key.len() < 32 {
            return Err(invalid("shorter than 32 bytes"));
        }
        Ok(Self {
            key,
            development: false,
        })
    }

    /// The public development key.
    pub fn development() -> Self {
        Self {
            key: DEVELOPMENT_KEY.to_vec(),
            development: true,
        }
    }

    /// Whether this is the public development key (services warn at start).
    pub fn is_development(&self) -> bool {
        self.development
    }

    /// A new key for `EMAIL_INDEX_KEY`: 32 random bytes in base64.
    pub fn new_key() -> String {
        let mut key = [0; 32];
        openssl::rand::rand_bytes(&mut key).expect("OpenSSL's random generator works");
        STANDARD.encode(key)
    }

    /// The claim id of a normalized address: its HMAC-SHA256 in lower-case hex.
    pub fn claim_id(&self, normalized_address: &str) -> String {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes keys of any length");
        mac.update(normalized_address.as_bytes());
        hex::encode(mac.finalize().into_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index(key: &str) -> Result<EmailIndex, SettingError> {
        EmailIndex::from_env(&Env::from_pairs([("EMAIL_INDEX_KEY", key)]))
    }

    #[test]
    fn a_claim_id_depends_on_the_address_and_the_key() {
        let ours = index(&EmailIndex::new_key()).expect("valid");
        let theirs = index(&EmailIndex::new_key()).expect("valid");
        let id = ours.claim_id("ada@example.com");
        assert!(schemas::personal::is_claim_id(&id), "{id}");
        assert_eq!(id, ours.claim_id("ada@example.com"));
        assert_ne!(id, ours.claim_id("bob@example.com"));
        assert_ne!(id, theirs.claim_id("ada@example.com"));
    }

    #[test]
    fn a_weak_or_malformed_key_is_refused_and_none_is_the_development_key() {
        assert!(index("not base64!").is_err());
        assert!(index("c2hvcnQ=").is_err());
        assert!(index("").expect("development").is_development());
        let shown = format!("{:?}", index(&EmailIndex::new_key()).expect("valid"));
        assert_eq!(shown, "EmailIndex { development: false, .. }");
    }
}
