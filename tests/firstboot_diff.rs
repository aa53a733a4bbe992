//! Differential test of first boot: the same Ignition configs applied by slipway-init
//! (`slipway-init apply-ignition`, the code PID 1 runs) and by the real Ignition (Debian's
//! `ignition` package, its `files` stage with `-root`) into two scratch roots holding the
//! image's own /etc, must give the same paths, contents, modes, owners, link targets and
//! unit enablement. The differences that remain are listed in EXPLAINED, with why; the
//! test also fails when an explanation is no longer needed.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

use slipway::fs::Kind;

const IGNITION: &str = "/usr/lib/dracut/modules.d/30ignition/ignition";

/// (path regex, why it differs)
const EXPLAINED: &[(&str, &str)] = &[
    (
        "^etc/\\.ignition-result\\.json$",
        "Ignition's record of its own run",
    ),
    (
        "^etc/(passwd|group|shadow|gshadow|subuid|subgid)-$",
        "backups useradd writes beside the databases",
    ),
    (
        "^home/[^/]+/\\.ssh/authorized_keys(\\.d|\\.d/ignition)?$",
        "Ignition writes keys to ~/.ssh/authorized_keys.d/ignition, which only sshd set up with \
         ssh-key-dir reads; slipway-init writes ~/.ssh/authorized_keys, which Debian's sshd reads",
    ),
    (
        "^etc/shadow$",
        "useradd fills the password-ageing fields with today's date and login.defs' limits; \
         slipway-init leaves them empty (no ageing). Names and hashes are compared below",
    ),
    ("^etc/\\.pwd\\.lock$", "the lock file useradd leaves behind"),
    (
        "^etc/systemd/system-preset/20-ignition\\.preset$",
        "Ignition writes the preset lines in an order of its own; the lines are compared as a set below",
    ),
    (
        "^etc/(subuid|subgid)$",
        "useradd allocates subordinate ids for rootless containers; slipway-init does not",
    ),
];

#[derive(Debug, PartialEq, Eq, Clone)]
struct Node {
    kind: String,
    mode: u32,
    uid: u32,
    gid: u32,
    data: Vec<u8>,
}

fn snapshot(root: &Path) -> BTreeMap<String, Node> {
    common::walk_all(root)
        .into_iter()
        .map(|rel| {
            let p = root.join(&rel);
            let m = std::fs::symlink_metadata(&p).unwrap();
            let (kind, data) = if m.file_type().is_symlink() {
                (
                    "link",
                    std::fs::read_link(&p)
                        .unwrap()
                        .to_string_lossy()
                        .into_owned()
                        .into_bytes(),
                )
            } else if m.is_dir() {
                ("dir", Vec::new())
            } else {
                ("file", std::fs::read(&p).unwrap())
            };
            (
                rel.to_string_lossy().into_owned(),
                Node {
                    kind: kind.into(),
                    mode: m.mode() & 0o7777,
                    uid: m.uid(),
                    gid: m.gid(),
                    data,
                },
            )
        })
        .collect()
}

/// One side of a difference, for the failure message.
fn describe(n: Option<&Node>) -> String {
    match n {
        None => "absent".into(),
        Some(n) => format!(
            "{} {:o} {}:{} {} bytes",
            n.kind,
            n.mode,
            n.uid,
            n.gid,
            n.data.len()
        ),
    }
}

/// A scratch root with the image's /etc (files, links, modes, owners).
fn scratch(tree: &slipway::fs::Tree, dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir.join("etc")).unwrap();
    for (path, e) in tree.iter().filter(|(p, _)| p.starts_with("etc/")) {
        let p = dir.join(path);
        match &e.kind {
            Kind::Dir => std::fs::create_dir_all(&p).unwrap(),
            Kind::File(b) => {
                std::fs::create_dir_all(p.parent().unwrap()).unwrap();
                std::fs::write(&p, b.as_slice()).unwrap();
            }
            Kind::Symlink(t) => {
                std::fs::create_dir_all(p.parent().unwrap()).unwrap();
                std::os::unix::fs::symlink(t, &p).unwrap();
                continue;
            }
            Kind::Hardlink(_) => continue,
        }
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(e.mode)).unwrap();
        std::os::unix::fs::lchown(&p, Some(e.uid), Some(e.gid)).unwrap();
    }
    // Ignition relabels for SELinux at the end of its files stage unless told it is off.
    std::fs::create_dir_all(dir.join("etc/selinux")).unwrap();
    std::fs::write(
        dir.join("etc/selinux/config"),
        "SELINUX=disabled\nSELINUXTYPE=default\n",
    )
    .unwrap();
    std::fs::create_dir_all(dir.join("home")).unwrap();
}

fn real_ignition(config: &Path, root: &Path, work: &Path) {
    // Debian builds Ignition to relabel for SELinux as its last step; the image has no
    // SELinux, so `setfiles` is a no-op here (everything is written by then).
    let bin = work.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let setfiles = bin.join("setfiles");
    std::fs::write(&setfiles, "#!/bin/sh\ncat >/dev/null\nexit 0\n").unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&setfiles, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    for stage in ["fetch-offline", "files"] {
        common::check(
            Command::new(IGNITION)
                .env("IGNITION_CONFIG_FILE", config)
                .env("PATH", &path)
                .args(["-platform", "file", "-stage", stage, "-log-to-stdout"])
                .arg("-root")
                .arg(root)
                .arg("-config-cache")
                .arg(work.join("cache.json"))
                .arg("-state-file")
                .arg(work.join("state"))
                .arg("-neednet")
                .arg(work.join("neednet")),
        );
    }
}

