//! GUID partition tables (UEFI 2.10 §5.3) with the gpt crate: protective MBR, primary and
//! backup headers, and partitions laid out at 1 MiB boundaries. Partition types follow
//! the Discoverable Partitions Specification, so systemd and Slipway's own init find
//! them by type. Every GUID is passed in (derived from content by the caller), so the
//! same inputs give the same table.

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom, Write};

use gpt::partition_types::Type;
use uuid::Uuid;

/// 512-byte logical blocks: what QEMU, USB sticks and almost all disks present.
pub const SECTOR: u64 = 512;
/// Partitions start on 1 MiB boundaries (what every partitioning tool does).
pub const ALIGN: u64 = 1 << 20;

/// Discoverable Partitions Specification type GUIDs (x86-64).
pub mod types {
    /// EFI system partition.
    pub const ESP: &str = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";
    /// Root partition, x86-64.
    pub const ROOT_X86_64: &str = "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709";
    /// Root verity (hash tree) partition, x86-64.
    pub const ROOT_VERITY_X86_64: &str = "2C7357ED-EBD2-46D9-AEC1-23D437EC2BF5";
    /// /var: the node's state partition, made on first boot.
    pub const VAR: &str = "4D21B016-B534-45C2-A9FB-5C16E091FD2D";
}

/// One partition to lay out.
pub struct Part<'a> {
    pub name: &'a str,
    pub type_guid: &'a str,
    pub uuid: Uuid,
    /// Size in bytes; rounded up to [`ALIGN`].
    pub size: u64,
    /// Written at the partition's start; the rest of the partition stays zero.
    pub contents: Option<&'a [u8]>,
    /// GPT attribute bits (e.g. bit 60 read-only for a root partition).
    pub attributes: u64,
}

/// Where a partition ended up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placed {
    pub name: String,
    pub uuid: Uuid,
    pub first_lba: u64,
    pub last_lba: u64,
}

/// The smallest disk that holds `parts`: 1 MiB in front, the parts, and room for the
/// backup table at the end.
pub fn disk_size(parts: &[Part<'_>]) -> u64 {
    ALIGN
        + parts
            .iter()
            .map(|p| p.size.div_ceil(ALIGN) * ALIGN)
            .sum::<u64>()
        + ALIGN
}

/// Writes a GPT disk of `size` bytes onto `dev`, which must already be that long and read
/// as zeros.
pub fn write<D: Read + Write + Seek + std::fmt::Debug>(
    mut dev: D,
    size: u64,
    disk_guid: Uuid,
    parts: &[Part<'_>],
) -> Result<(D, Vec<Placed>), String> {
    let err = |e: &dyn std::fmt::Display| format!("writing the partition table: {e}");
    let lb = gpt::disk::LogicalBlockSize::Lb512;
    let mbr =
        gpt::mbr::ProtectiveMBR::with_lb_size(u32::try_from(size / SECTOR - 1).unwrap_or(u32::MAX));
    mbr.overwrite_lba0(&mut dev).map_err(|e| err(&e))?;
    let mut disk = gpt::GptConfig::new()
        .writable(true)
        .logical_block_size(lb)
        .create_from_device(dev, Some(disk_guid))
        .map_err(|e| err(&e))?;
    let mut table = BTreeMap::new();
    let mut placed = Vec::new();
    let mut lba = ALIGN / SECTOR;
    for (i, p) in parts.iter().enumerate() {
        let blocks = p.size.div_ceil(ALIGN) * ALIGN / SECTOR;
        let type_guid = Type {
            guid: Uuid::parse_str(p.type_guid).map_err(|e| err(&e))?,
            os: gpt::partition_types::OperatingSystem::None,
        };
        table.insert(
            (i + 1) as u32,
            gpt::partition::Partition {
                part_type_guid: type_guid,
                part_guid: p.uuid,
                first_lba: lba,
                last_lba: lba + blocks - 1,
                flags: p.attributes,
                name: p.name.to_string(),
            },
        );
        placed.push(Placed {
            name: p.name.to_string(),
            uuid: p.uuid,
            first_lba: lba,
            last_lba: lba + blocks - 1,
        });
        lba += blocks;
    }
    disk.update_partitions(table).map_err(|e| err(&e))?;
    let mut dev = disk.write().map_err(|e| err(&e))?;
    // `dev` reads as zeros where nothing was written (a new sparse file or a zeroed
    // buffer), so all-zero chunks are skipped: a file stays sparse there.
    const CHUNK: usize = 64 << 10;
    for (p, at) in parts.iter().zip(&placed) {
        if let Some(c) = p.contents {
            let start = at.first_lba * SECTOR;
            for (i, chunk) in c.chunks(CHUNK).enumerate() {
                if chunk.iter().all(|&b| b == 0) {
                    continue;
                }
                dev.seek(SeekFrom::Start(start + (i * CHUNK) as u64))
                    .map_err(|e| err(&e))?;
                dev.write_all(chunk).map_err(|e| err(&e))?;
            }
        }
    }
    Ok((dev, placed))
}
