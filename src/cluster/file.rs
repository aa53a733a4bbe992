//! The serde mirror of `cluster.toml`. Every table denies unknown fields so a typo is an
//! error naming the key, never a silently ignored setting. Field docs live in docs/cluster.md.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::Deserialize;

use super::Role;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterFile {
    pub schema: u32,
    pub cluster: ClusterSection,
    pub network: NetworkSection,
    pub control_plane: ControlPlaneSection,
    #[serde(default)]
    pub etcd: EtcdSection,
    pub admin: AdminSection,
    #[serde(default)]
    pub nodes: Vec<NodeEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSection {
    pub name: String,
    #[serde(default = "default_domain")]
    pub domain: String,
    pub kubernetes_version: String,
    #[serde(default = "default_repository")]
    pub image_repository: String,
    #[serde(default = "default_etcd_image")]
    pub etcd_image: String,
    #[serde(default = "default_pause_tag")]
    pub pause_image_tag: String,
}

fn default_domain() -> String {
    "cluster.local".into()
}
fn default_repository() -> String {
    "registry.k8s.io".into()
}
/// The etcd image the control-plane profile builds from Debian's etcd-server package.
pub const DEFAULT_ETCD_IMAGE: &str = "localhost/slipway/etcd:trixie";

fn default_etcd_image() -> String {
    DEFAULT_ETCD_IMAGE.into()
}
fn default_pause_tag() -> String {
    "3.10".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkSection {
    pub subnet: Ipv4Net,
    pub gateway: Ipv4Addr,
    #[serde(default)]
    pub dns: Vec<Ipv4Addr>,
    #[serde(default)]
    pub ntp: Vec<String>,
    pub pod_cidr: Ipv4Net,
    pub service_cidr: Ipv4Net,
    #[serde(default = "default_node_cidr_mask")]
    pub node_cidr_mask: u8,
    pub loadbalancer_range: String,
    #[serde(default = "default_mtu")]
    pub mtu: u32,
    #[serde(default = "default_interface")]
    pub interface: String,
}

fn default_node_cidr_mask() -> u8 {
    24
}
fn default_mtu() -> u32 {
    1500
}
fn default_interface() -> String {
    "lan0".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlPlaneSection {
    pub vip: Ipv4Addr,
    #[serde(default = "default_port")]
    pub port: u16,
    #[serde(default = "default_vrid")]
    pub vrrp_router_id: u8,
    #[serde(default = "default_true")]
    pub run_workloads: bool,
    #[serde(default = "default_advert_ms")]
    pub vrrp_advert_interval_ms: u32,
    #[serde(default = "default_priority_step")]
    pub vrrp_priority_step: u8,
    #[serde(default = "default_check_ms")]
    pub api_check_interval_ms: u32,
    #[serde(default = "default_check_fall")]
    pub api_check_fall: u32,
    #[serde(default = "default_shutdown_delay")]
    pub api_shutdown_delay_seconds: u32,
}

fn default_advert_ms() -> u32 {
    200
}
fn default_priority_step() -> u8 {
    10
}
fn default_check_ms() -> u32 {
    500
}
fn default_check_fall() -> u32 {
    2
}
fn default_shutdown_delay() -> u32 {
    5
}

fn default_port() -> u16 {
    6443
}
fn default_vrid() -> u8 {
    51
}
fn default_true() -> bool {
    true
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EtcdSection {
    #[serde(default = "default_snapshot_hours")]
    pub snapshot_interval_hours: u32,
    #[serde(default = "default_retention")]
    pub snapshot_retention: u32,
}

impl Default for EtcdSection {
    fn default() -> Self {
        EtcdSection {
            snapshot_interval_hours: default_snapshot_hours(),
            snapshot_retention: default_retention(),
        }
    }
}

fn default_snapshot_hours() -> u32 {
    6
}
fn default_retention() -> u32 {
    // Seven days of 6-hourly snapshots.
    28
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminSection {
    pub user: String,
    #[serde(default)]
    pub ssh_authorized_keys: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeEntry {
    pub name: String,
    pub role: Role,
    pub ip: Ipv4Addr,
    pub mac: String,
    pub install_disk: String,
}
