//! Disk-image writers judged by independent tools: `fsck.fat` on our ESP, `sgdisk -v`
//! and `sfdisk --json` on our partition table, `veritysetup verify` on a root and hash
//! partition read back out of the disk. (Groundwork for `slipway build`.)
#![allow(clippy::unwrap_used)]

mod common;

use std::io::Cursor;
use std::process::Command;

use common::{check, stdout};
use slipway::image::gpt::{self, Part, types};
use slipway::image::{esp, verity};
use uuid::Uuid;

fn esp_files() -> Vec<(String, Vec<u8>)> {
    vec![
        ("EFI/BOOT/BOOTX64.EFI".into(), vec![0x4d; 300_000]),
        ("EFI/Linux/slipway.efi".into(), vec![0x5a; 1000]),
        (
            "slipway/config.ign".into(),
            br#"{"ignition":{"version":"3.3.0"}}"#.to_vec(),
        ),
    ]
}

#[test]
fn fsck_fat_accepts_our_esp_and_lists_its_files() {
    let dir = tempfile::tempdir().unwrap();
    let img = esp::build(esp::MIN_SIZE, "ESP", &esp_files()).unwrap();
    assert_eq!(
        img,
        esp::build(esp::MIN_SIZE, "ESP", &esp_files()).unwrap(),
        "not reproducible"
    );
    let p = dir.path().join("esp.img");
    std::fs::write(&p, &img).unwrap();
    let o = check(Command::new("fsck.fat").args(["-n", "-v", "-l"]).arg(&p));
    let out = stdout(&o);
    assert!(out.contains("2 FATs, 32 bit entries"), "not FAT32: {out}");
    for f in [
        "/EFI/BOOT/BOOTX64.EFI",
        "/EFI/Linux/slipway.efi",
        "/slipway/config.ign",
    ] {
        assert!(
            out.to_ascii_uppercase().contains(&f.to_ascii_uppercase()),
            "{f} missing:\n{out}"
        );
    }
    // Read back through an independent reader: mtools' mcopy.
    for (path, bytes) in esp_files() {
        let dst = dir.path().join("copy");
        let _ = std::fs::remove_file(&dst);
        check(
            Command::new("mcopy")
                .arg("-n")
                .arg("-i")
                .arg(&p)
                .arg(format!("::/{path}"))
                .arg(&dst),
        );
        assert_eq!(std::fs::read(&dst).unwrap(), bytes, "{path}");
    }
}

