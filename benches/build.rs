#![allow(clippy::unwrap_used)]
//! `make bench` for `slipway build`, all measured in one run:
//! - the whole example cluster (2 role disks with qcow2 copies and PXE files, 4 node disks,
//!   secrets, render, manifest) built from scratch (a new output directory) from a warm
//!   package cache, with its steps' times and the bytes it wrote, beside mkosi (Debian
//!   12's 14) building one equivalent verity disk image of the control-plane package set
//!   with a warm package cache (benches/mkosi/): the ratio to mkosi is the figure (the
//!   issue's target: at least 5x, aiming at 8x);
//! - a rebuild into the same output with nothing changed, and after a config-only change
//!   (etcd's snapshot retention: the three control-plane nodes), as fractions of the full
//!   build (targets 5 % and 15 %), with the bytes each wrote; and the config-only change
//!   again on a loop-mounted XFS with reflinks, where node disks are clones.
//!
//! Results go to target/bench/build.json.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use slipway::profile::DataDir;
use slipway::rootfs::Options;

fn env_path(var: &str) -> PathBuf {
    PathBuf::from(
        std::env::var_os(var).unwrap_or_else(|| panic!("{var} is not set: run `make bench`")),
    )
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Sizes of a disk image's root partition (bytes) as sfdisk reports it.
fn root_partition_size(disk: &Path) -> u64 {
    let o = Command::new("sfdisk")
        .arg("--json")
        .arg(disk)
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    v["partitiontable"]["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["type"].as_str() == Some("4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709"))
        .map(|p| p["size"].as_u64().unwrap() * 512)
        .unwrap_or(0)
}

fn options(work: &Path) -> slipway::build::BuildOptions {
    slipway::build::BuildOptions {
        rootfs: Options {
            data: DataDir::new(repo()),
            cache: env_path("SLIPWAY_TEST_CACHE"),
            lock_path: env_path("SLIPWAY_TEST_LOCK"),
            mirror: Some("http://127.0.0.1:9".into()),
            host_root: PathBuf::from("/nonexistent"),
            // Not --locked: that refuses the test lock, which pins no Kubernetes release;
            // the release is looked for where there is none, so the build goes on
            // without it at once, as the tests' do.
            locked: false,
            source_date_epoch: 1_764_000_000,
            kube_artifacts: Some(repo().join("target/no-kubernetes-release")),
        },
        secrets_dir: work.join("secrets"),
        init: env_path("SLIPWAY_INIT"),
        qcow2: true,
        progress: false,
    }
}

/// Bytes this process (and its reaped children: qemu-img) has caused to be written,
/// from /proc/self/io.
fn written() -> u64 {
    std::fs::read_to_string("/proc/self/io")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("write_bytes: ")?.trim().parse().ok())
        .unwrap_or(0)
}

/// One `slipway build` of `cluster` into `out`: its wall time, manifest and the bytes
/// it wrote.
fn run(cluster: &Path, work: &Path, out: &Path) -> (Duration, slipway::build::Manifest, u64) {
    let before = written();
    let t = Instant::now();
    let m = slipway::build::build(cluster, &options(work), out).unwrap_or_else(|e| panic!("{e:#}"));
    let took = t.elapsed();
    (took, m, written() - before)
}

/// Medians of (time, bytes) over the runs.
fn medians(runs: &[(Duration, u64)]) -> (Duration, u64) {
    let mut b: Vec<u64> = runs.iter().map(|r| r.1).collect();
    b.sort();
    (median(runs.iter().map(|r| r.0).collect()), b[b.len() / 2])
}

fn secs(v: &[(Duration, u64)]) -> Vec<String> {
    v.iter()
        .map(|r| format!("{:.2}", r.0.as_secs_f64()))
        .collect()
}

/// The example cluster with etcd's snapshot retention set to `n`: a change of the
/// control-plane nodes' configs only.
fn with_retention(text: &str, n: u32) -> String {
    let start = text.find("snapshot_retention = ").unwrap();
    let end = start + text[start..].find('\n').unwrap();
    format!("{}snapshot_retention = {n}{}", &text[..start], &text[end..])
}

/// Config-only changes rebuilt into `out` (built once first), three times.
fn config_changes(cluster: &Path, text: &str, work: &Path, out: &Path) -> Vec<(Duration, u64)> {
    run(cluster, work, out);
    (0..3u32)
        .map(|i| {
            std::fs::write(cluster, with_retention(text, 10 + i)).unwrap();
            let (t, m, b) = run(cluster, work, out);
            assert_eq!(m.report.roles_reused.len(), 2, "{:?}", m.report);
            (t, b)
        })
        .collect()
}

/// An XFS filesystem with reflinks in a sparse file, loop-mounted (root and xfsprogs):
/// where node disks are clones. Unmounted when dropped.
struct Xfs(tempfile::TempDir);

impl Xfs {
    fn mount() -> Result<Xfs, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let img = dir.path().join("xfs.img");
        std::fs::File::create(&img)
            .and_then(|f| f.set_len(16 << 30))
            .map_err(|e| e.to_string())?;
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).map_err(|e| e.to_string())?;
        for (prog, args) in [
            (
                "mkfs.xfs",
                vec!["-q", "-m", "reflink=1", img.to_str().unwrap_or("")],
            ),
            (
                "mount",
                vec![
                    "-o",
                    "loop",
                    img.to_str().unwrap_or(""),
                    mnt.to_str().unwrap_or(""),
                ],
            ),
        ] {
            let o = Command::new(prog)
                .args(&args)
                .output()
                .map_err(|e| format!("{prog}: {e}"))?;
            if !o.status.success() {
                return Err(format!(
                    "{prog}: {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                ));
            }
        }
        Ok(Xfs(dir))
    }

    fn path(&self) -> PathBuf {
        self.0.path().join("mnt")
    }
}

impl Drop for Xfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.path()).status();
    }
}

