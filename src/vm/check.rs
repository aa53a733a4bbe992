//! `slipway vm test`: what a user's CI wants to know of a cluster that is up, each check
//! passed, failed (with why) or skipped (with why), timed, and written as JUnit XML for
//! the CI system (quick-junit, nextest's writer).
//!
//! From the segment, as the LAN sees the cluster: every node reports its boot ended
//! `running`; the VIP answers from the highest-priority control-plane node; HAProxy
//! accepts on VIP:PORT; the firewall lets the seed's ports through and drops the rest (a
//! host on the subnet that is no node: SSH, HTTP(S) and node ports pass; etcd, kubelet
//! and any other port are dropped; the API port only on control-plane nodes). Over SSH:
//! etcd's members healthy, and with Kubernetes in the images kubelet active and
//! `kubectl get nodes` through the VIP listing every node. With `failover`, the VIP's
//! holder loses power: the VIP must answer again from the next node by priority, the
//! outage measured; the node is powered on again and takes the VIP back.

use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;

use super::PingWatch;
use super::segment::Probe;
use super::session::Session;

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(tag = "result", rename_all = "lowercase")]
pub enum Outcome {
    Passed,
    Failed { why: String },
    Skipped { why: String },
}

#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: String,
    #[serde(flatten)]
    pub outcome: Outcome,
    pub seconds: f64,
    /// What was measured or seen, for the report.
    pub detail: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub cluster: String,
    pub checks: Vec<Check>,
    /// The VIP's outage when its holder lost power, if measured.
    pub failover_seconds: Option<f64>,
}

impl Report {
    pub fn passed(&self) -> bool {
        !self
            .checks
            .iter()
            .any(|c| matches!(c.outcome, Outcome::Failed { .. }))
    }

    /// The report as JUnit XML: one test suite, a test case per check.
    pub fn junit(&self) -> Result<String, String> {
        use quick_junit::{NonSuccessKind, Report as J, TestCase, TestCaseStatus, TestSuite};
        let mut suite = TestSuite::new(format!("slipway vm test {}", self.cluster));
        for c in &self.checks {
            let status = match &c.outcome {
                Outcome::Passed => TestCaseStatus::success(),
                Outcome::Failed { why } => {
                    let mut s = TestCaseStatus::non_success(NonSuccessKind::Failure);
                    s.set_message(why.clone());
                    s
                }
                Outcome::Skipped { why } => {
                    let mut s = TestCaseStatus::skipped();
                    s.set_message(why.clone());
                    s
                }
            };
            let mut t = TestCase::new(c.name.clone(), status);
            t.set_classname(format!("slipway.vm.{}", self.cluster));
            t.set_time(Duration::from_secs_f64(c.seconds));
            if !c.detail.is_empty() {
                t.set_system_out(c.detail.clone());
            }
            suite.add_test_case(t);
        }
        let mut r = J::new("slipway vm test");
        r.add_test_suite(suite);
        r.to_string().map_err(|e| e.to_string())
    }
}

#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// Also power off the VIP's holder and measure the failover.
    pub failover: bool,
}

/// One check's run: its outcome and detail, timed.
fn run(checks: &mut Vec<Check>, name: &str, f: impl FnOnce() -> Result<(Outcome, String), String>) {
    let t = Instant::now();
    let (outcome, detail) = f().unwrap_or_else(|why| (Outcome::Failed { why }, String::new()));
    checks.push(Check {
        name: name.to_string(),
        outcome,
        seconds: t.elapsed().as_secs_f64(),
        detail,
    });
}

fn pass(detail: String) -> Result<(Outcome, String), String> {
    Ok((Outcome::Passed, detail))
}

/// What the firewall should do with a connection from a host of the subnet that is no
/// node: (port, passes), per role. "Passes" accepts open or refused (let through to a
/// port nothing may serve yet); not passing means dropped.
pub fn firewall_expectations(control_plane: bool, api_port: u16) -> Vec<(u16, bool)> {
    let mut v = vec![
        (22, true),
        (80, true),
        (443, true),
        (30080, true),
        (10250, false),
        (2379, false),
        (2380, false),
        (9999, false),
    ];
    v.push((api_port, control_plane));
    v
}

