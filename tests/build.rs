//! `slipway build` of the example cluster, judged by independent tools: sgdisk and
//! sfdisk (GPT), fsck.fat and mtools (ESP), unsquashfs (root), veritysetup (hash tree,
//! and a flipped byte), objdump/objcopy (UKI), cpio (initramfs), qemu-img (qcow2). Then
//! determinism, and what one node's change touches.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use common::{SfPart, check, read_range, run, sfdisk_parts, stdout};

struct Built {
    cluster: PathBuf,
    secrets: PathBuf,
    out: PathBuf,
    manifest: slipway::build::Manifest,
}

/// One build shared by the tests of this file.
fn built() -> &'static Built {
    static B: OnceLock<Built> = OnceLock::new();
    B.get_or_init(|| {
        let dir = common::shared_build_dir();
        let cluster = dir.join("cluster.toml");
        std::fs::copy(common::example(), &cluster).unwrap();
        let secrets = dir.join("secrets");
        let out = dir.join("out");
        let t = std::time::Instant::now();
        let manifest = common::build(&cluster, &secrets, &out, true);
        eprintln!(
            "build of the example cluster: {:.1} s",
            t.elapsed().as_secs_f64()
        );
        Built {
            cluster,
            secrets,
            out,
            manifest,
        }
    })
}

fn part<'a>(parts: &'a [SfPart], name: &str) -> &'a SfPart {
    parts
        .iter()
        .find(|p| p.name == name)
        .unwrap_or_else(|| panic!("no partition {name}: {parts:?}"))
}

fn extract(disk: &Path, p: &SfPart, to: &Path) {
    std::fs::write(to, read_range(disk, p.start, p.size)).unwrap();
}

fn role_hash(role: &str) -> String {
    built()
        .manifest
        .roles
        .iter()
        .find(|r| r.role == role)
        .unwrap()
        .root_hash
        .clone()
}

/// The UKI on `role`'s image (`EFI/BOOT/BOOTX64.EFI` on its ESP, read by mtools), copied
/// into `tmp`.
fn role_uki(b: &Built, role: &str, tmp: &Path) -> PathBuf {
    let disk = b.out.join(format!("images/{role}.raw"));
    let esp = tmp.join(format!("{role}-esp.img"));
    extract(&disk, part(&sfdisk_parts(&disk), "esp"), &esp);
    let uki = tmp.join(format!("{role}.efi"));
    check(
        Command::new("mcopy")
            .arg("-i")
            .arg(&esp)
            .arg("::/EFI/BOOT/BOOTX64.EFI")
            .arg(&uki),
    );
    uki
}

/// A PE section's bytes, as objcopy reads them.
fn section(pe: &Path, name: &str, tmp: &Path) -> Vec<u8> {
    let f = tmp.join(format!(
        "{}{name}",
        pe.file_name().unwrap().to_string_lossy()
    ));
    check(
        Command::new("objcopy")
            .args(["-O", "binary", "--only-section", name])
            .arg(pe)
            .arg(&f),
    );
    std::fs::read(&f).unwrap()
}

#[test]
fn the_gpt_is_valid_and_follows_the_discoverable_partitions_spec() {
    let b = built();
    for disk in [
        "images/control-plane.raw",
        "images/worker.raw",
        "nodes/master1/disk.raw",
    ] {
        let path = b.out.join(disk);
        let o = check(Command::new("sgdisk").arg("-v").arg(&path));
        assert!(
            stdout(&o).contains("No problems found"),
            "{disk}: {}",
            stdout(&o)
        );
        let parts = sfdisk_parts(&path);
        let names: Vec<&str> = parts.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(
            names,
            ["esp", "root-a", "root-a-verity", "root-b", "root-b-verity"],
            "{disk}"
        );
        let types: Vec<&str> = parts.iter().map(|p| p.type_guid.as_str()).collect();
        assert_eq!(
            types,
            [
                "C12A7328-F81F-11D2-BA4B-00A0C93EC93B",
                "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709",
                "2C7357ED-EBD2-46D9-AEC1-23D437EC2BF5",
                "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709",
                "2C7357ED-EBD2-46D9-AEC1-23D437EC2BF5",
            ],
            "{disk}"
        );
        // A/B slots of equal size; partitions on 1 MiB boundaries.
        assert_eq!(parts[1].size, parts[3].size);
        assert_eq!(parts[2].size, parts[4].size);
        assert!(parts.iter().all(|p| p.start % (1 << 20) == 0));
        // Root and hash partition UUIDs are the halves of the root hash.
        let role = if disk.contains("worker") {
            "worker"
        } else {
            "control-plane"
        };
        let hash = role_hash(role);
        let uuid_hex = |u: &str| u.replace('-', "").to_lowercase();
        assert_eq!(uuid_hex(&parts[1].uuid), hash[..32], "{disk}");
        assert_eq!(uuid_hex(&parts[2].uuid), hash[32..], "{disk}");
    }
}

