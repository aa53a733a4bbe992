//! A binary package index (`Packages`), parsed into what resolution and fetching need.

use std::collections::BTreeMap;

use debversion::Version;

use super::control::{self, Paragraph};
use super::relation::{self, Group};

#[derive(Debug, Clone)]
pub struct Package {
    pub name: String,
    pub version: Version,
    pub architecture: String,
    pub priority: String,
    pub essential: bool,
    pub depends: Vec<Group>,
    pub pre_depends: Vec<Group>,
    pub provides: Vec<relation::Relation>,
    pub conflicts: Vec<Group>,
    pub breaks: Vec<Group>,
    /// Path below the mirror root.
    pub filename: String,
    pub size: u64,
    pub sha256: String,
    pub source: String,
    /// The whole stanza, for dpkg's status database.
    pub stanza: Paragraph,
}

/// Every package of one or more indexes, by name; the highest version wins when a name
/// appears twice.
#[derive(Debug, Default)]
pub struct Index {
    pub packages: BTreeMap<String, Package>,
    /// Virtual name -> providing packages (sorted, deduplicated).
    pub providers: BTreeMap<String, Vec<String>>,
}

impl Index {
    /// Adds one `Packages` file's text. `origin` names it in errors.
    pub fn add(&mut self, origin: &str, text: &str, arch: &str) -> Result<(), String> {
        let paras = control::parse(text)
            .map_err(|line| format!("{origin}: line {line}: not a deb822 field"))?;
        for p in paras {
            let pkg = package(&p, arch).map_err(|e| format!("{origin}: {e}"))?;
            if pkg.architecture != arch && pkg.architecture != "all" {
                continue;
            }
            let replace = self
                .packages
                .get(&pkg.name)
                .is_none_or(|old| pkg.version > old.version);
            if replace {
                self.packages.insert(pkg.name.clone(), pkg);
            }
        }
        self.providers.clear();
        for pkg in self.packages.values() {
            for p in &pkg.provides {
                self.providers
                    .entry(p.name.clone())
                    .or_default()
                    .push(pkg.name.clone());
            }
        }
        for v in self.providers.values_mut() {
            v.sort();
            v.dedup();
        }
        Ok(())
    }
}

fn package(p: &Paragraph, arch: &str) -> Result<Package, String> {
    let name = p
        .get("Package")
        .ok_or("stanza without Package")?
        .to_string();
    let field = |f: &str| p.get(f).unwrap_or("");
    let need = |f: &str| {
        p.get(f)
            .map(str::to_string)
            .ok_or_else(|| format!("package {name}: no {f} field"))
    };
    let rel =
        |f: &str| relation::parse(field(f), arch).map_err(|e| format!("package {name}: {f}: {e}"));
    let version: Version = need("Version")?
        .parse()
        .map_err(|_| format!("package {name}: bad Version {:?}", field("Version")))?;
    let provides = rel("Provides")?.into_iter().flatten().collect();
    Ok(Package {
        version,
        architecture: need("Architecture")?,
        priority: field("Priority").to_string(),
        essential: field("Essential") == "yes",
        depends: rel("Depends")?,
        pre_depends: rel("Pre-Depends")?,
        provides,
        conflicts: rel("Conflicts")?,
        breaks: rel("Breaks")?,
        filename: need("Filename")?,
        size: need("Size")?
            .parse()
            .map_err(|_| format!("package {name}: bad Size"))?,
        sha256: need("SHA256")?,
        source: field("Source")
            .split_whitespace()
            .next()
            .unwrap_or(&name)
            .to_string(),
        stanza: p.clone(),
        name,
    })
}
