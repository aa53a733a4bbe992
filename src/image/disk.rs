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

use std::io::Cursor;

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

    /// The ESP's files: the UKI at both paths and, for a node, its config.
    pub fn esp_files(&self, node_config: Option<&[u8]>) -> Vec<(String, Vec<u8>)> {
        let mut files: Vec<(String, Vec<u8>)> = UKI_PATHS
            .iter()
            .map(|p| (p.to_string(), self.uki.clone()))
            .collect();
        if let Some(c) = node_config {
            files.push((NODE_CONFIG.to_string(), c.to_vec()));
        }
        files
    }

    /// The ESP image for a node (`Some(config)`) or the role image (`None`).
    pub fn esp(&self, node_config: Option<&[u8]>) -> Result<Vec<u8>, String> {
        esp::build(self.esp_size, "SLIPWAY", &self.esp_files(node_config))
            .map_err(|e| format!("building the ESP: {e}"))
    }

    /// The partitions of a disk with `esp` as its ESP; `identity` names the disk (the role
    /// or the node) and seeds the disk and ESP GUIDs.
    pub fn parts<'a>(&'a self, esp: &'a [u8]) -> Vec<Part<'a>> {
        let (root_a, hash_a) = root_uuids(&self.verity.root_hash);
        let b = derive(&[b"root-b", &self.verity.root_hash]);
        let hb = derive(&[b"root-b-verity", &self.verity.root_hash]);
        vec![
            Part {
                name: "esp",
                type_guid: types::ESP,
                uuid: derive(&[b"esp", &Sha256::digest(esp)]),
                size: self.esp_size,
                contents: Some(esp),
                attributes: 0,
            },
            Part {
                name: "root-a",
                type_guid: types::ROOT_X86_64,
                uuid: root_a,
                size: self.root_slot,
                contents: Some(&self.root),
                attributes: ATTR_READ_ONLY,
            },
            Part {
                name: "root-a-verity",
                type_guid: types::ROOT_VERITY_X86_64,
                uuid: hash_a,
                size: self.hash_slot,
                contents: Some(&self.verity.hash_device),
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
        ]
    }

    /// The disk GUID of the role image (`identity` = role name) or a node's disk (node
    /// name): distinct per disk, stable across builds.
    pub fn disk_guid(&self, identity: &str) -> Uuid {
        derive(&[b"disk", identity.as_bytes(), &self.verity.root_hash])
    }

    /// The whole disk, in memory (tests; the builder streams to a file instead).
    pub fn disk_size(&self) -> u64 {
        gpt::disk_size(&self.parts(&[]))
    }
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
