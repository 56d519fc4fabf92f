//! The broker and the database every service runs on: their settings, read once from the
//! environment, and the clients made from them. Making clients contacts nothing, so a
//! service starts while its dependencies are down.

use std::path::PathBuf;
use std::time::Duration;

use event_store::{
    KafkaSecurity, KafkaSettings, SaslLogin, SecurityProtocol, TopicAdmin, TopicNames, TopicSpec,
};
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgSslMode};

use crate::settings::{Env, SettingError, common};
use crate::tls;

#[derive(Clone)]
pub struct Infrastructure {
    pub kafka: KafkaSettings,
    pub topics: TopicNames,
    pub partitions: i32,
    pub database: PgConnectOptions,
    pub max_connections: u32,
    pub log_filter: String,
    /// The OTLP/HTTP collector spans go to, when there is one.
    pub traces: Option<String>,
}

/// Without the database password (sqlx's own `Debug` shows it).
impl std::fmt::Debug for Infrastructure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Infrastructure")
            .field("kafka", &self.kafka)
            .field("topics", &self.topics)
            .field("partitions", &self.partitions)
            .field("database_host", &self.database.get_host())
            .field("database_port", &self.database.get_port())
            .field("database", &self.database.get_database())
            .field("database_ssl_mode", &self.database.get_ssl_mode())
            .field("max_connections", &self.max_connections)
            .field("log_filter", &self.log_filter)
            .field("traces", &self.traces)
            .finish()
    }
}

impl Infrastructure {
    pub fn from_env(env: &Env) -> Result<Self, SettingError> {
        let mut kafka = KafkaSettings::new(env.text(&common::KAFKA_BROKERS)?);
        kafka.timeout = Duration::from_millis(env.parse(&common::KAFKA_TIMEOUT_MS)?);
        let session: u64 = env.parse(&common::KAFKA_SESSION_TIMEOUT_MS)?;
        // The broker's allowed range (group.min/max.session.timeout.ms) is checked when a
        // member joins; below 1 s heartbeats could not keep up, above 5 minutes a crash
        // would leave partitions unread that long.
        if !(1_000..=300_000).contains(&session) {
            return Err(SettingError::Invalid {
                name: common::KAFKA_SESSION_TIMEOUT_MS.name,
                value: session.to_string(),
                reason: "must be from 1000 to 300000 (milliseconds)".into(),
            });
        }
        kafka.session_timeout = Duration::from_millis(session);
        kafka.security = kafka_security(env)?;
        let partitions: i32 = env.parse(&common::EVENT_PARTITIONS)?;
        if partitions < 1 {
            return Err(SettingError::Invalid {
                name: common::EVENT_PARTITIONS.name,
                value: partitions.to_string(),
                reason: "must be at least 1".into(),
            });
        }
        Ok(Self {
            kafka,
            topics: TopicNames::new(env.text(&common::TOPIC_PREFIX)?),
            partitions,
            database: database_options(env)?,
            max_connections: env.parse(&common::DATABASE_MAX_CONNECTIONS)?,
            log_filter: env.text(&common::RUST_LOG)?,
            traces: otlp_endpoint(env)?,
        })
    }

    /// A pool that connects on first use; acquiring waits at most 2 s, so a request never
    /// hangs on a database that is down.
    pub fn pool(&self) -> PgPool {
        PgPoolOptions::new()
            .max_connections(self.max_connections)
            .acquire_timeout(Duration::from_secs(2))
            .connect_lazy_with(self.database.clone())
    }

    pub fn admin(&self) -> Result<TopicAdmin, event_store::EventStoreError> {
        TopicAdmin::new(&self.kafka)
    }

    /// Every topic of the shop at the configured partition count.
    pub fn topic_specs(&self) -> Vec<TopicSpec> {
        self.topics.all(self.partitions)
    }
}

