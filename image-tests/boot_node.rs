//! A node's disk from `slipway build` under UEFI firmware: OVMF boots the UKI from the
//! ESP, slipway-init opens the root through dm-verity, applies the node's Ignition config
//! from the ESP on a state partition it makes in the disk's free space, and hands over to
//! systemd, which shows `master1 login:` on the serial console with no failed unit; a
//! second boot of the same disk mounts that state and does not apply the config again. A disk with one flipped byte in its
//! root partition stops in slipway-init with a message instead, and so does a config
//! (from QEMU's fw_cfg) with a field slipway-init does not support.
#![allow(clippy::unwrap_used)]

#[path = "../tests/common/mod.rs"]
mod common;
mod harness;

use harness::Wait;

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

fn built() -> &'static PathBuf {
    static B: OnceLock<PathBuf> = OnceLock::new();
    B.get_or_init(|| {
        let dir = common::shared_build_dir();
        let out = dir.join("out");
        common::build(&common::example(), &dir.join("secrets"), &out, false);
        out
    })
}

#[test]
fn master1_boots_through_verity_and_its_config_to_a_login_prompt() {
    let _wall =
        harness::WallTime::start("master1_boots_through_verity_and_its_config_to_a_login_prompt");
    let dir = harness::work_dir("boot-master1");
    // A 3 GiB disk: the image, and room for the state partition first boot makes.
    let disk = harness::grown_copy(
        &built().join("nodes/master1/disk.raw"),
        &dir,
        "master1",
        3 << 30,
    );
    // No entropy for the guest: no RNG device, and a CPU model without RDRAND (QEMU's
    // default, many CI runners'). slipway-init seeds the kernel's pool from the node's
    // config before the first boot's partition table needs it.
    let no_entropy = |name: &str| {
        let mut spec = harness::MachineSpec::new(name, &disk, &dir);
        spec.rng = false;
        spec.cpu = Some("qemu64".into());
        spec
    };
    let mut vm = harness::start(&no_entropy("master1"), None, &dir);
    let handover = vm.wait("slipway-init", Duration::from_secs(120), true);
    let switched = vm.wait(
        "switching root to /sbin/init",
        Duration::from_secs(120),
        true,
    );
    let login = vm.wait("master1 login: ", Duration::from_secs(300), true);
    // Up to the login prompt. (This VM has no network device, so keepalived, which needs
    // its interface, and network-online wait; the networked assertions belong to the
    // multi-node test.)
    let console = vm.console();
    eprintln!(
        "master1 ({}): slipway-init at {:.1} s, switch_root at {:.1} s, login prompt at {:.1} s (log {})",
        harness::accel(),
        handover.as_secs_f64(),
        switched.as_secs_f64(),
        login.as_secs_f64(),
        vm.log.display()
    );
    for step in [
        "loaded ",
        "root partition /dev/vda2",
        "dm-verity device /dev/dm-0 opened",
        "root mounted read-only",
        "the kernel's random pool was not initialized (no RNG device, no RDRAND): seeded from the node's config",
        "state partition /dev/vda6 created",
        "writable /etc, /opt, /home, /root and /var on the state partition",
        "Ignition config from /dev/vda1:/slipway/config.ign applied: 1 users",
        "first boot done",
    ] {
        assert!(
            console.contains(step),
            "no {step:?} (log {})",
            vm.log.display()
        );
    }
    let failed: Vec<&str> = console.lines().filter(|l| l.contains("FAILED")).collect();
    assert!(
        failed.is_empty(),
        "failed units before the login prompt: {failed:?} (log {})",
        vm.log.display()
    );
    vm.kill();

    // Second boot of the same disk: the state partition is found, first boot is not
    // run again.
    // Again without entropy: systemd-random-seed credits the seed it saved.
    let mut vm = harness::start(&no_entropy("master1-boot2"), None, &dir);
    let login = vm.wait("master1 login: ", Duration::from_secs(300), true);
    let console = vm.console();
    eprintln!(
        "master1 second boot: login prompt at {:.1} s",
        login.as_secs_f64()
    );
    assert!(
        console.contains("state partition /dev/vda6 mounted")
            && console.contains("not the first boot: the Ignition config is not applied again"),
        "second boot did not keep its state (log {})",
        vm.log.display()
    );
    assert!(
        !console.contains("Ignition config from") && !console.contains("created ("),
        "second boot ran first boot again (log {})",
        vm.log.display()
    );
    harness::passed(&dir);
}

