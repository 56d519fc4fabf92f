//! `shopctl openapi`: the one OpenAPI document of every API behind the gateway, merged
//! from the three services' own. The gateway serves it from `gateway/openapi.json`, which
//! a test keeps equal to what this prints.

use utoipa::openapi::OpenApi;

/// The commands', the queries' and the sagas' documents in one.
pub fn merged() -> anyhow::Result<OpenApi> {
    service_runtime::openapi::merge(
        "shop",
        vec![
            command_api::http::document(),
            projections::query::document(),
            saga_orchestrator::http::document(),
        ],
    )
    .map_err(anyhow::Error::msg)
}

/// The merged document as the gateway serves it: pretty JSON and a final newline.
pub fn merged_text() -> anyhow::Result<String> {
    Ok(serde_json::to_string_pretty(&merged()?)? + "\n")
}

pub fn run() -> anyhow::Result<()> {
    print!("{}", merged_text()?);
    Ok(())
}
