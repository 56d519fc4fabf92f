use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    service_runtime::run_binary(
        web_console::NAME,
        web_console::Config::from_env,
        web_console::Config::infrastructure,
        web_console::build,
    )
    .await
}
