//! Assembles a node's Ignition config (spec 3.3.0, the newest that Debian 12's
//! `ignition-validate` 2.14 accepts and a subset of every later spec) from its rendered files.
//!
//! Files under /etc/systemd/system become `systemd.units` (whole units) or their
//! `dropins`, so Ignition implementations enable them the documented way; every other file
//! is a `storage.files` entry with a base64 `data:` URL. Output is deterministic: entries
//! are sorted and serde_json writes struct fields in declaration order.

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ignition_config::v3_3 as ign;

use super::NodeRender;
use crate::cluster::Cluster;

/// The spec version written.
pub const SPEC_VERSION: &str = "3.3.0";
const UNIT_DIR: &str = "/etc/systemd/system/";
const UNIT_SUFFIXES: [&str; 7] = [
    ".service", ".timer", ".socket", ".mount", ".path", ".target", ".slice",
];

enum Placement<'a> {
    Unit(&'a str),
    Dropin { unit: &'a str, name: &'a str },
    File,
}

fn placement(path: &str) -> Placement<'_> {
    let Some(rest) = path.strip_prefix(UNIT_DIR) else {
        return Placement::File;
    };
    let is_unit = |n: &str| UNIT_SUFFIXES.iter().any(|s| n.ends_with(s));
    match rest.split_once('/') {
        None if is_unit(rest) => Placement::Unit(rest),
        Some((dir, name)) if !name.contains('/') && name.ends_with(".conf") => {
            match dir.strip_suffix(".d") {
                Some(unit) if is_unit(unit) => Placement::Dropin { unit, name },
                _ => Placement::File,
            }
        }
        _ => Placement::File,
    }
}

fn root_owned() -> (Option<ign::NodeUser>, Option<ign::NodeGroup>) {
    (
        Some(ign::NodeUser {
            id: None,
            name: Some("root".into()),
        }),
        Some(ign::NodeGroup {
            id: None,
            name: Some("root".into()),
        }),
    )
}

/// Builds the Ignition config for a rendered node.
pub fn build(cluster: &Cluster, node: &NodeRender) -> ign::Config {
    let mut files = Vec::new();
    let mut units: BTreeMap<String, ign::Unit> = BTreeMap::new();
    fn unit<'a>(units: &'a mut BTreeMap<String, ign::Unit>, name: &str) -> &'a mut ign::Unit {
        units
            .entry(name.to_string())
            .or_insert_with(|| ign::Unit::new(name.to_string()))
    }
    for f in &node.files {
        let text = || String::from_utf8_lossy(&f.contents).into_owned();
        match placement(&f.path) {
            Placement::Unit(name) => unit(&mut units, name).contents = Some(text()),
            Placement::Dropin {
                unit: name,
                name: dropin,
            } => {
                let mut d = ign::Dropin::new(dropin.to_string());
                d.contents = Some(text());
                unit(&mut units, name)
                    .dropins
                    .get_or_insert_with(Vec::new)
                    .push(d);
            }
            Placement::File => {
                let (user, group) = root_owned();
                let mut contents = ign::Resource::default();
                contents.source = Some(format!("data:;base64,{}", STANDARD.encode(&f.contents)));
                files.push(ign::File {
                    append: None,
                    contents: Some(contents),
                    group,
                    mode: Some(i64::from(f.mode)),
                    overwrite: Some(true),
                    path: f.path.clone(),
                    user,
                });
            }
        }
    }
    for name in &node.enable {
        unit(&mut units, name).enabled = Some(true);
    }
    let directories = node
        .directories
        .iter()
        .map(|d| {
            let (user, group) = root_owned();
            ign::Directory {
                group,
                mode: Some(i64::from(d.mode)),
                overwrite: None,
                path: d.path.clone(),
                user,
            }
        })
        .collect::<Vec<_>>();

    let mut admin = ign::User::new(cluster.admin.user.clone());
    admin.groups = Some(vec!["sudo".into()]);
    admin.shell = Some("/bin/bash".into());
    admin.ssh_authorized_keys = Some(cluster.admin.ssh_authorized_keys.clone());

    let mut config = ign::Config::default();
    config.ignition.version = Some(SPEC_VERSION.into());
    config.passwd = Some(ign::Passwd {
        groups: None,
        users: Some(vec![admin]),
    });
    config.storage = Some(ign::Storage {
        directories: (!directories.is_empty()).then_some(directories),
        files: Some(files),
        ..Default::default()
    });
    config.systemd = Some(ign::Systemd {
        units: Some(units.into_values().collect()),
    });
    config
}

/// The config as pretty JSON, ending in a newline.
pub fn to_json(config: &ign::Config) -> Vec<u8> {
    let mut v = serde_json::to_vec_pretty(config).expect("an Ignition config always serializes");
    v.push(b'\n');
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_placement() {
        assert!(matches!(
            placement("/etc/systemd/system/kubelet.service"),
            Placement::Unit("kubelet.service")
        ));
        assert!(matches!(
            placement("/etc/systemd/system/haproxy.service.d/10-slipway.conf"),
            Placement::Dropin {
                unit: "haproxy.service",
                name: "10-slipway.conf"
            }
        ));
        assert!(matches!(
            placement("/etc/systemd/network/10-lan0.network"),
            Placement::File
        ));
        assert!(matches!(
            placement("/etc/systemd/system/multi-user.target.wants/x"),
            Placement::File
        ));
    }
}
