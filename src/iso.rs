//! `slipway iso`: install media for one node, for BMC virtual media, a CD or a USB stick.
//!
//! The ISO holds the node's role disk (`slipway/disk.img.zst`, as served over PXE), its
//! Ignition config (`slipway/config.ign`) and its install parameters
//! (`slipway/install.cmdline`: image hash and size, install disk, wipe), and boots the
//! role's installer UKI (the role's kernel and initramfs with
//! `slipway.install.media=SLIPWAY_INSTALL`) from an EFI system partition: El Torito for a
//! CD or virtual media, the same FAT image as GPT partition 2 for a USB stick (hybrid).
//! slipway-init finds the ISO 9660 volume by its id, installs from it and powers off
//! (docs/pxe.md, "Install media").
//!
//! Everything comes from a finished `slipway build` output; the ISO file is written by
//! xorriso (the ISO 9660 / El Torito / hybrid GPT writer Debian's own images use) under a
//! temporary name and renamed, 0600 since it carries the node's keys.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::cluster::Cluster;
use crate::image::disk::INSTALL_VOLUME;
use crate::image::esp;

#[derive(Debug, thiserror::Error)]
pub enum IsoError {
    #[error(transparent)]
    Cluster(#[from] crate::cluster::LoadError),
    #[error("{cluster}: no node {node} (nodes: {known})")]
    NoNode {
        cluster: PathBuf,
        node: String,
        known: String,
    },
    #[error("{}: {reason}; run `slipway build` for this cluster first", path.display())]
    NotBuilt { path: PathBuf, reason: String },
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("xorriso (package xorriso) writing {}: {reason}", path.display())]
    Xorriso { path: PathBuf, reason: String },
}

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> IsoError + use<> {
    let path = path.to_owned();
    move |source| IsoError::Io { what, path, source }
}

pub struct IsoOptions {
    pub cluster: PathBuf,
    /// The `slipway build` output directory.
    pub out_dir: PathBuf,
    pub node: String,
    /// Where to write [default: OUT/nodes/NODE/install.iso].
    pub iso: Option<PathBuf>,
    /// Timestamps inside the ISO (xorriso honours SOURCE_DATE_EPOCH).
    pub source_date_epoch: u64,
}

