//! Turns the raw file into a [`Cluster`], collecting every problem with the field it names.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::Path;

use ipnet::Ipv4Net;

use super::file::ClusterFile;
use super::{
    Admin, Cluster, ControlPlane, Etcd, Images, Ipv4Range, KubeVersion, LoadError, Mac, Network,
    Node, Problem, Role, SCHEMA_VERSION,
};

/// Kubernetes minor releases whose flags and file layout Slipway renders.
pub const KUBE_MINOR_MIN: u64 = 30;
pub const KUBE_MINOR_MAX: u64 = 36;

/// VRRP priority of the first control-plane node; each later one gets
/// `control_plane.vrrp_priority_step` less, so the order in the file is the failover
/// order (keepalived priorities run 1..=254).
pub const FIRST_VRRP_PRIORITY: u8 = 100;

/// The least difference between two backups' takeover timers (skew = (256 - priority) x
/// advert / 256) that keeps them from declaring the holder dead at once and both taking
/// the VIP.
const MIN_SKEW_GAP_US: u64 = 2_000;

#[derive(Default)]
struct Collector {
    problems: Vec<Problem>,
}

impl Collector {
    fn push(&mut self, field: impl Into<String>, reason: impl Into<String>) {
        self.problems.push(Problem {
            field: field.into(),
            reason: reason.into(),
        });
    }
}

