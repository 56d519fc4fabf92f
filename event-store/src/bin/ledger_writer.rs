//! `ledger-writer`: the sample ledger's write model as a process of its own, so that the
//! store's crash (SIGKILL) and fencing (SIGSTOP) tests and its benchmarks can drive a real
//! writer from outside.
//!
//! Reads `KAFKA_BROKERS`, `TOPIC_PREFIX`, `EVENT_PARTITIONS`, `KAFKA_SESSION_TIMEOUT_MS`
//! and `LEDGER_WRITER_ADDR` (default `127.0.0.1:0`). Prints `listening <addr>` once bound. Protocol, over TCP: each
//! line in is a CommandDocument of the ledger; each line out is
//! `{"id": "<command id>", "outcome": {...}}` or `{"id": "<command id>", "error": "..."}`,
//! in completion order.

use std::process::ExitCode;
use std::time::Duration;

use event_store::sample::{Ledger, LedgerCommand};
use event_store::writer::host::{WriteModel, WriterConfig};
use event_store::writer::metrics::WriterMetrics;
use event_store::{KafkaSettings, TopicNames};
use schemas::CommandDocument;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

fn setting(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

#[tokio::main]
async fn main() -> ExitCode {
    // Logs go to stderr: stdout carries the `listening` line.
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .log_internal_errors(false)
        .with_env_filter(tracing_subscriber::EnvFilter::new(setting(
            "RUST_LOG", "warn",
        )))
        .try_init();
    let partitions: i32 = match setting("EVENT_PARTITIONS", "8").parse() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("ledger-writer: EVENT_PARTITIONS: {e}");
            return ExitCode::from(2);
        }
    };
    let mut kafka = KafkaSettings::new(setting("KAFKA_BROKERS", "127.0.0.1:9092"));
    kafka.timeout = Duration::from_secs(5);
    if let Ok(ms) = setting("KAFKA_SESSION_TIMEOUT_MS", "6000").parse() {
        kafka.session_timeout = Duration::from_millis(ms);
    }
    let config = WriterConfig::new(
        kafka,
        TopicNames::new(setting("TOPIC_PREFIX", "")),
        partitions,
    );
    let (model, runtime) = WriteModel::<Ledger>::new(config, WriterMetrics::unregistered("ledger"));
    let stop = CancellationToken::new();
    let runtime = tokio::spawn(runtime.run(stop.clone()));

    let listener = match TcpListener::bind(setting("LEDGER_WRITER_ADDR", "127.0.0.1:0")).await {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("ledger-writer: cannot listen: {e}");
            return ExitCode::FAILURE;
        }
    };
    let addr = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    println!("listening {addr}");
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                if let Ok((stream, _)) = accepted {
                    tokio::spawn(serve(stream, model.clone()));
                }
            }
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    stop.cancel();
    let _ = runtime.await;
    ExitCode::SUCCESS
}

async fn serve(stream: TcpStream, model: WriteModel<Ledger>) {
    let (read, mut write) = stream.into_split();
    let (replies, mut outgoing) = mpsc::unbounded_channel::<String>();
    let writer = tokio::spawn(async move {
        while let Some(mut line) = outgoing.recv().await {
            line.push('\n');
            if write.write_all(line.as_bytes()).await.is_err() {
                return;
            }
        }
    });
    let mut lines = BufReader::new(read).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let (model, replies) = (model.clone(), replies.clone());
        tokio::spawn(async move {
            let reply = match CommandDocument::from_json(line.as_bytes())
                .and_then(|d| d.decode::<LedgerCommand>())
            {
                Err(e) => json!({ "error": e.to_string() }),
                Ok(command) => {
                    let id = command.meta.id.to_string();
                    match model.execute(command).await {
                        Ok(outcome) => json!({ "id": id, "outcome": outcome }),
                        Err(e) => json!({ "id": id, "error": e.to_string() }),
                    }
                }
            };
            let _ = replies.send(reply.to_string());
        });
    }
    drop(replies);
    let _ = writer.await;
}
