//! Kubernetes into the images: `slipway lock --kubernetes` pins the release binaries from
//! the SHA-512 files published beside them and the profiles' `[kubernetes] images` from
//! their tags; `slipway build` installs the binaries in every role verified against those
//! pins, bakes the images (pulled by the pinned digest), and refuses bytes that differ.
//! The release tree here is a local copy (`SLIPWAY_KUBE_ARTIFACTS`, laid out as
//! dl.k8s.io's) with stand-in files, and the images are stand-ins in a real registry on
//! 127.0.0.1 (Debian's docker-registry): what is tested is the pinning, fetching, checking
//! and baking, not kubelet or the API server (this machine reaches neither dl.k8s.io nor
//! registry.k8s.io, and no test may).
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::registry::{Registry, layout_labelled, push_as};
use sha2::{Digest, Sha512};

/// A site with its own registry on 127.0.0.1: the release's images (kube-apiserver,
/// kube-controller-manager, kube-scheduler at each version, under `REGISTRY/k8s`) and two
/// add-ons' (CoreDNS, Cilium), each a different two-architecture image; a data directory
/// whose profiles name them; and the example cluster with `image_repository` there.
struct Site {
    reg: Registry,
    data: PathBuf,
    cluster: PathBuf,
    /// Image name -> (index digest, linux/amd64 manifest digest), as pushed.
    pushed: BTreeMap<String, (String, String)>,
}

fn site(tmp: &Path, versions: &[&str]) -> Site {
    let reg = Registry::start(tmp);
    let host = format!("127.0.0.1:{}", reg.port);
    let mut names: Vec<String> = Vec::new();
    for v in versions {
        for c in slipway::cluster::CONTROL_PLANE_COMPONENTS {
            names.push(format!("k8s/{c}:{v}"));
        }
    }
    names.push("coredns/coredns:v1.12.1".into());
    names.push("cilium/cilium:v1.18.4".into());
    let mut pushed = BTreeMap::new();
    for n in &names {
        let dir = tmp.join("layouts").join(n.replace(['/', ':'], "_"));
        let l = layout_labelled(&dir, &["amd64", "arm64"], n);
        push_as(&reg, &l, n, tmp);
        let (_, amd64, _) = l.images.iter().find(|i| i.0 == "amd64").unwrap();
        pushed.insert(format!("{host}/{n}"), (l.index.clone(), amd64.clone()));
    }
    let data = common::data_copy(tmp);
    let base = data.join("profiles/base.toml");
    let text = std::fs::read_to_string(&base).unwrap();
    let images = text.find("images = [").unwrap();
    let end = images + text[images..].find(']').unwrap() + 1;
    let text = format!(
        "{}images = [\"{host}/coredns/coredns:v1.12.1\", \"{host}/cilium/cilium:v1.18.4\"]{}",
        &text[..images],
        &text[end..]
    )
    .replace(
        "image_repository = \"registry.k8s.io\"",
        &format!("image_repository = \"{host}/k8s\""),
    );
    std::fs::write(&base, text).unwrap();
    let cluster = tmp.join("cluster.toml");
    std::fs::write(
        &cluster,
        std::fs::read_to_string(common::example()).unwrap().replace(
            "kubernetes_version = \"v1.34.2\"",
            &format!("kubernetes_version = \"v1.34.2\"\nimage_repository = \"{host}/k8s\""),
        ),
    )
    .unwrap();
    Site {
        reg,
        data,
        cluster,
        pushed,
    }
}

/// `DIR` of the root of `role`'s disk in `out`, unsquashed (only `paths`).
fn unsquash(out: &Path, role: &str, tmp: &Path, paths: &[&str]) -> PathBuf {
    let disk = out.join(format!("images/{role}.raw"));
    let root_part = common::sfdisk_parts(&disk)
        .into_iter()
        .find(|p| p.name == "root-a")
        .unwrap();
    let root = tmp.join(format!("{role}.sqfs"));
    std::fs::write(
        &root,
        common::read_range(&disk, root_part.start, root_part.size),
    )
    .unwrap();
    let x = tmp.join(format!("{role}-root"));
    let _ = std::fs::remove_dir_all(&x);
    common::check(
        Command::new("unsquashfs")
            .args(["-q", "-d"])
            .arg(&x)
            .arg(&root)
            .args(paths),
    );
    x
}

