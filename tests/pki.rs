//! The cluster PKI, checked with the real `openssl`: chains, SANs, key usages, subjects,
//! file modes, idempotence and minimal re-issue.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use common::{check, example, example_with, stdout};
use slipway::cluster::Cluster;
use slipway::pki::{self, Ca, EnsureOptions};

fn ensure(cluster_text: &str, dir: &Path) -> pki::Report {
    let (c, _) = Cluster::parse(Path::new("cluster.toml"), cluster_text).unwrap();
    pki::ensure(dir, &c, EnsureOptions::default()).unwrap().1
}

fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    common::walk(dir)
        .into_iter()
        .map(|p| {
            (
                p.to_string_lossy().into_owned(),
                std::fs::read(dir.join(&p)).unwrap(),
            )
        })
        .collect()
}

fn openssl_x509(cert: &Path, args: &[&str]) -> String {
    stdout(&check(
        Command::new("openssl")
            .args(["x509", "-noout", "-in"])
            .arg(cert)
            .args(args),
    ))
}

#[test]
fn every_leaf_verifies_against_its_ca_with_expected_usage() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(example()).unwrap();
    ensure(&text, dir.path());
    let (cluster, _) = Cluster::load(&example()).unwrap();
    let specs = pki::leaf_specs(&cluster);
    assert_eq!(specs.len(), 8 + 2 * 3 + 2 * 4);
    for spec in &specs {
        let ca = dir.path().join(format!("{}.crt", spec.ca.id()));
        let crt = dir.path().join(format!("{}.crt", spec.id));
        let purpose = match spec.usage {
            pki::Usage::Server => "sslserver",
            pki::Usage::Client | pki::Usage::ServerClient => "sslclient",
        };
        let out = stdout(&check(
            Command::new("openssl")
                .args(["verify", "-x509_strict", "-purpose", purpose, "-CAfile"])
                .arg(&ca)
                .arg(&crt),
        ));
        assert!(out.trim_end().ends_with(": OK"), "{}: {out}", spec.id);
        let eku = openssl_x509(&crt, &["-ext", "extendedKeyUsage,keyUsage"]);
        assert!(eku.contains("Digital Signature"), "{}: {eku}", spec.id);
        let want_server = matches!(spec.usage, pki::Usage::Server | pki::Usage::ServerClient);
        let want_client = matches!(spec.usage, pki::Usage::Client | pki::Usage::ServerClient);
        assert_eq!(
            eku.contains("TLS Web Server Authentication"),
            want_server,
            "{}: {eku}",
            spec.id
        );
        assert_eq!(
            eku.contains("TLS Web Client Authentication"),
            want_client,
            "{}: {eku}",
            spec.id
        );
        let subject = openssl_x509(&crt, &["-subject", "-nameopt", "RFC2253"]);
        assert!(
            subject.contains(&format!("CN={}", spec.common_name)),
            "{}: {subject}",
            spec.id
        );
        for o in &spec.organizations {
            assert!(
                subject.contains(&format!("O={o}")),
                "{}: {subject}",
                spec.id
            );
        }
    }
    // Cross-CA: an etcd leaf must not verify against the cluster CA.
    let o = common::run(
        Command::new("openssl")
            .args(["verify", "-CAfile"])
            .arg(dir.path().join("ca.crt"))
            .arg(dir.path().join("apiserver-etcd-client.crt")),
    );
    assert!(
        !o.status.success(),
        "etcd client cert verified against the cluster CA"
    );
    // CAs are CAs.
    for ca in Ca::ALL {
        let text = openssl_x509(
            &dir.path().join(format!("{}.crt", ca.id())),
            &["-ext", "basicConstraints,keyUsage"],
        );
        assert!(text.contains("CA:TRUE"), "{}: {text}", ca.id());
        assert!(text.contains("Certificate Sign"), "{}: {text}", ca.id());
    }
}

