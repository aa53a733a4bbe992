//! The node's state partition: ext4 in the boot disk's free space, holding /var and the
//! upper layers of /etc, /opt, /home and /root, and the first-boot marker.
//!
//! First boot (no partition of the DPS "var" type on the boot disk): the GPT is
//! rewritten for the whole disk (the image's backup header sat at the image's end) with
//! a new partition from the end of the last one to the end of the disk, the kernel is
//! told with the verified root's `partx`, and the root's `mke2fs` formats it. Tools of
//! the root run through the root's own dynamic loader and libraries, so the initramfs
//! needs no libc. Later boots only mount it.

use std::path::{Path, PathBuf};
use std::process::Command;

use nix::mount::{MsFlags, mount};
use uuid::Uuid;

use crate::log::{step, warn};

pub const VAR_TYPE: &str = "4D21B016-B534-45C2-A9FB-5C16E091FD2D";
pub const MOUNT: &str = "/run/slipway/state";
const MARKER: &str = ".slipway-first-boot-done";
/// Less free space than this and the node runs with state in memory (and says so).
const MIN_STATE: u64 = 1 << 30;
const SECTOR: u64 = 512;
const ALIGN_SECTORS: u64 = 2048;

pub struct State {
    pub dir: PathBuf,
    pub persistent: bool,
    pub first_boot: bool,
}

impl State {
    /// Records that first boot completed (config applied), so later boots skip it.
    pub fn mark_first_boot_done(&self) -> Result<(), String> {
        let p = self.dir.join(MARKER);
        std::fs::write(&p, "done\n").map_err(|e| format!("{}: {e}", p.display()))?;
        nix::unistd::sync();
        Ok(())
    }
}

/// Removes everything on the state filesystem mounted at `dir` (but not lost+found).
fn reset(dir: &Path) -> Result<(), String> {
    for e in std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))? {
        let e = e.map_err(|e| format!("{}: {e}", dir.display()))?;
        if e.file_name() == "lost+found" {
            continue;
        }
        let p = e.path();
        let r = if e.file_type().is_ok_and(|t| t.is_dir()) {
            std::fs::remove_dir_all(&p)
        } else {
            std::fs::remove_file(&p)
        };
        r.map_err(|e| format!("resetting {}: {e}", p.display()))?;
    }
    Ok(())
}

