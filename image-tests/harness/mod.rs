//! The image tests' glue over Slipway's own QEMU code (`slipway::vm`, what `slipway vm`
//! runs): work directories under target/image-tests/, wall times, test-only SSH keys,
//! and node-sized machines. A machine is killed when dropped; its console log stays, and
//! its path is in every failure message.
#![allow(dead_code, unused_imports, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

pub use slipway::vm::PingWatch;
pub use slipway::vm::qemu::{Disk, DiskKind, Machine, MachineSpec, Net, Nic, bad_line};

pub use slipway::vm::segment::{Probe, Segment};

pub mod cluster;
pub mod pxe;

/// Prints a test's wall time when dropped, also when the test fails.
pub struct WallTime(&'static str, Instant);

impl WallTime {
    pub fn start(test: &'static str) -> WallTime {
        WallTime(test, Instant::now())
    }
}

impl Drop for WallTime {
    fn drop(&mut self) {
        eprintln!(
            "{}: {} after {:.1} s wall time",
            self.0,
            if std::thread::panicking() {
                "failed"
            } else {
                "passed"
            },
            self.1.elapsed().as_secs_f64()
        );
    }
}

fn target() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/image-tests")
}

/// Where VM logs and disks live: target/image-tests/NAME/.
pub fn work_dir(name: &str) -> PathBuf {
    let d = target().join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// "kvm" or "tcg", probed once per host boot (kept in target/image-tests/accel).
pub fn accel() -> &'static str {
    slipway::vm::qemu::accel(&target().join("accel"))
}

/// Starts `spec` (inside `segment`'s namespace, if given), QEMU's messages beside its
/// console log.
pub fn start(spec: &MachineSpec, segment: Option<&Segment>, dir: &Path) -> Machine {
    Machine::start(
        spec,
        accel(),
        segment.map(Segment::prefix),
        &dir.join(format!("{}-qemu.log", spec.name)),
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

/// A node-sized machine (1 GiB, 1 vCPU, entropy) booting `disk` with `nics`, on
/// QEMU's own networking only. One vCPU: under TCG a second one is no faster here
/// (../shared/QEMU-NOTES.md), and a 2-vCPU guest once died in CI of an `int3` Oops
/// while the kernel patched its own code at boot, a cross-vCPU race of TCG's.
pub fn boot(name: &str, disk: &Path, nics: Vec<Nic>, dir: &Path) -> Machine {
    let mut spec = MachineSpec::new(name, disk, dir);
    spec.nics = nics;
    start(&spec, None, dir)
}

/// Called at the end of a passing test: removes the VM disks and firmware variables from
/// `dir` (gigabytes) and keeps the console logs. A failing test never gets here, so its
/// disks stay for inspection.
pub fn passed(dir: &Path) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        // A build's session (`slipway vm`, OUT/.slipway/vm): its logs kept beside.
        for log in std::fs::read_dir(p.join(".slipway/vm"))
            .into_iter()
            .flatten()
            .flatten()
        {
            if log.path().extension().is_some_and(|x| x == "log") {
                let _ = std::fs::rename(log.path(), dir.join(log.file_name()));
            }
        }
        if p.extension().is_some_and(|x| x == "raw" || x == "fd") || p.join("nodes").is_dir() {
            let _ = if p.is_dir() {
                std::fs::remove_dir_all(&p)
            } else {
                std::fs::remove_file(&p)
            };
        } else if p.is_dir() && p.file_name().is_some_and(|n| n == "vm") {
            // A session's directory: its disks too.
            passed(&p);
        }
    }
}

/// A test machine's disk size: `bytes`, plus 4 GiB when the images carry Kubernetes
/// (the test lock pins the example's release): each image is then ~0.8 GB larger, and
/// containerd unpacks the baked images (Cilium's alone several hundred MB) onto the state
/// partition. The disks are sparse: the room costs nothing until used.
pub fn disk_bytes(bytes: u64) -> u64 {
    if crate::common::kubernetes_pinned() {
        bytes + (4 << 30)
    } else {
        bytes
    }
}

/// A sparse copy of `disk` for one VM to write to.
pub fn disk_copy(disk: &Path, dir: &Path, name: &str) -> PathBuf {
    let to = dir.join(format!("{name}.raw"));
    let st = Command::new("cp")
        .arg("--sparse=always")
        .arg(disk)
        .arg(&to)
        .status()
        .unwrap();
    assert!(st.success(), "copying {}", disk.display());
    to
}

/// A sparse copy of a node disk grown to `bytes` (room for the state partition; more
/// with Kubernetes, [`disk_bytes`]).
pub fn grown_copy(disk: &Path, dir: &Path, name: &str, bytes: u64) -> PathBuf {
    let copy = disk_copy(disk, dir, name);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&copy)
        .unwrap()
        .set_len(disk_bytes(bytes))
        .unwrap();
    copy
}

/// A blank disk of `bytes` (sparse), as new hardware has.
pub fn blank_disk(dir: &Path, name: &str, bytes: u64) -> PathBuf {
    let disk = dir.join(format!("{name}.raw"));
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(disk_bytes(bytes))
        .unwrap();
    disk
}

/// A test-only SSH key pair (OpenSSH's ssh-keygen), for Ignition to put on the node.
pub struct TestKey {
    pub private: PathBuf,
    pub public: String,
}

