//! TLS towards the dependencies (Kafka, Postgres, webhook receivers), checked at start:
//! the certificate files a setting names are read once (present, PEM, in their validity),
//! and a server's certificate is tried with one handshake, so that a wrong authority or an
//! expired certificate stops a service with one line instead of failing every call later.
//!
//! Every TLS client of the shop is the system's OpenSSL (librdkafka, sqlx and reqwest all
//! use it), so the wording of errors is one. Which authorities each trusts differs, and
//! [`Trust`] says it: Kafka and Postgres trust only the file given (the system's without
//! one), webhooks the system's and the file's.

use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use openssl::asn1::Asn1Time;
use openssl::ssl::{HandshakeError, SslConnector, SslMethod};
use openssl::x509::store::X509StoreBuilder;
use openssl::x509::{X509, X509VerifyResult};

use crate::settings::{Setting, SettingError};

/// What a certificate file holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Holds {
    /// Authorities to trust: usable while one of them is in its validity (OpenSSL passes
    /// over the others).
    Authorities,
    /// Postgres' `sslrootcert`: one authority (sqlx reads the first certificate only).
    OneAuthority,
    /// A certificate to present, first in the file, then its chain.
    Certificate,
}

/// The PEM file `path` given in `setting`, readable, holding certificates usable now.
pub fn certificate_file(
    setting: &Setting,
    path: &str,
    holds: Holds,
) -> Result<PathBuf, SettingError> {
    let invalid = |reason: String| SettingError::Invalid {
        name: setting.name,
        value: path.to_owned(),
        reason,
    };
    let pem = std::fs::read(path).map_err(|e| invalid(format!("cannot read it: {e}")))?;
    let certificates = X509::stack_from_pem(&pem)
        .ok()
        .filter(|c| !c.is_empty())
        .ok_or_else(|| invalid("holds no PEM certificate".into()))?;
    let now = Asn1Time::days_from_now(0).map_err(|e| invalid(e.to_string()))?;
    let out_of_date = |certificate: &X509| {
        let subject = subject_of(certificate);
        if certificate.not_after() < now {
            Some(format!(
                "the certificate {subject} expired on {}",
                certificate.not_after()
            ))
        } else if certificate.not_before() > now {
            Some(format!(
                "the certificate {subject} is not valid before {}",
                certificate.not_before()
            ))
        } else {
            None
        }
    };
    let problem = match holds {
        Holds::OneAuthority if certificates.len() > 1 => Some(format!(
            "holds {} certificates; Postgres' client reads only the first, so give one authority",
            certificates.len()
        )),
        Holds::Authorities if certificates.iter().any(|c| out_of_date(c).is_none()) => None,
        _ => out_of_date(&certificates[0]),
    };
    match problem {
        Some(reason) => Err(invalid(reason)),
        None => Ok(PathBuf::from(path)),
    }
}

/// A file that must exist and be readable (a private key).
pub fn readable_file(setting: &Setting, path: &str) -> Result<PathBuf, SettingError> {
    std::fs::File::open(path).map_err(|e| SettingError::Invalid {
        name: setting.name,
        value: path.to_owned(),
        reason: format!("cannot read it: {e}"),
    })?;
    Ok(PathBuf::from(path))
}

fn subject_of(certificate: &X509) -> String {
    certificate
        .subject_name()
        .entries()
        .filter_map(|e| e.data().to_string().ok())
        .collect::<Vec<_>>()
        .join(", ")
}

/// What one TLS handshake with a server found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Handshake {
    /// The server's certificate is trusted and names the host.
    Trusted,
    /// The server answered, and its certificate is not acceptable: waiting will not fix it.
    Refused(String),
    /// No TLS server could be reached (down, or not there yet).
    Unreachable(String),
}

