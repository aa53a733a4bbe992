//! Applying an Ignition config (spec 3.0-3.3, parsed by the ignition-config crate) to the
//! new root on first boot, the way Ignition's `files` stage does: users and groups, then
//! directories, files and links, then systemd units (contents, drop-ins, masks, and
//! enablement as presets that systemd applies on first boot).
//!
//! Everything is checked and decoded first ([`plan`]); a field this init does not
//! support, a source that is not a `data:` URL, or a path on the read-only root fails
//! there, naming the field, before anything is written. docs/firstboot.md lists the subset.

use std::io::Read;
use std::os::unix::fs::{PermissionsExt, lchown};
use std::path::{Path, PathBuf};

use ignition_config::v3_3 as spec;
use sha2::Digest;

/// Directories of the new root that are writable (the rest is the verified image).
pub const WRITABLE: &[&str] = &["/etc", "/var", "/opt", "/home", "/root"];
pub const PRESET: &str = "/etc/systemd/system-preset/20-ignition.preset";

/// Parses `bytes` as Ignition 3.0-3.3 (older versions are subsets of 3.3).
pub fn parse(bytes: &[u8]) -> Result<spec::Config, String> {
    use ignition_config::Config;
    let (cfg, _warnings) =
        Config::parse_slice(bytes).map_err(|e| format!("not an Ignition config: {e}"))?;
    let as33 = |v: serde_json::Result<serde_json::Value>| -> Result<spec::Config, String> {
        let mut v = v.map_err(|e| e.to_string())?;
        v["ignition"]["version"] = "3.3.0".into();
        serde_json::from_value(v).map_err(|e| e.to_string())
    };
    match cfg {
        Config::V3_3(c) => Ok(c),
        Config::V3_0(c) => as33(serde_json::to_value(c)),
        Config::V3_1(c) => as33(serde_json::to_value(c)),
        Config::V3_2(c) => as33(serde_json::to_value(c)),
        _ => Err(
            "Ignition spec versions after 3.3.0 are not supported (Slipway writes 3.3.0)".into(),
        ),
    }
}

fn unsupported(field: &str) -> String {
    format!(
        "unsupported Ignition field {field}: slipway-init applies only the subset in docs/firstboot.md"
    )
}

fn none_or_empty<T>(v: &Option<Vec<T>>) -> bool {
    v.as_ref().is_none_or(Vec::is_empty)
}

/// One change to the new root, decoded and checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Group {
        name: String,
        gid: Option<u32>,
        password_hash: Option<String>,
    },
    User(UserOp),
    Dir {
        path: String,
        mode: u32,
        user: Owner,
        group: Owner,
        overwrite: bool,
    },
    File {
        path: String,
        contents: Vec<u8>,
        mode: u32,
        user: Owner,
        group: Owner,
        overwrite: bool,
    },
    Link {
        path: String,
        target: String,
        hard: bool,
        user: Owner,
        group: Owner,
        overwrite: bool,
    },
    Unit {
        name: String,
        contents: Option<String>,
        dropins: Vec<(String, String)>,
        mask: bool,
        enabled: Option<bool>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserOp {
    pub name: String,
    pub uid: Option<u32>,
    pub gecos: String,
    pub home: Option<String>,
    pub shell: Option<String>,
    pub groups: Vec<String>,
    pub keys: Vec<String>,
    pub password_hash: Option<String>,
    pub primary_group: Option<String>,
    pub create_home: bool,
    pub user_group: bool,
}

/// An owner by id or name (resolved against the new root's passwd/group when applied).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Owner {
    #[default]
    Root,
    Id(u32),
    Name(String),
}

/// An owner from a node's `user` or `group` (id and name, both optional).
fn owner(node: Option<(Option<i64>, Option<String>)>, field: &str) -> Result<Owner, String> {
    let (id, name) = node.unwrap_or_default();
    match (id, &name) {
        (Some(_), Some(_)) => Err(format!("{field}: both id and name are set")),
        (Some(i), None) => u32::try_from(i)
            .map(Owner::Id)
            .map_err(|_| format!("{field}.id {i}: out of range")),
        (None, Some(n)) => Ok(Owner::Name(n.clone())),
        (None, None) => Ok(Owner::Root),
    }
}

fn check_path(p: &str, field: &str) -> Result<(), String> {
    if !p.starts_with('/') || p.split('/').any(|c| c == "..") {
        return Err(format!("{field} {p:?}: not an absolute path without '..'"));
    }
    if !WRITABLE
        .iter()
        .any(|w| p == *w || p.starts_with(&format!("{w}/")))
    {
        return Err(format!(
            "{field} {p}: the root filesystem is read-only; only {} are writable",
            WRITABLE.join(", ")
        ));
    }
    Ok(())
}