#[test]
fn esp_is_fat32_with_the_uki_and_only_nodes_carry_a_config() {
    let b = built();
    let tmp = tempfile::tempdir().unwrap();
    for (disk, config) in [
        ("images/control-plane.raw", None),
        ("nodes/master1/disk.raw", Some("nodes/master1/config.ign")),
        ("nodes/worker1/disk.raw", Some("nodes/worker1/config.ign")),
    ] {
        let path = b.out.join(disk);
        let esp = tmp.path().join("esp.img");
        extract(&path, part(&sfdisk_parts(&path), "esp"), &esp);
        check(Command::new("fsck.fat").arg("-n").arg(&esp));
        let o = check(Command::new("file").arg("-s").arg(&esp));
        assert!(stdout(&o).contains("FAT (32 bit)"), "{}", stdout(&o));
        let listing = stdout(&check(
            Command::new("mdir")
                .args(["-/", "-b", "-i"])
                .arg(&esp)
                .arg("::"),
        ));
        assert!(listing.contains("::/EFI/BOOT/BOOTX64.EFI"), "{listing}");
        assert!(listing.contains("::/EFI/Linux/slipway.efi"), "{listing}");
        let got = tmp.path().join("config.ign");
        let _ = std::fs::remove_file(&got);
        let o = run(Command::new("mcopy")
            .arg("-i")
            .arg(&esp)
            .arg("::/slipway/config.ign")
            .arg(&got));
        match config {
            None => assert!(!o.status.success(), "the role image carries a node config"),
            Some(c) => {
                assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
                assert_eq!(
                    std::fs::read(&got).unwrap(),
                    std::fs::read(b.out.join(c)).unwrap(),
                    "{disk}: the ESP's config is not the node's config.ign"
                );
            }
        }
    }
}