/// Writes the node's install ISO; returns its path.
pub fn write(opts: &IsoOptions) -> Result<PathBuf, IsoError> {
    let (cluster, _) = Cluster::load(&opts.cluster)?;
    let node = cluster
        .nodes
        .iter()
        .find(|n| n.name == opts.node)
        .ok_or_else(|| IsoError::NoNode {
            cluster: opts.cluster.clone(),
            node: opts.node.clone(),
            known: cluster
                .nodes
                .iter()
                .map(|n| n.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        })?;
    let role = node.role.as_str();
    let out = &opts.out_dir;

    // The raw role disk's size and hash, as the build recorded them.
    let manifest_path = out.join("manifest.json");
    let not_built = |path: &Path, reason: String| IsoError::NotBuilt {
        path: path.to_owned(),
        reason,
    };
    let manifest: serde_json::Value = fs::read(&manifest_path)
        .map_err(|e| not_built(&manifest_path, e.to_string()))
        .and_then(|b| {
            serde_json::from_slice(&b).map_err(|e| not_built(&manifest_path, e.to_string()))
        })?;
    let raw = format!("images/{role}.raw");
    let artifact = manifest["artifacts"]
        .as_array()
        .and_then(|a| a.iter().find(|x| x["path"] == raw.as_str()))
        .ok_or_else(|| not_built(&manifest_path, format!("no {raw} listed")))?;
    let (Some(size), Some(sha256)) = (artifact["size"].as_u64(), artifact["sha256"].as_str())
    else {
        return Err(not_built(
            &manifest_path,
            format!("{raw} has no size or sha256"),
        ));
    };
    let read = |p: PathBuf| fs::read(&p).map_err(|e| not_built(&p, e.to_string()));
    let installer = read(out.join("pxe").join(role).join("installer.efi"))?;
    let config = read(out.join("nodes").join(&node.name).join("config.ign"))?;
    let image = out.join("pxe").join(role).join("disk.img.zst");
    fs::metadata(&image).map_err(|e| not_built(&image, e.to_string()))?;

    let iso = opts
        .iso
        .clone()
        .unwrap_or_else(|| out.join("nodes").join(&node.name).join("install.iso"));
    let parent = iso
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    // Staged beside the ISO, so that the rename into place stays on one filesystem.
    let stage = tempfile::Builder::new()
        .prefix(".slipway-iso-")
        .tempdir_in(parent)
        .map_err(io_err("creating a staging directory in", parent))?;
    let root = stage.path().join("root");
    let dir = root.join("slipway");
    fs::create_dir_all(&dir).map_err(io_err("creating", &dir))?;
    // Copied, not hard-linked: its time is set for the ISO below, and the build's file
    // keeps its own.
    let staged_image = dir.join("disk.img.zst");
    fs::copy(&image, &staged_image).map_err(io_err("copying", &image))?;
    for (name, bytes, mode) in [
        ("config.ign", config.as_slice(), 0o600),
        (
            "install.cmdline",
            format!(
                "{}\n",
                crate::pxe::install_params(sha256, size, &node.install_disk, false)
            )
            .as_bytes(),
            0o644,
        ),
    ] {
        let p = dir.join(name);
        crate::fsutil::write_atomic(&p, bytes, mode).map_err(io_err("writing", &p))?;
    }
    // The EFI system partition: the installer UKI where firmware looks on removable media.
    let esp_size = (installer.len() as u64 + (8 << 20))
        .div_ceil(16 << 20)
        .saturating_mul(16 << 20)
        .max(esp::MIN_SIZE);
    // Inside the ISO 9660 tree for El Torito (firmware reads it to the end of the volume)
    // and appended once more as GPT partition 2 for USB sticks: UEFI's El Torito reader
    // (EDK2's) does not reach a partition appended outside the volume.
    let efi = root.join("efiboot.img");
    let fat = esp::build(
        esp_size,
        "SLIPWAY",
        &[("EFI/BOOT/BOOTX64.EFI".to_string(), installer)],
    )
    .map_err(io_err("building the EFI boot image", &efi))?;
    fs::write(&efi, fat).map_err(io_err("writing", &efi))?;

    // xorriso with SOURCE_DATE_EPOCH takes every date in the ISO from each file's mtime:
    // set them all, so the same inputs give the same bytes.
    let when = std::time::UNIX_EPOCH + std::time::Duration::from_secs(opts.source_date_epoch);
    for p in [
        efi.clone(),
        staged_image.clone(),
        dir.join("config.ign"),
        dir.join("install.cmdline"),
        dir.clone(),
        root.clone(),
    ] {
        fs::File::open(&p)
            .and_then(|f| f.set_modified(when))
            .map_err(io_err("setting the time of", &p))?;
    }

    let tmp = stage.path().join("install.iso");
    xorriso(&root, &efi, &tmp, opts.source_date_epoch)?;
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o600))
            .map_err(io_err("setting the mode of", &tmp))?;
    }
    fs::rename(&tmp, &iso).map_err(io_err("renaming into", &iso))?;
    Ok(iso)
}

/// ISO 9660 with Rock Ridge of `root`, volume id [`INSTALL_VOLUME`], with `efi` (a file
/// in `root`) as the El Torito no-emulation UEFI boot image (what a CD or virtual media
/// boots from) and appended as GPT partition 2 of type EFI system (the ESP a USB stick
/// boots from).
fn xorriso(root: &Path, efi: &Path, iso: &Path, epoch: u64) -> Result<(), IsoError> {
    let in_tree = efi
        .strip_prefix(root)
        .map_err(|_| IsoError::Xorriso {
            path: iso.to_owned(),
            reason: format!("{} is not inside {}", efi.display(), root.display()),
        })?
        .to_string_lossy()
        .into_owned();
    let o = Command::new("xorriso")
        .env("SOURCE_DATE_EPOCH", epoch.to_string())
        .args(["-as", "mkisofs", "-quiet", "-r", "-V", INSTALL_VOLUME, "-o"])
        .arg(iso)
        .args(["-e", &in_tree, "-no-emul-boot"])
        .args([
            "-append_partition",
            "2",
            "C12A7328-F81F-11D2-BA4B-00A0C93EC93B",
        ])
        .arg(efi)
        .arg("-appended_part_as_gpt")
        .arg(root)
        .output()
        .map_err(|e| IsoError::Xorriso {
            path: iso.to_owned(),
            reason: e.to_string(),
        })?;
    if !o.status.success() {
        return Err(IsoError::Xorriso {
            path: iso.to_owned(),
            reason: String::from_utf8_lossy(&o.stderr).trim().to_string(),
        });
    }
    Ok(())
}
