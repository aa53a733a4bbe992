//! A build's cluster up under QEMU: `slipway vm up OUT` and the commands after it.
//!
//! Each node boots its own copy of its disk from the build (`OUT/nodes/NAME/disk.raw`,
//! cloned where the filesystem shares extents, else its data copied; grown for the state
//! partition), so OUT stays untouched and a rebuild of OUT meanwhile changes nothing
//! under a running node, with its MAC from the cluster, on one [`Segment`] of the
//! cluster's own subnet. The host takes an address
//! there that the cluster does not use. Everything lives in the session's directory
//! (`OUT/.slipway/vm/` unless told otherwise): `session.json` (the holder and each
//! machine's pid, so that later commands find them), disks, variable stores, console
//! logs and sockets. `down` kills what the session started and removes the directory; an
//! `up` over a directory whose session died (its holder gone) clears it first.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};

use super::qemu::{self, Machine, MachineSpec, Net, Nic};
use super::segment::Segment;
use super::{VmError, process_start};

/// What `slipway vm` needs of a build: manifest.json's parts it reads.
#[derive(Debug, Clone, Deserialize)]
pub struct Build {
    pub cluster: String,
    pub nodes: BTreeMap<String, String>,
    pub network: crate::build::NetworkSummary,
    pub kubernetes: crate::build::KubeSummary,
}

impl Build {
    /// The build in `out`, or what keeps it from being one.
    pub fn read(out: &Path) -> Result<Build, VmError> {
        let m = out.join("manifest.json");
        let bytes = std::fs::read(&m).map_err(|e| {
            VmError::NotABuild(format!(
                "{}: {e}: not the output of `slipway build` (run `slipway build CLUSTER --out {}`)",
                m.display(),
                out.display()
            ))
        })?;
        let b: Build = serde_json::from_slice(&bytes).map_err(|e| {
            VmError::NotABuild(format!(
                "{}: {e} (a build by another version of Slipway? build again)",
                m.display()
            ))
        })?;
        for name in b.network.nodes.keys() {
            let disk = out.join("nodes").join(name).join("disk.raw");
            if !disk.is_file() {
                return Err(VmError::NotABuild(format!(
                    "{}: missing: the build lists node {name}, but its disk is not there (build again)",
                    disk.display()
                )));
            }
        }
        Ok(b)
    }

    /// Refuses a build of another cluster than `name` (cluster.toml's).
    pub fn expect_cluster(&self, name: &str, out: &Path) -> Result<(), VmError> {
        if self.cluster != name {
            return Err(VmError::NotABuild(format!(
                "{} is a build of cluster {:?}, not {name:?}",
                out.display(),
                self.cluster
            )));
        }
        Ok(())
    }
}

/// How to bring a build up.
#[derive(Debug, Clone)]
pub struct UpOptions {
    /// Only these nodes (default: all).
    pub nodes: Vec<String>,
    /// The session directory [default: OUT/.slipway/vm].
    pub dir: Option<PathBuf>,
    /// Memory per node, MiB [default: 768, or 2048 for control-plane nodes whose image
    /// carries Kubernetes].
    pub memory_mib: Option<u32>,
    /// Space beyond the image on each node's disk (its state partition) [default:
    /// 1.5 GiB, 4 GiB more when the images carry Kubernetes].
    pub extra_disk: Option<u64>,
    /// Give the machines an RNG device (virtio-rng).
    pub rng: bool,
    /// `-cpu` [default: host under KVM, qemu64 under TCG]; "qemu64" has no RDRAND
    /// (the machines get a virtio-rng device unless `rng` is off).
    pub cpu: Option<String>,
    /// The private key for SSH to the nodes' admin user [default: the first of
    /// ~/.ssh/id_ed25519, id_ecdsa, id_rsa whose public key the cluster lets in].
    pub identity: Option<PathBuf>,
    /// The host's address on the segment [default: the highest address of the subnet
    /// the cluster does not use].
    pub host_ip: Option<Ipv4Addr>,
}

