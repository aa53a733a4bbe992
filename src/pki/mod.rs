//! The cluster's secrets: three CAs, the service-account key pair and every leaf
//! certificate the nodes need, generated once with rcgen and kept in a secrets directory.
//!
//! Generation is idempotent. Each leaf is described by a [`LeafSpec`] derived from the
//! cluster; the directory's `index.json` records a hash of the spec each stored leaf was
//! issued for. A leaf is re-issued only when its spec changed (a node's IP, say), when it
//! is missing, or when the caller asks to renew leaves close to expiry. CAs are never
//! replaced once they exist. Every file is written 0600 in a 0700 directory; nothing here
//! logs key material.
//!
//! Which node receives which file is [`node_secrets`]: the least-privilege placement.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use time::{Duration, OffsetDateTime};

use crate::cluster::{Cluster, Node, Role};
use crate::fsutil;

/// How long a CA is valid: kubeadm's default, ten years.
pub const CA_VALIDITY: Duration = Duration::days(3650);
/// How long a leaf is valid: kubeadm's default, one year; `slipway secrets` renews.
pub const LEAF_VALIDITY: Duration = Duration::days(365);
/// `render` warns when a leaf expires sooner than this.
pub const EXPIRY_WARNING: Duration = Duration::days(30);
/// Bumped when the way specs map to certificates changes, to re-issue every leaf.
const SPEC_FORMAT: u32 = 1;
const INDEX: &str = "index.json";

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("generating {id}")]
    Generate {
        id: String,
        #[source]
        source: rcgen::Error,
    },
}

/// The certificate authorities, by the file stem they are stored under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub enum Ca {
    /// Cluster CA: API server, kubelets, clients (`ca`).
    Cluster,
    /// etcd CA: etcd servers, peers and clients (`etcd/ca`).
    Etcd,
    /// Front-proxy CA: the aggregation layer (`front-proxy-ca`).
    FrontProxy,
}

impl Ca {
    pub const ALL: [Ca; 3] = [Ca::Cluster, Ca::Etcd, Ca::FrontProxy];

    pub fn id(self) -> &'static str {
        match self {
            Ca::Cluster => "ca",
            Ca::Etcd => "etcd/ca",
            Ca::FrontProxy => "front-proxy-ca",
        }
    }

    fn common_name(self) -> &'static str {
        match self {
            Ca::Cluster => "kubernetes",
            Ca::Etcd => "etcd-ca",
            Ca::FrontProxy => "front-proxy-ca",
        }
    }
}

/// What a leaf certificate is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Usage {
    Server,
    Client,
    /// Both server and client auth: etcd servers and peers.
    ServerClient,
}

/// Everything that determines a leaf certificate's content.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LeafSpec {
    pub id: String,
    pub ca: Ca,
    pub common_name: String,
    pub organizations: Vec<String>,
    pub sans: Vec<String>,
    pub usage: Usage,
}

impl LeafSpec {
    fn new(id: impl Into<String>, ca: Ca, cn: impl Into<String>, usage: Usage) -> Self {
        LeafSpec {
            id: id.into(),
            ca,
            common_name: cn.into(),
            organizations: Vec::new(),
            sans: Vec::new(),
            usage,
        }
    }
    fn org(mut self, o: &str) -> Self {
        self.organizations.push(o.to_string());
        self
    }
    fn sans(mut self, sans: Vec<String>) -> Self {
        self.sans = sans;
        self
    }
}

/// Stem of a leaf's id for per-node certificates.
pub fn kubelet_client_id(node: &str) -> String {
    format!("nodes/{node}/kubelet-client")
}
pub fn kubelet_server_id(node: &str) -> String {
    format!("nodes/{node}/kubelet-server")
}
pub fn etcd_server_id(node: &str) -> String {
    format!("etcd/{node}/server")
}
pub fn etcd_peer_id(node: &str) -> String {
    format!("etcd/{node}/peer")
}