/// TLS and SASL towards the brokers; the files named are checked now, so a missing or
/// expired certificate stops the service at start.
fn kafka_security(env: &Env) -> Result<KafkaSecurity, SettingError> {
    let protocol: SecurityProtocol = env.parse(&common::KAFKA_SECURITY_PROTOCOL)?;
    let file = |setting: &crate::Setting| -> Result<Option<String>, SettingError> {
        let path = env.text(setting)?;
        Ok((!path.trim().is_empty()).then(|| path.trim().to_owned()))
    };
    let ca_file = file(&common::KAFKA_SSL_CA_FILE)?
        .map(|path| {
            tls::certificate_file(&common::KAFKA_SSL_CA_FILE, &path, tls::Holds::Authorities)
        })
        .transpose()?;
    let client_certificate = client_certificate(
        file(&common::KAFKA_SSL_CERTIFICATE_FILE)?,
        file(&common::KAFKA_SSL_KEY_FILE)?,
    )?;
    if !protocol.uses_tls() && (ca_file.is_some() || client_certificate.is_some()) {
        return Err(SettingError::Invalid {
            name: common::KAFKA_SECURITY_PROTOCOL.name,
            value: env.text(&common::KAFKA_SECURITY_PROTOCOL)?,
            reason: "KAFKA_SSL_* files are set, but the protocol uses no TLS (ssl or sasl_ssl)"
                .into(),
        });
    }
    Ok(KafkaSecurity {
        protocol,
        ca_file,
        client_certificate,
        sasl: sasl_login(env, protocol)?,
    })
}

/// The client certificate and its key, both checked, or neither.
fn client_certificate(
    certificate: Option<String>,
    key: Option<String>,
) -> Result<Option<(PathBuf, PathBuf)>, SettingError> {
    let (missing, given) = match (certificate, key) {
        (None, None) => return Ok(None),
        (Some(certificate), Some(key)) => {
            return Ok(Some((
                tls::certificate_file(
                    &common::KAFKA_SSL_CERTIFICATE_FILE,
                    &certificate,
                    tls::Holds::Certificate,
                )?,
                tls::readable_file(&common::KAFKA_SSL_KEY_FILE, &key)?,
            )));
        }
        (Some(_), None) => (
            &common::KAFKA_SSL_KEY_FILE,
            &common::KAFKA_SSL_CERTIFICATE_FILE,
        ),
        (None, Some(_)) => (
            &common::KAFKA_SSL_CERTIFICATE_FILE,
            &common::KAFKA_SSL_KEY_FILE,
        ),
    };
    Err(SettingError::Invalid {
        name: missing.name,
        value: String::new(),
        reason: format!("must be set together with {}", given.name),
    })
}

/// The SASL login of a `sasl_*` protocol; a login set for another protocol is refused.
fn sasl_login(env: &Env, protocol: SecurityProtocol) -> Result<Option<SaslLogin>, SettingError> {
    if !protocol.uses_sasl() {
        for setting in [&common::KAFKA_SASL_USERNAME, &common::KAFKA_SASL_PASSWORD] {
            if !env.text(setting)?.is_empty() {
                return Err(SettingError::Invalid {
                    name: setting.name,
                    value: "<set>".into(),
                    reason: "is set, but KAFKA_SECURITY_PROTOCOL has no SASL login (sasl_ssl or sasl_plaintext)".into(),
                });
            }
        }
        return Ok(None);
    }
    let mechanism = env
        .text(&common::KAFKA_SASL_MECHANISM)?
        .to_ascii_uppercase();
    if !["SCRAM-SHA-256", "SCRAM-SHA-512", "PLAIN"].contains(&mechanism.as_str()) {
        return Err(SettingError::Invalid {
            name: common::KAFKA_SASL_MECHANISM.name,
            value: mechanism,
            reason: "expected SCRAM-SHA-256, SCRAM-SHA-512 or PLAIN".into(),
        });
    }
    let required = |setting: &crate::Setting| match env.text(setting)? {
        value if value.is_empty() => Err(SettingError::Missing {
            name: setting.name,
            help: setting.help,
        }),
        value => Ok(value),
    };
    Ok(Some(SaslLogin {
        mechanism,
        username: required(&common::KAFKA_SASL_USERNAME)?,
        password: required(&common::KAFKA_SASL_PASSWORD)?,
    }))
}

/// sqlx accepts any scheme here; anything but Postgres is a configuration error. Errors
/// show the URL without its password.
fn database_options(env: &Env) -> Result<PgConnectOptions, SettingError> {
    let url = env.text(&common::DATABASE_URL)?;
    let invalid = |reason: String| SettingError::Invalid {
        name: common::DATABASE_URL.name,
        value: without_password(&url),
        reason,
    };
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err(invalid("expected a postgres:// URL".into()));
    }
    let options: PgConnectOptions = url
        .parse()
        .map_err(|e: sqlx::Error| invalid(e.to_string()))?;
    // The authority file is read on every connection; check it once now. sqlx takes the
    // last of the parameter's spellings, and PGSSLROOTCERT when the URL has none.
    let root = url::Url::parse(&url).ok().and_then(|parsed| {
        parsed
            .query_pairs()
            .filter(|(name, _)| ["sslrootcert", "ssl-root-cert", "ssl-ca"].contains(&&**name))
            .map(|(_, value)| value.into_owned())
            .last()
    });
    let root = root.or_else(|| {
        std::env::var("PGSSLROOTCERT")
            .ok()
            .filter(|v| !v.is_empty())
    });
    if let Some(ca) = root {
        if !matches!(
            options.get_ssl_mode(),
            PgSslMode::VerifyCa | PgSslMode::VerifyFull
        ) {
            return Err(invalid(format!(
                "sslrootcert={ca} is only used with sslmode=verify-full (or verify-ca)"
            )));
        }
        tls::certificate_file(&common::DATABASE_URL, &ca, tls::Holds::OneAuthority).map_err(
            |e| match e {
                SettingError::Invalid { reason, .. } => {
                    invalid(format!("sslrootcert={ca}: {reason}"))
                }
                other => other,
            },
        )?;
    }
    Ok(options)
}

