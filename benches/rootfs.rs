#![allow(clippy::unwrap_used)]
//! `make bench` for root filesystems: the control-plane profile, built by Slipway cold
//! (empty cache, packages served from a loopback mirror so the network's speed is not
//! measured) and warm (locked, cached), beside mmdebstrap building the same package set
//! from a local repository. The baseline is mmdebstrap; figures are ratios to it. The
//! issue's target: warm at least 5x faster. Results go to target/bench/rootfs.json.

#[path = "../tests/common/http.rs"]
mod http;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use slipway::profile::DataDir;
use slipway::rootfs::{self, Options};

const SDE: u64 = 1_764_000_000;

fn env_path(var: &str) -> PathBuf {
    PathBuf::from(
        std::env::var_os(var).unwrap_or_else(|| panic!("{var} is not set: run `make bench`")),
    )
}

fn opts(cache: &Path, mirror: &str) -> Options {
    Options {
        data: DataDir::new(env!("CARGO_MANIFEST_DIR")),
        cache: cache.to_owned(),
        lock_path: env_path("SLIPWAY_TEST_LOCK"),
        mirror: Some(mirror.to_string()),
        host_root: PathBuf::from("/nonexistent"),
        locked: true,
        source_date_epoch: SDE,
        kube_artifacts: None,
    }
}

fn time_build(o: &Options, out: &Path) -> Duration {
    let t = Instant::now();
    let r = rootfs::build("control-plane", o).unwrap();
    rootfs::write_outputs(&r, out, SDE).unwrap();
    t.elapsed()
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return; // `cargo test --benches` smoke run: this bench needs `make bench`.
    }
    let cache = env_path("SLIPWAY_TEST_CACHE");
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("cp.tar");
    let warm_opts = opts(&cache, "http://127.0.0.1:9");
    let r = rootfs::build("control-plane", &warm_opts).unwrap();

    // A loopback mirror holding the locked packages at their pool paths.
    let mirror = work.path().join("mirror");
    for p in &r.locked.packages {
        let dst = mirror.join(&p.filename);
        std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
        std::fs::hard_link(cache.join("sha256").join(&p.sha256), &dst).unwrap();
    }
    let server = http::Server::serve(mirror.clone());

    let mut cold = Vec::new();
    for i in 0..2 {
        let c = work.path().join(format!("cold-cache-{i}"));
        cold.push(time_build(&opts(&c, &server.url), &out));
    }
    let mut warm = Vec::new();
    for _ in 0..3 {
        warm.push(time_build(&warm_opts, &out));
    }
    cold.sort();
    warm.sort();
    let (cold, warm) = (cold[0], warm[warm.len() / 2]);

    let repo = work.path().join("repo");
    slipway::debian::localrepo::write(&repo, "trixie", "amd64", &r.locked.packages, &cache)
        .unwrap();
    let theirs = work.path().join("theirs");
    let t = Instant::now();
    let status = Command::new("mmdebstrap")
        .args(["--quiet", "--mode=root", "--variant=required"])
        .arg(format!("--include={}", r.profile.packages.join(",")))
        .arg("trixie")
        .arg(&theirs)
        .arg(format!(
            "deb [trusted=yes] copy://{} trixie main",
            repo.display()
        ))
        .status()
        .unwrap();
    let mm = t.elapsed();
    assert!(status.success(), "mmdebstrap failed");
    let size = std::fs::metadata(&out).unwrap().len();

    println!(
        "rootfs control-plane ({} packages); baseline: mmdebstrap from a local repository",
        r.locked.packages.len()
    );
    println!(
        "  mmdebstrap             {:>7.1} s  = 1.0",
        mm.as_secs_f64()
    );
    println!(
        "  slipway cold (fetch)   {:>7.1} s  = {:.1}x faster",
        cold.as_secs_f64(),
        mm.as_secs_f64() / cold.as_secs_f64()
    );
    println!(
        "  slipway warm (cached)  {:>7.1} s  = {:.1}x faster (target: 5x)",
        warm.as_secs_f64(),
        mm.as_secs_f64() / warm.as_secs_f64()
    );
    println!(
        "  tar size               {:>7.1} MiB",
        size as f64 / 1048576.0
    );
    let json = serde_json::json!({
        "bench": "rootfs-control-plane",
        "packages": r.locked.packages.len(),
        "mmdebstrap_seconds": mm.as_secs_f64(),
        "cold_seconds": cold.as_secs_f64(),
        "warm_seconds": warm.as_secs_f64(),
        "warm_speedup": mm.as_secs_f64() / warm.as_secs_f64(),
        "cold_speedup": mm.as_secs_f64() / cold.as_secs_f64(),
        "tar_bytes": size,
    });
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("rootfs.json"),
        serde_json::to_vec_pretty(&json).unwrap(),
    )
    .unwrap();
    if mm.as_secs_f64() / warm.as_secs_f64() < 5.0 {
        eprintln!("warm build is less than 5x faster than mmdebstrap");
        std::process::exit(1);
    }
}
