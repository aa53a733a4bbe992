//! The example cluster booted whole through `slipway::vm::session` (what `slipway vm up`
//! runs): every node's disk from `slipway build` in its own machine, all on one private
//! segment, with a test-only admin SSH key. The multi-node tests and `make bench` drive it
//! through this; what is here beyond the session is test-only: etcd's static pod started
//! by hand where the images have no kubelet, and assertions.

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use slipway::vm::session::{Session, UpOptions};

use super::{PingWatch, Probe, TestKey};

/// The test's own address on the segment: inside the example's subnet, outside its nodes,
/// VIP and load-balancer pool, and not in the cluster's firewall sets.
pub const HOST_IP: &str = "192.168.1.5";

/// `s` quoted for a POSIX shell.
pub fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

pub struct TestCluster {
    pub dir: PathBuf,
    pub out: PathBuf,
    pub session: Session,
    pub key: TestKey,
    pub vip: String,
    /// The container images the build baked in.
    pub images: Vec<slipway::build::BakedImage>,
    /// The images carry everything of Kubernetes the profiles name (kubelet, kubectl,
    /// the control plane's images): the test lock pins the example's release
    /// (`make test SLIPWAY_TEST_KUBERNETES=1`). Otherwise kubelet is absent.
    pub kubernetes: bool,
}

fn ok<T>(r: Result<T, slipway::vm::VmError>) -> T {
    r.unwrap_or_else(|e| panic!("{e}"))
}

impl TestCluster {
    /// Builds the example cluster (with a test-only admin key) into
    /// target/image-tests/`name`/out and powers `nodes` on (none: all) in a session of
    /// its own, where `slipway vm` keeps it (OUT/.slipway/vm: the CLI's commands find it
    /// there), not waiting for them.
    pub fn up(name: &str, nodes: &[&str]) -> TestCluster {
        TestCluster::up_with(name, nodes, "")
    }

    /// [`TestCluster::up`] with `control_plane` (TOML lines) added to the example's
    /// `[control_plane]` table.
    pub fn up_with(name: &str, nodes: &[&str], control_plane: &str) -> TestCluster {
        let dir = super::work_dir(name);
        let key = super::test_key(&dir);
        let cluster = super::example_with_key(&crate::common::example(), &key, &dir);
        if !control_plane.is_empty() {
            let text = std::fs::read_to_string(&cluster).unwrap();
            let table = "[control_plane]\n";
            let at = text.find(table).unwrap() + table.len();
            let text = format!("{}{control_plane}\n{}", &text[..at], &text[at..]);
            std::fs::write(&cluster, text).unwrap();
        }
        let out = dir.join("out");
        let manifest = crate::common::build(&cluster, &dir.join("secrets"), &out, false);
        let session = ok(Session::up(
            &out,
            &UpOptions {
                nodes: nodes.iter().map(|n| n.to_string()).collect(),
                identity: Some(key.private.clone()),
                host_ip: Some(HOST_IP.parse().unwrap()),
                ..UpOptions::default()
            },
        ));
        TestCluster {
            vip: session.vip().to_string(),
            kubernetes: manifest.kubernetes.complete(),
            images: manifest.images,
            dir,
            out,
            session,
            key,
        }
    }

    /// The session's nodes, by name.
    pub fn names(&self) -> Vec<String> {
        self.session.nodes()
    }

    pub fn ip(&self, name: &str) -> String {
        ok(self.session.ip(name))
    }

    pub fn is_control_plane(&self, name: &str) -> bool {
        self.session.is_control_plane(name)
    }

    pub fn power_on(&mut self, name: &str) {
        ok(self.session.power_on(name));
    }

    /// Pulls the plug on `name` (QEMU killed: no shutdown, as in a power or host failure).
    pub fn power_off(&mut self, name: &str) {
        ok(self.session.power_off(name, false));
    }

    /// This boot's console output of `name`.
    pub fn console(&self, name: &str) -> String {
        self.session.console(name)
    }

