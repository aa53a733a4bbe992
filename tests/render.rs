//! The rendered example cluster, judged by golden files and by the real tools that will
//! read it: ignition-validate, haproxy, keepalived, nft, systemd-analyze, openssl, and
//! the Kubernetes API types.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use common::{check, example, node_files, render, run, stdout};
use k8s_openapi::api::core::v1::Pod;

const NODES: [&str; 4] = ["master1", "master2", "master3", "worker1"];
const CONTROL_PLANE: [&str; 3] = ["master1", "master2", "master3"];

fn golden_dir() -> PathBuf {
    common::repo().join("tests/golden/homelab")
}

fn is_secret(path: &Path, mode: u32) -> bool {
    mode & 0o077 == 0 && !path.ends_with("etc/slipway/etcd-snapshot.sh")
}

/// Every non-secret rendered file equals its golden copy; the list of all files with
/// modes equals the golden listing. `SLIPWAY_BLESS=1` re-records.
#[test]
fn golden_files() {
    let (_tmp, out, _) = render(&example());
    let bless = std::env::var_os("SLIPWAY_BLESS").is_some();
    let mut mismatches = Vec::new();
    for node in NODES {
        let files = node_files(&out, node);
        let mut listing = String::new();
        for rel in common::walk(&files) {
            let mode = std::fs::metadata(files.join(&rel))
                .unwrap()
                .permissions()
                .mode()
                & 0o7777;
            let secret = is_secret(&rel, mode);
            listing.push_str(&format!(
                "{mode:04o} /{}{}\n",
                rel.display(),
                if secret { "  (secret)" } else { "" }
            ));
            if secret {
                continue;
            }
            let golden = golden_dir().join(node).join(&rel);
            let got = std::fs::read(files.join(&rel)).unwrap();
            if bless {
                std::fs::create_dir_all(golden.parent().unwrap()).unwrap();
                std::fs::write(&golden, &got).unwrap();
            } else if std::fs::read(&golden).ok().as_deref() != Some(&got[..]) {
                mismatches.push(golden.display().to_string());
            }
        }
        let golden_listing = golden_dir().join(format!("{node}.files"));
        if bless {
            std::fs::write(&golden_listing, &listing).unwrap();
        } else {
            let want = std::fs::read_to_string(&golden_listing).unwrap_or_default();
            if want != listing {
                mismatches.push(format!(
                    "{}:\n--- want\n{want}--- got\n{listing}",
                    golden_listing.display()
                ));
            }
        }
    }
    assert!(
        mismatches.is_empty(),
        "rendered files differ from golden (re-record with SLIPWAY_BLESS=1 cargo test --test render golden):\n{}",
        mismatches.join("\n")
    );
}

#[test]
fn ignition_validate_accepts_every_config() {
    let (_tmp, out, _) = render(&example());
    for node in NODES {
        let ign = out.join("nodes").join(node).join("config.ign");
        let o = check(Command::new("ignition-validate").arg(&ign));
        let report = format!("{}{}", stdout(&o), String::from_utf8_lossy(&o.stderr));
        assert!(!report.contains("warning"), "{node}: {report}");
        let mode = std::fs::metadata(&ign).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{node}: config.ign holds keys");
    }
}