/// mkosi through benches/mkosi/run.sh: a cold run fills its package cache, then warm
/// runs are timed. None (with the reason) when mkosi cannot run here.
fn mkosi(work: &Path) -> Result<(Duration, u64, u64), String> {
    if Command::new("mkosi").arg("--version").output().is_err() {
        return Err("mkosi is not installed (`scripts/install-deps.sh --bench`)".into());
    }
    let mirror = slipway::debian::sources::pick_debian_mirror(
        &slipway::debian::sources::host_debian_uris(Path::new("/")),
    )
    .ok_or("the host's apt sources name no Debian mirror")?;
    let cache = repo().join("target/bench/mkosi-cache");
    let run = |out: &Path| -> Result<Duration, String> {
        let t = Instant::now();
        let o = Command::new(repo().join("benches/mkosi/run.sh"))
            .arg(&mirror)
            .arg(&cache)
            .arg(out)
            .output()
            .map_err(|e| format!("run.sh: {e}"))?;
        if !o.status.success() {
            return Err(format!(
                "mkosi failed: {}",
                String::from_utf8_lossy(&o.stderr)
                    .lines()
                    .rev()
                    .take(5)
                    .collect::<Vec<_>>()
                    .join(" | ")
            ));
        }
        Ok(t.elapsed())
    };
    let out = work.join("mkosi-out");
    let cold = run(&out)?;
    eprintln!(
        "mkosi cold (fills its package cache): {:.1} s",
        cold.as_secs_f64()
    );
    let mut warm = Vec::new();
    for _ in 0..2 {
        warm.push(run(&out)?);
    }
    let image = out.join("debian~trixie/image.raw");
    let size = std::fs::metadata(&image).map_err(|e| e.to_string())?.len();
    Ok((median(warm), size, root_partition_size(&image)))
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return; // `cargo test --benches` smoke run: this bench needs `make bench`.
    }
    let work = tempfile::tempdir().unwrap();
    let example = std::fs::read_to_string(repo().join("examples/homelab/cluster.toml")).unwrap();
    let cluster = work.path().join("cluster.toml");
    std::fs::write(&cluster, &example).unwrap();
    // Full builds (a new output directory each: nothing to reuse) from a warm package
    // cache: one to warm the depmod and recompressed-package caches and the page cache,
    // then three timed.
    let fresh = |i: usize| {
        let out = work.path().join(format!("out-{i}"));
        let _ = std::fs::remove_dir_all(&out);
        run(&cluster, work.path(), &out)
    };
    fresh(0);
    let full: Vec<(Duration, slipway::build::Manifest, u64)> = (1..=3).map(fresh).collect();
    let full_runs: Vec<(Duration, u64)> = full.iter().map(|r| (r.0, r.2)).collect();
    let (ours, full_bytes) = medians(&full_runs);
    let (_, m, _) = full.iter().find(|r| r.0 == ours).unwrap_or(&full[0]);
    let cp = m.roles.iter().find(|r| r.role == "control-plane").unwrap();
    eprintln!(
        "slipway build, example cluster (2 roles, 4 nodes), full, warm package cache: median {:.2} s of {:?}, {} MiB written",
        ours.as_secs_f64(),
        secs(&full_runs),
        full_bytes >> 20
    );
    eprintln!("  steps of that build (the roles' run side by side):");
    for (step, s) in &m.report.steps {
        eprintln!("    {s:6.2} s  {step}");
    }
    eprintln!(
        "  control-plane: root partition {} MiB (squashfs {} MiB), disk {} MiB",
        cp.root_slot >> 20,
        cp.root_size >> 20,
        cp.disk_size >> 20
    );
    // Rebuilds into the last full build's output.
    let out = work.path().join("out-3");
    let unchanged: Vec<(Duration, u64)> = (0..3)
        .map(|_| {
            let (t, m, b) = run(&cluster, work.path(), &out);
            assert_eq!(m.report.nodes_reused.len(), 4, "{:?}", m.report);
            (t, b)
        })
        .collect();
    let (same, same_bytes) = medians(&unchanged);
    let changed = config_changes(&cluster, &example, work.path(), &out);
    let (config, config_bytes) = medians(&changed);
    let pct = |d: Duration| 100.0 * d.as_secs_f64() / ours.as_secs_f64();
    eprintln!(
        "rebuild, nothing changed: median {:.2} s of {:?} = {:.1} % of the full build (target <= 5 %), {} KiB written",
        same.as_secs_f64(),
        secs(&unchanged),
        pct(same),
        same_bytes >> 10
    );
    eprintln!(
        "rebuild after a config-only change (etcd.snapshot_retention: 3 node disks): median {:.2} s of {:?} = {:.1} % (target <= 15 %), {} MiB written",
        config.as_secs_f64(),
        secs(&changed),
        pct(config),
        config_bytes >> 20
    );
    // The same on a filesystem that shares extents: node disks are clones.
    let xfs = Xfs::mount().map(|x| {
        let out = x.path().join("out");
        let runs = config_changes(&cluster, &example, work.path(), &out);
        (x, runs)
    });
    let xfs_json = match &xfs {
        Ok((_, runs)) => {
            let (t, b) = medians(runs);
            eprintln!(
                "  the same on XFS with reflinks (node disks cloned): median {:.2} s of {:?} = {:.1} %, {} MiB written",
                t.as_secs_f64(),
                secs(runs),
                pct(t),
                b >> 20
            );
            serde_json::json!({"seconds": t.as_secs_f64(), "bytes_written": b, "of_full": pct(t) / 100.0})
        }
        Err(why) => {
            eprintln!("  on XFS: NOT MEASURED: {why}");
            serde_json::json!(why)
        }
    };
    drop(xfs);
    std::fs::write(&cluster, &example).unwrap();
    let steps: Vec<serde_json::Value> = m
        .report
        .steps
        .iter()
        .map(|(s, t)| serde_json::json!({"step": s, "seconds": t}))
        .collect();
    let mut json = serde_json::json!({
        "slipway_full_seconds": ours.as_secs_f64(),
        "slipway_full_bytes_written": full_bytes,
        "slipway_full_steps": steps,
        "rebuild_unchanged_seconds": same.as_secs_f64(),
        "rebuild_unchanged_bytes_written": same_bytes,
        "rebuild_unchanged_of_full": pct(same) / 100.0,
        "rebuild_config_change_seconds": config.as_secs_f64(),
        "rebuild_config_change_bytes_written": config_bytes,
        "rebuild_config_change_of_full": pct(config) / 100.0,
        "rebuild_config_change_on_xfs": xfs_json,
        "slipway_root_partition_bytes": cp.root_slot,
        "slipway_squashfs_bytes": cp.root_size,
        "slipway_disk_bytes": cp.disk_size,
    });
    let baseline = mkosi(work.path());
    match &baseline {
        Ok((t, size, root)) => {
            let ratio = t.as_secs_f64() / ours.as_secs_f64();
            eprintln!(
                "mkosi 14, one control-plane verity image, warm package cache: {:.1} s; \
                 image {} MiB, root partition {} MiB",
                t.as_secs_f64(),
                size >> 20,
                root >> 20
            );
            eprintln!(
                "ratio: slipway's whole cluster, full build, is {ratio:.1}x faster than mkosi's one image (target >= 5x, aim 8x)"
            );
            json["mkosi_warm_seconds"] = (t.as_secs_f64()).into();
            json["mkosi_image_bytes"] = (*size).into();
            json["mkosi_root_partition_bytes"] = (*root).into();
            json["ratio_vs_mkosi"] = ratio.into();
        }
        Err(why) => {
            eprintln!("BASELINE NOT MEASURED: {why}");
            json["mkosi"] = why.clone().into();
        }
    }
    let dir = repo().join("target/bench");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("build.json"),
        serde_json::to_string_pretty(&json).unwrap(),
    )
    .unwrap();
    if baseline.is_err() {
        std::process::exit(1);
    }
}
