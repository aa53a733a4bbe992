//! The EFI system partition: a FAT32 filesystem (fatfs) built in memory from a list of
//! files. Reproducible: the volume id is derived from the contents, every timestamp is
//! the DOS epoch (fatfs without a clock), and files are added in path order.

use std::io::{Cursor, Write};

use sha2::{Digest, Sha256};

/// FAT32 needs at least 65525 clusters; with 512-byte clusters that is ~33 MiB. The ESP
/// is sized to hold a UKI (kernel + initramfs, tens of MiB) and room to grow.
pub const MIN_SIZE: u64 = 64 << 20;

/// Builds a FAT32 image of `size` bytes holding `files` ("EFI/BOOT/BOOTX64.EFI", bytes),
/// its volume id derived from the files.
pub fn build(size: u64, label: &str, files: &[(String, Vec<u8>)]) -> std::io::Result<Vec<u8>> {
    let mut sorted: Vec<&(String, Vec<u8>)> = files.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    let mut h = Sha256::new();
    for (p, b) in &sorted {
        h.update(p.as_bytes());
        h.update([0]);
        h.update(b);
    }
    let d = h.finalize();
    let volume_id = u32::from_le_bytes([d[0], d[1], d[2], d[3]]);
    let borrowed: Vec<(&str, &[u8])> = files
        .iter()
        .map(|(p, b)| (p.as_str(), b.as_slice()))
        .collect();
    build_with_volume_id(size, label, &borrowed, volume_id)
}

/// [`build`] with the volume id given (a caller that knows a digest of the files already
/// need not hash them again).
pub fn build_with_volume_id(
    size: u64,
    label: &str,
    files: &[(&str, &[u8])],
    volume_id: u32,
) -> std::io::Result<Vec<u8>> {
    let mut sorted: Vec<&(&str, &[u8])> = files.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(b.0));
    let mut name = [b' '; 11];
    for (i, c) in label.bytes().take(11).enumerate() {
        name[i] = c.to_ascii_uppercase();
    }
    let mut disk = Cursor::new(vec![0u8; size as usize]);
    fatfs::format_volume(
        &mut disk,
        fatfs::FormatVolumeOptions::new()
            .fat_type(fatfs::FatType::Fat32)
            .volume_id(volume_id)
            .volume_label(name),
    )?;
    disk.set_position(0);
    let fs = fatfs::FileSystem::new(&mut disk, fatfs::FsOptions::new())?;
    {
        let root = fs.root_dir();
        for (path, bytes) in sorted {
            let mut dir = root.clone();
            let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
            let Some((file, dirs)) = parts.split_last() else {
                continue;
            };
            for d in dirs {
                dir = match dir.open_dir(d) {
                    Ok(x) => x,
                    Err(_) => dir.create_dir(d)?,
                };
            }
            let mut f = dir.create_file(file)?;
            f.truncate()?;
            f.write_all(bytes)?;
        }
    }
    fs.unmount()?;
    let mut img = disk.into_inner();
    fix_dotdot_to_root(&mut img)?;
    Ok(img)
}

fn le16(b: &[u8], at: usize) -> u32 {
    u32::from(u16::from_le_bytes([b[at], b[at + 1]]))
}
fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Two defects of fatfs 0.3.6 in subdirectories, which `fsck.fat` rejects, mended after
/// the fact (Microsoft's FAT32 File System Specification, "FAT Directory Structure"):
/// - "." and ".." must be the directory's first two entries, but fatfs puts a long-name
///   entry before each; those slots are rewritten as ".", "..", then two deleted entries;
/// - ".." pointing at the root must hold cluster 0, but fatfs writes the FAT32 root
///   directory's cluster number.
fn fix_dotdot_to_root(img: &mut [u8]) -> std::io::Result<()> {
    let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("ESP: {m}"));
    if img.len() < 512 {
        return Err(bad("too small"));
    }
    let bytes_per_sector = le16(img, 11) as usize;
    let sectors_per_cluster = img[13] as usize;
    let reserved = le16(img, 14) as usize;
    let fats = img[16] as usize;
    let fat_sectors = le32(img, 36) as usize;
    let root = le32(img, 44);
    let cluster_size = bytes_per_sector * sectors_per_cluster;
    let fat_start = reserved * bytes_per_sector;
    let data_start = (reserved + fats * fat_sectors) * bytes_per_sector;
    if cluster_size == 0 {
        return Err(bad("zero cluster size"));
    }
    let chain = |img: &[u8], first: u32| -> Vec<u32> {
        let mut out = Vec::new();
        let mut c = first;
        while (2..0x0FFF_FFF8).contains(&c) && out.len() < 1 << 20 {
            out.push(c);
            let at = fat_start + 4 * c as usize;
            if at + 4 > img.len() {
                break;
            }
            c = le32(img, at) & 0x0FFF_FFFF;
        }
        out
    };
    let mut stack = vec![root];
    while let Some(dir) = stack.pop() {
        if dir != root {
            let start = data_start + (dir as usize - 2) * cluster_size;
            if start + 128 <= img.len() && cluster_size >= 128 {
                let slot = |i: usize| start + 32 * i;
                let is_lfn = |img: &[u8], i: usize| img[slot(i) + 11] == 0x0F;
                let named = |img: &[u8], i: usize, n: &[u8; 11]| &img[slot(i)..slot(i) + 11] == n;
                if is_lfn(img, 0)
                    && named(img, 1, b".          ")
                    && is_lfn(img, 2)
                    && named(img, 3, b"..         ")
                {
                    img.copy_within(slot(1)..slot(2), slot(0));
                    img.copy_within(slot(3)..slot(4), slot(1));
                    for i in [2, 3] {
                        img[slot(i)..slot(i) + 32].fill(0);
                        img[slot(i)] = 0xE5; // deleted
                    }
                }
            }
        }
        for c in chain(img, dir) {
            let start = data_start + (c as usize - 2) * cluster_size;
            for e in (start..start + cluster_size).step_by(32) {
                if e + 32 > img.len() || img[e] == 0 {
                    break;
                }
                let attr = img[e + 11];
                if img[e] == 0xE5 || attr == 0x0F || attr & 0x10 == 0 {
                    continue;
                }
                let cluster = (le16(img, e + 20) << 16) | le16(img, e + 26);
                let name = &img[e..e + 11];
                if name == b"..         " {
                    if cluster == root {
                        img[e + 20..e + 22].copy_from_slice(&[0, 0]);
                        img[e + 26..e + 28].copy_from_slice(&[0, 0]);
                    }
                } else if name != b".          " && cluster >= 2 {
                    stack.push(cluster);
                }
            }
        }
    }
    Ok(())
}