impl Default for UpOptions {
    fn default() -> UpOptions {
        UpOptions {
            nodes: Vec::new(),
            dir: None,
            memory_mib: None,
            extra_disk: None,
            rng: true,
            cpu: None,
            identity: None,
            host_ip: None,
        }
    }
}

const STATE_FILE: &str = "session.json";
const STATE_VERSION: u32 = 1;

/// What a session keeps on disk for the commands after `up`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Record {
    version: u32,
    out: PathBuf,
    cluster: String,
    accel: String,
    holder: u32,
    holder_start: u64,
    host_cidr: String,
    identity: Option<PathBuf>,
    admin_user: String,
    vip: String,
    api_port: u16,
    kubernetes: bool,
    nodes: BTreeMap<String, NodeRecord>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct NodeRecord {
    role: String,
    ip: String,
    mac: String,
    vrrp_priority: Option<u8>,
    memory_mib: u32,
    /// The node's own copy of its disk.
    disk: PathBuf,
    tap: String,
    /// The running QEMU, if any.
    pid: Option<u32>,
    pid_start: Option<u64>,
    /// Powered on how many times.
    boots: u32,
    /// Where the console log of the current boot starts.
    log_start: u64,
    /// When it was last powered on (seconds since the epoch).
    powered_on: f64,
    rng: bool,
    cpu: Option<String>,
}

/// One node's state, as `slipway vm status` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct NodeStatus {
    pub name: String,
    pub role: String,
    pub ip: String,
    /// "off", "booting", "running", "degraded ...", "stopped in slipway-init", ...
    pub state: String,
    /// From power-on to the console saying it runs, seconds.
    pub running_after: Option<f64>,
    pub console_log: PathBuf,
}

#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub out: PathBuf,
    pub cluster: String,
    pub accel: String,
    pub host_address: String,
    pub vip: String,
    pub vip_holder: Option<String>,
    pub nodes: Vec<NodeStatus>,
}

/// A session: its directory, record, segment and the machines this process started.
pub struct Session {
    pub dir: PathBuf,
    record: Record,
    pub segment: Segment,
    machines: BTreeMap<String, Machine>,
}

/// The session directory of a build: OUT/.slipway/vm.
pub fn default_dir(out: &Path) -> PathBuf {
    out.join(crate::build::state::STATE_DIR).join("vm")
}

