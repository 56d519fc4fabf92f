//! Logs: JSON lines on stdout, one object per event, filtered by `RUST_LOG`; and, when
//! an exporter is given, the spans of [`crate::traces`].

use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::traces::{Export, TARGET};

/// Installs the JSON log subscriber, and the span exporter `export` when there is one. A
/// second call (tests starting several services in one process) keeps the first.
///
/// A log line that cannot be written (a full disk under a redirected stdout) is dropped: by
/// default the subscriber reports its write errors with `eprintln!`, which panics when stderr
/// fails too, and the unwinding logs again from a destructor and aborts the whole service.
pub fn init(filter: &str, export: Option<&Export>) {
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt::layer()
        .json()
        .flatten_event(true)
        .with_current_span(true)
        .with_span_list(false)
        .log_internal_errors(false)
        .with_filter(filter);
    let spans = export.map(|export| {
        export
            .layer()
            .with_filter(Targets::new().with_target(TARGET, LevelFilter::TRACE))
    });
    let _ = tracing_subscriber::registry()
        .with(logs)
        .with(spans)
        .try_init();
}

/// An error and its causes on one line, each cause once (some errors repeat their
/// source's text in their own, others, like reqwest's, leave out why they failed).
pub fn one_line(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = String::new();
    let mut next = Some(error);
    while let Some(cause) = next {
        let line = cause.to_string().replace('\n', " ");
        if !text.contains(&line) {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&line);
        }
        next = cause.source();
    }
    text
}
