//! Machines with blank disks installed over the network, as new hardware is. On a private
//! segment (a network namespace of the test's own, nothing routed out) BusyBox's udhcpd
//! gives out addresses, as the network's own DHCP server would; beside it dnsmasq runs the
//! build's `pxe/dnsmasq.conf.example` as shipped (proxy-DHCP and TFTP; its two blanks
//! filled in) and `slipway serve` serves the build. Two UEFI machines power on at once with
//! blank disks, one through each way into iPXE:
//! - master2's NIC carries QEMU's iPXE option ROM, which asks DHCP itself and is sent
//!   straight to `slipway serve`'s chain script;
//! - worker1's NIC has no ROM: OVMF's own PXE client gets Debian's `ipxe.efi` over TFTP
//!   (the example's `pxe-service` line, answered by the proxy), and that iPXE is then sent
//!   to the chain script.
//!
//! Each node's script boots its role's kernel and initramfs in install mode; slipway-init
//! fetches the node's config and the role image from `slipway serve`, writes the disk named
//! in cluster.toml and reboots. Each machine then boots from its disk alone, to the same
//! state as the disk-image test: its name, its static address, the verified root, a state
//! partition, every unit running.
#![allow(clippy::unwrap_used)]

#[path = "../tests/common/mod.rs"]
mod common;
mod harness;

use harness::Wait;

use std::time::Duration;

use harness::pxe::Provisioning;
use harness::{Machine as Vm, MachineSpec, Segment};

/// The provisioning server's address on the segment (the test's own address).
const SERVER: &str = "192.168.1.5";

/// One machine to install: a node of the example cluster and how its NIC boots.
struct Machine {
    name: &'static str,
    role: &'static str,
    ip: &'static str,
    mac: &'static str,
    /// QEMU's iPXE option ROM on the NIC, or none (OVMF's PXE, then ipxe.efi by TFTP).
    rom: bool,
}

const MACHINES: [Machine; 2] = [
    Machine {
        name: "master2",
        role: "control-plane",
        ip: "192.168.1.12",
        mac: "52:54:00:00:00:12",
        rom: true,
    },
    Machine {
        name: "worker1",
        role: "worker",
        ip: "192.168.1.21",
        mac: "52:54:00:00:00:21",
        rom: false,
    },
];

