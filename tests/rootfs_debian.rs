//! The real thing: the control-plane root filesystem of Debian 13 packages, built from
//! the lock and cache that `make test-fixtures` prepared (the only step that talks to the
//! Debian mirror). The tests themselves are offline: the mirror they are given is a
//! closed loopback port, so a missing package fails instead of reaching out.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{check, stdout};
use sha2::{Digest, Sha256};
use slipway::rootfs::{self, Options};

const SDE: u64 = 1_764_000_000;

fn opts() -> Options {
    common::offline_options()
}

fn build(dir: &Path, name: &str) -> (PathBuf, String) {
    let r = rootfs::build("control-plane", &opts()).unwrap();
    let tar = dir.join(format!("{name}.tar"));
    let sha = rootfs::write_outputs(&r, &tar, SDE).unwrap();
    (tar, sha)
}

fn extract(tar: &Path, into: &Path) {
    std::fs::create_dir_all(into).unwrap();
    check(
        Command::new("tar")
            .args(["--numeric-owner", "-xpf"])
            .arg(tar)
            .arg("-C")
            .arg(into),
    );
}

fn chroot(root: &Path, cmd: &[&str]) -> String {
    let o = check(
        Command::new("chroot")
            .arg(root)
            .args(cmd)
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
    );
    format!("{}{}", stdout(&o), String::from_utf8_lossy(&o.stderr))
}

#[test]
fn control_plane_rootfs_runs_its_tools_and_is_reproducible() {
    let work = tempfile::tempdir().unwrap();
    let (tar, sha_a) = build(work.path(), "a");
    let (_, sha_b) = build(work.path(), "b");
    assert_eq!(
        sha_a, sha_b,
        "two builds with the same lock and SOURCE_DATE_EPOCH differ"
    );

    let root = work.path().join("root");
    extract(&tar, &root);
    assert!(chroot(&root, &["haproxy", "-v"]).contains("HAProxy version 3."));
    assert!(chroot(&root, &["keepalived", "-v"]).contains("Keepalived v2."));
    assert!(chroot(&root, &["containerd", "--version"]).contains("containerd"));
    assert!(chroot(&root, &["runc", "--version"]).contains("runc version"));
    assert!(chroot(&root, &["systemctl", "--version"]).contains("systemd 257"));
    assert!(
        chroot(&root, &["iptables", "--version"]).contains("(nf_tables)"),
        "iptables through its alternative"
    );
    assert!(chroot(&root, &["etcdctl", "version"]).contains("etcdctl version: 3.5"));
    let dpkg = chroot(&root, &["dpkg", "-l"]);
    let installed = dpkg.lines().filter(|l| l.starts_with("ii ")).count();
    let r = rootfs::build("control-plane", &opts()).unwrap();
    assert_eq!(
        installed,
        r.locked.packages.len(),
        "dpkg -l lists every package"
    );
    assert_eq!(
        chroot(&root, &["dpkg", "--audit"]).trim(),
        "",
        "dpkg --audit is clean"
    );
    // Every system user and group the packages need.
    for user in [
        "root",
        "daemon",
        "nobody",
        "_apt",
        "systemd-network",
        "systemd-timesync",
        "messagebus",
        "sshd",
        "haproxy",
    ] {
        let line = chroot(&root, &["getent", "passwd", user]);
        assert!(line.starts_with(&format!("{user}:x:")), "{user}: {line}");
    }
    for group in [
        "shadow",
        "systemd-journal",
        "_ssh",
        "messagebus",
        "input",
        "kvm",
        "render",
        "haproxy",
        "sudo",
    ] {
        let line = chroot(&root, &["getent", "group", group]);
        assert!(line.starts_with(&format!("{group}:x:")), "{group}: {line}");
    }
    // Declarative results of maintainer scripts.
    let helper =
        std::fs::metadata(root.join("usr/lib/dbus-1.0/dbus-daemon-launch-helper")).unwrap();
    assert_eq!(helper.permissions().mode() & 0o7777, 0o4754);
    let mb: u32 = chroot(&root, &["getent", "group", "messagebus"])
        .split(':')
        .nth(2)
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(helper.gid(), mb);
    assert_eq!(std::fs::read(root.join("etc/machine-id")).unwrap(), b"");
    let os = std::fs::read_to_string(root.join("usr/lib/os-release")).unwrap();
    assert!(
        os.contains("IMAGE_ID=slipway-control-plane") && os.contains("IMAGE_VERSION="),
        "{os}"
    );
    assert!(os.contains("VERSION_CODENAME=trixie"), "{os}");
    let bundle = std::fs::read_to_string(root.join("etc/ssl/certs/ca-certificates.crt")).unwrap();
    assert!(bundle.matches("BEGIN CERTIFICATE").count() > 100);
    for unit in [
        "multi-user.target.wants/haproxy.service",
        "multi-user.target.wants/keepalived.service",
        "multi-user.target.wants/containerd.service",
        "sshd.service",
    ] {
        assert!(
            root.join("etc/systemd/system")
                .join(unit)
                .symlink_metadata()
                .is_ok(),
            "{unit} not enabled"
        );
    }
    assert!(
        !root.join("etc/ssh/ssh_host_ed25519_key").exists(),
        "host keys belong to each node, not the image"
    );
    // SBOM beside the tar.
    let sbom: serde_json::Value =
        serde_json::from_slice(&std::fs::read(work.path().join("a.spdx.json")).unwrap()).unwrap();
    assert_eq!(sbom["packages"].as_array().unwrap().len(), installed);
}

