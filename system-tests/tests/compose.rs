//! docker-compose.yml cannot run here (no Docker engine), so this test holds it to the
//! code instead: every service is there, each service gets exactly the variables it reads
//! and they parse, and ports and addresses agree across services, gateway and Dockerfile.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{Context, bail};
use serde_norway::Value;
use service_runtime::{Env, Setting};
use system_tests::repo_root;

struct Compose {
    services: BTreeMap<String, Value>,
}

impl Compose {
    fn load() -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(repo_root().join("docker-compose.yml"))?;
        let mut value: Value = serde_norway::from_str(&text)?;
        value.apply_merge()?;
        let services = value["services"]
            .as_mapping()
            .context("a services mapping")?
            .iter()
            .map(|(k, v)| {
                let mut v = v.clone();
                v.apply_merge().expect("merge keys resolve");
                (k.as_str().unwrap_or_default().to_owned(), v)
            })
            .collect();
        Ok(Self { services })
    }

    fn service(&self, name: &str) -> anyhow::Result<&Value> {
        self.services
            .get(name)
            .with_context(|| format!("service {name} missing from docker-compose.yml"))
    }

    fn environment(&self, name: &str) -> anyhow::Result<BTreeMap<String, String>> {
        let env = self.service(name)?["environment"]
            .as_mapping()
            .with_context(|| format!("{name} has no environment mapping"))?;
        env.iter()
            .map(|(k, v)| {
                let key = k.as_str().context("string keys")?.to_owned();
                let value = match v {
                    Value::String(s) => unset_defaults(s),
                    Value::Number(n) => n.to_string(),
                    Value::Bool(b) => b.to_string(),
                    other => bail!("{name}.{key} has a non-scalar value {other:?}"),
                };
                Ok((key, value))
            })
            .collect()
    }

    fn strings(&self, name: &str, key: &str) -> Vec<String> {
        self.services[name][key]
            .as_sequence()
            .map(|s| {
                s.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// `text` as compose gives it when no variable is set: each `${NAME:-default}` is its
/// default.
fn unset_defaults(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let Some(end) = rest[start..].find('}') else {
            break;
        };
        let inner = &rest[start + 2..start + end];
        out.push_str(inner.split_once(":-").map_or("", |(_, default)| default));
        rest = &rest[start + end + 1..];
    }
    out.push_str(rest);
    out
}

fn as_env(vars: &BTreeMap<String, String>) -> Env {
    Env::from_pairs(vars.iter().map(|(k, v)| (k.as_str(), v.as_str())))
}

fn names(settings: &[Setting]) -> BTreeSet<String> {
    settings.iter().map(|s| s.name.to_owned()).collect()
}

/// Every service the design names is in the file, each with the image or build it needs.
#[test]
fn every_part_of_the_system_is_there() -> anyhow::Result<()> {
    let compose = Compose::load()?;
    for name in [
        "kafka",
        "postgres",
        "topics",
        "command-api",
        "projections",
        "saga-orchestrator",
        "web-console",
        "web-assets",
        "gateway",
        "kafka-ui",
    ] {
        compose.service(name)?;
    }
    let kafka = compose.environment("kafka")?;
    // The same Kafka release as the local stack, tests and benchmarks (kafka/pom.xml).
    let pom = std::fs::read_to_string(repo_root().join("kafka/pom.xml"))?;
    let version = pom
        .split("<kafka.version>")
        .nth(1)
        .and_then(|rest| rest.split("</kafka.version>").next())
        .context("kafka.version in kafka/pom.xml")?;
    assert_eq!(
        compose.service("kafka")?["image"]
            .as_str()
            .unwrap_or_default(),
        format!("apache/kafka:{version}")
    );
    assert!(
        kafka["KAFKA_PROCESS_ROLES"].contains("controller"),
        "KRaft mode"
    );
    assert_eq!(kafka["KAFKA_AUTO_CREATE_TOPICS_ENABLE"], "false");
    assert_eq!(
        compose.strings("topics", "command"),
        ["shopctl", "topics", "create"]
    );
    Ok(())
}

/// The variables each service reads are exactly those set, and they parse.
#[test]
fn each_service_gets_exactly_the_variables_it_reads() -> anyhow::Result<()> {
    let compose = Compose::load()?;
    let services: [(&str, Vec<Setting>); 4] = [
        ("command-api", command_api::config::settings()),
        ("projections", projections::config::settings()),
        ("saga-orchestrator", saga_orchestrator::config::settings()),
        ("web-console", web_console::config::settings()),
    ];
    for (name, settings) in services {
        let env = compose.environment(name)?;
        let set: BTreeSet<String> = env.keys().cloned().collect();
        assert_eq!(
            set,
            names(&settings),
            "{name}: set in compose vs read by the code"
        );
        assert_eq!(
            compose.strings(name, "command"),
            [name],
            "{name} runs its own binary"
        );
    }
    command_api::Config::from_env(&as_env(&compose.environment("command-api")?))?;
    projections::Config::from_env(&as_env(&compose.environment("projections")?))?;
    saga_orchestrator::Config::from_env(&as_env(&compose.environment("saga-orchestrator")?))?;
    web_console::Config::from_env(&as_env(&compose.environment("web-console")?))?;

    // shopctl creates the topics the services will check: same broker, prefix, partitions.
    let topics = compose.environment("topics")?;
    let services = compose.environment("command-api")?;
    for key in ["KAFKA_BROKERS", "TOPIC_PREFIX", "EVENT_PARTITIONS"] {
        assert_eq!(
            topics[key], services[key],
            "topics and services disagree on {key}"
        );
    }
    Ok(())
}

/// Listen addresses, exposed ports, health checks and gateway upstreams agree.
#[test]
fn ports_and_addresses_agree() -> anyhow::Result<()> {
    let compose = Compose::load()?;
    let gateway = compose.environment("gateway")?;
    for (name, addr_var, upstream_var) in [
        ("command-api", "COMMAND_API_ADDR", "COMMAND_API_UPSTREAM"),
        ("projections", "PROJECTIONS_ADDR", "PROJECTIONS_UPSTREAM"),
        (
            "saga-orchestrator",
            "SAGA_ORCHESTRATOR_ADDR",
            "SAGA_ORCHESTRATOR_UPSTREAM",
        ),
        ("web-console", "CONSOLE_ADDR", "WEB_CONSOLE_UPSTREAM"),
    ] {
        let env = compose.environment(name)?;
        let addr: std::net::SocketAddr = env[addr_var].parse()?;
        assert!(
            addr.ip().is_unspecified(),
            "{name} must listen on all interfaces in a container"
        );
        let port = addr.port().to_string();
        assert_eq!(
            compose.strings(name, "expose"),
            std::slice::from_ref(&port),
            "{name} exposes its port"
        );
        assert_eq!(
            gateway[upstream_var],
            format!("{name}:{port}"),
            "gateway upstream of {name}"
        );
        let check = compose.service(name)?["healthcheck"]["test"]
            .as_sequence()
            .map(|s| {
                s.iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_default();
        assert!(
            check.contains(&format!(":{port}/ready")),
            "{name} health check: {check}"
        );
    }

    let services = compose.environment("command-api")?;
    let kafka = compose.environment("kafka")?;
    let broker = &services["KAFKA_BROKERS"];
    assert!(
        kafka["KAFKA_ADVERTISED_LISTENERS"].contains(&format!("INTERNAL://{broker}")),
        "services bootstrap from the internal listener {broker}"
    );
    let internal_port = broker.rsplit(':').next().unwrap_or_default();
    assert!(kafka["KAFKA_LISTENERS"].contains(&format!("INTERNAL://:{internal_port}")));
    assert_eq!(
        compose.environment("kafka-ui")?["KAFKA_CLUSTERS_0_BOOTSTRAPSERVERS"],
        *broker
    );

    let postgres = compose.environment("postgres")?;
    let expected_url = format!(
        "postgres://{}:{}@postgres:5432/{}",
        postgres["POSTGRES_USER"], postgres["POSTGRES_PASSWORD"], postgres["POSTGRES_DB"]
    );
    assert_eq!(services["DATABASE_URL"], expected_url);
    assert_eq!(compose.strings("gateway", "ports"), ["8000:8000"]);
    assert_eq!(gateway["GATEWAY_LISTEN"], "8000");
    Ok(())
}

/// The gateway gets a value for every placeholder of the shared template, and mounts it
/// where the nginx image renders templates.
#[test]
fn the_gateway_template_is_fully_configured() -> anyhow::Result<()> {
    let compose = Compose::load()?;
    let template = std::fs::read_to_string(repo_root().join("gateway/shop.conf.template"))?;
    let placeholders: BTreeSet<String> = template
        .split("${")
        .skip(1)
        .filter_map(|rest| rest.split_once('}').map(|(name, _)| name.to_owned()))
        .collect();
    let env: BTreeSet<String> = compose.environment("gateway")?.into_keys().collect();
    assert_eq!(placeholders, env);
    assert_eq!(
        compose.strings("gateway", "volumes"),
        [
            "./gateway/shop.conf.template:/etc/nginx/templates/default.conf.template:ro",
            "./gateway/openapi.json:/etc/nginx/shop-docs/openapi.json:ro",
            "./gateway/docs:/etc/nginx/shop-docs/docs:ro",
            "swagger-ui:/etc/nginx/swagger-ui:ro",
            "console-page:/etc/nginx/console:ro"
        ]
    );
    // The folders the placeholders name are the ones mounted: the documents and the page,
    // the Swagger UI files and the console's page that the web-assets service copies.
    assert_eq!(
        compose.environment("gateway")?["GATEWAY_DOCS"],
        "/etc/nginx/shop-docs"
    );
    assert_eq!(
        compose.environment("gateway")?["GATEWAY_SWAGGER_UI"],
        "/etc/nginx/swagger-ui"
    );
    assert_eq!(
        compose.environment("gateway")?["GATEWAY_CONSOLE"],
        "/etc/nginx/console"
    );
    let assets = compose.strings("web-assets", "volumes");
    assert!(assets.contains(&"swagger-ui:/swagger-ui".to_owned()));
    assert!(assets.contains(&"console-page:/console".to_owned()));
    Ok(())
}

/// The image the services run from builds every binary compose invokes.
#[test]
fn the_dockerfile_builds_every_binary_compose_runs() -> anyhow::Result<()> {
    let compose = Compose::load()?;
    let dockerfile = std::fs::read_to_string(repo_root().join("Dockerfile"))?;
    assert!(dockerfile.contains(" AS build") && dockerfile.contains(" AS runtime"));
    for name in [
        "topics",
        "command-api",
        "projections",
        "saga-orchestrator",
        "web-console",
    ] {
        assert_eq!(
            compose.service(name)?["build"]["target"].as_str(),
            Some("runtime")
        );
        let binary = &compose.strings(name, "command")[0];
        assert!(
            dockerfile.contains(&format!("-p {binary}")),
            "{binary} not built"
        );
        assert!(
            dockerfile.contains(&format!("target/release/{binary}")),
            "{binary} not copied"
        );
    }
    Ok(())
}