    /// Waits until `name` says its boot ended `running` (no failed unit, no bad console
    /// line); returns the time since its power-on.
    pub fn wait_running(&mut self, name: &str) -> Duration {
        ok(self.session.wait_running(name, Duration::from_secs(900)))
    }

    /// Runs `command` on `name` as the admin user over SSH from the segment.
    pub fn ssh(&self, name: &str, command: &str) -> (i32, String) {
        ok(self.session.ssh(name, command))
    }

    /// "open", "refused" or "dropped": a TCP connection from the test's address.
    pub fn probe(&self, ip: &str, port: u16) -> &'static str {
        match ok(self.session.segment.probe(ip, port)) {
            Probe::Open => "open",
            Probe::Refused => "refused",
            Probe::Dropped => "dropped",
        }
    }

    /// The node that answers ARP for the VIP, if any.
    pub fn vip_holder(&self) -> Option<String> {
        self.session.vip_holder()
    }

    /// Waits until `name` has held the VIP for `settle`; returns when it began.
    pub fn wait_vip_on(&self, name: &str, settle: Duration, timeout: Duration) -> Instant {
        ok(self.session.wait_vip_on(name, settle, timeout))
    }

    /// Waits until another node than `name` has held the VIP for `settle`; returns when
    /// it began, and which node.
    pub fn wait_vip_off(
        &self,
        name: &str,
        settle: Duration,
        timeout: Duration,
    ) -> (Instant, String) {
        ok(self.session.wait_vip_off(name, settle, timeout))
    }

    /// A ping of `ip` from the segment ten times a second, logged in the test's directory.
    pub fn ping_watch(&self, ip: &str) -> PingWatch {
        ok(PingWatch::start(
            &self.session.segment,
            ip,
            self.dir.join(format!("ping-{ip}.log")),
        ))
    }

    /// Reimages `name` as an operator would, one node at a time: pulls its plug, boots it
    /// once from the network (NIC first in the boot order, QEMU's iPXE ROM), so that
    /// slipway-init installs its disk from `slipway serve` (the caller's
    /// [`super::pxe::Provisioning`]), and waits for the installer's reboot, which ends the
    /// machine. The node is left off; returns the installer's console.
    pub fn reimage(&mut self, name: &str) -> String {
        self.power_off(name);
        ok(self.session.power_on_with(name, |spec| {
            spec.nics[0].pxe = Some((0, true));
            spec.no_reboot = true;
        }));
        let log = self.session.serial_log(name);
        let start = Instant::now();
        while !self.console(name).contains("install: done") {
            assert!(
                start.elapsed() < Duration::from_secs(900),
                "{name}: no install within 900 s (log {})",
                log.display()
            );
            if let Some(bad) = self.console(name).lines().find(|l| super::bad_line(l)) {
                panic!("{name}: {bad} (log {})", log.display());
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        let start = Instant::now();
        while self.session.is_on(name) {
            assert!(
                start.elapsed() < Duration::from_secs(120),
                "{name}: the installer did not reboot (log {})",
                log.display()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
        let console = self.console(name);
        // Off already (the installer's reboot ended its machine): the session notes it.
        let _ = self.session.power_off(name, false);
        console
    }

    /// Pulls the plug on `off` while it holds the VIP and waits until the VIP answers
    /// pings again and `next` holds it. Returns the outage as the segment saw it: from
    /// the power-off to the first reply.
    pub fn fail_over(&mut self, watch: &PingWatch, off: &str, next: &str) -> Duration {
        let at = SystemTime::now();
        self.power_off(off);
        let answered = watch
            .answered_after(at, Duration::from_secs(60))
            .unwrap_or_else(|| panic!("no VIP ping reply within 60 s ({})", watch.log.display()));
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
        let mut want = self.names();
        want.sort();
        let start = Instant::now();
        loop {
            let (code, out) = self.kubectl(on, "get nodes -o name");
            let mut got: Vec<String> = out
                .lines()
                .filter_map(|l| l.trim().strip_prefix("node/").map(str::to_string))
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
            .names()
            .iter()
            .filter(|n| self.is_control_plane(n))
            .map(|n| format!("https://{}:2379", self.ip(n)))
            .collect();
        self.etcdctl_at(name, &endpoints.join(","), args)
    }

    /// `etcdctl` on `name` against `endpoints` only (`https://127.0.0.1:2379`: its own).
    pub fn etcdctl_at(&self, name: &str, endpoints: &str, args: &str) -> (i32, String) {
        self.ssh(name, &slipway::vm::check::etcdctl(endpoints, args))
    }

    /// Waits (up to `timeout`) until, asked from `name`, every control-plane node's etcd
    /// answers healthy; returns how long that took.
    pub fn wait_etcd_healthy(&self, name: &str, timeout: Duration) -> Duration {
        let start = Instant::now();
        let want = self
            .names()
            .iter()
            .filter(|n| self.is_control_plane(n))
            .count();
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

    /// Checks every running node's console for bad lines and failed units.
    pub fn assert_consoles_clean(&mut self) {
        for n in self.names() {
            if !self.session.is_on(&n) {
                continue;
            }
            let console = self.console(&n);
            let bad: Vec<&str> = console
                .lines()
                .filter(|l| super::bad_line(l) || l.contains("FAILED"))
                .collect();
            assert!(
                bad.is_empty(),
                "{n}: {bad:?} (log {})",
                self.session.serial_log(&n).display()
            );
        }
    }
}

/// A client of the API's VIP from the test's address on the segment: every 50 ms a new
/// TLS connection through the VIP asks `GET /version` (served by an API server also while
/// it drains; its `/readyz` then fails, which is HAProxy's business, not a client's); each
/// attempt is logged as "EPOCH-SECONDS ok ENDED-AT" (an HTTP 200 came back) or
/// "EPOCH-SECONDS fail ENDED-AT WHAT" (the response's status line, or "(no response)", and
/// openssl's error). An attempt fails when it errs or has no answer within 10 s: a
/// Kubernetes client waits 30 s for a connection (client-go's dialer), so a SYN that TCP
/// sends again after 1 and 3 s (dropped during a handover) is a slow request, not a failed
/// one; the slowest are reported (`slowest_between`). Stopped when dropped.
pub struct ClientLoop {
    child: std::process::Child,
    pub log: PathBuf,
}

impl ClientLoop {
    pub fn start(c: &TestCluster, name: &str) -> ClientLoop {
        let log = c.dir.join(format!("client-{name}.log"));
        let target = format!("{}:{}", c.vip, c.session.api_port());
        // A failed attempt's line also says when it ended and what openssl said.
        let err = c.dir.join(format!("client-{name}.err"));
        let script = format!(
            "while :; do t=$(date +%s.%N); \
             line=$(printf 'GET /version HTTP/1.0\\r\\n\\r\\n' | timeout 10 openssl s_client -quiet -connect {target} 2>{err} | head -n 1 | tr -d '\\r'); \
             case \"$line\" in *' 200 '*) echo \"$t ok $(date +%s.%N)\";; \
             *) echo \"$t fail $(date +%s.%N) ${{line:-(no response)}} $(grep -v 'depth=\\|verify\\|servername' {err} | tr '\\n' ' ' | cut -c1-200)\";; esac; sleep 0.05; done",
            err = err.display()
        );
        let child = c
            .session
            .segment
            .command("bash")
            .args(["-c", &script])
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        ClientLoop { child, log }
    }

    /// (time, succeeded) of every attempt so far.
    pub fn attempts(&self) -> Vec<(f64, bool)> {
        self.read()
            .lines()
            .filter_map(parse_attempt)
            .map(|(t, ok, _)| (t, ok))
            .collect()
    }

    /// The log lines of the attempts that began after `from` and by `to` and failed.
    pub fn failures_between(&self, from: f64, to: f64) -> Vec<String> {
        self.read()
            .lines()
            .filter(|l| parse_attempt(l).is_some_and(|(t, ok, _)| !ok && t > from && t <= to))
            .map(str::to_string)
            .collect()
    }

    /// The longest time a successful attempt that began after `from` and by `to` took.
    pub fn slowest_between(&self, from: f64, to: f64) -> f64 {
        self.read()
            .lines()
            .filter_map(parse_attempt)
            .filter_map(|(t, ok, ended)| (ok && t > from && t <= to).then_some(ended? - t))
            .fold(0.0, f64::max)
    }

    fn read(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until `n` attempts in a row succeeded.
    pub fn wait_ok(&self, n: usize, timeout: Duration) {
        let start = Instant::now();
        loop {
            let a = self.attempts();
            if a.len() >= n && a[a.len() - n..].iter().all(|(_, ok)| *ok) {
                return;
            }
            assert!(
                start.elapsed() < timeout,
                "no {n} successful requests in a row through the VIP within {timeout:?} ({})",
                self.log.display()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// One line of a `ClientLoop`'s log: (began, succeeded, ended).
fn parse_attempt(line: &str) -> Option<(f64, bool, Option<f64>)> {
    let mut w = line.split(' ');
    let began = w.next()?.parse().ok()?;
    let ok = w.next()? == "ok";
    Some((began, ok, w.next().and_then(|e| e.parse().ok())))
}

#[test]
fn client_log_lines() {
    assert_eq!(
        parse_attempt("10.5 ok 11.25"),
        Some((10.5, true, Some(11.25)))
    );
    assert_eq!(
        parse_attempt("10.5 fail 13.5 (no response) err"),
        Some((10.5, false, Some(13.5)))
    );
    assert_eq!(parse_attempt("10.5 ok"), Some((10.5, true, None)));
    assert_eq!(parse_attempt("torn"), None);
}

impl Drop for ClientLoop {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl TestCluster {
    /// VRRP state changes keepalived logged this boot on every control-plane node that is
    /// on.
    pub fn vrrp_transitions(&mut self) -> usize {
        let mut n = 0;
        for name in self.names() {
            if !self.is_control_plane(&name) || !self.session.is_on(&name) {
                continue;
            }
            let (_, out) = self.ssh(
                &name,
                "sudo journalctl -b -u keepalived -o cat | grep -c 'Entering [A-Z]* STATE' || true",
            );
            n += out.trim().parse::<usize>().unwrap_or(0);
        }
        n
    }

    /// Starts a stand-in for `name`'s kube-apiserver (the images carry none): a second
    /// HAProxy on the node's address and the API port, with the API server's own
    /// certificate, answering every request (HAProxy's `/readyz` check too) with 200. One
    /// event-driven process, as the API server is (a forking server such as socat's, under
    /// TCG, took longer than a check's interval to answer). A unit `standin-apiserver`
    /// (in /run), stopped after keepalived at shutdown (as kubelet's graceful shutdown
    /// drains the real one while the node still holds the VIP), and stopped as
    /// kube-apiserver stops on SIGTERM: `/readyz` fails at once (HTTP 500, still
    /// answering), for the node's `--shutdown-delay-duration` (read from its rendered
    /// manifest) requests are still served, then HAProxy's soft stop closes the listener
    /// and lets the requests in flight finish. Killed (`kill_standin`), it is a dead API
    /// server.
    pub fn start_standin(&self, name: &str) {
        let config = format!(
            "global\n\tmaxconn 1000\n\tstats socket ipv4@127.0.0.1:{STANDIN_CLI} level admin\n\
             defaults\n\tmode http\n\ttimeout connect 2s\n\
             \ttimeout client 10s\n\ttimeout server 10s\nfrontend standin\n\
             \tbind {ip}:{port} ssl crt /run/standin.pem\n\
             \tacl draining str(drain) -m str -f /run/standin.drain\n\
             \thttp-request return status 500 content-type text/plain string \"[-]shutdown failed\" if {{ path /readyz }} draining\n\
             \thttp-request return status 200 content-type text/plain string ok\n",
            port = self.session.api_port(),
            ip = self.ip(name)
        );
        // ExecStop: /readyz fails, the delay, then systemd's SIGUSR1 (HAProxy's soft stop).
        // Nothing to drain when the process is already gone (killed: a dead API server).
        let stop = format!(
            r#"#!/bin/sh
[ -n "${{MAINPID:-}}" ] || exit 0
echo "add acl /run/standin.drain drain" | socat -t 2 - TCP:127.0.0.1:{STANDIN_CLI}
d=$(sed -n 's/.*--shutdown-delay-duration=\([0-9]*\)s.*/\1/p' /etc/kubernetes/manifests/kube-apiserver.yaml)
sleep "${{d:-0}}"
"#
        );
        let unit = "[Unit]\nDescription=stand-in kube-apiserver (test)\nBefore=keepalived.service\n\
                    [Service]\nExecStart=/usr/sbin/haproxy -db -f /run/standin.cfg\n\
                    ExecStop=/bin/sh /run/standin-stop.sh\nKillSignal=SIGUSR1\nTimeoutStopSec=30s\n";
        let (code, out) = self.ssh(
            name,
            &format!(
                "{KILL_STANDIN} 2>/dev/null; \
                 sudo systemctl reset-failed standin-apiserver 2>/dev/null; \
                 sudo sh -c 'umask 077; cat /etc/kubernetes/pki/apiserver.crt /etc/kubernetes/pki/apiserver.key > /run/standin.pem; : > /run/standin.drain' && \
                 printf '%s' {} | sudo tee /run/standin.cfg >/dev/null && \
                 printf '%s' {} | sudo tee /run/standin-stop.sh >/dev/null && \
                 printf '%s' {} | sudo tee /run/systemd/system/standin-apiserver.service >/dev/null && \
                 sudo haproxy -c -q -f /run/standin.cfg && \
                 sudo systemctl daemon-reload && sudo systemctl start standin-apiserver",
                quote(&config),
                quote(&stop),
                quote(unit)
            ),
        );
        assert_eq!(code, 0, "{name}: stand-in API server: {out}");
    }

    /// Ends `name`'s stand-in API server at once (SIGKILL, no drain).
    pub fn kill_standin(&self, name: &str) {
        let _ = self.ssh(name, KILL_STANDIN);
    }
}

/// The stand-in API server's HAProxy CLI (loopback only), through which its stop makes
/// `/readyz` fail.
const STANDIN_CLI: u16 = 8405;

/// Ends a stand-in API server without its drain (its stop script skips the drain once the
/// process is gone).
const KILL_STANDIN: &str =
    "sudo systemctl kill --signal=SIGKILL standin-apiserver; sudo systemctl stop standin-apiserver";

impl TestCluster {
    /// Reboots `name` from inside (`systemctl reboot`: a graceful shutdown, the machine
    /// stays on) and waits until its console says the new boot is running; returns the
    /// time that took.
    pub fn reboot(&mut self, name: &str) -> Duration {
        let line = format!("slipway: {name} is running");
        let before = self.console(name).matches(&line).count();
        let start = Instant::now();
        let _ = self.ssh(name, "sudo systemctl reboot");
        loop {
            let console = self.console(name);
            if console.matches(&line).count() > before {
                return start.elapsed();
            }
            let tail = console.rsplit(&line).next().unwrap_or("");
            if let Some(bad) = tail
                .lines()
                .find(|l| super::bad_line(l) || l.contains(&format!("slipway: {name} is ")))
            {
                panic!("{name} after its reboot: {bad}");
            }
            assert!(
                start.elapsed() < Duration::from_secs(900),
                "{name}: not running again within 900 s of its reboot"
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}
