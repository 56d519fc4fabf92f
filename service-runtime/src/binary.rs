//! The whole `main` of a service binary: read the configuration, start logging, build,
//! run until SIGTERM. Failures end the process with one line on stderr and a non-zero code.

use std::future::Future;
use std::process::ExitCode;

use crate::host::{BoundService, ServiceError};
use crate::infrastructure::Infrastructure;
use crate::settings::{Env, SettingError};
use crate::shutdown::terminate_signal;
use crate::telemetry;
use crate::traces::Export;

/// Runs the service `name`. `infrastructure` picks the log filter and the span exporter's
/// endpoint out of its config.
pub async fn run_binary<C, B, F>(
    name: &str,
    from_env: fn(&Env) -> Result<C, SettingError>,
    infrastructure: fn(&C) -> &Infrastructure,
    build: B,
) -> ExitCode
where
    B: FnOnce(C) -> F,
    F: Future<Output = Result<BoundService, ServiceError>>,
{
    let config = match from_env(&Env::from_process()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("{name}: configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    let settings = infrastructure(&config);
    let export = match settings
        .traces
        .as_deref()
        .map(|endpoint| Export::start(name, endpoint))
        .transpose()
    {
        Ok(export) => export,
        Err(e) => {
            eprintln!("{name}: configuration error: OTEL_EXPORTER_OTLP_ENDPOINT: {e}");
            return ExitCode::from(2);
        }
    };
    telemetry::init(&settings.log_filter, export.as_ref());
    let outcome = match build(config).await {
        Ok(service) => service.run_until(terminate_signal()).await,
        Err(e) => Err(e),
    };
    // What the last requests traced goes out before the process ends.
    drop(export);
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "service stopped");
            eprintln!("{name}: {e}");
            ExitCode::FAILURE
        }
    }
}