/// The Ignition config carries exactly the reviewed files, with their modes and bytes.
#[test]
fn ignition_matches_review_tree() {
    let (_tmp, out, _) = render(&example());
    for node in NODES {
        let raw = std::fs::read(out.join("nodes").join(node).join("config.ign")).unwrap();
        let (cfg, warnings) = ignition_config::Config::parse_slice(&raw).unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        let ignition_config::Config::V3_3(cfg) = cfg else {
            panic!("{node}: not spec 3.3")
        };
        let mut from_ign: BTreeMap<String, (u32, Vec<u8>)> = BTreeMap::new();
        for f in cfg.storage.unwrap().files.unwrap() {
            let src = f.contents.unwrap().source.unwrap();
            let b64 = src.strip_prefix("data:;base64,").unwrap();
            from_ign.insert(
                f.path,
                (f.mode.unwrap() as u32, STANDARD.decode(b64).unwrap()),
            );
        }
        let units = cfg.systemd.unwrap().units.unwrap();
        for u in &units {
            let dir = "/etc/systemd/system";
            if let Some(c) = &u.contents {
                from_ign.insert(format!("{dir}/{}", u.name), (0o644, c.as_bytes().to_vec()));
            }
            for d in u.dropins.iter().flatten() {
                let c = d.contents.clone().unwrap();
                from_ign.insert(
                    format!("{dir}/{}.d/{}", u.name, d.name),
                    (0o644, c.into_bytes()),
                );
            }
        }
        let files = node_files(&out, node);
        let mut from_tree = BTreeMap::new();
        for rel in common::walk(&files) {
            let p = files.join(&rel);
            let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o7777;
            from_tree.insert(
                format!("/{}", rel.display()),
                (mode, std::fs::read(&p).unwrap()),
            );
        }
        assert_eq!(
            from_ign.keys().collect::<Vec<_>>(),
            from_tree.keys().collect::<Vec<_>>(),
            "{node}"
        );
        assert!(from_ign == from_tree, "{node}: contents or modes differ");
        let enabled: Vec<&str> = units
            .iter()
            .filter(|u| u.enabled == Some(true))
            .map(|u| u.name.as_str())
            .collect();
        assert!(
            enabled.contains(&"kubelet.service") && enabled.contains(&"containerd.service"),
            "{enabled:?}"
        );
        assert_eq!(
            enabled.contains(&"keepalived.service"),
            node != "worker1",
            "{enabled:?}"
        );
        let users = cfg.passwd.unwrap().users.unwrap();
        assert_eq!(users[0].name, "admin");
        assert_eq!(users[0].ssh_authorized_keys.as_ref().unwrap().len(), 1);
    }
}

#[test]
fn haproxy_accepts_config() {
    let (_tmp, out, _) = render(&example());
    for node in CONTROL_PLANE {
        let cfg = node_files(&out, node).join("etc/haproxy/haproxy.cfg");
        check(Command::new("haproxy").args(["-c", "-f"]).arg(&cfg));
        let text = std::fs::read_to_string(&cfg).unwrap();
        assert!(text.contains("bind 192.168.1.100:6443"), "{text}");
        assert!(text.contains("balance roundrobin"), "{text}");
        for (name, ip) in [("master1", "11"), ("master2", "12"), ("master3", "13")] {
            assert!(
                text.contains(&format!("server {name} 192.168.1.{ip}:6443")),
                "{text}"
            );
        }
    }
}

/// keepalived -t in a private network and mount namespace: a veth named like the
/// cluster interface exists there, and the rendered /etc/keepalived (with the health
/// script keepalived insists on finding) is bind-mounted in place.
#[test]
fn keepalived_accepts_config() {
    let (_tmp, out, _) = render(&example());
    for (node, prio) in [("master1", 100), ("master2", 90), ("master3", 80)] {
        let dir = node_files(&out, node).join("etc/keepalived");
        let script = format!(
            "set -e; ip link add lan0 type veth peer name lan0-peer; \
             mount --bind '{}' /etc/keepalived; keepalived -t -f /etc/keepalived/keepalived.conf",
            dir.display()
        );
        check(Command::new("unshare").args(["-n", "-m", "sh", "-c", &script]));
        let text = std::fs::read_to_string(dir.join("keepalived.conf")).unwrap();
        assert!(text.contains(&format!("priority {prio}")), "{node}: {text}");
        assert!(text.contains("192.168.1.100/24 dev lan0"), "{text}");
        assert!(
            text.contains("vrrp_version 3") && text.contains("advert_int 0.2\n"),
            "{text}"
        );
        assert!(
            !text.contains(&format!("\t\t{}\n", out_ip(node))),
            "{node} lists itself as a peer"
        );
    }
}

fn out_ip(node: &str) -> &'static str {
    match node {
        "master1" => "192.168.1.11",
        "master2" => "192.168.1.12",
        _ => "192.168.1.13",
    }
}

