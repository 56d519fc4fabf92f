//! Sealing one field: AES-256-GCM under the user's key, a fresh 96-bit nonce per field,
//! bound to the user's id (a field sealed for one user does not open as another's), written
//! as `pii1:<user id>:<base64url(nonce | ciphertext | tag)>` (see [`schemas::personal`]).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use openssl::symm::{Cipher, decrypt_aead, encrypt_aead};
use schemas::personal::{SEALED_PREFIX, SealedText, associated_data};
use uuid::Uuid;

const NONCE: usize = 12;
const TAG: usize = 16;

/// A user's key: 32 random bytes. Its `Debug` shows nothing of it.
#[derive(Clone, PartialEq, Eq)]
pub struct SubjectKey([u8; 32]);

impl std::fmt::Debug for SubjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SubjectKey(..)")
    }
}

impl SubjectKey {
    /// A fresh key from OpenSSL's random generator.
    pub fn generate() -> Self {
        let mut key = [0; 32];
        openssl::rand::rand_bytes(&mut key).expect("OpenSSL's random generator works");
        Self(key)
    }

    /// The key in `bytes`, when they are 32.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        bytes.try_into().ok().map(Self)
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// `plain`, sealed for `subject` under this key.
    pub fn seal(&self, subject: Uuid, plain: &str) -> String {
        let mut nonce = [0; NONCE];
        openssl::rand::rand_bytes(&mut nonce).expect("OpenSSL's random generator works");
        let mut tag = [0; TAG];
        let aad = associated_data(subject);
        let sealed = encrypt_aead(
            Cipher::aes_256_gcm(),
            &self.0,
            Some(&nonce),
            aad.as_bytes(),
            plain.as_bytes(),
            &mut tag,
        )
        .expect("AES-256-GCM encrypts any input");
        let mut bytes = Vec::with_capacity(NONCE + sealed.len() + TAG);
        bytes.extend_from_slice(&nonce);
        bytes.extend_from_slice(&sealed);
        bytes.extend_from_slice(&tag);
        format!("{SEALED_PREFIX}{subject}:{}", URL_SAFE_NO_PAD.encode(bytes))
    }

    /// The clear text of `sealed`; `None` when it was not sealed under this key for this
    /// subject, or was altered.
    pub fn open(&self, sealed: &SealedText<'_>) -> Option<String> {
        let bytes = URL_SAFE_NO_PAD.decode(sealed.sealed).ok()?;
        if bytes.len() < NONCE + TAG {
            return None;
        }
        let (nonce, rest) = bytes.split_at(NONCE);
        let (ciphertext, tag) = rest.split_at(rest.len() - TAG);
        let aad = associated_data(sealed.subject);
        let plain = decrypt_aead(
            Cipher::aes_256_gcm(),
            &self.0,
            Some(nonce),
            aad.as_bytes(),
            ciphertext,
            tag,
        )
        .ok()?;
        String::from_utf8(plain).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(key: &SubjectKey, text: &str) -> Option<String> {
        key.open(&SealedText::parse(text).expect("a sealed text"))
    }

    #[test]
    fn a_sealed_field_opens_with_its_key_only() {
        let (key, user) = (SubjectKey::generate(), Uuid::now_v7());
        let sealed = key.seal(user, "Ada Lovelace");
        assert!(SealedText::is_sealed_for(&sealed, user), "{sealed}");
        assert!(!sealed.contains("Ada"));
        assert_eq!(open(&key, &sealed).as_deref(), Some("Ada Lovelace"));
        assert_eq!(open(&SubjectKey::generate(), &sealed), None);
    }

    #[test]
    fn the_same_value_seals_differently_each_time() {
        let (key, user) = (SubjectKey::generate(), Uuid::now_v7());
        assert_ne!(
            key.seal(user, "ada@example.com"),
            key.seal(user, "ada@example.com")
        );
    }

    #[test]
    fn a_field_moved_to_another_user_does_not_open() {
        let (key, ada, bob) = (SubjectKey::generate(), Uuid::now_v7(), Uuid::now_v7());
        let sealed = key.seal(ada, "ada@example.com");
        let moved = sealed.replace(&ada.to_string(), &bob.to_string());
        assert_eq!(open(&key, &moved), None);
    }

    #[test]
    fn an_altered_field_does_not_open() {
        let (key, user) = (SubjectKey::generate(), Uuid::now_v7());
        let sealed = key.seal(user, "ada@example.com");
        let last = sealed.chars().last().expect("not empty");
        let flipped = if last == 'A' { 'B' } else { 'A' };
        let altered = format!("{}{flipped}", &sealed[..sealed.len() - 1]);
        assert_eq!(open(&key, &altered), None);
        let cut = &sealed[..sealed.len() - 8];
        assert_eq!(open(&key, cut), None);
    }
}
