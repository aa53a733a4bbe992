//! Install media: `slipway iso` writes master3's ISO from the example's build; xorriso and
//! sfdisk read it back (an El Torito EFI boot image, and GPT partition 2 of type ESP for
//! a USB stick). A UEFI machine with a blank disk boots it as a CD-ROM (SATA, as BMC
//! virtual media or a USB CD drive present it), slipway-init finds the volume, installs
//! master3's disk and powers off; without the CD the machine boots from that disk to
//! `systemctl is-system-running` = running as master3 (checked over SSH on a user-mode
//! network that reaches nothing: restrict=on, forwarded on loopback only). Then the same
//! ISO, written as is to a USB stick (QEMU's usb-storage on an xHCI controller), boots a
//! second blank machine through the hybrid GPT's ESP and installs there too.
#![allow(clippy::unwrap_used)]

#[path = "../tests/common/mod.rs"]
mod common;
mod harness;

use harness::Wait;

use std::process::Command;
use std::time::{Duration, Instant};

use harness::{Disk, DiskKind, MachineSpec};

#[test]
fn the_iso_boots_as_a_cdrom_installs_master3_and_its_disk_boots() {
    let _wall =
        harness::WallTime::start("the_iso_boots_as_a_cdrom_installs_master3_and_its_disk_boots");
    let dir = harness::work_dir("iso-install");
    let key = harness::test_key(&dir);
    let cluster = harness::example_with_key(&common::example(), &key, &dir);
    let out = dir.join("out");
    common::build(&cluster, &dir.join("secrets"), &out, false);
    let t = Instant::now();
    let iso = slipway::iso::write(&slipway::iso::IsoOptions {
        cluster: cluster.clone(),
        out_dir: out.clone(),
        node: "master3".into(),
        iso: Some(dir.join("master3.iso")),
        source_date_epoch: 0,
    })
    .unwrap_or_else(|e| panic!("slipway iso: {e}"));
    let written = t.elapsed();
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&iso).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "the ISO carries master3's keys");
    }
    // Independent readers: xorriso's El Torito report and util-linux's GPT view.
    let o = common::check(
        Command::new("xorriso")
            .args(["-indev"])
            .arg(&iso)
            .args(["-report_el_torito", "plain"]),
    );
    let report = format!(
        "{}{}",
        common::stdout(&o),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        report.contains("El Torito boot img") && report.contains("UEFI"),
        "no UEFI El Torito boot image: {report}"
    );
    assert!(report.contains("SLIPWAY_INSTALL"), "volume id: {report}");
    let parts = common::sfdisk_parts(&iso);
    assert!(
        parts.iter().any(|p| p
            .type_guid
            .eq_ignore_ascii_case("C12A7328-F81F-11D2-BA4B-00A0C93EC93B")),
        "no EFI system partition in the hybrid GPT: {parts:?}"
    );
    eprintln!(
        "iso: master3.iso written in {:.1} s, {} MiB",
        written.as_secs_f64(),
        std::fs::metadata(&iso).unwrap().len() >> 20
    );

    let disk = harness::blank_disk(&dir, "master3", 3 << 30);
    let mut spec = MachineSpec::new("master3-install", &disk, &dir);
    spec.disks.push(Disk {
        path: iso.clone(),
        format: "raw".into(),
        kind: DiskKind::Cdrom,
        bootindex: Some(0),
    });
    let mut vm = harness::start(&spec, None, &dir);
    let started = vm.wait("slipway-init started", Duration::from_secs(600), true);
    let done = vm.wait("install: done", Duration::from_secs(900), true);
    vm.exit(Duration::from_secs(120));
    let console = vm.console();
    for want in [
        "install: medium /dev/sr0 (SLIPWAY_INSTALL) mounted",
        "install: Ignition config from /run/slipway/media/slipway/config.ign checked",
        "install: /dev/disk/by-path/pci-0000:00:04.0 is /dev/vda",
        "install: powering off; remove the install medium",
    ] {
        assert!(
            console.contains(want),
            "no {want:?} (log {})",
            vm.log.display()
        );
    }
    assert!(
        !console.contains("network: "),
        "a media install needs no network"
    );
    eprintln!(
        "iso install ({}): slipway-init at {:.1} s, install done at {:.1} s after power-on",
        harness::accel(),
        started.as_secs_f64(),
        done.as_secs_f64()
    );
    drop(vm);

    // The medium removed: the disk boots by itself.
    let port = harness::free_port();
    let mut vm = harness::boot(
        "master3",
        &disk,
        harness::isolated_nic("52:54:00:00:00:13", "192.168.1.13", port),
        &dir,
    );
    let login = vm.wait("master3 login: ", Duration::from_secs(600), true);
    let run = |cmd: &str| harness::ssh(&key, port, "admin", cmd, Duration::from_secs(300));
    let (code, state) = run("sudo systemctl is-system-running --wait");
    let (_, failed) = run("systemctl --failed --no-legend --plain");
    assert!(
        code == 0 && state.trim() == "running" && failed.trim().is_empty(),
        "master3: system {state:?}, failed units {failed:?} (log {})",
        vm.log.display()
    );
    let running = vm.elapsed();
    assert_eq!(run("hostname").1.trim(), "master3");
    let (_, cmdline) = run("cat /proc/cmdline");
    assert!(
        cmdline.contains("slipway.roothash=") && !cmdline.contains("slipway.install"),
        "booted the installer, not the disk: {cmdline}"
    );
    let (_, parts) = run("lsblk -n -o NAME,PARTLABEL /dev/vda");
    assert!(parts.contains("state"), "no state partition: {parts}");
    eprintln!(
        "master3 from its disk installed from the ISO: login prompt at {:.1} s, running at {:.1} s",
        login.as_secs_f64(),
        running.as_secs_f64()
    );
    drop(vm);

    // The same image as a USB stick (`dd` of the ISO): firmware boots the ESP of its
    // hybrid GPT, slipway-init finds the volume on the stick's disk and installs.
    let disk2 = harness::blank_disk(&dir, "master3-usb", 3 << 30);
    let mut spec = MachineSpec::new("master3-usb-install", &disk2, &dir);
    spec.disks.push(Disk {
        path: iso.clone(),
        format: "raw".into(),
        kind: DiskKind::Usb,
        bootindex: Some(0),
    });
    let mut vm = harness::start(&spec, None, &dir);
    let done = vm.wait("install: done", Duration::from_secs(900), true);
    vm.exit(Duration::from_secs(120));
    let console = vm.console();
    for want in [
        "install: medium /dev/sda (SLIPWAY_INSTALL) mounted",
        "install: /dev/disk/by-path/pci-0000:00:04.0 is /dev/vda",
        "install: powering off; remove the install medium",
    ] {
        assert!(
            console.contains(want),
            "USB stick: no {want:?} (log {})",
            vm.log.display()
        );
    }
    eprintln!(
        "iso as a USB stick ({}): install done at {:.1} s after power-on",
        harness::accel(),
        done.as_secs_f64()
    );
    drop(vm);
    harness::passed(&dir);
}
