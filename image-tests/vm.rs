//! `slipway vm`, the command users run in their CI, run as they would: by an
//! unprivileged user (one this test creates). A bad OUT is refused naming what is wrong;
//! `vm up` of master1 of two builds at once (the example and another cluster file with
//! master1 on another MAC) starts each in a session and network namespace of its own,
//! each machine getting through its firmware to slipway-init; `vm status --json` shows
//! each; `vm down` of both leaves no process or file of theirs behind. The booted
//! commands (`vm ssh`, `power-off`, `power-on`, `test --failover --junit`) run at the end
//! of image-tests/cluster.rs, on the cluster that test has booted.
#![allow(clippy::unwrap_used)]

#[path = "../tests/common/mod.rs"]
mod common;
mod harness;

use std::path::Path;
use std::process::{Command, Output};
use std::time::Instant;

/// The unprivileged user the test runs `slipway vm` as.
const USER: &str = "slipway-vm-test";

/// `slipway ARGS` as [`USER`] (runuser, util-linux), with its own HOME.
fn as_user(args: &[&str]) -> Output {
    let o = Command::new("runuser")
        .args(["-u", USER, "--", "env", &format!("HOME=/home/{USER}")])
        .arg(env!("CARGO_BIN_EXE_slipway"))
        .args(args)
        .output()
        .expect("runuser (util-linux)");
    eprintln!(
        "vm: slipway {}: {}\n{}{}",
        args.join(" "),
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

fn ok(args: &[&str]) -> String {
    let o = as_user(args);
    assert!(o.status.success(), "slipway {} failed", args.join(" "));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Processes of [`USER`] still running, as "PID STAT NAME" (ps): zombies left out, which
/// are dead and wait only for their reaper (init, once `vm up` that started them is gone).
fn user_processes() -> Vec<String> {
    let o = Command::new("ps")
        .args(["-u", USER, "-o", "pid=,stat=,comm="])
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter(|l| {
            l.split_whitespace()
                .nth(1)
                .is_some_and(|s| !s.starts_with('Z'))
        })
        .map(str::to_string)
        .collect()
}

/// Gives `path` (recursively) to [`USER`].
fn chown(path: &Path) {
    common::check(Command::new("chown").arg("-R").arg(USER).arg(path));
}

#[test]
fn an_unprivileged_user_starts_two_builds_at_once_and_takes_both_down() {
    let _wall = harness::WallTime::start(
        "an_unprivileged_user_starts_two_builds_at_once_and_takes_both_down",
    );
    if common::stdout(&common::check(Command::new("id").arg("-u"))).trim() != "0" {
        eprintln!("vm: SKIPPED: this test creates its unprivileged user, which needs root");
        return;
    }
    let _ = Command::new("userdel").args(["-r", USER]).output();
    common::check(Command::new("useradd").args(["-m", USER]));
    let dir = harness::work_dir("vm");
    chown(&dir);
    // The dirs above must let the user in (a checkout under /root would not).
    let key = harness::test_key(&dir);
    let cluster = harness::example_with_key(&common::example(), &key, &dir);
    let out = dir.join("out");
    common::build(&cluster, &dir.join("secrets"), &out, false);
    // A second cluster: another name, master1 on another MAC, built into its own OUT.
    let text = std::fs::read_to_string(&cluster).unwrap();
    let cluster_b = dir.join("cluster-b.toml");
    std::fs::write(
        &cluster_b,
        text.replace("52:54:00:00:00:11", "52:54:00:00:0b:11")
            .replace("name = \"homelab\"", "name = \"homelab-b\""),
    )
    .unwrap();
    let out_b = dir.join("out-b");
    common::build(&cluster_b, &dir.join("secrets-b"), &out_b, false);
    chown(&dir);
    let (out_s, out_b_s) = (out.to_str().unwrap(), out_b.to_str().unwrap());
    let key_s = key.private.to_str().unwrap();

    // Not a build: refused, naming it; a build of another cluster: refused, naming both.
    let o = as_user(&["vm", "up", dir.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("manifest.json") && err.contains("slipway build"),
        "{err}"
    );
    let o = as_user(&[
        "vm",
        "up",
        out_b_s,
        "--cluster",
        cluster.to_str().unwrap(),
        "--no-wait",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("out-b") && err.contains("is a build of cluster"),
        "{err}"
    );
    // A node disk missing: refused, naming the file.
    let missing = dir.join("out-missing");
    std::fs::create_dir_all(missing.join("nodes/master1")).unwrap();
    std::fs::copy(out.join("manifest.json"), missing.join("manifest.json")).unwrap();
    chown(&missing);
    let o = as_user(&["vm", "up", missing.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("nodes/master1/disk.raw") && err.contains("missing"),
        "{err}"
    );

    // Both builds up at once (master1 of each: the same MAC-less addresses, each on a
    // segment of its own), as the user: each machine gets through its firmware to
    // slipway-init on its console; then both sessions go down, leaving nothing. (Booted
    // all the way, and judged with `vm test`, in image-tests/cluster.rs: that cluster is
    // booted once for both.)
    let t = Instant::now();
    for o in [out_s, out_b_s] {
        ok(&[
            "vm",
            "up",
            o,
            "--node",
            "master1",
            "--identity",
            key_s,
            "--no-wait",
        ]);
    }
    for o in [&out, &out_b] {
        let log = o.join(".slipway/vm/master1-serial.log");
        let start = Instant::now();
        while !std::fs::read_to_string(&log).is_ok_and(|l| l.contains("slipway-init")) {
            assert!(
                start.elapsed().as_secs() < 300,
                "no slipway-init on {} within 300 s",
                log.display()
            );
            std::thread::sleep(std::time::Duration::from_millis(500));
        }
    }
    eprintln!(
        "vm: both sessions' master1 at slipway-init after {:.1} s",
        t.elapsed().as_secs_f64()
    );
    for (o, name) in [(out_s, "first"), (out_b_s, "second")] {
        let st: serde_json::Value =
            serde_json::from_str(&ok(&["--json", "vm", "status", o])).unwrap();
        let nodes = st["nodes"].as_array().unwrap();
        assert_eq!(nodes.len(), 1, "{name} build: {st}");
        assert_eq!(nodes[0]["name"], "master1", "{name} build: {st}");
        assert_ne!(nodes[0]["state"], "off", "{name} build: {st}");
    }
    // Each session on its own segment: two holders, two namespaces.
    let ns = |o: &Path| {
        let rec: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(o.join(".slipway/vm/session.json")).unwrap(),
        )
        .unwrap();
        let pid = rec["holder"].as_u64().unwrap();
        std::fs::read_link(format!("/proc/{pid}/ns/net")).unwrap()
    };
    let (a, b) = (ns(&out), ns(&out_b));
    let own = std::fs::read_link("/proc/self/ns/net").unwrap();
    assert!(
        a != b && a != own && b != own,
        "namespaces {a:?} {b:?} (the test's {own:?})"
    );
    for o in [out_s, out_b_s] {
        let down = ok(&["vm", "down", o]);
        assert!(down.contains("1 machines stopped"), "{down}");
    }
    // Nothing of either session is left: no process of the user (QEMU, the namespaces'
    // holders), no session directory.
    let left = user_processes();
    assert!(left.is_empty(), "left running: {left:?}");
    assert!(!out.join(".slipway/vm").exists());
    assert!(!out_b.join(".slipway/vm").exists());
    let _ = Command::new("userdel").args(["-r", USER]).output();
    chown_back(&dir);
    harness::passed(&dir);
}

/// The test's directory back to root, so the next run's cleanup needs nobody.
fn chown_back(dir: &Path) {
    common::check(Command::new("chown").arg("-R").arg("root").arg(dir));
}
