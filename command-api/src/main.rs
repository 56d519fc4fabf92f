use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    service_runtime::run_binary(
        command_api::NAME,
        command_api::Config::from_env,
        command_api::Config::infrastructure,
        command_api::build,
    )
    .await
}