/// Every leaf the cluster needs, in a stable order.
pub fn leaf_specs(cluster: &Cluster) -> Vec<LeafSpec> {
    let mut specs = Vec::new();
    let cps: Vec<&Node> = cluster.control_plane_nodes().collect();

    let mut api_sans = vec![
        cluster.control_plane.vip.to_string(),
        cluster.network.kubernetes_service_ip().to_string(),
    ];
    for n in &cps {
        api_sans.push(n.ip.to_string());
        api_sans.push(n.name.clone());
    }
    api_sans.extend([
        "kubernetes".to_string(),
        "kubernetes.default".into(),
        "kubernetes.default.svc".into(),
        format!("kubernetes.default.svc.{}", cluster.domain),
        "localhost".into(),
        "127.0.0.1".into(),
    ]);
    specs.push(
        LeafSpec::new("apiserver", Ca::Cluster, "kube-apiserver", Usage::Server).sans(api_sans),
    );
    specs.push(
        LeafSpec::new(
            "apiserver-kubelet-client",
            Ca::Cluster,
            "kube-apiserver-kubelet-client",
            Usage::Client,
        )
        .org("system:masters"),
    );
    specs.push(LeafSpec::new(
        "apiserver-etcd-client",
        Ca::Etcd,
        "kube-apiserver-etcd-client",
        Usage::Client,
    ));
    specs.push(LeafSpec::new(
        "front-proxy-client",
        Ca::FrontProxy,
        "front-proxy-client",
        Usage::Client,
    ));
    specs.push(LeafSpec::new(
        "etcd/healthcheck-client",
        Ca::Etcd,
        "kube-etcd-healthcheck-client",
        Usage::Client,
    ));
    specs.push(LeafSpec::new(
        "controller-manager",
        Ca::Cluster,
        "system:kube-controller-manager",
        Usage::Client,
    ));
    specs.push(LeafSpec::new(
        "scheduler",
        Ca::Cluster,
        "system:kube-scheduler",
        Usage::Client,
    ));
    specs.push(
        LeafSpec::new("admin", Ca::Cluster, "kubernetes-admin", Usage::Client)
            .org("system:masters"),
    );
    for n in &cps {
        let sans = vec![
            n.name.clone(),
            "localhost".into(),
            n.ip.to_string(),
            "127.0.0.1".into(),
            "::1".into(),
        ];
        specs.push(
            LeafSpec::new(
                etcd_server_id(&n.name),
                Ca::Etcd,
                &n.name,
                Usage::ServerClient,
            )
            .sans(sans.clone()),
        );
        specs.push(
            LeafSpec::new(
                etcd_peer_id(&n.name),
                Ca::Etcd,
                &n.name,
                Usage::ServerClient,
            )
            .sans(sans),
        );
    }
    for n in &cluster.nodes {
        let cn = format!("system:node:{}", n.name);
        specs.push(
            LeafSpec::new(kubelet_client_id(&n.name), Ca::Cluster, &cn, Usage::Client)
                .org("system:nodes"),
        );
        specs.push(
            LeafSpec::new(kubelet_server_id(&n.name), Ca::Cluster, &cn, Usage::Server)
                .sans(vec![n.name.clone(), n.ip.to_string()]),
        );
    }
    specs
}

/// A certificate and its private key, PEM encoded. Debug never shows the key.
#[derive(Clone)]
pub struct CertKey {
    pub cert_pem: String,
    pub key_pem: String,
}

impl fmt::Debug for CertKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CertKey { .. }")
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Index {
    format: u32,
    /// id -> what was issued.
    entries: BTreeMap<String, IndexEntry>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct IndexEntry {
    /// SHA-256 of the spec and issuing CA; empty for CAs and the SA key.
    spec: String,
    /// Expiry, seconds since the epoch (0 for the SA key).
    not_after: i64,
}

/// The loaded secrets.
#[derive(Debug)]
pub struct Pki {
    pub dir: PathBuf,
    cas: BTreeMap<Ca, CertKey>,
    leaves: BTreeMap<String, CertKey>,
    /// Service-account signing key (PKCS#8 PEM) and its public half (SPKI PEM).
    pub sa_key_pem: String,
    pub sa_pub_pem: String,
}

/// What [`ensure`] did, for the CLI to report.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub created: Vec<String>,
    pub reissued: Vec<String>,
    pub kept: Vec<String>,
    /// Leaves that expire within [`EXPIRY_WARNING`] and were not renewed: (id, RFC 3339).
    pub expiring: Vec<(String, String)>,
}

/// Options for [`ensure`].
#[derive(Debug, Clone, Copy)]
pub struct EnsureOptions {
    pub now: OffsetDateTime,
    /// Re-issue leaves that expire within this window.
    pub renew_within: Option<Duration>,
}

