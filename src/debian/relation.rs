//! Package relationship fields (Depends, Pre-Depends, Provides, Conflicts, Breaks):
//! Debian Policy 7.1. A field is a list of groups; a group is a list of alternatives.

use std::fmt;

use debversion::Version;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Lt,
    Le,
    Eq,
    Ge,
    Gt,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    pub name: String,
    pub constraint: Option<(Op, Version)>,
}

impl Relation {
    pub fn satisfied_by(&self, v: &Version) -> bool {
        match &self.constraint {
            None => true,
            Some((op, want)) => match op {
                Op::Lt => v < want,
                Op::Le => v <= want,
                Op::Eq => v == want,
                Op::Ge => v >= want,
                Op::Gt => v > want,
            },
        }
    }
}

impl fmt::Display for Relation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)?;
        if let Some((op, v)) = &self.constraint {
            let op = match op {
                Op::Lt => "<<",
                Op::Le => "<=",
                Op::Eq => "=",
                Op::Ge => ">=",
                Op::Gt => ">>",
            };
            write!(f, " ({op} {v})")?;
        }
        Ok(())
    }
}

/// Alternatives: any one satisfies the group.
pub type Group = Vec<Relation>;

/// Parses a relationship field for `arch`. Alternatives restricted to other architectures
/// (`[!amd64]`, `[arm64]`) or to build profiles are dropped; `:any`/`:native` qualifiers
/// are ignored (one architecture per image).
pub fn parse(field: &str, arch: &str) -> Result<Vec<Group>, String> {
    let mut groups = Vec::new();
    for group in field.split(',') {
        let group = group.trim();
        if group.is_empty() {
            continue;
        }
        let mut alts = Vec::new();
        for alt in group.split('|') {
            if let Some(r) = parse_one(alt.trim(), arch)? {
                alts.push(r);
            }
        }
        if !alts.is_empty() {
            groups.push(alts);
        }
    }
    Ok(groups)
}

fn parse_one(s: &str, arch: &str) -> Result<Option<Relation>, String> {
    let bad = || format!("malformed relation {s:?}");
    let mut rest = s;
    // Build profiles <...> only matter for source packages; they follow the version
    // constraint, whose operators may themselves contain '<'.
    let after_constraint = rest.rfind(')').map_or(0, |i| i + 1);
    if let Some(i) = rest[after_constraint..].find('<') {
        rest = rest[..after_constraint + i].trim();
    }
    if let Some(i) = rest.find('[') {
        let end = rest[i..].find(']').ok_or_else(bad)? + i;
        let arches: Vec<&str> = rest[i + 1..end].split_whitespace().collect();
        let negated = arches.iter().all(|a| a.starts_with('!'));
        let listed = arches.iter().any(|a| a.trim_start_matches('!') == arch);
        let applies = if negated { !listed } else { listed };
        if !applies {
            return Ok(None);
        }
        rest = rest[..i].trim();
    }
    let (name, constraint) = match rest.find('(') {
        Some(i) => {
            let end = rest.rfind(')').ok_or_else(bad)?;
            let inner = rest[i + 1..end].trim();
            let (op, ver) = [
                ("<<", Op::Lt),
                ("<=", Op::Le),
                (">=", Op::Ge),
                (">>", Op::Gt),
                ("=", Op::Eq),
                ("<", Op::Le),
                (">", Op::Ge),
            ]
            .iter()
            .find_map(|(tok, op)| inner.strip_prefix(tok).map(|v| (*op, v.trim())))
            .ok_or_else(bad)?;
            let v: Version = ver.parse().map_err(|_| bad())?;
            (rest[..i].trim(), Some((op, v)))
        }
        None => (rest.trim(), None),
    };
    let name = name.split(':').next().unwrap_or(name);
    if name.is_empty() || name.contains(char::is_whitespace) {
        return Err(bad());
    }
    Ok(Some(Relation {
        name: name.to_string(),
        constraint,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_policy_examples() {
        let g = parse("libc6 (>= 2.38), debconf (>= 0.5) | debconf-2.0, perl:any, foo [!amd64], bar [amd64 arm64], baz <!nocheck>, q (<= 1) <!nocheck>", "amd64").unwrap();
        let names: Vec<Vec<&str>> = g
            .iter()
            .map(|a| a.iter().map(|r| r.name.as_str()).collect())
            .collect();
        assert_eq!(
            names,
            vec![
                vec!["libc6"],
                vec!["debconf", "debconf-2.0"],
                vec!["perl"],
                vec!["bar"],
                vec!["baz"],
                vec!["q"]
            ]
        );
        let r = &g[0][0];
        assert!(r.satisfied_by(&"2.41-1".parse().unwrap()));
        assert!(!r.satisfied_by(&"2.36-9".parse().unwrap()));
        assert!(parse("foo (>= )", "amd64").is_err());
        assert!(parse("foo (~ 1)", "amd64").is_err());
    }
}