#[test]
fn root_is_squashfs_and_verity_verifies_it_and_refuses_a_flipped_byte() {
    let b = built();
    let tmp = tempfile::tempdir().unwrap();
    let disk = b.out.join("nodes/master1/disk.raw");
    let parts = sfdisk_parts(&disk);
    let root = tmp.path().join("root.img");
    let hash = tmp.path().join("hash.img");
    extract(&disk, part(&parts, "root-a"), &root);
    extract(&disk, part(&parts, "root-a-verity"), &hash);
    let o = check(Command::new("unsquashfs").arg("-s").arg(&root));
    assert!(stdout(&o).contains("Compression zstd"), "{}", stdout(&o));
    let o = check(Command::new("unsquashfs").arg("-l").arg(&root));
    let listing = stdout(&o);
    for p in [
        "squashfs-root/usr/sbin/haproxy",
        "squashfs-root/usr/lib/systemd/systemd",
        "squashfs-root/usr/lib/modules/6.",
    ] {
        assert!(listing.contains(p), "{p} missing from the root");
    }
    assert!(listing.contains("/modules.dep.bin"), "no modules.dep.bin");
    // The baked container images, as manifest.json lists them, each an OCI archive that
    // skopeo reads back with the recorded digest; and each in the SBOM.
    // (With the Kubernetes release pinned, its images follow these two.)
    let images = &b.manifest.images;
    let names: Vec<&str> = images.iter().map(|i| i.name.as_str()).collect();
    let ours = [
        "registry.k8s.io/pause:3.10",
        "localhost/slipway/etcd:trixie",
    ];
    if common::kubernetes_pinned() {
        assert_eq!(names[..2], ours, "{names:?}");
    } else {
        assert_eq!(names, ours);
    }
    let etcd = &images[1];
    assert!(
        etcd.source.starts_with("deb:etcd-server=") && etcd.source.contains(",libc6="),
        "{}",
        etcd.source
    );
    assert_eq!(etcd.roles, ["control-plane"]);
    assert!(
        listing.contains("squashfs-root/usr/share/slipway/images/images.list"),
        "no images.list"
    );
    let sbom = std::fs::read_to_string(b.out.join("images/control-plane.spdx.json")).unwrap();
    for i in images {
        assert!(
            listing.contains(&format!("squashfs-root{}", i.path)),
            "{} missing",
            i.path
        );
        let x = tmp.path().join("x");
        check(
            Command::new("unsquashfs")
                .arg("-q")
                .arg("-d")
                .arg(&x)
                .arg(&root)
                .arg(i.path.trim_start_matches('/')),
        );
        let raw = check(
            Command::new("skopeo")
                .args(["inspect", "--raw"])
                .arg(format!("oci-archive:{}{}", x.display(), i.path)),
        );
        let got = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&raw.stdout));
        assert_eq!(format!("sha256:{got}"), i.digest, "{}", i.name);
        assert!(
            sbom.contains(&format!("\"name\": \"{}\"", i.name)) && sbom.contains(&i.digest),
            "{} not in the SBOM",
            i.name
        );
        if i.name.contains("etcd") {
            // The image alone runs etcd: its one layer unpacked and chrooted into.
            let layout = tmp.path().join("layout");
            let rootdir = tmp.path().join("etcd-root");
            std::fs::create_dir_all(&rootdir).unwrap();
            check(
                Command::new("skopeo")
                    .arg("copy")
                    .arg(format!("oci-archive:{}{}", x.display(), i.path))
                    .arg(format!("dir:{}", layout.display())),
            );
            let m: serde_json::Value =
                serde_json::from_slice(&std::fs::read(layout.join("manifest.json")).unwrap())
                    .unwrap();
            let layer = m["layers"][0]["digest"].as_str().unwrap();
            let layer = layout.join(layer.trim_start_matches("sha256:"));
            check(
                Command::new("tar")
                    .arg("-xf")
                    .arg(&layer)
                    .arg("-C")
                    .arg(&rootdir),
            );
            for (prog, want) in [
                ("etcd", "etcd Version: 3.5"),
                ("etcdctl", "etcdctl version: 3.5"),
            ] {
                let arg = if prog == "etcd" {
                    "--version"
                } else {
                    "version"
                };
                let o = check(Command::new("chroot").arg(&rootdir).arg(prog).arg(arg));
                assert!(stdout(&o).contains(want), "{prog}: {}", stdout(&o));
            }
        }
        let _ = std::fs::remove_dir_all(&x);
    }

    let roothash = role_hash("control-plane");
    check(
        Command::new("veritysetup")
            .arg("verify")
            .arg(&root)
            .arg(&hash)
            .arg(&roothash),
    );
    // One byte flipped in the middle of the root: verification fails.
    let mut bytes = std::fs::read(&root).unwrap();
    let data_len = built().manifest.roles[0].root_size as usize;
    bytes[data_len / 2] ^= 0x01;
    std::fs::write(&root, &bytes).unwrap();
    let o = run(Command::new("veritysetup")
        .arg("verify")
        .arg(&root)
        .arg(&hash)
        .arg(&roothash));
    assert!(!o.status.success(), "veritysetup accepted a flipped byte");
}

#[test]
fn uki_sections_and_initramfs_contents() {
    let b = built();
    let tmp = tempfile::tempdir().unwrap();
    let uki = role_uki(b, "control-plane", tmp.path());
    let o = check(Command::new("objdump").arg("-h").arg(&uki));
    for s in [".osrel", ".cmdline", ".uname", ".initrd", ".linux"] {
        assert!(stdout(&o).contains(s), "no {s} section: {}", stdout(&o));
    }
    let uki_section = |name: &str| section(&uki, name, tmp.path());
    let cmdline = String::from_utf8(uki_section(".cmdline")).unwrap();
    assert!(
        cmdline.contains(&format!("slipway.roothash={}", role_hash("control-plane"))),
        "{cmdline}"
    );
    assert!(
        cmdline.contains("console=tty0") && cmdline.contains("console=ttyS0,115200"),
        "{cmdline}"
    );
    let initrd = tmp.path().join("initrd");
    std::fs::write(&initrd, uki_section(".initrd")).unwrap();
    let o = check(
        Command::new("cpio")
            .args(["-t", "--quiet", "-F"])
            .arg(&initrd),
    );
    let names: Vec<String> = stdout(&o).lines().map(str::to_string).collect();
    assert!(names.contains(&"init".to_string()), "{names:?}");
    assert!(names.contains(&"etc/slipway/modules".to_string()));
    let r = &b.manifest.roles[0];
    for m in &r.initramfs_modules {
        assert!(
            names.contains(&format!("lib/modules/{m}.ko")),
            "{m} listed but not in the initramfs"
        );
    }
    for m in [
        "virtio_blk",
        "nvme",
        "ahci",
        "usb_storage",
        "xhci_pci",
        "dm_verity",
        "squashfs",
    ] {
        assert!(r.initramfs_modules.iter().any(|x| x == m), "{m} not loaded");
    }
    // Nothing else: the init, its module list and exactly the modules.
    let files = names
        .iter()
        .filter(|n| n.contains('.') || *n == "init")
        .count();
    assert_eq!(files, r.initramfs_modules.len() + 1, "{names:?}");
}