/// One path's observable state. Owners are compared by name: dynamic IDs are numbered
/// in a different order (see docs/rootfs.md), the accounts are the same.
#[derive(Debug, PartialEq, Eq, Clone)]
struct Node {
    kind: char,
    mode: u32,
    owner: String,
    group: String,
    detail: String,
}

fn id_names(file: &Path) -> BTreeMap<u32, String> {
    std::fs::read_to_string(file)
        .unwrap()
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            Some((f.get(2)?.parse().ok()?, f[0].to_string()))
        })
        .collect()
}

fn scan(root: &Path) -> BTreeMap<String, Node> {
    let users = id_names(&root.join("etc/passwd"));
    let groups = id_names(&root.join("etc/group"));
    let name =
        |m: &BTreeMap<u32, String>, id: u32| m.get(&id).cloned().unwrap_or_else(|| id.to_string());
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            let m = p.symlink_metadata().unwrap();
            let ft = m.file_type();
            let (kind, detail) = if ft.is_symlink() {
                (
                    'l',
                    std::fs::read_link(&p)
                        .unwrap()
                        .to_string_lossy()
                        .into_owned(),
                )
            } else if ft.is_dir() {
                stack.push(p.clone());
                ('d', String::new())
            } else if ft.is_file() {
                ('f', hex::encode(Sha256::digest(std::fs::read(&p).unwrap())))
            } else {
                ('o', String::new())
            };
            out.insert(
                rel,
                Node {
                    kind,
                    mode: m.mode() & 0o7777,
                    owner: name(&users, m.uid()),
                    group: name(&groups, m.gid()),
                    detail,
                },
            );
        }
    }
    out
}

