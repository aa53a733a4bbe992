//! The Kubernetes binaries the node images carry (kubelet, kubectl): named by the
//! profile (`[kubernetes] binaries`), taken at the cluster's `kubernetes_version` from the
//! release server (`{release_url}/VERSION/bin/linux/ARCH/NAME`) or from a local copy of
//! its tree (`SLIPWAY_KUBE_ARTIFACTS=DIR`, for sites without that server), verified
//! against the SHA-512 the release publishes beside each file (`NAME.sha512`), pinned in
//! slipway.lock by `slipway lock --kubernetes VERSION` and kept in the download cache
//! (`CACHE/sha512/HEX`), so that a build with them cached needs no network.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::debian::fetch::FetchError;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha512};

/// Where the Kubernetes project publishes its release binaries.
pub const DEFAULT_RELEASE_URL: &str = "https://dl.k8s.io/release";
/// Where the release's container images are (kube-apiserver and the rest).
pub const DEFAULT_IMAGE_REPOSITORY: &str = "registry.k8s.io";
/// A directory laid out as the release server (`VERSION/bin/linux/ARCH/NAME` and
/// `NAME.sha512`), used instead of it.
pub const ARTIFACTS_ENV: &str = "SLIPWAY_KUBE_ARTIFACTS";

/// One binary pinned in slipway.lock.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct LockedBinary {
    /// Where the release server has it (recorded even when a local copy was read).
    pub url: String,
    /// Lowercase hex SHA-512, as the release publishes it.
    pub sha512: String,
}

/// What slipway.lock pins of one Kubernetes version.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct LockedRelease {
    /// Release binaries by name.
    #[serde(default)]
    pub binaries: BTreeMap<String, LockedBinary>,
    /// Container images, `REGISTRY/REPOSITORY:TAG` -> `sha256:HEX` of the manifest or
    /// index the tag named when it was locked.
    #[serde(default)]
    pub images: BTreeMap<String, String>,
}

impl LockedRelease {
    /// `name` pinned by its digest, if slipway.lock has it.
    pub fn image(&self, name: &str) -> Option<String> {
        self.images.get(name).map(|d| format!("{name}@{d}"))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error("{what}: {reason}")]
    Unavailable { what: String, reason: String },
    #[error("{what}: SHA-512 {got}, but slipway.lock pins {want}; nothing of it was kept")]
    Digest {
        what: String,
        want: String,
        got: String,
    },
    #[error("{what}: {text:?} is not a SHA-512 checksum")]
    BadChecksum { what: String, text: String },
    #[error("writing {path}: {source}")]
    Cache {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Where the binaries are read from.
pub struct Source<'a> {
    pub release_url: &'a str,
    /// `SLIPWAY_KUBE_ARTIFACTS`: read from here instead of the release server.
    pub artifacts: Option<&'a Path>,
    pub agent: &'a ureq::Agent,
}

fn rel_path(version: &str, arch: &str, name: &str) -> String {
    format!("{version}/bin/linux/{arch}/{name}")
}

impl<'a> Source<'a> {
    /// Where `profile`'s binaries come from: its release server, or `artifacts`.
    pub fn of(
        profile: &'a crate::profile::image::ImageProfile,
        artifacts: Option<&'a Path>,
        agent: &'a ureq::Agent,
    ) -> Source<'a> {
        Source {
            release_url: &profile.kube_release_url,
            artifacts,
            agent,
        }
    }

    /// The bytes of `rel` (below the release root) and where they came from.
    fn read(&self, rel: &str) -> Result<(Vec<u8>, String), KubeError> {
        match self.artifacts {
            Some(dir) => {
                let path = dir.join(rel);
                let where_ = path.display().to_string();
                std::fs::read(&path)
                    .map(|b| (b, where_.clone()))
                    .map_err(|e| KubeError::Unavailable {
                        what: where_,
                        reason: format!("{e} (from {ARTIFACTS_ENV})"),
                    })
            }
            None => {
                let url = format!("{}/{rel}", self.release_url.trim_end_matches('/'));
                let unavailable = |reason: String| KubeError::Unavailable {
                    what: url.clone(),
                    reason: format!(
                        "{reason} (offline? set {ARTIFACTS_ENV}=DIR to a copy of the release tree)"
                    ),
                };
                // Tried again after a network failure; a kubelet of ~80 MB may take
                // minutes on a slow link.
                let bytes = crate::debian::fetch::get_bytes(self.agent, &url, 1 << 30).map_err(
                    |e| match e {
                        FetchError::Http { reason, .. } | FetchError::Network { reason, .. } => {
                            unavailable(reason)
                        }
                        other => unavailable(other.to_string()),
                    },
                )?;
                Ok((bytes, url))
            }
        }
    }
}

/// Pins `names` at `version`: each one's published SHA-512 (`NAME.sha512`, whose first
/// word is the digest).
pub fn pin(
    source: &Source<'_>,
    version: &str,
    arch: &str,
    names: &[String],
) -> Result<BTreeMap<String, LockedBinary>, KubeError> {
    let mut out = BTreeMap::new();
    for name in names {
        let rel = rel_path(version, arch, name);
        let (text, from) = source.read(&format!("{rel}.sha512"))?;
        let text = String::from_utf8_lossy(&text);
        let word = text.split_whitespace().next().unwrap_or("");
        if word.len() != 128 || !word.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(KubeError::BadChecksum {
                what: from,
                text: text.chars().take(80).collect(),
            });
        }
        out.insert(
            name.clone(),
            LockedBinary {
                url: format!("{}/{rel}", source.release_url.trim_end_matches('/')),
                sha512: word.to_ascii_lowercase(),
            },
        );
    }
    Ok(out)
}