pub fn test_key(dir: &Path) -> TestKey {
    let private = dir.join("id_ed25519");
    let _ = std::fs::remove_file(&private);
    let st = Command::new("ssh-keygen")
        .args([
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-C",
            "slipway-image-test",
            "-f",
        ])
        .arg(&private)
        .status()
        .expect("ssh-keygen (openssh-client; make deps installs it)");
    assert!(st.success());
    let public = std::fs::read_to_string(private.with_extension("pub"))
        .unwrap()
        .trim()
        .to_string();
    TestKey { private, public }
}

/// A free TCP port on 127.0.0.1 (for QEMU's hostfwd).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One NIC on a user-mode network that reaches nothing (restrict=on) but forwards
/// 127.0.0.1:`ssh_port` to the guest's `guest_ip`:22. The network is the guest's own
/// /24, so its static address works unchanged.
pub fn isolated_nic(mac: &str, guest_ip: &str, ssh_port: u16) -> Vec<Nic> {
    let net = guest_ip.rsplit_once('.').map(|(n, _)| n).unwrap();
    vec![Nic {
        mac: mac.to_string(),
        net: Net::User {
            net: format!("{net}.0/24"),
            forwards: vec![format!("tcp:127.0.0.1:{ssh_port}-{guest_ip}:22")],
        },
        pxe: None,
    }]
}

/// Runs `command` over SSH (the host's OpenSSH client) as `user` at `target`, through
/// `ssh` (a plain one, or one entering a segment), retrying the connection for up to
/// `timeout`. Returns (exit status, stdout).
fn ssh_via(
    mut ssh: Command,
    key: &TestKey,
    port: u16,
    target: &str,
    command: &str,
    timeout: Duration,
) -> (i32, String) {
    ssh.arg("-i")
        .arg(&key.private)
        .args([
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "ConnectTimeout=10",
            "-o",
            "LogLevel=ERROR",
            "-p",
        ])
        .arg(port.to_string())
        .arg(target)
        .arg(command);
    let start = Instant::now();
    loop {
        let o = ssh.output().expect("ssh (openssh-client)");
        let code = o.status.code().unwrap_or(-1);
        // 255: ssh itself failed (not up yet); anything else is the command's status.
        if code != 255 {
            return (code, String::from_utf8_lossy(&o.stdout).into_owned());
        }
        if start.elapsed() > timeout {
            panic!(
                "ssh {target}:{port} did not connect within {} s: {}",
                timeout.as_secs(),
                String::from_utf8_lossy(&o.stderr)
            );
        }
        std::thread::sleep(Duration::from_secs(2));
    }
}

/// `command` on a VM over SSH at 127.0.0.1:`port` (its forwarded port).
pub fn ssh(
    key: &TestKey,
    port: u16,
    user: &str,
    command: &str,
    timeout: Duration,
) -> (i32, String) {
    ssh_via(
        Command::new("ssh"),
        key,
        port,
        &format!("{user}@127.0.0.1"),
        command,
        timeout,
    )
}

/// `command` on `ip`:22 over SSH from inside `segment`.
pub fn ssh_segment(
    segment: &Segment,
    key: &TestKey,
    ip: &str,
    user: &str,
    command: &str,
    timeout: Duration,
) -> (i32, String) {
    ssh_via(
        segment.command("ssh"),
        key,
        22,
        &format!("{user}@{ip}"),
        command,
        timeout,
    )
}

/// The example cluster with `key` as the admin's only SSH key, written into `dir`.
pub fn example_with_key(example: &Path, key: &TestKey, dir: &Path) -> PathBuf {
    let text = std::fs::read_to_string(example).unwrap();
    let start = text.find("ssh-ed25519 ").unwrap();
    let end = start + text[start..].find('"').unwrap();
    let cluster = dir.join("cluster.toml");
    std::fs::write(
        &cluster,
        format!("{}{}{}", &text[..start], key.public, &text[end..]),
    )
    .unwrap();
    cluster
}

/// A machine's NIC on a tap of `segment` (made here), booting from the network with
/// QEMU's iPXE ROM (`rom`) or the firmware's own PXE client when `pxe` holds its boot
/// index, else with no option ROM (the disk boots).
pub fn segment_nic(segment: &Segment, tap: &str, mac: &str, pxe: Option<(u32, bool)>) -> Vec<Nic> {
    segment.add_tap(tap).unwrap_or_else(|e| panic!("{e}"));
    vec![Nic {
        mac: mac.to_string(),
        net: Net::Tap {
            ifname: tap.to_string(),
        },
        pxe,
    }]
}

/// [`Machine`]'s waits for tests: a failure is the test's panic, naming the log.
pub trait Wait {
    /// Waits until the console shows `pattern` (see [`Machine::wait_for`]); returns the
    /// time since power-on.
    fn wait(&mut self, pattern: &str, timeout: Duration, strict: bool) -> Duration;
    /// Waits until QEMU exits by itself.
    fn exit(&mut self, timeout: Duration);
}

impl Wait for Machine {
    fn wait(&mut self, pattern: &str, timeout: Duration, strict: bool) -> Duration {
        self.wait_for(pattern, timeout, strict)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    fn exit(&mut self, timeout: Duration) {
        self.wait_exit(timeout).unwrap_or_else(|e| panic!("{e}"))
    }
}