#[test]
fn pxe_files_install_exactly_the_role_disk() {
    let b = built();
    let tmp = tempfile::tempdir().unwrap();
    let hashes: BTreeMap<&str, (u64, &str)> = b
        .manifest
        .artifacts
        .iter()
        .map(|a| (a.path.as_str(), (a.size, a.sha256.as_str())))
        .collect();
    for role in ["control-plane", "worker"] {
        let pxe = b.out.join("pxe").join(role);
        // The compressed image is the role disk, byte for byte (zstd's own decoder).
        let raw = b.out.join(format!("images/{role}.raw"));
        let unpacked = tmp.path().join(format!("{role}.raw"));
        let mut dec = zstd::stream::read::Decoder::new(
            std::fs::File::open(pxe.join("disk.img.zst")).unwrap(),
        )
        .unwrap();
        std::io::copy(&mut dec, &mut std::fs::File::create(&unpacked).unwrap()).unwrap();
        check(Command::new("cmp").arg(&raw).arg(&unpacked));
        // Kernel and initramfs are the UKI's own sections.
        let uki = role_uki(b, role, tmp.path());
        for (name, file) in [(".linux", "vmlinuz"), (".initrd", "initrd.img")] {
            assert!(
                section(&uki, name, tmp.path()) == std::fs::read(pxe.join(file)).unwrap(),
                "pxe/{role}/{file} is not the UKI's {name}"
            );
        }
        // The installer UKI (install media): the same kernel, install mode from the medium.
        let installer = pxe.join("installer.efi");
        let cmdline = String::from_utf8(section(&installer, ".cmdline", tmp.path())).unwrap();
        assert!(
            cmdline.contains(&format!("slipway.roothash={}", role_hash(role)))
                && cmdline.contains("slipway.install.media=SLIPWAY_INSTALL"),
            "{cmdline}"
        );
        assert!(
            section(&installer, ".linux", tmp.path())
                == std::fs::read(pxe.join("vmlinuz")).unwrap()
        );
        let o = check(Command::new("file").arg("-b").arg(pxe.join("vmlinuz")));
        assert!(
            stdout(&o).contains("Linux kernel x86 boot executable"),
            "{}",
            stdout(&o)
        );
    }

    // Each node's script installs its role's image: root hash, size and SHA-256 of the
    // raw disk, the node's install disk; the MAC table and the chain script agree.
    let (cluster, _) = slipway::cluster::Cluster::load(&b.cluster).unwrap();
    let macs: BTreeMap<String, String> =
        serde_json::from_slice(&std::fs::read(b.out.join("pxe/macs.json")).unwrap()).unwrap();
    assert_eq!(macs.len(), cluster.nodes.len());
    for n in &cluster.nodes {
        let mac = n.mac.to_string().replace(':', "-");
        assert_eq!(macs[&mac], n.name);
        let script = std::fs::read_to_string(b.out.join(format!("pxe/nodes/{mac}.ipxe"))).unwrap();
        let role = n.role.as_str();
        let (size, sha) = hashes[format!("images/{role}.raw").as_str()];
        for want in [
            "#!ipxe\n".to_string(),
            format!("kernel ${{slipway-base}}/pxe/{role}/vmlinuz initrd=initrd.img "),
            format!("initrd ${{slipway-base}}/pxe/{role}/initrd.img\n"),
            format!("slipway.roothash={} ", role_hash(role)),
            format!("slipway.install=${{slipway-base}}/pxe/{role}/disk.img.zst "),
            format!("slipway.install.sha256={sha} slipway.install.size={size} "),
            format!("slipway.install.disk={} ", n.install_disk),
            "slipway.install.config=${slipway-base}/nodes/${mac:hexhyp}/config.ign ".into(),
            "slipway.net=${mac:hexhyp},${ip},${netmask},${gateway}\n".into(),
            "slipway.install.state=wipe ".into(),
            "\nboot\n".into(),
        ] {
            assert!(
                script.contains(&want),
                "{mac}.ipxe has no {want:?}:\n{script}"
            );
        }
        assert!(!script.contains("PRIVATE"), "{mac}.ipxe carries a secret");
    }
    let boot = std::fs::read_to_string(b.out.join("pxe/boot.ipxe")).unwrap();
    assert!(boot.starts_with("#!ipxe\n") && boot.contains(slipway::pxe::BASE_PLACEHOLDER));
    assert!(boot.contains("chain ${slipway-base}/pxe/nodes/${mac:hexhyp}.ipxe || goto unknown"));

    // dnsmasq itself accepts the example once its two blanks are filled in.
    let conf = std::fs::read_to_string(b.out.join("pxe/dnsmasq.conf.example"))
        .unwrap()
        .replace("INTERFACE", "lo")
        .replace("SERVER", "192.168.1.5");
    let f = tmp.path().join("dnsmasq.conf");
    std::fs::write(&f, conf).unwrap();
    let o = check(
        Command::new("dnsmasq")
            .arg("--test")
            .arg(format!("--conf-file={}", f.display())),
    );
    let said = format!("{}{}", stdout(&o), String::from_utf8_lossy(&o.stderr));
    assert!(said.contains("syntax check OK"), "{said}");
}