/// Runs the checks on `s`, a session that is up.
pub fn run_all(s: &mut Session, opts: Options) -> Report {
    let mut checks = Vec::new();
    let nodes = s.nodes();
    for n in &nodes {
        run(&mut checks, &format!("{n} running"), || {
            let at = s
                .wait_running(n, Duration::from_secs(900))
                .map_err(|e| e.to_string())?;
            pass(format!("running {:.1} s after power-on", at.as_secs_f64()))
        });
    }
    let first = s.by_priority().into_iter().next();
    run(&mut checks, "VIP on the highest-priority node", || {
        let Some(first) = &first else {
            return Ok((
                Outcome::Skipped {
                    why: "no control-plane node is up".into(),
                },
                String::new(),
            ));
        };
        s.wait_vip_on(first, Duration::from_secs(5), Duration::from_secs(120))
            .map_err(|e| e.to_string())?;
        pass(format!("{} answers ARP for {first}", s.vip()))
    });
    run(&mut checks, "HAProxy on the VIP", || {
        match s
            .segment
            .probe(s.vip(), s.api_port())
            .map_err(|e| e.to_string())?
        {
            Probe::Open => pass(format!("{}:{} accepts", s.vip(), s.api_port())),
            p => Err(format!("{}:{}: {p:?}", s.vip(), s.api_port())),
        }
    });
    run(&mut checks, "firewall", || {
        // Probes in parallel: a dropped one waits its 3 s.
        let mut cases = Vec::new();
        for n in &nodes {
            let ip = s.ip(n).map_err(|e| e.to_string())?;
            for (port, passes) in firewall_expectations(s.is_control_plane(n), s.api_port()) {
                cases.push((n.clone(), ip.clone(), port, passes));
            }
        }
        let seg = &s.segment;
        let results: Vec<Result<Probe, String>> = std::thread::scope(|sc| {
            let hs: Vec<_> = cases
                .iter()
                .map(|(_, ip, port, _)| {
                    sc.spawn(move || seg.probe(ip, *port).map_err(|e| e.to_string()))
                })
                .collect();
            hs.into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err("a probe thread stopped".into()))
                })
                .collect()
        });
        let mut wrong = Vec::new();
        for ((n, ip, port, passes), r) in cases.iter().zip(results) {
            let got = r?;
            let ok = if *passes {
                got != Probe::Dropped
            } else {
                got == Probe::Dropped
            };
            if !ok {
                wrong.push(format!(
                    "{n} {ip}:{port} {got:?}, expected {}",
                    if *passes { "let through" } else { "dropped" }
                ));
            }
        }
        if wrong.is_empty() {
            pass(format!("{} probes as expected", cases.len()))
        } else {
            Err(wrong.join("; "))
        }
    });
    let masters = s.by_priority();
    run(&mut checks, "etcd members healthy", || {
        if !s.kubernetes() {
            return Ok((
                Outcome::Skipped {
                    why: "the images carry no kubelet, which runs etcd's static pod (slipway.lock pins no Kubernetes release)".into(),
                },
                String::new(),
            ));
        }
        let Some(on) = masters.first() else {
            return Ok((
                Outcome::Skipped {
                    why: "no control-plane node".into(),
                },
                String::new(),
            ));
        };
        let endpoints: Vec<String> = masters
            .iter()
            .filter_map(|m| s.ip(m).ok())
            .map(|ip| format!("https://{ip}:2379"))
            .collect();
        let start = Instant::now();
        loop {
            let (_, out) = s
                .ssh(on, &etcdctl(&endpoints.join(","), "endpoint health"))
                .map_err(|e| e.to_string())?;
            let healthy = out.lines().filter(|l| l.contains(" is healthy")).count();
            if healthy == masters.len() {
                return pass(format!("{healthy} of {} healthy", masters.len()));
            }
            if start.elapsed() > Duration::from_secs(300) {
                return Err(format!(
                    "{healthy} of {} members healthy: {out}",
                    masters.len()
                ));
            }
            std::thread::sleep(Duration::from_secs(3));
        }
    });
    run(
        &mut checks,
        "Kubernetes: kubelet and the nodes through the VIP",
        || {
            if !s.kubernetes() {
                return Ok((
                    Outcome::Skipped {
                        why: "the images carry no Kubernetes release (slipway.lock pins none)"
                            .into(),
                    },
                    String::new(),
                ));
            }
            for n in &nodes {
                let (code, out) = s
                    .ssh(n, "systemctl is-active kubelet")
                    .map_err(|e| e.to_string())?;
                if code != 0 {
                    return Err(format!("{n}: kubelet {}", out.trim()));
                }
            }
            let Some(on) = masters.first() else {
                return Err("no control-plane node".into());
            };
            let mut want = nodes.clone();
            want.sort();
            let start = Instant::now();
            loop {
                let (code, out) = s
                .ssh(
                    on,
                    &format!(
                        "sudo kubectl --kubeconfig /etc/kubernetes/admin.conf --server https://{}:{} --request-timeout=10s get nodes -o name",
                        s.vip(),
                        s.api_port()
                    ),
                )
                .map_err(|e| e.to_string())?;
                let mut got: Vec<String> = out
                    .lines()
                    .filter_map(|l| l.trim().strip_prefix("node/").map(str::to_string))
                    .collect();
                got.sort();
                if code == 0 && got == want {
                    return pass(format!(
                        "kubectl get nodes through the VIP: {}",
                        got.join(", ")
                    ));
                }
                if start.elapsed() > Duration::from_secs(600) {
                    return Err(format!(
                        "kubectl get nodes through the VIP: exit {code}: {out}"
                    ));
                }
                std::thread::sleep(Duration::from_secs(5));
            }
        },
    );
    let mut failover_seconds = None;
    if opts.failover {
        run(
            &mut checks,
            "failover: the VIP moves when its holder loses power",
            || {
                if masters.len() < 2 {
                    return Ok((
                        Outcome::Skipped {
                            why: "fewer than two control-plane nodes are up".into(),
                        },
                        String::new(),
                    ));
                }
                let (holder, next) = (&masters[0], &masters[1]);
                let log = s.dir.join(format!("ping-{}.log", s.vip()));
                let watch =
                    PingWatch::start(&s.segment, s.vip(), log).map_err(|e| e.to_string())?;
                std::thread::sleep(Duration::from_secs(2));
                let at = SystemTime::now();
                s.power_off(holder, false).map_err(|e| e.to_string())?;
                let answered = watch
                    .answered_after(at, Duration::from_secs(60))
                    .ok_or_else(|| {
                        format!("the VIP did not answer within 60 s after {holder} lost power")
                    })?;
                s.wait_vip_on(next, Duration::from_secs(3), Duration::from_secs(60))
                    .map_err(|e| e.to_string())?;
                failover_seconds = Some(answered.as_secs_f64());
                let probe = s
                    .segment
                    .probe(s.vip(), s.api_port())
                    .map_err(|e| e.to_string())?;
                if probe != Probe::Open {
                    return Err(format!("{}:{} on {next}: {probe:?}", s.vip(), s.api_port()));
                }
                // Back as it was: the holder on again, and holding the VIP (preemption).
                s.power_on(holder).map_err(|e| e.to_string())?;
                s.wait_running(holder, Duration::from_secs(900))
                    .map_err(|e| e.to_string())?;
                s.wait_vip_on(holder, Duration::from_secs(3), Duration::from_secs(120))
                    .map_err(|e| e.to_string())?;
                pass(format!(
                    "{holder} powered off: the VIP answered from {next} after {:.2} s; {holder} back holds it again",
                    answered.as_secs_f64()
                ))
            },
        );
    }
    Report {
        cluster: s.status().cluster,
        checks,
        failover_seconds,
    }
}

