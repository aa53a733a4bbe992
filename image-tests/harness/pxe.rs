//! The provisioning side of a private segment, for the network-install tests: BusyBox's
//! udhcpd giving out addresses (the network's own DHCP server), dnsmasq running a build's
//! `pxe/dnsmasq.conf.example` as shipped (proxy-DHCP and TFTP; its two blanks filled in),
//! and `slipway serve` on the build. All three run in the [`Segment`]'s namespace, at
//! its host address, and are killed when the [`Provisioning`] is dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};

use super::Segment;

/// A child process killed when dropped, however the test ends.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub struct Provisioning {
    pub serve_log: PathBuf,
    pub dnsmasq_log: PathBuf,
    _children: Vec<Guard>,
}

impl Provisioning {
    /// Starts the DHCP server, dnsmasq and `slipway serve OUT` (with `--keep-state` for
    /// each of `keep_state`), logging into `dir`.
    pub fn start(lan: &Segment, out: &Path, dir: &Path, keep_state: &[&str]) -> Provisioning {
        let server = lan.host_ip().to_string();
        let mut children = Vec::new();
        let serve_log = dir.join("serve.log");
        let mut serve = lan.command(env!("CARGO_BIN_EXE_slipway"));
        serve
            .arg("serve")
            .arg(out)
            .args(["--listen", &format!("{server}:8080")]);
        for n in keep_state {
            serve.args(["--keep-state", n]);
        }
        children.push(Guard(
            serve
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&serve_log).unwrap())
                .spawn()
                .unwrap(),
        ));

        // Addresses only, as a home or office router gives them.
        let udhcpd_conf = dir.join("udhcpd.conf");
        let leases = dir.join("udhcpd.leases");
        std::fs::write(
            &udhcpd_conf,
            format!(
                "start 192.168.1.150\nend 192.168.1.199\ninterface br0\n\
                 lease_file {}\npidfile {}\n\
                 option subnet 255.255.255.0\noption router {server}\noption lease 3600\n",
                leases.display(),
                dir.join("udhcpd.pid").display()
            ),
        )
        .unwrap();
        std::fs::write(&leases, "").unwrap();
        children.push(Guard(
            lan.command("busybox")
                .args(["udhcpd", "-f"])
                .arg(&udhcpd_conf)
                .stdout(std::fs::File::create(dir.join("udhcpd.log")).unwrap())
                .stderr(Stdio::null())
                .spawn()
                .expect("busybox (busybox-static; make deps installs it)"),
        ));

        let conf = std::fs::read_to_string(out.join("pxe/dnsmasq.conf.example"))
            .unwrap()
            .replace("INTERFACE", "br0")
            .replace("SERVER", &server)
            + "user=root\n";
        let conf_path = dir.join("dnsmasq.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let dnsmasq_log = dir.join("dnsmasq.log");
        children.push(Guard(
            lan.command("dnsmasq")
                // Debug mode: in the foreground and no change of user or group (a user
                // namespace maps neither dnsmasq's "dip" group nor setgroups).
                .arg("--no-daemon")
                .arg(format!("--conf-file={}", conf_path.display()))
                .arg(format!("--log-facility={}", dnsmasq_log.display()))
                .arg("--pid-file")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("dnsmasq (dnsmasq-base; make deps installs it)"),
        ));
        Provisioning {
            serve_log,
            dnsmasq_log,
            _children: children,
        }
    }

    /// What `slipway serve` logged so far.
    pub fn served(&self) -> String {
        std::fs::read_to_string(&self.serve_log).unwrap_or_default()
    }
}
