//! Configuration from environment variables. Every variable a service reads is declared
//! once as a [`Setting`] with its default and meaning; the list drives parsing, the README
//! table and the docker-compose consistency test, so the three cannot disagree.

use std::collections::HashMap;
use std::fmt::Display;
use std::str::FromStr;

/// One environment variable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Setting {
    pub name: &'static str,
    /// Used when the variable is unset. `None` means the variable is required.
    pub default: Option<&'static str>,
    pub help: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SettingError {
    #[error("{name} is required ({help})")]
    Missing {
        name: &'static str,
        help: &'static str,
    },
    #[error("{name}={value:?} is invalid: {reason}")]
    Invalid {
        name: &'static str,
        value: String,
        reason: String,
    },
}

/// A snapshot of the environment to read settings from.
#[derive(Clone, Debug, Default)]
pub struct Env {
    vars: HashMap<String, String>,
}

impl Env {
    pub fn from_process() -> Self {
        Self {
            vars: std::env::vars().collect(),
        }
    }

    /// For tests: exactly these variables, nothing from the process.
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        Self {
            vars: pairs
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
        }
    }

    /// The value, or the default; an error names the variable when neither exists.
    pub fn text(&self, setting: &Setting) -> Result<String, SettingError> {
        self.vars
            .get(setting.name)
            .cloned()
            .or_else(|| setting.default.map(str::to_owned))
            .ok_or(SettingError::Missing {
                name: setting.name,
                help: setting.help,
            })
    }

    /// The value parsed as `T`; the error quotes the variable, its value and the reason.
    pub fn parse<T>(&self, setting: &Setting) -> Result<T, SettingError>
    where
        T: FromStr,
        T::Err: Display,
    {
        let value = self.text(setting)?;
        value
            .trim()
            .parse()
            .map_err(|e: T::Err| SettingError::Invalid {
                name: setting.name,
                value,
                reason: e.to_string(),
            })
    }

    /// The value as a whole number of at least 1.
    pub fn positive(&self, setting: &Setting) -> Result<u64, SettingError> {
        match self.parse::<u64>(setting)? {
            0 => Err(SettingError::Invalid {
                name: setting.name,
                value: "0".into(),
                reason: "must be at least 1".into(),
            }),
            value => Ok(value),
        }
    }
}

/// Settings every service reads.
pub mod common {
    use super::Setting;

    pub const KAFKA_BROKERS: Setting = Setting {
        name: "KAFKA_BROKERS",
        default: Some("127.0.0.1:9092"),
        help: "Kafka bootstrap servers, comma-separated host:port",
    };
    pub const KAFKA_TIMEOUT_MS: Setting = Setting {
        name: "KAFKA_TIMEOUT_MS",
        default: Some("5000"),
        help: "upper bound of one broker operation before it counts as unavailable",
    };
    pub const KAFKA_SESSION_TIMEOUT_MS: Setting = Setting {
        name: "KAFKA_SESSION_TIMEOUT_MS",
        default: Some("6000"),
        help: "how long a consumer-group member may stay silent before its partitions move to the others (the takeover time after a crash)",
    };
    pub const KAFKA_SECURITY_PROTOCOL: Setting = Setting {
        name: "KAFKA_SECURITY_PROTOCOL",
        default: Some("plaintext"),
        help: "plaintext, ssl (TLS), sasl_ssl (TLS and a SASL login) or sasl_plaintext",
    };
    pub const KAFKA_SSL_CA_FILE: Setting = Setting {
        name: "KAFKA_SSL_CA_FILE",
        default: Some(""),
        help: "PEM file of the authorities that sign the brokers' certificates (empty: the system's); checked at start",
    };
    pub const KAFKA_SSL_CERTIFICATE_FILE: Setting = Setting {
        name: "KAFKA_SSL_CERTIFICATE_FILE",
        default: Some(""),
        help: "PEM client certificate, for brokers that require one (with KAFKA_SSL_KEY_FILE)",
    };
    pub const KAFKA_SSL_KEY_FILE: Setting = Setting {
        name: "KAFKA_SSL_KEY_FILE",
        default: Some(""),
        help: "PEM private key of KAFKA_SSL_CERTIFICATE_FILE",
    };
    pub const KAFKA_SASL_MECHANISM: Setting = Setting {
        name: "KAFKA_SASL_MECHANISM",
        default: Some("SCRAM-SHA-256"),
        help: "SCRAM-SHA-256, SCRAM-SHA-512 or PLAIN, for the sasl_* protocols",
    };
    pub const KAFKA_SASL_USERNAME: Setting = Setting {
        name: "KAFKA_SASL_USERNAME",
        default: Some(""),
        help: "SASL user; required with the sasl_* protocols",
    };
    pub const KAFKA_SASL_PASSWORD: Setting = Setting {
        name: "KAFKA_SASL_PASSWORD",
        default: Some(""),
        help: "SASL password; required with the sasl_* protocols",
    };
    pub const TOPIC_PREFIX: Setting = Setting {
        name: "TOPIC_PREFIX",
        default: Some(""),
        help: "prepended verbatim to every topic name",
    };
    pub const EVENT_PARTITIONS: Setting = Setting {
        name: "EVENT_PARTITIONS",
        default: Some("8"),
        help: "partitions of every topic; a topic with another count is refused",
    };
    pub const DATABASE_URL: Setting = Setting {
        name: "DATABASE_URL",
        default: Some("postgres://shop:shop@127.0.0.1:55432/shop"),
        help: "Postgres connection URL; TLS with ?sslmode=verify-full&sslrootcert=/path/ca.pem (the file is checked at start)",
    };
    pub const DATABASE_MAX_CONNECTIONS: Setting = Setting {
        name: "DATABASE_MAX_CONNECTIONS",
        default: Some("10"),
        help: "size of the Postgres connection pool",
    };
    pub const RUST_LOG: Setting = Setting {
        name: "RUST_LOG",
        default: Some("info"),
        help: "log filter (tracing EnvFilter syntax); logs are JSON lines on stdout",
    };

