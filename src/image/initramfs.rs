//! The initramfs: slipway-init as /init and exactly the kernel modules it loads before
//! it can reach the root (their dependency closure, decompressed so the init needs no
//! decompressor), listed in load order in /etc/slipway/modules. Written as cpio newc.

use crate::fs::{Entry, Tree};
use crate::image::{cpio, modules};

/// Where slipway-init reads its module list (one absolute path per line).
pub const MODULE_LIST: &str = "etc/slipway/modules";

/// Builds the initramfs for kernel `release` of `root`, loading `wanted` modules.
/// Returns the archive and the module file names in load order.
pub fn build(
    root: &Tree,
    release: &str,
    wanted: &[String],
    init: &[u8],
    mtime: u64,
) -> Result<(Vec<u8>, Vec<String>), String> {
    let mods = modules::Modules::new(root, release)?;
    let wanted: Vec<&str> = wanted.iter().map(String::as_str).collect();
    let files = mods.resolve(&wanted)?;
    let mut t = Tree::default();
    for d in [
        "dev",
        "proc",
        "sys",
        "run",
        "sysroot",
        "etc",
        "etc/slipway",
        "lib",
        "lib/modules",
    ] {
        t.insert(d, Entry::dir(0o755));
    }
    t.insert("init", Entry::file(init.to_vec(), 0o755));
    let mut list = String::new();
    let mut names = Vec::new();
    for path in &files {
        let bytes = root
            .read(path)
            .ok_or_else(|| format!("/{path}: not a regular file"))?;
        let name = modules::module_name(path).ok_or_else(|| format!("/{path}: not a module"))?;
        let ko = format!("lib/modules/{name}.ko");
        t.insert(&ko, Entry::file(modules::decompress(path, bytes)?, 0o644));
        list.push_str(&format!("/{ko}\n"));
        names.push(name);
    }
    t.insert(MODULE_LIST, Entry::file(list, 0o644));
    let archive = cpio::write(&t, mtime, Vec::new()).map_err(|e| format!("initramfs: {e}"))?;
    Ok((archive, names))
}

/// Checks that `init` is a statically linked x86-64 ELF executable: the initramfs has no
/// libc or loader for anything else.
pub fn check_static_init(init: &[u8]) -> Result<(), String> {
    use object::read::elf::{ElfFile64, ProgramHeader};
    let elf = ElfFile64::<object::Endianness>::parse(init)
        .map_err(|e| format!("not an x86-64 ELF executable ({e})"))?;
    let endian = elf.endian();
    let interp = elf
        .elf_program_headers()
        .iter()
        .any(|ph| ph.p_type(endian) == object::elf::PT_INTERP);
    if interp {
        return Err(
            "dynamically linked (it names a program interpreter); build it with `make init`".into(),
        );
    }
    Ok(())
}
