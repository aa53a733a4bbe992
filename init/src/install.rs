//! Install mode (`slipway.install=` on the kernel command line, from a node's iPXE script):
//! bring up the network iPXE used, fetch and check the node's Ignition config, find the
//! install disk by the stable name cluster.toml gives it, stream the role's disk image onto
//! it (zstd, SHA-256 checked), lay the config on the new ESP, and reboot into it.
//!
//! Nothing is written before the config has been fetched and checked and the disk found
//! and measured, so a wrong name or a broken config leaves the disk as it was. A transfer
//! cut off half way leaves a disk that does not boot (its image hash failed); booting
//! the installer again starts over.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::cmdline::Install;
use crate::log::step;

/// Sectors of the GPT; the image's layout is 512-byte sectors (docs/images.md).
const SECTOR: u64 = 512;
/// The last MiB of a Slipway disk image holds only its backup GPT (the image builder's
/// layout, docs/images.md): a kept state partition may start there.
const IMAGE_TAIL: u64 = 1 << 20;

/// Where an install medium is mounted.
const MEDIA: &str = "/run/slipway/media";

/// Install from a medium (`slipway.install.media=VOLUME-ID`): waits for the ISO 9660
/// volume with that id (a CD, BMC virtual media, or a USB stick holding the hybrid
/// image), mounts it read-only and reads `slipway/install.cmdline` from it. Returns the
/// install and the medium's device, which must not be the install disk.
pub fn from_media(volume: &str) -> Result<(Install, PathBuf), String> {
    let start = Instant::now();
    let dev = loop {
        let found: Vec<(PathBuf, String)> = block_devices()
            .into_iter()
            .filter_map(|d| volume_id(&d).map(|v| (d, v)))
            .collect();
        if let Some((d, _)) = found.iter().find(|(_, v)| v == volume) {
            break d.clone();
        }
        if start.elapsed() > Duration::from_secs(60) {
            let seen: Vec<String> = found
                .iter()
                .map(|(d, v)| format!("{} {v}", d.display()))
                .collect();
            return Err(format!(
                "no ISO 9660 medium with volume id {volume} after 60 s (media seen: [{}])",
                seen.join(", ")
            ));
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    std::fs::create_dir_all(MEDIA).map_err(|e| format!("{MEDIA}: {e}"))?;
    nix::mount::mount(
        Some(dev.as_path()),
        MEDIA,
        Some("iso9660"),
        nix::mount::MsFlags::MS_RDONLY,
        None::<&str>,
    )
    .map_err(|e| format!("mounting {} (iso9660) on {MEDIA}: {e}", dev.display()))?;
    let params = format!("{MEDIA}/slipway/install.cmdline");
    let text = std::fs::read_to_string(&params).map_err(|e| format!("{params}: {e}"))?;
    let inst = Install::from_media_text(
        &text,
        &format!("{MEDIA}/slipway/disk.img.zst"),
        &format!("{MEDIA}/slipway/config.ign"),
    )
    .map_err(|e| format!("{params}: {e}"))?;
    step(&format!(
        "install: medium {} ({volume}) mounted",
        dev.display()
    ));
    Ok((inst, dev))
}

/// Every whole block device, CD drives included.
fn block_devices() -> Vec<PathBuf> {
    let Ok(dir) = std::fs::read_dir("/sys/class/block") else {
        return Vec::new();
    };
    dir.flatten()
        .filter(|e| !e.path().join("partition").exists())
        .map(|e| Path::new("/dev").join(e.file_name()))
        .collect()
}

/// The volume id of an ISO 9660 filesystem on `dev` (ECMA-119 8.4: the primary volume
/// descriptor at sector 16 of 2048 bytes: type 1, "CD001", the id at bytes 40..72).
fn volume_id(dev: &Path) -> Option<String> {
    use std::io::{Seek, SeekFrom};
    let mut f = std::fs::File::open(dev).ok()?;
    f.seek(SeekFrom::Start(16 * 2048)).ok()?;
    let mut pvd = [0u8; 72];
    f.read_exact(&mut pvd).ok()?;
    (pvd[0] == 1 && &pvd[1..6] == b"CD001")
        .then(|| String::from_utf8_lossy(&pvd[40..72]).trim().to_string())
}

/// Runs the whole install; on success the disk holds the new system and the caller reboots
/// (or, from a medium, powers off). `medium` is the device the install came from, if any:
/// never the install disk.
pub fn run(inst: &Install, roothash: &[u8], medium: Option<&Path>) -> Result<(), String> {
    let started = Instant::now();
    if let Some(net) = &inst.net {
        crate::net::configure(net)?;
    }
    let agent = agent();

    // 1. the node's config: fetched and checked before anything is written
    let config = fetch_config(&agent, &inst.config)?;
    let cfg = crate::ignition::parse(&config).map_err(|e| format!("{}: {e}", inst.config))?;
    crate::ignition::plan(&cfg).map_err(|e| format!("{}: {e}", inst.config))?;
    // The new partition table draws random GUIDs (and the installed system's first boot
    // needs the pool too): seeded from the config where nothing else filled it.
    crate::entropy::ensure(Some(&config));
    step(&format!(
        "install: Ignition config from {} checked ({} bytes)",
        inst.config,
        config.len()
    ));

    // 2. the disk: named by cluster.toml, big enough
    let disk = wait_for_disk(&inst.disk, Duration::from_secs(30))?;
    if medium == Some(disk.dev.as_path()) {
        return Err(format!(
            "{} ({}) is the install medium itself",
            inst.disk,
            disk.dev.display()
        ));
    }
    let sectors = crate::disk::size_sectors(&disk.sys)?;
    if sectors * SECTOR < inst.size {
        return Err(format!(
            "install disk {} ({}) has {} MiB; the image needs {} MiB",
            inst.disk,
            disk.dev.display(),
            (sectors * SECTOR) >> 20,
            inst.size >> 20
        ));
    }
    let kept = if inst.keep_state {
        Some(old_state(&disk.dev, inst.size)?)
    } else {
        None
    };
    step(&format!(
        "install: writing to {} ({}, {} MiB){}",
        inst.disk,
        disk.dev.display(),
        (sectors * SECTOR) >> 20,
        if kept.is_some() {
            ", keeping its state partition"
        } else {
            ", its state partition (if any) wiped"
        }
    ));

    // 3. the image, streamed (up to a kept state partition: the image's last MiB, its
    // backup table, lies over that partition's start and is not written)
    let write_limit = kept
        .as_ref()
        .map_or(inst.size, |p| inst.size.min(p.first_lba * SECTOR));
    let written = stream_image(&agent, inst, &disk.dev, write_limit)?;
    step(&format!(
        "install: {} MiB written and SHA-256 checked in {:.1} s",
        written >> 20,
        started.elapsed().as_secs_f64()
    ));

    // 4. the kept state partition back into the new table; the config onto the ESP
    let table = gpt::GptConfig::new()
        .writable(false)
        .open(&disk.dev)
        .map_err(|e| format!("reading the new GPT of {}: {e}", disk.dev.display()))?;
    let mut parts = table.partitions().clone();
    let disk_guid = *table.guid();
    let esp = crate::disk::find_type(&table, crate::disk::ESP_TYPE)
        .and_then(|n| parts.get(&n).cloned())
        .ok_or("the image has no EFI system partition")?;
    drop(table);
    if let Some(state) = kept {
        let n = parts.keys().max().copied().unwrap_or(0) + 1;
        parts.insert(n, state);
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&disk.dev)
            .map_err(|e| format!("{}: {e}", disk.dev.display()))?;
        crate::state::rewrite_gpt(file, sectors, disk_guid, parts)
            .map_err(|e| format!("adding the kept state partition to the GPT: {e}"))?;
        step("install: the state partition is in the new table");
    }
    write_config(
        &disk.dev,
        esp.first_lba * SECTOR,
        esp.sectors_len().unwrap_or(0) * SECTOR,
        &config,
    )?;

    // 5. check what a boot will look for: the root and hash partitions of this root hash
    let table = gpt::GptConfig::new()
        .writable(false)
        .open(&disk.dev)
        .map_err(|e| format!("reading back the GPT of {}: {e}", disk.dev.display()))?;
    let (a, b) = crate::verity::partition_uuids(roothash);
    for u in [a, b] {
        if !table.partitions().values().any(|p| p.part_guid == u) {
            return Err(format!(
                "the written disk has no partition {u}: the image does not match slipway.roothash"
            ));
        }
    }
    nix::unistd::sync();
    step(&format!(
        "install: done in {:.1} s",
        started.elapsed().as_secs_f64()
    ));
    Ok(())
}

/// HTTP without TLS: the artifacts are checked by hash (the image) or carried on the
/// provisioning network from `slipway serve` (the config); see docs/pxe.md.
fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_connect(Some(Duration::from_secs(10)))
        .timeout_recv_response(Some(Duration::from_secs(30)))
        .timeout_recv_body(None)
        .build()
        .into()
}

