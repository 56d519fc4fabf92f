//! Logs: JSON lines on stdout, one object per event, filtered by `RUST_LOG`.

use tracing_subscriber::EnvFilter;

/// Installs the JSON log subscriber. A second call (tests starting several services in one
/// process) keeps the first subscriber.
///
/// A log line that cannot be written (a full disk under a redirected stdout) is dropped: by
/// default the subscriber reports its write errors with `eprintln!`, which panics when stderr
/// fails too, and the unwinding logs again from a destructor and aborts the whole service.
pub fn init_json_logs(filter: &str) {
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_current_span(true)
        .with_span_list(false)
        .with_env_filter(filter)
        .log_internal_errors(false)
        .try_init();
}
