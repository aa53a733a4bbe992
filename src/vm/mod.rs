//! `slipway vm`: a build's nodes booted under QEMU on one machine, on a private Ethernet
//! segment with the cluster's own addresses, and checked: for users' CI and for this
//! project's own image tests, which run on this same code.
//!
//! - [`qemu`]: one machine (UEFI, KVM or TCG, console, QMP);
//! - [`segment`]: the private L2 segment (user + network namespace, bridge, taps);
//! - [`session`]: a build's cluster up, its state kept on disk between commands;
//! - [`check`]: what `slipway vm test` checks, and its JUnit report.

pub mod check;
pub mod qemu;
pub mod segment;
pub mod session;

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("{what} is missing: install the Debian package {package}")]
    Missing { what: String, package: String },
    #[error("{0}")]
    NotABuild(String),
    #[error("starting {what}")]
    Spawn {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} {path}")]
    Io {
        what: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the private network: {0}")]
    Namespace(String),
    #[error("{node}: {reason} (console log {log})")]
    Boot {
        node: String,
        reason: String,
        log: PathBuf,
    },
    #[error("{0}")]
    Session(String),
}

/// The start time of process `pid` (clock ticks after boot, field 22 of
/// /proc/PID/stat), if it exists and is not a zombie.
pub fn process_start(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the command name, which is in parentheses and may hold anything.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    if fields.first() == Some(&"Z") {
        return None;
    }
    fields.get(19)?.parse().ok()
}

/// Whether process `pid` runs (exists and is not a zombie).
pub fn process_alive(pid: u32) -> bool {
    process_start(pid).is_some()
}

