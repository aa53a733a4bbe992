//! The example cluster booted whole: every node's disk from `slipway build` in its own VM,
//! all on one [`Lan`] (a private network namespace), with a test-only admin SSH key. The
//! multi-node test and `make bench` drive it through this: power nodes on and off, run
//! commands on them over SSH from the segment, and see which node answers for the VIP.

use std::path::PathBuf;
use std::process::Child;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::{Lan, TestKey, Vm, VmConfig};

/// The test's own address on the segment: inside the example's subnet, outside its nodes,
/// VIP and load-balancer pool, and not in the cluster's firewall sets.
pub const HOST_CIDR: &str = "192.168.1.5/24";

/// `s` quoted for a POSIX shell.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Memory and vCPUs per node VM: four at once share this machine's two cores under TCG.
const MEMORY_MIB: u32 = 768;
/// A control-plane node whose image carries Kubernetes runs kube-apiserver, the
/// controller manager, the scheduler and etcd under kubelet as well (kubeadm asks for
/// 2 GiB).
const CONTROL_PLANE_KUBE_MEMORY_MIB: u32 = 2048;
const CPUS: u32 = 1;

pub struct Node {
    pub name: String,
    pub ip: String,
    pub mac: String,
    pub control_plane: bool,
    disk: PathBuf,
    boots: usize,
    pub vm: Option<Vm>,
}

pub struct TestCluster {
    pub dir: PathBuf,
    pub lan: Lan,
    pub key: TestKey,
    pub vip: String,
    pub nodes: Vec<Node>,
    /// The container images the build baked in.
    pub images: Vec<slipway::build::BakedImage>,
    /// The images carry everything of Kubernetes the profiles name (kubelet, kubectl,
    /// the control plane's images): the test lock pins the example's release
    /// (`make test SLIPWAY_TEST_KUBERNETES=1`). Otherwise kubelet is absent.
    pub kubernetes: bool,
}

impl TestCluster {
    /// Builds the example cluster (with a test-only admin key) into
    /// target/image-tests/`name` and gives each node a sparse disk copy of `disk_bytes`
    /// (room for its state partition). No VM runs yet.
    pub fn build(name: &str, disk_bytes: u64) -> TestCluster {
        let dir = super::work_dir(name);
        let key = super::test_key(&dir);
        let cluster = super::example_with_key(&crate::common::example(), &key, &dir);
        let out = dir.join("out");
        let manifest = crate::common::build(&cluster, &dir.join("secrets"), &out, false);
        let (model, _) = slipway::cluster::Cluster::load(&cluster).unwrap();
        let nodes = model
            .nodes
            .iter()
            .map(|n| Node {
                name: n.name.clone(),
                ip: n.ip.to_string(),
                mac: n.mac.to_string(),
                control_plane: n.vrrp_priority.is_some(),
                disk: super::grown_copy(
                    &out.join("nodes").join(&n.name).join("disk.raw"),
                    &dir,
                    &n.name,
                    disk_bytes,
                ),
                boots: 0,
                vm: None,
            })
            .collect();
        TestCluster {
            lan: Lan::new(HOST_CIDR),
            vip: model.control_plane.vip.to_string(),
            kubernetes: manifest.kubernetes.complete(),
            images: manifest.images,
            dir,
            key,
            nodes,
        }
    }

    pub fn node(&self, name: &str) -> &Node {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .unwrap_or_else(|| panic!("no node {name}"))
    }

    fn node_mut(&mut self, name: &str) -> &mut Node {
        self.nodes.iter_mut().find(|n| n.name == name).unwrap()
    }

    /// Powers `name` on from its disk (which keeps its state across power cycles). The
    /// console log of its Nth boot is NAME-serial.log, then NAME-bootN-serial.log.
    pub fn power_on(&mut self, name: &str) {
        let nic = {
            let mac = self.node(name).mac.clone();
            self.lan.nic(&mac)
        };
        let vm = self.start_vm(name, "boot", nic);
        self.node_mut(name).vm = Some(vm);
    }

    /// Reimages `name` as an operator would, one node at a time: pulls its plug, boots it
    /// once from the network (NIC first in the boot order, QEMU's iPXE ROM), so that
    /// slipway-init installs its disk from `slipway serve` (the caller's
    /// [`super::pxe::Provisioning`]), and waits for the installer's reboot, which ends the
    /// VM (-no-reboot). The node is left off; returns the installer's console.
    pub fn reimage(&mut self, name: &str) -> String {
        self.power_off(name);
        let nic = {
            let mac = self.node(name).mac.clone();
            self.lan.pxe_nic(&mac, true, true)
        };
        let mut vm = self.start_vm(name, "reimage", nic);
        vm.wait_for("install: done", Duration::from_secs(900), true);
        vm.wait_exit(Duration::from_secs(120));
        vm.console()
    }