fn mode(m: Option<i64>, default: u32, field: &str) -> Result<u32, String> {
    match m {
        None => Ok(default),
        Some(m) if (0..=0o7777).contains(&m) => Ok(m as u32),
        Some(m) => Err(format!("{field}.mode {m}: not a permission mode")),
    }
}

/// Decodes a file's contents: a `data:` URL, optionally gzip-compressed, optionally
/// checked against a sha256/sha512 verification hash.
fn contents(r: &spec::Resource, field: &str) -> Result<Vec<u8>, String> {
    if r.http_headers.as_ref().is_some_and(|h| !h.is_empty()) {
        return Err(unsupported(&format!("{field}.httpHeaders")));
    }
    let Some(src) = &r.source else {
        return Ok(Vec::new());
    };
    if !src.starts_with("data:") {
        return Err(format!(
            "{field}.source: only data: URLs are supported (the node has no network yet), not {}",
            src.split(':').next().unwrap_or("")
        ));
    }
    let url = data_url::DataUrl::process(src).map_err(|e| format!("{field}.source: {e:?}"))?;
    let (raw, _) = url
        .decode_to_vec()
        .map_err(|e| format!("{field}.source: bad base64: {e:?}"))?;
    if r.verification.as_ref().is_some_and(|v| v.hash.is_some())
        && r.compression.as_deref().is_some_and(|c| !c.is_empty())
    {
        return Err(unsupported(&format!(
            "{field}.verification with compression"
        )));
    }
    let hashed = raw.clone();
    let bytes = match r.compression.as_deref() {
        None | Some("") => raw,
        Some("gzip") => {
            let mut out = Vec::new();
            flate2::read::GzDecoder::new(&raw[..])
                .read_to_end(&mut out)
                .map_err(|e| format!("{field}: gzip: {e}"))?;
            out
        }
        Some(other) => {
            return Err(format!(
                "{field}.compression {other:?}: only gzip is supported"
            ));
        }
    };
    if let Some(h) = r.verification.as_ref().and_then(|v| v.hash.as_ref()) {
        let (algo, want) = h
            .split_once('-')
            .ok_or_else(|| format!("{field}.verification.hash {h:?}: not ALGO-HEX"))?;
        let got = match algo {
            "sha256" => hex(&sha2::Sha256::digest(&hashed)),
            "sha512" => hex(&sha2::Sha512::digest(&hashed)),
            _ => {
                return Err(format!(
                    "{field}.verification.hash: unknown algorithm {algo}"
                ));
            }
        };
        if got != want.to_ascii_lowercase() {
            return Err(format!("{field}: contents do not match verification.hash"));
        }
    }
    Ok(bytes)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Checks the whole config and decodes it into operations, writing nothing.
pub fn plan(cfg: &spec::Config) -> Result<Vec<Op>, String> {
    let ig = &cfg.ignition;
    if ig
        .config
        .as_ref()
        .is_some_and(|c| c.replace.is_some() || !none_or_empty(&c.merge))
    {
        return Err(unsupported("ignition.config"));
    }
    if ig.proxy.is_some() {
        return Err(unsupported("ignition.proxy"));
    }
    if ig
        .security
        .as_ref()
        .and_then(|s| s.tls.as_ref())
        .is_some_and(|t| !none_or_empty(&t.certificate_authorities))
    {
        return Err(unsupported("ignition.security.tls.certificateAuthorities"));
    }
    if let Some(k) = &cfg.kernel_arguments
        && (!none_or_empty(&k.should_exist) || !none_or_empty(&k.should_not_exist))
    {
        return Err(unsupported("kernelArguments"));
    }
    let mut ops = Vec::new();
    if let Some(p) = &cfg.passwd {
        for (i, g) in p.groups.iter().flatten().enumerate() {
            let f = format!("passwd.groups[{i}]");
            if g.should_exist == Some(false) {
                return Err(unsupported(&format!("{f}.shouldExist")));
            }
            if g.system.is_some() {
                return Err(unsupported(&format!("{f}.system")));
            }
            ops.push(Op::Group {
                name: g.name.clone(),
                gid: g
                    .gid
                    .map(|x| u32::try_from(x).map_err(|_| format!("{f}.gid {x}: out of range")))
                    .transpose()?,
                password_hash: g.password_hash.clone(),
            });
        }
        for (i, u) in p.users.iter().flatten().enumerate() {
            let f = format!("passwd.users[{i}]");
            if u.should_exist == Some(false) {
                return Err(unsupported(&format!("{f}.shouldExist")));
            }
            if u.system.is_some() {
                return Err(unsupported(&format!("{f}.system")));
            }
            if let Some(h) = &u.home_dir {
                check_path(h, &format!("{f}.homeDir"))?;
            }
            ops.push(Op::User(UserOp {
                name: u.name.clone(),
                uid: u
                    .uid
                    .map(|x| u32::try_from(x).map_err(|_| format!("{f}.uid {x}: out of range")))
                    .transpose()?,
                gecos: u.gecos.clone().unwrap_or_default(),
                home: u.home_dir.clone(),
                shell: u.shell.clone(),
                groups: u.groups.clone().unwrap_or_default(),
                keys: u.ssh_authorized_keys.clone().unwrap_or_default(),
                password_hash: u.password_hash.clone(),
                primary_group: u.primary_group.clone(),
                create_home: u.no_create_home != Some(true),
                user_group: u.no_user_group != Some(true),
            }));
        }
    }
    if let Some(s) = &cfg.storage {
        for (field, empty) in [
            ("storage.disks", none_or_empty(&s.disks)),
            ("storage.raid", none_or_empty(&s.raid)),
            ("storage.filesystems", none_or_empty(&s.filesystems)),
            ("storage.luks", none_or_empty(&s.luks)),
        ] {
            if !empty {
                return Err(unsupported(field));
            }
        }
        for (i, d) in s.directories.iter().flatten().enumerate() {
            let f = format!("storage.directories[{i}]");
            check_path(&d.path, &format!("{f}.path"))?;
            ops.push(Op::Dir {
                path: d.path.clone(),
                mode: mode(d.mode, 0o755, &f)?,
                user: owner(
                    d.user.as_ref().map(|x| (x.id, x.name.clone())),
                    &format!("{f}.user"),
                )?,
                group: owner(
                    d.group.as_ref().map(|x| (x.id, x.name.clone())),
                    &format!("{f}.group"),
                )?,
                overwrite: d.overwrite == Some(true),
            });
        }
        for (i, file) in s.files.iter().flatten().enumerate() {
            let f = format!("storage.files[{i}]");
            check_path(&file.path, &format!("{f}.path"))?;
            if !none_or_empty(&file.append) {
                return Err(unsupported(&format!("{f}.append")));
            }
            let bytes = match &file.contents {
                Some(r) => contents(r, &format!("{f}.contents"))?,
                None => Vec::new(),
            };
            ops.push(Op::File {
                path: file.path.clone(),
                contents: bytes,
                mode: mode(file.mode, 0o644, &f)?,
                user: owner(
                    file.user.as_ref().map(|x| (x.id, x.name.clone())),
                    &format!("{f}.user"),
                )?,
                group: owner(
                    file.group.as_ref().map(|x| (x.id, x.name.clone())),
                    &format!("{f}.group"),
                )?,
                overwrite: file.overwrite == Some(true),
            });
        }
        for (i, l) in s.links.iter().flatten().enumerate() {
            let f = format!("storage.links[{i}]");
            check_path(&l.path, &format!("{f}.path"))?;
            let target = l
                .target
                .clone()
                .ok_or_else(|| format!("{f}.target: missing"))?;
            ops.push(Op::Link {
                path: l.path.clone(),
                target,
                hard: l.hard == Some(true),
                user: owner(
                    l.user.as_ref().map(|x| (x.id, x.name.clone())),
                    &format!("{f}.user"),
                )?,
                group: owner(
                    l.group.as_ref().map(|x| (x.id, x.name.clone())),
                    &format!("{f}.group"),
                )?,
                overwrite: l.overwrite == Some(true),
            });
        }
    }
    if let Some(sd) = &cfg.systemd {
        for (i, u) in sd.units.iter().flatten().enumerate() {
            let f = format!("systemd.units[{i}]");
            if u.name.is_empty() || u.name.contains('/') {
                return Err(format!("{f}.name {:?}: not a unit name", u.name));
            }
            let mut dropins = Vec::new();
            for (j, d) in u.dropins.iter().flatten().enumerate() {
                if d.name.is_empty() || d.name.contains('/') {
                    return Err(format!(
                        "{f}.dropins[{j}].name {:?}: not a file name",
                        d.name
                    ));
                }
                dropins.push((d.name.clone(), d.contents.clone().unwrap_or_default()));
            }
            ops.push(Op::Unit {
                name: u.name.clone(),
                contents: u.contents.clone(),
                dropins,
                mask: u.mask == Some(true),
                enabled: u.enabled,
            });
        }
    }
    Ok(ops)
}

/// The new root's account databases.
struct Accounts {
    passwd: Vec<Vec<String>>,
    group: Vec<Vec<String>>,
    shadow: Vec<Vec<String>>,
    gshadow: Vec<Vec<String>>,
}

fn read_db(root: &Path, name: &str) -> Result<Vec<Vec<String>>, String> {
    let p = root.join("etc").join(name);
    match std::fs::read_to_string(&p) {
        Ok(t) => Ok(t
            .lines()
            .filter(|l| !l.is_empty())
            .map(|l| l.split(':').map(str::to_string).collect())
            .collect()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(format!("{}: {e}", p.display())),
    }
}

fn write_db(root: &Path, name: &str, rows: &[Vec<String>], mode: u32) -> Result<(), String> {
    let p = root.join("etc").join(name);
    let text: String = rows.iter().map(|r| r.join(":") + "\n").collect();
    write_db_file(&p, text.as_bytes(), mode)
}

fn write_file(p: &Path, bytes: &[u8], mode: u32) -> Result<(), String> {
    let tmp = p.with_extension("slipway-tmp");
    std::fs::write(&tmp, bytes).map_err(|e| format!("{}: {e}", tmp.display()))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))
        .map_err(|e| format!("{}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, p).map_err(|e| format!("{}: {e}", p.display()))
}

/// Rewrites an account database in place of the old one, keeping its owner and mode
/// (shadow and gshadow belong to group shadow).
fn write_db_file(p: &Path, bytes: &[u8], mode: u32) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let old = std::fs::metadata(p).ok();
    let mode = old.as_ref().map_or(mode, |m| m.mode() & 0o7777);
    write_file(p, bytes, mode)?;
    if let Some(m) = old {
        lchown(p, Some(m.uid()), Some(m.gid())).map_err(|e| format!("{}: {e}", p.display()))?;
    }
    Ok(())
}

impl Accounts {
    fn load(root: &Path) -> Result<Accounts, String> {
        Ok(Accounts {
            passwd: read_db(root, "passwd")?,
            group: read_db(root, "group")?,
            shadow: read_db(root, "shadow")?,
            gshadow: read_db(root, "gshadow")?,
        })
    }
    fn save(&self, root: &Path) -> Result<(), String> {
        write_db(root, "passwd", &self.passwd, 0o644)?;
        write_db(root, "group", &self.group, 0o644)?;
        write_db(root, "shadow", &self.shadow, 0o640)?;
        write_db(root, "gshadow", &self.gshadow, 0o640)
    }
    fn uid(&self, name: &str) -> Option<u32> {
        self.passwd
            .iter()
            .find(|r| r[0] == name)
            .and_then(|r| r.get(2)?.parse().ok())
    }
    fn gid(&self, name: &str) -> Option<u32> {
        self.group
            .iter()
            .find(|r| r[0] == name)
            .and_then(|r| r.get(2)?.parse().ok())
    }
    /// The next id after the highest in use from `min` up (as useradd picks them).
    fn free(table: &[Vec<String>], min: u32) -> u32 {
        table
            .iter()
            .filter_map(|r| r.get(2)?.parse::<u32>().ok())
            .filter(|&i| (min..60000).contains(&i))
            .max()
            .map_or(min, |m| m + 1)
    }
    fn resolve(&self, o: &Owner, user: bool) -> Result<u32, String> {
        match o {
            Owner::Root => Ok(0),
            Owner::Id(i) => Ok(*i),
            Owner::Name(n) => if user { self.uid(n) } else { self.gid(n) }.ok_or_else(|| {
                format!(
                    "no {} named {n} in the new root",
                    if user { "user" } else { "group" }
                )
            }),
        }
    }
}

/// useradd's defaults as the new root configures them (login.defs, default/useradd), so
/// users come out as `useradd --root` (what Ignition runs) would make them.
struct Defaults {
    home_mode: u32,
    user_groups: bool,
    group: u32,
    shell: String,
    skel: String,
    uid_min: u32,
}

impl Defaults {
    fn read(root: &Path) -> Defaults {
        let kv = |file: &str, sep: fn(&str) -> Option<(&str, &str)>| -> Vec<(String, String)> {
            std::fs::read_to_string(root.join(file))
                .unwrap_or_default()
                .lines()
                .filter(|l| !l.trim_start().starts_with('#'))
                .filter_map(|l| {
                    sep(l.trim()).map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                })
                .collect()
        };
        let defs = kv("etc/login.defs", |l| l.split_once(char::is_whitespace));
        let ua = kv("etc/default/useradd", |l| l.split_once('='));
        let get = |v: &[(String, String)], k: &str| {
            v.iter().find(|(a, _)| a == k).map(|(_, b)| b.clone())
        };
        let octal = |s: String| u32::from_str_radix(s.trim_start_matches('0'), 8).ok();
        let umask = get(&defs, "UMASK").and_then(octal).unwrap_or(0o022);
        Defaults {
            home_mode: get(&defs, "HOME_MODE")
                .and_then(octal)
                .unwrap_or(0o777 & !umask),
            user_groups: get(&defs, "USERGROUPS_ENAB").is_some_and(|v| v == "yes"),
            group: get(&ua, "GROUP")
                .and_then(|g| g.parse().ok())
                .unwrap_or(100),
            shell: get(&ua, "SHELL").unwrap_or_else(|| "/bin/sh".into()),
            skel: get(&ua, "SKEL").unwrap_or_else(|| "/etc/skel".into()),
            uid_min: get(&defs, "UID_MIN")
                .and_then(|g| g.parse().ok())
                .unwrap_or(1000),
        }
    }
}

/// What was applied, for the log.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Applied {
    pub users: usize,
    pub groups: usize,
    pub directories: usize,
    pub files: usize,
    pub links: usize,
    pub units: usize,
}

