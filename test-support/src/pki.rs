//! A throwaway public-key infrastructure for TLS tests, as PEM files in a temporary
//! folder: an authority, a server certificate it signed for `127.0.0.1` and `localhost`,
//! an expired one, and a second authority that signed nothing the servers use (the
//! "wrong CA" a misconfigured client would trust).

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    date_time_ymd,
};

/// A certificate and its private key (unencrypted PKCS#8), each in its own file, and both
/// in one file (key first) as Kafka's PEM key store wants them.
#[derive(Clone, Debug)]
pub struct ServerFiles {
    pub certificate: PathBuf,
    pub key: PathBuf,
    pub key_and_certificate: PathBuf,
}

#[derive(Debug)]
pub struct TestPki {
    /// The authority's certificate: what a correctly configured client trusts.
    pub ca: PathBuf,
    /// Another authority's certificate: what a misconfigured client trusts.
    pub stranger_ca: PathBuf,
    /// Valid now, for `127.0.0.1` and `localhost`, signed by [`Self::ca`].
    pub server: ServerFiles,
    /// Valid only in January 2020, otherwise like [`Self::server`].
    pub expired: ServerFiles,
    /// Valid now, signed by [`Self::ca`], for another host (`elsewhere.invalid`) only.
    pub elsewhere: ServerFiles,
    dir: tempfile::TempDir,
}

fn authority(name: &str) -> anyhow::Result<(String, Issuer<'static, KeyPair>)> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.distinguished_name.push(DnType::CommonName, name);
    let key = KeyPair::generate()?;
    let pem = params.self_signed(&key)?.pem();
    Ok((pem, Issuer::new(params, key)))
}

impl TestPki {
    pub fn generate() -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let (ca_pem, issuer) = authority("shop test CA")?;
        let (stranger_pem, _) = authority("a CA nobody here uses")?;
        let write = |name: &str, text: &str| -> anyhow::Result<PathBuf> {
            let path = dir.path().join(name);
            std::fs::write(&path, text)?;
            Ok(path)
        };
        let server = |name: &str, expired: bool| -> anyhow::Result<ServerFiles> {
            let names = if name == "elsewhere" {
                vec!["elsewhere.invalid".to_owned()]
            } else {
                vec!["127.0.0.1".to_owned(), "localhost".to_owned()]
            };
            let mut params = CertificateParams::new(names)?;
            params
                .distinguished_name
                .push(DnType::CommonName, format!("{name} 127.0.0.1"));
            if expired {
                params.not_before = date_time_ymd(2020, 1, 1);
                params.not_after = date_time_ymd(2020, 2, 1);
            }
            let key = KeyPair::generate()?;
            let certificate = params.signed_by(&key, &issuer)?.pem();
            let key = key.serialize_pem();
            Ok(ServerFiles {
                certificate: write(&format!("{name}.crt"), &certificate)?,
                key: write(&format!("{name}.key"), &key)?,
                key_and_certificate: write(&format!("{name}.pem"), &format!("{key}{certificate}"))?,
            })
        };
        Ok(Self {
            ca: write("ca.crt", &ca_pem)?,
            stranger_ca: write("stranger-ca.crt", &stranger_pem)?,
            server: server("server", false)?,
            expired: server("expired", true)?,
            elsewhere: server("elsewhere", false)?,
            dir,
        })
    }

    /// The folder of the files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}
