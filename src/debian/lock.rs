//! `slipway.lock`: the resolved package set of every image profile, like Cargo.lock.
//! A profile's entry records a hash of the inputs it was resolved from; when the profile
//! changes the entry is stale, and `--locked` builds refuse to go on.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::profile::image::ImageProfile;

pub const LOCK_VERSION: u32 = 1;

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Lock {
    pub version: u32,
    #[serde(default, rename = "profile")]
    pub profiles: BTreeMap<String, LockedProfile>,
    /// What `slipway lock --kubernetes VERSION` pinned, by version.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub kubernetes: BTreeMap<String, crate::kube::LockedRelease>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct LockedProfile {
    /// SHA-256 over suite, components, architecture, package list and image packages.
    pub inputs: String,
    pub suite: String,
    pub codename: String,
    #[serde(rename = "package")]
    pub packages: Vec<LockedPackage>,
    /// The packages of the profile's `deb:` container images: exactly those named, no
    /// dependencies; not installed in the root.
    #[serde(
        default,
        rename = "image_package",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub image_packages: Vec<LockedPackage>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct LockedPackage {
    pub name: String,
    pub version: String,
    pub architecture: String,
    /// Path below the mirror root.
    pub filename: String,
    pub size: u64,
    pub sha256: String,
}

/// The hash a lock entry must carry to be fresh for `p`.
pub fn inputs_hash(p: &ImageProfile) -> String {
    let mut h = Sha256::new();
    for part in [&p.suite, &p.architecture]
        .into_iter()
        .chain(&p.components)
        .chain(std::iter::once(&"--".to_string()))
        .chain(&p.packages)
    {
        h.update(part.as_bytes());
        h.update([0]);
    }
    // Only when there are any, so profiles without `deb:` images keep their hash.
    let images = p.image_packages();
    if !images.is_empty() {
        h.update(b"--images\0");
        for part in &images {
            h.update(part.as_bytes());
            h.update([0]);
        }
    }
    hex::encode(h.finalize())
}

impl Lock {
    pub fn load(path: &Path) -> Result<Lock, String> {
        match std::fs::read_to_string(path) {
            Ok(text) => {
                let lock: Lock = toml::from_str(&text)
                    .map_err(|e| format!("{}: {}", path.display(), e.to_string().trim_end()))?;
                if lock.version != LOCK_VERSION {
                    return Err(format!(
                        "{}: lock version {} is not {LOCK_VERSION}",
                        path.display(),
                        lock.version
                    ));
                }
                Ok(lock)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Lock {
                version: LOCK_VERSION,
                profiles: BTreeMap::new(),
                kubernetes: BTreeMap::new(),
            }),
            Err(e) => Err(format!("reading {}: {e}", path.display())),
        }
    }

    /// The entry for `p` if it is fresh.
    pub fn fresh(&self, p: &ImageProfile) -> Option<&LockedProfile> {
        self.profiles
            .get(&p.name)
            .filter(|l| l.inputs == inputs_hash(p))
    }

    pub fn to_text(&self) -> Result<String, String> {
        let body = toml::to_string(self).map_err(|e| format!("serializing the lock: {e}"))?;
        Ok(format!(
            "# Written by `slipway lock`: the Debian packages of every image profile and the\n# Kubernetes binaries pinned with --kubernetes. Do not edit; commit it.\n{body}"
        ))
    }
}
