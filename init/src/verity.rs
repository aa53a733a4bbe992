//! Opening the root through dm-verity with the device-mapper ioctls (devicemapper crate).
//!
//! The hash partition starts with cryptsetup's VERITY superblock (the image builder writes
//! it, `veritysetup format` writes the same): block sizes, data block count, algorithm and
//! salt come from there; the root hash comes from the kernel command line, which is part
//! of the signed/measured UKI, never from the disk.

use std::io::Read;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use devicemapper::{DM, DevId, DmFlags, DmName, DmOptions};
use uuid::Uuid;

/// The Discoverable Partitions Specification's convention: the root partition's UUID is
/// the first 128 bits of the root hash, the hash partition's the last 128.
pub fn partition_uuids(roothash: &[u8]) -> (Uuid, Uuid) {
    let mut a = [0u8; 16];
    let mut b = [0u8; 16];
    a.copy_from_slice(&roothash[..16]);
    b.copy_from_slice(&roothash[roothash.len() - 16..]);
    (Uuid::from_bytes(a), Uuid::from_bytes(b))
}

#[derive(Debug, PartialEq, Eq)]
pub struct Superblock {
    pub hash_type: u32,
    pub algorithm: String,
    pub data_block_size: u32,
    pub hash_block_size: u32,
    pub data_blocks: u64,
    pub salt: Vec<u8>,
}

/// Parses the 512-byte superblock (cryptsetup's `struct verity_sb`).
pub fn parse_superblock(b: &[u8]) -> Result<Superblock, String> {
    if b.len() < 512 || &b[..8] != b"verity\0\0" {
        return Err("the hash partition has no verity superblock".into());
    }
    let u32_at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
    let version = u32_at(8);
    if version != 1 {
        return Err(format!(
            "verity superblock version {version} (only 1 is known)"
        ));
    }
    let algorithm = String::from_utf8_lossy(&b[32..64])
        .trim_end_matches('\0')
        .to_string();
    let mut blocks = [0u8; 8];
    blocks.copy_from_slice(&b[72..80]);
    let salt_size = usize::from(u16::from_le_bytes([b[80], b[81]]));
    if salt_size > 256 {
        return Err(format!("verity superblock salt size {salt_size} > 256"));
    }
    Ok(Superblock {
        hash_type: u32_at(12),
        algorithm,
        data_block_size: u32_at(64),
        hash_block_size: u32_at(68),
        data_blocks: u64::from_le_bytes(blocks),
        salt: b[88..88 + salt_size].to_vec(),
    })
}

/// Creates the read-only verity device `name` over `data` with hashes on `hash`;
/// returns its device node.
pub fn open(name: &str, data: &Path, hash: &Path, roothash: &[u8]) -> Result<PathBuf, String> {
    let mut sb = vec![0u8; 512];
    std::fs::File::open(hash)
        .and_then(|mut f| f.read_exact(&mut sb))
        .map_err(|e| format!("reading the verity superblock on {}: {e}", hash.display()))?;
    let sb = parse_superblock(&sb).map_err(|e| format!("{}: {e}", hash.display()))?;
    if sb.algorithm != "sha256" || roothash.len() != 32 {
        return Err(format!(
            "{}: verity algorithm {:?}; this image's root hash is SHA-256",
            hash.display(),
            sb.algorithm
        ));
    }
    let sectors = sb.data_blocks * u64::from(sb.data_block_size) / 512;
    let salt = if sb.salt.is_empty() {
        "-".to_string()
    } else {
        crate::hex(&sb.salt)
    };
    // <version> <data dev> <hash dev> <data bs> <hash bs> <data blocks> <hash start
    // block> <algorithm> <root digest> <salt>: the hash tree starts in the block after
    // the superblock.
    let params = format!(
        "{} {} {} {} {} {} 1 {} {} {}",
        sb.hash_type,
        data.display(),
        hash.display(),
        sb.data_block_size,
        sb.hash_block_size,
        sb.data_blocks,
        sb.algorithm,
        crate::hex(roothash),
        salt
    );
    let dm = DM::new().map_err(|e| format!("opening /dev/mapper/control: {e}"))?;
    let dm_name = DmName::new(name).map_err(|e| format!("device-mapper name {name}: {e}"))?;
    let ro = DmOptions::default().set_flags(DmFlags::DM_READONLY);
    dm.device_create(dm_name, None, ro)
        .map_err(|e| format!("creating device-mapper device {name}: {e}"))?;
    let id = DevId::Name(dm_name);
    dm.table_load(&id, &[(0, sectors, "verity".into(), params)], ro)
        .map_err(|e| {
            format!(
                "loading the verity table for {} (the kernel refused the root hash, salt or \
                 sizes): {e}",
                data.display()
            )
        })?;
    let info = dm
        .device_suspend(&id, DmOptions::default())
        .map_err(|e| format!("activating {name}: {e}"))?;
    let dev = info.device();
    // devtmpfs names it dm-MINOR; give it the familiar /dev/mapper name too.
    let node = PathBuf::from(format!("/dev/dm-{}", dev.minor));
    for _ in 0..100 {
        if std::fs::metadata(&node).is_ok_and(|m| m.file_type().is_block_device()) {
            return Ok(node);
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    Err(format!(
        "{} did not appear for device-mapper device {name}",
        node.display()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn superblock_round_trip_of_known_bytes() {
        let mut b = vec![0u8; 512];
        b[..8].copy_from_slice(b"verity\0\0");
        b[8] = 1;
        b[12] = 1;
        b[32..38].copy_from_slice(b"sha256");
        b[64..68].copy_from_slice(&4096u32.to_le_bytes());
        b[68..72].copy_from_slice(&4096u32.to_le_bytes());
        b[72..80].copy_from_slice(&1234u64.to_le_bytes());
        b[80..82].copy_from_slice(&32u16.to_le_bytes());
        b[88..120].copy_from_slice(&[7u8; 32]);
        let sb = parse_superblock(&b).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(sb.algorithm, "sha256");
        assert_eq!(sb.data_blocks, 1234);
        assert_eq!(sb.salt, vec![7u8; 32]);
        b[0] = b'x';
        assert!(parse_superblock(&b).is_err());
    }

    #[test]
    fn partition_uuids_split_the_hash() {
        let h: Vec<u8> = (0..32).collect();
        let (a, b) = partition_uuids(&h);
        assert_eq!(a.as_bytes()[0], 0);
        assert_eq!(b.as_bytes()[0], 16);
    }
}
