//! The kernel's random pool before anything needs it.
//!
//! A VM without an RNG device under a CPU model without RDRAND (TCG's default, many CI
//! runners, some hypervisors' defaults) never initializes the pool by itself, and
//! everything that asks for randomness then waits for good: the first boot's partition
//! table (the gpt crate draws a random GUID while building headers), then systemd, ssh
//! host keys. So before the state partition is made, when the pool is not ready, the node
//! seeds it from its config: the SHA-256 of the Ignition config (unique per node and
//! secret: it carries the node's private keys, drawn from the build host's RNG) is
//! credited to the pool with RNDADDENTROPY, as systemd-random-seed credits its seed file.
//! The kernel mixes it with what it has gathered since power-on (interrupt and device
//! timings), so two boots of one config do not start alike. Later boots have
//! systemd-random-seed's file on the state partition, saved with the pool initialized.
//! If nothing helps, the boot says it waits and keeps saying so: it never waits silently.

use std::fs::File;
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::log::{step, warn};

/// Whether the kernel's random pool is initialized (getrandom would not block).
pub fn ready() -> bool {
    let mut b = [0u8; 1];
    rustix::rand::getrandom(&mut b, rustix::rand::GetRandomFlags::NONBLOCK).is_ok()
}

/// `struct rand_pool_info` with a 32-byte buffer (linux/random.h).
#[repr(C)]
struct RandPoolInfo {
    entropy_count: i32,
    buf_size: i32,
    buf: [u8; 32],
}

// RNDADDENTROPY: _IOW('R', 0x03, int[2]) (linux/random.h).
nix::ioctl_write_ptr_bad!(rnd_add_entropy, 0x4008_5203, RandPoolInfo);

/// Adds `seed` to the pool and credits it with 256 bits.
fn credit(seed: [u8; 32]) -> Result<(), String> {
    let f = File::options()
        .write(true)
        .open("/dev/urandom")
        .map_err(|e| format!("/dev/urandom: {e}"))?;
    let info = RandPoolInfo {
        entropy_count: 256,
        buf_size: 32,
        buf: seed,
    };
    use std::os::fd::AsRawFd;
    // SAFETY: RNDADDENTROPY reads a `struct rand_pool_info` of `buf_size` trailing bytes
    // from the pointer; `info` is that struct with exactly 32 bytes of buffer, alive
    // for the call, and the file descriptor is open.
    unsafe { rnd_add_entropy(f.as_raw_fd(), &info) }
        .map(drop)
        .map_err(|e| format!("RNDADDENTROPY: {e}"))
}

/// The seed a node's config gives: the SHA-256 of it, domain-separated.
pub fn seed_of(config: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"slipway-init random seed v1\0");
    h.update(config);
    h.finalize().into()
}

/// Makes sure the pool is ready before the first boot's steps that need it: seeded from
/// `config` (the node's Ignition config) when it is not; else a warning now and every
/// 10 s until it is (on a thread of its own: the step that waits cannot say so itself).
pub fn ensure(config: Option<&[u8]>) {
    if ready() {
        return;
    }
    match config.map(|c| credit(seed_of(c))) {
        Some(Ok(())) if ready() => {
            step(
                "the kernel's random pool was not initialized (no RNG device, no RDRAND): seeded from the node's config",
            );
            return;
        }
        Some(Ok(())) => warn(
            "credited the node's config to the kernel's random pool, but it is still not initialized",
        ),
        Some(Err(e)) => warn(&format!(
            "seeding the kernel's random pool from the node's config: {e}"
        )),
        None => {}
    }
    warn(
        "the kernel's random pool is not initialized (no RNG device, no RDRAND, no node config to seed it): the boot waits until it is; give the machine an RNG (virtio-rng in a VM)",
    );
    std::thread::spawn(|| {
        let mut waited = 0;
        while !ready() {
            std::thread::sleep(Duration::from_secs(10));
            waited += 10;
            if !ready() {
                warn(&format!(
                    "still waiting for the kernel's random pool ({waited} s)"
                ));
            }
        }
        step("the kernel's random pool is initialized");
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seed_is_the_configs_digest_and_differs_per_config() {
        assert_ne!(seed_of(b"node a"), seed_of(b"node b"));
        assert_eq!(seed_of(b"node a"), seed_of(b"node a"));
        assert_ne!(
            seed_of(b"node a"),
            <[u8; 32]>::from(Sha256::digest(b"node a"))
        );
        assert_eq!(std::mem::size_of::<RandPoolInfo>(), 40);
    }
}
