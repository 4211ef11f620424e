//! The security dir: the region's certificate authority, each node's certificate, the token key and an
//! admin token, as files (`fjord certs` makes them; nodes and clients read them).
//!
//! A node's certificate names it `node-<id>.<region>.fjord` (a DNS subject alternative name) and serves for
//! both ends of a TLS connection. Nodes trust only the region's CA: a peer proves which node it is by the
//! name in its verified certificate, never by what it says in a request.

use std::io::Write;
use std::path::Path;
use std::path::PathBuf;

use anyhow::Context;
use fjord_raft::NodeId;
use fjord_raft::network::node_tls_name as node_name;
use rcgen::BasicConstraints;
use rcgen::CertificateParams;
use rcgen::DnType;
use rcgen::ExtendedKeyUsagePurpose;
use rcgen::IsCa;
use rcgen::Issuer;
use rcgen::KeyPair;
use rcgen::KeyUsagePurpose;
use tonic::transport::CertificateDer;

use crate::security::tokens::Claims;
use crate::security::tokens::Grant;
use crate::security::tokens::Operation;
use crate::security::tokens::TokenKey;
use crate::security::tokens::encode_hex;

/// The CA's subject: node certificates name it as their issuer.
const CA_COMMON_NAME: &str = "Fjord region certificate authority";
/// How long a CA made here is valid.
const CA_VALID_DAYS: i64 = 10 * 365;
/// How long a node certificate made here is valid.
const NODE_VALID_DAYS: i64 = 2 * 365;

/// Whether `region` can be part of a DNS name (and so of node certificates): 1 to 63 lower-case letters,
/// digits and inner hyphens.
pub fn check_region_name(region: &str) -> anyhow::Result<()> {
    let valid = (1..=63).contains(&region.len())
        && region.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !region.starts_with('-')
        && !region.ends_with('-');
    anyhow::ensure!(valid, "region name {region:?}: 1 to 63 lower-case letters, digits and inner hyphens");
    Ok(())
}

