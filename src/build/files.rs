//! The build's large files: disks written sparse, node disks made from their role disk
//! by a clone (FICLONE, where the filesystem shares extents: XFS, Btrfs) or a copy of its
//! data extents, then patched where they differ (partition tables and ESP), and the
//! SHA-256 of a sparse file computed without reading its holes.
//!
//! Holes are found with `lseek(SEEK_DATA/SEEK_HOLE)`: reading a hole makes the kernel
//! zero a page for every 4 KiB of it, which for a disk that is mostly empty slots is most
//! of the work.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use sha2::{Digest, Sha256};

use crate::image::disk::DiskImage;

/// What writing a file cost, for the build's own account (and `make bench`).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    /// Bytes this process wrote (including what the kernel copied for it).
    pub bytes: u64,
    /// The file was made by a clone of another: extents shared, nothing copied.
    pub cloned: bool,
}

const CHUNK: usize = 64 << 10;

/// Writes `image` into `file` (new and empty): its size, then every chunk that holds data.
pub fn write_image(file: &File, image: &DiskImage<'_>) -> io::Result<Written> {
    file.set_len(image.size)?;
    let mut bytes = 0;
    for (at, chunk) in image.data_chunks() {
        file.write_all_at(chunk, at)?;
        bytes += chunk.len() as u64;
    }
    Ok(Written {
        bytes,
        cloned: false,
    })
}

/// The data extents of `file` as (start, end), holes left out.
pub fn data_ranges(file: &File) -> io::Result<Vec<(u64, u64)>> {
    use rustix::fs::{SeekFrom, seek};
    let size = file.metadata()?.len();
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < size {
        let start = match seek(file, SeekFrom::Data(pos)) {
            Ok(p) => p,
            // ENXIO: no data after `pos`.
            Err(rustix::io::Errno::NXIO) => break,
            // A filesystem without SEEK_DATA: all of it is data.
            Err(rustix::io::Errno::INVAL) | Err(rustix::io::Errno::OPNOTSUPP) => {
                out.push((pos, size));
                break;
            }
            Err(e) => return Err(e.into()),
        };
        let end = seek(file, SeekFrom::Hole(start)).map_err(io::Error::from)?;
        if end <= start {
            break;
        }
        out.push((start, end.min(size)));
        pos = end;
    }
    Ok(out)
}

/// (size, hex SHA-256) of a file that may be sparse: its data extents read, its holes
/// hashed as the zeros they read as.
pub fn sparse_sha256(file: &File) -> io::Result<(u64, String)> {
    static ZEROS: [u8; CHUNK] = [0; CHUNK];
    let size = file.metadata()?.len();
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut pos = 0;
    for (start, end) in data_ranges(file)?.into_iter().chain([(size, size)]) {
        while pos < start {
            let k = (start - pos).min(CHUNK as u64);
            h.update(&ZEROS[..k as usize]);
            pos += k;
        }
        while pos < end {
            let k = ((end - pos) as usize).min(buf.len());
            file.read_exact_at(&mut buf[..k], pos)?;
            h.update(&buf[..k]);
            pos += k as u64;
        }
    }
    Ok((size, hex::encode(h.finalize())))
}

