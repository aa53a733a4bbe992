//! What maintainer scripts and triggers would have done, done declaratively on the tree
//! (rules in profiles/debian/maintscripts.toml, explained in docs/rootfs.md): accounts,
//! alternatives, stat overrides, unit enablement, template copies, the CA bundle, an
//! empty machine-id, os-release's IMAGE_ID/IMAGE_VERSION and dpkg's database.

use std::collections::{BTreeMap, BTreeSet};

use md5::{Digest, Md5};
use serde::Deserialize;

use super::accounts::{self, Accounts};
use crate::debian::extract::Unpacked;
use crate::fs::{Entry, Kind, Tree};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rules {
    #[serde(default, rename = "group")]
    pub groups: Vec<GroupRule>,
    #[serde(default, rename = "user")]
    pub users: Vec<UserRule>,
    #[serde(default, rename = "alternative")]
    pub alternatives: Vec<Alternative>,
    #[serde(default)]
    pub statoverrides: Vec<[String; 4]>,
    #[serde(default)]
    pub enable: Vec<String>,
    #[serde(default)]
    pub copies: Vec<[String; 2]>,
    #[serde(default)]
    pub links: Vec<[String; 3]>,
    #[serde(default)]
    pub directories: Vec<[String; 2]>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupRule {
    pub name: String,
    pub package: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserRule {
    pub name: String,
    pub package: String,
    pub home: String,
    pub shell: String,
    #[serde(default)]
    pub gecos: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Alternative {
    pub name: String,
    pub link: String,
    pub candidates: Vec<Candidate>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Candidate {
    pub path: String,
    pub priority: i32,
    #[serde(default)]
    pub slaves: Vec<[String; 3]>,
}

/// What the image is called in os-release.
pub struct Identity<'a> {
    pub image_id: &'a str,
    pub image_version: &'a str,
}

fn rel(p: &str) -> &str {
    p.trim_start_matches('/')
}

/// Runs every step. `unpacked` is in install order.
pub fn configure(
    tree: &mut Tree,
    unpacked: &[Unpacked],
    rules: &Rules,
    id: &Identity<'_>,
    source_date_epoch: u64,
) -> Result<(), String> {
    let installed: BTreeSet<&str> = unpacked
        .iter()
        .filter_map(|u| u.control.get("Package"))
        .collect();

    // 1. accounts
    let mut acc = Accounts::from_base_passwd(tree)?;
    for f in accounts::sysusers_files(tree) {
        let text = String::from_utf8_lossy(tree.read(&f).unwrap_or_default()).into_owned();
        acc.apply_sysusers(&f, &text)?;
    }
    for g in rules
        .groups
        .iter()
        .filter(|g| installed.contains(g.package.as_str()))
    {
        acc.add_group(&g.name, None)?;
    }
    for u in rules
        .users
        .iter()
        .filter(|u| installed.contains(u.package.as_str()))
    {
        acc.add_user(&u.name, None, None, &u.gecos, &u.home, &u.shell)?;
    }
    acc.write(tree, source_date_epoch)?;

    // 2. alternatives (auto mode: the highest-priority candidate present)
    let mut alt_db = BTreeMap::new();
    for a in &rules.alternatives {
        let present: Vec<&Candidate> = a
            .candidates
            .iter()
            .filter(|c| tree.contains(rel(&c.path)))
            .collect();
        let Some(best) = present.iter().max_by_key(|c| c.priority) else {
            continue;
        };
        tree.insert(
            rel(&a.link),
            Entry::symlink(format!("/etc/alternatives/{}", a.name)),
        );
        tree.insert(
            &format!("etc/alternatives/{}", a.name),
            Entry::symlink(best.path.clone()),
        );
        for [link, name, path] in &best.slaves {
            if tree.contains(rel(path)) {
                tree.insert(
                    rel(link),
                    Entry::symlink(format!("/etc/alternatives/{name}")),
                );
                tree.insert(
                    &format!("etc/alternatives/{name}"),
                    Entry::symlink(path.clone()),
                );
            }
        }
        // update-alternatives' own database, so `update-alternatives --display` works.
        let mut db = format!("auto\n{}\n", a.link);
        for [link, name, _] in &best.slaves {
            db.push_str(&format!("{name}\n{link}\n"));
        }
        db.push('\n');
        for c in &present {
            db.push_str(&format!("{}\n{}\n", c.path, c.priority));
            for [_, _, path] in &best.slaves {
                let slave = c
                    .slaves
                    .iter()
                    .find(|s| s[2] == *path || s[0] == *path)
                    .map_or(String::new(), |s| s[2].clone());
                db.push_str(&format!(
                    "{}\n",
                    if slave.is_empty() {
                        path.clone()
                    } else {
                        slave
                    }
                ));
            }
        }
        db.push('\n');
        alt_db.insert(a.name.clone(), db);
    }
    for (name, db) in alt_db {
        tree.insert(
            &format!("var/lib/dpkg/alternatives/{name}"),
            Entry::file(db, 0o644),
        );
    }

    // 3. stat overrides
    let mut statoverride = String::new();
    for [path, owner, group, mode] in &rules.statoverrides {
        let Some(e) = tree.get(rel(path)).cloned() else {
            continue;
        };
        let uid = acc
            .user(owner)
            .map(|u| u.uid)
            .ok_or_else(|| format!("statoverride {path}: no user {owner}"))?;
        let gid = acc
            .group(group)
            .map(|g| g.gid)
            .ok_or_else(|| format!("statoverride {path}: no group {group}"))?;
        let mode_bits = u32::from_str_radix(mode, 8)
            .map_err(|_| format!("statoverride {path}: mode {mode}"))?;
        tree.insert(
            rel(path),
            Entry {
                uid,
                gid,
                mode: mode_bits,
                ..e
            },
        );
        statoverride.push_str(&format!("{owner} {group} {mode} {path}\n"));
    }
    tree.insert(
        "var/lib/dpkg/statoverride",
        Entry::file(statoverride, 0o644),
    );

    // 4. template copies and links
    for [from, to] in &rules.copies {
        if let Some(bytes) = tree.read(rel(from)).map(<[u8]>::to_vec) {
            tree.insert(rel(to), Entry::file(bytes, 0o644));
        }
    }
    for [path, mode] in &rules.directories {
        let m =
            u32::from_str_radix(mode, 8).map_err(|_| format!("directory {path}: mode {mode}"))?;
        tree.insert(rel(path), Entry::dir(m));
    }
    for [path, target, package] in &rules.links {
        if installed.contains(package.as_str()) {
            tree.insert(rel(path), Entry::symlink(target.clone()));
        }
    }

    // 5. units
    for unit in &rules.enable {
        enable_unit(tree, unit)?;
    }

    // 6. CA bundle, as update-ca-certificates builds it from every certificate shipped.
    let mut conf =
        String::from("# Every CA certificate shipped in /usr/share/ca-certificates is trusted.\n");
    let mut bundle = Vec::new();
    let certs: Vec<String> = tree
        .iter()
        .filter(|(p, e)| {
            p.starts_with("usr/share/ca-certificates/")
                && p.ends_with(".crt")
                && matches!(e.kind, Kind::File(_))
        })
        .map(|(p, _)| p.clone())
        .collect();
    for p in &certs {
        conf.push_str(&format!("{}\n", &p["usr/share/ca-certificates/".len()..]));
        let bytes = tree.read(p).unwrap_or_default();
        bundle.extend_from_slice(bytes);
        if !bytes.ends_with(b"\n") {
            bundle.push(b'\n');
        }
    }
    if !certs.is_empty() {
        tree.insert("etc/ca-certificates.conf", Entry::file(conf, 0o644));
        tree.insert(
            "etc/ssl/certs/ca-certificates.crt",
            Entry::file(bundle, 0o644),
        );
    }

    // 7. identity: machine-id empty (systemd fills it at boot), os-release image fields.
    tree.insert("etc/machine-id", Entry::file(Vec::new(), 0o444));
    if let Some(os) = tree.read("usr/lib/os-release").map(<[u8]>::to_vec) {
        let mut text: String = String::from_utf8_lossy(&os)
            .lines()
            .filter(|l| !l.starts_with("IMAGE_ID=") && !l.starts_with("IMAGE_VERSION="))
            .map(|l| format!("{l}\n"))
            .collect();
        text.push_str(&format!(
            "IMAGE_ID={}\nIMAGE_VERSION={}\n",
            id.image_id, id.image_version
        ));
        tree.insert("usr/lib/os-release", Entry::file(text, 0o644));
    }

    // 8. dpkg's database
    write_dpkg_db(tree, unpacked)?;
    Ok(())
}

/// Enables a unit the way `systemctl enable` does from its [Install] section.
fn enable_unit(tree: &mut Tree, unit: &str) -> Result<(), String> {
    // getty@tty1.service is an instance of getty@.service.
    let template = match unit.split_once('@') {
        Some((prefix, rest)) if !rest.starts_with('.') => {
            format!("{prefix}@.{}", rest.rsplit('.').next().unwrap_or("service"))
        }
        _ => unit.to_string(),
    };
    let file = format!("usr/lib/systemd/system/{template}");
    let Some(text) = tree
        .read(&file)
        .map(|b| String::from_utf8_lossy(b).into_owned())
    else {
        return Ok(()); // not in this image
    };
    let target = format!("/{file}");
    let mut in_install = false;
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_install = line == "[Install]";
            continue;
        }
        if !in_install {
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        for item in v.split_whitespace() {
            match k.trim() {
                "WantedBy" => {
                    tree.insert(
                        &format!("etc/systemd/system/{item}.wants/{unit}"),
                        Entry::symlink(target.clone()),
                    );
                }
                "RequiredBy" => {
                    tree.insert(
                        &format!("etc/systemd/system/{item}.requires/{unit}"),
                        Entry::symlink(target.clone()),
                    );
                }
                "Alias" => {
                    tree.insert(
                        &format!("etc/systemd/system/{item}"),
                        Entry::symlink(target.clone()),
                    );
                }
                "Also" if item != unit => enable_unit(tree, item)?,
                _ => {}
            }
        }
    }
    Ok(())
}

fn write_dpkg_db(tree: &mut Tree, unpacked: &[Unpacked]) -> Result<(), String> {
    let mut status: BTreeMap<String, String> = BTreeMap::new();
    for u in unpacked {
        let name = u
            .control
            .get("Package")
            .ok_or("a package without a name")?
            .to_string();
        let mut para = u.control.clone();
        // dpkg puts Status right after Package.
        para.fields
            .insert(1, ("Status".into(), "install ok installed".into()));
        if let Some(conffiles) = u.control_files.get("conffiles") {
            let mut v = String::new();
            for path in String::from_utf8_lossy(conffiles)
                .lines()
                .map(str::trim)
                .filter(|l| l.starts_with('/'))
            {
                let sum = tree
                    .read(rel(path))
                    .map(|b| hex::encode(Md5::digest(b)))
                    .unwrap_or_else(|| "newconffile".into());
                v.push_str(&format!("\n {path} {sum}"));
            }
            if !v.is_empty() {
                para.fields.push(("Conffiles".into(), v));
            }
        }
        status.insert(name.clone(), para.to_text());
        let arch = u.control.get("Architecture").unwrap_or("all");
        let multi_arch_same = u.control.get("Multi-Arch") == Some("same");
        let info_name = if multi_arch_same {
            format!("{name}:{arch}")
        } else {
            name.clone()
        };
        let info = |ext: &str| format!("var/lib/dpkg/info/{info_name}.{ext}");
        tree.insert(&info("list"), Entry::file(u.paths.join("\n") + "\n", 0o644));
        for (member, bytes) in &u.control_files {
            let mode = if ["preinst", "postinst", "prerm", "postrm", "config"]
                .contains(&member.as_str())
            {
                0o755
            } else {
                0o644
            };
            tree.insert(&info(member), Entry::file(bytes.clone(), mode));
        }
    }
    let text: String = status.into_values().map(|p| p + "\n").collect();
    tree.insert("var/lib/dpkg/status", Entry::file(text, 0o644));
    for f in ["available", "diversions"] {
        tree.insert(&format!("var/lib/dpkg/{f}"), Entry::file(Vec::new(), 0o644));
    }
    // The database layout: "1" is the multiarch one (info files named PKG:ARCH).
    tree.insert(
        "var/lib/dpkg/info/format",
        Entry::file(b"1\n".to_vec(), 0o644),
    );
    let arch = unpacked
        .iter()
        .filter_map(|u| u.control.get("Architecture"))
        .find(|a| *a != "all")
        .unwrap_or("amd64");
    for f in ["arch", "arch-native"] {
        tree.insert(
            &format!("var/lib/dpkg/{f}"),
            Entry::file(format!("{arch}\n"), 0o644),
        );
    }
    for d in ["parts", "triggers", "updates"] {
        tree.insert(&format!("var/lib/dpkg/{d}"), Entry::dir(0o755));
    }
    Ok(())
}
