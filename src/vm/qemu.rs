//! One QEMU machine: UEFI (OVMF, a private copy of the variable store), KVM where a
//! probe VM gets through the firmware and TCG otherwise, the serial console logged to a
//! file (and offered on a unix socket for `slipway vm console`), QMP on a unix socket for
//! a graceful power-off. The command line is planned by a pure function
//! ([`MachineSpec::args`]); starting it is [`Machine::start`], the one place QEMU is run.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::VmError;

pub const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
pub const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";
const QEMU: &str = "qemu-system-x86_64";

/// Console lines a healthy boot never prints.
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

/// QEMU and OVMF are there, or the error names the Debian package that brings them.
pub fn check_tools() -> Result<(), VmError> {
    if Command::new(QEMU)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_err()
    {
        return Err(VmError::Missing {
            what: QEMU.into(),
            package: "qemu-system-x86".into(),
        });
    }
    for f in [OVMF_CODE, OVMF_VARS] {
        if !Path::new(f).exists() {
            return Err(VmError::Missing {
                what: f.into(),
                package: "ovmf".into(),
            });
        }
    }
    Ok(())
}

/// "kvm" when /dev/kvm can be opened and a probe VM gets through OVMF under it within
/// 10 s, else "tcg" (KVM hangs on some hosts). `SLIPWAY_QEMU_ACCEL` overrides. Probed
/// once per host boot: the answer is kept in `record` with the host's boot id.
pub fn accel(record: &Path) -> &'static str {
    static A: OnceLock<&'static str> = OnceLock::new();
    A.get_or_init(|| {
        if let Ok(a) = std::env::var("SLIPWAY_QEMU_ACCEL") {
            return if a == "kvm" { "kvm" } else { "tcg" };
        }
        if std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .is_err()
        {
            return "tcg";
        }
        let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .unwrap_or_default()
            .trim()
            .to_string();
        let kept = std::fs::read_to_string(record).unwrap_or_default();
        match kept.split_once(' ') {
            Some((id, "kvm")) if !boot_id.is_empty() && id == boot_id => return "kvm",
            Some((id, "tcg")) if !boot_id.is_empty() && id == boot_id => return "tcg",
            _ => {}
        }
        let a = probe_kvm();
        if let Some(d) = record.parent() {
            let _ = std::fs::create_dir_all(d);
        }
        let _ = std::fs::write(record, format!("{boot_id} {a}"));
        a
    })
}