/// The config, trying again for a minute while the server cannot be reached (a switch
/// port coming up after the link): refusals (404) are final.
fn fetch_config(agent: &ureq::Agent, url: &str) -> Result<Vec<u8>, String> {
    if url.starts_with('/') {
        return std::fs::read(url).map_err(|e| format!("{url}: {e}"));
    }
    let start = Instant::now();
    loop {
        match agent.get(url).call() {
            Ok(mut r) => {
                return r
                    .body_mut()
                    .with_config()
                    .limit(16 << 20)
                    .read_to_vec()
                    .map_err(|e| format!("reading {url}: {e}"));
            }
            Err(ureq::Error::StatusCode(code)) => {
                return Err(format!(
                    "{url}: the server answered {code} (is this MAC in the cluster, and \
                     `slipway serve` serving this build?)"
                ));
            }
            Err(e) if start.elapsed() < Duration::from_secs(60) => {
                step(&format!("install: {url}: {e}; trying again"));
                std::thread::sleep(Duration::from_secs(2));
            }
            Err(e) => return Err(format!("{url}: {e}")),
        }
    }
}

/// Streams the zstd image to `dev`, hashing the uncompressed bytes (all of them; only the
/// first `write_limit` are written); refuses a size or hash other than the command line's.
fn stream_image(
    agent: &ureq::Agent,
    inst: &Install,
    dev: &Path,
    write_limit: u64,
) -> Result<u64, String> {
    let url = &inst.image;
    let body: Box<dyn Read> = if url.starts_with('/') {
        Box::new(std::fs::File::open(url).map_err(|e| format!("{url}: {e}"))?)
    } else {
        let r = agent.get(url).call().map_err(|e| format!("{url}: {e}"))?;
        Box::new(r.into_body().into_reader())
    };
    let mut dec =
        zstd::stream::read::Decoder::new(body).map_err(|e| format!("{url}: zstd: {e}"))?;
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .open(dev)
        .map_err(|e| format!("opening {}: {e}", dev.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 4 << 20];
    let mut total: u64 = 0;
    let mut next_report = inst.size / 4;
    loop {
        let n = read_full(&mut dec, &mut buf).map_err(|e| format!("{url}: {e}"))?;
        if n == 0 {
            break;
        }
        let at = total;
        total += n as u64;
        if total > inst.size {
            return Err(format!(
                "{url}: longer than slipway.install.size={} bytes",
                inst.size
            ));
        }
        hasher.update(&buf[..n]);
        let writable = write_limit.saturating_sub(at).min(n as u64) as usize;
        out.write_all(&buf[..writable])
            .map_err(|e| format!("writing {}: {e}", dev.display()))?;
        if total >= next_report && inst.size > 0 {
            step(&format!(
                "install: {} of {} MiB",
                total >> 20,
                inst.size >> 20
            ));
            next_report += inst.size / 4;
        }
    }
    out.sync_all()
        .map_err(|e| format!("flushing {}: {e}", dev.display()))?;
    if total != inst.size {
        return Err(format!(
            "{url}: {total} bytes, but slipway.install.size={} (cut off?)",
            inst.size
        ));
    }
    let got = hasher.finalize();
    if got.as_slice() != inst.sha256.as_slice() {
        return Err(format!(
            "{url}: SHA-256 {} is not slipway.install.sha256: the disk now holds a damaged \
             image and will not boot; boot the installer again",
            crate::hex(&got)
        ));
    }
    Ok(total)
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// The state partition to keep: found by its DPS type, and only if the new image ends
/// before it starts.
fn old_state(dev: &Path, image_size: u64) -> Result<gpt::partition::Partition, String> {
    let table = gpt::GptConfig::new()
        .writable(false)
        .open(dev)
        .map_err(|e| {
            format!(
                "slipway.install.state=keep: {} has no readable GPT ({e}); nothing to keep",
                dev.display()
            )
        })?;
    let n = crate::disk::find_type(&table, crate::state::VAR_TYPE).ok_or_else(|| {
        format!(
            "slipway.install.state=keep: {} has no state partition to keep",
            dev.display()
        )
    })?;
    let p = table.partitions()[&n].clone();
    // First boot puts the state partition right after the image's last partition, which
    // is where the image's final MiB (its backup table, and nothing else) lies.
    if p.first_lba * SECTOR < image_size.saturating_sub(IMAGE_TAIL) {
        return Err(format!(
            "slipway.install.state=keep: the state partition starts at {} MiB, inside the new \
             image ({} MiB); install with state=wipe",
            (p.first_lba * SECTOR) >> 20,
            image_size >> 20
        ));
    }
    Ok(p)
}

/// Writes `config` as `slipway/config.ign` on the FAT ESP at `offset` of `dev`.
fn write_config(dev: &Path, offset: u64, len: u64, config: &[u8]) -> Result<(), String> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(dev)
        .map_err(|e| format!("{}: {e}", dev.display()))?;
    let err =
        |e: std::io::Error| format!("writing the config to the ESP of {}: {e}", dev.display());
    let slice = fscommon::StreamSlice::new(file, offset, offset + len).map_err(err)?;
    {
        let fs = fatfs::FileSystem::new(slice, fatfs::FsOptions::new()).map_err(err)?;
        {
            let root = fs.root_dir();
            let dir = match root.open_dir("slipway") {
                Ok(d) => d,
                Err(_) => root.create_dir("slipway").map_err(err)?,
            };
            let mut f = dir.create_file("config.ign").map_err(err)?;
            f.truncate().map_err(err)?;
            f.write_all(config).map_err(err)?;
            f.flush().map_err(err)?;
        }
        fs.unmount().map_err(err)?;
    }
    std::fs::File::open(dev)
        .and_then(|f| f.sync_all())
        .map_err(err)?;
    step(&format!(
        "install: node config written to the ESP (slipway/config.ign, {} bytes)",
        config.len()
    ));
    Ok(())
}

/// A whole disk: its device node and sysfs directory.
pub struct Disk {
    pub dev: PathBuf,
    pub sys: PathBuf,
}

/// Waits for the disk udev would call `name` (the kernel finds disks asynchronously).
fn wait_for_disk(name: &str, timeout: Duration) -> Result<Disk, String> {
    let start = Instant::now();
    loop {
        let disks = whole_disks(Path::new("/sys"));
        if let Some((dev, sys, _)) = disks
            .iter()
            .find(|(_, _, names)| names.iter().any(|n| n == name))
        {
            step(&format!("install: {name} is {}", dev.display()));
            return Ok(Disk {
                dev: dev.clone(),
                sys: sys.clone(),
            });
        }
        if start.elapsed() > timeout {
            let list: Vec<String> = disks
                .iter()
                .map(|(d, _, n)| format!("{} = {}", d.display(), n.join(" | ")))
                .collect();
            return Err(format!(
                "no disk is {name} (slipway.install.disk, from the node's install_disk in \
                 cluster.toml); refusing to guess. Disks found: [{}]",
                list.join("; ")
            ));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Every whole disk under `sys`/class/block with the /dev/disk/by-path and by-id names udev
/// would give it (what Slipway can compute without udev: see [`stable_names`]).
pub fn whole_disks(sys: &Path) -> Vec<(PathBuf, PathBuf, Vec<String>)> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir(sys.join("class/block")) else {
        return out;
    };
    for e in dir.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let link = e.path();
        if link.join("partition").exists()
            || ["loop", "ram", "dm-", "zram", "sr", "md"]
                .iter()
                .any(|p| name.starts_with(p))
        {
            continue;
        }
        let Ok(real) = std::fs::canonicalize(&link) else {
            continue;
        };
        let names = stable_names(&real, &name);
        out.push((Path::new("/dev").join(&name), link, names));
    }
    out.sort();
    out
}

/// The /dev/disk names of the disk whose sysfs device directory is `real` (kernel name
/// `kname`), following udev's path_id and the by-id rules for virtio and NVMe:
/// - `by-path/pci-DOMAIN:BUS:DEV.FN` for virtio-blk,
/// - `by-path/pci-ADDR-nvme-NSID` for NVMe namespaces,
/// - `by-path/pci-ADDR-ata-PORT` and `-ata-PORT.0` for SATA (AHCI) disks,
/// - `by-id/virtio-SERIAL` (virtio serial) and `by-id/nvme-MODEL_SERIAL`.
///
/// Other buses (SAS, USB, virtio-scsi) get no name: such an install disk is refused with
/// the list of disks and their names, never guessed.
pub fn stable_names(real: &Path, kname: &str) -> Vec<String> {
    let comps: Vec<String> = real
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    let is_pci = |c: &str| {
        let b = c.as_bytes();
        c.len() == 12 && b[4] == b':' && b[7] == b':' && b[10] == b'.'
    };
    // The PCI function nearest the disk.
    let Some(pci_at) = comps.iter().rposition(|c| is_pci(c)) else {
        return Vec::new();
    };
    let pci = &comps[pci_at];
    let rest = &comps[pci_at + 1..];
    let read = |p: PathBuf| {
        std::fs::read_to_string(p)
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
    };
    let mut names = Vec::new();
    let by_id_part = |s: &str| s.split_whitespace().collect::<Vec<_>>().join("_");
    if rest.first().is_some_and(|c| c.starts_with("virtio")) {
        names.push(format!("/dev/disk/by-path/pci-{pci}"));
        if let Some(serial) = read(real.join("serial")) {
            names.push(format!("/dev/disk/by-id/virtio-{}", by_id_part(&serial)));
        }
    } else if rest.first().is_some_and(|c| c == "nvme") {
        if let Some(nsid) = kname.rsplit_once('n').map(|(_, n)| n.to_string()) {
            names.push(format!("/dev/disk/by-path/pci-{pci}-nvme-{nsid}"));
        }
        if let (Some(model), Some(serial)) = (
            read(real.join("device/model")),
            read(real.join("device/serial")),
        ) {
            names.push(format!(
                "/dev/disk/by-id/nvme-{}_{}",
                by_id_part(&model),
                by_id_part(&serial)
            ));
        }
    } else if let Some(ata) = rest.first().filter(|c| c.starts_with("ata")) {
        let port_file = real
            .ancestors()
            .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy() == *ata))
            .map(|p| p.join("ata_port").join(ata).join("port_no"));
        if let Some(port) = port_file.and_then(read) {
            names.push(format!("/dev/disk/by-path/pci-{pci}-ata-{port}"));
            names.push(format!("/dev/disk/by-path/pci-{pci}-ata-{port}.0"));
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake sysfs: the device directories and the class/block links the kernel makes.
    fn disk(sys: &Path, devpath: &str, kname: &str, files: &[(&str, &str)]) {
        let d = sys.join(devpath);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("size"), "2097152\n").unwrap();
        for (f, v) in files {
            let p = d.join(f);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, v).unwrap();
        }
        std::fs::create_dir_all(sys.join("class/block")).unwrap();
        std::os::unix::fs::symlink(&d, sys.join("class/block").join(kname)).unwrap();
    }

    #[test]
    fn names_follow_udev_for_virtio_nvme_and_ata() {
        let t = tempfile::tempdir().unwrap();
        let sys = t.path();
        disk(
            sys,
            "devices/pci0000:00/0000:00:04.0/virtio1/block/vda",
            "vda",
            &[("serial", "SLIPWAY-M1\n")],
        );
        disk(
            sys,
            "devices/pci0000:00/0000:00:1c.0/0000:02:00.0/nvme/nvme0/nvme0n1",
            "nvme0n1",
            &[
                ("device/model", "Samsung SSD 980 PRO 1TB   \n"),
                ("device/serial", "S5GXNF0R123456\n"),
            ],
        );
        disk(
            sys,
            "devices/pci0000:00/0000:00:1f.2/ata3/host2/target2:0:0/2:0:0:0/block/sda",
            "sda",
            &[],
        );
        let port = sys.join("devices/pci0000:00/0000:00:1f.2/ata3/ata_port/ata3");
        std::fs::create_dir_all(&port).unwrap();
        std::fs::write(port.join("port_no"), "3\n").unwrap();
        // A partition and a loop device are never candidates.
        disk(sys, "devices/virtual/block/loop0", "loop0", &[]);

        let got: Vec<(String, Vec<String>)> = whole_disks(sys)
            .into_iter()
            .map(|(d, _, n)| (d.display().to_string(), n))
            .collect();
        assert_eq!(
            got,
            vec![
                (
                    "/dev/nvme0n1".into(),
                    vec![
                        "/dev/disk/by-path/pci-0000:02:00.0-nvme-1".to_string(),
                        "/dev/disk/by-id/nvme-Samsung_SSD_980_PRO_1TB_S5GXNF0R123456".into()
                    ]
                ),
                (
                    "/dev/sda".into(),
                    vec![
                        "/dev/disk/by-path/pci-0000:00:1f.2-ata-3".to_string(),
                        "/dev/disk/by-path/pci-0000:00:1f.2-ata-3.0".into()
                    ]
                ),
                (
                    "/dev/vda".into(),
                    vec![
                        "/dev/disk/by-path/pci-0000:00:04.0".to_string(),
                        "/dev/disk/by-id/virtio-SLIPWAY-M1".into()
                    ]
                ),
            ]
        );
    }

    #[test]
    fn config_lands_on_the_esp() {
        // A FAT image like the role image's ESP, at an offset inside a "disk" file.
        let t = tempfile::tempdir().unwrap();
        let disk = t.path().join("disk");
        let esp_len: u64 = 64 << 20;
        let offset: u64 = 1 << 20;
        let f = std::fs::File::create(&disk).unwrap();
        f.set_len(offset + esp_len + (1 << 20)).unwrap();
        let slice = fscommon::StreamSlice::new(
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&disk)
                .unwrap(),
            offset,
            offset + esp_len,
        )
        .unwrap();
        fatfs::format_volume(slice, fatfs::FormatVolumeOptions::new()).unwrap();
        write_config(
            &disk,
            offset,
            esp_len,
            b"{\"ignition\":{\"version\":\"3.3.0\"}}",
        )
        .unwrap();
        // Written again (a second install) replaces it.
        write_config(&disk, offset, esp_len, b"second").unwrap();
        let slice = fscommon::StreamSlice::new(
            std::fs::File::open(&disk).unwrap(),
            offset,
            offset + esp_len,
        )
        .unwrap();
        let fs = fatfs::FileSystem::new(crate::firstboot::ReadOnly(slice), fatfs::FsOptions::new())
            .unwrap();
        let mut s = String::new();
        fs.root_dir()
            .open_file("slipway/config.ign")
            .unwrap()
            .read_to_string(&mut s)
            .unwrap();
        assert_eq!(s, "second");
    }
}
