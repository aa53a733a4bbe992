//! Reimaging a control-plane node of a running cluster over the network, one node at a
//! time as the seed says: master1..3 run on a private segment (a network namespace of the
//! test's own), master2 is reimaged from `slipway serve` twice, first keeping its state
//! partition (`--keep-state master2`), then wiping it, while a ping from the segment
//! watches the API's VIP on master1. After each install master2 boots from its disk alone
//! and runs again: with its old state (a mark in /var survives, first boot is not run
//! again) and then fresh (the mark is gone, first boot applied its config again). The
//! VIP never leaves master1 (its keepalived became MASTER once) and never stops answering
//! for as long as a failover would take. etcd runs on all three from the image baked from
//! Debian's etcd-server: kept state brings master2's member back as it was; wiped state
//! has etcd-rejoin.service remove the stale member through a healthy peer and add
//! master2 afresh before its etcd starts, which then joins with the cluster's data.
//! (Without kubelet in the images, the test lock pinning no Kubernetes release, the test
//! starts etcd's static pod itself; with it, kubelet does.)
#![allow(clippy::unwrap_used)]

#[path = "../tests/common/mod.rs"]
mod common;
mod harness;

use std::time::{Duration, Instant, SystemTime};

use harness::cluster::TestCluster;
use harness::pxe::Provisioning;

const MARK: &str = "/var/lib/slipway-reimage-mark";

