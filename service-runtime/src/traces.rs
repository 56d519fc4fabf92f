//! Traces: a span for each hop of a request (HTTP handling, decide, append, project, saga
//! step, provider call), exported over OTLP/HTTP (protobuf) when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set, and the W3C `traceparent` that carries a trace
//! across the log, the saga and webhooks.
//!
//! The spans are `TRACE`-level spans of target [`TARGET`]: without an exporter the log
//! filter (`RUST_LOG`, `info` by default) disables them at their call sites, so they cost
//! nothing. With one, they go through a bounded queue to a thread of their own: a slow or
//! unreachable collector never holds up a request; what does not fit is dropped and
//! counted in `shop_trace_spans_dropped_total`.

use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

pub use event_store::trace::{TARGET, set_parent, traceparent_of};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter, SpanProcessor};
use prometheus_client::metrics::counter::Counter;

/// Spans given up because the export queue was full or the collector refused them.
pub static SPANS_DROPPED: LazyLock<Counter> = LazyLock::new(Counter::default);

/// Finished spans waiting for export; past this, new ones are dropped.
const QUEUE: usize = 4096;
/// Spans per export request.
const BATCH: usize = 512;
/// The longest a finished span waits for its export.
const EVERY: Duration = Duration::from_secs(1);
/// The longest one export request takes before it is given up.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(3);

/// The exporter of one process: spans of [`TARGET`] to `<endpoint>/v1/traces`.
#[derive(Debug)]
pub struct Export {
    provider: SdkTracerProvider,
}

impl Export {
    /// Starts exporting as `service` to `endpoint` (a validated http(s) URL); an exporter
    /// that cannot be made for it is an error.
    pub fn start(service: &str, endpoint: &str) -> Result<Self, String> {
        let (queue, spans) = mpsc::sync_channel(QUEUE);
        let (built, ready) = mpsc::sync_channel(1);
        let resource = Resource::builder()
            .with_service_name(service.to_owned())
            .build();
        let url = format!("{}/v1/traces", endpoint.trim_end_matches('/'));
        let exporter_resource = resource.clone();
        // The exporter's blocking HTTP client is made, used and dropped on this thread,
        // never on an async runtime's.
        std::thread::Builder::new()
            .name("otlp-export".into())
            .spawn(move || {
                let exporter = opentelemetry_otlp::SpanExporter::builder()
                    .with_http()
                    .with_endpoint(&url)
                    .with_timeout(EXPORT_TIMEOUT)
                    .build();
                match exporter {
                    Ok(mut exporter) => {
                        let _ = built.send(Ok(()));
                        exporter.set_resource(&exporter_resource);
                        export_loop(&exporter, &spans);
                    }
                    Err(e) => {
                        let _ = built.send(Err(format!("cannot export spans to {url}: {e}")));
                    }
                }
            })
            .map_err(|e| format!("cannot start the span export: {e}"))?;
        ready
            .recv_timeout(Duration::from_secs(10))
            .map_err(|_| "the span exporter did not start within 10 s".to_owned())??;
        let provider = SdkTracerProvider::builder()
            .with_span_processor(BoundedExport { queue })
            .with_resource(resource)
            .build();
        Ok(Self { provider })
    }

    /// The `tracing` layer that turns spans into exported ones.
    pub fn layer<S>(&self) -> impl tracing_subscriber::Layer<S> + use<S>
    where
        S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    {
        tracing_opentelemetry::layer().with_tracer(self.provider.tracer("shop"))
    }

    /// Sends what is queued, waiting up to a few seconds.
    pub fn flush(&self) {
        if let Err(e) = self.provider.force_flush() {
            tracing::debug!(error = %e, "span export not flushed");
        }
    }
}

impl Drop for Export {
    fn drop(&mut self) {
        self.flush();
    }
}

enum Message {
    Span(Box<SpanData>),
    Flush(SyncSender<()>),
}

/// Hands finished spans to the export thread without ever waiting.
#[derive(Debug)]
struct BoundedExport {
    queue: SyncSender<Message>,
}

impl SpanProcessor for BoundedExport {
    fn on_start(&self, _: &mut opentelemetry_sdk::trace::Span, _: &opentelemetry::Context) {}

    fn on_end(&self, span: SpanData) {
        if self.queue.try_send(Message::Span(Box::new(span))).is_err() {
            SPANS_DROPPED.inc();
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        let (done, flushed) = mpsc::sync_channel(1);
        self.queue
            .try_send(Message::Flush(done))
            .map_err(|_| OTelSdkError::InternalFailure("the export queue is full".into()))?;
        flushed
            .recv_timeout(EXPORT_TIMEOUT + EVERY)
            .map_err(|_| OTelSdkError::Timeout(EXPORT_TIMEOUT + EVERY))
    }

    fn shutdown_with_timeout(&self, _: Duration) -> OTelSdkResult {
        self.force_flush()
    }
}

/// The export thread: batches of up to [`BATCH`] spans, at least every [`EVERY`].
fn export_loop(exporter: &opentelemetry_otlp::SpanExporter, spans: &Receiver<Message>) {
    let mut batch = Vec::with_capacity(BATCH);
    let mut due = Instant::now() + EVERY;
    loop {
        let message = spans.recv_timeout(due.saturating_duration_since(Instant::now()));
        match message {
            Ok(Message::Span(span)) => {
                batch.push(*span);
                if batch.len() < BATCH {
                    continue;
                }
            }
            Ok(Message::Flush(done)) => {
                export(exporter, &mut batch);
                let _ = done.send(());
                continue;
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                export(exporter, &mut batch);
                return;
            }
        }
        export(exporter, &mut batch);
        due = Instant::now() + EVERY;
    }
}

fn export(exporter: &opentelemetry_otlp::SpanExporter, batch: &mut Vec<SpanData>) {
    if batch.is_empty() {
        return;
    }
    let spans = std::mem::take(batch);
    let count = spans.len() as u64;
    // One retry: a collector may close an idle connection just as it is reused. A batch
    // whose first answer was lost may so arrive twice (spans keep their ids).
    if block_on(exporter.export(spans.clone())).is_err()
        && let Err(e) = block_on(exporter.export(spans))
    {
        SPANS_DROPPED.inc_by(count);
        tracing::debug!(error = %e, count, "spans not exported");
    }
}

/// Runs `future` on this thread to completion (the exporter's HTTP client blocks; its
/// future needs no runtime).
fn block_on<F: std::future::Future>(future: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl std::task::Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Arc::new(Unpark(std::thread::current())).into();
    let mut context = std::task::Context::from_waker(&waker);
    let mut future = std::pin::pin!(future);
    loop {
        if let std::task::Poll::Ready(output) = future.as_mut().poll(&mut context) {
            return output;
        }
        std::thread::park();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_collector_that_does_not_answer_never_holds_up_the_spans_it_cannot_take() {
        // A port nothing listens on: every export fails; the queue fills, and what does
        // not fit is counted as dropped, each span handed over without waiting.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        let export = Export::start("test", &format!("http://127.0.0.1:{port}")).expect("started");
        let tracer = export.provider.tracer("test");
        let before = SPANS_DROPPED.get();
        let started = Instant::now();
        for _ in 0..(QUEUE * 2) {
            use opentelemetry::trace::Tracer as _;
            drop(tracer.start("hop"));
        }
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?} for {} spans",
            started.elapsed(),
            QUEUE * 2
        );
        export.flush();
        assert!(SPANS_DROPPED.get() - before >= QUEUE as u64 / 2);
    }
}
