//! The data every template sees. Values are computed here (lists, joined flags, base64
//! blobs); the text of every config file is in overlays/. Secrets enter a node's context
//! only when that node's role needs them, so a worker's templates cannot reference them.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::Serialize;

use crate::cluster::{Cluster, Node, Role};
use crate::pki::{Ca, Pki};

#[derive(Serialize)]
pub struct Context<'a> {
    pub cluster: ClusterCtx<'a>,
    pub node: NodeCtx<'a>,
    /// Present on control-plane nodes only.
    pub kubeconfigs: Option<Kubeconfigs>,
}

#[derive(Serialize)]
pub struct ClusterCtx<'a> {
    pub name: &'a str,
    pub domain: &'a str,
    pub kubernetes_version: &'a str,
    pub api_endpoint: String,
    pub vip: String,
    pub api_port: u16,
    pub vrrp_router_id: u8,
    /// keepalived's `advert_int`, in seconds ("0.2").
    pub vrrp_advert_int: String,
    pub api_check_interval_ms: u32,
    pub api_check_fall: u32,
    /// HAProxy's `fastinter`: the checks' interval once one has failed (a fifth of the
    /// interval, at least 100 ms), so that a dead API server is out of rotation soon
    /// after its first failed check.
    pub api_check_fastinter_ms: u32,
    pub api_shutdown_delay_seconds: u32,
    pub run_workloads: bool,
    pub images: ImagesCtx,
    pub subnet: String,
    pub subnet_prefix: u8,
    pub gateway: String,
    pub dns: Vec<String>,
    pub ntp: Vec<String>,
    pub mtu: u32,
    pub interface: &'a str,
    pub pod_cidr: String,
    pub service_cidr: String,
    pub node_cidr_mask: u8,
    pub dns_service_ip: String,
    pub loadbalancer_range: String,
    pub control_plane: Vec<PeerCtx<'a>>,
    pub control_plane_ips: String,
    pub node_ips: Vec<String>,
    pub etcd_initial_cluster: String,
    pub etcd_servers: String,
    pub etcd_snapshot_interval_hours: u32,
    pub etcd_snapshot_retention: u32,
    pub admin_user: &'a str,
}

#[derive(Serialize)]
pub struct ImagesCtx {
    pub apiserver: String,
    pub controller_manager: String,
    pub scheduler: String,
    pub etcd: String,
    pub pause: String,
}

#[derive(Serialize)]
pub struct PeerCtx<'a> {
    pub name: &'a str,
    pub ip: String,
    pub priority: u8,
}

#[derive(Serialize)]
pub struct NodeCtx<'a> {
    pub name: &'a str,
    pub ip: String,
    pub mac: String,
    pub role: &'a str,
    pub is_control_plane: bool,
    pub vrrp_priority: u8,
    /// The other control-plane nodes' IPs (keepalived unicast peers).
    pub vrrp_peers: Vec<String>,
    /// Kubelet talks to its own API server on control-plane nodes (so it never depends on
    /// the VIP it helps provide) and to the VIP elsewhere.
    pub kubelet_server: String,
    pub register_taints: bool,
}

#[derive(Serialize)]
pub struct Kubeconfigs {
    pub admin: Kubeconfig,
    pub controller_manager: Kubeconfig,
    pub scheduler: Kubeconfig,
}

#[derive(Serialize)]
pub struct Kubeconfig {
    pub cluster: String,
    pub server: String,
    pub user: String,
    pub ca_data: String,
    pub cert_data: String,
    pub key_data: String,
}

fn b64(s: &str) -> String {
    STANDARD.encode(s.as_bytes())
}

