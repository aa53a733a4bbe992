//! Kubernetes binaries into the images: `slipway lock --kubernetes` pins them from the
//! SHA-512 files published beside them, `slipway build` installs them in every role
//! verified against those pins, and refuses bytes that differ. The release tree here is
//! a local copy (`SLIPWAY_KUBE_ARTIFACTS`, laid out as dl.k8s.io's), with stand-in files:
//! what is tested is the pinning, fetching and checking, not kubelet (this machine cannot
//! reach the release server).
#![allow(clippy::unwrap_used)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use sha2::{Digest, Sha512};

fn publish(dir: &std::path::Path, version: &str, name: &str, bytes: &[u8], sum_of: &[u8]) {
    let bin = dir.join(version).join("bin/linux/amd64");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::write(bin.join(name), bytes).unwrap();
    // As the release server has it: the bare hex digest.
    std::fs::write(
        bin.join(format!("{name}.sha512")),
        hex::encode(Sha512::digest(sum_of)),
    )
    .unwrap();
}

#[test]
fn pinned_binaries_are_installed_and_other_bytes_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let release = tmp.path().join("release");
    // Unique per run, so that nothing of another run is found in the shared cache.
    let nonce = format!("{:?}", std::time::SystemTime::now());
    let kubelet = format!("#!/bin/sh\n# kubelet stand-in {nonce}\n").into_bytes();
    let kubectl = format!("#!/bin/sh\n# kubectl stand-in {nonce}\n").into_bytes();
    publish(&release, "v1.34.2", "kubelet", &kubelet, &kubelet);
    publish(&release, "v1.34.2", "kubectl", &kubectl, &kubectl);
    // v1.34.3's kubelet is not what its checksum says.
    let published = format!("the real kubelet v1.34.3 {nonce}").into_bytes();
    publish(&release, "v1.34.3", "kubelet", b"tampered", &published);
    publish(&release, "v1.34.3", "kubectl", &kubectl, &kubectl);

    let lock = tmp.path().join("slipway.lock");
    std::fs::copy(common::fixture("SLIPWAY_TEST_LOCK"), &lock).unwrap();
    let mut rootfs = common::offline_options();
    rootfs.lock_path = lock.clone();
    rootfs.kube_artifacts = Some(release.clone());
    let profiles = ["base", "control-plane", "worker"].map(String::from);
    let l =
        slipway::rootfs::lock_kubernetes(&["v1.34.2".into(), "v1.34.3".into()], &profiles, &rootfs)
            .unwrap();
    let pin = &l.kubernetes["v1.34.2"]["kubelet"];
    assert_eq!(
        pin.url,
        "https://dl.k8s.io/release/v1.34.2/bin/linux/amd64/kubelet"
    );
    assert_eq!(pin.sha512, hex::encode(Sha512::digest(&kubelet)));
    let text = std::fs::read_to_string(&lock).unwrap();
    assert!(text.contains("[kubernetes.\"v1.34.2\".kubelet]"), "{text}");

    // The example at v1.34.2: both binaries in both roles, byte for byte, 0755.
    let opts = slipway::build::BuildOptions {
        rootfs,
        secrets_dir: tmp.path().join("secrets"),
        init: common::init_binary(),
        qcow2: false,
        progress: false,
    };
    let out = tmp.path().join("out");
    let m = slipway::build::build(&common::example(), &opts, &out).unwrap();
    assert_eq!(m.kubernetes.version, "v1.34.2");
    assert!(m.kubernetes.missing.is_empty(), "{:?}", m.kubernetes);
    let names: Vec<(&str, &[String])> = m
        .kubernetes
        .binaries
        .iter()
        .map(|b| (b.name.as_str(), &b.roles[..]))
        .collect();
    let both = ["control-plane".to_string(), "worker".to_string()];
    assert_eq!(names, [("kubelet", &both[..]), ("kubectl", &both[..])]);
    let json = std::fs::read_to_string(out.join("manifest.json")).unwrap();
    assert!(json.contains(&pin.sha512), "manifest.json lacks the pin");
    for role in ["control-plane", "worker"] {
        let disk = out.join(format!("images/{role}.raw"));
        let root_part = common::sfdisk_parts(&disk)
            .into_iter()
            .find(|p| p.name == "root-a")
            .unwrap();
        let root = tmp.path().join(format!("{role}.sqfs"));
        std::fs::write(
            &root,
            common::read_range(&disk, root_part.start, root_part.size),
        )
        .unwrap();
        let x = tmp.path().join(format!("{role}-bin"));
        common::check(
            Command::new("unsquashfs")
                .args(["-q", "-d"])
                .arg(&x)
                .arg(&root)
                .args(["usr/bin/kubelet", "usr/bin/kubectl"]),
        );
        for (name, want) in [("kubelet", &kubelet), ("kubectl", &kubectl)] {
            let p = x.join("usr/bin").join(name);
            assert_eq!(&std::fs::read(&p).unwrap(), want, "{role}: {name}");
            let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o7777;
            assert_eq!(mode, 0o755, "{role}: {name}");
        }
    }

    // Cached: a second build needs neither the release tree nor the network.
    let mut offline = opts.clone();
    offline.rootfs.kube_artifacts = Some(tmp.path().join("gone"));
    slipway::build::build(&common::example(), &offline, &out).unwrap();

    // v1.34.3: the kubelet's bytes are not the pinned ones. Refused by name, version,
    // file and both digests; the previous output stays.
    let before = std::fs::read(out.join("manifest.json")).unwrap();
    let cluster = tmp.path().join("cluster.toml");
    std::fs::write(
        &cluster,
        std::fs::read_to_string(common::example())
            .unwrap()
            .replace("v1.34.2", "v1.34.3"),
    )
    .unwrap();
    let Err(e) = slipway::build::build(&cluster, &opts, &out) else {
        panic!("a kubelet with other bytes than pinned was taken");
    };
    let e = format!("{e:#}");
    assert!(
        e.contains("kubelet v1.34.3")
            && e.contains("v1.34.3/bin/linux/amd64/kubelet")
            && e.contains(&hex::encode(Sha512::digest(&published)))
            && e.contains(&hex::encode(Sha512::digest(b"tampered"))),
        "{e}"
    );
    assert_eq!(std::fs::read(out.join("manifest.json")).unwrap(), before);

    // Pinned but neither cached nor available: a clear error naming where it looked.
    let mut missing = opts.clone();
    missing.rootfs.kube_artifacts = Some(tmp.path().join("gone"));
    let Err(e) = slipway::build::build(&cluster, &missing, &out) else {
        panic!("a pinned kubelet that is nowhere was not missed");
    };
    let e = format!("{e:#}");
    assert!(
        e.contains("gone/v1.34.3/bin/linux/amd64/kubelet") && e.contains("SLIPWAY_KUBE_ARTIFACTS"),
        "{e}"
    );
}

