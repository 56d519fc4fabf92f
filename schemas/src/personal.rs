//! Personal data in messages: how a sealed field looks on the wire.
//!
//! A user's name and email address never travel in the clear. Each is sealed with a key
//! of that user's own, kept outside the log, into a text of the form
//! `pii1:<user id>:<base64url of nonce, ciphertext and tag>`; forgetting the user destroys
//! the key, and every copy of the text (the log, snapshots, read models, backups of them)
//! becomes noise while the rest of each record still reads. Sealing and opening live with
//! the keys (`service_runtime::personal_data`); this module only knows the format, so that
//! the pure domain can check a field is sealed for the right user.
//!
//! Addresses must also stay unique among users, which needs a stable id per address: the
//! email claim's id is a keyed hash of the address (a blind index), never the address.

use uuid::Uuid;

/// The prefix of a sealed text, naming its format (AES-256-GCM, see the module docs).
pub const SEALED_PREFIX: &str = "pii1:";

/// What a reader shows in place of a field whose user was forgotten.
pub const FORGOTTEN: &str = "[forgotten]";

/// A sealed field, parsed: whose key opens it, and the sealed bytes in base64url.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SealedText<'a> {
    pub subject: Uuid,
    pub sealed: &'a str,
}

impl<'a> SealedText<'a> {
    /// The parts of `text` when it is a sealed field; `None` for any other text.
    pub fn parse(text: &'a str) -> Option<Self> {
        let rest = text.strip_prefix(SEALED_PREFIX)?;
        let (subject, sealed) = rest.split_once(':')?;
        // The hyphenated form only: one text per subject.
        if subject.len() != 36 {
            return None;
        }
        let subject = Uuid::parse_str(subject).ok()?;
        let base64url = |b: u8| b.is_ascii_alphanumeric() || b == b'-' || b == b'_';
        if sealed.is_empty() || !sealed.bytes().all(base64url) {
            return None;
        }
        Some(Self { subject, sealed })
    }

    /// Whether `text` is a field sealed for `subject`.
    pub fn is_sealed_for(text: &str, subject: Uuid) -> bool {
        SealedText::parse(text).is_some_and(|s| s.subject == subject)
    }
}

/// The associated data a sealed field is bound to: a text sealed for one user does not
/// open as another's.
pub fn associated_data(subject: Uuid) -> String {
    format!("{SEALED_PREFIX}{subject}")
}

/// Whether `text` is an email claim id as this version makes them: the hex HMAC-SHA256 of
/// the normalized address (claims recorded before blind indexes are keyed by the address).
pub fn is_claim_id(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_field_names_its_subject() {
        let subject = Uuid::now_v7();
        let text = format!("pii1:{subject}:AAEC_-z9");
        let parsed = SealedText::parse(&text).expect("sealed");
        assert_eq!(parsed.subject, subject);
        assert_eq!(parsed.sealed, "AAEC_-z9");
        assert!(SealedText::is_sealed_for(&text, subject));
        assert!(!SealedText::is_sealed_for(&text, Uuid::now_v7()));
    }

    #[test]
    fn plain_text_is_not_sealed() {
        let subject = Uuid::now_v7();
        for text in [
            "ada@example.com".to_owned(),
            "pii1:".to_owned(),
            format!("pii1:{subject}:"),
            format!("pii1:{subject}:not base64!"),
            format!("pii1:{}:AAAA", subject.simple()),
            format!("pii2:{subject}:AAAA"),
        ] {
            assert_eq!(SealedText::parse(&text), None, "{text}");
        }
    }

    #[test]
    fn claim_ids_are_lower_case_hex_digests() {
        assert!(is_claim_id(&"ab".repeat(32)));
        assert!(!is_claim_id(&"AB".repeat(32)));
        assert!(!is_claim_id("ada@example.com"));
    }
}
