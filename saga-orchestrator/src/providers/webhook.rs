//! The notification channel: an HTTP webhook. The body is signed with HMAC-SHA256 over
//! `<id>.<timestamp>.<body>`; the id is the notification's, the same on every retry, so
//! the receiver can drop repeats.
//!
//! Headers: `webhook-id`, `webhook-timestamp` (Unix seconds), `webhook-signature`
//! (`v1=<hex>`).

use std::path::Path;
use std::time::Duration;

use hmac::{Hmac, Mac};
use schemas::notifications::NotificationKind;
use schemas::{NotificationId, OrderId, UserId};
use serde::Serialize;
use service_runtime::tls::Handshake;
use sha2::Sha256;

use super::{CallError, CallFuture};

/// What the customer is told.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Notice {
    pub notification_id: NotificationId,
    pub order_id: OrderId,
    pub user_id: UserId,
    pub kind: NotificationKind,
}

/// A way to reach the customer.
pub trait NotificationChannel: Send + Sync + std::fmt::Debug {
    fn name(&self) -> &'static str;
    fn deliver<'a>(&'a self, notice: &'a Notice) -> CallFuture<'a, ()>;
}

/// Posts each notice to one URL.
#[derive(Debug)]
pub struct Webhook {
    client: reqwest::Client,
    url: String,
    secret: Vec<u8>,
}

impl Webhook {
    /// A webhook on `url`; an https URL trusts the system's authorities and those in
    /// `ca_file`.
    pub fn new(
        url: String,
        secret: &str,
        timeout: Duration,
        ca_file: Option<&Path>,
    ) -> Result<Self, String> {
        let mut builder = reqwest::Client::builder().timeout(timeout);
        if let Some(ca) = ca_file {
            let pem = std::fs::read(ca).map_err(|e| format!("{}: {e}", ca.display()))?;
            let authorities = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| format!("{}: {}", ca.display(), causes(&e)))?;
            builder = builder.tls_certs_merge(authorities);
        }
        Ok(Self {
            client: builder.build().map_err(|e| causes(&e))?,
            url,
            secret: secret.as_bytes().to_vec(),
        })
    }

    /// For an https URL, one TLS handshake with the receiver: an untrusted certificate
    /// (unknown authority, expired, another name) is an error; a receiver that cannot be
    /// reached is not (it may come up later, and deliveries are retried).
    pub async fn check_certificate(
        &self,
        ca_file: Option<&Path>,
        within: Duration,
    ) -> Result<(), String> {
        let Ok(url) = reqwest::Url::parse(&self.url) else {
            return Ok(());
        };
        let (Some(host), Some(port)) = (url.host_str(), url.port_or_known_default()) else {
            return Ok(());
        };
        if url.scheme() != "https" {
            return Ok(());
        }
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let ca_file = ca_file.map(Path::to_path_buf);
        let verdict = tokio::task::spawn_blocking(move || {
            service_runtime::tls::handshake(&host, port, ca_file.as_deref(), within)
        })
        .await
        .map_err(|e| e.to_string())?;
        match verdict {
            Handshake::Trusted => Ok(()),
            Handshake::Refused(reason) => Err(format!("webhook {}: {reason}", self.url)),
            Handshake::Unreachable(reason) => {
                tracing::warn!(url = %self.url, reason, "webhook receiver not reachable at start");
                Ok(())
            }
        }
    }
}

/// An error and its sources on one line (reqwest's own text leaves out why a connection
/// failed, say an untrusted certificate).
fn causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let line = cause.to_string();
        if !text.contains(&line) {
            text.push_str(": ");
            text.push_str(&line);
        }
        source = cause.source();
    }
    text.replace('\n', " ")
}

/// `v1=<hex of HMAC-SHA256(secret, "<id>.<timestamp>.<body>")>`.
pub fn signature(secret: &[u8], id: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1={}", hex::encode(mac.finalize().into_bytes()))
}

impl NotificationChannel for Webhook {
    fn name(&self) -> &'static str {
        "notification-webhook"
    }

    fn deliver<'a>(&'a self, notice: &'a Notice) -> CallFuture<'a, ()> {
        Box::pin(async move {
            let body = serde_json::to_vec(notice).expect("a notice serializes");
            let id = notice.notification_id.to_string();
            let timestamp = chrono::Utc::now().timestamp();
            let response = self
                .client
                .post(&self.url)
                .header("content-type", "application/json")
                .header("webhook-id", &id)
                .header("webhook-timestamp", timestamp.to_string())
                .header(
                    "webhook-signature",
                    signature(&self.secret, &id, timestamp, &body),
                )
                .body(body)
                .send()
                .await
                .map_err(|e| {
                    CallError::Transient(format!("webhook unreachable: {}", causes(&e)))
                })?;
            let status = response.status();
            if status.is_success() {
                Ok(())
            } else if status.is_server_error() || status.as_u16() == 408 || status.as_u16() == 429 {
                Err(CallError::Transient(format!("webhook answered {status}")))
            } else {
                Err(CallError::Permanent(format!(
                    "webhook refused the notice: {status}"
                )))
            }
        })
    }
}

/// No webhook configured: each notice is written to the log and counts as delivered.
#[derive(Debug, Default)]
pub struct LogOnly;

impl NotificationChannel for LogOnly {
    fn name(&self) -> &'static str {
        "notification-log"
    }

    fn deliver<'a>(&'a self, notice: &'a Notice) -> CallFuture<'a, ()> {
        Box::pin(async move {
            tracing::info!(
                notification_id = %notice.notification_id,
                order_id = %notice.order_id,
                kind = notice.kind.as_str(),
                "notification (no webhook configured)"
            );
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_hmac_sha256_of_id_timestamp_and_body() {
        // RFC 4231 test case 2 gives HMAC-SHA256("Jefe", "what do ya want for nothing?").
        let message = b"what do ya want for nothing?";
        let mut mac = Hmac::<Sha256>::new_from_slice(b"Jefe").unwrap();
        mac.update(message);
        assert_eq!(
            hex::encode(mac.finalize().into_bytes()),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        let a = signature(b"secret", "id-1", 1_700_000_000, b"{}");
        assert!(a.starts_with("v1=") && a.len() == 3 + 64);
        assert_ne!(
            a,
            signature(b"secret", "id-1", 1_700_000_001, b"{}"),
            "the time is signed"
        );
        assert_ne!(
            a,
            signature(b"other", "id-1", 1_700_000_000, b"{}"),
            "the key matters"
        );
    }
}