    pub const OTEL_EXPORTER_OTLP_ENDPOINT: Setting = Setting {
        name: "OTEL_EXPORTER_OTLP_ENDPOINT",
        default: Some(""),
        help: "OTLP/HTTP collector, such as http://127.0.0.1:4318: spans go to <URL>/v1/traces (protobuf); empty: no spans exported",
    };

    /// `own` followed by all of the common settings: the full list a service reads.
    pub fn with(own: &[Setting]) -> Vec<Setting> {
        own.iter().copied().chain(ALL).collect()
    }

    /// All of the above.
    pub const ALL: [Setting; 16] = [
        KAFKA_BROKERS,
        KAFKA_TIMEOUT_MS,
        KAFKA_SESSION_TIMEOUT_MS,
        KAFKA_SECURITY_PROTOCOL,
        KAFKA_SSL_CA_FILE,
        KAFKA_SSL_CERTIFICATE_FILE,
        KAFKA_SSL_KEY_FILE,
        KAFKA_SASL_MECHANISM,
        KAFKA_SASL_USERNAME,
        KAFKA_SASL_PASSWORD,
        TOPIC_PREFIX,
        EVENT_PARTITIONS,
        DATABASE_URL,
        DATABASE_MAX_CONNECTIONS,
        RUST_LOG,
        OTEL_EXPORTER_OTLP_ENDPOINT,
    ];
}

#[cfg(test)]
mod tests {
    use super::*;

    const PORT: Setting = Setting {
        name: "SOME_PORT",
        default: Some("8080"),
        help: "a port",
    };
    const SECRET: Setting = Setting {
        name: "SOME_SECRET",
        default: None,
        help: "must be given",
    };

    #[test]
    fn falls_back_to_defaults_and_parses() {
        let env = Env::from_pairs([]);
        assert_eq!(env.parse::<u16>(&PORT), Ok(8080));
        let env = Env::from_pairs([("SOME_PORT", " 9000 ")]);
        assert_eq!(env.parse::<u16>(&PORT), Ok(9000));
    }

    #[test]
    fn errors_name_the_variable_in_one_line() {
        let env = Env::from_pairs([("SOME_PORT", "eighty")]);
        let err = env.parse::<u16>(&PORT).unwrap_err();
        assert_eq!(
            err.to_string(),
            "SOME_PORT=\"eighty\" is invalid: invalid digit found in string"
        );
        let err = Env::default().text(&SECRET).unwrap_err();
        assert_eq!(err.to_string(), "SOME_SECRET is required (must be given)");
    }
}
