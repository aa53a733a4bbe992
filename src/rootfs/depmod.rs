//! The module indexes a booted node's modprobe and udev need (modules.dep, .alias, their
//! .bin tries, ...). Debian's kernel postinst runs depmod; here the host's `depmod -b`
//! runs over a scratch copy of the image's modules (the index format is kmod's stable
//! v2, read by every kmod since 2012) and its output is laid back into the tree.
//!
//! depmod decompresses every module on one core (5.5 s for Debian's 108 MiB of modules
//! here), so its output is kept in the build cache under `depmod/KEY`, KEY being the
//! SHA-256 of the depmod version and every module file's path and bytes.

use std::path::Path;
use std::process::Command;

use sha2::{Digest, Sha256};

use crate::fs::{Entry, Tree};

/// Runs depmod (or takes its cached output from `cache`) for every kernel under
/// usr/lib/modules in `tree` and adds its output.
pub fn run(tree: &mut Tree, cache: &Path) -> Result<(), String> {
    let releases: Vec<String> = tree
        .children("usr/lib/modules")
        .into_iter()
        .map(|p| p.rsplit('/').next().unwrap_or(p).to_string())
        .collect();
    for release in releases {
        one(tree, &release, cache)?;
    }
    Ok(())
}

fn depmod_version() -> Result<String, String> {
    let out = Command::new("depmod")
        .arg("--version")
        .output()
        .map_err(|e| format!("running depmod (package kmod): {e}"))?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn one(tree: &mut Tree, release: &str, cache: &Path) -> Result<(), String> {
    let prefix = format!("usr/lib/modules/{release}/");
    let mut key = Sha256::new();
    key.update(depmod_version()?.as_bytes());
    for (p, _) in tree.iter().filter(|(p, _)| p.starts_with(&prefix)) {
        if let Some(bytes) = tree.read(p) {
            key.update(p.as_bytes());
            key.update([0]);
            key.update((bytes.len() as u64).to_le_bytes());
            key.update(bytes);
        }
    }
    let cached = cache.join("depmod").join(hex::encode(key.finalize()));
    if !cached.is_dir() {
        let made = depmod(tree, release, &prefix)?;
        store(&cached, &made)?;
    }
    let mut names: Vec<String> = std::fs::read_dir(&cached)
        .map_err(|e| format!("{}: {e}", cached.display()))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    for name in names {
        let p = cached.join(&name);
        let bytes = std::fs::read(&p).map_err(|e| format!("{}: {e}", p.display()))?;
        tree.insert(&format!("{prefix}{name}"), Entry::file(bytes, 0o644));
    }
    Ok(())
}

/// Writes depmod's output into the cache directory `dir` atomically (staged under a
/// locked temporary name, renamed).
pub(crate) fn store(dir: &Path, files: &[(String, Vec<u8>)]) -> Result<(), String> {
    let parent = dir.parent().unwrap_or(dir);
    std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
    let staged = crate::fsutil::TempDir::beside(dir, 0o755)
        .map_err(|e| format!("{}: {e}", parent.display()))?;
    for (name, bytes) in files {
        let p = staged.path().join(name);
        std::fs::write(&p, bytes).map_err(|e| format!("{}: {e}", p.display()))?;
    }
    if let Err(e) = staged.persist(dir) {
        // Another build stored the same key first: fine (the staged copy is removed).
        if !dir.is_dir() {
            return Err(format!("{}: {e}", dir.display()));
        }
    }
    Ok(())
}

/// Runs the host's depmod over a scratch copy; returns the files it wrote.
fn depmod(tree: &Tree, release: &str, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, String> {
    let scratch = tempfile::tempdir().map_err(|e| format!("depmod scratch directory: {e}"))?;
    let base = scratch.path().join("lib/modules").join(release);
    let mut before = std::collections::BTreeSet::new();
    for (p, _) in tree.iter().filter(|(p, _)| p.starts_with(prefix)) {
        let Some(bytes) = tree.read(p) else { continue };
        let rel = &p[prefix.len()..];
        before.insert(rel.to_string());
        let dst = base.join(rel);
        if let Some(parent) = dst.parent() {
            std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
        }
        std::fs::write(&dst, bytes).map_err(|e| format!("{}: {e}", dst.display()))?;
    }
    let out = Command::new("depmod")
        .arg("-b")
        .arg(scratch.path())
        .arg(release)
        .output()
        .map_err(|e| format!("running depmod (package kmod): {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "depmod {release} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    generated(&base, &before)?
        .into_iter()
        .map(|name| {
            let p = base.join(&name);
            std::fs::read(&p)
                .map(|b| (name, b))
                .map_err(|e| format!("{}: {e}", p.display()))
        })
        .collect()
}

/// The modules.* files depmod wrote (those that were not there before).
fn generated(
    base: &Path,
    before: &std::collections::BTreeSet<String>,
) -> Result<Vec<String>, String> {
    let mut names: Vec<String> = std::fs::read_dir(base)
        .map_err(|e| format!("{}: {e}", base.display()))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("modules.") && !before.contains(n))
        .collect();
    names.sort();
    if !names.iter().any(|n| n == "modules.dep.bin") {
        return Err(format!(
            "depmod wrote no modules.dep.bin under {}",
            base.display()
        ));
    }
    Ok(names)
}