#[test]
fn nftables_ruleset_loads() {
    let (_tmp, out, _) = render(&example());
    for node in NODES {
        let rules = node_files(&out, node).join("etc/nftables.conf");
        check(
            Command::new("unshare")
                .args(["-n", "nft", "-c", "-f"])
                .arg(&rules),
        );
        let text = std::fs::read_to_string(&rules).unwrap();
        assert_eq!(
            text.contains("2379, 2380"),
            node != "worker1",
            "{node}: etcd ports"
        );
        assert_eq!(text.contains("vrrp"), node != "worker1", "{node}: VRRP");
        assert!(text.contains("policy drop"), "{node}");
    }
}

/// Every unit and drop-in through `systemd-analyze verify`, with the rendered units
/// first on the search path. The only complaint tolerated is a missing executable that
/// the node image provides and this host does not (kubelet) or that the node's own
/// config provides (our scripts under /etc).
#[test]
fn systemd_units_verify() {
    let (_tmp, out, _) = render(&example());
    for node in NODES {
        let units = node_files(&out, node).join("etc/systemd/system");
        let provided: Vec<String> = common::walk(&node_files(&out, node))
            .iter()
            .map(|p| format!("/{}", p.display()))
            .chain(["/usr/bin/kubelet".to_string()])
            .collect();
        let mut names = Vec::new();
        for rel in common::walk(&units) {
            let s = rel.to_string_lossy().into_owned();
            match s.split_once(".d/") {
                Some((unit, _)) => names.push(unit.to_string()),
                None => names.push(units.join(&rel).display().to_string()),
            }
        }
        names.sort();
        names.dedup();
        assert!(
            names.iter().any(|n| n.ends_with("kubelet.service")),
            "{node}: {names:?}"
        );
        let o = run(Command::new("systemd-analyze")
            .args(["verify", "--man=no"])
            .args(&names)
            .env("SYSTEMD_UNIT_PATH", format!("{}:", units.display())));
        let stderr = String::from_utf8_lossy(&o.stderr);
        for line in stderr.lines().filter(|l| !l.trim().is_empty()) {
            let tolerated = provided.iter().any(|p| {
                line.contains(&format!(
                    "Command {p} is not executable: No such file or directory"
                ))
            });
            assert!(
                tolerated,
                "{node}: systemd-analyze verify: {line}\n(all output:\n{stderr})"
            );
        }
    }
}

/// Every rendered shell script (a `#!/bin/bash` or `#!/bin/sh` first line) passes
/// shellcheck with no finding at all, style included.
#[test]
fn shell_scripts_pass_shellcheck() {
    let (_tmp, out, _) = render(&example());
    let mut checked = Vec::new();
    for node in NODES {
        let files = node_files(&out, node);
        for rel in common::walk(&files) {
            let path = files.join(&rel);
            let text = std::fs::read(&path).unwrap();
            if !(text.starts_with(b"#!/bin/bash\n") || text.starts_with(b"#!/bin/sh\n")) {
                continue;
            }
            let o = run(Command::new("shellcheck")
                .args(["--severity=style", "--format=gcc"])
                .arg(&path));
            assert!(
                o.status.success(),
                "{node}: /{}: shellcheck:\n{}",
                rel.display(),
                String::from_utf8_lossy(&o.stdout)
            );
            checked.push(format!("{node}:/{}", rel.display()));
        }
    }
    for want in [
        "master1:/etc/slipway/etcd-rejoin.sh",
        "master1:/etc/slipway/etcd-snapshot.sh",
        "master1:/etc/keepalived/check-haproxy.sh",
    ] {
        assert!(
            checked.iter().any(|c| c == want),
            "{want} not checked: {checked:?}"
        );
    }
}

fn pod(out: &Path, node: &str, name: &str) -> Pod {
    let p = node_files(out, node).join(format!("etc/kubernetes/manifests/{name}.yaml"));
    serde_norway::from_str(&std::fs::read_to_string(&p).unwrap())
        .unwrap_or_else(|e| panic!("{}: not a Pod: {e}", p.display()))
}

