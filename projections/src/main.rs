use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    service_runtime::run_binary(
        projections::NAME,
        projections::Config::from_env,
        projections::Config::log_filter,
        projections::build,
    )
    .await
}
