//! /etc/passwd, group, shadow and gshadow as base-passwd, passwd's `shadowconfig on`,
//! systemd-sysusers and the packages' adduser calls would have left them.
//!
//! Static accounts come from base-passwd's masters; sysusers.d files are applied in file
//! name order; accounts from the maintscripts table follow. Dynamic IDs are allocated
//! downwards from 999, the same ID for a user and its group where both are free, as
//! systemd-sysusers does. Shadow entries are locked (`*` or `!`), and their last-change
//! day is SOURCE_DATE_EPOCH's, so the files are reproducible.

use std::collections::BTreeMap;

use crate::fs::{Entry, Tree};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub gecos: String,
    pub home: String,
    pub shell: String,
    /// `*` for base-passwd's, `!` (locked) for accounts made for services.
    pub password: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    pub name: String,
    pub gid: u32,
    pub members: Vec<String>,
}

#[derive(Debug, Default)]
pub struct Accounts {
    pub users: Vec<User>,
    pub groups: Vec<Group>,
}

const DYNAMIC_MAX: u32 = 999;
const DYNAMIC_MIN: u32 = 100;
const NOLOGIN: &str = "/usr/sbin/nologin";

impl Accounts {
    pub fn user(&self, name: &str) -> Option<&User> {
        self.users.iter().find(|u| u.name == name)
    }
    pub fn group(&self, name: &str) -> Option<&Group> {
        self.groups.iter().find(|g| g.name == name)
    }

    /// Reads base-passwd's masters from the tree.
    pub fn from_base_passwd(tree: &Tree) -> Result<Accounts, String> {
        let mut a = Accounts::default();
        for f in master(tree, "passwd.master", 7)? {
            a.users.push(User {
                uid: id(&f, 2)?,
                gid: id(&f, 3)?,
                name: f[0].clone(),
                gecos: f[4].clone(),
                home: f[5].clone(),
                shell: f[6].clone(),
                password: "*",
            });
        }
        for f in master(tree, "group.master", 4)? {
            a.groups.push(Group {
                gid: id(&f, 2)?,
                name: f[0].clone(),
                members: f[3]
                    .split(',')
                    .filter(|m| !m.is_empty())
                    .map(str::to_string)
                    .collect(),
            });
        }
        Ok(a)
    }

    /// The first system ID, searching downwards from 999 (systemd-sysusers) or upwards from
    /// 100 (adduser), that no user has as UID (if `uid`) and no group as GID (if `gid`).
    fn free(&self, downwards: bool, uid: bool, gid: bool, what: &str) -> Result<u32, String> {
        let free = |id: &u32| {
            (!uid || !self.users.iter().any(|u| u.uid == *id))
                && (!gid || !self.groups.iter().any(|g| g.gid == *id))
        };
        let found = if downwards {
            (DYNAMIC_MIN..=DYNAMIC_MAX).rev().find(free)
        } else {
            (DYNAMIC_MIN..=DYNAMIC_MAX).find(free)
        };
        found.ok_or_else(|| format!("no free system {what} left"))
    }

    /// A system group as `addgroup --system` makes it: the lowest free GID from 100.
    pub fn adduser_group(&mut self, name: &str) -> Result<u32, String> {
        if let Some(g) = self.group(name) {
            return Ok(g.gid);
        }
        let gid = self.free(false, false, true, "GID")?;
        self.add_group(name, Some(gid))
    }

    /// A system user with a group of its own as `adduser --system --group` makes it: the
    /// lowest free UID and GID from 100, chosen independently.
    pub fn adduser_user(
        &mut self,
        name: &str,
        gecos: &str,
        home: &str,
        shell: &str,
    ) -> Result<(), String> {
        if self.user(name).is_some() {
            return Ok(());
        }
        let uid = self.free(false, true, false, "UID")?;
        self.adduser_group(name)?;
        self.add_user(name, Some(uid), Some(name), gecos, home, shell)
    }

