//! The cluster definition (`cluster.toml`): parsing and validation.
//!
//! Two stages, as in zincati's config: [`file`] holds the serde types that mirror the TOML
//! (`deny_unknown_fields`, nothing validated yet); [`Cluster`] is the validated model that
//! the rest of Slipway consumes. Validation collects every problem at once and each problem
//! names the field it is about. This module reads one file and does no other I/O.

pub mod file;
mod validate;

use std::fmt;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;
use serde::Serialize;

pub use validate::validate;

/// The schema version this build of Slipway reads.
pub const SCHEMA_VERSION: u32 = 1;

/// Why a cluster file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("reading {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// TOML syntax, a wrong type or an unknown field; toml's message names the key and line.
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{}", Problems { path, problems })]
    Invalid {
        path: PathBuf,
        problems: Vec<Problem>,
    },
}

/// One thing wrong with a cluster file: the field (a dotted path such as `nodes[2].ip`)
/// and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub field: String,
    pub reason: String,
}

struct Problems<'a> {
    path: &'a Path,
    problems: &'a [Problem],
}

impl fmt::Display for Problems<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.problems.len();
        write!(
            f,
            "{}: {} problem{} found",
            self.path.display(),
            n,
            if n == 1 { "" } else { "s" }
        )?;
        for p in self.problems {
            write!(f, "\n  {}: {}: {}", self.path.display(), p.field, p.reason)?;
        }
        Ok(())
    }
}

/// A node's role. Control-plane nodes also run workloads unless the cluster says otherwise.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    ControlPlane,
    Worker,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::ControlPlane => "control-plane",
            Role::Worker => "worker",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A validated Kubernetes release, `v1.MINOR.PATCH` with an optional pre-release.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KubeVersion {
    pub minor: u64,
    pub patch: u64,
    /// The string as written, with its leading `v` (image tags use it verbatim).
    pub tag: String,
}

/// A MAC address in the canonical lower-case colon form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Mac(pub [u8; 6]);

impl std::str::FromStr for Mac {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let parts: Vec<&str> = s.split(':').collect();
        if parts.len() != 6 {
            return Err(format!(
                "{s:?} is not a MAC address (want six hex pairs like 52:54:00:00:00:11)"
            ));
        }
        let mut mac = [0u8; 6];
        for (i, p) in parts.iter().enumerate() {
            if p.len() != 2 {
                return Err(format!("{s:?} is not a MAC address (octet {p:?})"));
            }
            mac[i] = u8::from_str_radix(p, 16)
                .map_err(|_| format!("{s:?} is not a MAC address (octet {p:?} is not hex)"))?;
        }
        if mac[0] & 1 == 1 {
            return Err(format!("{s:?} is a multicast address, not a NIC's MAC"));
        }
        Ok(Mac(mac))
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

impl Serialize for Mac {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// An inclusive IPv4 address range such as MetalLB's pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Ipv4Range {
    pub first: Ipv4Addr,
    pub last: Ipv4Addr,
}

impl Ipv4Range {
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        self.first <= ip && ip <= self.last
    }
}

impl fmt::Display for Ipv4Range {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

/// The validated cluster.
#[derive(Debug, Clone, Serialize)]
pub struct Cluster {
    /// The file it was read from (for messages).
    #[serde(skip)]
    pub source: PathBuf,
    pub name: String,
    pub domain: String,
    pub kubernetes: KubeVersion,
    pub images: Images,
    pub network: Network,
    pub control_plane: ControlPlane,
    pub etcd: Etcd,
    pub admin: Admin,
    pub nodes: Vec<Node>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Images {
    pub repository: String,
    /// The etcd static pod's image, in full.
    pub etcd: String,
    pub pause_tag: String,
}

/// The control-plane components run as static pods from the release's images (etcd's
/// image is `Images::etcd`).
pub const CONTROL_PLANE_COMPONENTS: [&str; 3] = [
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
];

impl Images {
    /// The pod sandbox image containerd is configured with (and `slipway build` bakes).
    pub fn pause(&self) -> String {
        format!("{}/pause:{}", self.repository, self.pause_tag)
    }

    /// The image of a control-plane component's static pod (kube-apiserver, ...) at
    /// `version`.
    pub fn component(&self, name: &str, version: &str) -> String {
        format!("{}/{name}:{version}", self.repository)
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Network {
    pub subnet: Ipv4Net,
    pub gateway: Ipv4Addr,
    pub dns: Vec<Ipv4Addr>,
    pub ntp: Vec<String>,
    pub pod_cidr: Ipv4Net,
    pub service_cidr: Ipv4Net,
    pub node_cidr_mask: u8,
    pub loadbalancer_range: Ipv4Range,
    pub mtu: u32,
    /// The name every node gives its cluster-facing NIC (matched by MAC).
    pub interface: String,
}

impl Network {
    /// The first usable service address: the `kubernetes` Service's ClusterIP.
    pub fn kubernetes_service_ip(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.service_cidr.network()) + 1)
    }

    /// The cluster DNS Service address, by convention the tenth service address.
    pub fn dns_service_ip(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.service_cidr.network()) + 10)
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ControlPlane {
    pub vip: Ipv4Addr,
    pub port: u16,
    pub vrrp_router_id: u8,
    pub run_workloads: bool,
    /// VRRPv3 advertisement interval (10 ms steps): the holder is taken for dead after
    /// three missed ones plus a skew (docs/cluster.md).
    pub vrrp_advert_interval_ms: u32,
    /// HAProxy's health check of each kube-apiserver: every `api_check_interval_ms`,
    /// out of rotation after `api_check_fall` failures in a row.
    pub api_check_interval_ms: u32,
    pub api_check_fall: u32,
    /// kube-apiserver's `--shutdown-delay-duration`: /readyz fails this long before it
    /// stops serving, so that every HAProxy has taken it out of rotation first.
    pub api_shutdown_delay_seconds: u32,
}

#[derive(Debug, Clone, Serialize)]
pub struct Etcd {
    pub snapshot_interval_hours: u32,
    pub snapshot_retention: u32,
}

#[derive(Debug, Clone, Serialize)]
pub struct Admin {
    pub user: String,
    pub ssh_authorized_keys: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Node {
    pub name: String,
    pub role: Role,
    pub ip: Ipv4Addr,
    pub mac: Mac,
    pub install_disk: String,
    /// VRRP priority for control-plane nodes: 100 for the first, then
    /// `control_plane.vrrp_priority_step` less each.
    pub vrrp_priority: Option<u8>,
}

impl Cluster {
    /// Reads and validates a cluster file.
    pub fn load(path: &Path) -> Result<(Cluster, Vec<String>), LoadError> {
        let text = std::fs::read_to_string(path).map_err(|source| LoadError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(path, &text)
    }

    /// Parses and validates cluster TOML. Returns the cluster and any warnings.
    pub fn parse(path: &Path, text: &str) -> Result<(Cluster, Vec<String>), LoadError> {
        let raw: file::ClusterFile = toml::from_str(text).map_err(|e| LoadError::Parse {
            path: path.to_owned(),
            message: e.to_string().trim_end().to_string(),
        })?;
        validate(path, raw)
    }

    pub fn control_plane_nodes(&self) -> impl Iterator<Item = &Node> {
        self.nodes.iter().filter(|n| n.role == Role::ControlPlane)
    }

    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// The API endpoint every client outside the control-plane uses.
    pub fn api_endpoint(&self) -> String {
        format!(
            "https://{}:{}",
            self.control_plane.vip, self.control_plane.port
        )
    }
}