/// The pinned binary `name` at `version`: from the cache if it is there and hashes
/// right, else read from `source`, verified and cached.
pub fn fetch(
    source: &Source<'_>,
    cache: &Path,
    version: &str,
    arch: &str,
    name: &str,
    pinned: &LockedBinary,
) -> Result<Vec<u8>, KubeError> {
    let cached = cache.join("sha512").join(&pinned.sha512);
    if let Ok(bytes) = std::fs::read(&cached) {
        if hex::encode(Sha512::digest(&bytes)) == pinned.sha512 {
            return Ok(bytes);
        }
        // Tampered or truncated: never used.
        let _ = std::fs::remove_file(&cached);
    }
    let (bytes, from) = source.read(&rel_path(version, arch, name))?;
    let got = hex::encode(Sha512::digest(&bytes));
    if got != pinned.sha512 {
        return Err(KubeError::Digest {
            what: format!("{name} {version} ({from})"),
            want: pinned.sha512.clone(),
            got,
        });
    }
    if let Some(dir) = cached.parent() {
        std::fs::create_dir_all(dir).map_err(|source| KubeError::Cache {
            path: dir.to_owned(),
            source,
        })?;
    }
    crate::fsutil::write_atomic(&cached, &bytes, 0o644).map_err(|source| KubeError::Cache {
        path: cached.clone(),
        source,
    })?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_from_published_checksums_and_refuses_other_bytes() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("release");
        let bin = dir.join("v1.34.2/bin/linux/amd64");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::write(bin.join("kubelet"), b"kubelet bytes").unwrap();
        let sum = hex::encode(Sha512::digest(b"kubelet bytes"));
        std::fs::write(bin.join("kubelet.sha512"), format!("{sum}\n")).unwrap();
        std::fs::write(bin.join("kubectl.sha512"), "not a checksum\n").unwrap();
        let agent = ureq::Agent::new_with_defaults();
        let source = Source {
            release_url: DEFAULT_RELEASE_URL,
            artifacts: Some(&dir),
            agent: &agent,
        };
        let pins = pin(&source, "v1.34.2", "amd64", &["kubelet".into()]).unwrap();
        let p = &pins["kubelet"];
        assert_eq!(p.sha512, sum);
        assert_eq!(
            p.url,
            "https://dl.k8s.io/release/v1.34.2/bin/linux/amd64/kubelet"
        );
        let e = pin(&source, "v1.34.2", "amd64", &["kubectl".into()]).unwrap_err();
        assert!(e.to_string().contains("is not a SHA-512 checksum"), "{e}");
        let e = pin(&source, "v1.35.0", "amd64", &["kubelet".into()]).unwrap_err();
        assert!(e.to_string().contains(ARTIFACTS_ENV), "{e}");

        let cache = tmp.path().join("cache");
        let got = fetch(&source, &cache, "v1.34.2", "amd64", "kubelet", p).unwrap();
        assert_eq!(got, b"kubelet bytes");
        // Cached: the source may go.
        std::fs::remove_dir_all(&dir).unwrap();
        let got = fetch(&source, &cache, "v1.34.2", "amd64", "kubelet", p).unwrap();
        assert_eq!(got, b"kubelet bytes");
        // A changed binary is refused and not cached.
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::write(bin.join("kubelet"), b"other bytes").unwrap();
        std::fs::remove_dir_all(&cache).unwrap();
        let e = fetch(&source, &cache, "v1.34.2", "amd64", "kubelet", p).unwrap_err();
        assert!(
            e.to_string().contains("but slipway.lock pins") && e.to_string().contains(&sum),
            "{e}"
        );
        assert!(!cache.join("sha512").join(&sum).exists());
    }

    #[test]
    fn pins_and_fetches_from_the_release_server_over_http() {
        let kubelet = b"kubelet from the server".to_vec();
        let sum = hex::encode(Sha512::digest(&kubelet));
        let bin = "/release/v1.34.2/bin/linux/amd64";
        // The first connection is cut off: tried again.
        let (base, _) = crate::testserver::serve(
            1,
            BTreeMap::from([
                (format!("{bin}/kubelet"), kubelet.clone()),
                // As published: the digest, two spaces and the file name.
                (
                    format!("{bin}/kubelet.sha512"),
                    format!("{sum}  kubelet\n").into_bytes(),
                ),
            ]),
        );
        let url = format!("{base}/release");
        let agent = ureq::Agent::new_with_defaults();
        let source = Source {
            release_url: &url,
            artifacts: None,
            agent: &agent,
        };
        let pins = pin(&source, "v1.34.2", "amd64", &["kubelet".into()]).unwrap();
        let p = &pins["kubelet"];
        assert_eq!(
            (p.sha512.as_str(), p.url.as_str()),
            (
                sum.as_str(),
                &*format!("{url}/v1.34.2/bin/linux/amd64/kubelet")
            )
        );
        let tmp = tempfile::tempdir().unwrap();
        let got = fetch(&source, tmp.path(), "v1.34.2", "amd64", "kubelet", p).unwrap();
        assert_eq!(got, kubelet);
        // A refusal is final and says where it asked and how to do without the server.
        let e = pin(&source, "v1.35.0", "amd64", &["kubelet".into()]).unwrap_err();
        let e = e.to_string();
        assert!(
            e.contains(&format!("{url}/v1.35.0/bin/linux/amd64/kubelet.sha512"))
                && e.contains("404")
                && e.contains(ARTIFACTS_ENV),
            "{e}"
        );
    }
}
