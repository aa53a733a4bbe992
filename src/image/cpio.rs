//! cpio "newc" archives (the kernel's Documentation/driver-api/early-userspace/
//! buffer-format.rst), the format the kernel unpacks an initramfs from. Entries in path
//! order, parents first; inode numbers assigned in that order; every mtime the given
//! SOURCE_DATE_EPOCH; hard links written as separate copies (an initramfs has few).

use std::io::{self, Write};

use crate::fs::{Kind, Tree};

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;

fn pad4(w: &mut impl Write, len: usize) -> io::Result<()> {
    w.write_all(&[0u8; 3][..(4 - len % 4) % 4])
}

/// One header's numeric fields.
struct Header {
    ino: u32,
    mode: u32,
    uid: u32,
    gid: u32,
    nlink: u32,
    mtime: u64,
}

fn entry(w: &mut impl Write, h: &Header, name: &str, data: &[u8]) -> io::Result<()> {
    let namesize = name.len() + 1;
    // magic, ino, mode, uid, gid, nlink, mtime, filesize, dev major/minor, rdev
    // major/minor, namesize, check
    let header = format!(
        "070701{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{namesize:08x}{:08x}",
        h.ino,
        h.mode,
        h.uid,
        h.gid,
        h.nlink,
        h.mtime as u32,
        data.len(),
        0,
        0,
        0,
        0,
        0
    );
    w.write_all(header.as_bytes())?;
    w.write_all(name.as_bytes())?;
    w.write_all(&[0])?;
    pad4(w, 110 + namesize)?;
    w.write_all(data)?;
    pad4(w, data.len())
}

/// Writes `tree` as a newc archive.
pub fn write<W: Write>(tree: &Tree, mtime: u64, mut w: W) -> io::Result<W> {
    for (ino, (path, e)) in (1u32..).zip(tree.iter()) {
        let (kind, data): (u32, &[u8]) = match &e.kind {
            Kind::Dir => (S_IFDIR, &[]),
            Kind::File(b) => (S_IFREG, b),
            Kind::Symlink(t) => (S_IFLNK, t.as_bytes()),
            Kind::Hardlink(t) => (S_IFREG, tree.read(t).unwrap_or_default()),
        };
        let h = Header {
            ino,
            mode: kind | e.mode,
            uid: e.uid,
            gid: e.gid,
            nlink: if kind == S_IFDIR { 2 } else { 1 },
            mtime,
        };
        entry(&mut w, &h, path, data)?;
    }
    let trailer = Header {
        ino: 0,
        mode: 0,
        uid: 0,
        gid: 0,
        nlink: 1,
        mtime: 0,
    };
    entry(&mut w, &trailer, "TRAILER!!!", &[])?;
    Ok(w)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::Entry;

    #[test]
    fn aligned_and_deterministic() {
        let mut t = Tree::default();
        t.insert("init", Entry::file(b"#!/bin/sh\n".to_vec(), 0o755));
        t.insert("usr/lib/modules/x.ko", Entry::file(vec![1; 5], 0o644));
        t.insert("bin", Entry::symlink("usr/bin"));
        let a = write(&t, 0, Vec::new()).unwrap();
        assert_eq!(a, write(&t, 0, Vec::new()).unwrap());
        assert_eq!(a.len() % 4, 0);
        assert!(a.starts_with(b"070701"));
    }
}
