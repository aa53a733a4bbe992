//! A unified kernel image from the image's own systemd-stub and kernel, judged by
//! binutils: `objdump -h` lists the sections, `objcopy --dump-section` reads each back.
//! Uses the Debian packages `make test-fixtures` cached; offline. (Groundwork for issue 4.)
#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;

use common::{check, stdout};
use slipway::rootfs;

#[test]
fn objdump_sees_our_uki_sections_and_objcopy_reads_them_back() {
    let o = common::offline_options();
    let r = rootfs::build("control-plane", &o).unwrap();
    let slipway::image::uki::BootParts {
        stub,
        kernel,
        uname,
        osrel,
    } = slipway::image::uki::BootParts::from_tree(&r.tree).unwrap();
    let cmdline = b"console=tty0 console=ttyS0,115200 ro".to_vec();
    let initrd = vec![0x42u8; 123_457];
    let secs = slipway::image::uki::sections(&osrel, &cmdline, uname.as_bytes(), &initrd, &kernel);
    let uki = slipway::image::uki::assemble(&stub, &secs).unwrap();
    assert_eq!(uki, slipway::image::uki::assemble(&stub, &secs).unwrap());
    assert!(
        slipway::image::uki::assemble(&uki, &secs).is_err(),
        "sections cannot be added twice"
    );

    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("uki.efi");
    std::fs::write(&p, &uki).unwrap();
    let h = stdout(&check(Command::new("objdump").arg("-h").arg(&p)));
    assert!(h.contains("file format pei-x86-64"), "{h}");
    for (name, data) in &secs {
        let line = h
            .lines()
            .find(|l| l.split_whitespace().nth(1) == Some(name))
            .unwrap_or_else(|| panic!("{name} missing:\n{h}"));
        let size = usize::from_str_radix(line.split_whitespace().nth(2).unwrap(), 16).unwrap();
        assert!(size >= data.len(), "{name}: {line}");
        let out = dir.path().join(name.trim_start_matches('.'));
        check(
            Command::new("objcopy")
                .arg(format!("--dump-section={name}={}", out.display()))
                .arg(&p)
                .arg(dir.path().join("scratch.efi")),
        );
        let back = std::fs::read(&out).unwrap();
        assert_eq!(&back[..data.len()], *data, "{name} read back differs");
    }
    // The stub's own sections are still there.
    assert!(h.contains(".text") && h.contains(".sbat"), "{h}");
}