#[test]
fn an_unsupported_config_field_stops_the_boot_naming_it() {
    let _wall = harness::WallTime::start("an_unsupported_config_field_stops_the_boot_naming_it");
    let dir = harness::work_dir("boot-unsupported");
    // The role image has no config on its ESP; the config comes from fw_cfg.
    let disk = harness::disk_copy(
        &built().join("images/control-plane.raw"),
        &dir,
        "unsupported",
    );
    let cfg = dir.join("bad.ign");
    std::fs::write(
        &cfg,
        r#"{"ignition":{"version":"3.3.0"},"storage":{"filesystems":[{"device":"/dev/vdb","format":"ext4"}]}}"#,
    )
    .unwrap();
    let mut spec = harness::MachineSpec::new("unsupported", &disk, &dir);
    spec.fw_cfg
        .push(format!("name=opt/com.coreos/config,file={}", cfg.display()));
    let mut vm = harness::start(&spec, None, &dir);
    vm.wait(
        "FATAL: the boot stops here",
        Duration::from_secs(300),
        false,
    );
    let console = vm.console();
    assert!(
        console.contains("fw_cfg")
            && console.contains("unsupported Ignition field storage.filesystems"),
        "the refusal does not name the source and field (log {})",
        vm.log.display()
    );
    assert!(
        !console.contains("switching root"),
        "booted anyway (log {})",
        vm.log.display()
    );
    harness::passed(&dir);
}

#[test]
fn a_flipped_root_byte_stops_the_boot() {
    let _wall = harness::WallTime::start("a_flipped_root_byte_stops_the_boot");
    use std::io::{Seek, SeekFrom, Write};
    let dir = harness::work_dir("boot-flipped");
    let disk = harness::disk_copy(&built().join("nodes/master1/disk.raw"), &dir, "flipped");
    let parts = common::sfdisk_parts(&disk);
    let root = parts.iter().find(|p| p.name == "root-a").unwrap();
    // Inside the first 4 KiB block of the root (the squashfs superblock's block), which
    // the mount must read: dm-verity has to refuse it.
    let at = root.start + 1000;
    let byte = common::read_range(&disk, at, 1)[0];
    let mut f = std::fs::OpenOptions::new().write(true).open(&disk).unwrap();
    f.seek(SeekFrom::Start(at)).unwrap();
    f.write_all(&[byte ^ 0x40]).unwrap();
    drop(f);
    let mut vm = harness::boot("flipped", &disk, vec![], &dir);
    vm.wait(
        "FATAL: the boot stops here",
        Duration::from_secs(300),
        false,
    );
    // Give a (wrong) hand-over time to show itself.
    std::thread::sleep(Duration::from_secs(3));
    let console = vm.console();
    assert!(
        console.contains("verity") && console.contains("mounting /dev/dm-0 on /sysroot"),
        "the refusal does not name verity and the mount (log {})",
        vm.log.display()
    );
    assert!(
        !console.contains("switching root") && !console.contains(" login: "),
        "the corrupted root was used (log {})",
        vm.log.display()
    );
    harness::passed(&dir);
}

#[test]
fn one_role_image_picks_its_config_by_mac_from_a_bundle() {
    let _wall = harness::WallTime::start("one_role_image_picks_its_config_by_mac_from_a_bundle");
    let dir = harness::work_dir("boot-mac-bundle");
    let disk = harness::grown_copy(
        &built().join("images/control-plane.raw"),
        &dir,
        "bundle",
        3 << 30,
    );
    // A bundle on the role image's ESP: master2's config under its MAC, and master3's
    // (which must not be picked).
    let esp = common::sfdisk_parts(&disk)
        .into_iter()
        .find(|p| p.name == "esp")
        .unwrap();
    let img = format!("{}@@{}", disk.display(), esp.start);
    common::check(Command::new("mmd").args(["-i", &img, "::/slipway", "::/slipway/configs"]));
    for (node, mac) in [
        ("master2", "52-54-00-00-00-12"),
        ("master3", "52-54-00-00-00-13"),
    ] {
        common::check(
            Command::new("mcopy")
                .args(["-i", &img])
                .arg(built().join(format!("nodes/{node}/config.ign")))
                .arg(format!("::/slipway/configs/{mac}.ign")),
        );
    }
    let mut vm = harness::boot(
        "bundle",
        &disk,
        harness::isolated_nic("52:54:00:00:00:12", "192.168.1.12", harness::free_port()),
        &dir,
    );
    let login = vm.wait("master2 login: ", Duration::from_secs(300), true);
    let console = vm.console();
    eprintln!(
        "role image with a MAC bundle: master2 login prompt at {:.1} s",
        login.as_secs_f64()
    );
    assert!(
        console.contains(
            "Ignition config from /dev/vda1:/slipway/configs/52-54-00-00-00-12.ign applied"
        ),
        "the config was not picked by MAC (log {})",
        vm.log.display()
    );
    harness::passed(&dir);
}