    /// A VM for `name`'s next boot from its disk, with `nic`, on the segment; its log is
    /// NAME-serial.log for the first boot, NAME-KINDn-serial.log after.
    fn start_vm(&mut self, name: &str, kind: &str, nic: Vec<String>) -> Vm {
        let (ns, dir) = (self.lan.ns.clone(), self.dir.clone());
        let kubernetes = self.kubernetes;
        let node = self.node_mut(name);
        let memory_mib = if kubernetes && node.control_plane {
            CONTROL_PLANE_KUBE_MEMORY_MIB
        } else {
            MEMORY_MIB
        };
        node.boots += 1;
        let label = match node.boots {
            1 => name.to_string(),
            n => format!("{name}-{kind}{n}"),
        };
        Vm::start(
            VmConfig {
                name: &label,
                disk: &node.disk,
                memory_mib,
                cpus: CPUS,
                extra: nic,
                netns: Some(&ns),
            },
            &dir,
        )
    }

    /// Pulls the plug on `name` (QEMU killed: no shutdown, as in a power or host failure).
    pub fn power_off(&mut self, name: &str) {
        if let Some(mut vm) = self.node_mut(name).vm.take() {
            vm.kill();
        }
    }

    /// Pulls the plug on `off` while it holds the VIP and waits until the VIP answers
    /// pings again and `next` holds it. Returns the outage as the segment saw it: from
    /// the power-off to the first reply.
    pub fn fail_over(&mut self, watch: &PingWatch, off: &str, next: &str) -> Duration {
        let at = SystemTime::now();
        self.power_off(off);
        let answered = watch.answered_after(at, Duration::from_secs(60));
        self.wait_vip_on(next, Duration::from_secs(3), Duration::from_secs(60));
        answered
    }

    /// `kubectl ARGS` on control-plane node `on` as the cluster's admin (its
    /// /etc/kubernetes/admin.conf), through the VIP whoever holds it.
    pub fn kubectl(&self, on: &str, args: &str) -> (i32, String) {
        self.ssh(
            on,
            &format!(
                "sudo kubectl --kubeconfig /etc/kubernetes/admin.conf --server https://{}:6443 --request-timeout=10s {args} 2>&1",
                self.vip
            ),
        )
    }

    /// Waits until `kubectl get nodes` on `on`, through the VIP, lists exactly the
    /// cluster's nodes; returns the wait.
    pub fn wait_nodes_listed(&self, on: &str, timeout: Duration) -> Duration {
        let mut want: Vec<&str> = self.nodes.iter().map(|n| n.name.as_str()).collect();
        want.sort();
        let start = Instant::now();
        loop {
            let (code, out) = self.kubectl(on, "get nodes -o name");
            let mut got: Vec<&str> = out
                .lines()
                .filter_map(|l| l.trim().strip_prefix("node/"))
                .collect();
            got.sort();
            if code == 0 && got == want {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < timeout,
                "kubectl get nodes through the VIP on {on} after {timeout:?}: exit {code}: {out}"
            );
            std::thread::sleep(Duration::from_secs(5));
        }
    }

    /// Runs `command` on `name` as the admin user over SSH from the segment.
    pub fn ssh(&self, name: &str, command: &str) -> (i32, String) {
        let ip = &self.node(name).ip;
        super::ssh_lan(
            &self.lan,
            &self.key,
            ip,
            "admin",
            command,
            Duration::from_secs(300),
        )
    }

    /// Waits until `name` reports `systemctl is-system-running` = running with no failed
    /// unit and no bad console line; returns the time since its power-on.
    pub fn wait_running(&mut self, name: &str) -> Duration {
        let log = self.node(name).vm.as_ref().unwrap().log.clone();
        let vm = self.node_mut(name).vm.as_mut().unwrap();
        vm.wait_for(" login: ", Duration::from_secs(600), true);
        let (code, state) = self.ssh(name, "systemctl is-system-running --wait");
        let at = self.node(name).vm.as_ref().unwrap().elapsed();
        let (_, failed) = self.ssh(name, "systemctl --failed --no-legend --plain");
        assert!(
            code == 0 && state.trim() == "running" && failed.trim().is_empty(),
            "{name}: system {state:?}, failed units: {failed:?} (log {})",
            log.display()
        );
        at
    }

