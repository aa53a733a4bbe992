//! A role's bootable disk, planned in memory from its root tree: squashfs root, its
//! dm-verity hash tree, an initramfs with slipway-init, a UKI whose command line carries
//! the root hash, and a GPT layout with an ESP and A/B root slots. Pure: bytes in, bytes
//! out; writing files is the caller's business.
//!
//! Layout (DPS partition types; UUIDs derived from content):
//!
//! | # | name          | type            | contents                                  |
//! |---|---------------|-----------------|-------------------------------------------|
//! | 1 | esp           | ESP             | FAT32: UKI, node config                   |
//! | 2 | root-a        | root x86-64     | squashfs, read-only (attribute 60)        |
//! | 3 | root-a-verity | root verity     | superblock + hash tree                    |
//! | 4 | root-b        | root x86-64     | empty slot for A/B updates (no-auto, 63)  |
//! | 5 | root-b-verity | root verity     | empty                                     |
//!
//! The node makes its state partition in the free space after these on first boot.

use std::borrow::Cow;
use std::io::Cursor;

use serde::{Deserialize, Serialize};

use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::fs::Tree;
use crate::image::gpt::{self, ALIGN, Part, types};
use crate::image::{esp, initramfs, squashfs, uki, verity};

/// Where the UKI goes on the ESP: the removable-media default path firmware boots with
/// no boot entry, and systemd-boot's Type #2 directory.
pub const UKI_PATHS: [&str; 2] = ["EFI/BOOT/BOOTX64.EFI", "EFI/Linux/slipway.efi"];
/// The node's Ignition config on its ESP.
pub const NODE_CONFIG: &str = "slipway/config.ign";

/// GPT attribute bits from the Discoverable Partitions Specification.
const ATTR_READ_ONLY: u64 = 1 << 60;
const ATTR_NO_AUTO: u64 = 1 << 63;

/// Everything a role's disks are made of.
#[derive(Debug, Clone)]
pub struct RoleDisk {
    pub name: String,
    pub kernel_release: String,
    pub cmdline: String,
    pub initramfs_modules: Vec<String>,
    pub initramfs_size: u64,
    pub uki: Vec<u8>,
    pub uki_sha256: [u8; 32],
    /// The same kernel and initramfs with [`installer_cmdline`]: what install media boot.
    pub installer_uki: Vec<u8>,
    /// The kernel and initramfs inside the UKI, also booted on their own by iPXE (PXE
    /// install mode).
    pub kernel: Vec<u8>,
    pub initrd: Vec<u8>,
    /// The squashfs, padded to the verity block size.
    pub root: Vec<u8>,
    pub verity: verity::Verity,
    pub esp_size: u64,
    pub root_slot: u64,
    pub hash_slot: u64,
}

/// Inputs besides the tree.
pub struct RoleInputs<'a> {
    pub name: &'a str,
    pub init: &'a [u8],
    pub modules: &'a [String],
    pub source_date_epoch: u64,
}

fn round_up(v: u64, to: u64) -> u64 {
    v.div_ceil(to) * to
}

/// Bytes of a hash device (superblock + every level) for `data` bytes of data.
pub fn hash_device_size(data: u64) -> u64 {
    let block = verity::BLOCK as u64;
    let per_block = block / 32;
    let mut blocks = 1; // superblock
    let mut n = data.div_ceil(block);
    // A single data block has no hash level (its digest is the root hash).
    while n > 1 {
        n = n.div_ceil(per_block);
        blocks += n;
    }
    blocks * block
}

/// The kernel command line of a role's UKI.
pub fn cmdline(roothash_hex: &str) -> String {
    // Consoles: the last one is /dev/console (serial, what tests and BMCs read); tty0 shows
    // the kernel's messages on screen too. systemd must not look for DPS partitions
    // itself (slipway-init opened the root); printk.devkmsg=on keeps slipway-init's log
    // lines from being rate-limited.
    format!(
        "console=tty0 console=ttyS0,115200 slipway.roothash={roothash_hex} \
         systemd.gpt_auto=0 printk.devkmsg=on"
    )
}

/// The volume id of Slipway's install media (`slipway iso`), which the installer UKI's
/// command line names: slipway-init installs from the ISO 9660 volume with this id.
pub const INSTALL_VOLUME: &str = "SLIPWAY_INSTALL";