#[test]
fn qcow2_holds_the_same_disk() {
    let b = built();
    for role in ["control-plane", "worker"] {
        let raw = b.out.join(format!("images/{role}.raw"));
        let qcow = b.out.join(format!("images/{role}.qcow2"));
        check(Command::new("qemu-img").arg("check").arg(&qcow));
        check(Command::new("qemu-img").arg("compare").arg(&raw).arg(&qcow));
    }
}

#[test]
fn manifest_lists_every_artifact_with_its_hash_and_secrets_stay_private() {
    use std::os::unix::fs::PermissionsExt;
    let b = built();
    let on_disk: serde_json::Value =
        serde_json::from_slice(&std::fs::read(b.out.join("manifest.json")).unwrap()).unwrap();
    // Without the example's Kubernetes release in the test lock (this machine reaches
    // neither dl.k8s.io nor the registries), the build says what the images lack, in the
    // manifest and as a warning (tests/kube.rs builds with them); with it
    // (`make test SLIPWAY_TEST_KUBERNETES=1`), nothing is missing.
    let missing = [
        "kubelet",
        "kubectl",
        "registry.k8s.io/coredns/coredns:v1.12.1",
        "quay.io/cilium/cilium:v1.18.4",
        "quay.io/cilium/operator-generic:v1.18.4",
        "registry.k8s.io/kube-apiserver:v1.34.2",
        "registry.k8s.io/kube-controller-manager:v1.34.2",
        "registry.k8s.io/kube-scheduler:v1.34.2",
    ];
    if common::kubernetes_pinned() {
        let kube = &on_disk["kubernetes"];
        assert_eq!(kube["missing"], serde_json::json!([]), "{kube}");
        let names: Vec<&str> = kube["binaries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["kubelet", "kubectl"], "{kube}");
    } else {
        assert_eq!(
            on_disk["kubernetes"],
            serde_json::json!({"version": "v1.34.2", "binaries": [], "missing": missing})
        );
        assert!(
            b.manifest
                .warnings
                .iter()
                .any(|w| w.contains(&format!("carry none of {} at v1.34.2", missing.join(", ")))),
            "{:?}",
            b.manifest.warnings
        );
    }
    let listed: BTreeMap<String, String> = on_disk["artifacts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["path"].as_str().unwrap().to_string(),
                a["sha256"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let (hidden, mut files): (Vec<String>, Vec<String>) = common::walk(&b.out)
        .into_iter()
        .map(|p| p.to_string_lossy().into_owned())
        .filter(|p| p != "manifest.json")
        .partition(|p| p.split('/').any(|c| c.starts_with('.')));
    files.sort();
    assert_eq!(listed.keys().cloned().collect::<Vec<_>>(), files);
    // Not artifacts: the output's lock and what the next build reuses from.
    assert_eq!(
        hidden,
        [
            ".slipway/roles/control-plane.uki",
            ".slipway/roles/worker.uki",
            ".slipway/state.json",
            ".slipway.lock",
        ]
    );
    for p in ["nodes/master2/config.ign", "images/worker.spdx.json"] {
        let o = check(Command::new("sha256sum").arg(b.out.join(p)));
        assert_eq!(
            stdout(&o).split_whitespace().next().unwrap(),
            listed[p],
            "{p}"
        );
    }
    for (p, mode) in [
        ("images/control-plane.raw", 0o644),
        ("images/control-plane.qcow2", 0o644),
        ("nodes/master1/disk.raw", 0o600),
        ("nodes/worker1/config.ign", 0o600),
    ] {
        let m = std::fs::metadata(b.out.join(p))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(m, mode, "{p}");
    }
    // The role images carry no secret: no private key on their ESP or in their root.
    for role in ["control-plane", "worker"] {
        let raw = std::fs::read(b.out.join(format!("images/{role}.raw"))).unwrap();
        assert!(
            !raw.windows(11).any(|w| w == b"PRIVATE KEY"),
            "{role}.raw holds a private key"
        );
    }
}

#[test]
fn same_inputs_same_bytes_and_a_node_change_touches_only_its_esp() {
    let b = built();
    // Same inputs, same secrets: every artifact identical.
    let tmp = tempfile::tempdir().unwrap();
    let again = tmp.path().join("again");
    let m2 = common::build(&b.cluster, &b.secrets, &again, true);
    assert_eq!(
        b.manifest.artifacts, m2.artifacts,
        "two builds of the same inputs differ"
    );
    assert!(m2.report.roles_reused.is_empty() && m2.report.nodes_reused.is_empty());

    // The same build again into the same directory: everything kept, no disk written,
    // the same manifest; the kept files are the same files (their status unchanged).
    let status = |p: &str| {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(again.join(p)).unwrap();
        (m.ino(), m.mtime(), m.mtime_nsec())
    };
    let kept = ["images/control-plane.raw", "nodes/master1/disk.raw"].map(status);
    let m2b = common::build(&b.cluster, &b.secrets, &again, true);
    assert_eq!(m2b.report.roles_reused, ["control-plane", "worker"]);
    assert_eq!(
        m2b.report.nodes_reused,
        ["master1", "master2", "master3", "worker1"]
    );
    assert_eq!(m2b.report.disk_bytes_written, 0, "{:?}", m2b.report);
    assert_eq!(m2b.artifacts, m2.artifacts);
    assert_eq!(
        ["images/control-plane.raw", "nodes/master1/disk.raw"].map(status),
        kept
    );

    // master2 moves to another MAC: only master2's config and ESP change.
    let text = std::fs::read_to_string(&b.cluster).unwrap();
    let from = "52:54:00:00:00:12";
    assert!(text.contains(from));
    let changed = tmp.path().join("changed.toml");
    std::fs::write(&changed, text.replacen(from, "52:54:00:00:00:99", 1)).unwrap();
    let out3 = tmp.path().join("changed");
    let m3 = common::build(&changed, &b.secrets, &out3, true);
    let before: BTreeMap<&str, &str> = b
        .manifest
        .artifacts
        .iter()
        .map(|a| (a.path.as_str(), a.sha256.as_str()))
        .collect();
    let differing: Vec<&str> = m3
        .artifacts
        .iter()
        .filter(|a| before.get(a.path.as_str()) != Some(&a.sha256.as_str()))
        .map(|a| a.path.as_str())
        .collect();
    // Besides master2's own files, only what names it by MAC: its iPXE script (under the
    // new MAC; the old one is gone) and the MAC table.
    assert!(
        differing.iter().all(|p| p.starts_with("nodes/master2/")
            || *p == "pxe/macs.json"
            || *p == "pxe/nodes/52-54-00-00-00-99.ipxe"),
        "a change to master2 changed {differing:?}"
    );
    assert!(!out3.join("pxe/nodes/52-54-00-00-00-12.ipxe").exists());
    assert!(out3.join("pxe/nodes/52-54-00-00-00-99.ipxe").exists());
    assert!(
        differing.contains(&"nodes/master2/disk.raw"),
        "{differing:?}"
    );
    assert!(differing.contains(&"nodes/master2/config.ign"));

    // The same change as a rebuild of `again`: the role images and the other nodes'
    // disks kept, master2's disk made from its role's and patched, and every file, byte
    // for byte (OpenSSL's SHA-256), what the build from scratch wrote.
    let m3b = common::build(&changed, &b.secrets, &again, true);
    assert_eq!(m3b.report.roles_reused, ["control-plane", "worker"]);
    assert_eq!(m3b.report.nodes_reused, ["master1", "master3", "worker1"]);
    assert_eq!(m3b.artifacts, m3.artifacts);
    assert_eq!(common::sha256s(&again), common::sha256s(&out3));
    assert!(!again.join("pxe/nodes/52-54-00-00-00-12.ipxe").exists());

    // Inside master2's disk: the ESP and the partition tables differ, the root and hash
    // partitions are byte-identical.
    let old = b.out.join("nodes/master2/disk.raw");
    let new = out3.join("nodes/master2/disk.raw");
    let (po, pn) = (sfdisk_parts(&old), sfdisk_parts(&new));
    for name in ["root-a", "root-a-verity", "root-b", "root-b-verity"] {
        let (a, c) = (part(&po, name), part(&pn, name));
        assert_eq!((a.start, a.size), (c.start, c.size));
        assert!(
            read_range(&old, a.start, a.size) == read_range(&new, c.start, c.size),
            "{name} changed"
        );
    }
    let (a, c) = (part(&po, "esp"), part(&pn, "esp"));
    assert!(read_range(&old, a.start, a.size) != read_range(&new, c.start, c.size));
    // The rebuilt disk is as sparse as the one built from scratch: its holes kept.
    let blocks = |p: &Path| {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(p).unwrap().blocks()
    };
    let (patched, scratch) = (blocks(&again.join("nodes/master2/disk.raw")), blocks(&new));
    assert!(
        patched <= scratch + 2048,
        "the patched disk takes {patched} blocks, the one from scratch {scratch}"
    );
}

#[test]
fn a_dynamic_or_missing_init_is_refused_and_the_output_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    std::fs::create_dir_all(out.join("images")).unwrap();
    std::fs::write(out.join("images/control-plane.raw"), b"previous").unwrap();
    for (init, want) in [
        (PathBuf::from("/bin/true"), "dynamically linked"),
        (tmp.path().join("nope"), "make init"),
    ] {
        let opts = slipway::build::BuildOptions {
            init: init.clone(),
            ..common::build_options(common::offline_options(), &tmp.path().join("secrets"))
        };
        let e = slipway::build::build(&common::example(), &opts, &out).unwrap_err();
        let msg = format!("{e:#}");
        assert!(
            msg.contains(&init.display().to_string()) && msg.contains(want),
            "{msg}"
        );
        assert_eq!(
            std::fs::read(out.join("images/control-plane.raw")).unwrap(),
            b"previous"
        );
    }
}

#[test]
fn the_cli_prints_a_json_manifest_and_keeps_progress_off_stdout() {
    let tmp = tempfile::tempdir().unwrap();
    let cluster = tmp.path().join("cluster.toml");
    std::fs::copy(common::example(), &cluster).unwrap();
    let out = tmp.path().join("out");
    let o = check(
        Command::new(env!("CARGO_BIN_EXE_slipway"))
            .arg("--json")
            .arg("build")
            .arg(&cluster)
            .arg("--out")
            .arg(&out)
            .arg("--no-qcow2")
            .arg("--kube-artifacts")
            .arg(common::no_release())
            .arg("--mirror")
            .arg("http://127.0.0.1:9")
            .arg("--cache")
            .arg(common::fixture("SLIPWAY_TEST_CACHE"))
            .arg("--lock")
            .arg(common::fixture("SLIPWAY_TEST_LOCK"))
            .arg("--init")
            .arg(common::init_binary())
            .env("SOURCE_DATE_EPOCH", "1764000000"),
    );
    let v: serde_json::Value = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", stdout(&o)));
    let paths: Vec<&str> = v["artifacts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["path"].as_str().unwrap())
        .collect();
    assert!(paths.contains(&"images/control-plane.raw"));
    assert!(paths.contains(&"nodes/worker1/disk.raw"));
    assert!(!paths.iter().any(|p| p.ends_with(".qcow2")), "--no-qcow2");
    assert_eq!(v["roles"].as_array().unwrap().len(), 2);
    // Same inputs through the CLI and the library: the same root hash.
    assert_eq!(
        v["roles"][0]["root_hash"].as_str().unwrap(),
        built().manifest.roles[0].root_hash
    );
}

#[test]
fn iso_refuses_an_unknown_node_and_a_missing_build() {
    let b = built();
    let opts = |node: &str, out: &Path| slipway::iso::IsoOptions {
        cluster: b.cluster.clone(),
        out_dir: out.to_owned(),
        node: node.into(),
        iso: None,
        source_date_epoch: 0,
    };
    let e = slipway::iso::write(&opts("master9", &b.out))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("no node master9") && e.contains("master1, master2, master3, worker1"),
        "{e}"
    );
    let empty = tempfile::tempdir().unwrap();
    let e = slipway::iso::write(&opts("master1", empty.path()))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("manifest.json") && e.contains("run `slipway build`"),
        "{e}"
    );
    assert!(!empty.path().join("nodes/master1/install.iso").exists());
}

/// A cluster whose etcd image no control-plane profile bakes is refused: its nodes would
/// have to pull etcd on first boot. Nothing of the previous output is touched.
#[test]
fn an_etcd_image_the_profile_does_not_bake_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(common::example()).unwrap().replace(
        "kubernetes_version = \"v1.34.2\"",
        "kubernetes_version = \"v1.34.2\"\netcd_image = \"registry.k8s.io/etcd:3.5.21-0\"",
    );
    let cluster = tmp.path().join("cluster.toml");
    std::fs::write(&cluster, text).unwrap();
    let out = tmp.path().join("out");
    std::fs::create_dir_all(out.join("images")).unwrap();
    std::fs::write(out.join("images/control-plane.raw"), b"previous").unwrap();
    let opts = common::build_options(common::offline_options(), &tmp.path().join("secrets"));
    let e = format!(
        "{:#}",
        slipway::build::build(&cluster, &opts, &out).unwrap_err()
    );
    assert!(
        e.contains("control-plane")
            && e.contains("registry.k8s.io/etcd:3.5.21-0 (cluster.etcd_image)")
            && e.contains("[[images]]"),
        "{e}"
    );
    assert_eq!(
        std::fs::read(out.join("images/control-plane.raw")).unwrap(),
        b"previous"
    );
}

