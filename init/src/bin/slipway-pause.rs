//! slipway-pause: the first process of every pod sandbox (the image containerd's
//! `sandbox_image` names, built by `slipway build` from this binary and baked into the
//! OS image, so no node pulls it). It holds the pod's namespaces open by existing, reaps
//! any orphaned process the pod's containers leave to it, and exits 0 on SIGINT or
//! SIGTERM. Linked statically like slipway-init: the image holds this file and nothing
//! else.

use nix::sys::signal::{SigSet, Signal};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};

fn main() {
    if std::env::args().nth(1).as_deref() == Some("-v") {
        println!("slipway-pause {}", env!("CARGO_PKG_VERSION"));
        return;
    }
    let mut set = SigSet::empty();
    for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGCHLD] {
        set.add(s);
    }
    if let Err(e) = set.thread_block() {
        eprintln!("slipway-pause: blocking signals: {e}");
        std::process::exit(1);
    }
    loop {
        match set.wait() {
            Ok(Signal::SIGCHLD) => {
                // Reap every child that has exited; stop when none is left to reap.
                while let Ok(status) = waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                    if status == WaitStatus::StillAlive {
                        break;
                    }
                }
            }
            Ok(_) => std::process::exit(0),
            Err(_) => continue,
        }
    }
}
