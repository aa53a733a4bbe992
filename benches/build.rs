#![allow(clippy::unwrap_used)]
//! `make bench` for `slipway build`: the whole example cluster (2 role disks with qcow2
//! copies, 4 node disks, secrets, render, manifest) from a warm package cache, beside
//! mkosi (Debian 12's 14) building one equivalent verity disk image of the control-plane
//! package set with a warm package cache (benches/mkosi/). The baseline is mkosi; the
//! figure is a ratio to it (the target: at least 5x faster), with the image and
//! root partition sizes beside it. Results go to target/bench/build.json.

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

fn slipway_build(work: &Path, i: usize) -> (Duration, slipway::build::Manifest) {
    let opts = slipway::build::BuildOptions {
        rootfs: Options {
            data: DataDir::new(repo()),
            cache: env_path("SLIPWAY_TEST_CACHE"),
            lock_path: env_path("SLIPWAY_TEST_LOCK"),
            mirror: Some("http://127.0.0.1:9".into()),
            host_root: PathBuf::from("/nonexistent"),
            locked: true,
            source_date_epoch: 1_764_000_000,
            kube_artifacts: None,
        },
        secrets_dir: work.join("secrets"),
        init: env_path("SLIPWAY_INIT"),
        qcow2: true,
        progress: false,
    };
    let out = work.join(format!("out-{i}"));
    let t = Instant::now();
    let m = slipway::build::build(&repo().join("examples/homelab/cluster.toml"), &opts, &out)
        .unwrap_or_else(|e| panic!("{e:#}"));
    let took = t.elapsed();
    std::fs::remove_dir_all(&out).unwrap();
    (took, m)
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
    // One build to warm the depmod cache and the page cache, then three timed.
    let (_, m) = slipway_build(work.path(), 0);
    let times: Vec<Duration> = (1..=3).map(|i| slipway_build(work.path(), i).0).collect();
    let ours = median(times.clone());
    let cp = m.roles.iter().find(|r| r.role == "control-plane").unwrap();
    eprintln!(
        "slipway build, example cluster (2 roles, 4 nodes), warm: median {:.1} s of {:?}",
        ours.as_secs_f64(),
        times
            .iter()
            .map(|t| format!("{:.1}", t.as_secs_f64()))
            .collect::<Vec<_>>()
    );
    eprintln!(
        "  control-plane: root partition {} MiB (squashfs {} MiB), disk {} MiB",
        cp.root_slot >> 20,
        cp.root_size >> 20,
        cp.disk_size >> 20
    );
    let baseline = mkosi(work.path());
    let json = match &baseline {
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
                "ratio: slipway's whole cluster is {ratio:.1}x faster than mkosi's one image (target >= 5x)"
            );
            serde_json::json!({
                "slipway_warm_seconds": ours.as_secs_f64(),
                "slipway_root_partition_bytes": cp.root_slot,
                "slipway_squashfs_bytes": cp.root_size,
                "slipway_disk_bytes": cp.disk_size,
                "mkosi_warm_seconds": t.as_secs_f64(),
                "mkosi_image_bytes": size,
                "mkosi_root_partition_bytes": root,
                "ratio_vs_mkosi": ratio,
            })
        }
        Err(why) => {
            eprintln!("BASELINE NOT MEASURED: {why}");
            serde_json::json!({
                "slipway_warm_seconds": ours.as_secs_f64(),
                "slipway_root_partition_bytes": cp.root_slot,
                "slipway_squashfs_bytes": cp.root_size,
                "mkosi": why,
            })
        }
    };
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