/// The kernel command line of a role's installer UKI (install media): the role's own,
/// and install mode from the medium.
pub fn installer_cmdline(roothash_hex: &str) -> String {
    format!(
        "{} slipway.install.media={INSTALL_VOLUME}",
        cmdline(roothash_hex)
    )
}

impl RoleDisk {
    /// Builds every part of a role's disks from its root tree.
    pub fn assemble(tree: &Tree, inputs: &RoleInputs<'_>) -> Result<RoleDisk, String> {
        initramfs::check_static_init(inputs.init).map_err(|e| format!("slipway-init: {e}"))?;
        let parts = uki::BootParts::from_tree(tree)?;
        // 1. root filesystem and its hash tree
        let mut root = Cursor::new(Vec::new());
        squashfs::write(tree, inputs.source_date_epoch, &mut root)?;
        let mut root = root.into_inner();
        root.resize(
            round_up(root.len() as u64, verity::BLOCK as u64) as usize,
            0,
        );
        let verity = verity::build(&root)?;
        // 2. initramfs and UKI
        let (initrd, names) = initramfs::build(
            tree,
            &parts.uname,
            inputs.modules,
            inputs.init,
            inputs.source_date_epoch,
        )?;
        let cmdline = cmdline(&verity.root_hash_hex());
        let sections = uki::sections(
            &parts.osrel,
            cmdline.as_bytes(),
            parts.uname.as_bytes(),
            &initrd,
            &parts.kernel,
        );
        let uki = uki::assemble(&parts.stub, &sections)?;
        let installer_cmdline = installer_cmdline(&verity.root_hash_hex());
        let installer_uki = uki::assemble(
            &parts.stub,
            &uki::sections(
                &parts.osrel,
                installer_cmdline.as_bytes(),
                parts.uname.as_bytes(),
                &initrd,
                &parts.kernel,
            ),
        )?;
        // 3. sizes: the ESP holds twice the two UKI copies (room for the next version's
        // pair and a config bundle); a root slot is the squashfs plus 5 % for the next
        // version, in 8 MiB steps; a hash slot fits a full root slot's tree.
        let esp_size = round_up(4 * uki.len() as u64 + (8 << 20), 64 << 20).max(esp::MIN_SIZE);
        let root_slot = round_up(root.len() as u64 + root.len() as u64 / 20, 8 << 20);
        let hash_slot = round_up(hash_device_size(root_slot), ALIGN);
        Ok(RoleDisk {
            name: inputs.name.to_string(),
            kernel_release: parts.uname,
            cmdline,
            initramfs_modules: names,
            initramfs_size: initrd.len() as u64,
            uki_sha256: Sha256::digest(&uki).into(),
            uki,
            installer_uki,
            kernel: parts.kernel.clone(),
            initrd,
            root,
            verity,
            esp_size,
            root_slot,
            hash_slot,
        })
    }

    /// The ESP image for a node (`Some(config)`) or the role image (`None`), and its id
    /// ([`esp_id`]).
    pub fn esp(&self, node_config: Option<&[u8]>) -> Result<(Vec<u8>, [u8; 32]), String> {
        build_esp(self.esp_size, &self.uki, &self.uki_sha256, node_config)
    }

    /// The disk's geometry and identity, without its bytes.
    pub fn layout(&self) -> Layout {
        Layout {
            esp_size: self.esp_size,
            root_slot: self.root_slot,
            hash_slot: self.hash_slot,
            root_hash: self.verity.root_hash_hex(),
        }
    }

    /// The whole disk with `esp` (of id `esp_id`) as its ESP; `identity` names the disk
    /// (the role or the node) and seeds its GUID.
    pub fn image<'a>(
        &'a self,
        esp: &'a [u8],
        esp_id: &[u8; 32],
        identity: &str,
    ) -> Result<DiskImage<'a>, String> {
        self.layout()
            .image(esp, esp_id, &self.root, &self.verity.hash_device, identity)
    }

    /// The disk's size in bytes.
    pub fn disk_size(&self) -> u64 {
        self.layout().disk_size()
    }
}