/// Makes `dst` (new and empty) a copy of `src`: a clone sharing its extents where the
/// filesystem can (FICLONE), else a copy of its data extents only (copy_file_range, so
/// the kernel moves the bytes), holes kept.
pub fn clone_or_copy(src: &File, dst: &File) -> io::Result<Written> {
    if rustix::fs::ioctl_ficlone(dst, src).is_ok() {
        return Ok(Written {
            bytes: 0,
            cloned: true,
        });
    }
    let size = src.metadata()?.len();
    dst.set_len(size)?;
    let mut bytes = 0;
    for (start, end) in data_ranges(src)? {
        let (mut from, mut to) = (start, start);
        while from < end {
            let want = ((end - from) as usize).min(1 << 30);
            match rustix::fs::copy_file_range(src, Some(&mut from), dst, Some(&mut to), want) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the source ended early",
                    ));
                }
                Ok(n) => bytes += n as u64,
                // No in-kernel copy between these files: through memory.
                Err(
                    rustix::io::Errno::XDEV
                    | rustix::io::Errno::NOSYS
                    | rustix::io::Errno::INVAL
                    | rustix::io::Errno::OPNOTSUPP,
                ) => {
                    let mut buf = vec![0u8; CHUNK];
                    while from < end {
                        let k = ((end - from) as usize).min(CHUNK);
                        src.read_exact_at(&mut buf[..k], from)?;
                        dst.write_all_at(&buf[..k], to)?;
                        from += k as u64;
                        to += k as u64;
                        bytes += k as u64;
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(Written {
        bytes,
        cloned: false,
    })
}

/// Makes the bytes of `file` at `at` equal `want`, writing only the 64 KiB chunks that
/// differ; a chunk that becomes all zeros is punched out (a hole again) where the
/// filesystem can. Returns the bytes written.
pub fn patch(file: &File, at: u64, want: &[u8]) -> io::Result<u64> {
    use rustix::fs::{FallocateFlags, fallocate};
    let mut have = vec![0u8; CHUNK];
    let mut written = 0;
    for (i, chunk) in want.chunks(CHUNK).enumerate() {
        let off = at + (i * CHUNK) as u64;
        let have = &mut have[..chunk.len()];
        file.read_exact_at(have, off)?;
        if have == chunk {
            continue;
        }
        let zero = crate::image::disk::is_zero(chunk);
        let punched = zero
            && fallocate(
                file,
                FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
                off,
                chunk.len() as u64,
            )
            .is_ok();
        if !punched {
            file.write_all_at(chunk, off)?;
            written += chunk.len() as u64;
        }
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::borrow::Cow;

    fn image(size: u64, extents: Vec<(u64, Vec<u8>)>) -> DiskImage<'static> {
        DiskImage::new(
            size,
            extents
                .into_iter()
                .map(|(a, b)| (a, Cow::Owned(b)))
                .collect(),
        )
        .unwrap()
    }

    fn whole(image: &DiskImage<'_>) -> Vec<u8> {
        let mut v = Vec::new();
        image
            .stream(|b| {
                v.extend_from_slice(b);
                Ok(())
            })
            .unwrap();
        v
    }

    #[test]
    fn a_sparse_disk_is_written_hashed_copied_and_patched_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let size = 8 << 20;
        let base = image(
            size,
            vec![
                (0, vec![1u8; 4096]),
                (1 << 20, vec![2u8; 300_000]),
                (size - 4096, vec![3u8; 4096]),
            ],
        );
        let new = |name: &str| {
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(dir.path().join(name))
                .unwrap()
        };
        let a = new("a.raw");
        let w = write_image(&a, &base).unwrap();
        assert!(w.bytes < 1 << 20, "{w:?}: holes are not written");
        let bytes = whole(&base);
        assert_eq!(
            sparse_sha256(&a).unwrap(),
            (size, hex::encode(Sha256::digest(&bytes)))
        );
        assert_eq!(std::fs::read(dir.path().join("a.raw")).unwrap(), bytes);

        let b = new("b.raw");
        clone_or_copy(&a, &b).unwrap();
        assert_eq!(std::fs::read(dir.path().join("b.raw")).unwrap(), bytes);
        // The node's own bytes over the role's: one chunk changed, one zeroed, one new.
        let mut want = vec![2u8; 300_000];
        want[70_000] = 9;
        want[..CHUNK].fill(0);
        let n = patch(&b, 1 << 20, &want).unwrap();
        assert!(
            n <= 2 * CHUNK as u64,
            "{n} bytes written for a two-chunk change"
        );
        let mut expect = bytes.clone();
        expect[(1 << 20)..(1 << 20) + want.len()].copy_from_slice(&want);
        assert_eq!(std::fs::read(dir.path().join("b.raw")).unwrap(), expect);
        assert_eq!(
            sparse_sha256(&b).unwrap().1,
            hex::encode(Sha256::digest(&expect))
        );
    }
}
