//! The notification webhook's receiving end: a local HTTP server (in the suite's process,
//! so it lives through every crash of the services) that records every delivery with its
//! idempotency id and whether its signature holds.

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::http::HeaderMap;
use axum::routing::post;
use saga_orchestrator::providers::webhook::signature;
use serde_json::Value;

/// One webhook request as received.
#[derive(Clone, Debug)]
pub struct Delivery {
    /// `webhook-id`: the notification's idempotency id.
    pub id: String,
    pub body: Value,
    pub signed: bool,
}

/// Every delivery so far.
#[derive(Clone, Debug, Default)]
pub struct Deliveries(Arc<Mutex<Vec<Delivery>>>);

impl Deliveries {
    pub fn all(&self) -> Vec<Delivery> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

/// Starts the receiver; its URL and what it records.
pub async fn receiver(secret: &'static str) -> anyhow::Result<(String, Deliveries)> {
    let deliveries = Deliveries::default();
    let log = deliveries.clone();
    let app = Router::new().route(
        "/hook",
        post(move |headers: HeaderMap, body: axum::body::Bytes| {
            let log = log.clone();
            async move {
                let header = |name: &str| {
                    headers
                        .get(name)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_owned()
                };
                let id = header("webhook-id");
                let timestamp: i64 = header("webhook-timestamp").parse().unwrap_or(0);
                let signed = signature(
                    &[secret.parse().expect("a whsec_ secret")],
                    &id,
                    timestamp,
                    &body,
                ) == header("webhook-signature");
                let body = serde_json::from_slice(&body).unwrap_or_default();
                log.0
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .push(Delivery { id, body, signed });
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/hook", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok((url, deliveries))
}