    /// Starts the static pod `pod` of control-plane node `name` as kubelet would, for
    /// images without kubelet (slipway.lock pins no Kubernetes release): the node's own
    /// manifest (/etc/kubernetes/manifests/POD.yaml, as its first boot wrote it and
    /// etcd-rejoin.service may have changed it) is read as a Pod, and its container's
    /// command runs under containerd (`ctr run`, from the image baked into the node) with
    /// the host network and the pod's hostPath volumes, in the transient unit
    /// `static-pod-POD`. Only that: no probes, no restarts. Returns false, starting
    /// nothing, when the node has kubelet (which then runs the pod itself).
    pub fn start_static_pod(&self, name: &str, pod: &str) -> bool {
        use k8s_openapi::api::core::v1::Pod;
        if self.ssh(name, "test -x /usr/bin/kubelet").0 == 0 {
            return false;
        }
        let path = format!("/etc/kubernetes/manifests/{pod}.yaml");
        let (code, yaml) = self.ssh(name, &format!("sudo cat {path}"));
        assert_eq!(code, 0, "{name}: {path}: {yaml}");
        let p: Pod = serde_norway::from_str(&yaml)
            .unwrap_or_else(|e| panic!("{name}: {path} is not a Pod: {e}"));
        let spec = p.spec.unwrap();
        let c = &spec.containers[0];
        let volumes = spec.volumes.unwrap_or_default();
        let mut script = Vec::new();
        let mut mounts = Vec::new();
        for m in c.volume_mounts.iter().flatten() {
            let v = volumes.iter().find(|v| v.name == m.name).unwrap();
            let host = v.host_path.as_ref().unwrap();
            if host.type_.as_deref() == Some("DirectoryOrCreate") {
                script.push(format!("sudo mkdir -p {}", quote(&host.path)));
            }
            let mode = if m.read_only == Some(true) {
                "ro"
            } else {
                "rw"
            };
            mounts.push(format!(
                "--mount type=bind,src={},dst={},options=rbind:{mode}",
                host.path, m.mount_path
            ));
        }
        let id = format!("static-pod-{pod}");
        // A container of that name left by a power cut (containerd's store is on the
        // state partition) goes first.
        script.push(format!(
            "sudo ctr -n k8s.io task rm -f {id} >/dev/null 2>&1; sudo ctr -n k8s.io container rm {id} >/dev/null 2>&1; true"
        ));
        let argv: Vec<String> = c
            .command
            .iter()
            .flatten()
            .chain(c.args.iter().flatten())
            .map(|a| quote(a))
            .collect();
        script.push(format!(
            "sudo systemd-run --quiet --collect --unit={id} ctr -n k8s.io run --rm --net-host {} {} {id} {}",
            mounts.join(" "),
            quote(c.image.as_deref().unwrap()),
            argv.join(" ")
        ));
        let (code, out) = self.ssh(name, &script.join(" && "));
        assert_eq!(code, 0, "{name}: starting {pod}: {out}");
        true
    }

    /// `etcdctl` on `name` against every control-plane node's etcd, with the node's
    /// health-check client certificate.
    pub fn etcdctl(&self, name: &str, args: &str) -> (i32, String) {
        let endpoints: Vec<String> = self
            .nodes
            .iter()
            .filter(|n| n.control_plane)
            .map(|n| format!("https://{}:2379", n.ip))
            .collect();
        self.etcdctl_at(name, &endpoints.join(","), args)
    }

    /// `etcdctl` on `name` against `endpoints` only (`https://127.0.0.1:2379`: its own).
    /// Its standard output; its log and errors (standard error) after that only when it
    /// fails.
    pub fn etcdctl_at(&self, name: &str, endpoints: &str, args: &str) -> (i32, String) {
        self.ssh(
            name,
            &format!(
                "o=$(sudo ETCDCTL_API=3 etcdctl --endpoints={endpoints} --cacert=/etc/kubernetes/pki/etcd/ca.crt \
                 --cert=/etc/kubernetes/pki/etcd/healthcheck-client.crt \
                 --key=/etc/kubernetes/pki/etcd/healthcheck-client.key \
                 --dial-timeout=3s --command-timeout=10s {args} 2>/tmp/etcdctl.err); rc=$?; \
                 printf '%s\\n' \"$o\"; [ $rc = 0 ] || cat /tmp/etcdctl.err; exit $rc"
            ),
        )
    }

