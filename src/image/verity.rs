//! dm-verity hash trees (the kernel's Documentation/admin-guide/device-mapper/verity.rst,
//! hash format 1, as `veritysetup format` writes them), with cryptsetup's 512-byte VERITY
//! superblock in the first hash block so `veritysetup verify DATA HASH ROOT` needs no
//! other parameters.
//!
//! Level 0 holds the digest of every data block; each higher level the digests of the
//! level below's hash blocks, until one block remains; the root hash is that block's
//! digest. Every digest is SHA-256(salt || block). On the hash device the levels follow
//! the superblock root-most level first. The salt and UUID are derived from the data, so
//! the same data gives the same bytes.

use sha2::{Digest, Sha256};

/// Data and hash block size: the page size, what systemd and veritysetup default to.
pub const BLOCK: usize = 4096;
const DIGEST: usize = 32;
const SUPERBLOCK_SIZE: usize = 512;

/// A hash device image and what a verifier needs to know about it.
#[derive(Debug, Clone)]
pub struct Verity {
    /// Superblock block followed by the hash levels.
    pub hash_device: Vec<u8>,
    pub root_hash: [u8; DIGEST],
    pub salt: [u8; DIGEST],
    pub uuid: [u8; 16],
    pub data_blocks: u64,
}

impl Verity {
    pub fn root_hash_hex(&self) -> String {
        hex::encode(self.root_hash)
    }

    pub fn uuid_string(&self) -> String {
        let h = hex::encode(self.uuid);
        format!(
            "{}-{}-{}-{}-{}",
            &h[0..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..32]
        )
    }
}

fn digest(salt: &[u8], block: &[u8]) -> [u8; DIGEST] {
    let mut h = Sha256::new();
    h.update(salt);
    h.update(block);
    h.finalize().into()
}

/// Builds the hash device for `data`, whose length must be a multiple of [`BLOCK`].
pub fn build(data: &[u8]) -> Result<Verity, String> {
    if data.is_empty() || !data.len().is_multiple_of(BLOCK) {
        return Err(format!(
            "verity data must be a non-empty multiple of {BLOCK} bytes, not {}",
            data.len()
        ));
    }
    let content = Sha256::digest(data);
    let salt: [u8; DIGEST] = Sha256::new()
        .chain_update(b"slipway verity salt")
        .chain_update(content)
        .finalize()
        .into();
    let mut uuid = [0u8; 16];
    uuid.copy_from_slice(
        &Sha256::new()
            .chain_update(b"slipway verity uuid")
            .chain_update(content)
            .finalize()[..16],
    );
    // RFC 4122 version 4 / variant bits, as a random UUID would carry.
    uuid[6] = (uuid[6] & 0x0f) | 0x40;
    uuid[8] = (uuid[8] & 0x3f) | 0x80;

    // Level 0 from the data, then upwards; each level is whole hash blocks. The number
    // of levels is cryptsetup's (lib/verity/verity_hash.c): the smallest L with
    // (data_blocks - 1) >> (L * log2(digests per block)) == 0. A single data block has no
    // hash level at all: its own digest is the root hash.
    let per_block = BLOCK / DIGEST;
    let bits = per_block.trailing_zeros();
    let n_data = (data.len() / BLOCK) as u64;
    let n_levels = (0u32..)
        .find(|l| (n_data - 1).checked_shr(l * bits).unwrap_or(0) == 0)
        .unwrap_or(0);
    let mut levels: Vec<Vec<u8>> = Vec::new();
    let mut below: Vec<[u8; DIGEST]> = data.chunks(BLOCK).map(|b| digest(&salt, b)).collect();
    for _ in 0..n_levels {
        let mut level = Vec::with_capacity(below.len().div_ceil(per_block) * BLOCK);
        for chunk in below.chunks(per_block) {
            let start = level.len();
            for d in chunk {
                level.extend_from_slice(d);
            }
            level.resize(start + BLOCK, 0);
        }
        below = level.chunks(BLOCK).map(|b| digest(&salt, b)).collect();
        levels.push(level);
    }
    let root_hash = below[0];

    let data_blocks = n_data;
    let mut sb = vec![0u8; BLOCK];
    sb[0..8].copy_from_slice(b"verity\0\0");
    sb[8..12].copy_from_slice(&1u32.to_le_bytes()); // superblock version
    sb[12..16].copy_from_slice(&1u32.to_le_bytes()); // hash type: format 1
    sb[16..32].copy_from_slice(&uuid);
    sb[32..38].copy_from_slice(b"sha256");
    sb[64..68].copy_from_slice(&(BLOCK as u32).to_le_bytes());
    sb[68..72].copy_from_slice(&(BLOCK as u32).to_le_bytes());
    sb[72..80].copy_from_slice(&data_blocks.to_le_bytes());
    sb[80..82].copy_from_slice(&(DIGEST as u16).to_le_bytes());
    sb[88..88 + DIGEST].copy_from_slice(&salt);
    // salt[256] and pad[168] follow: the superblock ends at 512.
    const { assert!(88 + 256 + 168 == SUPERBLOCK_SIZE) };

    let mut hash_device = sb;
    for level in levels.iter().rev() {
        hash_device.extend_from_slice(level);
    }
    Ok(Verity {
        hash_device,
        root_hash,
        salt,
        uuid,
        data_blocks,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_determinism() {
        let data = vec![7u8; BLOCK * 300];
        let a = build(&data).unwrap();
        // 300 data blocks -> 3 level-0 blocks -> 1 level-1 block; plus the superblock.
        assert_eq!(a.hash_device.len(), BLOCK * (1 + 1 + 3));
        // 128 blocks: one level of one block; 1 block: no level.
        assert_eq!(
            build(&data[..BLOCK * 128]).unwrap().hash_device.len(),
            BLOCK * 2
        );
        assert_eq!(build(&data[..BLOCK]).unwrap().hash_device.len(), BLOCK);
        assert_eq!(build(&data).unwrap().hash_device, a.hash_device);
        let mut other = data.clone();
        other[5] = 8;
        assert_ne!(build(&other).unwrap().root_hash, a.root_hash);
        assert!(build(&data[..100]).is_err());
    }
}
