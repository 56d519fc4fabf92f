//! `shopctl api-key new | hash`: keys for `API_KEYS` and `OPERATOR_API_KEYS` (and
//! `shopctl webhook-secret`, the webhooks' signing secrets). A service
//! accepts a key configured as `sha256:<hex>` of it, so configuration (and whoever reads
//! it) never holds the key; the caller keeps the key itself.

use std::io::BufRead;

use clap::Subcommand;
use serde_json::json;
use service_runtime::api_keys::hashed_entry;

#[derive(Debug, Subcommand)]
pub enum ApiKeyCommand {
    /// Print a new random key and the entry to configure for it.
    New,
    /// Read a key from stdin (first line) and print the entry to configure for it.
    Hash,
}

pub fn run(command: ApiKeyCommand, json: bool) -> anyhow::Result<()> {
    let key = match command {
        ApiKeyCommand::New => new_key(),
        ApiKeyCommand::Hash => {
            let mut line = String::new();
            std::io::stdin().lock().read_line(&mut line)?;
            let key = line.trim().to_owned();
            anyhow::ensure!(!key.is_empty(), "no key on stdin");
            key
        }
    };
    let entry = hashed_entry(&key);
    if json {
        println!("{}", json!({ "key": key, "entry": entry }));
    } else {
        println!("key:   {key}\nentry: {entry}");
    }
    Ok(())
}

/// `shopctl webhook-secret`: a new secret to give the orchestrator and the receiver.
pub fn print_webhook_secret(json: bool) {
    let secret = saga_orchestrator::providers::webhook::WebhookSecret::generate();
    if json {
        println!("{}", json!({ "secret": secret.to_string() }));
    } else {
        println!("{secret}");
    }
}

/// A new secret for EMAIL_INDEX_KEY: 32 random bytes in base64.
pub fn print_email_index_key(json: bool) {
    let key = service_runtime::personal_data::EmailIndex::new_key();
    if json {
        println!("{}", json!({ "key": key }));
    } else {
        println!("{key}");
    }
}

/// `shop_` and 64 hex digits from two random (v4) UUIDs: 244 random bits.
fn new_key() -> String {
    format!(
        "shop_{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_keys_differ_and_hash_to_a_configurable_entry() {
        let (a, b) = (new_key(), new_key());
        assert_ne!(a, b);
        assert_eq!(a.len(), 5 + 64);
        let entry = hashed_entry(&a);
        assert!(
            entry.starts_with("sha256:") && entry.len() == 7 + 64,
            "{entry}"
        );
    }
}
