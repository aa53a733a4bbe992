//! The in-memory image tree every writer reads: paths, kinds, modes, owners.
//!
//! Paths are relative to the image root, without a leading slash ("usr/bin/bash"); the
//! root itself is never an entry. The tree is merged-/usr: `bin`, `sbin`, `lib` and
//! `lib64` are symlinks into `usr/` and anything added below them lands in `usr/`, as
//! dpkg would place it through those links.

use std::collections::BTreeMap;
use std::sync::Arc;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File(Arc<Vec<u8>>),
    Symlink(String),
    /// A hard link to another regular file of the tree (path as stored here).
    Hardlink(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub kind: Kind,
    /// Permission bits including setuid/setgid/sticky.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

impl Entry {
    pub fn dir(mode: u32) -> Entry {
        Entry {
            kind: Kind::Dir,
            mode,
            uid: 0,
            gid: 0,
        }
    }
    pub fn file(bytes: impl Into<Vec<u8>>, mode: u32) -> Entry {
        Entry {
            kind: Kind::File(Arc::new(bytes.into())),
            mode,
            uid: 0,
            gid: 0,
        }
    }
    pub fn symlink(target: impl Into<String>) -> Entry {
        Entry {
            kind: Kind::Symlink(target.into()),
            mode: 0o777,
            uid: 0,
            gid: 0,
        }
    }
}

/// Top-level directories that are links into /usr on a merged-/usr system.
pub const MERGED_USR: [&str; 4] = ["bin", "lib", "lib64", "sbin"];

#[derive(Debug, Clone, Default)]
pub struct Tree {
    entries: BTreeMap<String, Entry>,
}

/// Normalizes a tar or absolute path: no "./", no leading or trailing slash, no empty
/// or "." components. Returns None for the root and for paths with "..".
pub fn normalize(path: &str) -> Option<String> {
    let mut parts = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => return None,
            c => parts.push(c),
        }
    }
    (!parts.is_empty()).then(|| parts.join("/"))
}

impl Tree {
    /// An empty merged-/usr tree.
    pub fn new_merged_usr() -> Tree {
        let mut t = Tree::default();
        t.entries.insert("usr".into(), Entry::dir(0o755));
        for d in MERGED_USR {
            t.entries.insert(format!("usr/{d}"), Entry::dir(0o755));
            t.entries
                .insert(d.into(), Entry::symlink(format!("usr/{d}")));
        }
        t
    }

    /// Where `path` lands: below a merged-/usr link (`bin` -> `usr/bin` in this tree) it
    /// moves into usr/. Trees without those links (an initramfs) keep paths as they are.
    pub fn canonical(&self, path: &str) -> String {
        match path.split_once('/') {
            Some((first, rest))
                if MERGED_USR.contains(&first)
                    && matches!(self.entries.get(first), Some(Entry { kind: Kind::Symlink(t), .. }) if *t == format!("usr/{first}")) =>
            {
                format!("usr/{first}/{rest}")
            }
            _ => path.to_string(),
        }
    }

    pub fn get(&self, path: &str) -> Option<&Entry> {
        self.entries.get(&self.canonical(path))
    }

    pub fn contains(&self, path: &str) -> bool {
        self.get(path).is_some()
    }

    /// Inserts `entry` at `path` (normalized and canonicalized), creating missing parent
    /// directories 0755. A directory never replaces an existing entry (dpkg keeps the
    /// existing one, including the merged-/usr links); anything else replaces.
    pub fn insert(&mut self, path: &str, entry: Entry) -> Option<String> {
        let path = normalize(path)?;
        let path = if MERGED_USR.contains(&path.as_str()) && entry.kind == Kind::Dir {
            return Some(path);
        } else {
            self.canonical(&path)
        };
        let mut parent = path.as_str();
        while let Some((p, _)) = parent.rsplit_once('/') {
            self.entries
                .entry(p.to_string())
                .or_insert_with(|| Entry::dir(0o755));
            parent = p;
        }
        if entry.kind == Kind::Dir
            && let Some(existing) = self.entries.get_mut(&path)
        {
            if existing.kind == Kind::Dir {
                existing.mode = entry.mode;
                existing.uid = entry.uid;
                existing.gid = entry.gid;
            }
            return Some(path);
        }
        self.entries.insert(path.clone(), entry);
        Some(path)
    }

    pub fn remove(&mut self, path: &str) -> Option<Entry> {
        let p = self.canonical(&normalize(path)?);
        self.entries.remove(&p)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &Entry)> {
        self.entries.iter()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Where `path` (relative to the root) leads, following symbolic links in every
    /// component (absolute ones from the tree's root, at most 40 in all); None if it leads
    /// nowhere in the tree.
    pub fn resolve(&self, path: &str) -> Option<String> {
        let mut todo: Vec<String> = path.split('/').rev().map(str::to_string).collect();
        let mut at: Vec<String> = Vec::new();
        let mut links = 0;
        while let Some(c) = todo.pop() {
            match c.as_str() {
                "" | "." => continue,
                ".." => {
                    at.pop();
                    continue;
                }
                _ => {}
            }
            at.push(c);
            let here = at.join("/");
            if let Kind::Symlink(t) = &self.entries.get(&here)?.kind {
                links += 1;
                if links > 40 {
                    return None;
                }
                at.pop();
                if t.starts_with('/') {
                    at.clear();
                }
                todo.extend(t.split('/').rev().map(str::to_string));
            }
        }
        Some(at.join("/"))
    }

    /// A regular file's bytes, following hard links.
    pub fn read(&self, path: &str) -> Option<&[u8]> {
        match &self.get(path)?.kind {
            Kind::File(b) => Some(b),
            Kind::Hardlink(t) => self.read(t),
            _ => None,
        }
    }

    /// Paths directly below `dir`, sorted.
    pub fn children(&self, dir: &str) -> Vec<&str> {
        let dir = self.canonical(dir);
        let prefix = format!("{dir}/");
        self.entries
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .map(|(k, _)| k.as_str())
            .filter(|k| !k[prefix.len()..].contains('/'))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merged_usr_and_parents() {
        let mut t = Tree::new_merged_usr();
        assert_eq!(
            t.insert("./bin/bash", Entry::file(b"x".to_vec(), 0o755))
                .as_deref(),
            Some("usr/bin/bash")
        );
        assert!(t.contains("usr/bin/bash") && t.contains("bin/bash"));
        t.insert("./bin/", Entry::dir(0o755));
        assert_eq!(t.get("bin").unwrap().kind, Kind::Symlink("usr/bin".into()));
        t.insert("etc/a/b/c", Entry::file(b"y".to_vec(), 0o644));
        assert_eq!(t.get("etc/a").unwrap().kind, Kind::Dir);
        assert_eq!(normalize("../x"), None);
        assert_eq!(normalize("./"), None);
        assert_eq!(t.children("etc/a"), ["etc/a/b"]);
        // Without the links (an initramfs), bin/ stays bin/.
        let mut plain = Tree::default();
        assert_eq!(
            plain
                .insert("bin/busybox", Entry::file(b"x".to_vec(), 0o755))
                .as_deref(),
            Some("bin/busybox")
        );
    }
}
