//! The notification channel: an HTTP webhook, signed as Standard Webhooks specifies
//! (<https://www.standardwebhooks.com>), so that its verifier libraries accept it.
//!
//! Headers: `webhook-id` (the notification's id, the same on every retry, so the receiver
//! can drop repeats), `webhook-timestamp` (Unix seconds) and `webhook-signature`: for each
//! configured secret, `v1,<base64 of HMAC-SHA256(secret, "<id>.<timestamp>.<body>")>`,
//! separated by spaces. Two secrets are configured while one replaces the other.

use std::path::Path;
use std::time::Duration;

use hmac::{Hmac, Mac};
use schemas::notifications::NotificationKind;
use schemas::{NotificationId, OrderId, TraceParent, UserId};
use serde::Serialize;
use service_runtime::telemetry::one_line;
use service_runtime::tls::{Handshake, Trust};
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
    /// Delivers `notice`; `traceparent` is the trace it continues (sent as W3C
    /// `traceparent` where the channel carries headers).
    fn deliver<'a>(
        &'a self,
        notice: &'a Notice,
        traceparent: Option<TraceParent>,
    ) -> CallFuture<'a, ()>;
}

/// Posts each notice to one URL.
#[derive(Debug)]
pub struct Webhook {
    client: reqwest::Client,
    url: String,
    secrets: Vec<WebhookSecret>,
}

impl Webhook {
    /// A webhook on `url`; an https URL trusts the system's authorities and those in
    /// `ca_file`.
    pub fn new(
        url: String,
        secrets: Vec<WebhookSecret>,
        timeout: Duration,
        ca_file: Option<&Path>,
    ) -> Result<Self, String> {
        let mut builder = reqwest::Client::builder().timeout(timeout);
        if let Some(ca) = ca_file {
            let pem = std::fs::read(ca).map_err(|e| format!("{}: {e}", ca.display()))?;
            let authorities = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| format!("{}: {}", ca.display(), one_line(&e)))?;
            builder = builder.tls_certs_merge(authorities);
        }
        Ok(Self {
            client: builder.build().map_err(|e| one_line(&e))?,
            url,
            secrets,
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
            service_runtime::tls::handshake(
                &host,
                port,
                Trust::SystemAnd(ca_file.as_deref()),
                within,
            )
        })
        .await
        .map_err(|e| e.to_string())?;
        match verdict {
            Handshake::Trusted => Ok(()),
            // The reason names the receiver's host and port, never the URL's path (which
            // may carry a token).
            Handshake::Refused(reason) => Err(format!("notification webhook: {reason}")),
            Handshake::Unreachable(reason) => {
                tracing::warn!(reason, "webhook receiver not reachable at start");
                Ok(())
            }
        }
    }
}

/// A Standard Webhooks secret: `whsec_` and the base64 of 24 to 64 random bytes. Its
/// bytes never show in `Debug` output.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookSecret(Vec<u8>);

impl WebhookSecret {
    const PREFIX: &str = "whsec_";

    /// A new secret of 32 random bytes (two random UUIDs: 244 random bits).
    pub fn generate() -> Self {
        let mut bytes = uuid::Uuid::new_v4().as_bytes().to_vec();
        bytes.extend_from_slice(uuid::Uuid::new_v4().as_bytes());
        Self(bytes)
    }

    /// Every secret in `text` (at least one), separated by white space or commas.
    pub fn parse_list(text: &str) -> Result<Vec<Self>, String> {
        let secrets = text
            .split(|c: char| c.is_whitespace() || c == ',')
            .filter(|s| !s.is_empty())
            .map(str::parse)
            .collect::<Result<Vec<Self>, String>>()?;
        if secrets.is_empty() {
            return Err("holds no secret".into());
        }
        Ok(secrets)
    }
}

impl std::str::FromStr for WebhookSecret {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        use base64::Engine as _;
        let encoded = text.strip_prefix(Self::PREFIX).ok_or_else(|| {
            "a secret is whsec_ and base64 (`shopctl webhook-secret` makes one)".to_owned()
        })?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            // The decoder's own message would quote a character of the secret.
            .map_err(|_| "the part after whsec_ is not base64".to_owned())?;
        if !(24..=64).contains(&bytes.len()) {
            return Err(format!(
                "a secret holds 24 to 64 bytes, this one {}",
                bytes.len()
            ));
        }
        Ok(Self(bytes))
    }
}