/// SIGKILL to `pid` (if it is still there), and a moment to die.
pub fn kill_pid(pid: u32) {
    if let Some(p) = rustix::process::Pid::from_raw(pid as i32) {
        let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
    }
    let start = Instant::now();
    while process_alive(pid) && start.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// QEMU's machine protocol, the little of it that is needed: one command.
pub mod qmp {
    use std::io::{BufRead, BufReader, Write};
    use std::os::unix::net::UnixStream;
    use std::path::Path;
    use std::time::Duration;

    /// Runs `command` (no arguments) on the QMP socket at `socket`.
    pub fn command(socket: &Path, command: &str) -> Result<(), String> {
        let err = |e: std::io::Error| format!("QMP {}: {e}", socket.display());
        let s = UnixStream::connect(socket).map_err(err)?;
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(err)?;
        let mut r = BufReader::new(s.try_clone().map_err(err)?);
        let mut w = s;
        let mut line = String::new();
        // The greeting, then capabilities negotiation, then the command.
        r.read_line(&mut line).map_err(err)?;
        for c in ["qmp_capabilities", command] {
            writeln!(w, "{}", serde_json::json!({ "execute": c })).map_err(err)?;
            loop {
                line.clear();
                if r.read_line(&mut line).map_err(err)? == 0 {
                    return Err(format!("QMP {}: closed", socket.display()));
                }
                let v: serde_json::Value = serde_json::from_str(&line)
                    .map_err(|e| format!("QMP {}: {e}: {line:?}", socket.display()))?;
                if v.get("error").is_some() {
                    return Err(format!("QMP {c}: {}", v["error"]));
                }
                if v.get("return").is_some() {
                    break;
                }
                // An event: read on.
            }
        }
        Ok(())
    }
}

/// Pings an address ten times a second from a segment, logging each reply with its
/// time, to tell when it stopped and started answering again. Stopped on drop.
pub struct PingWatch {
    child: std::process::Child,
    pub log: PathBuf,
}

impl PingWatch {
    pub fn start(segment: &segment::Segment, ip: &str, log: PathBuf) -> Result<PingWatch, VmError> {
        let io = |e| VmError::Io {
            what: "creating".into(),
            path: log.clone(),
            source: e,
        };
        let child = segment
            .command("ping")
            .args(["-n", "-D", "-i", "0.1", ip])
            .stdout(std::fs::File::create(&log).map_err(io)?)
            .stderr(std::process::Stdio::null())
            .spawn()
            .map_err(|e| VmError::Spawn {
                what: "ping (iputils-ping)".into(),
                source: e,
            })?;
        Ok(PingWatch { child, log })
    }

    /// Times (seconds since the epoch) of the replies received so far.
    fn replies(&self) -> Vec<f64> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("bytes from"))
            .filter_map(|l| l.strip_prefix('[')?.split(']').next()?.parse().ok())
            .collect()
    }

    /// Waits until the address answers again after an outage that began after `since`
    /// (a gap of over half a second between replies), and returns how long after
    /// `since` the first reply after the gap came. (A reply from the old holder still in
    /// flight at `since` is not taken for the new one's.)
    pub fn answered_after(&self, since: SystemTime, timeout: Duration) -> Option<Duration> {
        let t0 = since.duration_since(UNIX_EPOCH).ok()?.as_secs_f64();
        let start = Instant::now();
        loop {
            let replies = self.replies();
            let mut last = replies.iter().copied().rfind(|&t| t <= t0);
            for &t in replies.iter().filter(|&&t| t > t0) {
                if last.is_none_or(|l| t - l > 0.5) {
                    return Some(Duration::from_secs_f64(t - t0));
                }
                last = Some(t);
            }
            if start.elapsed() > timeout {
                return None;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The longest time without a reply between `since` and now.
    pub fn longest_gap_since(&self, since: SystemTime) -> Duration {
        let t0 = since
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        let mut last = t0;
        let mut gap: f64 = 0.0;
        for t in self.replies().into_iter().filter(|&t| t > t0) {
            gap = gap.max(t - last);
            last = t;
        }
        Duration::from_secs_f64(gap.max(now - last))
    }
}

impl Drop for PingWatch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `slipway vm console`: this terminal on a machine's serial console (its unix socket),
/// raw, until ^] (0x1d) is typed or the machine goes away.
pub fn attach_console(socket: &std::path::Path) -> Result<(), VmError> {
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;
    let s = UnixStream::connect(socket).map_err(|e| VmError::Io {
        what: "connecting to the console at".into(),
        path: socket.to_owned(),
        source: e,
    })?;
    let stdin = std::io::stdin();
    // Raw mode while attached, where standard input is a terminal.
    let saved = rustix::termios::tcgetattr(&stdin).ok();
    if let Some(t) = &saved {
        let mut raw = t.clone();
        raw.make_raw();
        let _ = rustix::termios::tcsetattr(&stdin, rustix::termios::OptionalActions::Now, &raw);
    }
    eprint!("(console of {}; ^] leaves)\r\n", socket.display());
    let mut from = s.try_clone().map_err(|e| VmError::Io {
        what: "reading the console at".into(),
        path: socket.to_owned(),
        source: e,
    })?;
    std::thread::spawn(move || {
        let mut out = std::io::stdout();
        let mut buf = [0u8; 4096];
        while let Ok(n) = from.read(&mut buf) {
            if n == 0 || out.write_all(&buf[..n]).and_then(|()| out.flush()).is_err() {
                break;
            }
        }
    });
    let mut to = s;
    let mut buf = [0u8; 1];
    while let Ok(1) = stdin.lock().read(&mut buf) {
        if buf[0] == 0x1d || to.write_all(&buf).is_err() {
            break;
        }
    }
    if let Some(t) = &saved {
        let _ = rustix::termios::tcsetattr(&stdin, rustix::termios::OptionalActions::Now, t);
    }
    eprintln!();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_a_start_time_and_a_dead_one_none() {
        assert!(process_start(std::process::id()).is_some());
        let mut c = std::process::Command::new("true").spawn().unwrap();
        let pid = c.id();
        c.wait().unwrap();
        assert!(!process_alive(pid));
    }
}
