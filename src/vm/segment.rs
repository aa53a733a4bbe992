//! One Ethernet segment for a cluster's machines that nothing outside can reach: a new
//! user and network namespace (util-linux `unshare --user --map-root-user --net`, held
//! open by a `sleep` in it), holding a bridge, one tap per machine, and an address of the
//! host's own on the bridge from which it reaches the machines (SSH, ARP, TCP probes) by
//! running programs in the namespace (`nsenter`). The namespace has no other interface
//! and no route out, so no frame from a machine reaches the host's network.
//!
//! Why a user namespace: it needs no root. Inside it the caller is root of its own
//! network namespace (bridges and taps are made there, QEMU opens its taps there), and
//! outside it is who it was. Root works the same way. QEMU's socket networking would
//! need no namespace at all, but the host would then have no address on the segment to
//! reach the VIP and the nodes from (ARP, VRRP, the firewall as the LAN sees them).
//!
//! The segment lives as long as its holder process: [`Segment::close`] (or dropping an
//! owned one) kills it, and the namespace goes with the last process in it.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::VmError;

/// A segment's namespace, held by a process of its own.
#[derive(Debug)]
pub struct Segment {
    /// The holder's pid (`sleep infinity` inside the namespaces).
    pub holder: u32,
    /// Its start time (clock ticks since boot, /proc/PID/stat), so that a recycled pid
    /// is never taken for it.
    pub holder_start: u64,
    /// The host's address on the bridge, `ADDR/PREFIX`.
    pub host_cidr: String,
    /// The holder, when this process started it and has not detached it: killed (and
    /// reaped) when the segment is dropped.
    child: Option<Child>,
}

/// How a TCP connection attempt from the segment ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Probe {
    /// Accepted.
    Open,
    /// Refused with a reset: a firewall let it through to a closed port.
    Refused,
    /// No answer within 3 s.
    Dropped,
}