fn mkdirs(root: &Path, dir: &str) -> Result<(), String> {
    let p = root.join(dir.trim_start_matches('/'));
    std::fs::create_dir_all(&p).map_err(|e| format!("creating {}: {e}", p.display()))
}

fn exists(p: &Path) -> bool {
    std::fs::symlink_metadata(p).is_ok()
}

/// Applies `ops` (from [`plan`]) to the root at `root`.
pub fn apply(ops: &[Op], root: &Path) -> Result<Applied, String> {
    let mut acc = Accounts::load(root)?;
    let defaults = Defaults::read(root);
    let mut done = Applied::default();
    // 1. groups and users
    for op in ops {
        if let Op::Group {
            name,
            gid,
            password_hash,
        } = op
        {
            if acc.gid(name).is_none() {
                let gid = gid.unwrap_or_else(|| Accounts::free(&acc.group, defaults.uid_min));
                acc.group.push(vec![
                    name.clone(),
                    "x".into(),
                    gid.to_string(),
                    String::new(),
                ]);
                acc.gshadow.push(vec![
                    name.clone(),
                    password_hash.clone().unwrap_or("*".into()),
                    String::new(),
                    String::new(),
                ]);
            }
            done.groups += 1;
        }
    }
    let mut homes = Vec::new();
    for op in ops {
        let Op::User(u) = op else { continue };
        let (uid, gid, home) = if let Some(row) = acc.passwd.iter().find(|r| r[0] == u.name) {
            (
                row.get(2).and_then(|x| x.parse().ok()).unwrap_or(0),
                row.get(3).and_then(|x| x.parse().ok()).unwrap_or(0),
                row.get(5).cloned().unwrap_or_default(),
            )
        } else {
            let uid = u
                .uid
                .unwrap_or_else(|| Accounts::free(&acc.passwd, defaults.uid_min));
            let gid = if let Some(g) = &u.primary_group {
                acc.gid(g)
                    .ok_or_else(|| format!("user {}: no group {g}", u.name))?
            } else if u.user_group && defaults.user_groups {
                let gid = if acc.group.iter().any(|r| r.get(2) == Some(&uid.to_string())) {
                    Accounts::free(&acc.group, defaults.uid_min)
                } else {
                    uid
                };
                acc.group.push(vec![
                    u.name.clone(),
                    "x".into(),
                    gid.to_string(),
                    String::new(),
                ]);
                acc.gshadow.push(vec![
                    u.name.clone(),
                    "!".into(),
                    String::new(),
                    String::new(),
                ]);
                gid
            } else {
                defaults.group
            };
            let home = u
                .home
                .clone()
                .unwrap_or_else(|| format!("/home/{}", u.name));
            let shell = u.shell.clone().unwrap_or_else(|| defaults.shell.clone());
            acc.passwd.push(vec![
                u.name.clone(),
                "x".into(),
                uid.to_string(),
                gid.to_string(),
                u.gecos.clone(),
                home.clone(),
                shell,
            ]);
            // No hash: "*", no password login (what Ignition passes to useradd).
            let hash = u.password_hash.clone().unwrap_or_else(|| "*".into());
            acc.shadow.push(vec![
                u.name.clone(),
                hash,
                String::new(),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
            ]);
            (uid, gid, home)
        };
        for g in &u.groups {
            let row = acc
                .group
                .iter_mut()
                .find(|r| r[0] == *g)
                .ok_or_else(|| format!("user {}: no group {g} in the new root", u.name))?;
            while row.len() < 4 {
                row.push(String::new());
            }
            let mut members: Vec<String> = row[3]
                .split(',')
                .filter(|m| !m.is_empty())
                .map(str::to_string)
                .collect();
            if !members.contains(&u.name) {
                members.push(u.name.clone());
            }
            row[3] = members.join(",");
            if let Some(gs) = acc.gshadow.iter_mut().find(|r| r[0] == *g) {
                while gs.len() < 4 {
                    gs.push(String::new());
                }
                let mut m: Vec<String> = gs[3]
                    .split(',')
                    .filter(|m| !m.is_empty())
                    .map(str::to_string)
                    .collect();
                if !m.contains(&u.name) {
                    m.push(u.name.clone());
                }
                gs[3] = m.join(",");
            }
        }
        homes.push((u.clone(), uid, gid, home));
        done.users += 1;
    }
    acc.save(root)?;
    for (u, uid, gid, home) in homes {
        check_path(&home, "home directory")?;
        let h = root.join(home.trim_start_matches('/'));
        if u.create_home && !exists(&h) {
            std::fs::create_dir_all(&h).map_err(|e| format!("{}: {e}", h.display()))?;
            std::fs::set_permissions(&h, std::fs::Permissions::from_mode(defaults.home_mode))
                .map_err(|e| format!("{}: {e}", h.display()))?;
            copy_skel(
                &root.join(defaults.skel.trim_start_matches('/')),
                &h,
                uid,
                gid,
            )?;
            lchown(&h, Some(uid), Some(gid)).map_err(|e| format!("{}: {e}", h.display()))?;
        }
        if !u.keys.is_empty() {
            let ssh = h.join(".ssh");
            std::fs::create_dir_all(&ssh).map_err(|e| format!("{}: {e}", ssh.display()))?;
            std::fs::set_permissions(&ssh, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| format!("{}: {e}", ssh.display()))?;
            lchown(&ssh, Some(uid), Some(gid)).map_err(|e| format!("{}: {e}", ssh.display()))?;
            let ak = ssh.join("authorized_keys");
            let text: String = u.keys.iter().map(|k| format!("{k}\n")).collect();
            write_file(&ak, text.as_bytes(), 0o600)?;
            lchown(&ak, Some(uid), Some(gid)).map_err(|e| format!("{}: {e}", ak.display()))?;
        }
    }
    // 2. directories, files, links (parents made as root:root 0755, as Ignition does)
    for op in ops {
        match op {
            Op::Dir {
                path,
                mode,
                user,
                group,
                overwrite,
            } => {
                let p = root.join(path.trim_start_matches('/'));
                if exists(&p) && !p.is_dir() {
                    if !overwrite {
                        return Err(format!(
                            "{path} exists and is not a directory (overwrite is not set)"
                        ));
                    }
                    std::fs::remove_file(&p).map_err(|e| format!("{path}: {e}"))?;
                }
                mkdirs(root, path)?;
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(*mode))
                    .map_err(|e| format!("{path}: {e}"))?;
                lchown(
                    &p,
                    Some(acc.resolve(user, true)?),
                    Some(acc.resolve(group, false)?),
                )
                .map_err(|e| format!("{path}: {e}"))?;
                done.directories += 1;
            }
            Op::File {
                path,
                contents,
                mode,
                user,
                group,
                overwrite,
            } => {
                let p = root.join(path.trim_start_matches('/'));
                if exists(&p) && !overwrite {
                    return Err(format!("{path} exists and overwrite is not set"));
                }
                if let Some(parent) = Path::new(path).parent() {
                    mkdirs(root, &parent.to_string_lossy())?;
                }
                write_file(&p, contents, *mode)?;
                lchown(
                    &p,
                    Some(acc.resolve(user, true)?),
                    Some(acc.resolve(group, false)?),
                )
                .map_err(|e| format!("{path}: {e}"))?;
                done.files += 1;
            }
            Op::Link {
                path,
                target,
                hard,
                user,
                group,
                overwrite,
            } => {
                let p = root.join(path.trim_start_matches('/'));
                if exists(&p) {
                    if !overwrite {
                        return Err(format!("{path} exists and overwrite is not set"));
                    }
                    std::fs::remove_file(&p).map_err(|e| format!("{path}: {e}"))?;
                }
                if let Some(parent) = Path::new(path).parent() {
                    mkdirs(root, &parent.to_string_lossy())?;
                }
                if *hard {
                    let t: PathBuf = root.join(target.trim_start_matches('/'));
                    std::fs::hard_link(&t, &p).map_err(|e| format!("{path} -> {target}: {e}"))?;
                } else {
                    std::os::unix::fs::symlink(target, &p)
                        .map_err(|e| format!("{path} -> {target}: {e}"))?;
                    lchown(
                        &p,
                        Some(acc.resolve(user, true)?),
                        Some(acc.resolve(group, false)?),
                    )
                    .map_err(|e| format!("{path}: {e}"))?;
                }
                done.links += 1;
            }
            _ => {}
        }
    }
    // 3. units
    let mut presets = String::new();
    for op in ops {
        let Op::Unit {
            name,
            contents,
            dropins,
            mask,
            enabled,
        } = op
        else {
            continue;
        };
        let dir = root.join("etc/systemd/system");
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        if let Some(c) = contents {
            write_file(&dir.join(name), c.as_bytes(), 0o644)?;
        }
        if !dropins.is_empty() {
            let d = dir.join(format!("{name}.d"));
            std::fs::create_dir_all(&d).map_err(|e| format!("{}: {e}", d.display()))?;
            for (n, c) in dropins {
                write_file(&d.join(n), c.as_bytes(), 0o644)?;
            }
        }
        if *mask {
            let p = dir.join(name);
            if exists(&p) {
                std::fs::remove_file(&p).map_err(|e| format!("{}: {e}", p.display()))?;
            }
            std::os::unix::fs::symlink("/dev/null", &p)
                .map_err(|e| format!("{}: {e}", p.display()))?;
        }
        match enabled {
            Some(true) => presets.push_str(&format!("enable {name}\n")),
            Some(false) => presets.push_str(&format!("disable {name}\n")),
            None => {}
        }
        done.units += 1;
    }
    if !presets.is_empty() {
        mkdirs(root, "/etc/systemd/system-preset")?;
        write_file(
            &root.join(PRESET.trim_start_matches('/')),
            presets.as_bytes(),
            0o644,
        )?;
    }
    Ok(done)
}

