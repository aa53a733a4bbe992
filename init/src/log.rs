//! Console logging with the time since the kernel started (CLOCK_BOOTTIME), through
//! /dev/kmsg so it reaches every console (tty0 and ttyS0) and later the journal.

use std::io::Write;
use std::sync::Mutex;

static KMSG: Mutex<Option<std::fs::File>> = Mutex::new(None);

pub fn init() {
    if let Ok(f) = std::fs::OpenOptions::new().write(true).open("/dev/kmsg")
        && let Ok(mut k) = KMSG.lock()
    {
        *k = Some(f);
    }
}

fn uptime() -> f64 {
    std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|x| x.parse().ok()))
        .unwrap_or(0.0)
}

/// Writes one line at `level` (kernel log level: 3 error, 5 notice).
fn line(level: u8, msg: &str) {
    let text = format!("slipway-init[{:.3}s]: {msg}", uptime());
    let mut done = false;
    if let Ok(mut k) = KMSG.lock()
        && let Some(f) = k.as_mut()
    {
        done = f.write_all(format!("<{level}>{text}\n").as_bytes()).is_ok();
    }
    if !done {
        println!("{text}");
    }
}

pub fn step(msg: &str) {
    line(5, msg);
}

pub fn warn(msg: &str) {
    line(4, &format!("warning: {msg}"));
}

/// Reports why the boot stops and stays here: PID 1 must not exit (the kernel would
/// panic and a reboot loop would hide the message), and nothing unverified is started.
pub fn fatal(msg: &str) -> ! {
    line(3, &format!("FATAL: {msg}"));
    line(
        3,
        "FATAL: the boot stops here; no unverified root is used. Fix the cause and reboot.",
    );
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}