/// Runs `prog` (a path inside `sysroot`) with the root's loader and libraries.
fn root_tool(sysroot: &str, prog: &str, args: &[&str]) -> Result<(), String> {
    let loader = format!("{sysroot}/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2");
    let out = Command::new(&loader)
        .arg("--library-path")
        .arg(format!("{sysroot}/usr/lib/x86_64-linux-gnu"))
        .arg(format!("{sysroot}{prog}"))
        .args(args)
        .env("MKE2FS_CONFIG", format!("{sysroot}/etc/mke2fs.conf"))
        .output()
        .map_err(|e| format!("running {prog} from the root: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{prog} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

fn mount_state(dev: &Path) -> Result<(), String> {
    std::fs::create_dir_all(MOUNT).map_err(|e| format!("{MOUNT}: {e}"))?;
    mount(
        Some(dev),
        MOUNT,
        Some("ext4"),
        MsFlags::MS_NODEV | MsFlags::MS_NOSUID,
        None::<&str>,
    )
    .map_err(|e| {
        format!(
            "mounting the state partition {} on {MOUNT}: {e}",
            dev.display()
        )
    })
}

fn volatile() -> Result<State, String> {
    std::fs::create_dir_all(MOUNT).map_err(|e| format!("{MOUNT}: {e}"))?;
    Ok(State {
        dir: PathBuf::from(MOUNT),
        persistent: false,
        first_boot: true,
    })
}

/// Writes a new GPT spanning the whole device (`sectors` long) with `parts`: protective
/// MBR, primary and backup headers, both partition arrays. (The gpt crate draws a random
/// GUID while building headers, so this needs the kernel's random pool: the callers make
/// sure of it first, [`crate::entropy::ensure`].)
pub fn rewrite_gpt(
    mut file: std::fs::File,
    sectors: u64,
    disk_guid: Uuid,
    parts: std::collections::BTreeMap<u32, gpt::partition::Partition>,
) -> Result<(), String> {
    let err = |e: &dyn std::fmt::Display| e.to_string();
    gpt::mbr::ProtectiveMBR::with_lb_size(u32::try_from(sectors - 1).unwrap_or(u32::MAX))
        .overwrite_lba0(&mut file)
        .map_err(|e| err(&e))?;
    let mut g = gpt::GptConfig::new()
        .writable(true)
        .logical_block_size(gpt::disk::LogicalBlockSize::Lb512)
        .create_from_device(file, Some(disk_guid))
        .map_err(|e| err(&e))?;
    g.update_partitions(parts).map_err(|e| err(&e))?;
    let file = g.write().map_err(|e| err(&e))?;
    file.sync_all().map_err(|e| err(&e))
}

/// Finds, or on first boot creates, the state partition on the disk of `root_part`, and
/// mounts it at [`MOUNT`].
pub fn setup(root_part: &Path, sysroot: &str) -> Result<State, String> {
    let (disk, disk_sys) = crate::disk::disk_of(root_part)?;
    let table = gpt::GptConfig::new()
        .writable(false)
        .open(&disk)
        .map_err(|e| format!("reading the GPT of {}: {e}", disk.display()))?;
    let existing = crate::disk::find_type(&table, VAR_TYPE);
    if let Some(n) = existing {
        let dev = crate::disk::partition_node(&disk_sys, n).ok_or_else(|| {
            format!(
                "state partition {n} of {} has no device node",
                disk.display()
            )
        })?;
        mount_state(&dev)?;
        let first_boot = !Path::new(MOUNT).join(MARKER).exists();
        if first_boot {
            // A first boot that did not finish: nothing of value is here yet, and a
            // half-applied config must not be built upon. Start again from empty.
            reset(Path::new(MOUNT))?;
        }
        step(&format!(
            "state partition {} mounted{}",
            dev.display(),
            if first_boot {
                " (an earlier first boot did not finish: state reset, running it again)"
            } else {
                ""
            }
        ));
        return Ok(State {
            dir: PathBuf::from(MOUNT),
            persistent: true,
            first_boot,
        });
    }

    // First boot: the free space after the last partition, to the end of the disk.
    let sectors = crate::disk::size_sectors(&disk_sys)?;
    let last_used = table
        .partitions()
        .values()
        .map(|p| p.last_lba)
        .max()
        .unwrap_or(0);
    let first = (last_used + 1).div_ceil(ALIGN_SECTORS) * ALIGN_SECTORS;
    // The backup table takes the last 33 sectors.
    let last = ((sectors - 34) / ALIGN_SECTORS) * ALIGN_SECTORS - 1;
    if last <= first || (last - first + 1) * SECTOR < MIN_STATE {
        warn(&format!(
            "{} has {} MiB free after the image: below {} MiB, so /var and the writable \
             layers stay in memory and are lost at reboot. Install the image on a larger disk.",
            disk.display(),
            (last.saturating_sub(first) * SECTOR) >> 20,
            MIN_STATE >> 20
        ));
        return volatile();
    }
    let number = table.partitions().keys().max().copied().unwrap_or(0) + 1;
    let disk_guid = *table.guid();
    let mut parts = table.partitions().clone();
    drop(table);
    let uuid = {
        use sha2::Digest;
        let d = sha2::Sha256::new()
            .chain_update(disk_guid.as_bytes())
            .chain_update(b"slipway-state")
            .finalize();
        let mut b = [0u8; 16];
        b.copy_from_slice(&d[..16]);
        uuid::Builder::from_random_bytes(b).into_uuid()
    };
    parts.insert(
        number,
        gpt::partition::Partition {
            part_type_guid: gpt::partition_types::Type {
                guid: Uuid::parse_str(VAR_TYPE).map_err(|e| e.to_string())?,
                os: gpt::partition_types::OperatingSystem::None,
            },
            part_guid: uuid,
            first_lba: first,
            last_lba: last,
            flags: 0,
            name: "state".into(),
        },
    );
    step(&format!(
        "first boot: creating state partition {number} on {} (sectors {first}-{last})",
        disk.display()
    ));
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&disk)
        .map_err(|e| format!("opening {}: {e}", disk.display()))?;
    rewrite_gpt(file, sectors, disk_guid, parts)
        .map_err(|e| format!("writing the GPT of {}: {e}", disk.display()))?;
    step("partition table written for the whole disk");
    let disk_s = disk.to_string_lossy().into_owned();
    root_tool(
        sysroot,
        "/usr/bin/partx",
        &["--add", "--nr", &number.to_string(), &disk_s],
    )?;
    let dev = (0..100)
        .find_map(|_| {
            let d = crate::disk::partition_node(&disk_sys, number);
            if d.as_ref().is_some_and(|d| d.exists()) {
                return d;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
            None
        })
        .ok_or_else(|| format!("partition {number} of {} did not appear", disk.display()))?;
    let dev_s = dev.to_string_lossy().into_owned();
    step(&format!("formatting {dev_s} (ext4, the root's mke2fs)"));
    root_tool(
        sysroot,
        "/usr/sbin/mke2fs",
        &[
            "-q",
            "-F",
            "-t",
            "ext4",
            "-L",
            "slipway-state",
            "-U",
            &uuid.to_string(),
            &dev_s,
        ],
    )?;
    mount_state(&dev)?;
    step(&format!(
        "state partition {dev_s} created ({} MiB, ext4) and mounted",
        ((last - first + 1) * SECTOR) >> 20
    ));
    Ok(State {
        dir: PathBuf::from(MOUNT),
        persistent: true,
        first_boot: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewriting_the_gpt_moves_the_backup_to_the_end_and_adds_the_partition() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("disk.raw");
        // A 16 MiB image with one partition, on a 64 MiB "disk".
        let f = std::fs::File::create(&path).unwrap_or_else(|e| panic!("{e}"));
        f.set_len(16 << 20).unwrap_or_else(|e| panic!("{e}"));
        let st = Command::new("sgdisk")
            .args(["-n", "1:2048:+4M", "-t", "1:8304"])
            .arg(&path)
            .output()
            .unwrap_or_else(|e| panic!("sgdisk: {e}"));
        assert!(st.status.success());
        f.set_len(64 << 20).unwrap_or_else(|e| panic!("{e}"));
        let t = gpt::GptConfig::new()
            .writable(false)
            .open(&path)
            .unwrap_or_else(|e| panic!("{e}"));
        let mut parts = t.partitions().clone();
        let guid = *t.guid();
        drop(t);
        let sectors = (64 << 20) / SECTOR;
        parts.insert(
            2,
            gpt::partition::Partition {
                part_type_guid: gpt::partition_types::Type {
                    guid: Uuid::parse_str(VAR_TYPE).unwrap_or_default(),
                    os: gpt::partition_types::OperatingSystem::None,
                },
                part_guid: Uuid::from_u128(7),
                first_lba: 12288,
                last_lba: ((sectors - 34) / ALIGN_SECTORS) * ALIGN_SECTORS - 1,
                flags: 0,
                name: "state".into(),
            },
        );
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap_or_else(|e| panic!("{e}"));
        rewrite_gpt(file, sectors, guid, parts).unwrap_or_else(|e| panic!("{e}"));
        let v = Command::new("sgdisk")
            .arg("-v")
            .arg(&path)
            .output()
            .unwrap_or_else(|e| panic!("{e}"));
        let out = String::from_utf8_lossy(&v.stdout);
        assert!(out.contains("No problems found"), "{out}");
    }

    #[test]
    fn reset_empties_all_but_lost_and_found() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        for d in ["lost+found", "etc.upper/x", "var/lib"] {
            std::fs::create_dir_all(dir.path().join(d)).unwrap_or_else(|e| panic!("{e}"));
        }
        std::fs::write(dir.path().join("var/lib/f"), "x").unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(dir.path().join("stray"), "x").unwrap_or_else(|e| panic!("{e}"));
        reset(dir.path()).unwrap_or_else(|e| panic!("{e}"));
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap_or_else(|e| panic!("{e}"))
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(left, vec![std::ffi::OsString::from("lost+found")]);
    }
}
