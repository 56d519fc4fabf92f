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
