use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    service_runtime::run_binary(
        projections::NAME,
        projections::Config::from_env,
        projections::Config::infrastructure,
        projections::build,
    )
    .await
}