/// An XFS filesystem (reflink on) in a sparse file, loop-mounted for the test and
/// unmounted when dropped.
struct Xfs {
    /// Holds the image file; removed after the unmount (fields drop after `drop`).
    _dir: tempfile::TempDir,
    mnt: PathBuf,
}

impl Xfs {
    fn new() -> Option<Xfs> {
        if stdout(&check(Command::new("id").arg("-u"))).trim() != "0" {
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("xfs.img");
        std::fs::File::create(&img)
            .unwrap()
            .set_len(12 << 30)
            .unwrap();
        check(
            Command::new("mkfs.xfs")
                .args(["-q", "-m", "reflink=1"])
                .arg(&img),
        );
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        check(
            Command::new("mount")
                .args(["-o", "loop"])
                .arg(&img)
                .arg(&mnt),
        );
        Some(Xfs { _dir: dir, mnt })
    }
}

impl Drop for Xfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.mnt).status();
    }
}

#[test]
fn on_a_filesystem_that_shares_extents_node_disks_are_clones() {
    let b = built();
    let Some(xfs) = Xfs::new() else {
        eprintln!(
            "build: SKIPPED: node disks as clones (FICLONE) need an XFS loop mount, and this test runs without root"
        );
        return;
    };
    // A build from scratch on XFS: every node disk a clone of its role disk with its own
    // tables and ESP written over; the same bytes as the build on this checkout's
    // filesystem.
    let out = xfs.mnt.join("out");
    let m = common::build(&b.cluster, &b.secrets, &out, true);
    assert_eq!(
        m.report.nodes_cloned,
        ["master1", "master2", "master3", "worker1"]
    );
    assert_eq!(m.artifacts, b.manifest.artifacts);
    assert_eq!(common::sha256s(&out), common::sha256s(&b.out));
    // A config change for the control plane (etcd's snapshot retention): its three
    // disks made again, as clones, writing no more than their tables and ESPs.
    let text = std::fs::read_to_string(&b.cluster).unwrap();
    let changed = xfs.mnt.join("changed.toml");
    let retention = regex_lite::Regex::new(r"(?m)^snapshot_retention = \d+")
        .unwrap()
        .replace(&text, "snapshot_retention = 5")
        .into_owned();
    assert_ne!(retention, text);
    std::fs::write(&changed, retention).unwrap();
    let m2 = common::build(&changed, &b.secrets, &out, true);
    assert_eq!(m2.report.roles_reused, ["control-plane", "worker"]);
    assert_eq!(m2.report.nodes_reused, ["worker1"]);
    assert_eq!(m2.report.nodes_cloned, ["master1", "master2", "master3"]);
    let esp = m2.roles.iter().map(|r| r.esp_size).max().unwrap();
    assert!(
        m2.report.disk_bytes_written < 3 * esp,
        "{} bytes written for three ESPs of {esp}",
        m2.report.disk_bytes_written
    );
    eprintln!(
        "build on XFS: from scratch {:.1} s, after a config change {:.1} s ({} MiB of disks written)",
        m.report.seconds,
        m2.report.seconds,
        m2.report.disk_bytes_written >> 20
    );
}