#[test]
fn static_pods_are_pods_with_the_seed_requests() {
    let (_tmp, out, _) = render(&example());
    let want = [
        ("etcd", "100m", "100Mi"),
        ("kube-apiserver", "250m", "128Mi"),
        ("kube-controller-manager", "200m", "128Mi"),
        ("kube-scheduler", "100m", "64Mi"),
    ];
    for node in CONTROL_PLANE {
        for (name, cpu, mem) in want {
            let pod = pod(&out, node, name);
            assert_eq!(pod.metadata.name.as_deref(), Some(name));
            assert_eq!(pod.metadata.namespace.as_deref(), Some("kube-system"));
            let spec = pod.spec.unwrap();
            assert_eq!(spec.host_network, Some(true));
            let c = &spec.containers[0];
            let req = c.resources.as_ref().unwrap().requests.as_ref().unwrap();
            assert_eq!(req["cpu"].0, cpu, "{node}/{name}");
            assert_eq!(req["memory"].0, mem, "{node}/{name}");
            assert!(c.liveness_probe.is_some(), "{node}/{name}: liveness probe");
            assert!(c.startup_probe.is_some(), "{node}/{name}: startup probe");
            // etcd: the image the control-plane profile makes from Debian's etcd-server.
            let image = c.image.as_deref().unwrap();
            if name == "etcd" {
                assert_eq!(image, "localhost/slipway/etcd:trixie");
            } else {
                assert!(image.starts_with("registry.k8s.io/"), "{name}: {image}");
            }
            let cmd = c.command.as_ref().unwrap();
            if name == "kube-controller-manager" || name == "kube-scheduler" {
                assert!(
                    cmd.contains(&"--leader-elect=true".to_string()),
                    "{name}: {cmd:?}"
                );
            }
        }
        let ip = out_ip(node);
        let api = pod(&out, node, "kube-apiserver").spec.unwrap().containers[0]
            .command
            .clone()
            .unwrap();
        assert!(api.contains(&format!("--bind-address={ip}")), "{api:?}");
        assert!(
            api.contains(&format!("--advertise-address={ip}")),
            "{api:?}"
        );
        assert!(
            api.contains(&"--service-cluster-ip-range=10.96.0.0/12".to_string()),
            "{api:?}"
        );
        assert!(
            api.contains(&"--kubelet-certificate-authority=/etc/kubernetes/pki/ca.crt".to_string())
        );
        let etcd = pod(&out, node, "etcd").spec.unwrap().containers[0]
            .command
            .clone()
            .unwrap();
        assert!(etcd.contains(&"--initial-cluster=master1=https://192.168.1.11:2380,master2=https://192.168.1.12:2380,master3=https://192.168.1.13:2380".to_string()), "{etcd:?}");
        assert!(etcd.contains(&"--initial-cluster-state=new".to_string()));
        let kcm = pod(&out, node, "kube-controller-manager")
            .spec
            .unwrap()
            .containers[0]
            .command
            .clone()
            .unwrap();
        assert!(
            kcm.contains(&"--cluster-cidr=10.244.0.0/16".to_string()),
            "{kcm:?}"
        );
    }
}