/// `url` with its password replaced by `***`, for messages.
fn without_password(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        Ok(_) => url.to_owned(),
        Err(_) => "<not a URL>".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_describe_the_local_stack() {
        let infra = Infrastructure::from_env(&Env::default()).unwrap();
        assert_eq!(infra.kafka.brokers, "127.0.0.1:9092");
        assert_eq!(infra.partitions, 8);
        assert_eq!(infra.kafka.session_timeout, Duration::from_secs(6));
        assert_eq!(infra.database.get_port(), 55432);
        assert_eq!(infra.topics.events("orders"), "orders.events");
    }

    #[test]
    fn an_otlp_endpoint_is_an_http_url_or_nothing() {
        for (value, expected) in [
            ("", None),
            ("  ", None),
            ("http://127.0.0.1:4318", Some("http://127.0.0.1:4318/")),
            (
                "https://collector.example:4318/",
                Some("https://collector.example:4318/"),
            ),
        ] {
            let env = Env::from_pairs([("OTEL_EXPORTER_OTLP_ENDPOINT", value)]);
            let infra = Infrastructure::from_env(&env).unwrap();
            assert_eq!(infra.traces.as_deref(), expected, "{value:?}");
        }
        for value in [
            "127.0.0.1:4318",
            "grpc://collector:4317",
            "http://",
            "http://c:4318/?x=1",
            "not a url",
        ] {
            let env = Env::from_pairs([("OTEL_EXPORTER_OTLP_ENDPOINT", value)]);
            let err = Infrastructure::from_env(&env).unwrap_err().to_string();
            assert!(
                err.starts_with("OTEL_EXPORTER_OTLP_ENDPOINT="),
                "{value}: {err}"
            );
            assert!(!err.contains('\n'), "{err}");
        }
    }

    #[test]
    fn bad_values_are_refused_with_the_variable_named() {
        let env = Env::from_pairs([("EVENT_PARTITIONS", "0")]);
        let err = Infrastructure::from_env(&env).unwrap_err();
        assert!(err.to_string().starts_with("EVENT_PARTITIONS"), "{err}");
        for session in ["999", "300001"] {
            let env = Env::from_pairs([("KAFKA_SESSION_TIMEOUT_MS", session)]);
            let err = Infrastructure::from_env(&env).unwrap_err();
            assert!(
                err.to_string().starts_with("KAFKA_SESSION_TIMEOUT_MS"),
                "{err}"
            );
        }
        let env = Env::from_pairs([("DATABASE_URL", "mysql://nope")]);
        let err = Infrastructure::from_env(&env).unwrap_err();
        assert!(err.to_string().starts_with("DATABASE_URL"), "{err}");
    }

    #[test]
    fn kafka_security_is_plaintext_unless_asked_and_checked_when_asked() {
        let infra = Infrastructure::from_env(&Env::default()).unwrap();
        assert_eq!(infra.kafka.security, KafkaSecurity::default());
        let refused = |pairs: &[(&str, &str)], starts: &str| {
            let err = Infrastructure::from_env(&Env::from_pairs(pairs.iter().copied()))
                .unwrap_err()
                .to_string();
            assert!(err.starts_with(starts), "{pairs:?}: {err}");
            assert!(!err.contains('\n'), "{err}");
        };
        refused(
            &[("KAFKA_SECURITY_PROTOCOL", "tls")],
            "KAFKA_SECURITY_PROTOCOL",
        );
        refused(
            &[("KAFKA_SECURITY_PROTOCOL", "sasl_ssl")],
            "KAFKA_SASL_USERNAME is required",
        );
        refused(
            &[
                ("KAFKA_SECURITY_PROTOCOL", "SASL_SSL"),
                ("KAFKA_SASL_USERNAME", "shop"),
                ("KAFKA_SASL_PASSWORD", "secret"),
                ("KAFKA_SASL_MECHANISM", "GSSAPI"),
            ],
            "KAFKA_SASL_MECHANISM",
        );
        refused(
            &[
                ("KAFKA_SECURITY_PROTOCOL", "ssl"),
                ("KAFKA_SSL_CA_FILE", "/no/ca.pem"),
            ],
            "KAFKA_SSL_CA_FILE=\"/no/ca.pem\" is invalid: cannot read it",
        );
        refused(
            &[
                ("KAFKA_SECURITY_PROTOCOL", "ssl"),
                ("KAFKA_SSL_KEY_FILE", "/k.pem"),
            ],
            "KAFKA_SSL_CERTIFICATE_FILE",
        );
        refused(
            &[(
                "DATABASE_URL",
                "postgres://h/db?sslmode=verify-full&sslrootcert=/no/ca.pem",
            )],
            "DATABASE_URL=\"postgres://h/db?sslmode=verify-full&sslrootcert=/no/ca.pem\" is invalid: sslrootcert=/no/ca.pem: cannot read it",
        );
        let env = Env::from_pairs([
            ("KAFKA_SECURITY_PROTOCOL", "sasl_ssl"),
            ("KAFKA_SASL_USERNAME", "shop"),
            ("KAFKA_SASL_PASSWORD", "secret"),
        ]);
        let infra = Infrastructure::from_env(&env).unwrap();
        let login = infra.kafka.security.sasl.clone().unwrap();
        assert_eq!(login.mechanism, "SCRAM-SHA-256");
        assert!(
            !format!("{infra:?}").contains("secret"),
            "the password shows in Debug"
        );
    }

    #[test]
    fn the_database_password_shows_nowhere() {
        let url = "postgres://shop:hunter2@db:5432/shop?sslmode=verify_full";
        let err = Infrastructure::from_env(&Env::from_pairs([("DATABASE_URL", url)]))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("DATABASE_URL=\"postgres://shop:***@db:5432/shop"),
            "{err}"
        );
        let url = "postgres://shop:hunter2@db:5432/shop";
        let infra = Infrastructure::from_env(&Env::from_pairs([("DATABASE_URL", url)])).unwrap();
        assert!(!format!("{infra:?}").contains("hunter2"));
    }

    #[test]
    fn an_authority_file_needs_a_verifying_mode_and_the_last_spelling_counts() {
        let refused = |url: &str, part: &str| {
            let err = Infrastructure::from_env(&Env::from_pairs([("DATABASE_URL", url)]))
                .unwrap_err()
                .to_string();
            assert!(err.contains(part), "{url}: {err}");
        };
        refused(
            "postgres://h/db?sslmode=require&sslrootcert=/etc/hostname",
            "only used with sslmode=verify-full",
        );
        refused(
            "postgres://h/db?sslmode=verify-full&sslrootcert=/etc/hostname&ssl-ca=%2Fno%2Fca.pem",
            "sslrootcert=/no/ca.pem: cannot read it",
        );
    }
}