fn shadow_names_and_hashes(root: &Path) -> BTreeSet<(String, String)> {
    std::fs::read_to_string(root.join("etc/shadow"))
        .unwrap()
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f[0].to_string(), f[1].to_string())
        })
        .collect()
}

fn keys(root: &Path, user: &str) -> Vec<String> {
    let ours = root.join(format!("home/{user}/.ssh/authorized_keys"));
    let theirs = root.join(format!("home/{user}/.ssh/authorized_keys.d/ignition"));
    let text = std::fs::read_to_string(&ours)
        .or_else(|_| std::fs::read_to_string(&theirs))
        .unwrap_or_default();
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(str::to_string)
        .collect()
}

#[test]
fn slipway_init_and_ignition_agree() {
    let r = slipway::rootfs::build("control-plane", &common::offline_options()).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    // The rendered master1 config, and one that exercises what it does not.
    let (_guard, out, _) = common::render(&common::example());
    let rendered = out.join("nodes/master1/config.ign");
    let synthetic = tmp.path().join("synthetic.ign");
    std::fs::write(
        &synthetic,
        r#"{"ignition":{"version":"3.3.0"},
          "passwd":{
            "groups":[{"name":"ops","gid":2000}],
            "users":[{"name":"alice","uid":1500,"gecos":"Alice","groups":["ops","sudo"],
                      "passwordHash":"$y$j9T$abc$def","shell":"/bin/bash",
                      "sshAuthorizedKeys":["ssh-ed25519 AAAAC3 alice@x"]},
                     {"name":"svc","noCreateHome":true}]},
          "storage":{
            "directories":[{"path":"/var/lib/thing","mode":488,"user":{"name":"alice"},"group":{"name":"ops"}}],
            "files":[
              {"path":"/etc/thing/a.conf","mode":416,"user":{"id":1500},"group":{"id":2000},
               "contents":{"source":"data:;base64,aGVsbG8K"}},
              {"path":"/etc/thing/b.conf","contents":{"source":"data:,percent%20encoded%0A"}},
              {"path":"/etc/thing/c.gz","contents":{"compression":"gzip","source":"data:;base64,H4sIAAAAAAAAA8tIzcnJBwCGphA2BQAAAA=="}},
              {"path":"/etc/hostname","overwrite":true,"contents":{"source":"data:,node%0A"}}],
            "links":[{"path":"/etc/thing/link","target":"/etc/thing/a.conf"},
                     {"path":"/etc/thing/hard","target":"/etc/thing/b.conf","hard":true}]},
          "systemd":{"units":[
            {"name":"thing.service","enabled":true,"contents":"[Unit]\nDescription=t\n[Service]\nExecStart=/bin/true\n[Install]\nWantedBy=multi-user.target\n"},
            {"name":"other.service","enabled":false,"dropins":[{"name":"10-x.conf","contents":"[Service]\nNice=5\n"}]},
            {"name":"masked.service","mask":true}]}}"#,
    )
    .unwrap();
    let init = common::init_binary();
    let mut used = BTreeSet::new();
    for (name, config) in [("rendered", rendered), ("synthetic", synthetic)] {
        let ours = tmp.path().join(format!("{name}-ours"));
        let theirs = tmp.path().join(format!("{name}-ignition"));
        scratch(&r.tree, &ours);
        scratch(&r.tree, &theirs);
        common::check(
            Command::new(&init)
                .arg("apply-ignition")
                .arg(&config)
                .arg(&ours),
        );
        let work = tmp.path().join(format!("{name}-work"));
        std::fs::create_dir_all(&work).unwrap();
        real_ignition(&config, &theirs, &work);

        let (a, b) = (snapshot(&ours), snapshot(&theirs));
        let paths: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
        let mut unexplained = Vec::new();
        for p in paths {
            if a.get(p) == b.get(p) {
                continue;
            }
            match EXPLAINED
                .iter()
                .find(|(re, _)| regex_lite::Regex::new(re).unwrap().is_match(p))
            {
                Some((re, _)) => {
                    used.insert(*re);
                }
                None => unexplained.push(format!(
                    "{p}: ours {} / ignition {}",
                    describe(a.get(p)),
                    describe(b.get(p))
                )),
            }
        }
        assert!(
            unexplained.is_empty(),
            "{name}: unexplained differences:\n{}",
            unexplained.join("\n")
        );
        // What the explanations cover must still agree where it matters.
        assert_eq!(
            shadow_names_and_hashes(&ours),
            shadow_names_and_hashes(&theirs),
            "{name}: shadow names and password hashes"
        );
        let presets = |root: &Path| -> BTreeSet<String> {
            std::fs::read_to_string(root.join("etc/systemd/system-preset/20-ignition.preset"))
                .unwrap_or_default()
                .lines()
                .map(str::to_string)
                .collect()
        };
        assert_eq!(presets(&ours), presets(&theirs), "{name}: presets");
        assert!(!presets(&ours).is_empty(), "{name}: no presets");
        for user in ["admin", "alice"] {
            assert_eq!(
                keys(&ours, user),
                keys(&theirs, user),
                "{name}: {user}'s keys"
            );
        }
    }
    let unused: Vec<&&str> = EXPLAINED
        .iter()
        .map(|(re, _)| re)
        .filter(|re| !used.contains(**re))
        .collect();
    assert!(
        unused.is_empty(),
        "explanations no longer needed: {unused:?}"
    );
}