/// Validates a parsed file. Returns the cluster and warnings, or every problem found.
pub fn validate(path: &Path, raw: ClusterFile) -> Result<(Cluster, Vec<String>), LoadError> {
    let mut c = Collector::default();
    let mut warnings = Vec::new();

    if raw.schema != SCHEMA_VERSION {
        c.push(
            "schema",
            format!(
                "schema {} is not supported by this slipway (it reads schema {SCHEMA_VERSION})",
                raw.schema
            ),
        );
    }

    // [cluster]
    if let Err(e) = check_dns_label(&raw.cluster.name) {
        c.push("cluster.name", e);
    }
    if let Err(e) = check_dns_name(&raw.cluster.domain) {
        c.push("cluster.domain", e);
    }
    let kubernetes = match parse_kube_version(&raw.cluster.kubernetes_version) {
        Ok(v) => Some(v),
        Err(e) => {
            c.push("cluster.kubernetes_version", e);
            None
        }
    };
    for (field, value) in [
        ("cluster.image_repository", &raw.cluster.image_repository),
        ("cluster.pause_image_tag", &raw.cluster.pause_image_tag),
    ] {
        if value.is_empty() || value.contains(char::is_whitespace) {
            c.push(field, format!("{value:?} is empty or contains whitespace"));
        }
    }
    if crate::oci::name_tag(&raw.cluster.etcd_image).is_none() {
        c.push(
            "cluster.etcd_image",
            format!(
                "{:?} is not REGISTRY/REPOSITORY:TAG",
                raw.cluster.etcd_image
            ),
        );
    }

    // [network]
    let net = &raw.network;
    let subnet = net.subnet;
    if subnet.trunc() != subnet {
        c.push(
            "network.subnet",
            format!(
                "{subnet} has host bits set; did you mean {}?",
                subnet.trunc()
            ),
        );
    }
    let subnet = subnet.trunc();
    check_host_in(&mut c, "network.gateway", net.gateway, subnet);
    let cidrs = [
        ("network.subnet", subnet),
        ("network.pod_cidr", net.pod_cidr),
        ("network.service_cidr", net.service_cidr),
    ];
    for (field, cidr) in &cidrs[1..] {
        if cidr.trunc() != *cidr {
            c.push(
                *field,
                format!("{cidr} has host bits set; did you mean {}?", cidr.trunc()),
            );
        }
    }
    for i in 0..cidrs.len() {
        for j in i + 1..cidrs.len() {
            let (fa, a) = cidrs[i];
            let (fb, b) = cidrs[j];
            if overlaps(a, b) {
                c.push(fb, format!("{b} overlaps {fa} ({a})"));
            }
        }
    }
    if net.service_cidr.prefix_len() < 12 {
        c.push(
            "network.service_cidr",
            format!(
                "{} is too large: kube-apiserver accepts at most a /12",
                net.service_cidr
            ),
        );
    }
    if net.node_cidr_mask <= net.pod_cidr.prefix_len() || net.node_cidr_mask > 28 {
        c.push(
            "network.node_cidr_mask",
            format!(
                "/{} must be longer than the pod CIDR's /{} and at most /28",
                net.node_cidr_mask,
                net.pod_cidr.prefix_len()
            ),
        );
    }
    let lb_range = match parse_range(&net.loadbalancer_range) {
        Ok(r) => {
            if !subnet.contains(&r.first) || !subnet.contains(&r.last) {
                c.push(
                    "network.loadbalancer_range",
                    format!("{r} is not inside network.subnet {subnet}"),
                );
            }
            if r.contains(net.gateway) {
                c.push(
                    "network.loadbalancer_range",
                    format!("{r} contains the gateway {}", net.gateway),
                );
            }
            Some(r)
        }
        Err(e) => {
            c.push("network.loadbalancer_range", e);
            None
        }
    };
    if !(576..=9216).contains(&net.mtu) {
        c.push("network.mtu", format!("{} is outside 576..=9216", net.mtu));
    }
    if let Err(e) = check_interface_name(&net.interface) {
        c.push("network.interface", e);
    }
    for (i, s) in net.ntp.iter().enumerate() {
        if s.parse::<Ipv4Addr>().is_err() && check_dns_name(s).is_err() {
            c.push(
                format!("network.ntp[{i}]"),
                format!("{s:?} is neither an IPv4 address nor a host name"),
            );
        }
    }

    // [control_plane]
    let cp = &raw.control_plane;
    check_host_in(&mut c, "control_plane.vip", cp.vip, subnet);
    if cp.vip == net.gateway {
        c.push("control_plane.vip", format!("{} is the gateway", cp.vip));
    }
    if let Some(r) = lb_range
        && r.contains(cp.vip)
    {
        c.push(
            "control_plane.vip",
            format!("{} is inside network.loadbalancer_range {r}", cp.vip),
        );
    }
    if cp.vrrp_router_id == 0 {
        c.push(
            "control_plane.vrrp_router_id",
            "0 is not a VRRP router id (1..=255)",
        );
    }
    if cp.port == 0 {
        c.push("control_plane.port", "0 is not a port");
    }
    check_failover(&mut c, cp);

    // [etcd]
    if !(1..=24).contains(&raw.etcd.snapshot_interval_hours) {
        c.push(
            "etcd.snapshot_interval_hours",
            format!("{} is outside 1..=24", raw.etcd.snapshot_interval_hours),
        );
    }
    if raw.etcd.snapshot_retention == 0 {
        c.push(
            "etcd.snapshot_retention",
            "0 would delete every snapshot; keep at least 1",
        );
    }

    // [admin]
    if let Err(e) = check_username(&raw.admin.user) {
        c.push("admin.user", e);
    }
    for (i, key) in raw.admin.ssh_authorized_keys.iter().enumerate() {
        if let Err(e) = check_ssh_key(key) {
            c.push(format!("admin.ssh_authorized_keys[{i}]"), e);
        }
    }

    // [[nodes]]
    if raw.nodes.is_empty() {
        c.push("nodes", "no nodes are defined");
    }
    let mut names: HashMap<&str, usize> = HashMap::new();
    let mut ips: HashMap<Ipv4Addr, usize> = HashMap::new();
    let mut macs: HashMap<Mac, usize> = HashMap::new();
    let mut nodes = Vec::new();
    let mut next_priority = Some(FIRST_VRRP_PRIORITY);
    for (i, n) in raw.nodes.iter().enumerate() {
        let field = |f: &str| format!("nodes[{i}].{f}");
        if let Err(e) = check_dns_label(&n.name) {
            c.push(field("name"), e);
        }
        if let Some(j) = names.insert(&n.name, i) {
            c.push(
                field("name"),
                format!("{:?} is already used by nodes[{j}]", n.name),
            );
        }
        check_host_in(&mut c, &field("ip"), n.ip, subnet);
        if let Some(j) = ips.insert(n.ip, i) {
            c.push(
                field("ip"),
                format!(
                    "{} is already used by nodes[{j}] ({})",
                    n.ip, raw.nodes[j].name
                ),
            );
        }
        if n.ip == cp.vip {
            c.push(
                field("ip"),
                format!("{} is the control-plane VIP (control_plane.vip)", n.ip),
            );
        }
        if n.ip == net.gateway {
            c.push(field("ip"), format!("{} is the gateway", n.ip));
        }
        if let Some(r) = lb_range
            && r.contains(n.ip)
        {
            c.push(
                field("ip"),
                format!("{} is inside network.loadbalancer_range {r}", n.ip),
            );
        }
        let mac = match n.mac.parse::<Mac>() {
            Ok(m) => {
                if let Some(j) = macs.insert(m, i) {
                    c.push(
                        field("mac"),
                        format!("{m} is already used by nodes[{j}] ({})", raw.nodes[j].name),
                    );
                }
                m
            }
            Err(e) => {
                c.push(field("mac"), e);
                Mac([0; 6])
            }
        };
        // The installer (slipway-init, install mode) finds the disk by the name udev
        // would give it; kernel names (/dev/sda) change between boots and could pick the
        // wrong disk, and a comma or space would break the kernel command line.
        let stable = ["/dev/disk/by-path/", "/dev/disk/by-id/"]
            .iter()
            .any(|p| n.install_disk.len() > p.len() && n.install_disk.starts_with(p));
        if !stable
            || n.install_disk
                .contains(|ch: char| ch.is_whitespace() || ch == ',' || ch == '"')
        {
            c.push(
                field("install_disk"),
                format!(
                    "{:?} is not a stable disk name: use /dev/disk/by-path/... or \
                     /dev/disk/by-id/... (kernel names like /dev/sda change between boots)",
                    n.install_disk
                ),
            );
        }
        let vrrp_priority = match n.role {
            Role::ControlPlane => {
                let p = next_priority;
                if p.is_none() {
                    c.push(
                        field("role"),
                        format!(
                            "too many control-plane nodes for VRRP priorities {FIRST_VRRP_PRIORITY}, {}, ... down to 1 \
                             (control_plane.vrrp_priority_step = {})",
                            FIRST_VRRP_PRIORITY.saturating_sub(cp.vrrp_priority_step),
                            cp.vrrp_priority_step
                        ),
                    );
                }
                next_priority = p
                    .and_then(|p| p.checked_sub(cp.vrrp_priority_step.max(1)))
                    .filter(|p| *p >= 1);
                p
            }
            Role::Worker => None,
        };
        nodes.push(Node {
            name: n.name.clone(),
            role: n.role,
            ip: n.ip,
            mac,
            install_disk: n.install_disk.clone(),
            vrrp_priority,
        });
    }
    let cp_count = nodes
        .iter()
        .filter(|n| n.role == Role::ControlPlane)
        .count();
    if !raw.nodes.is_empty() && cp_count == 0 {
        c.push(
            "nodes",
            "no node has role = \"control-plane\"; a cluster needs at least one",
        );
    } else if cp_count > 0 && cp_count % 2 == 0 {
        warnings.push(format!(
            "{}: nodes: {cp_count} control-plane nodes: an even etcd membership tolerates no \
             more failures than {} would; use an odd number",
            path.display(),
            cp_count - 1
        ));
    }

    if !c.problems.is_empty() {
        return Err(LoadError::Invalid {
            path: path.to_owned(),
            problems: c.problems,
        });
    }
    let (Some(kubernetes), Some(loadbalancer_range)) = (kubernetes, lb_range) else {
        unreachable!("a failed parse always records a problem");
    };
    let cluster = Cluster {
        source: path.to_owned(),
        name: raw.cluster.name,
        domain: raw.cluster.domain,
        kubernetes,
        images: Images {
            repository: raw.cluster.image_repository,
            etcd: raw.cluster.etcd_image,
            pause_tag: raw.cluster.pause_image_tag,
        },
        network: Network {
            subnet,
            gateway: net.gateway,
            dns: net.dns.clone(),
            ntp: net.ntp.clone(),
            pod_cidr: net.pod_cidr,
            service_cidr: net.service_cidr,
            node_cidr_mask: net.node_cidr_mask,
            loadbalancer_range,
            mtu: net.mtu,
            interface: net.interface.clone(),
        },
        control_plane: ControlPlane {
            vip: cp.vip,
            port: cp.port,
            vrrp_router_id: cp.vrrp_router_id,
            run_workloads: cp.run_workloads,
            vrrp_advert_interval_ms: cp.vrrp_advert_interval_ms,
            api_check_interval_ms: cp.api_check_interval_ms,
            api_check_fall: cp.api_check_fall,
            api_shutdown_delay_seconds: cp.api_shutdown_delay_seconds,
        },
        etcd: Etcd {
            snapshot_interval_hours: raw.etcd.snapshot_interval_hours,
            snapshot_retention: raw.etcd.snapshot_retention,
        },
        admin: Admin {
            user: raw.admin.user,
            ssh_authorized_keys: raw.admin.ssh_authorized_keys,
        },
        nodes,
    };
    Ok((cluster, warnings))
}