/// kubelet and kubectl stand-ins published as v1.34.2 under `release`, each with its
/// checksum file; returns the run's nonce (unique per run, so that nothing of another run
/// is found in the shared cache) and the two files' bytes.
fn publish_v1_34_2(release: &std::path::Path) -> (String, Vec<u8>, Vec<u8>) {
    let nonce = format!("{:?}", std::time::SystemTime::now());
    let kubelet = format!("#!/bin/sh\n# kubelet stand-in {nonce}\n").into_bytes();
    let kubectl = format!("#!/bin/sh\n# kubectl stand-in {nonce}\n").into_bytes();
    publish(release, "v1.34.2", "kubelet", &kubelet, &kubelet);
    publish(release, "v1.34.2", "kubectl", &kubectl, &kubectl);
    (nonce, kubelet, kubectl)
}

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
fn pinned_binaries_and_images_are_installed_and_other_bytes_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let site = site(tmp.path(), &["v1.34.2", "v1.34.3"]);
    let host = format!("127.0.0.1:{}", site.reg.port);
    let release = tmp.path().join("release");
    let (nonce, kubelet, kubectl) = publish_v1_34_2(&release);
    // v1.34.3's kubelet is not what its checksum says.
    let published = format!("the real kubelet v1.34.3 {nonce}").into_bytes();
    publish(&release, "v1.34.3", "kubelet", b"tampered", &published);
    publish(&release, "v1.34.3", "kubectl", &kubectl, &kubectl);

    let lock = tmp.path().join("slipway.lock");
    std::fs::copy(common::fixture("SLIPWAY_TEST_LOCK"), &lock).unwrap();
    let mut rootfs = common::offline_options();
    rootfs.data = slipway::profile::DataDir::new(&site.data);
    rootfs.lock_path = lock.clone();
    rootfs.kube_artifacts = Some(release.clone());
    let profiles = ["base", "control-plane", "worker"].map(String::from);
    // `slipway lock --kubernetes` pins the release first and then resolves the packages:
    // with the mirror unreachable the second half fails, and the lock is written only
    // when all of it succeeded, so it stays as it was.
    let before = std::fs::read(&lock).unwrap();
    let e = slipway::rootfs::refresh_lock(&profiles, &["v1.34.2".into()], &rootfs)
        .unwrap_err()
        .to_string();
    assert!(e.contains("127.0.0.1:9"), "{e}");
    assert!(
        std::fs::read(&lock).unwrap() == before,
        "a refused lock was written"
    );
    let l =
        slipway::rootfs::lock_kubernetes(&["v1.34.2".into(), "v1.34.3".into()], &profiles, &rootfs)
            .unwrap();
    let pin = &l.kubernetes["v1.34.2"].binaries["kubelet"];
    assert_eq!(
        pin.url,
        "https://dl.k8s.io/release/v1.34.2/bin/linux/amd64/kubelet"
    );
    assert_eq!(pin.sha512, hex::encode(Sha512::digest(&kubelet)));
    // Every image at its tag's digest: the five of v1.34.2 (three release images, two
    // add-ons), each the index that was pushed.
    let v2: BTreeMap<String, String> = site
        .pushed
        .iter()
        .filter(|(n, _)| !n.ends_with(":v1.34.3"))
        .map(|(n, (index, _))| (n.clone(), format!("sha256:{index}")))
        .collect();
    assert_eq!(v2.len(), 5);
    assert_eq!(l.kubernetes["v1.34.2"].images, v2);
    let text = std::fs::read_to_string(&lock).unwrap();
    assert!(
        text.contains("[kubernetes.\"v1.34.2\".binaries.kubelet]")
            && text.contains("[kubernetes.\"v1.34.2\".images]"),
        "{text}"
    );

    // The tag moves after the lock was written: the build takes the pinned image all
    // the same (a tag is read by `slipway lock` only).
    let scheduler = format!("{host}/k8s/kube-scheduler:v1.34.2");
    let moved = layout_labelled(&tmp.path().join("moved"), &["amd64"], "moved");
    push_as(&site.reg, &moved, "k8s/kube-scheduler:v1.34.2", tmp.path());

    // `slipway fetch --kubernetes`: everything pinned at v1.34.2 into the cache (the
    // moved tag is not followed here either); then neither the registry nor the release
    // tree is needed by any build. Nothing pinned at v1.35.0: refused, naming the lock
    // and the command that pins.
    let fetched =
        slipway::rootfs::fetch_kubernetes(&["v1.34.2".into()], &profiles, &rootfs).unwrap();
    assert_eq!(fetched.len(), 2 + 5, "{fetched:?}");
    let e = slipway::rootfs::fetch_kubernetes(&["v1.35.0".into()], &profiles, &rootfs)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("slipway.lock") && e.contains("slipway lock --kubernetes v1.35.0"),
        "{e}"
    );
    drop(site.reg);
    rootfs.kube_artifacts = Some(tmp.path().join("gone"));

    // The example at v1.34.2, offline: both binaries in both roles, byte for byte, 0755;
    // the add-ons' images in both roles, the release's in the control plane's.
    let opts = common::build_options(rootfs, &tmp.path().join("secrets"));
    let out = tmp.path().join("out");
    let m = slipway::build::build(&site.cluster, &opts, &out).unwrap();
    assert_eq!(m.kubernetes.version, "v1.34.2");
    assert!(m.kubernetes.missing.is_empty(), "{:?}", m.kubernetes);
    assert!(
        !m.warnings.iter().any(|w| w.contains("carry none")),
        "{:?}",
        m.warnings
    );
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
    for (name, (index, amd64)) in site.pushed.iter().filter(|(n, _)| !n.ends_with(":v1.34.3")) {
        let i = m
            .images
            .iter()
            .find(|i| i.name == *name)
            .unwrap_or_else(|| panic!("{name} not baked: {:?}", m.images));
        assert_eq!(i.digest, format!("sha256:{amd64}"), "{name}");
        assert_eq!(i.source, format!("oci:{name}@sha256:{index}"), "{name}");
        let roles = if name.contains("/k8s/") {
            &both[..1]
        } else {
            &both[..]
        };
        assert_eq!(i.roles, roles, "{name}");
    }
    assert_ne!(
        m.images
            .iter()
            .find(|i| i.name == scheduler)
            .unwrap()
            .digest,
        format!("sha256:{}", moved.images[0].1),
        "the moved tag was followed"
    );
    for role in ["control-plane", "worker"] {
        let x = unsquash(
            &out,
            role,
            tmp.path(),
            &[
                "usr/bin/kubelet",
                "usr/bin/kubectl",
                "usr/share/slipway/images/images.list",
            ],
        );
        for (name, want) in [("kubelet", &kubelet), ("kubectl", &kubectl)] {
            let p = x.join("usr/bin").join(name);
            assert_eq!(&std::fs::read(&p).unwrap(), want, "{role}: {name}");
            let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o7777;
            assert_eq!(mode, 0o755, "{role}: {name}");
        }
        // What slipway-images.service imports before kubelet starts.
        let list = std::fs::read_to_string(x.join("usr/share/slipway/images/images.list")).unwrap();
        let listed: Vec<&str> = list.lines().filter_map(|l| l.split(' ').nth(1)).collect();
        for name in m
            .images
            .iter()
            .filter(|i| i.roles.iter().any(|r| r == role))
        {
            assert!(listed.contains(&name.name.as_str()), "{role}: {list}");
        }
        assert_eq!(
            listed.contains(&scheduler.as_str()),
            role == "control-plane",
            "{role}: {list}"
        );
    }

    let offline = opts.clone();

    // The cluster's static pods naming images the profiles do not pin (its
    // image_repository is not the profiles'): refused, naming both; output kept.
    let before = std::fs::read(out.join("manifest.json")).unwrap();
    let Err(e) = slipway::build::build(&common::example(), &offline, &out) else {
        panic!("static pods naming images nobody bakes were built");
    };
    let e = format!("{e:#}");
    assert!(
        e.contains("registry.k8s.io/kube-apiserver:v1.34.2")
            && e.contains(&format!("{host}/k8s/kube-apiserver:v1.34.2"))
            && e.contains("image_repository"),
        "{e}"
    );
    assert_eq!(std::fs::read(out.join("manifest.json")).unwrap(), before);

    // v1.34.3: the kubelet's bytes are not the pinned ones. Refused by name, version,
    // file and both digests; the previous output stays.
    let mut opts = opts;
    opts.rootfs.kube_artifacts = Some(release.clone());
    let cluster = tmp.path().join("cluster-v1.34.3.toml");
    std::fs::write(
        &cluster,
        std::fs::read_to_string(&site.cluster)
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
        (
            "image_repository = \"registry.k8s.io\"",
            "image_repository = \"registry\"",
            "kubernetes.image_repository",
            "is not REGISTRY[/PATH]",
        ),
        (
            "\"quay.io/cilium/cilium:v1.18.4\"",
            "\"quay.io/cilium/cilium\"",
            "kubernetes.images[1]",
            "nor REGISTRY/REPOSITORY:TAG",
        ),
        (
            "\"quay.io/cilium/cilium:v1.18.4\"",
            "\"Cilium\"",
            "kubernetes.images[1]",
            "is neither an image of the release",
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

/// A build whose lock pins nothing of the cluster's Kubernetes release pins it itself:
/// refused under `--locked` (naming what is missing and the command); with the release
/// server and registry unreachable, a warning and images without it; with them there
/// (a release server on 127.0.0.1 and the site's registry), the release pinned in the
/// lock and baked, as `slipway lock --kubernetes` would have.
#[test]
fn a_build_pins_the_release_when_the_lock_has_none() {
    let tmp = tempfile::tempdir().unwrap();
    let site = site(tmp.path(), &["v1.34.2"]);
    let release = tmp.path().join("release");
    let (_, kubelet, _) = publish_v1_34_2(&release);
    let server = common::http::Server::serve(release.clone());
    let with_release_url = |url: &str| {
        let base = site.data.join("profiles/base.toml");
        let text = std::fs::read_to_string(&base).unwrap();
        let start = text.find("release_url = \"").unwrap();
        let end = start + text[start..].find('\n').unwrap();
        std::fs::write(
            &base,
            format!("{}release_url = \"{url}\"{}", &text[..start], &text[end..]),
        )
        .unwrap();
    };
    let lock = tmp.path().join("slipway.lock");
    let fresh_lock = || std::fs::copy(common::fixture("SLIPWAY_TEST_LOCK"), &lock).unwrap();
    fresh_lock();
    let mut rootfs = common::offline_options();
    rootfs.data = slipway::profile::DataDir::new(&site.data);
    rootfs.lock_path = lock.clone();
    rootfs.kube_artifacts = None;
    let opts = common::build_options(rootfs, &tmp.path().join("secrets"));
    let out = tmp.path().join("out");

    // --locked: refused before anything is built, naming the pins and the command.
    let mut locked = opts.clone();
    locked.rootfs.locked = true;
    let e = format!(
        "{:#}",
        slipway::build::build(&site.cluster, &locked, &out).unwrap_err()
    );
    assert!(
        e.contains("pins nothing of Kubernetes v1.34.2")
            && e.contains("kubelet")
            && e.contains("/k8s/kube-apiserver:v1.34.2")
            && e.contains("slipway lock --kubernetes v1.34.2"),
        "{e}"
    );
    assert!(!out.join("manifest.json").exists());

    // The release server unreachable (a closed port): warned, built without it.
    with_release_url("http://127.0.0.1:9/release");
    let m = slipway::build::build(&site.cluster, &opts, &out).unwrap();
    assert!(!m.kubernetes.complete(), "{:?}", m.kubernetes);
    assert!(
        m.warnings
            .iter()
            .any(|w| w.contains("pinning them failed") && w.contains("127.0.0.1:9")),
        "{:?}",
        m.warnings
    );
    assert!(
        !std::fs::read_to_string(&lock)
            .unwrap()
            .contains("[kubernetes")
    );

    // Reachable: pinned in the lock and baked, no warning about it.
    with_release_url(&server.url);
    fresh_lock();
    let m = slipway::build::build(&site.cluster, &opts, &out).unwrap();
    assert!(m.kubernetes.complete(), "{:?}", m.kubernetes);
    assert!(
        !m.warnings
            .iter()
            .any(|w| w.contains("Kubernetes") || w.contains("kubelet")),
        "{:?}",
        m.warnings
    );
    let l = slipway::debian::lock::Lock::load(&lock).unwrap();
    assert_eq!(
        l.kubernetes["v1.34.2"].binaries["kubelet"].sha512,
        hex::encode(Sha512::digest(&kubelet))
    );
    assert_eq!(l.kubernetes["v1.34.2"].images.len(), 5);
    for (name, (_, amd64)) in &site.pushed {
        let i = m.images.iter().find(|i| i.name == *name).unwrap();
        assert_eq!(i.digest, format!("sha256:{amd64}"), "{name}");
    }
    assert!(!server.requests("kubelet.sha512").is_empty());
}
