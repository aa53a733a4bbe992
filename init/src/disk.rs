//! Finding partitions by partition UUID without udev: every whole disk the kernel lists
//! in /sys/class/block has its GPT read (gpt crate), and a match is turned into the
//! partition's device node, which devtmpfs has made.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use uuid::Uuid;

use crate::log::step;

/// Waits until a partition with each of `uuids` exists; returns their device nodes in
/// the same order.
pub fn wait_for(uuids: &[Uuid], timeout: Duration) -> Result<Vec<PathBuf>, String> {
    let start = Instant::now();
    let mut reported = false;
    loop {
        let found = scan();
        let got: Vec<Option<PathBuf>> = uuids
            .iter()
            .map(|u| found.iter().find(|(v, _)| v == u).map(|(_, p)| p.clone()))
            .collect();
        if got.iter().all(Option::is_some) {
            return Ok(got.into_iter().flatten().collect());
        }
        if start.elapsed() > timeout {
            let missing: Vec<String> = uuids
                .iter()
                .zip(&got)
                .filter(|(_, g)| g.is_none())
                .map(|(u, _)| u.to_string())
                .collect();
            let seen: Vec<String> = found
                .iter()
                .map(|(u, p)| format!("{} {u}", p.display()))
                .collect();
            return Err(format!(
                "after {} s no partition with UUID {} (the image's root and hash partitions); \
                 partitions seen: [{}]. Is the boot disk attached, and its driver in the initramfs?",
                timeout.as_secs(),
                missing.join(", "),
                seen.join("; ")
            ));
        }
        if !reported && start.elapsed() > Duration::from_secs(5) {
            step("waiting for the root and hash partitions to appear");
            reported = true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Every GPT partition on every whole disk: (partition UUID, device node).
fn scan() -> Vec<(Uuid, PathBuf)> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir("/sys/class/block") else {
        return out;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let sys = e.path();
        if sys.join("partition").exists() || name.starts_with("dm-") || name.starts_with("loop") {
            continue;
        }
        let dev = Path::new("/dev").join(&name);
        let Ok(disk) = gpt::GptConfig::new().writable(false).open(&dev) else {
            continue;
        };
        for (number, p) in disk.partitions() {
            if let Some(node) = partition_node(&sys, *number) {
                out.push((p.part_guid, node));
            }
        }
    }
    out
}

/// The device node of partition `number` of the disk at sysfs directory `sys`.
pub fn partition_node(sys: &Path, number: u32) -> Option<PathBuf> {
    std::fs::read_dir(sys).ok()?.flatten().find_map(|e| {
        let n = std::fs::read_to_string(e.path().join("partition")).ok()?;
        (n.trim().parse::<u32>().ok()? == number).then(|| Path::new("/dev").join(e.file_name()))
    })
}

/// The whole disk holding partition `part`: (device node, sysfs directory).
pub fn disk_of(part: &Path) -> Result<(PathBuf, PathBuf), String> {
    let name = part
        .file_name()
        .ok_or_else(|| format!("{}: not a device", part.display()))?;
    let sys = std::fs::canonicalize(Path::new("/sys/class/block").join(name))
        .map_err(|e| format!("{}: {e}", part.display()))?;
    let disk_sys = sys
        .parent()
        .ok_or_else(|| format!("{}: no parent disk", part.display()))?
        .to_path_buf();
    let disk_name = disk_sys
        .file_name()
        .ok_or_else(|| format!("{}: no parent disk", part.display()))?;
    Ok((Path::new("/dev").join(disk_name), disk_sys))
}

/// The number of the first partition of type `type_guid` in `table`.
pub fn find_type<D>(table: &gpt::GptDisk<D>, type_guid: &str) -> Option<u32> {
    table
        .partitions()
        .iter()
        .find(|(_, p)| {
            p.part_type_guid
                .guid
                .to_string()
                .eq_ignore_ascii_case(type_guid)
        })
        .map(|(n, _)| *n)
}

/// The EFI system partition on the disk that holds partition `part`.
pub fn esp_of(part: &Path) -> Option<PathBuf> {
    let (disk, disk_sys) = disk_of(part).ok()?;
    let table = gpt::GptConfig::new().writable(false).open(&disk).ok()?;
    partition_node(&disk_sys, find_type(&table, ESP_TYPE)?)
}

/// The GPT partition type of an EFI system partition (UEFI 2.10, 5.3.3).
pub const ESP_TYPE: &str = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";

/// The size of the whole disk at sysfs directory `sys`, in 512-byte sectors (what the
/// kernel's `size` attribute counts, whatever the disk's own sector size).
pub fn size_sectors(sys: &Path) -> Result<u64, String> {
    std::fs::read_to_string(sys.join("size"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| format!("{}: no size", sys.display()))
}
