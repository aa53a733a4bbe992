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
                if crate::image::disk::is_zero(chunk) {
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

/// A device of a given length that reads as zeros wherever nothing was written and keeps
/// only the blocks written to: what the gpt crate writes its tables onto, so that a disk
/// of any size is planned without holding it in memory. [`SparseDevice::extents`] gives
/// back what was written.
#[derive(Debug)]
pub struct SparseDevice {
    len: u64,
    pos: u64,
    blocks: BTreeMap<u64, Vec<u8>>,
}

/// The unit [`SparseDevice`] keeps.
const SPARSE_BLOCK: u64 = 4096;

impl SparseDevice {
    pub fn new(len: u64) -> SparseDevice {
        SparseDevice {
            len,
            pos: 0,
            blocks: BTreeMap::new(),
        }
    }

    /// The written blocks as (offset, bytes), adjacent blocks joined, in order.
    pub fn extents(&self) -> Vec<(u64, Vec<u8>)> {
        let mut out: Vec<(u64, Vec<u8>)> = Vec::new();
        for (&b, bytes) in &self.blocks {
            let at = b * SPARSE_BLOCK;
            match out.last_mut() {
                Some((start, v)) if *start + v.len() as u64 == at => v.extend_from_slice(bytes),
                _ => out.push((at, bytes.clone())),
            }
        }
        for (at, v) in &mut out {
            // The last block may run past the device's end.
            v.truncate((self.len - *at) as usize);
        }
        out
    }
}

impl Read for SparseDevice {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = buf.len().min(self.len.saturating_sub(self.pos) as usize);
        let mut done = 0;
        while done < n {
            let at = self.pos + done as u64;
            let (b, off) = (at / SPARSE_BLOCK, (at % SPARSE_BLOCK) as usize);
            let take = (SPARSE_BLOCK as usize - off).min(n - done);
            match self.blocks.get(&b) {
                Some(block) => buf[done..done + take].copy_from_slice(&block[off..off + take]),
                None => buf[done..done + take].fill(0),
            }
            done += take;
        }
        self.pos += n as u64;
        Ok(n)
    }
}

impl Write for SparseDevice {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.pos + buf.len() as u64 > self.len {
            return Err(std::io::Error::new(
                std::io::ErrorKind::WriteZero,
                "write past the end of the disk",
            ));
        }
        let mut done = 0;
        while done < buf.len() {
            let at = self.pos + done as u64;
            let (b, off) = (at / SPARSE_BLOCK, (at % SPARSE_BLOCK) as usize);
            let take = (SPARSE_BLOCK as usize - off).min(buf.len() - done);
            let block = self
                .blocks
                .entry(b)
                .or_insert_with(|| vec![0u8; SPARSE_BLOCK as usize]);
            block[off..off + take].copy_from_slice(&buf[done..done + take]);
            done += take;
        }
        self.pos += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Seek for SparseDevice {
    fn seek(&mut self, pos: SeekFrom) -> std::io::Result<u64> {
        let new = match pos {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        match new {
            Some(p) => {
                self.pos = p;
                Ok(p)
            }
            None => Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "seek before the start of the disk",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sparse_device_keeps_what_was_written_and_reads_zeros_elsewhere() {
        let mut d = SparseDevice::new(3 * SPARSE_BLOCK + 100);
        d.seek(SeekFrom::Start(4090)).unwrap();
        d.write_all(&[7u8; 12]).unwrap();
        d.seek(SeekFrom::End(-10)).unwrap();
        d.write_all(&[9u8; 10]).unwrap();
        assert!(d.write_all(&[1]).is_err(), "past the end");
        let mut all = Vec::new();
        d.seek(SeekFrom::Start(0)).unwrap();
        d.read_to_end(&mut all).unwrap();
        assert_eq!(all.len() as u64, 3 * SPARSE_BLOCK + 100);
        assert!(all[..4090].iter().all(|&b| b == 0));
        assert_eq!(&all[4090..4102], &[7u8; 12]);
        assert!(all[4102..all.len() - 10].iter().all(|&b| b == 0));
        let ext = d.extents();
        assert_eq!(ext.len(), 2);
        assert_eq!((ext[0].0, ext[0].1.len()), (0, 2 * SPARSE_BLOCK as usize));
        assert_eq!(ext[1].0, 3 * SPARSE_BLOCK);
        assert_eq!(ext[1].1.len(), 100);
        assert_eq!(&ext[1].1[90..], &[9u8; 10]);
    }

    #[test]
    fn a_table_on_a_sparse_device_equals_one_on_a_zeroed_buffer() {
        let esp = vec![0xabu8; 3 << 20];
        let parts = [Part {
            name: "esp",
            type_guid: types::ESP,
            uuid: Uuid::from_u128(7),
            size: 4 << 20,
            contents: Some(&esp),
            attributes: 0,
        }];
        let size = disk_size(&parts);
        let guid = Uuid::from_u128(9);
        let (full, _) = write(
            std::io::Cursor::new(vec![0u8; size as usize]),
            size,
            guid,
            &parts,
        )
        .unwrap();
        let (sparse, _) = write(SparseDevice::new(size), size, guid, &parts).unwrap();
        let mut rebuilt = vec![0u8; size as usize];
        for (at, bytes) in sparse.extents() {
            rebuilt[at as usize..at as usize + bytes.len()].copy_from_slice(&bytes);
        }
        assert!(rebuilt == full.into_inner());
    }
}