#[test]
fn sgdisk_verifies_our_table_and_verity_survives_the_disk() {
    let dir = tempfile::tempdir().unwrap();
    let esp_img = esp::build(esp::MIN_SIZE, "ESP", &esp_files()).unwrap();
    let root: Vec<u8> = (0..4096 * 2000).map(|i| (i * 7 % 251) as u8).collect();
    let v = verity::build(&root).unwrap();
    // systemd's convention: the root partition's UUID is the first half of the root hash,
    // the verity partition's the second.
    let root_uuid = Uuid::from_slice(&v.root_hash[..16]).unwrap();
    let verity_uuid = Uuid::from_slice(&v.root_hash[16..]).unwrap();
    let parts = [
        Part {
            name: "esp",
            type_guid: types::ESP,
            uuid: Uuid::from_u128(1),
            size: esp_img.len() as u64,
            contents: Some(&esp_img),
            attributes: 0,
        },
        Part {
            name: "root-a",
            type_guid: types::ROOT_X86_64,
            uuid: root_uuid,
            size: root.len() as u64,
            contents: Some(&root),
            attributes: 1 << 60,
        },
        Part {
            name: "root-a-verity",
            type_guid: types::ROOT_VERITY_X86_64,
            uuid: verity_uuid,
            size: v.hash_device.len() as u64,
            contents: Some(&v.hash_device),
            attributes: 1 << 60,
        },
        Part {
            name: "root-b",
            type_guid: types::ROOT_X86_64,
            uuid: Uuid::from_u128(4),
            size: root.len() as u64,
            contents: None,
            attributes: 0,
        },
        Part {
            name: "root-b-verity",
            type_guid: types::ROOT_VERITY_X86_64,
            uuid: Uuid::from_u128(5),
            size: v.hash_device.len() as u64,
            contents: None,
            attributes: 0,
        },
    ];
    let size = gpt::disk_size(&parts);
    let (dev, placed) = gpt::write(
        Cursor::new(vec![0u8; size as usize]),
        size,
        Uuid::from_u128(99),
        &parts,
    )
    .unwrap();
    let disk = dev.into_inner();
    let (dev2, _) = gpt::write(
        Cursor::new(vec![0u8; size as usize]),
        size,
        Uuid::from_u128(99),
        &parts,
    )
    .unwrap();
    assert!(
        disk == dev2.into_inner(),
        "the same inputs gave different disks"
    );
    let p = dir.path().join("disk.raw");
    std::fs::write(&p, &disk).unwrap();

    let o = check(Command::new("sgdisk").arg("-v").arg(&p));
    assert!(stdout(&o).contains("No problems found"), "{}", stdout(&o));
    let table: serde_json::Value = serde_json::from_str(&stdout(&check(
        Command::new("sfdisk").arg("--json").arg(&p),
    )))
    .unwrap();
    let pt = &table["partitiontable"];
    assert_eq!(pt["label"], "gpt");
    assert_eq!(
        pt["id"].as_str().unwrap().to_ascii_lowercase(),
        Uuid::from_u128(99).to_string()
    );
    let listed = pt["partitions"].as_array().unwrap();
    assert_eq!(listed.len(), 5);
    for (l, (want, at)) in listed.iter().zip(parts.iter().zip(&placed)) {
        assert_eq!(l["type"].as_str().unwrap(), want.type_guid, "{l}");
        assert_eq!(
            l["uuid"].as_str().unwrap().to_ascii_lowercase(),
            want.uuid.to_string(),
            "{l}"
        );
        assert_eq!(l["name"].as_str().unwrap(), want.name);
        assert_eq!(l["start"].as_u64().unwrap(), at.first_lba);
        assert_eq!(
            at.first_lba * gpt::SECTOR % gpt::ALIGN,
            0,
            "{} is not 1 MiB aligned",
            want.name
        );
    }
    // The ESP and the verity pair, cut back out of the disk, still check.
    let cut = |i: usize, len: usize| {
        let start = (placed[i].first_lba * gpt::SECTOR) as usize;
        disk[start..start + len].to_vec()
    };
    let esp_p = dir.path().join("esp.img");
    std::fs::write(&esp_p, cut(0, esp_img.len())).unwrap();
    check(Command::new("fsck.fat").arg("-n").arg(&esp_p));
    let (rp, hp) = (dir.path().join("root"), dir.path().join("hash"));
    std::fs::write(&rp, cut(1, root.len())).unwrap();
    std::fs::write(&hp, cut(2, v.hash_device.len())).unwrap();
    check(
        Command::new("veritysetup")
            .arg("verify")
            .arg(&rp)
            .arg(&hp)
            .arg(v.root_hash_hex()),
    );
}

