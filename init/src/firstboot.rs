//! First boot: find the node's Ignition config and apply it to the new root.
//!
//! Sources, first found wins: `slipway/config.ign` on the boot disk's ESP (a node disk
//! from `slipway build`); `slipway/configs/MAC.ign` there (one image for many nodes: the
//! MAC of any interface, lower case with dashes, since FAT names cannot hold colons);
//! QEMU's fw_cfg `opt/com.coreos/config`.

use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::Path;

use crate::ignition;
use crate::log::step;

/// A block device (or a window onto one) opened for reading that fatfs may "write" to:
/// writes are dropped, so reading the ESP never changes it (fatfs 0.3 has no read-only
/// mode).
pub(crate) struct ReadOnly<T>(pub T);

impl<T: Read> Read for ReadOnly<T> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}
impl<T> Write for ReadOnly<T> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
impl<T: Seek> Seek for ReadOnly<T> {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        self.0.seek(pos)
    }
}

fn read_esp_file(esp: &Path, path: &str) -> Option<Vec<u8>> {
    let dev = std::fs::File::open(esp).ok()?;
    let fs = fatfs::FileSystem::new(ReadOnly(dev), fatfs::FsOptions::new()).ok()?;
    let mut f = fs.root_dir().open_file(path).ok()?;
    let mut out = Vec::new();
    f.read_to_end(&mut out).ok()?;
    Some(out)
}

/// The MACs of the network interfaces, as file names ("52-54-00-00-00-11"). NIC drivers
/// were loaded with the other modules; their interfaces may take a moment to appear.
fn macs() -> Vec<String> {
    let read = || -> Vec<String> {
        let mut out: Vec<String> = std::fs::read_dir("/sys/class/net")
            .map(|d| {
                d.flatten()
                    .filter_map(|e| std::fs::read_to_string(e.path().join("address")).ok())
                    .map(|m| m.trim().to_lowercase().replace(':', "-"))
                    .filter(|m| m != "00-00-00-00-00-00")
                    .collect()
            })
            .unwrap_or_default();
        out.sort();
        out
    };
    for _ in 0..30 {
        let m = read();
        if !m.is_empty() {
            return m;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    Vec::new()
}

const FW_CFG: &str = "/sys/firmware/qemu_fw_cfg/by_name/opt/com.coreos/config/raw";

/// The config and where it came from, or None when there is none.
pub fn find_config(esp: Option<&Path>) -> Option<(Vec<u8>, String)> {
    if let Some(esp) = esp {
        if let Some(c) = read_esp_file(esp, "slipway/config.ign") {
            return Some((c, format!("{}:/slipway/config.ign", esp.display())));
        }
        for mac in macs() {
            let p = format!("slipway/configs/{mac}.ign");
            if let Some(c) = read_esp_file(esp, &p) {
                return Some((c, format!("{}:/{p}", esp.display())));
            }
        }
    }
    std::fs::read(FW_CFG)
        .ok()
        .map(|c| (c, format!("fw_cfg {FW_CFG}")))
}

/// Parses, checks and applies `config` to `root`, then makes the boot a first boot for
/// systemd (machine-id "uninitialized": presets, host keys, machine-id commit).
pub fn apply(config: &[u8], source: &str, root: &Path) -> Result<(), String> {
    let cfg = ignition::parse(config).map_err(|e| format!("{source}: {e}"))?;
    let ops = ignition::plan(&cfg).map_err(|e| format!("{source}: {e}"))?;
    let done = ignition::apply(&ops, root).map_err(|e| format!("applying {source}: {e}"))?;
    step(&format!(
        "Ignition config from {source} applied: {} users, {} groups, {} directories, {} files, {} links, {} units",
        done.users, done.groups, done.directories, done.files, done.links, done.units
    ));
    let mid = root.join("etc/machine-id");
    std::fs::write(&mid, "uninitialized\n").map_err(|e| format!("{}: {e}", mid.display()))
}
