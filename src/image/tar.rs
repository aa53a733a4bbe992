//! A reproducible tar of an image tree: entries in path order (parents first), every
//! mtime clamped to SOURCE_DATE_EPOCH, numeric owners only (no user or group names),
//! hard links pointing at the first path of their group. GNU format, so long names and
//! link targets need no PAX headers with timestamps in them.

use std::collections::HashMap;
use std::io::{self, Write};

use crate::fs::{Kind, Tree};

/// Writes `tree` as a tar stream to `out`.
pub fn write<W: Write>(tree: &Tree, mtime: u64, out: W) -> io::Result<W> {
    let mut b = tar::Builder::new(out);
    b.mode(tar::HeaderMode::Complete);
    // A hard link group's content goes with the first of its paths in tar order.
    let mut first_of: HashMap<&str, &str> = HashMap::new();
    for (path, e) in tree.iter() {
        if let Kind::Hardlink(target) = &e.kind {
            let first = first_of.entry(target.as_str()).or_insert(target.as_str());
            if path.as_str() < *first {
                *first = path.as_str();
            }
        }
    }
    for (path, e) in tree.iter() {
        let mut h = tar::Header::new_gnu();
        h.set_mtime(mtime);
        h.set_uid(u64::from(e.uid));
        h.set_gid(u64::from(e.gid));
        h.set_mode(e.mode);
        match &e.kind {
            Kind::Dir => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_size(0);
                b.append_data(&mut h, format!("{path}/"), io::empty())?;
            }
            Kind::Symlink(t) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_size(0);
                b.append_link(&mut h, path, t)?;
            }
            Kind::File(bytes) => {
                if let Some(first) = first_of.get(path.as_str()).filter(|f| **f != path.as_str()) {
                    // A link to this file was written first, with the content.
                    h.set_entry_type(tar::EntryType::Link);
                    h.set_size(0);
                    b.append_link(&mut h, path, first)?;
                    continue;
                }
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(bytes.len() as u64);
                b.append_data(&mut h, path, &bytes[..])?;
            }
            Kind::Hardlink(target) => {
                let first = first_of[target.as_str()];
                if first == path.as_str() {
                    // This link is the first path of its group: it carries the content.
                    let bytes = tree.read(target).unwrap_or_default();
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_size(bytes.len() as u64);
                    if let Some(t) = tree.get(target) {
                        h.set_mode(t.mode);
                        h.set_uid(u64::from(t.uid));
                        h.set_gid(u64::from(t.gid));
                    }
                    b.append_data(&mut h, path, bytes)?;
                } else {
                    h.set_entry_type(tar::EntryType::Link);
                    h.set_size(0);
                    b.append_link(&mut h, path, first)?;
                }
            }
        }
    }
    b.into_inner()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::Entry;

    #[test]
    fn deterministic_with_hardlinks_in_order() {
        let mut t = Tree::default();
        t.insert("z/file", Entry::file(b"data".to_vec(), 0o644));
        t.insert(
            "a/link",
            Entry {
                kind: Kind::Hardlink("z/file".into()),
                mode: 0o644,
                uid: 0,
                gid: 0,
            },
        );
        t.insert("m/sym", Entry::symlink("../z/file"));
        let a = write(&t, 1000, Vec::new()).unwrap();
        let b = write(&t, 1000, Vec::new()).unwrap();
        assert_eq!(a, b);
        let mut ar = ::tar::Archive::new(&a[..]);
        let entries: Vec<(String, ::tar::EntryType)> = ar
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.path().unwrap().to_string_lossy().into_owned(),
                    e.header().entry_type(),
                )
            })
            .collect();
        let pos = |p: &str| entries.iter().position(|(n, _)| n == p).unwrap();
        assert_eq!(entries[pos("a/link")].1, ::tar::EntryType::Regular);
        assert_eq!(entries[pos("z/file")].1, ::tar::EntryType::Link);
        assert!(pos("a/") < pos("a/link"));
    }
}