/// A role disk's geometry and identity: what its partition table says, without the bytes
/// (kept between builds, so that node disks can be made from a role disk written before).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Layout {
    pub esp_size: u64,
    pub root_slot: u64,
    pub hash_slot: u64,
    /// The root's dm-verity root hash, hex: the root partitions' UUIDs and every derived
    /// GUID come from it.
    pub root_hash: String,
}

impl Layout {
    fn root_hash_bytes(&self) -> Result<[u8; 32], String> {
        let mut h = [0u8; 32];
        hex::decode_to_slice(&self.root_hash, &mut h)
            .map_err(|e| format!("root hash {:?}: {e}", self.root_hash))?;
        Ok(h)
    }

    /// The partitions of a disk with `esp` as its ESP and `root`/`hash` (or nothing) in
    /// the A slot.
    pub fn parts<'a>(
        &self,
        esp: &'a [u8],
        esp_id: &[u8; 32],
        root: Option<&'a [u8]>,
        hash: Option<&'a [u8]>,
    ) -> Result<Vec<Part<'a>>, String> {
        let rh = self.root_hash_bytes()?;
        let (root_a, hash_a) = root_uuids(&rh);
        let b = derive(&[b"root-b", &rh]);
        let hb = derive(&[b"root-b-verity", &rh]);
        Ok(vec![
            Part {
                name: "esp",
                type_guid: types::ESP,
                uuid: derive(&[b"esp", esp_id]),
                size: self.esp_size,
                contents: Some(esp),
                attributes: 0,
            },
            Part {
                name: "root-a",
                type_guid: types::ROOT_X86_64,
                uuid: root_a,
                size: self.root_slot,
                contents: root,
                attributes: ATTR_READ_ONLY,
            },
            Part {
                name: "root-a-verity",
                type_guid: types::ROOT_VERITY_X86_64,
                uuid: hash_a,
                size: self.hash_slot,
                contents: hash,
                attributes: ATTR_READ_ONLY,
            },
            Part {
                name: "root-b",
                type_guid: types::ROOT_X86_64,
                uuid: b,
                size: self.root_slot,
                contents: None,
                attributes: ATTR_READ_ONLY | ATTR_NO_AUTO,
            },
            Part {
                name: "root-b-verity",
                type_guid: types::ROOT_VERITY_X86_64,
                uuid: hb,
                size: self.hash_slot,
                contents: None,
                attributes: ATTR_READ_ONLY | ATTR_NO_AUTO,
            },
        ])
    }

    /// The disk GUID of the role image (`identity` = role name) or a node's disk (node
    /// name): distinct per disk, stable across builds.
    pub fn disk_guid(&self, identity: &str) -> Result<Uuid, String> {
        Ok(derive(&[
            b"disk",
            identity.as_bytes(),
            &self.root_hash_bytes()?,
        ]))
    }

    pub fn disk_size(&self) -> u64 {
        gpt::disk_size(&self.sizes())
    }

    /// Parts with sizes only, for arithmetic.
    fn sizes(&self) -> Vec<Part<'static>> {
        [
            self.esp_size,
            self.root_slot,
            self.hash_slot,
            self.root_slot,
            self.hash_slot,
        ]
        .into_iter()
        .map(|size| Part {
            name: "",
            type_guid: types::ESP,
            uuid: Uuid::nil(),
            size,
            contents: None,
            attributes: 0,
        })
        .collect()
    }

    /// Where the ESP lies on the disk: (first byte, length of its slot).
    pub fn esp_range(&self) -> (u64, u64) {
        (ALIGN, self.esp_size.div_ceil(ALIGN) * ALIGN)
    }

    /// The disk with `esp` as its ESP and `root`, `hash` in the A slot (borrowed), the
    /// partition tables planned for `identity`.
    pub fn image<'a>(
        &self,
        esp: &'a [u8],
        esp_id: &[u8; 32],
        root: &'a [u8],
        hash: &'a [u8],
        identity: &str,
    ) -> Result<DiskImage<'a>, String> {
        let size = self.disk_size();
        // The tables alone, on a device that keeps only what is written.
        let tables_only: Vec<Part<'_>> = self
            .parts(esp, esp_id, None, None)?
            .into_iter()
            .map(|p| Part {
                contents: None,
                ..p
            })
            .collect();
        let (dev, placed) = gpt::write(
            gpt::SparseDevice::new(size),
            size,
            self.disk_guid(identity)?,
            &tables_only,
        )?;
        let mut extents: Vec<(u64, Cow<'a, [u8]>)> = dev
            .extents()
            .into_iter()
            .map(|(at, b)| (at, Cow::Owned(b)))
            .collect();
        for (bytes, at) in [esp, root, hash].into_iter().zip(&placed) {
            extents.push((at.first_lba * gpt::SECTOR, Cow::Borrowed(bytes)));
        }
        extents.sort_by_key(|(at, _)| *at);
        DiskImage::new(size, extents)
    }
}

