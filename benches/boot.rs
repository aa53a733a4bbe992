#![allow(clippy::unwrap_used)]
//! `make bench` for booting: master1's disk from `slipway build` on an isolated network
//! (user-mode, restrict=on; SSH forwarded on loopback), under TCG here (KVM where it
//! works). Reports power-on to slipway-init, to first-boot-done (config applied, state
//! partition made), to the login prompt and to `systemctl is-system-running --wait`
//! returning "running". Results go to target/bench/boot.json.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../image-tests/harness/mod.rs"]
mod harness;

use std::time::Duration;

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return; // `cargo test --benches` smoke run: this bench needs `make bench`.
    }
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
        let init = vm.wait_for("slipway-init started", Duration::from_secs(300), true);
        let first_boot = vm.wait_for("first boot done", Duration::from_secs(300), true);
        let login = vm.wait_for("master1 login: ", Duration::from_secs(300), true);
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
    let path = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench");
    std::fs::create_dir_all(&path).unwrap();
    std::fs::write(
        path.join("boot.json"),
        serde_json::to_string_pretty(&runs).unwrap(),
    )
    .unwrap();
}
