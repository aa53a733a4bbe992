//! Initramfs module resolution from .modinfo, judged by the host's depmod: for each
//! module the boot needs, our dependency closure equals the one modules.dep gives.
//! Uses the Debian packages `make test-fixtures` cached; offline. (Groundwork for issue 4.)
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use common::check;
use slipway::image::modules::Modules;
use slipway::rootfs;

/// The modules a node's initramfs needs to find its root: virtio and NVMe, SATA, USB
/// sticks, squashfs, dm-verity, overlayfs and ext4.
const BOOT: &[&str] = &[
    "virtio_blk",
    "virtio_pci",
    "nvme",
    "ahci",
    "sd_mod",
    "usb_storage",
    "uas",
    "xhci_pci",
    "squashfs",
    "dm_verity",
    "overlay",
    "ext4",
    "crc32c_generic",
];

#[test]
fn our_closure_matches_depmod() {
    let o = common::offline_options();
    let r = rootfs::build("control-plane", &o).unwrap();
    let release = r
        .tree
        .children("usr/lib/modules")
        .first()
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap()
        .to_string();
    let mods = Modules::new(&r.tree, &release).unwrap();
    assert!(mods.resolve(&["no_such_module"]).is_err());

    // depmod over a copy of the modules tree.
    let dir = tempfile::tempdir().unwrap();
    let prefix = format!("usr/lib/modules/{release}/");
    for (p, _) in r.tree.iter().filter(|(p, _)| p.starts_with(&prefix)) {
        if let Some(bytes) = r.tree.read(p) {
            let dst = dir
                .path()
                .join("lib/modules")
                .join(&release)
                .join(&p[prefix.len()..]);
            std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
            std::fs::write(dst, bytes).unwrap();
        }
    }
    check(
        Command::new("depmod")
            .arg("-b")
            .arg(dir.path())
            .arg(&release),
    );
    let dep_text = std::fs::read_to_string(
        dir.path()
            .join("lib/modules")
            .join(&release)
            .join("modules.dep"),
    )
    .unwrap();
    let deps: BTreeMap<String, Vec<String>> = dep_text
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(m, d)| {
            (
                m.to_string(),
                d.split_whitespace().map(str::to_string).collect(),
            )
        })
        .collect();
    let builtin: BTreeSet<String> = std::fs::read_to_string(
        dir.path()
            .join("lib/modules")
            .join(&release)
            .join("modules.builtin"),
    )
    .unwrap()
    .lines()
    .map(|l| {
        l.rsplit('/')
            .next()
            .unwrap()
            .trim_end_matches(".ko")
            .replace('-', "_")
    })
    .collect();
    let mut files = 0;
    for m in BOOT {
        let ours: BTreeSet<String> = mods
            .resolve(&[m])
            .unwrap()
            .into_iter()
            .map(|p| p[prefix.len()..].to_string())
            .collect();
        if builtin.contains(*m) {
            assert!(ours.is_empty(), "{m} is built in: {ours:?}");
            continue;
        }
        let key = deps
            .keys()
            .find(|k| {
                k.rsplit('/')
                    .next()
                    .unwrap()
                    .split('.')
                    .next()
                    .unwrap()
                    .replace('-', "_")
                    == *m
            })
            .unwrap_or_else(|| panic!("depmod does not know {m}"));
        let mut want: BTreeSet<String> = deps[key].iter().cloned().collect();
        want.insert(key.clone());
        assert_eq!(ours, want, "{m}");
        files += ours.len();
    }
    assert!(files >= BOOT.len(), "{files} module files");
}
