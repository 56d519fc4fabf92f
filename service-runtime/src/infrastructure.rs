//! The broker and the database every service runs on: their settings, read once from the
//! environment, and the clients made from them. Making clients contacts nothing, so a
//! service starts while its dependencies are down.

use std::time::Duration;

use event_store::{
    KafkaSecurity, KafkaSettings, SaslLogin, SecurityProtocol, TopicAdmin, TopicNames, TopicSpec,
};
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use crate::settings::{Env, SettingError, common};
use crate::tls;

#[derive(Clone, Debug)]
pub struct Infrastructure {
    pub kafka: KafkaSettings,
    pub topics: TopicNames,
    pub partitions: i32,
    pub database: PgConnectOptions,
    pub max_connections: u32,
    pub log_filter: String,
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
        .map(|path| tls::certificate_file(&common::KAFKA_SSL_CA_FILE, &path))
        .transpose()?;
    let client_certificate = match (
        file(&common::KAFKA_SSL_CERTIFICATE_FILE)?,
        file(&common::KAFKA_SSL_KEY_FILE)?,
    ) {
        (None, None) => None,
        (Some(certificate), Some(key)) => Some((
            tls::certificate_file(&common::KAFKA_SSL_CERTIFICATE_FILE, &certificate)?,
            tls::readable_file(&common::KAFKA_SSL_KEY_FILE, &key)?,
        )),
        (certificate, _) => {
            let (missing, given) = if certificate.is_some() {
                (
                    &common::KAFKA_SSL_KEY_FILE,
                    &common::KAFKA_SSL_CERTIFICATE_FILE,
                )
            } else {
                (
                    &common::KAFKA_SSL_CERTIFICATE_FILE,
                    &common::KAFKA_SSL_KEY_FILE,
                )
            };
            return Err(SettingError::Invalid {
                name: missing.name,
                value: String::new(),
                reason: format!("must be set together with {}", given.name),
            });
        }
    };
    if !protocol.uses_tls() && (ca_file.is_some() || client_certificate.is_some()) {
        return Err(SettingError::Invalid {
            name: common::KAFKA_SECURITY_PROTOCOL.name,
            value: env.text(&common::KAFKA_SECURITY_PROTOCOL)?,
            reason: "KAFKA_SSL_* files are set, but the protocol uses no TLS (ssl or sasl_ssl)"
                .into(),
        });
    }
    let sasl = if protocol.uses_sasl() {
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
        Some(SaslLogin {
            mechanism,
            username: required(&common::KAFKA_SASL_USERNAME)?,
            password: required(&common::KAFKA_SASL_PASSWORD)?,
        })
    } else {
        None
    };
    Ok(KafkaSecurity {
        protocol,
        ca_file,
        client_certificate,
        sasl,
    })
}

/// sqlx accepts any scheme here; anything but Postgres is a configuration error.
fn database_options(env: &Env) -> Result<PgConnectOptions, SettingError> {
    let url = env.text(&common::DATABASE_URL)?;
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err(SettingError::Invalid {
            name: common::DATABASE_URL.name,
            value: url,
            reason: "expected a postgres:// URL".into(),
        });
    }
    let options: PgConnectOptions = env.parse(&common::DATABASE_URL)?;
    // The authority file is read on every connection; check it once now.
    if let Some(ca) = url_parameter(&url, &["sslrootcert", "ssl-root-cert", "ssl-ca"]) {
        tls::certificate_file(&common::DATABASE_URL, &ca).map_err(|e| match e {
            SettingError::Invalid { name, reason, .. } => SettingError::Invalid {
                name,
                value: format!("...sslrootcert={ca}"),
                reason,
            },
            other => other,
        })?;
    }
    Ok(options)
}

/// The value of the first of `names` in the query of `url`, percent-decoded.
fn url_parameter(url: &str, names: &[&str]) -> Option<String> {
    let (_, query) = url.split_once('?')?;
    query.split('&').find_map(|pair| {
        let (name, value) = pair.split_once('=')?;
        names.contains(&name).then(|| percent_decode(value))
    })
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (b'+', _) => {
                out.push(b' ');
                i += 1;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
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
            "DATABASE_URL=\"...sslrootcert=/no/ca.pem\" is invalid: cannot read it",
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
    fn url_parameters_are_found_and_decoded() {
        let url = "postgres://h/db?sslmode=verify-full&sslrootcert=%2Fetc%2Fca%20x.pem";
        assert_eq!(
            url_parameter(url, &["sslrootcert"]).as_deref(),
            Some("/etc/ca x.pem")
        );
        assert_eq!(url_parameter(url, &["sslcert"]), None);
        assert_eq!(url_parameter("postgres://h/db", &["sslmode"]), None);
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