impl Default for EnsureOptions {
    fn default() -> Self {
        EnsureOptions {
            now: OffsetDateTime::now_utc(),
            renew_within: None,
        }
    }
}

impl Pki {
    pub fn ca(&self, ca: Ca) -> &CertKey {
        &self.cas[&ca]
    }

    /// A leaf by id. Ids come from [`leaf_specs`], which [`ensure`] has fully issued.
    pub fn leaf(&self, id: &str) -> Option<&CertKey> {
        self.leaves.get(id)
    }
}

/// Loads the secrets in `dir`, creating what is missing and re-issuing what changed.
pub fn ensure(
    dir: &Path,
    cluster: &Cluster,
    opts: EnsureOptions,
) -> Result<(Pki, Report), PkiError> {
    let io = |op: &'static str, path: &Path| {
        let path = path.to_owned();
        move |source| PkiError::Io { op, path, source }
    };
    fsutil::create_dir_mode(dir, 0o700).map_err(io("creating", dir))?;
    let index_path = dir.join(INDEX);
    let mut index: Index = match std::fs::read(&index_path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| PkiError::Corrupt {
            path: index_path.clone(),
            reason: e.to_string(),
        })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Index::default(),
        Err(e) => return Err(io("reading", &index_path)(e)),
    };
    let mut report = Report::default();
    let store = Store { dir };

    // CAs: created once, never replaced.
    let mut cas = BTreeMap::new();
    for ca in Ca::ALL {
        let pair = match store.load(ca.id())? {
            Some(pair) => {
                report.kept.push(ca.id().to_string());
                pair
            }
            None => {
                let (pair, not_after) = new_ca(ca, opts.now)?;
                store.save(ca.id(), &pair)?;
                index.entries.insert(
                    ca.id().to_string(),
                    IndexEntry {
                        spec: String::new(),
                        not_after,
                    },
                );
                report.created.push(ca.id().to_string());
                pair
            }
        };
        cas.insert(ca, pair);
    }

    // Service-account key pair.
    let sa_key_path = dir.join("sa.key");
    let sa_pub_path = dir.join("sa.pub");
    let (sa_key_pem, sa_pub_pem) = match (
        read_opt(&sa_key_path).map_err(io("reading", &sa_key_path))?,
        read_opt(&sa_pub_path).map_err(io("reading", &sa_pub_path))?,
    ) {
        (Some(k), Some(p)) => {
            report.kept.push("sa".into());
            (k, p)
        }
        _ => {
            let key = KeyPair::generate().map_err(|source| PkiError::Generate {
                id: "sa".into(),
                source,
            })?;
            let (k, p) = (key.serialize_pem(), key.public_key_pem());
            fsutil::write_atomic(&sa_key_path, k.as_bytes(), 0o600)
                .map_err(io("writing", &sa_key_path))?;
            fsutil::write_atomic(&sa_pub_path, p.as_bytes(), 0o600)
                .map_err(io("writing", &sa_pub_path))?;
            report.created.push("sa".into());
            (k, p)
        }
    };

    // Leaves.
    let mut leaves = BTreeMap::new();
    for spec in leaf_specs(cluster) {
        let ca = &cas[&spec.ca];
        let hash = spec_hash(&spec, ca);
        let stored = store.load(&spec.id)?;
        let entry = index.entries.get(&spec.id);
        let fresh = entry.is_some_and(|e| e.spec == hash);
        let due = match (entry, opts.renew_within) {
            (Some(e), Some(window)) => e.not_after <= (opts.now + window).unix_timestamp(),
            _ => false,
        };
        let pair = match stored {
            Some(pair) if fresh && !due => {
                if let Some(e) = entry
                    && e.not_after <= (opts.now + EXPIRY_WARNING).unix_timestamp()
                {
                    report
                        .expiring
                        .push((spec.id.clone(), rfc3339(e.not_after)));
                }
                report.kept.push(spec.id.clone());
                pair
            }
            stored => {
                let (pair, not_after) = issue(&spec, ca, opts.now)?;
                store.save(&spec.id, &pair)?;
                index.entries.insert(
                    spec.id.clone(),
                    IndexEntry {
                        spec: hash,
                        not_after,
                    },
                );
                if stored.is_some() {
                    report.reissued.push(spec.id.clone());
                } else {
                    report.created.push(spec.id.clone());
                }
                pair
            }
        };
        leaves.insert(spec.id.clone(), pair);
    }

    if !report.created.is_empty() || !report.reissued.is_empty() {
        index.format = SPEC_FORMAT;
        let bytes = serde_json::to_vec_pretty(&index).expect("index serializes");
        fsutil::write_atomic(&index_path, &bytes, 0o600).map_err(io("writing", &index_path))?;
    }

    Ok((
        Pki {
            dir: dir.to_owned(),
            cas,
            leaves,
            sa_key_pem,
            sa_pub_pem,
        },
        report,
    ))
}

