//! Personal data that can be forgotten (crypto-shredding).
//!
//! A user's name and addresses are sealed, before they enter a command, with a key of
//! that user's own ([`sealing`]), kept in Postgres outside the log ([`keys`]). Forgetting
//! the user destroys the key: the log is never rewritten, every other field still replays,
//! and every copy of a sealed field, wherever it went, no longer opens. Readers open sealed
//! fields on the way out (an answer, a tool's output) with the keys of the users they
//! name; a forgotten user's fields read as `[forgotten]`.
//!
//! Uniqueness of addresses needs an id per address that the log may keep: the claim id is
//! a keyed hash of the address ([`email_index`]), so that the log holds no address and a
//! guessed address cannot be confirmed without the deployment's secret.

pub mod email_index;
pub mod keys;
pub mod sealing;

pub use email_index::EmailIndex;
pub use keys::{KeyStore, Keyring};
pub use sealing::SubjectKey;
