//! Writers: pure byte producers over an image tree. Each takes a [`crate::fs::Tree`] (or
//! bytes) and writes to one `Write`; none touches the network or renames files.

pub mod cpio;
pub mod disk;
pub mod esp;
pub mod gpt;
pub mod initramfs;
pub mod modules;
pub mod squashfs;
pub mod tar;
pub mod uki;
pub mod verity;