    /// Waits (up to `timeout`) until, asked from `name`, every control-plane node's etcd
    /// answers healthy; returns how long that took.
    pub fn wait_etcd_healthy(&self, name: &str, timeout: Duration) -> Duration {
        let start = Instant::now();
        let want = self.nodes.iter().filter(|n| n.control_plane).count();
        loop {
            let (_, out) = self.etcdctl(name, "endpoint health");
            let healthy = out.lines().filter(|l| l.contains(" is healthy")).count();
            if healthy == want {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < timeout,
                "etcd: {healthy} of {want} members healthy after {timeout:?}: {out}"
            );
            std::thread::sleep(Duration::from_secs(2));
        }
    }

    /// etcd's members as (ID, status, name, peer URL), asked from `name`.
    pub fn etcd_members(&self, name: &str) -> Vec<[String; 4]> {
        let (code, out) = self.etcdctl(name, "member list");
        assert_eq!(code, 0, "member list: {out}");
        out.lines()
            .map(|l| {
                let f: Vec<&str> = l.split(", ").collect();
                assert!(f.len() >= 4, "member list line {l:?}");
                [f[0], f[1], f[2], f[3]].map(str::to_string)
            })
            .collect()
    }

    /// The node that answers ARP for the VIP, if any.
    pub fn vip_holder(&self) -> Option<String> {
        let mac = self.lan.arp(&self.vip)?;
        Some(
            self.nodes
                .iter()
                .find(|n| n.mac == mac)
                .map_or_else(|| format!("unknown MAC {mac}"), |n| n.name.clone()),
        )
    }

    /// Waits until `name` has answered for the VIP for `settle` without a change (at boot
    /// the first keepalived up holds it until a higher priority takes it); fails after
    /// `timeout`. Returns when `name` began holding it.
    pub fn wait_vip_on(&self, name: &str, settle: Duration, timeout: Duration) -> Instant {
        let start = Instant::now();
        let mut since: Option<Instant> = None;
        loop {
            let holder = self.vip_holder();
            if holder.as_deref() == Some(name) {
                let s = *since.get_or_insert_with(Instant::now);
                if s.elapsed() >= settle {
                    return s;
                }
            } else {
                since = None;
            }
            assert!(
                start.elapsed() < timeout,
                "the VIP {} is not on {name} within {} s (holder: {holder:?}; logs in {})",
                self.vip,
                timeout.as_secs(),
                self.dir.display()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Checks every running node's console for bad lines and failed units.
    pub fn assert_consoles_clean(&self) {
        for n in &self.nodes {
            let Some(vm) = &n.vm else { continue };
            let console = vm.console();
            let bad: Vec<&str> = console
                .lines()
                .filter(|l| super::bad_line(l) || l.contains("FAILED"))
                .collect();
            assert!(
                bad.is_empty(),
                "{}: {bad:?} (log {})",
                n.name,
                vm.log.display()
            );
        }
    }
}

/// Pings an address ten times a second from the segment, logging each reply with its
/// time, to tell when it stopped and started answering again (kept as a log in the test's
/// directory). Stopped on drop.
pub struct PingWatch {
    child: Child,
    log: PathBuf,
}

impl PingWatch {
    pub fn start(c: &TestCluster, ip: &str) -> PingWatch {
        let log = c.dir.join(format!("ping-{ip}.log"));
        let child = c
            .lan
            .command("ping")
            .args(["-n", "-D", "-i", "0.1", ip])
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::create(log.with_extension("err")).unwrap())
            .spawn()
            .unwrap();
        PingWatch { child, log }
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
    /// (a gap of over half a second between replies), and returns how long after `since`
    /// the first reply after the gap came. (A reply from the old holder still in flight
    /// at `since` is not taken for the new one's.)
    pub fn answered_after(&self, since: SystemTime, timeout: Duration) -> Duration {
        let t0 = since.duration_since(UNIX_EPOCH).unwrap().as_secs_f64();
        let start = Instant::now();
        loop {
            let replies = self.replies();
            let mut last = replies.iter().copied().rfind(|&t| t <= t0);
            for &t in replies.iter().filter(|&&t| t > t0) {
                if last.is_none_or(|l| t - l > 0.5) {
                    return Duration::from_secs_f64(t - t0);
                }
                last = Some(t);
            }
            assert!(
                start.elapsed() < timeout,
                "no ping reply within {} s (log {}, errors in {})",
                timeout.as_secs(),
                self.log.display(),
                self.log.with_extension("err").display()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl PingWatch {
    /// The longest time without a reply between `since` and now.
    pub fn longest_gap_since(&self, since: SystemTime) -> Duration {
        let t0 = since.duration_since(UNIX_EPOCH).unwrap().as_secs_f64();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
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