    pub fn add_group(&mut self, name: &str, gid: Option<u32>) -> Result<u32, String> {
        if let Some(g) = self.group(name) {
            return Ok(g.gid);
        }
        let gid = match gid {
            Some(g) => g,
            None => self.free(true, true, true, "GID")?,
        };
        self.groups.push(Group {
            name: name.into(),
            gid,
            members: Vec::new(),
        });
        Ok(gid)
    }

    /// A system user with a group of its own name unless `group` names another.
    pub fn add_user(
        &mut self,
        name: &str,
        uid: Option<u32>,
        group: Option<&str>,
        gecos: &str,
        home: &str,
        shell: &str,
    ) -> Result<(), String> {
        if self.user(name).is_some() {
            return Ok(());
        }
        let uid = match uid {
            Some(u) => u,
            None => {
                let own_group = group.is_none() && self.group(name).is_none();
                self.free(true, true, own_group, "ID")?
            }
        };
        let gid = match group {
            Some(g) => self
                .group(g)
                .map(|g| g.gid)
                .ok_or_else(|| format!("user {name}: group {g} does not exist"))?,
            None => match self.group(name) {
                Some(g) => g.gid,
                None => self.add_group(name, Some(uid))?,
            },
        };
        self.users.push(User {
            name: name.into(),
            uid,
            gid,
            gecos: gecos.into(),
            home: home.into(),
            shell: shell.into(),
            password: "!",
        });
        Ok(())
    }

    /// Applies one sysusers.d file (sysusers.d(5): `u`, `g` and `m` lines).
    pub fn apply_sysusers(&mut self, origin: &str, text: &str) -> Result<(), String> {
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let f = split_quoted(line);
            let field = |i: usize| f.get(i).map(String::as_str).filter(|s| *s != "-");
            let kind = field(0).unwrap_or("");
            let name = field(1).ok_or_else(|| format!("{origin}: {line:?}: no name"))?;
            match kind {
                "g" => {
                    let gid = field(2).and_then(|s| s.parse().ok());
                    self.add_group(name, gid)?;
                }
                "u" | "u!" => {
                    let (uid, group) = match field(2) {
                        Some(spec) => {
                            let (u, g) = spec
                                .split_once(':')
                                .map_or((spec, None), |(u, g)| (u, Some(g)));
                            (u.parse().ok(), g.map(str::to_string))
                        }
                        None => (None, None),
                    };
                    if let Some(g) = &group
                        && g.parse::<u32>().is_err()
                        && self.group(g).is_none()
                    {
                        self.add_group(g, None)?;
                    }
                    let numeric_gid = group.as_deref().and_then(|g| g.parse::<u32>().ok());
                    let group = group.filter(|_| numeric_gid.is_none());
                    let gecos = field(3).unwrap_or("");
                    let home = field(4).unwrap_or("/");
                    let shell = field(5).unwrap_or(NOLOGIN);
                    let existed = self.user(name).is_some();
                    self.add_user(name, uid, group.as_deref(), gecos, home, shell)?;
                    if let (false, Some(gid), Some(u)) =
                        (existed, numeric_gid, self.users.last_mut())
                    {
                        u.gid = gid;
                    }
                }
                "m" => {
                    let group = field(2).ok_or_else(|| format!("{origin}: {line:?}: no group"))?;
                    self.add_group(group, None)?;
                    if let Some(g) = self.groups.iter_mut().find(|g| g.name == group)
                        && !g.members.iter().any(|m| m == name)
                    {
                        g.members.push(name.to_string());
                    }
                }
                "r" => {}
                other => {
                    return Err(format!(
                        "{origin}: {line:?}: unknown sysusers type {other:?}"
                    ));
                }
            }
        }
        Ok(())
    }

    /// Writes the four account files into the tree.
    pub fn write(&self, tree: &mut Tree, source_date_epoch: u64) -> Result<(), String> {
        let day = source_date_epoch / 86_400;
        let mut passwd = String::new();
        let mut shadow = String::new();
        for u in &self.users {
            passwd.push_str(&format!(
                "{}:x:{}:{}:{}:{}:{}\n",
                u.name, u.uid, u.gid, u.gecos, u.home, u.shell
            ));
            shadow.push_str(&format!("{}:{}:{day}:0:99999:7:::\n", u.name, u.password));
        }
        let mut group = String::new();
        let mut gshadow = String::new();
        for g in &self.groups {
            let members = g.members.join(",");
            group.push_str(&format!("{}:x:{}:{members}\n", g.name, g.gid));
            gshadow.push_str(&format!("{}:*::{members}\n", g.name));
        }
        let shadow_gid = self
            .group("shadow")
            .map(|g| g.gid)
            .ok_or("no shadow group")?;
        tree.insert("etc/passwd", Entry::file(passwd, 0o644));
        tree.insert("etc/group", Entry::file(group, 0o644));
        for (p, text) in [("etc/shadow", shadow), ("etc/gshadow", gshadow)] {
            let mut e = Entry::file(text, 0o640);
            e.gid = shadow_gid;
            tree.insert(p, e);
        }
        for p in ["etc/subuid", "etc/subgid"] {
            tree.insert(p, Entry::file(Vec::new(), 0o644));
        }
        Ok(())
    }
}