impl Segment {
    /// A new segment with the host's address `host_cidr` (e.g. "192.168.1.254/24").
    pub fn create(host_cidr: &str) -> Result<Segment, VmError> {
        let mut holder = Command::new("unshare");
        holder
            .args([
                "--user",
                "--map-root-user",
                "--net",
                "--",
                "sleep",
                "infinity",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0);
        let child = holder.spawn().map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                VmError::Missing {
                    what: "unshare".into(),
                    package: "util-linux".into(),
                }
            } else {
                VmError::Spawn {
                    what: "unshare".into(),
                    source: e,
                }
            }
        })?;
        let pid = child.id();
        // The holder is in its namespaces once /proc/PID/ns/net differs from ours; if
        // unshare fails (user namespaces disabled), it exits with a message.
        let mut child = child;
        let start = Instant::now();
        let ours = std::fs::read_link("/proc/self/ns/net").ok();
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                let mut err = String::new();
                if let Some(mut e) = child.stderr.take() {
                    let _ = std::io::Read::read_to_string(&mut e, &mut err);
                }
                return Err(VmError::Namespace(format!(
                    "unshare --user --map-root-user --net exited ({status}): {} (are unprivileged user namespaces enabled? sysctl kernel.unprivileged_userns_clone, user.max_user_namespaces)",
                    err.trim()
                )));
            }
            let theirs = std::fs::read_link(format!("/proc/{pid}/ns/net")).ok();
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            if theirs.is_some() && theirs != ours && comm.trim() == "sleep" {
                break;
            }
            if start.elapsed() > Duration::from_secs(10) {
                let _ = child.kill();
                return Err(VmError::Namespace(
                    "the namespace holder did not start within 10 s".into(),
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let seg = Segment {
            holder: pid,
            holder_start: super::process_start(pid).unwrap_or(0),
            host_cidr: host_cidr.to_string(),
            child: Some(child),
        };
        for args in [
            vec!["link", "set", "lo", "up"],
            // Multicast (VRRP) also between the host's own sockets.
            vec!["link", "add", "br0", "type", "bridge"],
            vec!["link", "set", "br0", "up"],
            vec!["addr", "add", host_cidr, "dev", "br0"],
        ] {
            seg.ip(&args)?;
        }
        Ok(seg)
    }

    /// The segment of a holder started by another process, if it still runs.
    pub fn attach(holder: u32, holder_start: u64, host_cidr: &str) -> Option<Segment> {
        (super::process_start(holder) == Some(holder_start)).then(|| Segment {
            holder,
            holder_start,
            host_cidr: host_cidr.to_string(),
            child: None,
        })
    }

    /// Leaves the segment up after this value is gone (and this process).
    pub fn detach(mut self) {
        self.child = None;
    }

    /// The host's address on the segment, without the prefix.
    pub fn host_ip(&self) -> &str {
        self.host_cidr.split('/').next().unwrap_or("")
    }

    /// `program` to run inside the segment's namespaces (as the namespace's root, which
    /// is the caller outside it).
    pub fn command(&self, program: &str) -> Command {
        let mut c = self.prefix();
        c.arg(program);
        c
    }

    /// A prefix for [`super::qemu::Machine::start`]: the namespace entered, the program
    /// appended by the caller.
    pub fn prefix(&self) -> Command {
        let mut c = Command::new("nsenter");
        c.args([
            "--target",
            &self.holder.to_string(),
            "--user",
            // No setgroups/setuid on entry: the namespace (--map-root-user) denies
            // setgroups, and the caller already is its root.
            "--preserve-credentials",
            "--net",
            "--",
        ]);
        c
    }

    fn ip(&self, args: &[&str]) -> Result<(), VmError> {
        let o = self
            .command("ip")
            .args(args)
            .output()
            .map_err(|e| VmError::Spawn {
                what: "nsenter ip (util-linux, iproute2)".into(),
                source: e,
            })?;
        if !o.status.success() {
            return Err(VmError::Namespace(format!(
                "ip {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&o.stderr).trim()
            )));
        }
        Ok(())
    }

    /// A new tap port `name` on the bridge, for one machine's NIC.
    pub fn add_tap(&self, name: &str) -> Result<(), VmError> {
        // Made anew: a machine powered off and on again gets a fresh port.
        let _ = self.ip(&["link", "del", name]);
        for args in [
            vec!["tuntap", "add", name, "mode", "tap"],
            vec!["link", "set", name, "master", "br0"],
            vec!["link", "set", name, "up"],
        ] {
            self.ip(&args)?;
        }
        Ok(())
    }

    /// How a TCP connection from the host's address to `ip`:`port` ends.
    pub fn probe(&self, ip: &str, port: u16) -> Result<Probe, VmError> {
        let o = self
            .command("timeout")
            .args(["3", "bash", "-c", &format!("exec 3<>/dev/tcp/{ip}/{port}")])
            .output()
            .map_err(|e| VmError::Spawn {
                what: "nsenter timeout bash".into(),
                source: e,
            })?;
        match o.status.code() {
            Some(0) => Ok(Probe::Open),
            Some(124) => Ok(Probe::Dropped),
            _ if String::from_utf8_lossy(&o.stderr).contains("refused") => Ok(Probe::Refused),
            _ => Err(VmError::Namespace(format!(
                "probing {ip}:{port}: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            ))),
        }
    }

    /// The MAC address answering ARP for `ip` on the segment within 1 s, lowercase.
    pub fn arp(&self, ip: &str) -> Option<String> {
        let o = self
            .command("arping")
            .args(["-f", "-b", "-c", "1", "-w", "1", "-I", "br0", ip])
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&o.stdout);
        let line = text.lines().find(|l| l.contains("reply from"))?;
        let mac = line.split('[').nth(1)?.split(']').next()?;
        Some(mac.to_ascii_lowercase())
    }

    /// Ends the segment: its holder killed (the machines in it should be gone first).
    pub fn close(mut self) {
        self.kill();
    }

    fn kill(&mut self) {
        match self.child.take() {
            Some(mut c) => {
                let _ = c.kill();
                let _ = c.wait();
            }
            None => {
                if super::process_start(self.holder) == Some(self.holder_start) {
                    super::kill_pid(self.holder);
                }
            }
        }
    }
}

impl Drop for Segment {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.kill();
        }
    }
}

/// The programs a segment needs on the host, or the package that brings the first one
/// missing.
pub fn check_tools() -> Result<(), VmError> {
    for (prog, package) in [
        ("unshare", "util-linux"),
        ("nsenter", "util-linux"),
        ("ip", "iproute2"),
        ("arping", "iputils-arping"),
        ("ssh", "openssh-client"),
    ] {
        if Command::new(prog)
            .arg("-V")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_err()
        {
            return Err(VmError::Missing {
                what: prog.into(),
                package: package.into(),
            });
        }
    }
    Ok(())
}

/// Whether `path` is a unix socket (a machine's console or QMP).
pub fn is_socket(path: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::metadata(path).is_ok_and(|m| m.file_type().is_socket())
}
