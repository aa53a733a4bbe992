//! Unified kernel images: systemd-stub with the kernel, initramfs, command line and
//! os-release added as PE sections (the UAPI Group's UKI specification; layout as ukify
//! writes it). The PE/COFF structures are those of Microsoft's "PE Format" document:
//! the stub keeps its own sections, new section headers go into the room the stub's
//! header area leaves, and each new section is appended at the next aligned file offset
//! and virtual address.

use crate::fs::Tree;

/// Where Debian's systemd-boot-efi puts the stub.
pub const STUB: &str = "usr/lib/systemd/boot/efi/linuxx64.efi.stub";

/// What a UKI takes from the image tree itself: the stub, the kernel, its release and the
/// image's os-release.
#[derive(Debug, Clone)]
pub struct BootParts {
    pub stub: Vec<u8>,
    pub kernel: Vec<u8>,
    /// The kernel release, e.g. "6.12.117+deb13-amd64" (from /boot/vmlinuz-RELEASE).
    pub uname: String,
    pub osrel: Vec<u8>,
}

impl BootParts {
    pub fn from_tree(tree: &Tree) -> Result<BootParts, String> {
        let read = |p: &str, why: &str| {
            tree.read(p)
                .map(<[u8]>::to_vec)
                .ok_or_else(|| format!("/{p} is missing: {why}"))
        };
        let kernel_path = tree
            .children("boot")
            .into_iter()
            .find(|p| p.starts_with("boot/vmlinuz-"))
            .ok_or("no /boot/vmlinuz-*: is the kernel package in the image?")?
            .to_string();
        Ok(BootParts {
            stub: read(STUB, "is systemd-boot-efi in the image?")?,
            kernel: read(&kernel_path, "not a regular file")?,
            uname: kernel_path.trim_start_matches("boot/vmlinuz-").to_string(),
            osrel: read("usr/lib/os-release", "is base-files in the image?")?,
        })
    }
}

/// Section characteristics: initialized data, readable (IMAGE_SCN_CNT_INITIALIZED_DATA |
/// IMAGE_SCN_MEM_READ).
const DATA_SECTION: u32 = 0x0000_0040 | 0x4000_0000;
const SECTION_HEADER: usize = 40;
const PE32_PLUS: u16 = 0x20b;

fn u16_at(b: &[u8], at: usize) -> Result<u16, String> {
    b.get(at..at + 2)
        .map(|s| u16::from_le_bytes([s[0], s[1]]))
        .ok_or_else(|| format!("PE truncated at {at}"))
}
fn u32_at(b: &[u8], at: usize) -> Result<u32, String> {
    b.get(at..at + 4)
        .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
        .ok_or_else(|| format!("PE truncated at {at}"))
}
fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}
fn align(v: u64, a: u64) -> u64 {
    v.div_ceil(a) * a
}

/// The sections of a UKI in the order ukify writes them; `.linux` last.
pub fn sections<'a>(
    osrel: &'a [u8],
    cmdline: &'a [u8],
    uname: &'a [u8],
    initrd: &'a [u8],
    linux: &'a [u8],
) -> Vec<(&'static str, &'a [u8])> {
    vec![
        (".osrel", osrel),
        (".cmdline", cmdline),
        (".uname", uname),
        (".initrd", initrd),
        (".linux", linux),
    ]
}

/// Appends `sections` to the PE32+ image `stub`.
pub fn assemble(stub: &[u8], sections: &[(&str, &[u8])]) -> Result<Vec<u8>, String> {
    if stub.get(0..2) != Some(b"MZ") {
        return Err("the stub is not a PE image (no MZ header)".into());
    }
    let pe = u32_at(stub, 0x3c)? as usize;
    if stub.get(pe..pe + 4) != Some(b"PE\0\0") {
        return Err("the stub has no PE signature".into());
    }
    let coff = pe + 4;
    let n_sections = u16_at(stub, coff + 2)? as usize;
    let opt_size = u16_at(stub, coff + 16)? as usize;
    let opt = coff + 20;
    if u16_at(stub, opt)? != PE32_PLUS {
        return Err("the stub is not PE32+ (64-bit)".into());
    }
    let section_align = u64::from(u32_at(stub, opt + 32)?);
    let file_align = u64::from(u32_at(stub, opt + 36)?);
    let size_of_headers = u32_at(stub, opt + 60)? as usize;
    let table = opt + opt_size;
    let table_end = table + n_sections * SECTION_HEADER;
    let mut first_raw = usize::MAX;
    let mut end_raw = 0u64;
    let mut end_va = 0u64;
    for i in 0..n_sections {
        let h = table + i * SECTION_HEADER;
        let vsize = u64::from(u32_at(stub, h + 8)?);
        let va = u64::from(u32_at(stub, h + 12)?);
        let raw_size = u64::from(u32_at(stub, h + 16)?);
        let raw_ptr = u64::from(u32_at(stub, h + 20)?);
        let name = String::from_utf8_lossy(&stub[h..h + 8])
            .trim_end_matches('\0')
            .to_string();
        if sections.iter().any(|(n, _)| *n == name) {
            return Err(format!("the stub already has a {name} section"));
        }
        if raw_size > 0 {
            first_raw = first_raw.min(raw_ptr as usize);
        }
        end_raw = end_raw.max(raw_ptr + raw_size);
        end_va = end_va.max(va + vsize.max(raw_size));
    }
    let room = size_of_headers.min(first_raw);
    if table_end + sections.len() * SECTION_HEADER > room {
        return Err(format!(
            "the stub's header area has room for {} more sections, {} are needed",
            room.saturating_sub(table_end) / SECTION_HEADER,
            sections.len()
        ));
    }
    let mut out = stub[..end_raw as usize].to_vec();
    let mut va = align(end_va, section_align);
    for (i, (name, data)) in sections.iter().enumerate() {
        if name.len() > 8 {
            return Err(format!("section name {name} is longer than 8 bytes"));
        }
        let raw_ptr = align(out.len() as u64, file_align);
        out.resize(raw_ptr as usize, 0);
        out.extend_from_slice(data);
        let raw_size = align(data.len() as u64, file_align);
        out.resize((raw_ptr + raw_size) as usize, 0);
        let h = table_end + i * SECTION_HEADER;
        out[h..h + SECTION_HEADER].fill(0);
        out[h..h + name.len()].copy_from_slice(name.as_bytes());
        let fits =
            |v: u64| u32::try_from(v).map_err(|_| format!("{name} puts the image past 4 GiB"));
        put32(&mut out, h + 8, fits(data.len() as u64)?);
        put32(&mut out, h + 12, fits(va)?);
        put32(&mut out, h + 16, fits(raw_size)?);
        put32(&mut out, h + 20, fits(raw_ptr)?);
        put32(&mut out, h + 36, DATA_SECTION);
        va = align(va + data.len() as u64, section_align);
    }
    let n =
        u16::try_from(n_sections + sections.len()).map_err(|_| "too many sections".to_string())?;
    out[coff + 2..coff + 4].copy_from_slice(&n.to_le_bytes());
    put32(
        &mut out,
        opt + 56,
        u32::try_from(va).map_err(|_| "image past 4 GiB".to_string())?,
    ); // SizeOfImage
    put32(&mut out, opt + 64, 0); // CheckSum: not used by UEFI
    Ok(out)
}
