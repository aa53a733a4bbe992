//! The QEMU harness every image test uses: UEFI (OVMF, a private copy of the variable
//! store per VM), KVM where it works and TCG otherwise, the serial console captured to a
//! per-VM log under target/image-tests/, and waits for console patterns with explicit
//! timeouts. A VM is killed when dropped; its log stays, and its path is in every
//! failure message.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub mod cluster;
pub mod pxe;

pub const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
pub const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";

/// Console lines that fail a test wherever they appear.
pub const BADNESS: &[&str] = &[
    "Kernel panic",
    "Oops:",
    "BUG: ",
    "segfault at",
    "Out of memory",
    "oom-kill",
    "emergency mode",
    "Ordering cycle found",
];

/// Whether a console line shows something a healthy boot never prints: one of
/// [`BADNESS`], or slipway-init stopping the boot.
pub fn bad_line(line: &str) -> bool {
    BADNESS.iter().any(|b| line.contains(b))
        || (line.contains("slipway-init") && line.contains("FATAL"))
}

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

/// Where VM logs and disks live: target/image-tests/NAME/.
pub fn work_dir(name: &str) -> PathBuf {
    let d = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("target/image-tests")
        .join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// QEMU arguments for OVMF: the shared read-only code and this VM's own variable store.
fn firmware(vars: &Path) -> [String; 4] {
    [
        "-drive".into(),
        format!("if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}"),
        "-drive".into(),
        format!("if=pflash,format=raw,unit=1,file={}", vars.display()),
    ]
}

/// "kvm" when /dev/kvm exists and a probe VM gets through OVMF under it within 10 s,
/// else "tcg" (KVM hangs on some hosts). `SLIPWAY_QEMU_ACCEL` overrides. Probed once per
/// boot of the host: the answer is kept in target/image-tests/accel with the host's boot
/// id, so the other image-test binaries do not probe again.
pub fn accel() -> &'static str {
    static A: OnceLock<&'static str> = OnceLock::new();
    A.get_or_init(|| {
        if let Ok(a) = std::env::var("SLIPWAY_QEMU_ACCEL") {
            return if a == "kvm" { "kvm" } else { "tcg" };
        }
        if !Path::new("/dev/kvm").exists() {
            return "tcg";
        }
        let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .unwrap_or_default()
            .trim()
            .to_string();
        let record = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/image-tests/accel");
        let kept = std::fs::read_to_string(&record).unwrap_or_default();
        match kept.split_once(' ') {
            Some((id, "kvm")) if !boot_id.is_empty() && id == boot_id => return "kvm",
            Some((id, "tcg")) if !boot_id.is_empty() && id == boot_id => {
                eprintln!("harness: accelerator tcg (KVM probe failed earlier in this boot)");
                return "tcg";
            }
            _ => {}
        }
        let a = probe_kvm();
        let _ = std::fs::create_dir_all(record.parent().unwrap());
        let _ = std::fs::write(&record, format!("{boot_id} {a}"));
        a
    })
}

