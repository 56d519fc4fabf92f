//! Values parsed once at the edge ("parse, don't validate"): a `PersonName` or an
//! `EmailAddress` in hand is valid. The aggregates parse again what they decide on, since
//! commands also arrive from the command topic, not only through HTTP.

use std::fmt;

/// A display name: 1 to 100 characters after trimming, no control characters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PersonName(String);

/// Why a name is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("must not be empty")]
    Empty,
    #[error("must be at most 100 characters")]
    TooLong,
    #[error("must not contain control characters")]
    ControlCharacter,
}

impl PersonName {
    pub const MAX_CHARS: usize = 100;

    pub fn parse(raw: &str) -> Result<Self, NameError> {
        let trimmed = raw.trim();
        if trimmed.is_empty() {
            return Err(NameError::Empty);
        }
        if trimmed.chars().count() > Self::MAX_CHARS {
            return Err(NameError::TooLong);
        }
        if trimmed.chars().any(char::is_control) {
            return Err(NameError::ControlCharacter);
        }
        Ok(Self(trimmed.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An email address, normalized: trimmed and lower-cased (addresses are compared
/// case-insensitively for uniqueness). ASCII only: internationalized addresses are refused.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct EmailAddress(String);

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EmailError {
    #[error("must be an email address like name@example.com")]
    Syntax,
    #[error("must be at most 254 characters")]
    TooLong,
}

impl EmailAddress {
    pub fn parse(raw: &str) -> Result<Self, EmailError> {
        let normalized = raw.trim().to_ascii_lowercase();
        if normalized.len() > 254 {
            return Err(EmailError::TooLong);
        }
        let (local, domain) = normalized.split_once('@').ok_or(EmailError::Syntax)?;
        if valid_local(local) && valid_domain(domain) {
            Ok(Self(normalized))
        } else {
            Err(EmailError::Syntax)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// RFC 5322 dot-atom: atext runs separated by single dots, at most 64 characters.
fn valid_local(local: &str) -> bool {
    const SPECIALS: &[u8] = b"!#$%&'*+/=?^_`{|}~-";
    !local.is_empty()
        && local.len() <= 64
        && local.split('.').all(|atom| {
            !atom.is_empty()
                && atom
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || SPECIALS.contains(&b))
        })
}

/// At least two labels of letters, digits and inner hyphens; an alphabetic top level.
fn valid_domain(domain: &str) -> bool {
    let labels: Vec<&str> = domain.split('.').collect();
    let label_ok = |l: &&str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    labels.len() >= 2
        && labels.iter().all(label_ok)
        && labels
            .last()
            .is_some_and(|tld| tld.len() >= 2 && tld.bytes().all(|b| b.is_ascii_alphabetic()))
}

impl fmt::Display for EmailAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_trimmed_and_bounded() {
        assert_eq!(
            PersonName::parse("  Ada Lovelace ").unwrap().as_str(),
            "Ada Lovelace"
        );
        assert_eq!(PersonName::parse("   "), Err(NameError::Empty));
        assert_eq!(
            PersonName::parse(&"é".repeat(100)).map(|n| n.0.chars().count()),
            Ok(100)
        );
        assert_eq!(PersonName::parse(&"é".repeat(101)), Err(NameError::TooLong));
        assert_eq!(
            PersonName::parse("Ada\u{0}"),
            Err(NameError::ControlCharacter)
        );
        assert_eq!(PersonName::parse("A\nB"), Err(NameError::ControlCharacter));
    }

    #[test]
    fn emails_are_normalized_and_checked() {
        assert_eq!(
            EmailAddress::parse("  Ada.Lovelace+shop@Example.ORG ")
                .unwrap()
                .as_str(),
            "ada.lovelace+shop@example.org"
        );
        for bad in [
            "",
            "ada",
            "ada@",
            "@example.com",
            "ada@example",
            "ada@@example.com",
            "a..b@example.com",
            ".ada@example.com",
            "ada@-example.com",
            "ada@example.c0m",
            "ada lovelace@example.com",
            "adä@example.com",
            "ada@exa_mple.com",
            "'; DROP TABLE users; --@example.com",
        ] {
            assert!(EmailAddress::parse(bad).is_err(), "{bad:?} accepted");
        }
        let long = format!("{}@example.com", "a".repeat(250));
        assert!(EmailAddress::parse(&long).is_err());
    }
}