#[test]
fn blank_machines_pxe_boot_install_their_disks_and_reboot_into_their_nodes() {
    let _wall = harness::WallTime::start(
        "blank_machines_pxe_boot_install_their_disks_and_reboot_into_their_nodes",
    );
    let dir = harness::work_dir("pxe-install");
    let key = harness::test_key(&dir);
    let cluster = harness::example_with_key(&common::example(), &key, &dir);
    let out = dir.join("out");
    common::build(&cluster, &dir.join("secrets"), &out, false);

    let lan = Segment::create(&format!("{SERVER}/24")).unwrap_or_else(|e| panic!("{e}"));
    let prov = Provisioning::start(&lan, &out, &dir, &[]);
    let (serve_log, dnsmasq_log) = (&prov.serve_log, &prov.dnsmasq_log);

    // First power-on of each: a blank 3 GiB disk (room for the image and the state
    // partition), so OVMF goes on to the NIC.
    let mut vms: Vec<(&Machine, std::path::PathBuf, Vm)> = MACHINES
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let disk = harness::blank_disk(&dir, m.name, 3 << 30);
            // After the disk in the boot order: a blank disk does not boot, the NIC does.
            let mut spec = MachineSpec::new(&format!("{}-install", m.name), &disk, &dir);
            spec.nics = harness::segment_nic(&lan, &format!("tap{i}"), m.mac, Some((2, m.rom)));
            let vm = harness::start(&spec, Some(&lan), &dir);
            (m, disk, vm)
        })
        .collect();
    let logs = |vm: &Vm| {
        format!(
            "(logs: {}, {}, {})",
            vm.log.display(),
            serve_log.display(),
            dnsmasq_log.display()
        )
    };
    for (m, _, vm) in &mut vms {
        let init = vm.wait("slipway-init started", Duration::from_secs(600), true);
        let written = vm.wait("SHA-256 checked", Duration::from_secs(900), true);
        let done = vm.wait("install: done", Duration::from_secs(120), true);
        // The harness runs QEMU with -no-reboot: the installer's reboot ends the VM.
        vm.exit(Duration::from_secs(120));
        let console = vm.console();
        let mac = m.mac.replace(':', "-");
        for want in [
            "network: ".to_string(),
            format!(
                "install: Ignition config from http://{SERVER}:8080/nodes/{mac}/config.ign checked"
            ),
            "install: /dev/disk/by-path/pci-0000:00:04.0 is /dev/vda".into(),
            "its state partition (if any) wiped".into(),
            "install: node config written to the ESP".into(),
        ] {
            assert!(
                console.contains(&want),
                "{}: no {want:?} {}",
                m.name,
                logs(vm)
            );
        }
        let serve = prov.served();
        for want in [
            "/boot.ipxe".to_string(),
            format!("/pxe/nodes/{mac}.ipxe"),
            format!("/pxe/{}/vmlinuz", m.role),
            format!("/pxe/{}/initrd.img", m.role),
            format!("/pxe/{}/disk.img.zst", m.role),
            format!("/nodes/{mac}/config.ign 200"),
        ] {
            assert!(
                serve
                    .lines()
                    .any(|l| l.contains(&want) && l.contains(" 200 ")),
                "{}: slipway serve did not answer {want} with 200 {}",
                m.name,
                logs(vm)
            );
        }
        assert!(
            serve.contains(&format!("node={}", m.name)),
            "{}: the config request is not logged with the node's name",
            m.name
        );
        // (The machines are checked one after the other: the second's times are when the
        // test looked, upper bounds.)
        eprintln!(
            "{} pxe install ({}, {}): slipway-init by {:.1} s, image written and checked by \
             {:.1} s, install done by {:.1} s after power-on",
            m.name,
            if m.rom {
                "QEMU's iPXE ROM"
            } else {
                "OVMF PXE -> TFTP ipxe.efi"
            },
            harness::accel(),
            init.as_secs_f64(),
            written.as_secs_f64(),
            done.as_secs_f64()
        );
    }
    // The machine without a ROM got iPXE over TFTP: dnsmasq sent Debian's ipxe.efi.
    let dhcp = std::fs::read_to_string(dnsmasq_log).unwrap();
    assert!(
        dhcp.contains("sent") && dhcp.contains("ipxe.efi"),
        "dnsmasq never sent ipxe.efi over TFTP ({})",
        dnsmasq_log.display()
    );
    let vms: Vec<(&Machine, std::path::PathBuf)> =
        vms.into_iter().map(|(m, disk, _)| (m, disk)).collect();

    // Second power-on: each installed disk boots by itself (no boot ROM on the NIC).
    let mut booted: Vec<(&Machine, Vm)> = vms
        .iter()
        .enumerate()
        .map(|(i, (m, disk))| {
            let mut spec = MachineSpec::new(m.name, disk, &dir);
            spec.nics = harness::segment_nic(&lan, &format!("tap{i}"), m.mac, None);
            let vm = harness::start(&spec, Some(&lan), &dir);
            (*m, vm)
        })
        .collect();
    for (m, vm) in &mut booted {
        let login = vm.wait(
            &format!("{} login: ", m.name),
            Duration::from_secs(600),
            true,
        );
        let ssh = |cmd: &str| {
            harness::ssh_segment(&lan, &key, m.ip, "admin", cmd, Duration::from_secs(300))
        };
        let (code, state) = ssh("systemctl is-system-running --wait");
        let (_, failed) = ssh("systemctl --failed --no-legend --plain");
        assert!(
            code == 0 && state.trim() == "running" && failed.trim().is_empty(),
            "{}: system {state:?}, failed units {failed:?} (log {})",
            m.name,
            vm.log.display()
        );
        let running = vm.elapsed();
        let (_, host) = ssh("hostname");
        assert_eq!(host.trim(), m.name);
        let (_, root) = ssh("findmnt -no SOURCE,FSTYPE,OPTIONS /");
        let (_, dm) = ssh("cat /sys/block/dm-0/dm/name; ls /sys/block/dm-0/slaves");
        assert!(
            root.contains("squashfs")
                && root.contains(" ro")
                && dm.split_whitespace().collect::<Vec<_>>() == ["root", "vda2", "vda3"],
            "{}: the root is not the read-only verity squashfs on the installed disk: {root} {dm}",
            m.name
        );
        let (_, cmdline) = ssh("cat /proc/cmdline");
        assert!(
            cmdline.contains("slipway.roothash=") && !cmdline.contains("slipway.install"),
            "{}: booted from the disk's UKI, not the installer: {cmdline}",
            m.name
        );
        let (_, parts) = ssh("lsblk -n -o NAME,PARTLABEL /dev/vda");
        assert!(
            parts.contains("esp") && parts.contains("root-a") && parts.contains("state"),
            "{}: installed disk: {parts}",
            m.name
        );
        assert!(
            vm.console().contains("first boot done"),
            "{}: {}",
            m.name,
            vm.log.display()
        );
        eprintln!(
            "{} from its installed disk: login prompt at {:.1} s, running at {:.1} s",
            m.name,
            login.as_secs_f64(),
            running.as_secs_f64()
        );
    }
    drop(booted);
    harness::passed(&dir);
}