#[test]
fn kubelet_and_containerd_configs() {
    let (_tmp, out, _) = render(&example());
    for node in NODES {
        let files = node_files(&out, node);
        let kubelet: serde_json::Value = serde_norway::from_str(
            &std::fs::read_to_string(files.join("var/lib/kubelet/config.yaml")).unwrap(),
        )
        .unwrap();
        assert_eq!(kubelet["kind"], "KubeletConfiguration");
        assert_eq!(kubelet["cgroupDriver"], "systemd");
        assert_eq!(kubelet["port"], 10250);
        assert_eq!(kubelet["clusterDNS"][0], "10.96.0.10");
        assert!(
            kubelet.get("registerWithTaints").is_none(),
            "control-plane nodes run workloads"
        );
        let containerd: toml::Table = toml::from_str(
            &std::fs::read_to_string(files.join("etc/containerd/config.toml")).unwrap(),
        )
        .unwrap();
        let runc =
            &containerd["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]["runtimes"]["runc"];
        assert_eq!(runc["options"]["SystemdCgroup"].as_bool(), Some(true));
        let kubeconfig: serde_json::Value = serde_norway::from_str(
            &std::fs::read_to_string(files.join("etc/kubernetes/kubelet.conf")).unwrap(),
        )
        .unwrap();
        let server = kubeconfig["clusters"][0]["cluster"]["server"]
            .as_str()
            .unwrap();
        if node == "worker1" {
            assert_eq!(server, "https://192.168.1.100:6443", "workers use the VIP");
        } else {
            assert_eq!(
                server,
                format!("https://{}:6443", out_ip(node)),
                "control plane uses its own API server"
            );
        }
        let link =
            std::fs::read_to_string(files.join("etc/systemd/network/10-cluster.link")).unwrap();
        assert!(link.contains("MACAddress=52:54:00:00:00:"), "{link}");
        assert_eq!(
            std::fs::read_to_string(files.join("etc/hostname")).unwrap(),
            format!("{node}\n")
        );
    }
    let sysctl = node_files(&out, "master1").join("etc/sysctl.d/91-control-plane.conf");
    assert!(
        std::fs::read_to_string(sysctl)
            .unwrap()
            .contains("net.ipv4.ip_nonlocal_bind = 1")
    );
    let timer = std::fs::read_to_string(
        node_files(&out, "master1").join("etc/systemd/system/etcd-snapshot.timer"),
    )
    .unwrap();
    assert!(timer.contains("OnCalendar=*-*-* 00/6:00:00"), "{timer}");
    let calendar = check(Command::new("systemd-analyze").args(["calendar", "*-*-* 00/6:00:00"]));
    assert!(stdout(&calendar).contains("Normalized form"));
}

/// The kubeconfigs' embedded client certificates verify against the cluster CA and the
/// admin one points at the VIP.
#[test]
fn kubeconfigs_carry_valid_credentials() {
    let (tmp, out, secrets) = render(&example());
    let mut confs = vec![out.join("admin.conf")];
    for f in ["admin", "controller-manager", "scheduler"] {
        confs.push(node_files(&out, "master1").join(format!("etc/kubernetes/{f}.conf")));
    }
    for conf in confs {
        let mode = std::fs::metadata(&conf).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", conf.display());
        let kc: serde_json::Value =
            serde_norway::from_str(&std::fs::read_to_string(&conf).unwrap()).unwrap();
        let cert = STANDARD
            .decode(
                kc["users"][0]["user"]["client-certificate-data"]
                    .as_str()
                    .unwrap(),
            )
            .unwrap();
        let pem = tmp.path().join("client.crt");
        std::fs::write(&pem, cert).unwrap();
        check(
            Command::new("openssl")
                .args(["verify", "-CAfile"])
                .arg(secrets.join("ca.crt"))
                .arg(&pem),
        );
        let ca = STANDARD
            .decode(
                kc["clusters"][0]["cluster"]["certificate-authority-data"]
                    .as_str()
                    .unwrap(),
            )
            .unwrap();
        assert_eq!(ca, std::fs::read(secrets.join("ca.crt")).unwrap());
    }
    let admin: serde_json::Value =
        serde_norway::from_str(&std::fs::read_to_string(out.join("admin.conf")).unwrap()).unwrap();
    assert_eq!(
        admin["clusters"][0]["cluster"]["server"],
        "https://192.168.1.100:6443"
    );
}

/// Least privilege: the worker's files and Ignition hold no CA key, no etcd material, no
/// admin kubeconfig and no other node's key; no node holds the etcd or front-proxy CA key.
#[test]
fn secrets_reach_only_the_nodes_that_need_them() {
    let (_tmp, out, secrets) = render(&example());
    let secret = |rel: &str| std::fs::read_to_string(secrets.join(rel)).unwrap();
    let ign = |node: &str| {
        std::fs::read_to_string(out.join("nodes").join(node).join("config.ign")).unwrap()
    };
    let b64 = |s: &str| STANDARD.encode(s.as_bytes());
    let holds = |node: &str, s: &str| {
        let text = ign(node);
        text.contains(&b64(s))
            || common::walk(&node_files(&out, node)).iter().any(|p| {
                std::fs::read_to_string(node_files(&out, node).join(p))
                    .unwrap_or_default()
                    .contains(s)
            })
    };
    let worker_forbidden = [
        "ca.key",
        "sa.key",
        "etcd/ca.key",
        "front-proxy-ca.key",
        "admin.key",
        "apiserver.key",
        "apiserver-etcd-client.key",
        "etcd/healthcheck-client.key",
        "etcd/master1/server.key",
        "nodes/master1/kubelet-client.key",
        "controller-manager.key",
    ];
    for rel in worker_forbidden {
        assert!(!holds("worker1", &secret(rel)), "worker1 holds {rel}");
    }
    let worker_paths: Vec<String> = common::walk(&node_files(&out, "worker1"))
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    assert!(
        !worker_paths
            .iter()
            .any(|p| p.contains("etcd") || p.contains("admin.conf") || p.ends_with("ca.key")),
        "{worker_paths:?}"
    );
    assert!(holds(
        "worker1",
        &secret("nodes/worker1/kubelet-client.key")
    ));
    for node in CONTROL_PLANE {
        for rel in [
            "etcd/ca.key",
            "front-proxy-ca.key",
            "nodes/worker1/kubelet-client.key",
        ] {
            assert!(!holds(node, &secret(rel)), "{node} holds {rel}");
        }
        assert!(holds(node, &secret(&format!("etcd/{node}/peer.key"))));
        for other in CONTROL_PLANE.iter().filter(|o| **o != node) {
            assert!(
                !holds(node, &secret(&format!("etcd/{other}/peer.key"))),
                "{node} holds {other}'s etcd key"
            );
        }
    }
}

#[test]
fn render_is_deterministic_and_keeps_pki() {
    let (tmp, out, secrets) = render(&example());
    let pki_before: Vec<_> = common::walk(&secrets)
        .iter()
        .map(|p| std::fs::read(secrets.join(p)).unwrap())
        .collect();
    let out2 = tmp.path().join("out2");
    slipway::pipeline::render(&example(), &secrets, &common::data(), &out2).unwrap();
    for node in NODES {
        let a = std::fs::read(out.join("nodes").join(node).join("config.ign")).unwrap();
        let b = std::fs::read(out2.join("nodes").join(node).join("config.ign")).unwrap();
        assert!(a == b, "{node}: config.ign differs between two renders");
    }
    let pki_after: Vec<_> = common::walk(&secrets)
        .iter()
        .map(|p| std::fs::read(secrets.join(p)).unwrap())
        .collect();
    assert!(pki_before == pki_after, "a second render changed the PKI");
}

/// Bad input loses nothing: a render that fails leaves the previous output as it was,
/// with no staging directories behind.
#[test]
fn failed_render_keeps_previous_output() {
    let (tmp, out, secrets) = render(&example());
    let before = common::walk(&out);
    let ign_before = std::fs::read(out.join("nodes/master1/config.ign")).unwrap();
    // 1. invalid cluster
    let bad = tmp.path().join("bad.toml");
    std::fs::write(
        &bad,
        common::example_with("vip = \"192.168.1.100\"", "vip = \"10.0.0.1\""),
    )
    .unwrap();
    assert!(slipway::pipeline::render(&bad, &secrets, &common::data(), &out).is_err());
    // 2. a template referencing a missing variable (strict mode)
    let data = tmp.path().join("data");
    common::copy_tree(&common::repo().join("overlays"), &data.join("overlays"));
    common::copy_tree(&common::repo().join("profiles"), &data.join("profiles"));
    std::fs::write(
        data.join("overlays/common/etc/hostname.hbs"),
        "{{node.nmae}}\n",
    )
    .unwrap();
    let err = slipway::pipeline::render(
        &example(),
        &secrets,
        &slipway::profile::DataDir::new(&data),
        &out,
    )
    .unwrap_err();
    let msg = format!("{:#}", anyhow::Error::from(err));
    assert!(
        msg.contains("hostname.hbs") && msg.contains("nmae"),
        "{msg}"
    );
    assert_eq!(common::walk(&out), before);
    assert_eq!(
        std::fs::read(out.join("nodes/master1/config.ign")).unwrap(),
        ign_before
    );
}