/// A disk as the extents that hold data, zeros everywhere else: what the writers plan
/// and `slipway build` writes sparse, hashes and compresses without laying the whole
/// disk out in memory.
pub struct DiskImage<'a> {
    pub size: u64,
    /// Sorted, not overlapping, inside the disk.
    pub extents: Vec<(u64, Cow<'a, [u8]>)>,
}

impl<'a> DiskImage<'a> {
    pub fn new(size: u64, extents: Vec<(u64, Cow<'a, [u8]>)>) -> Result<DiskImage<'a>, String> {
        let mut end = 0;
        for (at, b) in &extents {
            if *at < end || at + b.len() as u64 > size {
                return Err(format!(
                    "disk plan: an extent at {at} (+{}) overlaps another or runs past the disk's {size} bytes",
                    b.len()
                ));
            }
            end = at + b.len() as u64;
        }
        Ok(DiskImage { size, extents })
    }

    /// Feeds the whole disk, zeros included, to `sink` in order.
    pub fn stream(
        &self,
        mut sink: impl FnMut(&[u8]) -> std::io::Result<()>,
    ) -> std::io::Result<()> {
        static ZEROS: [u8; 1 << 16] = [0; 1 << 16];
        let mut pos = 0;
        let gaps = self
            .extents
            .iter()
            .map(|(at, b)| (*at, Some(&b[..])))
            .chain(std::iter::once((self.size, None)));
        for (at, bytes) in gaps {
            let mut gap = at - pos;
            while gap > 0 {
                let k = gap.min(ZEROS.len() as u64);
                sink(&ZEROS[..k as usize])?;
                gap -= k;
            }
            if let Some(b) = bytes {
                sink(b)?;
                pos = at + b.len() as u64;
            }
        }
        Ok(())
    }

    /// The SHA-256 of the whole disk, hex.
    pub fn sha256(&self) -> String {
        let mut h = Sha256::new();
        let _ = self.stream(|b| {
            h.update(b);
            Ok(())
        });
        hex::encode(h.finalize())
    }

    /// The chunks worth writing to a file that reads as zeros: every 64 KiB piece of an
    /// extent that is not all zeros, as (offset, bytes).
    pub fn data_chunks(&self) -> impl Iterator<Item = (u64, &[u8])> {
        const CHUNK: usize = 64 << 10;
        self.extents.iter().flat_map(|(at, b)| {
            b.chunks(CHUNK)
                .enumerate()
                .filter(|(_, c)| !is_zero(c))
                .map(move |(i, c)| (at + (i * CHUNK) as u64, c))
        })
    }
}

/// What names an ESP's contents: a digest of its UKI's SHA-256 and the node's config
/// (the ESP's bytes are a function of these and its size). Its first bytes are the FAT
/// volume id and it seeds the partition's UUID, so that neither needs the ESP's
/// hundreds of MiB hashed.
pub fn esp_id(uki_sha256: &[u8; 32], node_config: Option<&[u8]>) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"slipway-esp-v1\0");
    h.update(uki_sha256);
    match node_config {
        Some(c) => {
            h.update([1]);
            h.update(c);
        }
        None => h.update([0]),
    }
    h.finalize().into()
}

/// The ESP of `esp_size` bytes with `uki` (whose SHA-256 is `uki_sha256`) at both
/// [`UKI_PATHS`] and, for a node, its config at [`NODE_CONFIG`]; and its [`esp_id`].
pub fn build_esp(
    esp_size: u64,
    uki: &[u8],
    uki_sha256: &[u8; 32],
    node_config: Option<&[u8]>,
) -> Result<(Vec<u8>, [u8; 32]), String> {
    let id = esp_id(uki_sha256, node_config);
    let mut files: Vec<(&str, &[u8])> = UKI_PATHS.iter().map(|p| (*p, uki)).collect();
    if let Some(c) = node_config {
        files.push((NODE_CONFIG, c));
    }
    let volume_id = u32::from_le_bytes([id[0], id[1], id[2], id[3]]);
    let bytes = esp::build_with_volume_id(esp_size, "SLIPWAY", &files, volume_id)
        .map_err(|e| format!("building the ESP: {e}"))?;
    Ok((bytes, id))
}