/// A bad `[kubernetes]` table is refused naming the profile, field and reason.
#[test]
fn a_bad_kubernetes_table_is_refused_by_field() {
    let tmp = tempfile::tempdir().unwrap();
    common::check(
        Command::new("cp")
            .arg("-a")
            .arg(common::repo().join("profiles"))
            .arg(tmp.path()),
    );
    let base = tmp.path().join("profiles/base.toml");
    let text = std::fs::read_to_string(&base).unwrap();
    for (from, to, field, why) in [
        (
            "binaries = [\"kubelet\", \"kubectl\"]",
            "binaries = [\"kubelet\", \"../kubectl\"]",
            "kubernetes.binaries[1]",
            "is not a binary name",
        ),
        (
            "release_url = \"https://dl.k8s.io/release\"",
            "release_url = \"dl.k8s.io/release\"",
            "kubernetes.release_url",
            "is not an http(s) URL",
        ),
        (
            "release_url = \"https://dl.k8s.io/release\"",
            "release = \"https://dl.k8s.io/release\"",
            "unknown field `release`",
            "",
        ),
    ] {
        assert!(text.contains(from), "{from}");
        std::fs::write(&base, text.replace(from, to)).unwrap();
        let e = slipway::profile::image::ImageProfile::load(tmp.path(), "worker")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("base.toml") && e.contains(field) && e.contains(why),
            "{e}"
        );
    }
}
