//! The whole `main` of a service binary: read the configuration, start logging, build,
//! run until SIGTERM. Failures end the process with one line on stderr and a non-zero code.

use std::future::Future;
use std::process::ExitCode;

use crate::host::{BoundService, ServiceError};
use crate::settings::{Env, SettingError};
use crate::shutdown::terminate_signal;
use crate::telemetry::init_json_logs;

/// Runs the service `name`. `log_filter` picks the `RUST_LOG` value out of its config.
pub async fn run_binary<C, B, F>(
    name: &str,
    from_env: fn(&Env) -> Result<C, SettingError>,
    log_filter: fn(&C) -> &str,
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
    init_json_logs(log_filter(&config));
    let outcome = match build(config).await {
        Ok(service) => service.run_until(terminate_signal()).await,
        Err(e) => Err(e),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "service stopped");
            eprintln!("{name}: {e}");
            ExitCode::FAILURE
        }
    }
}