#[test]
fn master2_is_reimaged_keeping_then_wiping_its_state_while_the_vip_stays_on_master1() {
    let _wall = harness::WallTime::start(
        "master2_is_reimaged_keeping_then_wiping_its_state_while_the_vip_stays_on_master1",
    );
    let started = Instant::now();
    let masters = ["master1", "master2", "master3"];
    let mut c = TestCluster::up("reimage", &masters);
    for n in masters {
        c.wait_running(n);
    }
    c.wait_vip_on("master1", Duration::from_secs(5), Duration::from_secs(180));
    eprintln!(
        "reimage: master1..3 running, VIP on master1 at {:.1} s",
        started.elapsed().as_secs_f64()
    );
    for n in masters {
        c.start_static_pod(n, "etcd");
    }
    c.wait_etcd_healthy("master1", Duration::from_secs(240));
    let (code, out) = c.etcdctl("master1", "put /slipway/test before-reimage");
    assert_eq!(code, 0, "{out}");
    let member_id = |c: &TestCluster| {
        let members = c.etcd_members("master1");
        let m = members.iter().find(|m| m[2] == "master2");
        let m = m.unwrap_or_else(|| panic!("no started master2 member: {members:?}"));
        assert_eq!(members.len(), 3, "{members:?}");
        m[0].clone()
    };
    let mut id = member_id(&c);
    eprintln!(
        "reimage: etcd has 3 healthy members (master2 is {id}) at {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let (code, _) = c.ssh(
        "master2",
        // Synced: the reimage pulls the plug, as it would be on a failed node.
        &format!("echo kept | sudo tee {MARK} >/dev/null && sync"),
    );
    assert_eq!(code, 0);
    let watch = c.ping_watch(&c.vip.clone());
    let since = SystemTime::now();
    let out = c.dir.join("out");

    for keep in [true, false] {
        let what = if keep { "keeping" } else { "wiping" };
        let t = Instant::now();
        let console = {
            let prov = Provisioning::start(
                &c.session.segment,
                &out,
                &c.dir,
                if keep { &["master2"] } else { &[] },
            );
            let console = c.reimage("master2");
            let served = prov.served();
            assert!(
                served.contains("/nodes/52-54-00-00-00-12/config.ign 200")
                    && served.contains("/pxe/nodes/52-54-00-00-00-12.ipxe 200"),
                "master2's install was not served: {served}"
            );
            assert_eq!(
                served.contains("node=master2 (state kept)"),
                keep,
                "{served}"
            );
            console
        };
        let installed = t.elapsed();
        if keep {
            assert!(
                console.contains("keeping its state partition")
                    && console.contains("the state partition is in the new table"),
                "master2's installer did not keep its state ({})",
                c.dir.display()
            );
        } else {
            assert!(
                console.contains("its state partition (if any) wiped"),
                "master2's installer did not wipe ({})",
                c.dir.display()
            );
        }
        c.power_on("master2");
        let running = c.wait_running("master2");
        let (_, mark) = c.ssh("master2", &format!("cat {MARK} 2>/dev/null || echo none"));
        let console = c.console("master2");
        if keep {
            assert_eq!(mark.trim(), "kept", "the kept state lost its mark");
            assert!(console.contains("not the first boot"));
        } else {
            assert_eq!(mark.trim(), "none", "the wiped state still has its mark");
            assert!(console.contains("first boot done"));
        }
        // etcd: with its data kept, the rejoin check is skipped and the member comes back
        // as it was; with it wiped, the stale member is replaced before etcd starts.
        let (_, cond) = c.ssh(
            "master2",
            "systemctl show -p ConditionResult --value etcd-rejoin",
        );
        let (_, log) = c.ssh("master2", "sudo journalctl -b -u etcd-rejoin -o cat");
        if keep {
            assert_eq!(
                cond.trim(),
                "no",
                "etcd-rejoin ran with data present: {log}"
            );
        } else {
            assert!(
                log.contains(&format!("removing stale member {id} (master2,"))
                    && log.contains("adding member master2 (https://192.168.1.12:2380)")
                    && log.contains("etcd will join the running cluster"),
                "etcd-rejoin on the wiped master2: {log}"
            );
            let (_, m) = c.ssh(
                "master2",
                "sudo grep -c -- '--initial-cluster-state=existing$' /etc/kubernetes/manifests/etcd.yaml",
            );
            assert_eq!(m.trim(), "1", "the manifest does not join the cluster");
        }
        c.start_static_pod("master2", "etcd");
        let took = c.wait_etcd_healthy("master2", Duration::from_secs(240));
        let new_id = member_id(&c);
        assert_eq!(new_id == id, keep, "master2's member {id} -> {new_id}");
        // Read from master2's own member without consensus: its own copy of the data.
        let (code, got) = c.etcdctl_at(
            "master2",
            "https://127.0.0.1:2379",
            "get --consistency=s --print-value-only /slipway/test",
        );
        assert_eq!(
            (code, got.trim()),
            (0, "before-reimage"),
            "master2's own etcd: {got}"
        );
        eprintln!(
            "reimage: master2 {what} its state: etcd member {new_id}, 3 healthy {:.1} s after its pod started",
            took.as_secs_f64()
        );
        id = new_id;
        // master2 is a VRRP backup again, and the VIP stayed where it was.
        let (_, addrs) = c.ssh("master2", "ip -4 -o addr show");
        assert!(!addrs.contains(&format!(" {}/", c.vip)), "{addrs}");
        assert_eq!(c.vip_holder().as_deref(), Some("master1"));
        eprintln!(
            "reimage: master2 {what} its state: installed in {:.1} s (power-off to the \
             installer's reboot), running {:.1} s after power-on",
            installed.as_secs_f64(),
            running.as_secs_f64()
        );
    }
    // The VIP never moved: master1's keepalived became MASTER once, at its start...
    let (_, states) = c.ssh(
        "master1",
        "sudo journalctl -b -u keepalived -o cat | grep -c 'Entering MASTER STATE'",
    );
    assert_eq!(states.trim(), "1", "master1 lost and regained the VIP");
    // ...and the VIP kept answering: a pause as long as keepalived's failover (3 adverts
    // of 1 s plus skew, over 3 s) would be the VIP moving; shorter ones are this 2-core
    // host stalling a TCG guest while another installs.
    let gap = watch.longest_gap_since(since);
    eprintln!(
        "reimage: longest pause between VIP ping replies during both reimages: {:.2} s",
        gap.as_secs_f64()
    );
    assert!(
        gap < Duration::from_secs(3),
        "the VIP stopped answering for {gap:?}"
    );
    c.assert_consoles_clean();
    let dir = c.dir.clone();
    drop(watch);
    drop(c);
    harness::passed(&dir);
}
