//! slipway-init: PID 1 of a Slipway node's initramfs.
//!
//! The boot flow (docs/images.md): mount the API filesystems, load the modules the
//! image builder listed, find the root and hash partitions by the partition UUIDs the
//! root hash names, open the root through dm-verity (device-mapper ioctls), mount it
//! read-only, give it writable /etc, /opt and /var, and hand over to systemd. Any failure
//! stops the boot with a message on the console; there is no fallback to an unverified
//! root.

#![cfg_attr(test, allow(clippy::unwrap_used))]

mod cmdline;
mod disk;
mod entropy;
mod firstboot;
mod ignition;
mod install;
mod log;
mod net;
mod root;
mod state;
mod verity;

use std::time::Duration;

use crate::log::{fatal, step};

/// Where the verified root is assembled before switching to it.
const SYSROOT: &str = "/sysroot";
/// What the initramfs builder writes: one module path per line, dependencies first.
const MODULE_LIST: &str = "/etc/slipway/modules";

fn main() {
    if std::process::id() != 1 {
        std::process::exit(tool(&std::env::args().collect::<Vec<_>>()));
    }
    if let Err(e) = run() {
        fatal(&e);
    }
}

/// Not PID 1: `slipway-init apply-ignition CONFIG ROOT` applies a config to a directory
/// exactly as first boot does (tests compare it with Ignition's own files stage).
fn tool(args: &[String]) -> i32 {
    match args {
        [_, cmd, config, root] if cmd == "apply-ignition" => {
            let r = std::fs::read(config)
                .map_err(|e| format!("{config}: {e}"))
                .and_then(|bytes| ignition::parse(&bytes))
                .and_then(|cfg| ignition::plan(&cfg))
                .and_then(|ops| ignition::apply(&ops, std::path::Path::new(root)));
            match r {
                Ok(done) => {
                    println!("{done:?}");
                    0
                }
                Err(e) => {
                    eprintln!("slipway-init: {e}");
                    1
                }
            }
        }
        _ => {
            eprintln!(
                "usage: slipway-init apply-ignition CONFIG ROOT\n(as PID 1 of an initramfs it boots a Slipway node)"
            );
            2
        }
    }
}

fn run() -> Result<(), String> {
    root::mount_api_filesystems()?;
    log::init();
    step("slipway-init started");
    let args = cmdline::Args::read()?;

    let loaded = root::load_modules(MODULE_LIST)?;
    step(&format!("loaded {loaded} kernel modules"));

    if let Some(inst) = &args.install {
        // Booted from the network to install: write the disk, then boot it as firmware
        // will from now on (the network comes after the disk in a node's boot order).
        install::run(inst, &args.roothash, None).map_err(|e| format!("install: {e}"))?;
        step("install: rebooting into the installed system");
        nix::unistd::sync();
        nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_AUTOBOOT)
            .map_err(|e| format!("rebooting after the install: {e}"))?;
    } else if let Some(volume) = &args.install_media {
        // Booted from an install medium: write the disk and power off. Firmware often
        // prefers removable media, so a reboot could install again and again; the
        // operator (or the BMC script) removes the medium and powers on.
        let (inst, medium) = install::from_media(volume).map_err(|e| format!("install: {e}"))?;
        install::run(&inst, &args.roothash, Some(&medium)).map_err(|e| format!("install: {e}"))?;
        step("install: powering off; remove the install medium and power on");
        nix::unistd::sync();
        nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_POWER_OFF)
            .map_err(|e| format!("powering off after the install: {e}"))?;
    }

    let (data_uuid, hash_uuid) = verity::partition_uuids(&args.roothash);
    let timeout = Duration::from_secs(args.timeout_secs);
    let found = disk::wait_for(&[data_uuid, hash_uuid], timeout)?;
    let (data_dev, hash_dev) = (&found[0], &found[1]);
    step(&format!(
        "root partition {} ({data_uuid}), hash partition {} ({hash_uuid})",
        data_dev.display(),
        hash_dev.display()
    ));

    let mapped = verity::open("root", data_dev, hash_dev, &args.roothash)?;
    step(&format!(
        "dm-verity device {} opened with root hash {}",
        mapped.display(),
        hex(&args.roothash)
    ));

    root::mount_root(&mapped, SYSROOT)?;
    step(&format!("root mounted read-only at {SYSROOT}"));
    // Making the state partition draws random GUIDs, and systemd and ssh need the pool
    // after: seeded from the node's config where nothing else filled it.
    if !entropy::ready() {
        let config = firstboot::find_config(disk::esp_of(data_dev).as_deref());
        entropy::ensure(config.as_ref().map(|(c, _)| c.as_slice()));
    }
    let state = state::setup(data_dev, SYSROOT)?;
    root::writable_layers(SYSROOT, &state.dir)?;
    step(&format!(
        "writable /etc, /opt, /home, /root and /var on {}",
        if state.persistent {
            "the state partition"
        } else {
            "memory (no state partition)"
        }
    ));

    if state.first_boot {
        let esp = disk::esp_of(data_dev);
        match firstboot::find_config(esp.as_deref()) {
            Some((config, source)) => {
                firstboot::apply(&config, &source, std::path::Path::new(SYSROOT))?
            }
            None => step(
                "no Ignition config found (ESP, MAC bundle, fw_cfg): booting the image as it is",
            ),
        }
        state.mark_first_boot_done()?;
        step("first boot done");
    } else {
        step("not the first boot: the Ignition config is not applied again");
    }

    step(&format!("switching root to {}", args.init));
    root::switch_root(SYSROOT, &args.init)
}

pub(crate) fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
