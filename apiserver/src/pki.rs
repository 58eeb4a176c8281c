//! The cluster's PKI: a CA made at first start and kept in the data dir, the API
//! server's serving certificate, and client certificates whose subject carries the
//! identity (CN = user name, O = groups), as upstream's x509 authenticator reads it.

use std::{
    io::Write,
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

/// Errors of the PKI.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A client certificate can carry at most two groups.
    #[error("a client certificate carries at most 2 groups, {0} given")]
    TooManyGroups(usize),
    /// Generating or parsing a certificate or key failed.
    #[error("certificate: {0}")]
    Cert(#[from] rcgen::Error),
}

/// Result with the PKI's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A certificate and its private key, both PEM.
#[derive(Clone, Debug)]
pub struct CertPair {
    /// The certificate chain's leaf, PEM.
    pub cert_pem: String,
    /// The private key, PEM (PKCS#8).
    pub key_pem: String,
}

/// The cluster CA and what it issues.
pub struct Pki {
    ca_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for Pki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pki").finish_non_exhaustive()
    }
}

const CA_CERT: &str = "ca.crt";
const CA_KEY: &str = "ca.key";

impl Pki {
    /// Loads the CA from `dir`, or makes one there if `dir` has none.
    pub fn load_or_create(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|source| Error::Io {
            path: dir.to_owned(),
            source,
        })?;
        let (cert_path, key_path) = (dir.join(CA_CERT), dir.join(CA_KEY));
        if cert_path.exists() && key_path.exists() {
            let ca_pem = read(&cert_path)?;
            let key = KeyPair::from_pem(&read(&key_path)?)?;
            let issuer = Issuer::from_ca_cert_pem(&ca_pem, key)?;
            return Ok(Self { ca_pem, issuer });
        }
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name = name("sextant-ca", &[]);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_after = rcgen::date_time_ymd(2036, 1, 1);
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        // Key first: a crash between the two writes leaves no CA cert without its key.
        write_private(&key_path, &key.serialize_pem())?;
        write_private(&cert_path, &cert.pem())?;
        tracing::info!(dir = %dir.display(), "generated the cluster CA");
        Ok(Self {
            ca_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// The CA certificate, PEM, for clients' trust and kubeconfigs.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The API server's serving certificate for `hosts` (DNS names or IP addresses).
    pub fn serving_cert(&self, hosts: &[String]) -> Result<CertPair> {
        self.serving_cert_named("sextant-apiserver", hosts)
    }

    /// A serving certificate named `common_name` for `hosts` (a kubelet's, say).
    pub fn serving_cert_named(&self, common_name: &str, hosts: &[String]) -> Result<CertPair> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name = name(common_name, &[]);
        params.subject_alt_names = hosts
            .iter()
            .map(|h| match h.parse::<std::net::IpAddr>() {
                Ok(ip) => Ok(SanType::IpAddress(ip)),
                Err(_) => Ok(SanType::DnsName(h.clone().try_into()?)),
            })
            .collect::<Result<_, rcgen::Error>>()?;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        self.issue(params)
    }

    /// A client certificate for `user` in `groups` (at most two).
    pub fn client_cert(&self, user: &str, groups: &[&str]) -> Result<CertPair> {
        if groups.len() > 2 {
            return Err(Error::TooManyGroups(groups.len()));
        }
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name = name(user, groups);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        self.issue(params)
    }

    fn issue(&self, mut params: CertificateParams) -> Result<CertPair> {
        params.not_after = rcgen::date_time_ymd(2036, 1, 1);
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(CertPair {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// OID of organizationName (2.5.4.10).
const ORGANIZATION_OID: [u64; 4] = [2, 5, 4, 10];

fn name(common_name: &str, organizations: &[&str]) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    // rcgen keeps one value per attribute type; a second O is written under the same
    // OID as a custom type, which every x509 reader sees as a second O.
    if let Some(first) = organizations.first() {
        dn.push(DnType::OrganizationName, *first);
    }
    if let Some(second) = organizations.get(1) {
        dn.push(DnType::CustomDnType(ORGANIZATION_OID.to_vec()), *second);
    }
    dn
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|source| Error::Io {
        path: path.to_owned(),
        source,
    })
}

/// Writes `contents` readable by the owner only, replacing the file atomically.
pub fn write_private(path: &Path, contents: &str) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let io = |source| Error::Io {
        path: path.to_owned(),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io)?;
    f.write_all(contents.as_bytes()).map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

/// A kubeconfig with one cluster, user and context, all named `sextant`, carrying
/// the CA and the client certificate inline (base64, as kubectl expects).
pub fn kubeconfig(server_url: &str, ca_pem: &str, client: &CertPair) -> String {
    use base64::{Engine, engine::general_purpose::STANDARD};
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: sextant
  cluster:
    server: {server_url}
    certificate-authority-data: {ca}
users:
- name: sextant
  user:
    client-certificate-data: {cert}
    client-key-data: {key}
contexts:
- name: sextant
  context:
    cluster: sextant
    user: sextant
current-context: sextant
",
        ca = STANDARD.encode(ca_pem),
        cert = STANDARD.encode(&client.cert_pem),
        key = STANDARD.encode(&client.key_pem),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ca_is_made_once_and_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let a = Pki::load_or_create(dir.path()).unwrap();
        let b = Pki::load_or_create(dir.path()).unwrap();
        assert_eq!(a.ca_pem(), b.ca_pem());
        let mode = std::fs::metadata(dir.path().join(CA_KEY))
            .unwrap()
            .permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );
    }

    #[test]
    fn client_certificates_carry_user_and_groups() {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::load_or_create(dir.path()).unwrap();
        let pair = pki.client_cert("alice", &["dev", "ops"]).unwrap();
        let (_, pem) = x509_parser::pem::parse_x509_pem(pair.cert_pem.as_bytes()).unwrap();
        let cert = pem.parse_x509().unwrap();
        let cn: Vec<&str> = cert
            .subject()
            .iter_common_name()
            .filter_map(|a| a.as_str().ok())
            .collect();
        let o: Vec<&str> = cert
            .subject()
            .iter_organization()
            .filter_map(|a| a.as_str().ok())
            .collect();
        assert_eq!(cn, ["alice"]);
        assert_eq!(o, ["dev", "ops"]);
        assert!(matches!(
            pki.client_cert("bob", &["a", "b", "c"]),
            Err(Error::TooManyGroups(3))
        ));
    }
}