fn copy_skel(skel: &Path, home: &Path, uid: u32, gid: u32) -> Result<(), String> {
    let Ok(entries) = std::fs::read_dir(skel) else {
        return Ok(());
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_file() {
            let to = home.join(e.file_name());
            std::fs::copy(&p, &to).map_err(|x| format!("{}: {x}", to.display()))?;
            lchown(&to, Some(uid), Some(gid)).map_err(|x| format!("{}: {x}", to.display()))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn root() -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let etc = t.path().join("etc");
        std::fs::create_dir_all(etc.join("skel")).unwrap_or_else(|e| panic!("{e}"));
        let w = |n: &str, s: &str| std::fs::write(etc.join(n), s).unwrap_or_else(|e| panic!("{e}"));
        w("passwd", "root:x:0:0:root:/root:/bin/bash\n");
        w("group", "root:x:0:\nsudo:x:27:\n");
        w("shadow", "root:*:::::::\n");
        w("gshadow", "root:*::\nsudo:*::\n");
        w("skel/.profile", "# profile\n");
        w("hostname", "localhost\n");
        w(
            "login.defs",
            "HOME_MODE\t0700\nUSERGROUPS_ENAB yes\nUID_MIN 1000\n",
        );
        t
    }

    fn run(json: &str, root: &Path) -> Result<Applied, String> {
        let cfg = parse(json.as_bytes())?;
        let ops = plan(&cfg)?;
        apply(&ops, root)
    }

    #[test]
    fn files_users_units_and_links() {
        let t = root();
        let r = t.path();
        let cfg = r#"{"ignition":{"version":"3.3.0"},
          "passwd":{"users":[{"name":"admin","groups":["sudo"],"shell":"/bin/bash",
             "sshAuthorizedKeys":["ssh-ed25519 AAAA admin@x"]}]},
          "storage":{
            "directories":[{"path":"/var/lib/etcd","mode":448}],
            "files":[
              {"path":"/etc/hostname","overwrite":true,"mode":420,"contents":{"source":"data:,master1%0A"}},
              {"path":"/etc/kubernetes/pki/ca.key","mode":384,"contents":{"source":"data:;base64,c2VjcmV0"}},
              {"path":"/etc/gz","contents":{"compression":"gzip","source":"data:;base64,H4sIAAAAAAAAA8tIzcnJBwCGphA2BQAAAA=="}},
              {"path":"/home/admin/owned","user":{"name":"admin"},"group":{"id":27}}],
            "links":[{"path":"/etc/alink","target":"/etc/hostname"}]},
          "systemd":{"units":[
            {"name":"a.service","enabled":true,"contents":"[Service]\nExecStart=/bin/true\n"},
            {"name":"b.service","mask":true},
            {"name":"c.service","enabled":false,"dropins":[{"name":"x.conf","contents":"[Unit]\n"}]}]}}"#;
        let done = run(cfg, r).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            done,
            Applied {
                users: 1,
                groups: 0,
                directories: 1,
                files: 4,
                links: 1,
                units: 3
            }
        );
        let read =
            |p: &str| std::fs::read_to_string(r.join(p)).unwrap_or_else(|e| panic!("{p}: {e}"));
        let mode = |p: &str| {
            std::fs::symlink_metadata(r.join(p))
                .map(|m| m.mode() & 0o7777)
                .unwrap_or(0)
        };
        assert_eq!(read("etc/hostname"), "master1\n");
        assert_eq!(read("etc/kubernetes/pki/ca.key"), "secret");
        assert_eq!(mode("etc/kubernetes/pki/ca.key"), 0o600);
        assert_eq!(mode("etc/kubernetes/pki"), 0o755);
        assert_eq!(read("etc/gz"), "hello");
        assert_eq!(mode("var/lib/etcd"), 0o700);
        assert!(read("etc/passwd").contains("admin:x:1000:1000::/home/admin:/bin/bash\n"));
        assert!(read("etc/group").contains("sudo:x:27:admin\n"));
        assert!(read("etc/group").contains("admin:x:1000:\n"));
        assert!(read("etc/shadow").contains("admin:*:::::::\n"));
        assert_eq!(
            read("home/admin/.ssh/authorized_keys"),
            "ssh-ed25519 AAAA admin@x\n"
        );
        assert_eq!(mode("home/admin/.ssh/authorized_keys"), 0o600);
        assert_eq!(read("home/admin/.profile"), "# profile\n");
        assert_eq!(mode("home/admin"), 0o700);
        let m = std::fs::metadata(r.join("home/admin/owned")).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((m.uid(), m.gid()), (1000, 27));
        assert_eq!(
            std::fs::read_link(r.join("etc/alink")).unwrap_or_default(),
            PathBuf::from("/etc/hostname")
        );
        assert_eq!(
            read("etc/systemd/system/a.service"),
            "[Service]\nExecStart=/bin/true\n"
        );
        assert_eq!(
            std::fs::read_link(r.join("etc/systemd/system/b.service")).unwrap_or_default(),
            PathBuf::from("/dev/null")
        );
        assert_eq!(read("etc/systemd/system/c.service.d/x.conf"), "[Unit]\n");
        assert_eq!(
            read(PRESET.trim_start_matches('/')),
            "enable a.service\ndisable c.service\n"
        );
    }

    #[test]
    fn every_refusal_names_its_field_and_writes_nothing() {
        let cases = [
            (
                r#""storage":{"disks":[{"device":"/dev/sda"}]}"#,
                "storage.disks",
            ),
            (
                r#""storage":{"filesystems":[{"device":"/dev/sda1","format":"ext4"}]}"#,
                "storage.filesystems",
            ),
            (
                r#""storage":{"raid":[{"name":"r","level":"raid1","devices":["/dev/a"]}]}"#,
                "storage.raid",
            ),
            (
                r#""storage":{"luks":[{"name":"l","device":"/dev/a"}]}"#,
                "storage.luks",
            ),
            (
                r#""storage":{"files":[{"path":"/etc/x","append":[{"source":"data:,a"}]}]}"#,
                "storage.files[0].append",
            ),
            (
                r#""storage":{"files":[{"path":"/etc/x","contents":{"source":"https://example.invalid/x"}}]}"#,
                "storage.files[0].contents.source",
            ),
            (
                r#""storage":{"files":[{"path":"/etc/x","contents":{"source":"data:,a","compression":"xz"}}]}"#,
                "storage.files[0].contents.compression",
            ),
            (
                r#""storage":{"files":[{"path":"/usr/bin/x","contents":{"source":"data:,a"}}]}"#,
                "read-only",
            ),
            (
                r#""storage":{"files":[{"path":"/etc/../usr/x"}]}"#,
                "storage.files[0].path",
            ),
            (
                r#""storage":{"files":[{"path":"/etc/x","mode":99999}]}"#,
                "storage.files[0].mode",
            ),
            (
                r#""storage":{"files":[{"path":"/etc/x","contents":{"source":"data:,a","verification":{"hash":"sha256-00"}}}]}"#,
                "verification.hash",
            ),
            (
                r#""passwd":{"users":[{"name":"u","shouldExist":false}]}"#,
                "passwd.users[0].shouldExist",
            ),
            (
                r#""passwd":{"users":[{"name":"u","system":true}]}"#,
                "passwd.users[0].system",
            ),
            (
                r#""passwd":{"groups":[{"name":"g","shouldExist":false}]}"#,
                "passwd.groups[0].shouldExist",
            ),
            (
                r#""kernelArguments":{"shouldExist":["quiet"]}"#,
                "kernelArguments",
            ),
            (
                r#""systemd":{"units":[{"name":"../x.service"}]}"#,
                "systemd.units[0].name",
            ),
        ];
        for (body, field) in cases {
            let t = root();
            let before = std::fs::read_dir(t.path().join("etc"))
                .map(|d| d.count())
                .unwrap_or(0);
            let cfg = format!(r#"{{"ignition":{{"version":"3.3.0"}},{body}}}"#);
            let e = match run(&cfg, t.path()) {
                Ok(_) => panic!("accepted {body}"),
                Err(e) => e,
            };
            assert!(e.contains(field), "{body}: {e}");
            let after = std::fs::read_dir(t.path().join("etc"))
                .map(|d| d.count())
                .unwrap_or(0);
            assert_eq!(before, after, "{body}: wrote something");
        }
        // Version handling.
        assert!(parse(br#"{"ignition":{"version":"3.1.0"}}"#).is_ok());
        assert!(parse(br#"{"ignition":{"version":"3.4.0"}}"#).is_err());
        assert!(parse(b"not json").is_err());
        // A file that exists without overwrite: Ignition refuses, so do we.
        let t = root();
        let e = run(
            r#"{"ignition":{"version":"3.3.0"},"storage":{"files":[{"path":"/etc/hostname"}]}}"#,
            t.path(),
        );
        assert!(e.is_err_and(|e| e.contains("overwrite")));
    }
}
