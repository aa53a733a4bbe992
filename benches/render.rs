#![allow(clippy::unwrap_used)]
//! `make bench` for rendering: a 100-node cluster (3 control-plane, 97 workers).
//!
//! Reports, as medians over repeated runs:
//! - cold: empty secrets directory (PKI generation, 206 leaves) plus render and write;
//! - warm: secrets present, `slipway render` end to end (load, templates, Ignition, write);
//! - in-memory: the pure render of all nodes, no output written.
//!
//! The baseline is the issue's budget: warm render of 100 nodes under 1 s. Figures are
//! printed as a ratio to it and written to target/bench/render.json.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use slipway::cluster::Cluster;
use slipway::pipeline;
use slipway::pki::{self, EnsureOptions};
use slipway::profile::DataDir;
use slipway::render::Renderer;

const BUDGET: Duration = Duration::from_secs(1);
const NODES: usize = 100;
const CONTROL_PLANE: usize = 3;

fn cluster_toml() -> String {
    let mut s = String::from(
        r#"schema = 1
[cluster]
name = "bench"
kubernetes_version = "v1.34.2"
[network]
subnet = "10.10.0.0/22"
gateway = "10.10.0.1"
dns = ["10.10.0.1"]
ntp = ["10.10.0.1"]
pod_cidr = "10.244.0.0/16"
service_cidr = "10.96.0.0/12"
loadbalancer_range = "10.10.3.200-10.10.3.250"
[control_plane]
vip = "10.10.0.100"
[admin]
user = "admin"
ssh_authorized_keys = ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAILmexrVcnZz7ErHqaf+8sO9uJZjqAqTnvXrfDv9ogQBL bench"]
"#,
    );
    for i in 0..NODES {
        let (name, role) = if i < CONTROL_PLANE {
            (format!("cp{i}"), "control-plane")
        } else {
            (format!("w{i}"), "worker")
        };
        let host = 10 + i;
        writeln!(
            s,
            "[[nodes]]\nname = \"{name}\"\nrole = \"{role}\"\nip = \"10.10.1.{host}\"\nmac = \"52:54:00:00:01:{:02x}\"\ninstall_disk = \"/dev/disk/by-path/pci-0000:01:00.0-nvme-1\"",
            i
        )
        .unwrap();
    }
    s
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    // `cargo bench` passes --bench; a plain `cargo test --benches` run passes nothing we use.
    let quick =
        std::env::args().any(|a| a == "--quick") || !std::env::args().any(|a| a == "--bench");
    let runs = if quick { 1 } else { 7 };
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("cluster.toml");
    std::fs::write(&path, cluster_toml()).unwrap();
    let data = DataDir::new(env!("CARGO_MANIFEST_DIR"));

    let mut cold = Vec::new();
    for i in 0..runs.min(3) {
        let secrets = tmp.path().join(format!("cold-secrets-{i}"));
        let out = tmp.path().join(format!("cold-out-{i}"));
        let t = Instant::now();
        pipeline::render(&path, &secrets, &data, &out).unwrap();
        cold.push(t.elapsed());
    }
    let secrets = tmp.path().join("cold-secrets-0");
    let out = tmp.path().join("warm-out");
    pipeline::render(&path, &secrets, &data, &out).unwrap();
    let mut warm = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        let summary = pipeline::render(&path, &secrets, &data, &out).unwrap();
        warm.push(t.elapsed());
        assert_eq!(summary.nodes.len(), NODES);
    }
    let (cluster, _) = Cluster::load(&path).unwrap();
    let (pki, _) = pki::ensure(&secrets, &cluster, EnsureOptions::default()).unwrap();
    let renderer = Renderer::new(&data).unwrap();
    let mut mem = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        let nodes = pipeline::render_nodes(&cluster, &pki, &renderer).unwrap();
        mem.push(t.elapsed());
        assert_eq!(nodes.len(), NODES);
    }
    // The disk's own floor: the same number of files and directories created with plain
    // std::fs calls, one thread, no modes, no staging.
    let (n_files, n_dirs) = count_tree(&out.join("nodes"));
    let mut floor = Vec::new();
    for i in 0..runs {
        let root = tmp.path().join(format!("floor-{i}"));
        let t = Instant::now();
        for d in 0..n_dirs {
            std::fs::create_dir_all(root.join(format!("d{d}"))).unwrap();
        }
        for f in 0..n_files {
            std::fs::write(
                root.join(format!("d{}/f{f}", f % n_dirs.max(1))),
                [b'x'; 512],
            )
            .unwrap();
        }
        floor.push(t.elapsed());
    }
    let (cold, warm, mem, floor) = (median(cold), median(warm), median(mem), median(floor));
    let ratio = |d: Duration| d.as_secs_f64() / BUDGET.as_secs_f64();
    println!(
        "render, {NODES} nodes ({CONTROL_PLANE} control-plane), median of {runs} runs; baseline: the 1 s budget"
    );
    println!(
        "  cold (PKI + render + write) {:>9.1} ms  = {:.3} x budget",
        cold.as_secs_f64() * 1e3,
        ratio(cold)
    );
    println!(
        "  warm (render + write)       {:>9.1} ms  = {:.3} x budget",
        warm.as_secs_f64() * 1e3,
        ratio(warm)
    );
    println!(
        "  in memory (render only)     {:>9.1} ms  = {:.3} x budget",
        mem.as_secs_f64() * 1e3,
        ratio(mem)
    );
    println!(
        "  disk floor: {n_files} files + {n_dirs} dirs with plain std::fs {:>6.1} ms; warm render = {:.2} x that floor",
        floor.as_secs_f64() * 1e3,
        warm.as_secs_f64() / floor.as_secs_f64()
    );
    let json = serde_json::json!({
        "bench": "render-100-nodes",
        "runs": runs,
        "baseline_seconds": BUDGET.as_secs_f64(),
        "cold_seconds": cold.as_secs_f64(),
        "warm_seconds": warm.as_secs_f64(),
        "in_memory_seconds": mem.as_secs_f64(),
        "warm_ratio_to_baseline": ratio(warm),
        "disk_floor_seconds": floor.as_secs_f64(),
        "files": n_files,
        "dirs": n_dirs,
    });
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("render.json"),
        serde_json::to_vec_pretty(&json).unwrap(),
    )
    .unwrap();
    // The issue's criterion. Writing ~2400 files is bound by the disk (the floor above
    // shows this machine's), so a slow or busy disk can fail this: that is a real result.
    if !quick && warm > BUDGET {
        eprintln!("warm render exceeds the 1 s budget");
        std::process::exit(1);
    }
}

fn count_tree(dir: &std::path::Path) -> (usize, usize) {
    let (mut files, mut dirs) = (0, 0);
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            let (f, d) = count_tree(&p);
            files += f;
            dirs += d + 1;
        } else {
            files += 1;
        }
    }
    (files, dirs)
}