/// The node a verified peer certificate chain (leaf first) names in `region`, if it names one.
pub fn peer_node(chain: &[CertificateDer<'_>], region: &str) -> Option<NodeId> {
    let leaf = webpki::EndEntityCert::try_from(chain.first()?).ok()?;
    let suffix = format!(".{region}.fjord");
    let node =
        leaf.valid_dns_names().find_map(|name| name.strip_prefix("node-")?.strip_suffix(&suffix)?.parse().ok())?;
    // The name was only listed; confirm the certificate is valid for it as a server name check would.
    let name = rustls_pki_types::ServerName::try_from(node_name(node, region)).ok()?;
    leaf.verify_is_valid_for_subject_name(&name).ok()?;
    Some(node)
}

/// The files of a security dir.
#[derive(Debug, Clone)]
pub struct SecurityDir {
    path: PathBuf,
}

/// What a node reads from the security dir.
pub struct NodeCredentials {
    /// The region CA's certificate (PEM): the only issuer a node trusts.
    pub ca_pem: String,
    /// This node's certificate (PEM).
    pub cert_pem: String,
    /// This node's private key (PEM).
    pub key_pem: String,
    /// The key tokens are verified with.
    pub token_key: TokenKey,
}

impl SecurityDir {
    /// The security dir at `path`.
    pub fn new(path: impl Into<PathBuf>) -> SecurityDir {
        SecurityDir { path: path.into() }
    }

    /// Where it is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The CA's certificate.
    pub fn ca_cert(&self) -> PathBuf {
        self.path.join("ca.pem")
    }

    fn ca_key(&self) -> PathBuf {
        self.path.join("ca.key")
    }

    /// Node `node_id`'s certificate.
    pub fn node_cert(&self, node_id: NodeId) -> PathBuf {
        self.path.join(format!("node-{node_id}.pem"))
    }

    fn node_key(&self, node_id: NodeId) -> PathBuf {
        self.path.join(format!("node-{node_id}.key"))
    }

    /// The token key (hex).
    pub fn token_key(&self) -> PathBuf {
        self.path.join("token.key")
    }

    /// A token that grants every operation on every stream.
    pub fn admin_token(&self) -> PathBuf {
        self.path.join("admin.token")
    }

    /// Makes whatever is missing: the CA, the token key and admin token, and a certificate for each of
    /// `nodes` in `region`. What exists is kept. Returns the files made.
    pub fn ensure(&self, region: &str, nodes: &[NodeId]) -> anyhow::Result<Vec<PathBuf>> {
        check_region_name(region)?;
        std::fs::create_dir_all(&self.path).with_context(|| format!("creating {}", self.path.display()))?;
        let mut made = Vec::new();
        if !self.ca_cert().exists() {
            let key = KeyPair::generate()?;
            let certificate = ca_params()?.self_signed(&key)?;
            write_secret(&self.ca_key(), &key.serialize_pem())?;
            write_public(&self.ca_cert(), &certificate.pem())?;
            made.extend([self.ca_cert(), self.ca_key()]);
        }
        if !self.token_key().exists() {
            write_secret(&self.token_key(), &(encode_hex(&TokenKey::generate_secret()?) + "\n"))?;
            made.push(self.token_key());
        }
        if !self.admin_token().exists() {
            let grants = vec![Grant { operations: Operation::ALL.to_vec(), stream_prefix: String::new() }];
            let token = self.issue_token("admin", grants, None)?;
            write_secret(&self.admin_token(), &(token + "\n"))?;
            made.push(self.admin_token());
        }
        for &node in nodes {
            if !self.node_cert(node).exists() {
                self.make_node_certificate(node, region)?;
                made.extend([self.node_cert(node), self.node_key(node)]);
            }
        }
        Ok(made)
    }

    fn make_node_certificate(&self, node: NodeId, region: &str) -> anyhow::Result<()> {
        let ca_key = std::fs::read_to_string(self.ca_key()).with_context(|| {
            format!("reading the CA key {} (needed to make node certificates)", self.ca_key().display())
        })?;
        let issuer = Issuer::new(ca_params()?, KeyPair::from_pem(&ca_key)?);
        let mut params = CertificateParams::new(vec![node_name(node, region)])?;
        params.distinguished_name.push(DnType::CommonName, node_name(node, region));
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        (params.not_before, params.not_after) = validity(NODE_VALID_DAYS);
        let key = KeyPair::generate()?;
        let certificate = params.signed_by(&key, &issuer)?;
        write_secret(&self.node_key(node), &key.serialize_pem())?;
        write_public(&self.node_cert(node), &certificate.pem())
    }

    /// A token signed with this dir's token key.
    pub fn issue_token(
        &self,
        subject: &str,
        grants: Vec<Grant>,
        expires_in_secs: Option<u64>,
    ) -> anyhow::Result<String> {
        let key = TokenKey::load(&self.token_key())?;
        let iat = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
        key.sign(&Claims { sub: subject.to_owned(), iat, exp: expires_in_secs.map(|secs| iat + secs), grants })
    }

    /// What node `node_id` of `region` reads: the CA, its certificate and key, the token key. Its
    /// certificate must name it.
    pub fn node_credentials(&self, node_id: NodeId, region: &str) -> anyhow::Result<NodeCredentials> {
        let read = |path: PathBuf| {
            std::fs::read_to_string(&path).with_context(|| {
                format!(
                    "reading {} (make the security dir with `fjord certs --dir {} --region {region} --nodes {node_id}`)",
                    path.display(),
                    self.path.display()
                )
            })
        };
        let credentials = NodeCredentials {
            ca_pem: read(self.ca_cert())?,
            cert_pem: read(self.node_cert(node_id))?,
            key_pem: read(self.node_key(node_id))?,
            token_key: TokenKey::load(&self.token_key())?,
        };
        let chain: Vec<CertificateDer<'static>> =
            rustls_pki_types::pem::PemObject::pem_slice_iter(credentials.cert_pem.as_bytes())
                .collect::<Result<_, _>>()
                .with_context(|| format!("{} is not a PEM certificate", self.node_cert(node_id).display()))?;
        anyhow::ensure!(
            peer_node(&chain, region) == Some(node_id),
            "{} is not a certificate for {}",
            self.node_cert(node_id).display(),
            node_name(node_id, region)
        );
        Ok(credentials)
    }
}

/// The CA's parameters: the same each time, so node certificates made later name the same issuer.
fn ca_params() -> anyhow::Result<CertificateParams> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name.push(DnType::CommonName, CA_COMMON_NAME);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    (params.not_before, params.not_after) = validity(CA_VALID_DAYS);
    Ok(params)
}

/// From an hour ago (clocks differ a little) to `days` from now.
fn validity(days: i64) -> (time::OffsetDateTime, time::OffsetDateTime) {
    let now = time::OffsetDateTime::now_utc();
    (now - time::Duration::hours(1), now + time::Duration::days(days))
}

fn write_public(path: &Path, contents: &str) -> anyhow::Result<()> {
    std::fs::write(path, contents).with_context(|| format!("writing {}", path.display()))
}

/// Writes a file only its owner may read.
fn write_secret(path: &Path, contents: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(contents.as_bytes()).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_certificate_names_its_node_and_region_only() {
        let dir = tempfile::tempdir().unwrap();
        let security = SecurityDir::new(dir.path());
        let made = security.ensure("west-1", &[1, 2]).unwrap();
        assert_eq!(made.len(), 8, "{made:?}");
        assert!(security.ensure("west-1", &[1, 2]).unwrap().is_empty(), "what exists is kept");
        assert!(security.node_credentials(2, "west-1").is_ok());
        assert!(security.node_credentials(3, "west-1").is_err(), "no certificate for node 3");
        assert!(security.node_credentials(2, "east-1").is_err(), "node 2's certificate is for west-1");
        std::fs::copy(security.node_cert(1), security.node_cert(2)).unwrap();
        let error = security.node_credentials(2, "west-1").err().unwrap();
        assert!(format!("{error:#}").contains("not a certificate for node-2.west-1.fjord"), "{error:#}");
        assert!(security.ensure("West", &[1]).is_err());
    }
}
