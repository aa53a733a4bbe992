//! The hardware database udev reads (`usr/lib/udev/hwdb.bin`), compiled at build time.
//! Debian leaves it to systemd-hwdb-update.service on the first boot, where it costs a
//! node half a minute of CPU (under TCG with four machines on two cores it ran past its
//! two-minute limit and failed the boot); with the file in the image the unit's
//! conditions skip it (it runs when `hwdb.bin` is missing, or `/etc/udev/hwdb.d` has
//! something), and `/usr`, where it lies, is read-only anyway.
//!
//! The host's `systemd-hwdb update --usr` (package udev) compiles the image's own
//! `usr/lib/udev/hwdb.d/*.hwdb`, laid into a merged-/usr scratch directory; the format
//! ("KSLPHHRH", sized header and entries) is read alike by every systemd since 2013. The
//! result is kept in the build cache under `hwdb/KEY` (KEY: the tool's version and
//! every source file), as depmod's is.

use std::path::Path;
use std::process::Command;

use sha2::{Digest, Sha256};

use crate::fs::{Entry, Tree};

const SOURCES: &str = "usr/lib/udev/hwdb.d/";
const OUTPUT: &str = "usr/lib/udev/hwdb.bin";

/// Compiles the tree's hwdb sources (or takes the result from `cache`) into
/// `usr/lib/udev/hwdb.bin`. A tree without sources is left as it is.
pub fn run(tree: &mut Tree, cache: &Path) -> Result<(), String> {
    let sources: Vec<(String, Vec<u8>)> = tree
        .iter()
        .filter(|(p, _)| p.starts_with(SOURCES) && p.ends_with(".hwdb"))
        .filter_map(|(p, _)| tree.read(p).map(|b| (p.clone(), b.to_vec())))
        .collect();
    if sources.is_empty() {
        return Ok(());
    }
    let version = Command::new("systemd-hwdb")
        .arg("--version")
        .output()
        .map_err(|e| format!("running systemd-hwdb (package udev): {e}"))?
        .stdout;
    let mut key = Sha256::new();
    // What is done to the tool's output is part of what is cached.
    key.update(b"slipway hwdb, unrooted\0");
    key.update(&version);
    for (p, b) in &sources {
        key.update(p.as_bytes());
        key.update([0]);
        key.update((b.len() as u64).to_le_bytes());
        key.update(b);
    }
    let cached = cache.join("hwdb").join(hex::encode(key.finalize()));
    let bin = cached.join("hwdb.bin");
    if !bin.is_file() {
        let made = compile(&sources)?;
        super::depmod::store(&cached, &[("hwdb.bin".to_string(), made)])?;
    }
    let bytes = std::fs::read(&bin).map_err(|e| format!("{}: {e}", bin.display()))?;
    tree.insert(OUTPUT, Entry::file(bytes, 0o444));
    Ok(())
}

fn compile(sources: &[(String, Vec<u8>)]) -> Result<Vec<u8>, String> {
    // Under /tmp itself with a name of fixed length, whatever TMPDIR says: the path's
    // length is all of it that stays in the output (see `unroot`).
    let scratch = tempfile::Builder::new()
        .prefix("slipway-hwdb-")
        .rand_bytes(8)
        .tempdir_in("/tmp")
        .or_else(|_| tempfile::tempdir())
        .map_err(|e| format!("hwdb scratch directory: {e}"))?;
    // Merged-/usr, as the image is: a host systemd built for /lib/udev (Debian 12's)
    // reads and writes there, a newer one /usr/lib/udev; both land in usr/lib/udev.
    std::os::unix::fs::symlink("usr/lib", scratch.path().join("lib"))
        .map_err(|e| format!("hwdb scratch directory: {e}"))?;
    for (p, b) in sources {
        let dst = scratch.path().join(p);
        if let Some(parent) = dst.parent() {
            std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
        }
        std::fs::write(&dst, b).map_err(|e| format!("{}: {e}", dst.display()))?;
    }
    let out = Command::new("systemd-hwdb")
        .args(["update", "--usr", "--strict", "--root"])
        .arg(scratch.path())
        .output()
        .map_err(|e| format!("running systemd-hwdb (package udev): {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "systemd-hwdb update failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let bin = scratch.path().join(OUTPUT);
    let mut bytes = std::fs::read(&bin).map_err(|e| format!("{}: {e}", bin.display()))?;
    if !bytes.starts_with(b"KSLPHHRH") {
        return Err(format!(
            "{}: not a hwdb (no KSLPHHRH signature)",
            bin.display()
        ));
    }
    let root = scratch
        .path()
        .canonicalize()
        .map_err(|e| format!("{}: {e}", scratch.path().display()))?;
    unroot(&mut bytes, root.to_string_lossy().as_bytes())?;
    Ok(bytes)
}

/// systemd-hwdb records each entry's source file by its absolute path, scratch directory
/// included, which would make the bytes differ from build to build. Each `ROOT/` becomes
/// as many slashes (`///////usr/lib/udev/hwdb.d/...`, the same file): the strings keep
/// their lengths, so no offset in the database moves.
fn unroot(bytes: &mut [u8], root: &[u8]) -> Result<(), String> {
    let mut needle = root.to_vec();
    needle.push(b'/');
    let mut found = 0;
    let mut i = 0;
    while let Some(at) = bytes[i..]
        .windows(needle.len())
        .position(|w| w == needle.as_slice())
    {
        let start = i + at;
        bytes[start..start + root.len()].fill(b'/');
        found += 1;
        i = start + needle.len();
    }
    if found == 0 {
        return Err(format!(
            "systemd-hwdb's output does not name its sources under {}: a format this build does not know",
            String::from_utf8_lossy(root)
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_scratch_root_is_replaced_in_place() {
        let mut b = b"xx/tmp/.tmpAB/usr/lib/udev/hwdb.d/20-OUI.hwdb\0/tmp/.tmpAB/x\0".to_vec();
        let len = b.len();
        super::unroot(&mut b, b"/tmp/.tmpAB").unwrap();
        assert_eq!(b.len(), len);
        assert_eq!(
            &b[..],
            &b"xx////////////usr/lib/udev/hwdb.d/20-OUI.hwdb\0////////////x\0"[..]
        );
        assert!(super::unroot(&mut b, b"/nowhere").is_err());
    }
}
