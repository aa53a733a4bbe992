//! Role profiles (`profiles/roles/ROLE.toml`) and the overlay trees they name.
//!
//! A role lists overlay layers in order (later layers override files of earlier ones), the
//! systemd units to enable, directories to create and file modes other than 0644. Overlay
//! files ending in `.hbs` are handlebars templates rendered per node; others are copied.
//! This module only reads files; rendering is `render`'s job.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::cluster::Role;

pub mod image;

/// A profile or layer name: letters, digits, '-' and '_' only (it becomes a path).
pub fn is_plain_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Suffix of overlay files that are templates.
pub const TEMPLATE_SUFFIX: &str = ".hbs";
/// Overlay directory holding partials shared by templates (not laid onto nodes).
pub const PARTIALS_DIR: &str = "partials";

#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("reading {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: {field}: {reason}")]
    Invalid {
        path: PathBuf,
        field: String,
        reason: String,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RoleFile {
    #[allow(dead_code)]
    description: String,
    layers: Vec<String>,
    #[serde(default)]
    enable: Vec<String>,
    #[serde(default)]
    directories: Vec<DirEntryFile>,
    #[serde(default)]
    modes: BTreeMap<String, String>,
    /// Files holding key material: written 0600 and never printed.
    #[serde(default)]
    secrets: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DirEntryFile {
    path: String,
    mode: String,
}

/// A directory the node must have, with its mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirSpec {
    pub path: String,
    pub mode: u32,
}

/// One overlay file: where it goes on the node and where its source is.
#[derive(Debug, Clone)]
pub struct OverlayFile {
    /// Absolute path on the node.
    pub dest: String,
    pub source: PathBuf,
    pub template: bool,
    pub mode: u32,
    pub secret: bool,
}

/// A loaded role.
#[derive(Debug, Clone)]
pub struct RoleProfile {
    pub role: Role,
    pub enable: Vec<String>,
    pub directories: Vec<DirSpec>,
    /// By destination path, sorted.
    pub files: BTreeMap<String, OverlayFile>,
}

/// Where profiles/ and overlays/ live.
#[derive(Debug, Clone)]
pub struct DataDir {
    pub root: PathBuf,
}

impl DataDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        DataDir { root: root.into() }
    }

    pub fn overlays(&self) -> PathBuf {
        self.root.join("overlays")
    }

    pub fn role_path(&self, role: Role) -> PathBuf {
        self.root
            .join("profiles/roles")
            .join(format!("{}.toml", role.as_str()))
    }

    /// Partials by name (file stem), e.g. `kubeconfig` for `overlays/partials/kubeconfig.hbs`.
    pub fn partials(&self) -> Result<BTreeMap<String, String>, ProfileError> {
        let dir = self.overlays().join(PARTIALS_DIR);
        let mut out = BTreeMap::new();
        for path in walk(&dir)? {
            let name = path
                .strip_prefix(&dir)
                .unwrap_or(&path)
                .to_string_lossy()
                .trim_end_matches(TEMPLATE_SUFFIX)
                .to_string();
            out.insert(name, read(&path)?);
        }
        Ok(out)
    }

    pub fn load_role(&self, role: Role) -> Result<RoleProfile, ProfileError> {
        let path = self.role_path(role);
        let text = read(&path)?;
        let raw: RoleFile = toml::from_str(&text).map_err(|e| ProfileError::Parse {
            path: path.clone(),
            message: e.to_string().trim_end().to_string(),
        })?;
        let invalid = |field: String, reason: String| ProfileError::Invalid {
            path: path.clone(),
            field,
            reason,
        };
        let mut files = BTreeMap::new();
        for (i, layer) in raw.layers.iter().enumerate() {
            if layer == PARTIALS_DIR || layer.contains('/') || layer.starts_with('.') {
                return Err(invalid(
                    format!("layers[{i}]"),
                    format!("{layer:?} is not an overlay layer name"),
                ));
            }
            let root = self.overlays().join(layer);
            if !root.is_dir() {
                return Err(invalid(
                    format!("layers[{i}]"),
                    format!("overlay {} does not exist", root.display()),
                ));
            }
            for source in walk(&root)? {
                let rel = source.strip_prefix(&root).unwrap_or(&source);
                let rel = rel.to_string_lossy();
                let (rel, template) = match rel.strip_suffix(TEMPLATE_SUFFIX) {
                    Some(r) => (r.to_string(), true),
                    None => (rel.to_string(), false),
                };
                let dest = format!("/{rel}");
                files.insert(
                    dest.clone(),
                    OverlayFile {
                        dest,
                        source,
                        template,
                        mode: 0o644,
                        secret: false,
                    },
                );
            }
        }
        for (dest, mode) in &raw.modes {
            let m = parse_mode(mode).map_err(|r| invalid(format!("modes.{dest:?}"), r))?;
            let f = files.get_mut(dest).ok_or_else(|| {
                invalid(
                    format!("modes.{dest:?}"),
                    "no overlay layer of this role provides this file".into(),
                )
            })?;
            f.mode = m;
        }
        for (i, dest) in raw.secrets.iter().enumerate() {
            let f = files.get_mut(dest).ok_or_else(|| {
                invalid(
                    format!("secrets[{i}]"),
                    format!("{dest:?}: no overlay layer of this role provides this file"),
                )
            })?;
            f.secret = true;
            f.mode = 0o600;
        }
        let mut directories = Vec::new();
        for (i, d) in raw.directories.iter().enumerate() {
            if !d.path.starts_with('/') {
                return Err(invalid(
                    format!("directories[{i}].path"),
                    format!("{:?} is not absolute", d.path),
                ));
            }
            let mode =
                parse_mode(&d.mode).map_err(|r| invalid(format!("directories[{i}].mode"), r))?;
            directories.push(DirSpec {
                path: d.path.clone(),
                mode,
            });
        }
        Ok(RoleProfile {
            role,
            enable: raw.enable,
            directories,
            files,
        })
    }
}

fn parse_mode(s: &str) -> Result<u32, String> {
    match u32::from_str_radix(s.trim_start_matches("0o"), 8) {
        Ok(m) if m <= 0o7777 && s.starts_with('0') => Ok(m),
        _ => Err(format!("{s:?} is not an octal mode like \"0644\"")),
    }
}

fn read(path: &Path) -> Result<String, ProfileError> {
    std::fs::read_to_string(path).map_err(|source| ProfileError::Io {
        path: path.to_owned(),
        source,
    })
}

/// Every regular file under `dir`, sorted, so rendering order never depends on readdir.
pub fn walk(dir: &Path) -> Result<Vec<PathBuf>, ProfileError> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let entries = std::fs::read_dir(&d).map_err(|source| ProfileError::Io {
            path: d.clone(),
            source,
        })?;
        for e in entries {
            let e = e.map_err(|source| ProfileError::Io {
                path: d.clone(),
                source,
            })?;
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::parse_mode;

    #[test]
    fn modes() {
        assert_eq!(parse_mode("0755"), Ok(0o755));
        assert_eq!(parse_mode("0600"), Ok(0o600));
        assert!(parse_mode("755").is_err());
        assert!(parse_mode("0999").is_err());
    }
}
