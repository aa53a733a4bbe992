//! Dependency resolution: the closure of Pre-Depends and Depends over an index, with
//! deterministic choices, then a Conflicts/Breaks check over the result.
//!
//! Choices, in order: a group already satisfied by a selected package (or by what one
//! provides) needs nothing; otherwise the first alternative that a real package satisfies;
//! otherwise the first provider (by name) of the first virtual alternative. Roots are all
//! selected before any dependency is looked at, so naming a package in the profile is how
//! a user picks among alternatives. Recommends and Suggests are not followed.

use std::collections::{BTreeMap, VecDeque};

use super::packages::{Index, Package};
use super::relation::{Group, Relation};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    #[error("unknown package {name}{}", wanted_by.as_ref().map(|w| format!(" (wanted by {w})")).unwrap_or_default())]
    Unknown {
        name: String,
        wanted_by: Option<String>,
    },
    #[error("{package} depends on {group}, which no package in the index satisfies")]
    Unsatisfiable { package: String, group: String },
    #[error(
        "{package} conflicts with {other} ({relation}); name one of them explicitly or drop the other"
    )]
    Conflict {
        package: String,
        other: String,
        relation: String,
    },
}

fn show_group(g: &Group) -> String {
    g.iter()
        .map(Relation::to_string)
        .collect::<Vec<_>>()
        .join(" | ")
}

/// Does a selected set satisfy `rel`, by a real package or a provider?
fn satisfied(rel: &Relation, selected: &BTreeMap<String, &Package>, index: &Index) -> bool {
    if let Some(p) = selected.get(&rel.name)
        && rel.satisfied_by(&p.version)
    {
        return true;
    }
    index.providers.get(&rel.name).is_some_and(|provs| {
        provs
            .iter()
            .any(|n| selected.get(n).is_some_and(|p| provides(p, rel)))
    })
}

/// Does `p` provide `rel`? An unversioned Provides never satisfies a versioned relation.
fn provides(p: &Package, rel: &Relation) -> bool {
    p.provides.iter().any(|pr| {
        pr.name == rel.name
            && match (&rel.constraint, &pr.constraint) {
                (None, _) => true,
                (Some(_), Some((_, v))) => rel.satisfied_by(v),
                (Some(_), None) => false,
            }
    })
}

fn choose<'a>(group: &Group, index: &'a Index) -> Option<&'a Package> {
    for rel in group {
        if let Some(p) = index.packages.get(&rel.name)
            && rel.satisfied_by(&p.version)
        {
            return Some(p);
        }
    }
    for rel in group {
        for name in index.providers.get(&rel.name).into_iter().flatten() {
            let p = &index.packages[name];
            if provides(p, rel) {
                return Some(p);
            }
        }
    }
    None
}

/// Resolves `roots` (and, with `required`, every `Priority: required` package) to a
/// sorted list of package names.
pub fn resolve(
    index: &Index,
    roots: &[String],
    required: bool,
) -> Result<Vec<String>, ResolveError> {
    let mut selected: BTreeMap<String, &Package> = BTreeMap::new();
    let mut queue = VecDeque::new();
    let mut start: Vec<&Package> = Vec::new();
    for r in roots {
        let p = index.packages.get(r).or_else(|| {
            // A virtual root with exactly one provider is unambiguous.
            match index.providers.get(r).map(Vec::as_slice) {
                Some([only]) => index.packages.get(only),
                _ => None,
            }
        });
        start.push(p.ok_or_else(|| ResolveError::Unknown {
            name: r.clone(),
            wanted_by: None,
        })?);
    }
    if required {
        start.extend(
            index
                .packages
                .values()
                .filter(|p| p.priority == "required" || p.essential),
        );
    }
    for p in start {
        if selected.insert(p.name.clone(), p).is_none() {
            queue.push_back(p);
        }
    }
    while let Some(p) = queue.pop_front() {
        for group in p.pre_depends.iter().chain(&p.depends) {
            if group.iter().any(|rel| satisfied(rel, &selected, index)) {
                continue;
            }
            let chosen = choose(group, index).ok_or_else(|| ResolveError::Unsatisfiable {
                package: p.name.clone(),
                group: show_group(group),
            })?;
            if selected.insert(chosen.name.clone(), chosen).is_none() {
                queue.push_back(chosen);
            }
        }
    }
    for p in selected.values() {
        for rel in p.conflicts.iter().chain(&p.breaks).flatten() {
            let by_name = selected
                .get(&rel.name)
                .filter(|o| o.name != p.name && rel.satisfied_by(&o.version));
            let by_provides = index
                .providers
                .get(&rel.name)
                .into_iter()
                .flatten()
                .filter(|n| **n != p.name && rel.constraint.is_none())
                .find_map(|n| selected.get(n));
            if let Some(other) = by_name.or(by_provides) {
                return Err(ResolveError::Conflict {
                    package: p.name.clone(),
                    other: other.name.clone(),
                    relation: rel.to_string(),
                });
            }
        }
    }
    Ok(selected.into_keys().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index(text: &str) -> Index {
        let mut i = Index::default();
        i.add("test", text, "amd64").unwrap();
        i
    }

    const BASE: &str = "Package: libc6\nVersion: 2.41-1\nArchitecture: amd64\nPriority: required\nFilename: l\nSize: 1\nSHA256: 00\n\n\
Package: app\nVersion: 1.0\nArchitecture: amd64\nDepends: libc6 (>= 2.38), mta | mail-transport-agent, cron-daemon\nFilename: a\nSize: 1\nSHA256: 00\n\n\
Package: exim\nVersion: 4\nArchitecture: amd64\nProvides: mail-transport-agent\nConflicts: mail-transport-agent\nFilename: e\nSize: 1\nSHA256: 00\n\n\
Package: postfix\nVersion: 3\nArchitecture: amd64\nProvides: mail-transport-agent\nConflicts: mail-transport-agent\nFilename: p\nSize: 1\nSHA256: 00\n\n\
Package: cron\nVersion: 3\nArchitecture: amd64\nProvides: cron-daemon\nFilename: c\nSize: 1\nSHA256: 00\n\n\
Package: other\nVersion: 1\nArchitecture: arm64\nFilename: o\nSize: 1\nSHA256: 00\n";

    #[test]
    fn closure_virtuals_and_determinism() {
        let i = index(BASE);
        let r = resolve(&i, &["app".into()], true).unwrap();
        assert_eq!(r, ["app", "cron", "exim", "libc6"]);
        // Naming an alternative explicitly picks it.
        let r = resolve(&i, &["postfix".into(), "app".into()], false).unwrap();
        assert_eq!(r, ["app", "cron", "libc6", "postfix"]);
    }

    #[test]
    fn errors() {
        let i = index(BASE);
        assert_eq!(
            resolve(&i, &["nope".into()], false),
            Err(ResolveError::Unknown {
                name: "nope".into(),
                wanted_by: None
            })
        );
        assert!(matches!(
            resolve(&i, &["other".into()], false),
            Err(ResolveError::Unknown { .. })
        ));
        let old = BASE.replace("Version: 2.41-1", "Version: 2.36-1");
        let e = resolve(&index(&old), &["app".into()], false).unwrap_err();
        assert_eq!(
            e.to_string(),
            "app depends on libc6 (>= 2.38), which no package in the index satisfies"
        );
        let e = resolve(&i, &["exim".into(), "postfix".into()], false).unwrap_err();
        assert!(matches!(e, ResolveError::Conflict { .. }), "{e}");
    }
}