/// The colon-separated lines of one of base-passwd's masters, each with `n` fields.
fn master(tree: &Tree, name: &str, n: usize) -> Result<Vec<Vec<String>>, String> {
    let bytes = tree
        .read(&format!("usr/share/base-passwd/{name}"))
        .ok_or_else(|| format!("base-passwd's {name} is missing: is base-passwd in the image?"))?;
    String::from_utf8_lossy(bytes)
        .lines()
        .filter(|l| !l.is_empty())
        .map(|line| {
            let f: Vec<String> = line.split(':').map(str::to_string).collect();
            if f.len() == n {
                Ok(f)
            } else {
                Err(format!("{name}: malformed line {line:?}"))
            }
        })
        .collect()
}

/// A numeric field of a master line.
fn id(f: &[String], i: usize) -> Result<u32, String> {
    f[i].parse()
        .map_err(|_| format!("{}: {:?} is not a number", f[0], f[i]))
}

/// Splits a sysusers.d line on whitespace, honouring double quotes.
fn split_quoted(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut any = false;
    for c in line.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                any = true;
            }
            c if c.is_whitespace() && !quoted => {
                if any {
                    out.push(std::mem::take(&mut cur));
                    any = false;
                }
            }
            c => {
                cur.push(c);
                any = true;
            }
        }
    }
    if any {
        out.push(cur);
    }
    out
}

/// Sorted sysusers.d file names in the tree, by file name as systemd-sysusers orders them.
pub fn sysusers_files(tree: &Tree) -> Vec<String> {
    let mut by_name: BTreeMap<String, String> = BTreeMap::new();
    for p in tree.children("usr/lib/sysusers.d") {
        if p.ends_with(".conf") {
            let name = p.rsplit('/').next().unwrap_or(p).to_string();
            by_name.insert(name, p.to_string());
        }
    }
    by_name.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sysusers_lines() {
        let mut a = Accounts::default();
        a.groups.push(Group {
            name: "root".into(),
            gid: 0,
            members: vec![],
        });
        a.groups.push(Group {
            name: "nogroup".into(),
            gid: 65534,
            members: vec![],
        });
        a.apply_sysusers("t", "g systemd-journal - -\nu! systemd-network - \"systemd Network Management\" - -\nu sshd -:nogroup \"sshd user\" /run/sshd\n").unwrap();
        assert_eq!(a.group("systemd-journal").unwrap().gid, 999);
        let n = a.user("systemd-network").unwrap();
        assert_eq!(
            (n.uid, n.gid, n.gecos.as_str(), n.shell.as_str()),
            (998, 998, "systemd Network Management", NOLOGIN)
        );
        let s = a.user("sshd").unwrap();
        assert_eq!((s.gid, s.home.as_str()), (65534, "/run/sshd"));
        assert_eq!(split_quoted("u a \"b c\" -"), ["u", "a", "b c", "-"]);
    }
}