impl<'a> Context<'a> {
    pub fn new(cluster: &'a Cluster, pki: &Pki, node: &'a Node) -> Context<'a> {
        let net = &cluster.network;
        let cps: Vec<&Node> = cluster.control_plane_nodes().collect();
        let v = &cluster.kubernetes.tag;
        let local_api = format!("https://{}:{}", node.ip, cluster.control_plane.port);
        let is_cp = node.role == Role::ControlPlane;
        let cluster_ctx = ClusterCtx {
            name: &cluster.name,
            domain: &cluster.domain,
            kubernetes_version: v,
            api_endpoint: cluster.api_endpoint(),
            vip: cluster.control_plane.vip.to_string(),
            api_port: cluster.control_plane.port,
            vrrp_router_id: cluster.control_plane.vrrp_router_id,
            vrrp_advert_int: seconds(cluster.control_plane.vrrp_advert_interval_ms),
            api_check_interval_ms: cluster.control_plane.api_check_interval_ms,
            api_check_fall: cluster.control_plane.api_check_fall,
            api_check_fastinter_ms: (cluster.control_plane.api_check_interval_ms / 5)
                .max(100)
                .min(cluster.control_plane.api_check_interval_ms),
            api_shutdown_delay_seconds: cluster.control_plane.api_shutdown_delay_seconds,
            run_workloads: cluster.control_plane.run_workloads,
            images: ImagesCtx {
                apiserver: cluster.images.component("kube-apiserver", v),
                controller_manager: cluster.images.component("kube-controller-manager", v),
                scheduler: cluster.images.component("kube-scheduler", v),
                etcd: cluster.images.etcd.clone(),
                pause: cluster.images.pause(),
            },
            subnet: net.subnet.to_string(),
            subnet_prefix: net.subnet.prefix_len(),
            gateway: net.gateway.to_string(),
            dns: net.dns.iter().map(|d| d.to_string()).collect(),
            ntp: net.ntp.clone(),
            mtu: net.mtu,
            interface: &net.interface,
            pod_cidr: net.pod_cidr.to_string(),
            service_cidr: net.service_cidr.to_string(),
            node_cidr_mask: net.node_cidr_mask,
            dns_service_ip: net.dns_service_ip().to_string(),
            loadbalancer_range: net.loadbalancer_range.to_string(),
            control_plane: cps
                .iter()
                .map(|n| PeerCtx {
                    name: &n.name,
                    ip: n.ip.to_string(),
                    priority: n.vrrp_priority.unwrap_or(0),
                })
                .collect(),
            control_plane_ips: cps
                .iter()
                .map(|n| n.ip.to_string())
                .collect::<Vec<_>>()
                .join(", "),
            node_ips: cluster.nodes.iter().map(|n| n.ip.to_string()).collect(),
            etcd_initial_cluster: cps
                .iter()
                .map(|n| format!("{}=https://{}:2380", n.name, n.ip))
                .collect::<Vec<_>>()
                .join(","),
            etcd_servers: std::iter::once(node)
                .filter(|_| is_cp)
                .chain(cps.iter().copied().filter(|n| n.name != node.name))
                .map(|n| format!("https://{}:2379", n.ip))
                .collect::<Vec<_>>()
                .join(","),
            etcd_snapshot_interval_hours: cluster.etcd.snapshot_interval_hours,
            etcd_snapshot_retention: cluster.etcd.snapshot_retention,
            admin_user: &cluster.admin.user,
        };
        let node_ctx = NodeCtx {
            name: &node.name,
            ip: node.ip.to_string(),
            mac: node.mac.to_string(),
            role: node.role.as_str(),
            is_control_plane: is_cp,
            vrrp_priority: node.vrrp_priority.unwrap_or(0),
            vrrp_peers: cps
                .iter()
                .filter(|n| n.name != node.name)
                .map(|n| n.ip.to_string())
                .collect(),
            kubelet_server: if is_cp {
                local_api.clone()
            } else {
                cluster.api_endpoint()
            },
            register_taints: is_cp && !cluster.control_plane.run_workloads,
        };
        let kubeconfigs = is_cp.then(|| {
            let ca = b64(&pki.ca(Ca::Cluster).cert_pem);
            let kc = |id: &str, user: &str, server: &str| {
                let leaf = pki.leaf(id);
                Kubeconfig {
                    cluster: cluster.name.clone(),
                    server: server.to_string(),
                    user: user.to_string(),
                    ca_data: ca.clone(),
                    cert_data: leaf.map(|l| b64(&l.cert_pem)).unwrap_or_default(),
                    key_data: leaf.map(|l| b64(&l.key_pem)).unwrap_or_default(),
                }
            };
            Kubeconfigs {
                admin: kc("admin", "kubernetes-admin", &cluster.api_endpoint()),
                controller_manager: kc(
                    "controller-manager",
                    "system:kube-controller-manager",
                    &local_api,
                ),
                scheduler: kc("scheduler", "system:kube-scheduler", &local_api),
            }
        });
        Context {
            cluster: cluster_ctx,
            node: node_ctx,
            kubeconfigs,
        }
    }
}

/// The operator's admin kubeconfig context (server = VIP), for `DIR/admin.conf`.
pub fn admin_kubeconfig(cluster: &Cluster, pki: &Pki) -> Kubeconfig {
    let leaf = pki.leaf("admin");
    Kubeconfig {
        cluster: cluster.name.clone(),
        server: cluster.api_endpoint(),
        user: "kubernetes-admin".into(),
        ca_data: b64(&pki.ca(Ca::Cluster).cert_pem),
        cert_data: leaf.map(|l| b64(&l.cert_pem)).unwrap_or_default(),
        key_data: leaf.map(|l| b64(&l.key_pem)).unwrap_or_default(),
    }
}

/// `ms` as seconds with no trailing zeros ("0.2", "1", "1.25").
fn seconds(ms: u32) -> String {
    let s = format!("{}.{:03}", ms / 1000, ms % 1000);
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}