struct Store<'a> {
    dir: &'a Path,
}

impl Store<'_> {
    fn paths(&self, id: &str) -> (PathBuf, PathBuf) {
        (
            self.dir.join(format!("{id}.crt")),
            self.dir.join(format!("{id}.key")),
        )
    }

    /// Both halves, or None when either is missing.
    fn load(&self, id: &str) -> Result<Option<CertKey>, PkiError> {
        let (c, k) = self.paths(id);
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| PkiError::Io {
                op: "reading",
                path,
                source,
            }
        };
        let cert = read_opt(&c).map_err(io(&c))?;
        let key = read_opt(&k).map_err(io(&k))?;
        match (cert, key) {
            (Some(cert_pem), Some(key_pem)) => {
                if !cert_pem.contains("BEGIN CERTIFICATE") {
                    return Err(PkiError::Corrupt {
                        path: c,
                        reason: "not a PEM certificate".into(),
                    });
                }
                if KeyPair::from_pem(&key_pem).is_err() {
                    return Err(PkiError::Corrupt {
                        path: k,
                        reason: "not a PEM private key this tool can read".into(),
                    });
                }
                Ok(Some(CertKey { cert_pem, key_pem }))
            }
            _ => Ok(None),
        }
    }

    fn save(&self, id: &str, pair: &CertKey) -> Result<(), PkiError> {
        let (c, k) = self.paths(id);
        let parent = c.parent().unwrap_or(self.dir);
        fsutil::create_dir_mode(parent, 0o700).map_err(|source| PkiError::Io {
            op: "creating",
            path: parent.to_owned(),
            source,
        })?;
        // Key first: a crash between the two leaves a key without a cert, which `load`
        // treats as missing and re-issues.
        for (path, data) in [(&k, &pair.key_pem), (&c, &pair.cert_pem)] {
            fsutil::write_atomic(path, data.as_bytes(), 0o600).map_err(|source| PkiError::Io {
                op: "writing",
                path: path.clone(),
                source,
            })?;
        }
        Ok(())
    }
}

fn read_opt(path: &Path) -> std::io::Result<Option<String>> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

fn spec_hash(spec: &LeafSpec, ca: &CertKey) -> String {
    let mut h = Sha256::new();
    h.update(SPEC_FORMAT.to_le_bytes());
    h.update(serde_json::to_vec(spec).expect("spec serializes"));
    h.update(ca.cert_pem.as_bytes());
    hex::encode(h.finalize())
}

fn rfc3339(unix: i64) -> String {
    OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| unix.to_string())
}

fn dn(cn: &str, orgs: &[String]) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    for o in orgs {
        dn.push(DnType::OrganizationName, o.as_str());
    }
    dn.push(DnType::CommonName, cn);
    dn
}

/// Back-dates by a few minutes so a node whose clock lags slightly still accepts a new cert.
const CLOCK_SKEW: Duration = Duration::minutes(5);

fn new_ca(ca: Ca, now: OffsetDateTime) -> Result<(CertKey, i64), PkiError> {
    let err = |source| PkiError::Generate {
        id: ca.id().into(),
        source,
    };
    let key = KeyPair::generate().map_err(err)?;
    let mut p = CertificateParams::default();
    p.distinguished_name = dn(ca.common_name(), &[]);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
    ];
    p.not_before = now - CLOCK_SKEW;
    p.not_after = now + CA_VALIDITY;
    let cert = p.self_signed(&key).map_err(err)?;
    Ok((
        CertKey {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        },
        p.not_after.unix_timestamp(),
    ))
}