fn overlaps(a: Ipv4Net, b: Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// A host address: inside the subnet and neither its network nor its broadcast address.
fn check_host_in(c: &mut Collector, field: &str, ip: Ipv4Addr, subnet: Ipv4Net) {
    if !subnet.contains(&ip) {
        c.push(field, format!("{ip} is outside network.subnet {subnet}"));
    } else if subnet.prefix_len() < 31 && (ip == subnet.network() || ip == subnet.broadcast()) {
        c.push(
            field,
            format!("{ip} is the network or broadcast address of {subnet}"),
        );
    }
}

/// `v1.MINOR.PATCH`, optionally with a pre-release such as `-rc.1`.
pub fn parse_kube_version(s: &str) -> Result<KubeVersion, String> {
    let bad = || {
        format!("{s:?} is not a Kubernetes release; write it as v1.MINOR.PATCH, e.g. \"v1.34.2\"")
    };
    let rest = s.strip_prefix('v').ok_or_else(bad)?;
    let v = semver::Version::parse(rest).map_err(|_| bad())?;
    if !v.build.is_empty() {
        return Err(bad());
    }
    if v.major != 1 {
        return Err(format!("{s:?}: only Kubernetes 1.x exists"));
    }
    if !(KUBE_MINOR_MIN..=KUBE_MINOR_MAX).contains(&v.minor) {
        return Err(format!(
            "{s:?}: slipway renders Kubernetes v1.{KUBE_MINOR_MIN} to v1.{KUBE_MINOR_MAX}"
        ));
    }
    Ok(KubeVersion {
        minor: v.minor,
        patch: v.patch,
        tag: s.to_string(),
    })
}

fn parse_range(s: &str) -> Result<Ipv4Range, String> {
    let (a, b) = s.split_once('-').ok_or_else(|| {
        format!("{s:?} is not a range; write FIRST-LAST, e.g. \"192.168.1.200-192.168.1.250\"")
    })?;
    let first: Ipv4Addr = a
        .trim()
        .parse()
        .map_err(|_| format!("{a:?} in {s:?} is not an IPv4 address"))?;
    let last: Ipv4Addr = b
        .trim()
        .parse()
        .map_err(|_| format!("{b:?} in {s:?} is not an IPv4 address"))?;
    if first > last {
        return Err(format!("{s:?} ends before it starts"));
    }
    Ok(Ipv4Range { first, last })
}

/// RFC 1123 label: what Kubernetes accepts as a node name and Linux as a host name.
pub fn check_dns_label(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{s:?} is not a DNS label (1-63 of a-z, 0-9 and '-', not starting or ending with '-')"
        ))
    }
}