/// What every service's configuration starts with: where it listens, and what it runs on.
#[derive(Clone, Debug)]
pub struct ServiceConfig {
    pub addr: std::net::SocketAddr,
    pub infrastructure: Infrastructure,
}

impl ServiceConfig {
    /// Reads the listen address from `addr` and the rest from the common settings.
    pub fn from_env(env: &Env, addr: &crate::Setting) -> Result<Self, SettingError> {
        Ok(Self {
            addr: env.parse(addr)?,
            infrastructure: Infrastructure::from_env(env)?,
        })
    }
}

/// `OTEL_EXPORTER_OTLP_ENDPOINT`: empty, or an http(s) URL with a host (no query).
fn otlp_endpoint(env: &Env) -> Result<Option<String>, SettingError> {
    let value = env.text(&common::OTEL_EXPORTER_OTLP_ENDPOINT)?;
    let value = value.trim();
    if value.is_empty() {
        return Ok(None);
    }
    let invalid = |reason: &str| SettingError::Invalid {
        name: common::OTEL_EXPORTER_OTLP_ENDPOINT.name,
        value: value.to_owned(),
        reason: reason.into(),
    };
    let url = url::Url::parse(value).map_err(|e| invalid(&e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(invalid("must be an http:// or https:// URL with a host"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(invalid("must have no query or fragment"));
    }
    Ok(Some(url.to_string()))
}