/// Our initramfs archives read back by GNU cpio, with modes, links and contents.
#[test]
fn cpio_reads_our_newc_archives() {
    use slipway::fs::{Entry, Tree};
    let dir = tempfile::tempdir().unwrap();
    let mut t = Tree::default();
    t.insert("init", Entry::file(b"#!/bin/sh\necho hi\n".to_vec(), 0o755));
    t.insert(
        "usr/lib/modules/6.12/kernel/drivers/virtio_blk.ko",
        Entry::file(vec![7u8; 12345], 0o644),
    );
    t.insert("bin", Entry::symlink("usr/bin"));
    t.insert("dev", Entry::dir(0o755));
    let bytes = slipway::image::cpio::write(&t, 1_700_000_000, Vec::new()).unwrap();
    let a = dir.path().join("initrd.cpio");
    std::fs::write(&a, &bytes).unwrap();
    let list = stdout(&check(
        Command::new("cpio")
            .args(["-t", "-v", "--quiet", "-F"])
            .arg(&a),
    ));
    for want in [
        "-rwxr-xr-x",
        "init",
        "bin -> usr/bin",
        "virtio_blk.ko",
        "drwxr-xr-x",
    ] {
        assert!(list.contains(want), "{want} missing:\n{list}");
    }
    let x = dir.path().join("x");
    std::fs::create_dir(&x).unwrap();
    check(
        Command::new("cpio")
            .args(["-i", "-d", "--quiet", "-F"])
            .arg(&a)
            .current_dir(&x),
    );
    assert_eq!(
        std::fs::read(x.join("usr/lib/modules/6.12/kernel/drivers/virtio_blk.ko")).unwrap(),
        vec![7u8; 12345]
    );
    assert_eq!(
        std::fs::read_link(x.join("bin")).unwrap().to_string_lossy(),
        "usr/bin"
    );
}

/// Our squashfs read back by unsquashfs: modes, owners, links and contents, and the same
/// bytes from the same tree.
#[test]
fn unsquashfs_reads_our_root_image() {
    use slipway::fs::{Entry, Kind, Tree};
    let dir = tempfile::tempdir().unwrap();
    let mut t = Tree::new_merged_usr();
    t.insert(
        "usr/bin/tool",
        Entry::file(b"#!/bin/sh\nexit 0\n".to_vec(), 0o755),
    );
    t.insert(
        "usr/bin/big",
        Entry::file(
            (0..300_000u32).map(|i| (i % 253) as u8).collect::<Vec<_>>(),
            0o644,
        ),
    );
    t.insert(
        "usr/bin/same",
        Entry {
            kind: Kind::Hardlink("usr/bin/big".into()),
            mode: 0o644,
            uid: 0,
            gid: 0,
        },
    );
    t.insert(
        "usr/lib/helper",
        Entry {
            kind: Kind::File(std::sync::Arc::new(vec![1, 2, 3])),
            mode: 0o4754,
            uid: 0,
            gid: 996,
        },
    );
    t.insert("etc/alternatives/awk", Entry::symlink("/usr/bin/mawk"));
    t.insert("var/lib/etcd", Entry::dir(0o700));
    let img = |t: &Tree| {
        let mut c = Cursor::new(Vec::new());
        slipway::image::squashfs::write(t, 1_700_000_000, &mut c).unwrap();
        c.into_inner()
    };
    let bytes = img(&t);
    assert!(bytes == img(&t), "the same tree gave different images");
    let p = dir.path().join("root.sqfs");
    std::fs::write(&p, &bytes).unwrap();
    let list = stdout(&check(
        Command::new("unsquashfs").args(["-lln", "-d", ""]).arg(&p),
    ));
    for want in [
        "-rwxr-xr-x 0/0",
        "/usr/bin/tool",
        "-rwsr-xr-- 0/996",
        "/usr/lib/helper",
        "/etc/alternatives/awk -> /usr/bin/mawk",
        "/bin -> usr/bin",
        "drwx------ 0/0",
        "2023-11-14",
    ] {
        assert!(list.contains(want), "{want} missing:\n{list}");
    }
    let x = dir.path().join("x");
    check(
        Command::new("unsquashfs")
            .arg("-q")
            .arg("-d")
            .arg(&x)
            .arg(&p),
    );
    assert_eq!(
        std::fs::read(x.join("usr/bin/same")).unwrap(),
        std::fs::read(x.join("usr/bin/big")).unwrap()
    );
    let sb = stdout(&check(Command::new("unsquashfs").arg("-s").arg(&p)));
    assert!(sb.contains("Compression zstd"), "{sb}");
}