/// Whether `b` is all zeros, a word at a time.
pub fn is_zero(b: &[u8]) -> bool {
    let (words, rest) = b.as_chunks::<16>();
    words.iter().all(|w| u128::from_ne_bytes(*w) == 0) && rest.iter().all(|&x| x == 0)
}

/// The root and hash partition UUIDs: the root hash's first and last 128 bits (the
/// Discoverable Partitions Specification's convention, which slipway-init follows).
pub fn root_uuids(root_hash: &[u8; 32]) -> (Uuid, Uuid) {
    let mut a = [0u8; 16];
    let mut b = [0u8; 16];
    a.copy_from_slice(&root_hash[..16]);
    b.copy_from_slice(&root_hash[16..]);
    (Uuid::from_bytes(a), Uuid::from_bytes(b))
}

/// A version-4-shaped UUID from a hash of `parts`.
fn derive(parts: &[&[u8]]) -> Uuid {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p);
    }
    let d = h.finalize();
    let mut b = [0u8; 16];
    b.copy_from_slice(&d[..16]);
    uuid::Builder::from_random_bytes(b).into_uuid()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_planned_image_equals_the_disk_laid_out_in_memory() {
        let esp = vec![0x11u8; 3 << 20];
        let root = vec![0x22u8; 5 << 20];
        let hash = vec![0x33u8; 1 << 20];
        let layout = Layout {
            esp_size: 4 << 20,
            root_slot: 8 << 20,
            hash_slot: 1 << 20,
            root_hash: "ab".repeat(32),
        };
        let id = [5u8; 32];
        let image = layout.image(&esp, &id, &root, &hash, "node1").unwrap();
        let mut planned = Vec::new();
        image
            .stream(|b| {
                planned.extend_from_slice(b);
                Ok(())
            })
            .unwrap();
        let size = layout.disk_size();
        let parts = layout.parts(&esp, &id, Some(&root), Some(&hash)).unwrap();
        let (full, placed) = gpt::write(
            Cursor::new(vec![0u8; size as usize]),
            size,
            layout.disk_guid("node1").unwrap(),
            &parts,
        )
        .unwrap();
        let full = full.into_inner();
        assert!(
            planned == full,
            "the planned disk differs from the laid-out one"
        );
        assert_eq!(image.sha256(), hex::encode(Sha256::digest(&full)));
        let (esp_at, esp_len) = layout.esp_range();
        assert_eq!(esp_at, placed[0].first_lba * gpt::SECTOR);
        assert_eq!(
            esp_len,
            (placed[0].last_lba + 1 - placed[0].first_lba) * gpt::SECTOR
        );
        // Written sparse: the chunks with data, and only them.
        let mut sparse = vec![0u8; size as usize];
        for (at, c) in image.data_chunks() {
            assert!(c.iter().any(|&b| b != 0));
            sparse[at as usize..at as usize + c.len()].copy_from_slice(c);
        }
        assert!(sparse == full);
    }

    #[test]
    fn hash_sizes() {
        // 300 blocks -> 3 level-0 blocks -> 1 level-1 block, + superblock = 5 blocks
        assert_eq!(hash_device_size(300 * 4096), 5 * 4096);
        // one block: no level, the superblock only
        assert_eq!(hash_device_size(4096), 4096);
        // 128 blocks exactly fill one hash block
        assert_eq!(hash_device_size(128 * 4096), 2 * 4096);
    }

    #[test]
    fn built_trees_fit_the_computed_size() {
        for blocks in [1usize, 127, 128, 129, 300, 16385] {
            let data = vec![1u8; blocks * 4096];
            let v = verity::build(&data).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(
                v.hash_device.len() as u64,
                hash_device_size(data.len() as u64),
                "{blocks} blocks"
            );
        }
    }
}