fn io(what: &str, path: &Path) -> impl FnOnce(std::io::Error) -> VmError + use<> {
    let (what, path) = (what.to_string(), path.to_owned());
    move |source| VmError::Io { what, path, source }
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// The highest host address of `subnet` that is none of `used` and not in the
/// load-balancer `pool`.
fn free_address(
    subnet: &ipnet::Ipv4Net,
    used: &[Ipv4Addr],
    pool: (Ipv4Addr, Ipv4Addr),
) -> Option<Ipv4Addr> {
    let first = u32::from(subnet.network()) + 1;
    let last = u32::from(subnet.broadcast()).checked_sub(1)?;
    let in_pool = |a: &Ipv4Addr| (u32::from(pool.0)..=u32::from(pool.1)).contains(&u32::from(*a));
    (first..=last)
        .rev()
        .map(Ipv4Addr::from)
        .find(|a| !used.contains(a) && !in_pool(a))
}

/// A private key whose public half is one the cluster lets in (`authorized`): `given`,
/// or the first of the usual files in ~/.ssh that matches.
fn find_identity(given: Option<&Path>, authorized: &[String]) -> Option<PathBuf> {
    if let Some(g) = given {
        return Some(g.to_owned());
    }
    let home = std::env::var_os("HOME").map(PathBuf::from)?;
    let body = |k: &str| k.split_whitespace().nth(1).map(str::to_string);
    let wanted: Vec<String> = authorized.iter().filter_map(|k| body(k)).collect();
    ["id_ed25519", "id_ecdsa", "id_rsa"]
        .iter()
        .map(|n| home.join(".ssh").join(n))
        .find(|k| {
            std::fs::read_to_string(k.with_extension("pub"))
                .ok()
                .and_then(|p| body(&p))
                .is_some_and(|b| wanted.contains(&b))
        })
}

impl Session {
    /// Brings `out`'s nodes up (see the module's text): every machine started, none
    /// waited for ([`Session::wait_all`]).
    pub fn up(out: &Path, opts: &UpOptions) -> Result<Session, VmError> {
        // Absolute, so that the session's record (and the commands that read it) work
        // from any directory.
        let out_abs = std::path::absolute(out).map_err(io("resolving", out))?;
        let out = out_abs.as_path();
        let build = Build::read(out)?;
        qemu::check_tools()?;
        super::segment::check_tools()?;
        let dir = match &opts.dir {
            Some(d) => std::path::absolute(d).map_err(io("resolving", d))?,
            None => default_dir(out),
        };
        if let Ok(s) = Session::open_dir(&dir) {
            return Err(VmError::Session(format!(
                "{} is up already (session {}); `slipway vm down {}` first",
                s.record.out.display(),
                dir.display(),
                s.record.out.display()
            )));
        }
        clear_dead(&dir)?;
        std::fs::create_dir_all(&dir).map_err(io("creating", &dir))?;
        let names: Vec<String> = if opts.nodes.is_empty() {
            build.network.nodes.keys().cloned().collect()
        } else {
            for n in &opts.nodes {
                if !build.network.nodes.contains_key(n) {
                    return Err(VmError::NotABuild(format!(
                        "{} has no node {n} (it has {})",
                        out.display(),
                        build
                            .network
                            .nodes
                            .keys()
                            .cloned()
                            .collect::<Vec<_>>()
                            .join(", ")
                    )));
                }
            }
            opts.nodes.clone()
        };
        let net = &build.network;
        let subnet: ipnet::Ipv4Net = net.subnet.parse().map_err(|e| {
            VmError::NotABuild(format!("manifest.json: subnet {:?}: {e}", net.subnet))
        })?;
        let parse = |s: &str| -> Result<Ipv4Addr, VmError> {
            s.parse()
                .map_err(|e| VmError::NotABuild(format!("manifest.json: address {s:?}: {e}")))
        };
        let mut used: Vec<Ipv4Addr> = vec![parse(&net.gateway)?, parse(&net.vip)?];
        for n in net.nodes.values() {
            used.push(parse(&n.ip)?);
        }
        let pool = (
            parse(&net.loadbalancer_range[0])?,
            parse(&net.loadbalancer_range[1])?,
        );
        let host_ip = match opts.host_ip {
            Some(a) => a,
            None => free_address(&subnet, &used, pool).ok_or_else(|| {
                VmError::Session(format!(
                    "no free address in {subnet} for the host on the segment"
                ))
            })?,
        };
        let host_cidr = format!("{host_ip}/{}", subnet.prefix_len());
        let accel = qemu::accel(&dir.parent().unwrap_or(&dir).join("accel")).to_string();
        let segment = Segment::create(&host_cidr)?;
        let kubernetes = build.kubernetes.complete();
        let mut record = Record {
            version: STATE_VERSION,
            out: out.to_owned(),
            cluster: build.cluster.clone(),
            accel,
            holder: segment.holder,
            holder_start: segment.holder_start,
            host_cidr,
            identity: find_identity(opts.identity.as_deref(), &net.admin_ssh_keys)
                .map(|k| std::path::absolute(&k).unwrap_or(k)),
            admin_user: net.admin_user.clone(),
            vip: net.vip.clone(),
            api_port: net.api_port,
            kubernetes,
            nodes: BTreeMap::new(),
        };
        let mut session = Session {
            dir: dir.clone(),
            record: record.clone(),
            segment,
            machines: BTreeMap::new(),
        };
        let extra = opts
            .extra_disk
            .unwrap_or(if kubernetes { 11 << 29 } else { 3 << 29 });
        for (i, name) in names.iter().enumerate() {
            let n = &net.nodes[name];
            let control_plane = n.vrrp_priority.is_some();
            let memory_mib = opts.memory_mib.unwrap_or(if kubernetes && control_plane {
                2048
            } else {
                768
            });
            let disk = out.join("nodes").join(name).join("disk.raw");
            let copy = dir.join(format!("{name}.raw"));
            copy_disk(&disk, &copy, extra)?;
            record.nodes.insert(
                name.clone(),
                NodeRecord {
                    role: n.role.clone(),
                    ip: n.ip.clone(),
                    mac: n.mac.clone(),
                    vrrp_priority: n.vrrp_priority,
                    memory_mib,
                    disk: copy,
                    tap: format!("tap{i}"),
                    pid: None,
                    pid_start: None,
                    boots: 0,
                    log_start: 0,
                    powered_on: 0.0,
                    rng: opts.rng,
                    cpu: opts.cpu.clone(),
                },
            );
        }
        session.record = record;
        session.save()?;
        for name in &names {
            session.power_on(name)?;
        }
        Ok(session)
    }

    /// Waits until every node that is on reports its boot `running`, within `timeout`
    /// for all of them.
    pub fn wait_all(&mut self, timeout: Duration) -> Result<(), VmError> {
        let deadline = Instant::now() + timeout;
        for name in self.nodes() {
            if !self.is_on(&name) {
                continue;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            self.wait_running(&name, left)?;
        }
        Ok(())
    }

    /// The session `up` left in `dir`, if its segment still exists.
    pub fn open_dir(dir: &Path) -> Result<Session, VmError> {
        let path = dir.join(STATE_FILE);
        let bytes = std::fs::read(&path).map_err(|_| {
            VmError::Session(format!(
                "no session in {} (`slipway vm up OUT` starts one)",
                dir.display()
            ))
        })?;
        let record: Record = serde_json::from_slice(&bytes)
            .ok()
            .filter(|r: &Record| r.version == STATE_VERSION)
            .ok_or_else(|| {
                VmError::Session(format!("{}: not a session of this Slipway", path.display()))
            })?;
        let segment = Segment::attach(record.holder, record.holder_start, &record.host_cidr)
            .ok_or_else(|| {
                VmError::Session(format!(
                    "the session in {} has ended (its network namespace is gone); `slipway vm down` clears it",
                    dir.display()
                ))
            })?;
        Ok(Session {
            dir: dir.to_owned(),
            record,
            segment,
            machines: BTreeMap::new(),
        })
    }

    /// The session of build `out` (in its default directory).
    pub fn open(out: &Path) -> Result<Session, VmError> {
        Session::open_dir(&default_dir(out))
    }

    fn save(&self) -> Result<(), VmError> {
        let path = self.dir.join(STATE_FILE);
        let text =
            serde_json::to_vec_pretty(&self.record).map_err(|e| VmError::Session(e.to_string()))?;
        crate::fsutil::write_atomic(&path, &text, 0o644).map_err(io("writing", &path))
    }

    fn node(&self, name: &str) -> Result<&NodeRecord, VmError> {
        self.record.nodes.get(name).ok_or_else(|| {
            VmError::Session(format!(
                "no node {name} in this session (it has {})",
                self.record
                    .nodes
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })
    }

    pub fn nodes(&self) -> Vec<String> {
        self.record.nodes.keys().cloned().collect()
    }

    pub fn out(&self) -> &Path {
        &self.record.out
    }

    pub fn vip(&self) -> &str {
        &self.record.vip
    }

    pub fn api_port(&self) -> u16 {
        self.record.api_port
    }

    pub fn accel(&self) -> &str {
        &self.record.accel
    }

    /// The images carry Kubernetes (kubelet and the control plane's images).
    pub fn kubernetes(&self) -> bool {
        self.record.kubernetes
    }

    pub fn ip(&self, name: &str) -> Result<String, VmError> {
        Ok(self.node(name)?.ip.clone())
    }

    pub fn is_control_plane(&self, name: &str) -> bool {
        self.record
            .nodes
            .get(name)
            .is_some_and(|n| n.vrrp_priority.is_some())
    }

    /// Control-plane nodes, highest VRRP priority first.
    pub fn by_priority(&self) -> Vec<String> {
        let mut v: Vec<(&String, u8)> = self
            .record
            .nodes
            .iter()
            .filter_map(|(n, r)| r.vrrp_priority.map(|p| (n, p)))
            .collect();
        v.sort_by_key(|x| std::cmp::Reverse(x.1));
        v.into_iter().map(|(n, _)| n.clone()).collect()
    }

    pub fn serial_log(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}-serial.log"))
    }

    fn spec(&self, name: &str, n: &NodeRecord) -> MachineSpec {
        let mut spec = MachineSpec::new(name, &n.disk, &self.dir);
        spec.memory_mib = n.memory_mib;
        spec.rng = n.rng;
        spec.cpu = n.cpu.clone();
        spec.console_socket = Some(self.dir.join(format!("{name}.console")));
        spec.qmp_socket = Some(self.dir.join(format!("{name}.qmp")));
        // A node reboots as a machine does (an update, `systemctl reboot`).
        spec.no_reboot = false;
        spec.nics.push(Nic {
            mac: n.mac.clone(),
            net: Net::Tap {
                ifname: n.tap.clone(),
            },
            pxe: None,
        });
        spec
    }

    /// Powers `name` on from its disk (which keeps its state across power cycles).
    pub fn power_on(&mut self, name: &str) -> Result<(), VmError> {
        self.power_on_with(name, |_| {})
    }

    /// [`Session::power_on`] with the machine changed first (a one-time network boot: a
    /// NIC with a boot ROM first in the boot order; no reboot, so that an installer's
    /// reboot ends it).
    pub fn power_on_with(
        &mut self,
        name: &str,
        change: impl FnOnce(&mut MachineSpec),
    ) -> Result<(), VmError> {
        let n = self.node(name)?.clone();
        if n.pid
            .zip(n.pid_start)
            .is_some_and(|(p, s)| process_start(p) == Some(s))
        {
            return Err(VmError::Session(format!("{name} is on already")));
        }
        self.segment.add_tap(&n.tap)?;
        let mut spec = self.spec(name, &n);
        change(&mut spec);
        let stderr = self.dir.join(format!("{name}-qemu.log"));
        let m = Machine::start(
            &spec,
            &self.record.accel,
            Some(self.segment.prefix()),
            &stderr,
        )?;
        let r = self
            .record
            .nodes
            .get_mut(name)
            .ok_or_else(|| VmError::Session(format!("no node {name}")))?;
        r.pid = Some(m.pid);
        r.pid_start = process_start(m.pid);
        r.boots += 1;
        r.log_start = m.log_start;
        r.powered_on = now();
        self.machines.insert(name.to_string(), m);
        self.save()
    }

    /// The machine of `name` as this process knows it (started here, or attached).
    fn machine(&mut self, name: &str) -> Result<&mut Machine, VmError> {
        let n = self.node(name)?.clone();
        if !self.machines.contains_key(name) {
            let Some(pid) = n
                .pid
                .filter(|p| n.pid_start.is_some() && process_start(*p) == n.pid_start)
            else {
                return Err(VmError::Session(format!("{name} is off")));
            };
            let mut m = Machine::attach(
                name,
                pid,
                self.serial_log(name),
                Some(self.dir.join(format!("{name}.qmp"))),
            );
            m.log_start = n.log_start;
            let on_for = Duration::from_secs_f64((now() - n.powered_on).max(0.0));
            m.started = Instant::now()
                .checked_sub(on_for)
                .unwrap_or_else(Instant::now);
            self.machines.insert(name.to_string(), m);
        }
        self.machines
            .get_mut(name)
            .ok_or_else(|| VmError::Session(format!("{name} is off")))
    }

    /// Whether `name`'s machine runs.
    pub fn is_on(&mut self, name: &str) -> bool {
        self.machine(name).is_ok_and(|m| m.running())
    }

    /// Pulls the plug on `name` (QEMU killed: no shutdown, as in a power failure), or
    /// presses its power button (`graceful`) and waits for it to shut down.
    pub fn power_off(&mut self, name: &str, graceful: bool) -> Result<(), VmError> {
        let m = self.machine(name)?;
        if graceful {
            m.power_button()?;
            m.wait_exit(Duration::from_secs(300))?;
        }
        m.kill();
        self.machines.remove(name);
        if let Some(r) = self.record.nodes.get_mut(name) {
            r.pid = None;
            r.pid_start = None;
        }
        self.save()
    }

    /// This boot's console output of `name`.
    pub fn console(&self, name: &str) -> String {
        let start = self.record.nodes.get(name).map_or(0, |n| n.log_start) as usize;
        let bytes = std::fs::read(self.serial_log(name)).unwrap_or_default();
        String::from_utf8_lossy(&bytes[start.min(bytes.len())..]).into_owned()
    }

    /// `name`'s state from its console and its machine.
    fn state(&mut self, name: &str) -> (String, Option<f64>) {
        if !self.is_on(name) {
            return ("off".into(), None);
        }
        let console = self.console(name);
        let powered = self.record.nodes.get(name).map_or(0.0, |n| n.powered_on);
        let line = console
            .lines()
            .rev()
            .find_map(|l| l.split("slipway: ").nth(1).filter(|r| r.starts_with(name)));
        if let Some(l) = line {
            let state = l[name.len()..].trim().trim_start_matches("is ").to_string();
            // When the line came: the log's modification time bounds it.
            let at = std::fs::metadata(self.serial_log(name))
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map(|d| d.as_secs_f64() - powered);
            return (state, at);
        }
        if let Some(bad) = console.lines().find(|l| qemu::bad_line(l)) {
            return (format!("failed: {}", bad.trim()), None);
        }
        ("booting".into(), None)
    }

    /// Waits until `name`'s console says how its boot ended; an error unless "running"
    /// (the failed units named), on a bad console line, or after `timeout`. Returns the
    /// time since power-on.
    pub fn wait_running(&mut self, name: &str, timeout: Duration) -> Result<Duration, VmError> {
        let pattern = format!("slipway: {name} is ");
        let m = self.machine(name)?;
        m.wait_for(&pattern, timeout, true)?;
        let at = m.elapsed();
        let console = m.console();
        let line = console
            .lines()
            .find(|l| l.contains(&pattern))
            .unwrap_or_default()
            .to_string();
        if !line.contains(&format!("{pattern}running")) {
            // The failed units' last journal lines, which the node printed before.
            let why = format!("slipway: {name} failed ");
            let mut reason = line.trim().to_string();
            for l in console.lines().filter(|l| l.contains(&why)) {
                reason.push_str("\n  ");
                reason.push_str(l.trim());
            }
            return Err(VmError::Boot {
                node: name.to_string(),
                reason,
                log: m.log.clone(),
            });
        }
        Ok(at)
    }

    /// The node that answers ARP for the VIP, if any.
    pub fn vip_holder(&self) -> Option<String> {
        let mac = self.segment.arp(&self.record.vip)?;
        Some(
            self.record
                .nodes
                .iter()
                .find(|(_, n)| n.mac.eq_ignore_ascii_case(&mac))
                .map_or_else(|| format!("unknown MAC {mac}"), |(name, _)| name.clone()),
        )
    }

    /// Waits until `name` has answered for the VIP for `settle` without a change; an
    /// error after `timeout`. Returns when `name` began holding it.
    pub fn wait_vip_on(
        &self,
        name: &str,
        settle: Duration,
        timeout: Duration,
    ) -> Result<Instant, VmError> {
        self.wait_vip_held(|h| h == name, &format!("on {name}"), settle, timeout)
            .map(|(since, _)| since)
    }

    /// Waits until a node other than `name` has answered for the VIP for `settle`
    /// without a change (whichever backup took it); an error after `timeout`. Returns
    /// when it began holding it, and its name.
    pub fn wait_vip_off(
        &self,
        name: &str,
        settle: Duration,
        timeout: Duration,
    ) -> Result<(Instant, String), VmError> {
        let nodes = &self.record.nodes;
        self.wait_vip_held(
            |h| h != name && nodes.contains_key(h),
            &format!("off {name}"),
            settle,
            timeout,
        )
    }

    /// Waits until one holder for which `wanted` is true has answered for the VIP for
    /// `settle` without a change.
    fn wait_vip_held(
        &self,
        wanted: impl Fn(&str) -> bool,
        what: &str,
        settle: Duration,
        timeout: Duration,
    ) -> Result<(Instant, String), VmError> {
        let start = Instant::now();
        let mut since: Option<(Instant, String)> = None;
        loop {
            let holder = self.vip_holder();
            match &holder {
                Some(h) if wanted(h) => match &since {
                    Some((s, who)) if who == h => {
                        if s.elapsed() >= settle {
                            return Ok((*s, h.clone()));
                        }
                    }
                    _ => since = Some((Instant::now(), h.clone())),
                },
                _ => since = None,
            }
            if start.elapsed() > timeout {
                return Err(VmError::Session(format!(
                    "the VIP {} is not {what} within {} s (holder: {holder:?})",
                    self.record.vip,
                    timeout.as_secs()
                )));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// `ssh` to `name` as the admin user from the segment, running `command` (none: a
    /// login shell, on this terminal). Arguments for [`std::process::Command`].
    pub fn ssh_command(&self, name: &str, command: Option<&str>) -> Result<Command, VmError> {
        let n = self.node(name)?;
        let mut c = self.segment.command("ssh");
        if let Some(k) = &self.record.identity {
            c.arg("-i").arg(k);
        }
        c.args([
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "LogLevel=ERROR",
            "-o",
            "ConnectTimeout=10",
        ]);
        if command.is_some() {
            c.args(["-o", "BatchMode=yes"]);
        } else {
            c.arg("-t");
        }
        c.arg(format!("{}@{}", self.record.admin_user, n.ip));
        if let Some(cmd) = command {
            c.arg(cmd);
        }
        Ok(c)
    }

    /// Runs `command` on `name` over SSH, trying the connection again for up to
    /// `timeout` (sshd may not be up yet). Returns (exit status, standard output).
    pub fn ssh_with_timeout(
        &self,
        name: &str,
        command: &str,
        timeout: Duration,
    ) -> Result<(i32, String), VmError> {
        if self.record.identity.is_none() {
            return Err(VmError::Session(format!(
                "no SSH key for {name}: none of ~/.ssh/id_ed25519, id_ecdsa, id_rsa is one the cluster lets in; pass --identity"
            )));
        }
        let start = Instant::now();
        loop {
            let o = self
                .ssh_command(name, Some(command))?
                .output()
                .map_err(|e| VmError::Spawn {
                    what: "ssh (openssh-client)".into(),
                    source: e,
                })?;
            let code = o.status.code().unwrap_or(-1);
            // 255: ssh itself failed (not up yet); anything else is the command's.
            if code != 255 {
                return Ok((code, String::from_utf8_lossy(&o.stdout).into_owned()));
            }
            if start.elapsed() > timeout {
                return Err(VmError::Session(format!(
                    "ssh {}@{}: {}",
                    self.record.admin_user,
                    self.ip(name)?,
                    String::from_utf8_lossy(&o.stderr).trim()
                )));
            }
            std::thread::sleep(Duration::from_secs(2));
        }
    }

    /// [`Session::ssh_with_timeout`] with five minutes.
    pub fn ssh(&self, name: &str, command: &str) -> Result<(i32, String), VmError> {
        self.ssh_with_timeout(name, command, Duration::from_secs(300))
    }

    /// Where `name`'s serial console is served (`slipway vm console`).
    pub fn console_socket(&self, name: &str) -> Result<PathBuf, VmError> {
        self.node(name)?;
        Ok(self.dir.join(format!("{name}.console")))
    }

    /// Every node's state, the VIP's holder.
    pub fn status(&mut self) -> Status {
        let mut nodes = Vec::new();
        for name in self.nodes() {
            let (state, at) = self.state(&name);
            let n = &self.record.nodes[&name];
            nodes.push(NodeStatus {
                name: name.clone(),
                role: n.role.clone(),
                ip: n.ip.clone(),
                state,
                running_after: at,
                console_log: self.serial_log(&name),
            });
        }
        Status {
            out: self.record.out.clone(),
            cluster: self.record.cluster.clone(),
            accel: self.record.accel.clone(),
            host_address: self.segment.host_ip().to_string(),
            vip: self.record.vip.clone(),
            vip_holder: self.vip_holder(),
            nodes,
        }
    }

    /// Leaves the machines and the segment running after this process (`slipway vm up`).
    pub fn detach(mut self) {
        for (_, m) in std::mem::take(&mut self.machines) {
            m.detach();
        }
        let Session { segment, .. } = self;
        segment.detach();
    }

    /// Ends the session: every machine killed, the segment closed, the directory
    /// removed. Returns what was stopped.
    pub fn down(mut self) -> Result<Vec<String>, VmError> {
        let mut stopped = Vec::new();
        for name in self.nodes() {
            if let Ok(m) = self.machine(&name) {
                m.kill();
                stopped.push(name.clone());
            }
        }
        self.machines.clear();
        let Session { dir, segment, .. } = self;
        segment.close();
        std::fs::remove_dir_all(&dir).map_err(io("removing", &dir))?;
        Ok(stopped)
    }
}

/// Clears a session directory whose session died (killed `up`, a host reboot): its
/// machines, if any still run, killed; the directory removed.
pub fn clear_dead(dir: &Path) -> Result<Vec<String>, VmError> {
    let path = dir.join(STATE_FILE);
    let mut killed = Vec::new();
    if let Some(r) = std::fs::read(&path)
        .ok()
        .and_then(|b| serde_json::from_slice::<Record>(&b).ok())
    {
        for (name, n) in &r.nodes {
            if let (Some(p), Some(s)) = (n.pid, n.pid_start)
                && process_start(p) == Some(s)
            {
                super::kill_pid(p);
                killed.push(name.clone());
            }
        }
        if process_start(r.holder) == Some(r.holder_start) {
            super::kill_pid(r.holder);
        }
    }
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(killed),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(killed),
        Err(e) => Err(io("removing", dir)(e)),
    }
}

/// `to`, the node's own copy of `disk` with `extra` bytes of room after it (its state
/// partition): a clone sharing its extents where the filesystem can, else a copy of its
/// data (holes kept). Raw rather than a qcow2 overlay: under TCG a first boot reached its
/// login prompt in 95 s from a raw disk and in 113 s through an overlay.
fn copy_disk(disk: &Path, to: &Path, extra: u64) -> Result<(), VmError> {
    let src = std::fs::File::open(disk).map_err(io("opening", disk))?;
    let dst = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(to)
        .map_err(io("creating", to))?;
    crate::build::files::clone_or_copy(&src, &dst).map_err(io("copying the node's disk to", to))?;
    let size = src.metadata().map_err(io("reading", disk))?.len() + extra;
    dst.set_len(size).map_err(io("growing", to))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_takes_the_highest_address_the_cluster_does_not_use() {
        let net: ipnet::Ipv4Net = "192.168.1.0/24".parse().unwrap();
        let used: Vec<Ipv4Addr> = ["192.168.1.1", "192.168.1.100", "192.168.1.254"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        let pool = (
            "192.168.1.200".parse().unwrap(),
            "192.168.1.250".parse().unwrap(),
        );
        assert_eq!(
            free_address(&net, &used, pool),
            Some("192.168.1.253".parse().unwrap())
        );
        let tiny: ipnet::Ipv4Net = "10.0.0.0/30".parse().unwrap();
        let both: Vec<Ipv4Addr> = vec!["10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap()];
        assert_eq!(free_address(&tiny, &both, pool), None);
    }
}