fn probe_kvm() -> &'static str {
    let dir = tempfile::tempdir().unwrap();
    let vars = dir.path().join("vars.fd");
    std::fs::copy(OVMF_VARS, &vars).unwrap();
    let log = dir.path().join("probe.log");
    // No disk: OVMF reaches its boot manager and reports it has nothing to boot.
    let mut child = Command::new("qemu-system-x86_64")
        .args([
            "-machine",
            "q35",
            "-accel",
            "kvm",
            "-m",
            "256",
            "-nodefaults",
        ])
        .args(["-display", "none", "-nic", "none", "-no-reboot"])
        .args(firmware(&vars))
        .arg("-serial")
        .arg(format!("file:{}", log.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let mut ok = false;
    while start.elapsed() < Duration::from_secs(10) {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("BdsDxe") || text.contains("Boot0") {
            ok = true;
            break;
        }
        if child.try_wait().ok().flatten().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let _ = child.kill();
    let _ = child.wait();
    let a = if ok { "kvm" } else { "tcg" };
    eprintln!(
        "harness: accelerator {a} (KVM probe {:.1} s)",
        start.elapsed().as_secs_f64()
    );
    a
}

pub struct VmConfig<'a> {
    pub name: &'a str,
    pub disk: &'a Path,
    pub memory_mib: u32,
    pub cpus: u32,
    /// Extra QEMU arguments (network devices, fw_cfg, ...). Without any `-nic`/`-netdev`,
    /// the VM has no network at all.
    pub extra: Vec<String>,
    /// The network namespace QEMU runs in (a [`Lan`]'s), or the test's own.
    pub netns: Option<&'a str>,
}

pub struct Vm {
    pub name: String,
    pub log: PathBuf,
    child: Child,
    started: Instant,
}

impl Vm {
    /// Starts a VM booting `disk` (used in place; pass a copy) with OVMF.
    pub fn start(cfg: VmConfig<'_>, dir: &Path) -> Vm {
        let vars = dir.join(format!("{}-vars.fd", cfg.name));
        std::fs::copy(OVMF_VARS, &vars).expect("ovmf (make deps installs it)");
        let log = dir.join(format!("{}-serial.log", cfg.name));
        let accel = accel();
        let mut cmd = match cfg.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, "qemu-system-x86_64"]);
                c
            }
            None => Command::new("qemu-system-x86_64"),
        };
        cmd.args(["-machine", "q35", "-accel"])
            .arg(if accel == "kvm" {
                "kvm".to_string()
            } else {
                "tcg,tb-size=256".to_string()
            })
            .args(["-cpu", if accel == "kvm" { "host" } else { "max" }])
            .arg("-smp")
            .arg(cfg.cpus.to_string())
            .arg("-m")
            .arg(cfg.memory_mib.to_string())
            .args(["-nodefaults", "-display", "none", "-no-reboot"])
            .args(firmware(&vars))
            .arg("-drive")
            .arg(format!(
                "if=none,id=disk0,format=raw,file={}",
                cfg.disk.display()
            ))
            // At PCI 00:04.0: the example cluster's install_disk
            // (/dev/disk/by-path/pci-0000:00:04.0), which the PXE installer looks for.
            .args(["-device", "virtio-blk-pci,drive=disk0,bootindex=1,addr=0x4"])
            // Entropy from the host, as most hypervisors offer.
            .args(["-device", "virtio-rng-pci"])
            .arg("-serial")
            .arg(format!("file:{}", log.display()));
        if !cfg.extra.iter().any(|a| a == "-nic" || a == "-netdev") {
            cmd.args(["-nic", "none"]);
        }
        cmd.args(&cfg.extra);
        let child = cmd
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join(format!("{}-qemu.log", cfg.name))).unwrap())
            .spawn()
            .expect("qemu-system-x86_64 (make deps installs it)");
        Vm {
            name: cfg.name.to_string(),
            log,
            child,
            started: Instant::now(),
        }
    }

    pub fn console(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.log).unwrap_or_default()).into_owned()
    }

    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Waits until the console shows `pattern`; fails on a timeout, on QEMU exiting, or
    /// (when `strict`) on a bad line before it. Returns the time since power-on.
    pub fn wait_for(&mut self, pattern: &str, timeout: Duration, strict: bool) -> Duration {
        let start = Instant::now();
        loop {
            let text = self.console();
            if strict && let Some(bad) = text.lines().find(|l| bad_line(l)) {
                panic!(
                    "{}: bad console line before {pattern:?}: {bad:?} (log {})",
                    self.name,
                    self.log.display()
                );
            }
            if text.contains(pattern) {
                return self.started.elapsed();
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "{}: QEMU exited ({status}) before {pattern:?} (log {})",
                    self.name,
                    self.log.display()
                );
            }
            if start.elapsed() > timeout {
                panic!(
                    "{}: no {pattern:?} on the console within {} s (log {})",
                    self.name,
                    timeout.as_secs(),
                    self.log.display()
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Whether QEMU still runs (with -no-reboot, a guest's reboot ends it).
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits until QEMU exits by itself: the guest powered off or, under -no-reboot,
    /// rebooted (an installer's last step). Fails after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) {
        let start = Instant::now();
        while self.running() {
            assert!(
                start.elapsed() < timeout,
                "{}: QEMU still runs after {} s: the guest did not reboot or power off (log {})",
                self.name,
                timeout.as_secs(),
                self.log.display()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Called at the end of a passing test: removes the VM disks and firmware variables from
/// `dir` (gigabytes) and keeps the console logs. A failing test never gets here, so its
/// disks stay for inspection.
pub fn passed(dir: &Path) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.extension().is_some_and(|x| x == "raw" || x == "fd") || p.join("nodes").is_dir() {
            let _ = if p.is_dir() {
                std::fs::remove_dir_all(&p)
            } else {
                std::fs::remove_file(&p)
            };
        }
    }
}

/// A node-sized VM (1 GiB, 1 vCPU) booting `disk`, with `extra` QEMU arguments. One vCPU:
/// under TCG a second one is no faster here (../shared/QEMU-NOTES.md), and a 2-vCPU guest
/// once died in CI of an `int3` Oops while the kernel patched its own code at boot
/// (sched_clock's static key), a cross-vCPU code-modification race of TCG's.
pub fn boot(name: &str, disk: &Path, extra: Vec<String>, dir: &Path) -> Vm {
    Vm::start(
        VmConfig {
            name,
            disk,
            memory_mib: 1024,
            cpus: 1,
            extra,
            netns: None,
        },
        dir,
    )
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

/// QEMU arguments for one NIC on a user-mode network that reaches nothing (restrict=on)
/// but forwards 127.0.0.1:`ssh_port` to the guest's `guest_ip`:22. The network is the
/// guest's own /24, so its static address works unchanged.
pub fn isolated_nic(mac: &str, guest_ip: &str, ssh_port: u16) -> Vec<String> {
    let net = guest_ip.rsplit_once('.').map(|(n, _)| n).unwrap();
    vec![
        "-netdev".into(),
        format!(
            "user,id=n0,restrict=on,net={net}.0/24,host={net}.2,hostfwd=tcp:127.0.0.1:{ssh_port}-{guest_ip}:22"
        ),
        "-device".into(),
        format!("virtio-net-pci,netdev=n0,mac={mac}"),
    ]
}

/// Runs `command` on the VM over SSH (the host's OpenSSH client) as `user`, at
/// 127.0.0.1:`port`; retries the connection for up to `timeout`. Returns (exit status,
/// stdout).
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

/// [`ssh`] to `ip`:22 from inside `lan`'s namespace.
pub fn ssh_lan(
    lan: &Lan,
    key: &TestKey,
    ip: &str,
    user: &str,
    command: &str,
    timeout: Duration,
) -> (i32, String) {
    ssh_via(
        lan.command("ssh"),
        key,
        22,
        &format!("{user}@{ip}"),
        command,
        timeout,
    )
}

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

/// One Ethernet segment for several VMs that cannot reach anything else: a network
/// namespace of its own (`ip netns`) holding a bridge, one tap per VM, and the test's
/// address on the bridge, from which it reaches the VMs (SSH, ARP, TCP probes) by running
/// commands in the namespace. The namespace has no other interface and no route out, so
/// no frame from a VM reaches the host's network. Deleted on drop; namespaces left by a
/// killed test run are deleted by the next one.
pub struct Lan {
    pub ns: String,
    taps: usize,
}

impl Lan {
    /// A new segment with the test's own address `host_cidr` (e.g. "192.168.1.5/24").
    /// Needs root (CI and `make test` run as root).
    pub fn new(host_cidr: &str) -> Lan {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        Lan::remove_stale();
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let ns = format!("slipway-test-{}-{n}", std::process::id());
        let ip = |args: &[&str]| {
            let o = Command::new("ip")
                .args(args)
                .output()
                .expect("ip (iproute2; make deps installs it)");
            assert!(
                o.status.success(),
                "ip {} failed: {} (the multi-VM tests need root for their network namespace)",
                args.join(" "),
                String::from_utf8_lossy(&o.stderr).trim()
            );
        };
        ip(&["netns", "add", &ns]);
        let lan = Lan { ns, taps: 0 };
        let ns = lan.ns.as_str();
        ip(&["-n", ns, "link", "set", "lo", "up"]);
        ip(&["-n", ns, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", ns, "link", "set", "br0", "up"]);
        ip(&["-n", ns, "addr", "add", host_cidr, "dev", "br0"]);
        lan
    }

    /// Deletes namespaces of test processes that no longer run.
    fn remove_stale() {
        let o = Command::new("ip").args(["netns", "list"]).output();
        let list = o.map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
        for line in list.unwrap_or_default().lines() {
            let name = line.split_whitespace().next().unwrap_or("");
            let Some(rest) = name.strip_prefix("slipway-test-") else {
                continue;
            };
            let pid = rest.split('-').next().unwrap_or("");
            if !Path::new("/proc").join(pid).exists() {
                let _ = Command::new("ip").args(["netns", "del", name]).status();
            }
        }
    }

    /// QEMU arguments for a virtio NIC with `mac` on a new tap port of the bridge.
    pub fn nic(&mut self, mac: &str) -> Vec<String> {
        let tap = format!("tap{}", self.taps);
        self.taps += 1;
        for args in [
            vec!["-n", &self.ns, "tuntap", "add", &tap, "mode", "tap"],
            vec!["-n", &self.ns, "link", "set", &tap, "master", "br0"],
            vec!["-n", &self.ns, "link", "set", &tap, "up"],
        ] {
            let st = Command::new("ip").args(&args).status().unwrap();
            assert!(st.success(), "ip {}", args.join(" "));
        }
        vec![
            "-netdev".into(),
            format!("tap,id=lan,ifname={tap},script=no,downscript=no"),
            "-device".into(),
            // romfile=: no iPXE option ROM, the disk boots.
            format!("virtio-net-pci,netdev=lan,mac={mac},romfile="),
        ]
    }

    /// Like [`Lan::nic`], but bootable: with QEMU's iPXE option ROM (`rom`), or without,
    /// through the firmware's own PXE client (OVMF's, over its virtio-net driver). After
    /// the disk in the boot order, so that only a machine whose disk does not boot (blank)
    /// boots from the network, or before it (`first`: a one-time network boot, as a BMC
    /// sets for reimaging).
    pub fn pxe_nic(&mut self, mac: &str, rom: bool, first: bool) -> Vec<String> {
        let mut args = self.nic(mac);
        if let Some(dev) = args.last_mut() {
            *dev = format!(
                "virtio-net-pci,netdev=lan,mac={mac},bootindex={}{}",
                if first { 0 } else { 2 },
                if rom { "" } else { ",romfile=" }
            );
        }
        args
    }

    /// `program` to run inside the namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns, program]);
        c
    }

    /// Whether a TCP connection from the test's address to `ip`:`port` is accepted
    /// ("open"), refused with a reset ("refused": a firewall let it through to a closed
    /// port) or gets no answer within 3 s ("dropped").
    pub fn probe(&self, ip: &str, port: u16) -> &'static str {
        let o = self
            .command("timeout")
            .args(["3", "bash", "-c", &format!("exec 3<>/dev/tcp/{ip}/{port}")])
            .output()
            .unwrap();
        match o.status.code() {
            Some(0) => "open",
            Some(124) => "dropped",
            _ if String::from_utf8_lossy(&o.stderr).contains("refused") => "refused",
            _ => panic!(
                "probe {ip}:{port}: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            ),
        }
    }

    /// The MAC address answering ARP for `ip` on the segment within 1 s, lowercase.
    pub fn arp(&self, ip: &str) -> Option<String> {
        let o = self
            .command("arping")
            .args(["-f", "-b", "-c", "1", "-w", "1", "-I", "br0", ip])
            .output()
            .expect("arping (iputils-arping; make deps installs it)");
        let text = String::from_utf8_lossy(&o.stdout);
        let line = text.lines().find(|l| l.contains("reply from"))?;
        let mac = line.split('[').nth(1)?.split(']').next()?;
        Some(mac.to_ascii_lowercase())
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
    }
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
