#![allow(clippy::unwrap_used)]
//! `make bench` for booting: master1's disk from `slipway build` on an isolated network
//! (user-mode, restrict=on; SSH forwarded on loopback), under TCG here (KVM where it
//! works). Reports power-on to slipway-init, to first-boot-done (config applied, state
//! partition made), to the login prompt and to `systemctl is-system-running --wait`
//! returning "running"; then the example cluster (see `cluster_run`), with keepalived's
//! and HAProxy's default timings and with the example's, the failover figures as a ratio.
//! Results go to target/bench/boot.json.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../image-tests/harness/mod.rs"]
mod harness;

use std::time::Duration;

use harness::Wait;

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return; // `cargo test --benches` smoke run: this bench needs `make bench`.
    }
    // `cargo bench --bench boot -- cluster` runs the cluster part alone (any argument
    // that is not a flag picks the parts whose names contain it: master1_alone,
    // example_cluster).
    let only = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let wanted = |part: &str| only.as_deref().is_none_or(|o| part.contains(o));
    let mut report = serde_json::Map::new();
    if wanted("master1_alone") {
        report.insert("master1_alone".into(), master1_alone());
    }
    if wanted("example_cluster") {
        // The same cluster with the timings of keepalived's and HAProxy's defaults (advert
        // every 1 s, priorities 100/99/98, a check every 2 s with fall 3: the
        // configuration before issue 19), then with the example's, in this run.
        let defaults = cluster_run(
            "bench-cluster-defaults",
            "vrrp_advert_interval_ms = 1000\nvrrp_priority_step = 1\n\
             api_check_interval_ms = 2000\napi_check_fall = 3\napi_shutdown_delay_seconds = 8",
        );
        let cluster = cluster_run("bench-cluster", "");
        let ratio = |key: &str| defaults[key].as_f64().unwrap() / cluster[key].as_f64().unwrap();
        eprintln!(
            "VIP outage, keepalived's defaults / the example's settings: master1 off {:.1}x, master2 off {:.1}x",
            ratio("failover_master1_off_seconds"),
            ratio("failover_master2_off_seconds")
        );
        report.insert(
            "failover_ratio_defaults_over_example".into(),
            serde_json::json!({
                "master1_off": ratio("failover_master1_off_seconds"),
                "master2_off": ratio("failover_master2_off_seconds"),
            }),
        );
        report.insert("example_cluster".into(), cluster);
        report.insert("example_cluster_keepalived_defaults".into(), defaults);
    }
    let path = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench");
    std::fs::create_dir_all(&path).unwrap();
    std::fs::write(
        path.join("boot.json"),
        serde_json::to_string_pretty(&serde_json::Value::Object(report)).unwrap(),
    )
    .unwrap();
}

/// master1's disk booted alone, twice.
fn master1_alone() -> serde_json::Value {
    let dir = harness::work_dir("bench-boot");
    let key = harness::test_key(&dir);
    let cluster = harness::example_with_key(&common::example(), &key, &dir);
    let out = dir.join("out");
    common::build(&cluster, &dir.join("secrets"), &out, false);
    let mut runs = Vec::new();
    for i in 0..2 {
        let disk = harness::grown_copy(
            &out.join("nodes/master1/disk.raw"),
            &dir,
            &format!("master1-{i}"),
            3 << 30,
        );
        let port = harness::free_port();
        let mut vm = harness::boot(
            &format!("master1-{i}"),
            &disk,
            harness::isolated_nic("52:54:00:00:00:11", "192.168.1.11", port),
            &dir,
        );
        let init = vm.wait("slipway-init started", Duration::from_secs(300), true);
        let first_boot = vm.wait("first boot done", Duration::from_secs(300), true);
        let login = vm.wait("master1 login: ", Duration::from_secs(300), true);
        let (code, state) = harness::ssh(
            &key,
            port,
            "admin",
            "systemctl is-system-running --wait",
            Duration::from_secs(300),
        );
        let running = vm.elapsed();
        assert!(code == 0 && state.trim() == "running", "{state}");
        vm.kill();
        eprintln!(
            "boot {i} ({}): slipway-init {:.1} s, first boot done {:.1} s, login {:.1} s, running {:.1} s",
            harness::accel(),
            init.as_secs_f64(),
            first_boot.as_secs_f64(),
            login.as_secs_f64(),
            running.as_secs_f64()
        );
        runs.push(serde_json::json!({
            "accel": harness::accel(),
            "to_init_seconds": init.as_secs_f64(),
            "to_first_boot_done_seconds": first_boot.as_secs_f64(),
            "to_login_seconds": login.as_secs_f64(),
            "to_running_seconds": running.as_secs_f64(),
        }));
    }
    harness::passed(&dir);
    serde_json::Value::Array(runs)
}

/// The example cluster's four nodes powered on at once on a private segment: power-on to
/// the VIP settled on master1 with HAProxy answering on VIP:6443, then the outage the
/// segment sees when master1 and then master2 lose power, and master1's return to
/// holding the VIP (power-on to preemption).
fn cluster_run(name: &str, control_plane: &str) -> serde_json::Value {
    let mut c = harness::cluster::TestCluster::up_with(name, &[], control_plane);
    // (The machines were started as `up` returned.)
    let on = std::time::Instant::now();
    let names: Vec<String> = c.names();
    let vip = c.wait_vip_on("master1", Duration::from_secs(5), Duration::from_secs(600));
    assert_eq!(c.probe(&c.vip.clone(), 6443), "open");
    let to_vip = vip.duration_since(on);
    let mut running = Vec::new();
    for n in &names {
        running.push(c.wait_running(n).as_secs_f64());
    }
    let watch = c.ping_watch(&c.vip.clone());
    std::thread::sleep(Duration::from_secs(2));
    let m1 = c.fail_over(&watch, "master1", "master2");
    let m2 = c.fail_over(&watch, "master2", "master3");
    let back = std::time::Instant::now();
    c.power_on("master1");
    let preempted = c
        .wait_vip_on("master1", Duration::from_secs(3), Duration::from_secs(600))
        .duration_since(back);
    drop(watch);
    eprintln!(
        "example cluster {name} ({}): VIP on master1 {:.1} s after power-on; nodes running at {running:?} s; \
         VIP outage master1 off {:.2} s, master2 off {:.2} s; master1 back holds the VIP {:.1} s after power-on",
        harness::accel(),
        to_vip.as_secs_f64(),
        m1.as_secs_f64(),
        m2.as_secs_f64(),
        preempted.as_secs_f64()
    );
    let dir = c.dir.clone();
    drop(c);
    harness::passed(&dir);
    serde_json::json!({
        "accel": harness::accel(),
        "power_on_to_vip_seconds": to_vip.as_secs_f64(),
        "power_on_to_running_seconds": running,
        "failover_master1_off_seconds": m1.as_secs_f64(),
        "failover_master2_off_seconds": m2.as_secs_f64(),
        "master1_back_to_vip_seconds": preempted.as_secs_f64(),
    })
}
