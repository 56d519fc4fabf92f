//! `shopctl openapi`: the one OpenAPI document of every API behind the gateway, merged
//! from the three services' own. The gateway serves it from `gateway/openapi.json`, which
//! a test keeps equal to what this prints.

use utoipa::openapi::OpenApi;

/// The commands', the queries' and the sagas' documents in one.
pub fn merged() -> anyhow::Result<OpenApi> {
    let info = utoipa::openapi::InfoBuilder::new()
        .title("shop")
        .version(env!("CARGO_PKG_VERSION"))
        .license(Some(
            utoipa::openapi::LicenseBuilder::new()
                .name("Apache-2.0")
                .identifier(Some("Apache-2.0"))
                .build(),
        ))
        .description(Some(
            "Every API of the shop behind its gateway: commands, queries (read models, dead letters) and sagas. Authorization: Bearer <API key>.",
        ))
        .build();
    service_runtime::openapi::merge(
        info,
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

/// Prints the document, or with `write` replaces `gateway/openapi.json`-like `path` with it
/// (written next to it first, so a failure leaves the old file whole).
pub fn run(write: Option<std::path::PathBuf>) -> anyhow::Result<()> {
    let text = merged_text()?;
    match write {
        None => print!("{text}"),
        Some(path) => {
            let partial = path.with_extension("json.partial");
            std::fs::write(&partial, text)?;
            std::fs::rename(&partial, &path)?;
        }
    }
    Ok(())
}