fn check_dns_name(s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > 253 || s.split('.').any(|l| check_dns_label(l).is_err()) {
        return Err(format!("{s:?} is not a DNS name"));
    }
    Ok(())
}

fn check_interface_name(s: &str) -> Result<(), String> {
    let valid = !s.is_empty()
        && s.len() <= 15
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if !valid {
        return Err(format!(
            "{s:?} is not an interface name (1-15 of a-z, 0-9, '-', '_')"
        ));
    }
    // Names in the kernel's own namespace race with the kernel's naming at boot.
    if s.starts_with("eth") || s.starts_with("wlan") {
        return Err(format!(
            "{s:?} is in the kernel's naming namespace and would race with it; pick e.g. \"lan0\""
        ));
    }
    Ok(())
}

fn check_username(s: &str) -> Result<(), String> {
    let valid = !s.is_empty()
        && s.len() <= 32
        && s.bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b == b'_')
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if !valid {
        return Err(format!(
            "{s:?} is not a user name (a-z, 0-9, '-', '_', up to 32)"
        ));
    }
    if s == "root" {
        return Err("\"root\" cannot be the admin user; SSH as root is disabled".into());
    }
    Ok(())
}

fn check_ssh_key(key: &str) -> Result<(), String> {
    let mut fields = key.split_whitespace();
    let kind = fields.next().unwrap_or("");
    let blob = fields.next().unwrap_or("");
    let known = kind.starts_with("ssh-")
        || kind.starts_with("ecdsa-sha2-")
        || kind.starts_with("sk-ssh-")
        || kind.starts_with("sk-ecdsa-");
    if !known || blob.is_empty() || key.contains('\n') {
        return Err("not an OpenSSH public key line (TYPE BASE64 [COMMENT])".into());
    }
    Ok(())
}