/// Which authorities a handshake trusts.
#[derive(Clone, Copy, Debug)]
pub enum Trust<'a> {
    /// Those of the file only (the system's when there is none), as librdkafka does.
    Only(Option<&'a Path>),
    /// The system's and those of the file, as reqwest does.
    SystemAnd(Option<&'a Path>),
}

/// One handshake with `host:port`, trusting `trust`, checking that the certificate names
/// `host` (a DNS name or an IP address). Blocks its thread: each of the name lookup, the
/// connection and the handshake's reads may take up to `within`.
pub fn handshake(host: &str, port: u16, trust: Trust<'_>, within: Duration) -> Handshake {
    let address = match (host, port).to_socket_addrs().map(|mut a| a.next()) {
        Ok(Some(address)) => address,
        Ok(None) => return Handshake::Unreachable(format!("{host} has no address")),
        Err(e) => return Handshake::Unreachable(format!("cannot resolve {host}: {e}")),
    };
    let stream = match TcpStream::connect_timeout(&address, within) {
        Ok(stream) => stream,
        Err(e) => return Handshake::Unreachable(format!("cannot connect to {host}:{port}: {e}")),
    };
    let _ = stream.set_read_timeout(Some(within));
    let _ = stream.set_write_timeout(Some(within));
    let connector = match connector(trust) {
        Ok(connector) => connector,
        Err(reason) => return Handshake::Refused(reason),
    };
    let configured = match connector.configure() {
        Ok(configured) => configured,
        Err(e) => return Handshake::Refused(e.to_string()),
    };
    match configured.connect(host, stream) {
        Ok(_) => Handshake::Trusted,
        Err(HandshakeError::Failure(failed)) => {
            let verdict = failed.ssl().verify_result();
            if verdict == X509VerifyResult::OK {
                Handshake::Unreachable(format!(
                    "TLS handshake with {host}:{port} failed: {}",
                    failed.error()
                ))
            } else {
                Handshake::Refused(format!(
                    "the certificate of {host}:{port} is not trusted: {}",
                    verdict.error_string()
                ))
            }
        }
        Err(e) => Handshake::Unreachable(format!("TLS handshake with {host}:{port} failed: {e}")),
    }
}

fn connector(trust: Trust<'_>) -> Result<SslConnector, String> {
    let mut builder = SslConnector::builder(SslMethod::tls_client()).map_err(|e| e.to_string())?;
    let load = |file: &Path| -> Result<Vec<X509>, String> {
        std::fs::read(file)
            .map_err(|e| e.to_string())
            .and_then(|pem| X509::stack_from_pem(&pem).map_err(|e| e.to_string()))
            .map_err(|e| format!("cannot load {}: {e}", file.display()))
    };
    match trust {
        Trust::SystemAnd(Some(file)) => {
            for authority in load(file)? {
                builder
                    .cert_store_mut()
                    .add_cert(authority)
                    .map_err(|e| e.to_string())?;
            }
        }
        Trust::Only(Some(file)) => {
            let mut store = X509StoreBuilder::new().map_err(|e| e.to_string())?;
            for authority in load(file)? {
                store.add_cert(authority).map_err(|e| e.to_string())?;
            }
            builder.set_cert_store(store.build());
        }
        Trust::SystemAnd(None) | Trust::Only(None) => {}
    }
    Ok(builder.build())
}

/// `host` and `port` of a `host:port` pair (an IPv6 address in brackets).
pub fn host_and_port(address: &str) -> Option<(String, u16)> {
    let (host, port) = address.trim().rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    Some((host.to_owned(), port.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CA: Setting = Setting {
        name: "SOME_CA_FILE",
        default: Some(""),
        help: "a CA",
    };

    #[test]
    fn a_missing_or_empty_certificate_file_is_one_line_naming_the_setting() {
        let err = certificate_file(&CA, "/no/such/ca.pem", Holds::Authorities).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("SOME_CA_FILE=\"/no/such/ca.pem\" is invalid: cannot read it"),
            "{err}"
        );
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("ca.pem");
        std::fs::write(&empty, "not a certificate").unwrap();
        let err = certificate_file(&CA, empty.to_str().unwrap(), Holds::Authorities).unwrap_err();
        assert!(
            err.to_string().ends_with("holds no PEM certificate"),
            "{err}"
        );
        assert!(!err.to_string().contains('\n'));
    }

    #[test]
    fn host_and_port_splits_names_and_addresses() {
        assert_eq!(
            host_and_port("127.0.0.1:9094"),
            Some(("127.0.0.1".into(), 9094))
        );
        assert_eq!(host_and_port("kafka:9092"), Some(("kafka".into(), 9092)));
        assert_eq!(host_and_port("[::1]:9092"), Some(("::1".into(), 9092)));
        assert_eq!(host_and_port("kafka"), None);
    }
}