impl std::fmt::Display for WebhookSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use base64::Engine as _;
        let encoded = base64::engine::general_purpose::STANDARD.encode(&self.0);
        write!(f, "{}{encoded}", Self::PREFIX)
    }
}

impl std::fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WebhookSecret(<redacted>)")
    }
}

/// The `webhook-signature` header: `v1,<base64 of HMAC-SHA256(secret,
/// "<id>.<timestamp>.<body>")>` for each of `secrets`, separated by spaces.
pub fn signature(secrets: &[WebhookSecret], id: &str, timestamp: i64, body: &[u8]) -> String {
    use base64::Engine as _;
    let signatures: Vec<String> = secrets
        .iter()
        .map(|secret| {
            let mut mac =
                Hmac::<Sha256>::new_from_slice(&secret.0).expect("HMAC takes keys of any length");
            mac.update(id.as_bytes());
            mac.update(b".");
            mac.update(timestamp.to_string().as_bytes());
            mac.update(b".");
            mac.update(body);
            let digest = mac.finalize().into_bytes();
            format!(
                "v1,{}",
                base64::engine::general_purpose::STANDARD.encode(digest)
            )
        })
        .collect();
    signatures.join(" ")
}

impl NotificationChannel for Webhook {
    fn name(&self) -> &'static str {
        "notification-webhook"
    }

    fn deliver<'a>(
        &'a self,
        notice: &'a Notice,
        traceparent: Option<TraceParent>,
    ) -> CallFuture<'a, ()> {
        Box::pin(async move {
            let body = serde_json::to_vec(notice).expect("a notice serializes");
            let id = notice.notification_id.to_string();
            let timestamp = chrono::Utc::now().timestamp();
            let mut request = self.client.post(&self.url);
            if let Some(trace) = traceparent {
                request = request.header("traceparent", trace.to_string());
            }
            let response = request
                .header("content-type", "application/json")
                .header("webhook-id", &id)
                .header("webhook-timestamp", timestamp.to_string())
                .header(
                    "webhook-signature",
                    signature(&self.secrets, &id, timestamp, &body),
                )
                .body(body)
                .send()
                .await
                .map_err(|e| {
                    CallError::Transient(format!("webhook unreachable: {}", one_line(&e)))
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

    fn deliver<'a>(
        &'a self,
        notice: &'a Notice,
        traceparent: Option<TraceParent>,
    ) -> CallFuture<'a, ()> {
        Box::pin(async move {
            tracing::info!(
                notification_id = %notice.notification_id,
                order_id = %notice.order_id,
                kind = notice.kind.as_str(),
                trace_id = traceparent.map(|t| t.trace_id()).unwrap_or_default(),
                "notification (no webhook configured)"
            );
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    #[test]
    fn the_signature_is_base64_hmac_sha256_of_id_timestamp_and_body() {
        // The example of the Standard Webhooks specification: this secret, id, time and
        // body give this signature.
        let secret: WebhookSecret = SECRET.parse().unwrap();
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            signature(
                std::slice::from_ref(&secret),
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1_614_265_330,
                body
            ),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
        let other = WebhookSecret::generate();
        let both = signature(
            &[secret.clone(), other.clone()],
            "id-1",
            1_700_000_000,
            b"{}",
        );
        let parts: Vec<&str> = both.split(' ').collect();
        assert_eq!(parts.len(), 2, "{both}");
        assert_eq!(parts[0], signature(&[secret], "id-1", 1_700_000_000, b"{}"));
        assert_eq!(parts[1], signature(&[other], "id-1", 1_700_000_000, b"{}"));
    }

    #[test]
    fn secrets_are_whsec_base64_of_24_to_64_bytes() {
        let generated = WebhookSecret::generate();
        assert_eq!(
            generated.to_string().parse::<WebhookSecret>(),
            Ok(generated.clone())
        );
        assert!(!format!("{generated:?}").contains(&generated.to_string()[6..]));
        let list = WebhookSecret::parse_list(&format!("{SECRET} {generated}")).unwrap();
        assert_eq!(list.len(), 2);
        assert_eq!(
            WebhookSecret::parse_list(" , "),
            Err("holds no secret".into())
        );
        for (text, reason) in [
            ("plain-secret", "whsec_ and base64"),
            ("whsec_not*base64", "not base64"),
            ("whsec_c2hvcnQ=", "24 to 64 bytes"),
        ] {
            let err = text.parse::<WebhookSecret>().unwrap_err();
            assert!(err.contains(reason), "{text}: {err}");
        }
    }
}