#[test]
fn apiserver_and_etcd_sans() {
    let dir = tempfile::tempdir().unwrap();
    ensure(&std::fs::read_to_string(example()).unwrap(), dir.path());
    let sans = openssl_x509(
        &dir.path().join("apiserver.crt"),
        &["-ext", "subjectAltName"],
    );
    for want in [
        "IP Address:192.168.1.100",
        "IP Address:192.168.1.11",
        "IP Address:192.168.1.12",
        "IP Address:192.168.1.13",
        "IP Address:10.96.0.1",
        "IP Address:127.0.0.1",
        "DNS:kubernetes",
        "DNS:kubernetes.default",
        "DNS:kubernetes.default.svc",
        "DNS:kubernetes.default.svc.cluster.local",
        "DNS:localhost",
    ] {
        assert!(
            sans.contains(&format!("{want},")) || sans.trim_end().ends_with(want),
            "apiserver lacks {want}: {sans}"
        );
    }
    assert!(
        !sans.contains("192.168.1.21"),
        "the worker's IP is no API server address: {sans}"
    );
    let etcd = openssl_x509(
        &dir.path().join("etcd/master2/peer.crt"),
        &["-ext", "subjectAltName"],
    );
    assert!(etcd.contains("IP Address:192.168.1.12"), "{etcd}");
    assert!(etcd.contains("DNS:master2"), "{etcd}");
    let kubelet = openssl_x509(
        &dir.path().join("nodes/worker1/kubelet-server.crt"),
        &["-ext", "subjectAltName"],
    );
    assert!(kubelet.contains("IP Address:192.168.1.21"), "{kubelet}");
    // The service-account public key is the private key's.
    let derived = stdout(&check(
        Command::new("openssl")
            .args(["pkey", "-pubout", "-in"])
            .arg(dir.path().join("sa.key")),
    ));
    assert_eq!(
        derived,
        std::fs::read_to_string(dir.path().join("sa.pub")).unwrap()
    );
}

#[test]
fn secrets_are_private() {
    let dir = tempfile::tempdir().unwrap();
    let secrets = dir.path().join("secrets");
    ensure(&std::fs::read_to_string(example()).unwrap(), &secrets);
    let files = common::walk(&secrets);
    assert!(files.len() > 50);
    for f in files {
        let mode = std::fs::metadata(secrets.join(&f))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "{}", f.display());
    }
    for d in ["", "etcd", "etcd/master1", "nodes", "nodes/worker1"] {
        let mode = std::fs::metadata(secrets.join(d))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o700, "{d}");
    }
}

#[test]
fn second_run_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(example()).unwrap();
    let first = ensure(&text, dir.path());
    assert!(first.reissued.is_empty());
    let before = snapshot(dir.path());
    let second = ensure(&text, dir.path());
    assert!(
        second.created.is_empty() && second.reissued.is_empty(),
        "{second:?}"
    );
    assert_eq!(before, snapshot(dir.path()));
}

#[test]
fn changed_node_ip_reissues_only_what_depends_on_it() {
    let dir = tempfile::tempdir().unwrap();
    ensure(&std::fs::read_to_string(example()).unwrap(), dir.path());
    let before = snapshot(dir.path());
    let moved = example_with("ip = \"192.168.1.12\"", "ip = \"192.168.1.14\"");
    let report = ensure(&moved, dir.path());
    let mut reissued = report.reissued.clone();
    reissued.sort();
    assert_eq!(
        reissued,
        [
            "apiserver",
            "etcd/master2/peer",
            "etcd/master2/server",
            "nodes/master2/kubelet-server"
        ]
    );
    assert!(report.created.is_empty(), "{report:?}");
    let after = snapshot(dir.path());
    for (path, bytes) in &before {
        let id = path.trim_end_matches(".crt").trim_end_matches(".key");
        let changed = after[path] != *bytes;
        let expected = reissued.iter().any(|r| r == id) || path == "index.json";
        assert_eq!(changed, expected, "{path}");
    }
    let sans = openssl_x509(
        &dir.path().join("apiserver.crt"),
        &["-ext", "subjectAltName"],
    );
    assert!(
        sans.contains("192.168.1.14") && !sans.contains("192.168.1.12,"),
        "{sans}"
    );
}

#[test]
fn renewal_reissues_expiring_leaves_only() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(example()).unwrap();
    ensure(&text, dir.path());
    let (c, _) = Cluster::parse(Path::new("cluster.toml"), &text).unwrap();
    let opts = EnsureOptions {
        renew_within: Some(time::Duration::days(400)),
        ..EnsureOptions::default()
    };
    let report = pki::ensure(dir.path(), &c, opts).unwrap().1;
    assert_eq!(report.reissued.len(), pki::leaf_specs(&c).len());
    assert!(
        report.kept.contains(&"ca".to_string()),
        "CAs are never renewed here"
    );
}

#[test]
fn corrupt_key_is_reported_with_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(example()).unwrap();
    ensure(&text, dir.path());
    std::fs::write(dir.path().join("admin.key"), "garbage").unwrap();
    let (c, _) = Cluster::parse(Path::new("cluster.toml"), &text).unwrap();
    let err = pki::ensure(dir.path(), &c, EnsureOptions::default()).unwrap_err();
    assert!(err.to_string().contains("admin.key"), "{err}");
}