/// The VIP's and HAProxy's timing (docs/cluster.md): values that would move the VIP or
/// drop API servers with nothing wrong, by design, are refused.
fn check_failover(c: &mut Collector, cp: &super::file::ControlPlaneSection) {
    let advert = cp.vrrp_advert_interval_ms;
    if !(100..=40_950).contains(&advert) || !advert.is_multiple_of(10) {
        c.push(
            "control_plane.vrrp_advert_interval_ms",
            format!(
                "{advert} is not an advertisement interval Slipway runs: 100..=40950 in steps of 10 \
                 (VRRPv3 counts centiseconds; under 100 ms the holder is taken for dead after \
                 a stall of 0.3 s, which a busy node has, and the VIP moves for nothing)"
            ),
        );
    } else if cp.vrrp_priority_step == 0 {
        c.push(
            "control_plane.vrrp_priority_step",
            "0 gives every control-plane node the same priority: which one holds the VIP \
             would be left to chance",
        );
    } else {
        let gap_us = u64::from(cp.vrrp_priority_step) * u64::from(advert) * 1000 / 256;
        if gap_us < MIN_SKEW_GAP_US {
            c.push(
                "control_plane.vrrp_priority_step",
                format!(
                    "{} with vrrp_advert_interval_ms = {advert}: two backups would declare a \
                     dead holder dead {:.1} ms apart (step x interval / 256), so both take the VIP \
                     at once; use a step of at least {} (or a longer interval)",
                    cp.vrrp_priority_step,
                    gap_us as f64 / 1000.0,
                    (MIN_SKEW_GAP_US * 256).div_ceil(u64::from(advert) * 1000)
                ),
            );
        }
    }
    let check = cp.api_check_interval_ms;
    if !(100..=60_000).contains(&check) {
        c.push(
            "control_plane.api_check_interval_ms",
            format!(
                "{check} is outside 100..=60000 (each check is a TLS handshake with every API \
                 server, from every control-plane node)"
            ),
        );
    }
    if !(2..=10).contains(&cp.api_check_fall) {
        c.push(
            "control_plane.api_check_fall",
            format!(
                "{} is outside 2..=10: with 1, a single slow check takes a healthy API \
                 server out of rotation",
                cp.api_check_fall
            ),
        );
    }
    // An API server shutting down must stay in service until no HAProxy sends it new
    // connections: one failed /readyz does that (NOLB), but a draining API server too slow
    // to answer its checks in time is only taken out after `fall` of them (DOWN), so the
    // bound is a check interval for the check in flight, then `fall` checks.
    let detect_ms = u64::from(check) * u64::from(cp.api_check_fall + 1);
    if u64::from(cp.api_shutdown_delay_seconds) * 1000 < detect_ms
        || cp.api_shutdown_delay_seconds > 300
    {
        c.push(
            "control_plane.api_shutdown_delay_seconds",
            format!(
                "{} s: must be at least {:.1} s, the time HAProxy takes to take a draining API \
                 server out of rotation even when its checks time out \
                 (api_check_interval_ms x (api_check_fall + 1)), and at most 300",
                cp.api_shutdown_delay_seconds,
                detect_ms as f64 / 1000.0
            ),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        assert_eq!(parse_kube_version("v1.34.2").unwrap().minor, 34);
        assert!(parse_kube_version("v1.35.0-rc.1").is_ok());
        for bad in [
            "1.34.2",
            "v1.34",
            "v2.0.0",
            "v1.34.2+build",
            "v1.12.0",
            "latest",
            "",
        ] {
            assert!(parse_kube_version(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn macs() {
        assert_eq!(
            "52:54:00:00:00:11".parse::<Mac>().unwrap().to_string(),
            "52:54:00:00:00:11"
        );
        assert!("52:54:00:00:00".parse::<Mac>().is_err());
        assert!("01:00:5e:00:00:01".parse::<Mac>().is_err());
        assert!("zz:54:00:00:00:11".parse::<Mac>().is_err());
    }
}