/// An `etcdctl` command line on a control-plane node, with its health-check client
/// certificate, against `endpoints`.
pub fn etcdctl(endpoints: &str, args: &str) -> String {
    format!(
        "o=$(sudo ETCDCTL_API=3 etcdctl --endpoints={endpoints} --cacert=/etc/kubernetes/pki/etcd/ca.crt \
         --cert=/etc/kubernetes/pki/etcd/healthcheck-client.crt \
         --key=/etc/kubernetes/pki/etcd/healthcheck-client.key \
         --dial-timeout=3s --command-timeout=10s {args} 2>/tmp/etcdctl.err); rc=$?; \
         printf '%s\\n' \"$o\"; [ $rc = 0 ] || cat /tmp/etcdctl.err; exit $rc"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_is_junit_with_a_case_per_check() {
        let r = Report {
            cluster: "homelab".into(),
            checks: vec![
                Check {
                    name: "master1 running".into(),
                    outcome: Outcome::Passed,
                    seconds: 1.5,
                    detail: "running 80.1 s after power-on".into(),
                },
                Check {
                    name: "firewall".into(),
                    outcome: Outcome::Failed {
                        why: "master1 192.168.1.11:2379 Open, expected dropped".into(),
                    },
                    seconds: 3.0,
                    detail: String::new(),
                },
                Check {
                    name: "etcd members healthy".into(),
                    outcome: Outcome::Skipped {
                        why: "no kubelet".into(),
                    },
                    seconds: 0.0,
                    detail: String::new(),
                },
            ],
            failover_seconds: None,
        };
        assert!(!r.passed());
        let x = r.junit().unwrap();
        assert!(
            x.contains(r#"tests="3""#) && x.contains(r#"failures="1""#),
            "{x}"
        );
        assert!(x.contains(r#"skipped="1""#), "{x}");
        assert!(x.contains("expected dropped"), "{x}");
        assert!(x.contains(r#"classname="slipway.vm.homelab""#), "{x}");
    }

    #[test]
    fn the_api_port_passes_on_control_plane_nodes_only() {
        assert!(firewall_expectations(true, 6443).contains(&(6443, true)));
        assert!(firewall_expectations(false, 6443).contains(&(6443, false)));
        assert!(firewall_expectations(false, 6443).contains(&(2379, false)));
    }
}