fn probe_kvm() -> &'static str {
    let Ok(dir) = tempfile::tempdir() else {
        return "tcg";
    };
    let vars = dir.path().join("vars.fd");
    if std::fs::copy(OVMF_VARS, &vars).is_err() {
        return "tcg";
    }
    let log = dir.path().join("probe.log");
    // No disk: OVMF reaches its boot manager and reports it has nothing to boot.
    let Ok(mut child) = Command::new(QEMU)
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
        .args(firmware_args(&vars))
        .arg("-serial")
        .arg(format!("file:{}", log.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
    else {
        return "tcg";
    };
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
    if ok { "kvm" } else { "tcg" }
}

fn firmware_args(vars: &Path) -> [String; 4] {
    [
        "-drive".into(),
        format!("if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}"),
        "-drive".into(),
        format!("if=pflash,format=raw,unit=1,file={}", vars.display()),
    ]
}

/// How a disk is attached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiskKind {
    /// virtio-blk at PCI `00:ADDR.0` (the example's install_disk is 00:04.0).
    Virtio { addr: u8 },
    /// A CD-ROM on the q35's AHCI controller.
    Cdrom,
    /// A USB stick on an xHCI controller.
    Usb,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disk {
    pub path: PathBuf,
    /// "raw" or "qcow2".
    pub format: String,
    pub kind: DiskKind,
    /// The firmware's boot order (lower first); None: not bootable by index.
    pub bootindex: Option<u32>,
}

/// A network interface and what it is attached to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Net {
    /// A tap device of a [`super::segment::Segment`] (QEMU runs in its namespace).
    Tap { ifname: String },
    /// QEMU's user-mode network, reaching nothing (`restrict=on`), with TCP forwards
    /// from 127.0.0.1 (`hostfwd=tcp:127.0.0.1:PORT-GUEST:PORT`).
    User { net: String, forwards: Vec<String> },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nic {
    pub mac: String,
    pub net: Net,
    /// None: the NIC's option ROM is left out (the disk boots); Some(i): bootable with
    /// QEMU's iPXE ROM (`rom`) or the firmware's own PXE client, at boot index i.
    pub pxe: Option<(u32, bool)>,
}

/// Everything a machine is made of; [`MachineSpec::args`] is its QEMU command line.
#[derive(Debug, Clone)]
pub struct MachineSpec {
    pub name: String,
    pub memory_mib: u32,
    pub cpus: u32,
    pub disks: Vec<Disk>,
    pub nics: Vec<Nic>,
    /// A virtio-rng device (entropy from the host, as most hypervisors offer). Without
    /// it, and with `cpu` = "qemu64" (no RDRAND), the guest's random pool starts empty.
    pub rng: bool,
    /// `-cpu`: None is "host" under KVM and "qemu64" under TCG (measured: a node
    /// disk runs 20-25 % sooner than with "max", whose emulated extensions cost more
    /// than they give; sshd-keygen alone 22 s against 9 s).
    pub cpu: Option<String>,
    /// The machine's own copy of the OVMF variable store.
    pub vars: PathBuf,
    /// The serial console: logged here (appended), and served on `console_socket`.
    pub serial_log: PathBuf,
    pub console_socket: Option<PathBuf>,
    pub qmp_socket: Option<PathBuf>,
    /// A reboot ends QEMU instead (an installer's last step, or a test that counts
    /// boots).
    pub no_reboot: bool,
    /// `-fw_cfg` entries ("name=opt/com.coreos/config,file=PATH").
    pub fw_cfg: Vec<String>,
}

impl MachineSpec {
    /// A node-sized machine booting `disk` (virtio at 00:04.0, boot index 1) with
    /// entropy, no network and no sockets; change what differs.
    pub fn new(name: &str, disk: &Path, dir: &Path) -> MachineSpec {
        MachineSpec {
            name: name.to_string(),
            memory_mib: 1024,
            cpus: 1,
            disks: vec![Disk {
                path: disk.to_owned(),
                format: "raw".into(),
                kind: DiskKind::Virtio { addr: 4 },
                bootindex: Some(1),
            }],
            nics: Vec::new(),
            rng: true,
            cpu: None,
            vars: dir.join(format!("{name}-vars.fd")),
            serial_log: dir.join(format!("{name}-serial.log")),
            console_socket: None,
            qmp_socket: None,
            no_reboot: true,
            fw_cfg: Vec::new(),
        }
    }

    /// QEMU's arguments under `accel` ("kvm" or "tcg").
    pub fn args(&self, accel: &str) -> Vec<String> {
        let mut a: Vec<String> = Vec::new();
        let mut push = |xs: &[&str]| a.extend(xs.iter().map(|s| s.to_string()));
        push(&["-name", &self.name, "-machine", "q35", "-accel"]);
        push(&[if accel == "kvm" {
            "kvm"
        } else {
            "tcg,tb-size=256"
        }]);
        let cpu = self
            .cpu
            .clone()
            .unwrap_or_else(|| if accel == "kvm" { "host" } else { "qemu64" }.into());
        push(&["-cpu", &cpu, "-smp", &self.cpus.to_string()]);
        push(&["-m", &self.memory_mib.to_string()]);
        push(&["-nodefaults", "-display", "none"]);
        if self.no_reboot {
            push(&["-no-reboot"]);
        }
        a.extend(firmware_args(&self.vars));
        if self.disks.iter().any(|d| d.kind == DiskKind::Usb) {
            a.extend(["-device".into(), "qemu-xhci,id=xhci".into()]);
        }
        let mut cdroms = 0;
        for (i, d) in self.disks.iter().enumerate() {
            let id = format!("disk{i}");
            let boot = d
                .bootindex
                .map(|b| format!(",bootindex={b}"))
                .unwrap_or_default();
            a.push("-drive".into());
            a.push(format!(
                "if=none,id={id},format={},file={}{}",
                d.format,
                d.path.display(),
                match d.kind {
                    DiskKind::Cdrom => ",media=cdrom,readonly=on",
                    DiskKind::Usb => ",readonly=on",
                    DiskKind::Virtio { .. } => "",
                }
            ));
            a.push("-device".into());
            a.push(match d.kind {
                DiskKind::Virtio { addr } => {
                    format!("virtio-blk-pci,drive={id},addr=0x{addr:x}{boot}")
                }
                DiskKind::Cdrom => {
                    cdroms += 1;
                    format!("ide-cd,drive={id},bus=ide.{}{boot}", cdroms - 1)
                }
                DiskKind::Usb => format!("usb-storage,bus=xhci.0,drive={id},removable=on{boot}"),
            });
        }
        if self.rng {
            a.extend(["-device".into(), "virtio-rng-pci".into()]);
        }
        if self.nics.is_empty() {
            a.extend(["-nic".into(), "none".into()]);
        }
        for (i, n) in self.nics.iter().enumerate() {
            let id = format!("net{i}");
            a.push("-netdev".into());
            a.push(match &n.net {
                Net::Tap { ifname } => {
                    format!("tap,id={id},ifname={ifname},script=no,downscript=no")
                }
                Net::User { net, forwards } => {
                    let host = net
                        .rsplit_once('.')
                        .map(|(p, _)| format!("{p}.2"))
                        .unwrap_or_default();
                    let mut s = format!("user,id={id},restrict=on,net={net},host={host}");
                    for f in forwards {
                        s.push_str(&format!(",hostfwd={f}"));
                    }
                    s
                }
            });
            a.push("-device".into());
            a.push(match n.pxe {
                None => format!("virtio-net-pci,netdev={id},mac={},romfile=", n.mac),
                Some((index, rom)) => format!(
                    "virtio-net-pci,netdev={id},mac={},bootindex={index}{}",
                    n.mac,
                    if rom { "" } else { ",romfile=" }
                ),
            });
        }
        match &self.console_socket {
            Some(sock) => {
                a.push("-chardev".into());
                a.push(format!(
                    "socket,id=serial0,path={},server=on,wait=off,logfile={},logappend=on",
                    sock.display(),
                    self.serial_log.display()
                ));
                a.extend(["-serial".into(), "chardev:serial0".into()]);
            }
            None => {
                a.push("-chardev".into());
                a.push(format!(
                    "file,id=serial0,path={},append=on",
                    self.serial_log.display()
                ));
                a.extend(["-serial".into(), "chardev:serial0".into()]);
            }
        }
        if let Some(q) = &self.qmp_socket {
            a.push("-qmp".into());
            a.push(format!("unix:{},server=on,wait=off", q.display()));
        }
        for f in &self.fw_cfg {
            a.extend(["-fw_cfg".into(), f.clone()]);
        }
        a
    }
}

/// A running QEMU.
pub struct Machine {
    pub name: String,
    pub pid: u32,
    pub log: PathBuf,
    pub qmp: Option<PathBuf>,
    /// The child, when this process started it (it reaps it); None when attached by pid.
    child: Option<Child>,
    /// Where this boot's console output starts in the log.
    pub log_start: u64,
    pub started: Instant,
}

impl Machine {
    /// Starts `spec` under `accel`, inside `namespace` (a command prefix that enters a
    /// segment's namespaces, or none), QEMU's own messages into `stderr_log`. The
    /// variable store is copied from OVMF's template unless the machine has one already
    /// (a machine keeps its boot entries across power cycles).
    pub fn start(
        spec: &MachineSpec,
        accel: &str,
        namespace: Option<Command>,
        stderr_log: &Path,
    ) -> Result<Machine, VmError> {
        let io = |what: &str, path: &Path| {
            let what = what.to_string();
            let path = path.to_owned();
            move |e: std::io::Error| VmError::Io {
                what,
                path,
                source: e,
            }
        };
        if !spec.vars.exists() {
            std::fs::copy(OVMF_VARS, &spec.vars)
                .map_err(io("copying OVMF's variables to", &spec.vars))?;
        }
        if let Some(s) = &spec.console_socket {
            let _ = std::fs::remove_file(s);
        }
        if let Some(s) = &spec.qmp_socket {
            let _ = std::fs::remove_file(s);
        }
        let log_start = std::fs::metadata(&spec.serial_log).map_or(0, |m| m.len());
        let mut cmd = match namespace {
            Some(mut ns) => {
                ns.arg(QEMU);
                ns
            }
            None => Command::new(QEMU),
        };
        cmd.args(spec.args(accel));
        let err = std::fs::File::create(stderr_log).map_err(io("creating", stderr_log))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err)
            // Its own process group: a terminal's ^C to `slipway vm up` does not reach
            // the machines it leaves running.
            .process_group(0)
            .spawn()
            .map_err(|e| VmError::Spawn {
                what: format!("{cmd:?}"),
                source: e,
            })?;
        Ok(Machine {
            name: spec.name.clone(),
            pid: child.id(),
            log: spec.serial_log.clone(),
            qmp: spec.qmp_socket.clone(),
            child: Some(child),
            log_start,
            started: Instant::now(),
        })
    }

    /// A machine started by another process (`slipway vm up`), known by its pid.
    pub fn attach(name: &str, pid: u32, log: PathBuf, qmp: Option<PathBuf>) -> Machine {
        Machine {
            name: name.to_string(),
            pid,
            log,
            qmp,
            child: None,
            log_start: 0,
            started: Instant::now(),
        }
    }

    /// The console output of this boot.
    pub fn console(&self) -> String {
        let bytes = std::fs::read(&self.log).unwrap_or_default();
        let start = (self.log_start as usize).min(bytes.len());
        String::from_utf8_lossy(&bytes[start..]).into_owned()
    }

    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Whether QEMU still runs.
    pub fn running(&mut self) -> bool {
        match &mut self.child {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => super::process_alive(self.pid),
        }
    }

    /// Waits until the console shows `pattern`; an error on a timeout, on QEMU exiting,
    /// or (when `strict`) on a bad line before it. Returns the time since power-on.
    pub fn wait_for(
        &mut self,
        pattern: &str,
        timeout: Duration,
        strict: bool,
    ) -> Result<Duration, VmError> {
        let start = Instant::now();
        loop {
            let text = self.console();
            if strict && let Some(bad) = text.lines().find(|l| bad_line(l)) {
                return Err(self.failed(format!("bad console line before {pattern:?}: {bad:?}")));
            }
            if text.contains(pattern) {
                return Ok(self.started.elapsed());
            }
            if !self.running() {
                return Err(self.failed(format!("QEMU exited before {pattern:?}")));
            }
            if start.elapsed() > timeout {
                return Err(self.failed(format!(
                    "no {pattern:?} on the console within {} s",
                    timeout.as_secs()
                )));
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    fn failed(&self, reason: String) -> VmError {
        VmError::Boot {
            node: self.name.clone(),
            reason,
            log: self.log.clone(),
        }
    }

    /// Waits until QEMU exits by itself (the guest powered off, or rebooted under
    /// `no_reboot`).
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<(), VmError> {
        let start = Instant::now();
        while self.running() {
            if start.elapsed() > timeout {
                return Err(self.failed(format!(
                    "QEMU still runs after {} s: the guest did not reboot or power off",
                    timeout.as_secs()
                )));
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        Ok(())
    }

    /// Pulls the plug: QEMU killed, no shutdown (a power or host failure).
    pub fn kill(&mut self) {
        match &mut self.child {
            Some(c) => {
                let _ = c.kill();
                let _ = c.wait();
            }
            None => super::kill_pid(self.pid),
        }
    }

    /// Presses the power button (ACPI, through QMP): the guest shuts down cleanly.
    pub fn power_button(&self) -> Result<(), VmError> {
        let Some(q) = &self.qmp else {
            return Err(self.failed("no QMP socket to press the power button through".into()));
        };
        super::qmp::command(q, "system_powerdown").map_err(|reason| self.failed(reason))
    }
}

impl Drop for Machine {
    /// A machine this process started (and still owns) dies with it.
    fn drop(&mut self) {
        if self.child.is_some() {
            self.kill();
        }
    }
}

impl Machine {
    /// Leaves the machine running after this value is gone (`slipway vm up`).
    pub fn detach(mut self) -> u32 {
        self.child = None;
        self.pid
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_machine_has_its_disk_at_the_install_path_and_user_networking_is_restricted() {
        let mut m = MachineSpec::new("master1", Path::new("/d/master1.qcow2"), Path::new("/s"));
        m.disks[0].format = "qcow2".into();
        m.nics.push(Nic {
            mac: "52:54:00:00:00:11".into(),
            net: Net::User {
                net: "192.168.1.0/24".into(),
                forwards: vec!["tcp:127.0.0.1:2222-192.168.1.11:22".into()],
            },
            pxe: None,
        });
        let a = m.args("tcg").join(" ");
        assert!(a.contains("-accel tcg,tb-size=256 -cpu qemu64"), "{a}");
        assert!(
            a.contains("if=none,id=disk0,format=qcow2,file=/d/master1.qcow2 -device virtio-blk-pci,drive=disk0,addr=0x4,bootindex=1"),
            "{a}"
        );
        assert!(a.contains("user,id=net0,restrict=on,net=192.168.1.0/24,host=192.168.1.2,hostfwd=tcp:127.0.0.1:2222-192.168.1.11:22"), "{a}");
        assert!(
            a.contains("virtio-net-pci,netdev=net0,mac=52:54:00:00:00:11,romfile="),
            "{a}"
        );
        assert!(a.contains("-device virtio-rng-pci"));
        assert!(a.contains("file=/s/master1-vars.fd"));
        m.rng = false;
        m.cpu = Some("qemu64".into());
        let a = m.args("kvm").join(" ");
        assert!(
            !a.contains("virtio-rng") && a.contains("-accel kvm -cpu qemu64"),
            "{a}"
        );
        m.disks.push(Disk {
            path: "/i.iso".into(),
            format: "raw".into(),
            kind: DiskKind::Usb,
            bootindex: Some(0),
        });
        let a = m.args("kvm").join(" ");
        assert!(
            a.contains("-device qemu-xhci,id=xhci -drive if=none,id=disk0,")
                && a.contains("-drive if=none,id=disk1,format=raw,file=/i.iso,readonly=on -device usb-storage,bus=xhci.0,drive=disk1,removable=on,bootindex=0"),
            "{a}"
        );
    }
}