/// Paths where our tree and mmdebstrap's may differ, each with the reason (the same
/// table is in docs/rootfs.md). Everything else must be identical: type, mode, owner,
/// link target and content.
const EXPLAINED: &[(&str, &str)] = &[
    (
        "^dev(/|$)",
        "mmdebstrap creates device nodes; an image gets /dev from devtmpfs",
    ),
    (
        "^etc/(apt/sources.list|fstab|hostname|resolv.conf)$",
        "mmdebstrap's own setup, copied from the build host; nodes get these from their config",
    ),
    (
        "^etc/ssh/ssh_host_",
        "host keys are generated by openssh-server's postinst; each node must make its own",
    ),
    (
        "^etc/(passwd|group|shadow|gshadow|subuid|subgid)-?$",
        "account files: same accounts, dynamic IDs allocated in file-name order instead of configure order; shadow's last-change day is SOURCE_DATE_EPOCH's; no '-' backups",
    ),
    ("^etc/\\.pwd\\.lock$", "lock file left by the shadow tools"),
    (
        "^etc/machine-id$",
        "both empty; mmdebstrap's is created by systemd's postinst",
    ),
    (
        "^etc/ssl/certs/",
        "update-ca-certificates' per-certificate links and OpenSSL hash links are not made; the bundle is",
    ),
    (
        "^etc/ca-certificates\\.conf$",
        "written from the certificate list without debconf's header",
    ),
    (
        "^etc/rc[0-6S]\\.d(/|$)",
        "SysV runlevel links from update-rc.d; systemd ignores them",
    ),
    (
        "^etc/systemd/(system|user)/",
        "units enabled: only those a node needs (no apt-daily, dpkg-db-backup, e2scrub, fstrim, ssh-agent); links point into /usr/lib",
    ),
    (
        "^var/lib/systemd/deb-systemd-(user-)?helper-",
        "deb-systemd-helper's state; enablement is done declaratively",
    ),
    (
        "^var/lib/dpkg/",
        "dpkg's database: same packages; no -old backups, triggers state, diversions or lock files; alternatives database written in our order",
    ),
    (
        "^var/cache/(apt|debconf|ldconfig)(/|$)",
        "caches of apt, debconf and ldconfig, regenerated on use",
    ),
    (
        "^var/lib/(apt|ucf|pam|shells\\.state|wtmpdb)(/|$)",
        "bookkeeping of apt, ucf, pam-auth-update, add-shell, wtmpdb",
    ),
    ("^var/log(/|$)", "logs of the build"),
    (
        "^etc/ld\\.so\\.cache$",
        "ldconfig cache: not needed, the multiarch library paths are built into Debian's ld.so",
    ),
    (
        "^usr/lib/udev/hwdb\\.bin$",
        "hwdb compiled by the build host's systemd-hwdb (the version in its header is the host's), mmdebstrap's by the image's",
    ),
    (
        "^var/lib/systemd/catalog(/database)?$",
        "journal catalog, rebuilt by journalctl --update-catalog when wanted",
    ),
    (
        "^(boot|usr/lib/modules/[^/]+)/(initrd\\.img|modules\\.)",
        "initramfs and depmod output: built by `slipway build` (issue 4), not by the rootfs step",
    ),
    (
        "^(vmlinuz|initrd\\.img)(\\.old)?$",
        "kernel symlinks at / made by the kernel's postinst; the image boots a UKI",
    ),
    (
        "^etc/initramfs-tools(/|$)",
        "initramfs-tools configuration generated on install; Slipway builds its own initramfs",
    ),
    (
        "^etc/(hosts|networks|hosts\\.(allow|deny)|modules|security/opasswd)$",
        "defaults postinst writes and a node does not need from the image: /etc/hosts comes from the node config; tcp-wrappers, /etc/modules and networks are unused",
    ),
    (
        "^etc/(default/locale|vconsole\\.conf|profile|motd|dpkg/origins/default)$",
        "created by tmpfiles or base-files' postinst",
    ),
    (
        "^root/\\.(profile|bashrc|ssh)$|^root(/|$)",
        "root's dotfiles from base-files' postinst",
    ),
    (
        "^etc/(opt|credstore(\\.encrypted)?)$|^var/(opt|mail|spool/mail)$|^usr/local(/|$)|^usr/share/info/dir$",
        "directories base-files' postinst or tmpfiles make",
    ),
    (
        "^var/lib/(private|systemd/(coredump|ephemeral-trees|network|pstore|linger))$|^var/cache/private$",
        "made by systemd-tmpfiles at boot",
    ),
    (
        "^etc/pam\\.d/common-",
        "pam-auth-update output; same modules, our comments",
    ),
    (
        "^etc/alternatives/",
        "update-alternatives links: same targets; man-page slaves only where present",
    ),
    ("^usr/lib/os-release$", "IMAGE_ID and IMAGE_VERSION added"),
    (
        "^usr/lib/(slipway(/|$)|systemd/system/slipway-)",
        "Slipway's own unit and script (overlays/rootfs): baked container images into containerd",
    ),
    (
        "^usr/lib/systemd/(system\\.conf\\.d|system/systemd-networkd-wait-online\\.service\\.d)(/|$)",
        "Slipway's start timeouts for slow machines (overlays/rootfs)",
    ),
    (
        "^(usr/lib/systemd/system/sshd-keygen\\.service\\.d|etc/ssh/sshd_config\\.d/05-host-keys\\.conf$)",
        "Slipway's host keys: Ed25519 and ECDSA made at first boot, no RSA (overlays/rootfs)",
    ),
    (
        "^usr/lib/systemd/system-preset/99-slipway\\.preset$",
        "Slipway's first-boot preset policy: nothing enabled that the image, systemd's presets or the node's config do not name (overlays/rootfs)",
    ),
    (
        "^usr/share/(man|doc)(/|$)",
        "documentation symlinks of alternatives",
    ),
];

