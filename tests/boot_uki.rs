//! The writers together under real firmware: a GPT disk (our writer) with a FAT32 ESP
//! (ours) holding a UKI (ours, on the image's own systemd-stub and kernel) with a cpio
//! initramfs (ours) boots in QEMU with OVMF. The kernel must report our command line
//! and run our /init, which prints a marker and powers off. TCG only: KVM hangs on these
//! machines. No network device at all. (Groundwork for issues 4 and 5.)
#![allow(clippy::unwrap_used)]

mod common;

use std::io::Cursor;
use std::process::Command;
use std::time::{Duration, Instant};

use slipway::fs::{Entry, Tree};
use slipway::image::gpt::{self, Part, types};
use slipway::image::{cpio, esp, uki};
use slipway::rootfs;
use uuid::Uuid;

const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";
const CMDLINE: &str = "console=ttyS0,115200 panic=-1 slipway.test=uki-boot";

#[test]
fn ovmf_boots_our_disk_and_runs_our_init() {
    let r = rootfs::build("control-plane", &common::offline_options()).unwrap();
    let slipway::image::uki::BootParts {
        stub,
        kernel,
        uname,
        osrel,
    } = slipway::image::uki::BootParts::from_tree(&r.tree).unwrap();

    // A tiny initramfs: the host's static busybox and a script that proves it ran.
    let busybox = std::fs::read("/bin/busybox").expect("busybox-static (make deps installs it)");
    let mut initrd = Tree::default();
    initrd.insert("bin/busybox", Entry::file(busybox, 0o755));
    for d in ["dev", "proc", "sys"] {
        initrd.insert(d, Entry::dir(0o755));
    }
    initrd.insert(
        "init",
        Entry::file(
            "#!/bin/busybox sh\n/bin/busybox mount -t devtmpfs dev /dev\n/bin/busybox mount -t proc proc /proc\n\
             echo \"SLIPWAY-INIT-RAN cmdline=[$(/bin/busybox cat /proc/cmdline)]\" > /dev/ttyS0\n\
             /bin/busybox poweroff -f\n"
                .to_string(),
            0o755,
        ),
    );
    let initrd = cpio::write(&initrd, 0, Vec::new()).unwrap();
    let secs = uki::sections(
        &osrel,
        CMDLINE.as_bytes(),
        uname.as_bytes(),
        &initrd,
        &kernel,
    );
    let efi = uki::assemble(&stub, &secs).unwrap();
    let esp_img = esp::build(
        esp::MIN_SIZE,
        "ESP",
        &[("EFI/BOOT/BOOTX64.EFI".into(), efi)],
    )
    .unwrap();
    let parts = [Part {
        name: "esp",
        type_guid: types::ESP,
        uuid: Uuid::from_u128(0x5117),
        size: esp_img.len() as u64,
        contents: Some(&esp_img),
        attributes: 0,
    }];
    let size = gpt::disk_size(&parts);
    let (disk, _) = gpt::write(
        Cursor::new(vec![0u8; size as usize]),
        size,
        Uuid::from_u128(0xd15c),
        &parts,
    )
    .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let disk_path = dir.path().join("disk.raw");
    std::fs::write(&disk_path, disk.into_inner()).unwrap();
    let vars = dir.path().join("OVMF_VARS.fd");
    std::fs::copy(OVMF_VARS, &vars).expect("ovmf (make deps installs it)");
    let log = dir.path().join("serial.log");
    let t = Instant::now();
    let status = Command::new("timeout")
        .arg("300")
        .arg("qemu-system-x86_64")
        .args([
            "-machine",
            "q35",
            "-accel",
            "tcg,tb-size=128",
            "-smp",
            "1",
            "-m",
            "512",
            "-nodefaults",
            "-display",
            "none",
            "-no-reboot",
        ])
        .args(["-nic", "none"])
        .arg("-drive")
        .arg(format!(
            "if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}"
        ))
        .arg("-drive")
        .arg(format!(
            "if=pflash,format=raw,unit=1,file={}",
            vars.display()
        ))
        .arg("-drive")
        .arg(format!(
            "if=none,id=disk0,format=raw,file={}",
            disk_path.display()
        ))
        .args(["-device", "virtio-blk-pci,drive=disk0,bootindex=0"])
        .arg("-serial")
        .arg(format!("file:{}", log.display()))
        .status()
        .expect("qemu-system-x86_64 (make deps installs it)");
    let took = t.elapsed();
    let out = std::fs::read_to_string(&log).unwrap_or_default();
    // Keep the console for a failed run.
    let kept = std::env::temp_dir().join("slipway-boot-uki-serial.log");
    let _ = std::fs::write(&kept, &out);
    eprintln!(
        "boot to /init and power-off: {:.1} s (serial log {})",
        took.as_secs_f64(),
        kept.display()
    );
    assert!(
        took < Duration::from_secs(300) && status.success(),
        "qemu: {status} after {took:?}; log {}",
        kept.display()
    );
    assert!(
        out.contains("Linux version 6."),
        "the kernel did not start; log {}",
        kept.display()
    );
    assert!(
        out.contains(&format!("Command line: {CMDLINE}")),
        "the UKI's .cmdline was not used; log {}",
        kept.display()
    );
    assert!(
        out.contains(&format!("SLIPWAY-INIT-RAN cmdline=[{CMDLINE}")),
        "our /init did not run; log {}",
        kept.display()
    );
    assert!(
        !out.contains("Kernel panic"),
        "kernel panic; log {}",
        kept.display()
    );
}
