use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    service_runtime::run_binary(
        saga_orchestrator::NAME,
        saga_orchestrator::Config::from_env,
        saga_orchestrator::Config::infrastructure,
        saga_orchestrator::build,
    )
    .await
}