#[test]
fn matches_mmdebstrap_apart_from_explained_paths() {
    let work = tempfile::tempdir().unwrap();
    let o = opts();
    let r = rootfs::build("control-plane", &o).unwrap();
    let tar = work.path().join("ours.tar");
    rootfs::write_outputs(&r, &tar, SDE).unwrap();
    let ours_dir = work.path().join("ours");
    extract(&tar, &ours_dir);

    // A repository of exactly the locked packages, on the local disk.
    let repo = work.path().join("repo");
    slipway::debian::localrepo::write(&repo, "trixie", "amd64", &r.locked.packages, &o.cache)
        .unwrap();
    let theirs_dir = work.path().join("theirs");
    // The same profile packages and the same Priority: required set; Recommends off, as
    // both tools do by default.
    let includes = r.profile.packages.join(",");
    let t = std::time::Instant::now();
    check(
        Command::new("mmdebstrap")
            .args(["--quiet", "--mode=root", "--variant=required"])
            .arg(format!("--include={includes}"))
            .args(["trixie"])
            .arg(&theirs_dir)
            .arg(format!(
                "deb [trusted=yes] copy://{} trixie main",
                repo.display()
            )),
    );
    let installed = stdout(&check(Command::new("chroot").arg(&theirs_dir).args([
        "dpkg-query",
        "-W",
        "-f",
        "${Package}\\n",
    ])));
    let mut theirs_pkgs: Vec<&str> = installed.lines().collect();
    theirs_pkgs.sort();
    let ours_pkgs: Vec<&str> = r.locked.packages.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(
        ours_pkgs, theirs_pkgs,
        "apt (through mmdebstrap) and slipway chose different package sets"
    );
    eprintln!("mmdebstrap took {:.1} s", t.elapsed().as_secs_f64());

    // Every account the maintainer scripts made exists here too, by name.
    for f in ["etc/passwd", "etc/group"] {
        let names = |root: &Path| -> Vec<String> {
            let mut v: Vec<String> = id_names(&root.join(f)).into_values().collect();
            v.sort();
            v
        };
        assert_eq!(
            names(&ours_dir),
            names(&theirs_dir),
            "{f}: account names differ"
        );
    }
    let ours = scan(&ours_dir);
    let theirs = scan(&theirs_dir);
    let explained: Vec<(regex_lite::Regex, &str)> = EXPLAINED
        .iter()
        .map(|(re, why)| (regex_lite::Regex::new(re).unwrap(), *why))
        .collect();
    let mut unexplained = Vec::new();
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    let mut examples: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    let paths: std::collections::BTreeSet<&String> = ours.keys().chain(theirs.keys()).collect();
    for p in paths {
        let (a, b) = (ours.get(p), theirs.get(p));
        if a == b {
            continue;
        }
        match explained.iter().find(|(re, _)| re.is_match(p)) {
            Some((_, why)) => {
                *counts.entry(why).or_default() += 1;
                let ex = examples.entry(why).or_default();
                if ex.len() < 4 {
                    ex.push(format!(
                        "{p} [{}|{}]",
                        a.map_or("-".into(), |n| format!("{}{:o}", n.kind, n.mode)),
                        b.map_or("-".into(), |n| format!("{}{:o}", n.kind, n.mode))
                    ));
                }
            }
            None => unexplained.push(format!("{p}: ours {a:?} theirs {b:?}")),
        }
    }
    for (why, n) in &counts {
        eprintln!("{n:>5}  {why}\n         e.g. {}", examples[why].join(", "));
    }
    // Every explanation is still needed, so the table (and docs/rootfs.md) stays true.
    let unused: Vec<&str> = EXPLAINED
        .iter()
        .map(|(_, why)| *why)
        .filter(|why| !counts.contains_key(why))
        .collect();
    assert!(
        unused.is_empty(),
        "explanations no path needs any more: {unused:#?}"
    );
    assert!(
        unexplained.is_empty(),
        "{} paths differ from mmdebstrap without an explanation in docs/rootfs.md:\n{}",
        unexplained.len(),
        unexplained.join("\n")
    );
}
