//! Any bytes as the body of every command the API takes, and as its `If-Match` and
//! `Idempotency-Key` headers, read by the same functions the handlers use. Nothing may
//! panic; what is accepted is what the domain accepts (an address read from a body is
//! normalized, so reading it again gives it back).

#![no_main]

use axum::http::{HeaderMap, HeaderValue};
use command_api::domain::values::EmailAddress;
use command_api::http::idempotency::{expected_version, key_of};
use command_api::http::orders::{read_cancel, read_place};
use command_api::http::users::{read_change_email, read_deactivate, read_register};
use libfuzzer_sys::fuzz_target;

fn normalized(email: &EmailAddress) {
    let again = EmailAddress::parse(email.as_str()).expect("a read address parses again");
    assert_eq!(
        again.as_str(),
        email.as_str(),
        "an address is read normalized"
    );
}

fuzz_target!(|bytes: &[u8]| {
    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(bytes) {
        if let Ok((_, email, _)) = read_register(&value) {
            normalized(&email);
        }
        if let Ok(email) = read_change_email(&value) {
            normalized(&email);
        }
        let _ = read_deactivate(&value);
        let _ = read_place(&value);
        let _ = read_cancel(&value);
    }
    if let Ok(header) = HeaderValue::from_bytes(bytes) {
        let mut headers = HeaderMap::new();
        headers.insert("if-match", header.clone());
        headers.insert("idempotency-key", header);
        let _ = expected_version(&headers);
        let _ = key_of(&headers);
    }
});