fn issue(spec: &LeafSpec, ca: &CertKey, now: OffsetDateTime) -> Result<(CertKey, i64), PkiError> {
    let err = |source| PkiError::Generate {
        id: spec.id.clone(),
        source,
    };
    let ca_key = KeyPair::from_pem(&ca.key_pem).map_err(err)?;
    let issuer = Issuer::from_ca_cert_pem(&ca.cert_pem, ca_key).map_err(err)?;
    let key = KeyPair::generate().map_err(err)?;
    let mut p = CertificateParams::default();
    p.distinguished_name = dn(&spec.common_name, &spec.organizations);
    p.subject_alt_names = spec
        .sans
        .iter()
        .map(|s| match s.parse::<IpAddr>() {
            Ok(ip) => Ok(SanType::IpAddress(ip)),
            Err(_) => s.clone().try_into().map(SanType::DnsName),
        })
        .collect::<Result<_, _>>()
        .map_err(err)?;
    p.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    p.extended_key_usages = match spec.usage {
        Usage::Server => vec![ExtendedKeyUsagePurpose::ServerAuth],
        Usage::Client => vec![ExtendedKeyUsagePurpose::ClientAuth],
        Usage::ServerClient => vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ],
    };
    p.use_authority_key_identifier_extension = true;
    p.not_before = now - CLOCK_SKEW;
    p.not_after = now + LEAF_VALIDITY;
    let cert = p.signed_by(&key, &issuer).map_err(err)?;
    Ok((
        CertKey {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        },
        p.not_after.unix_timestamp(),
    ))
}

/// One secret file placed on a node. Always mode 0600, owned by root.
#[derive(Clone)]
pub struct SecretFile {
    pub path: String,
    pub contents: String,
}

impl fmt::Debug for SecretFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretFile({})", self.path)
    }
}

/// Where kubeadm keeps the PKI on a node.
pub const PKI_DIR: &str = "/etc/kubernetes/pki";
/// Where the kubelet keeps its own certificates.
pub const KUBELET_PKI_DIR: &str = "/var/lib/kubelet/pki";

/// The PKI files a node receives, at kubeadm's paths. Least privilege: a worker gets the
/// cluster CA certificate and its own kubelet pair only; control-plane nodes get what
/// their static pods read, plus the cluster CA key the controller-manager signs kubelet
/// renewals with. No node receives the etcd or front-proxy CA keys: every certificate
/// they would sign is issued here.
pub fn node_secrets(pki: &Pki, node: &Node) -> Vec<SecretFile> {
    let mut out = Vec::new();
    let mut cert = |path: String, pem: &str| {
        out.push(SecretFile {
            path,
            contents: pem.to_string(),
        })
    };
    let ca = pki.ca(Ca::Cluster);
    cert(format!("{PKI_DIR}/ca.crt"), &ca.cert_pem);
    for (id, name) in [
        (kubelet_client_id(&node.name), "kubelet-client"),
        (kubelet_server_id(&node.name), "kubelet"),
    ] {
        if let Some(l) = pki.leaf(&id) {
            cert(format!("{KUBELET_PKI_DIR}/{name}.crt"), &l.cert_pem);
            cert(format!("{KUBELET_PKI_DIR}/{name}.key"), &l.key_pem);
        }
    }
    if node.role != Role::ControlPlane {
        return out;
    }
    cert(format!("{PKI_DIR}/ca.key"), &ca.key_pem);
    cert(format!("{PKI_DIR}/sa.key"), &pki.sa_key_pem);
    cert(format!("{PKI_DIR}/sa.pub"), &pki.sa_pub_pem);
    cert(
        format!("{PKI_DIR}/front-proxy-ca.crt"),
        &pki.ca(Ca::FrontProxy).cert_pem,
    );
    cert(format!("{PKI_DIR}/etcd/ca.crt"), &pki.ca(Ca::Etcd).cert_pem);
    let leaves = [
        ("apiserver".to_string(), "apiserver"),
        (
            "apiserver-kubelet-client".into(),
            "apiserver-kubelet-client",
        ),
        ("apiserver-etcd-client".into(), "apiserver-etcd-client"),
        ("front-proxy-client".into(), "front-proxy-client"),
        ("etcd/healthcheck-client".into(), "etcd/healthcheck-client"),
        (etcd_server_id(&node.name), "etcd/server"),
        (etcd_peer_id(&node.name), "etcd/peer"),
    ];
    for (id, name) in leaves {
        if let Some(l) = pki.leaf(&id) {
            cert(format!("{PKI_DIR}/{name}.crt"), &l.cert_pem);
            cert(format!("{PKI_DIR}/{name}.key"), &l.key_pem);
        }
    }
    out
}
