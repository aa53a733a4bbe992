//! Pulling container images by digest from registries that speak the OCI distribution
//! API, into the same content-addressed cache as Debian packages (`CACHE/sha256/HEX`).
//!
//! Only pinned references are pulled (`REGISTRY/REPOSITORY[:TAG]@sha256:HEX`): an image
//! index is narrowed to one platform (linux/amd64), and every manifest and blob is hashed
//! and compared with the digest that named it before it is used or cached. A second pull
//! of the same reference needs no network: everything is found, and verified again, in
//! the cache. Registries that want a bearer token (Docker Hub, registry.k8s.io's
//! backends, GHCR for public images) get the anonymous token flow; the token is held in
//! memory only, never logged. Plain HTTP is used only for loopback registries.
//!
//! Types of manifests and indexes come from the `oci-spec` crate (the OCI image spec's
//! own Rust types, also used by youki and containerd's Rust tools); the HTTP part is a
//! handful of GETs on the `ureq` agent the package cache already has, which is why the
//! async `oci-client` crate (tokio, reqwest) was not taken.

pub mod archive;

use std::collections::HashMap;
use std::io::Read;
use std::path::PathBuf;
use std::sync::Mutex;

use oci_spec::image::{ImageIndex, ImageManifest};
use sha2::{Digest as _, Sha256};

use crate::debian::fetch::{Cache, FetchError, Want};

/// The only platform images are pulled for: Slipway builds amd64 nodes.
pub const PLATFORM: (&str, &str) = ("linux", "amd64");

/// Manifest media types asked for, OCI's and Docker's.
const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
    application/vnd.oci.image.manifest.v1+json, \
    application/vnd.docker.distribution.manifest.list.v2+json, \
    application/vnd.docker.distribution.manifest.v2+json";

/// Largest manifest or index read (real ones are a few KiB).
const MANIFEST_LIMIT: u64 = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum OciError {
    #[error("image reference {input:?}: {reason}")]
    Reference { input: String, reason: String },
    #[error("{reference}: the registry refused {url}: {status} {message}")]
    Refused {
        reference: String,
        url: String,
        status: u16,
        message: String,
    },
    #[error("{reference}: {url}: {reason}")]
    Unreachable {
        reference: String,
        url: String,
        reason: String,
    },
    #[error("{reference}: {what} has digest sha256:{got}, the reference pins sha256:{want}")]
    DigestMismatch {
        reference: String,
        what: String,
        want: String,
        got: String,
    },
    #[error("{reference}: no {}/{} image in its index (it has: {available})", PLATFORM.0, PLATFORM.1)]
    Platform {
        reference: String,
        available: String,
    },
    #[error("{reference}: {what}: {reason}")]
    Invalid {
        reference: String,
        what: String,
        reason: String,
    },
    #[error("{reference}: {source}")]
    Blob {
        reference: String,
        #[source]
        source: FetchError,
    },
}

/// The tag of `name` if it is a name containerd can import an image as:
/// `REGISTRY/REPOSITORY:TAG`, no digest, no whitespace.
pub fn name_tag(name: &str) -> Option<&str> {
    if name.contains('@') || name.contains(char::is_whitespace) {
        return None;
    }
    name.rsplit_once(':')
        .filter(|(repo, t)| !t.is_empty() && !t.contains('/') && repo.contains('/'))
        .map(|(_, t)| t)
}

/// A pinned image reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// Host and optional port.
    pub registry: String,
    pub repository: String,
    /// Informational (the digest decides); kept for naming the image in containerd.
    pub tag: Option<String>,
    /// Lowercase hex SHA-256 of the manifest or index.
    pub sha256: String,
}

impl std::fmt::Display for Reference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.name())?;
        if !self.sha256.is_empty() {
            write!(f, "@sha256:{}", self.sha256)?;
        }
        Ok(())
    }
}

impl std::str::FromStr for Reference {
    type Err = OciError;

    fn from_str(input: &str) -> Result<Reference, OciError> {
        let bad = |reason: &str| OciError::Reference {
            input: input.to_string(),
            reason: reason.to_string(),
        };
        let (name, digest) = input
            .split_once('@')
            .ok_or_else(|| bad("no digest: pin it as NAME@sha256:HEX"))?;
        let sha256 = digest
            .strip_prefix("sha256:")
            .ok_or_else(|| bad("the digest must be sha256:HEX"))?;
        if sha256.len() != 64
            || !sha256
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(bad("the digest must be 64 lowercase hex digits"));
        }
        let (registry, repository, tag) = parse_name(input, name)?;
        Ok(Reference {
            registry,
            repository,
            tag,
            sha256: sha256.to_string(),
        })
    }
}

/// `REGISTRY/REPOSITORY[:TAG]` of `input`, checked: (registry, repository, tag).
fn parse_name(input: &str, name: &str) -> Result<(String, String, Option<String>), OciError> {
    let bad = |reason: &str| OciError::Reference {
        input: input.to_string(),
        reason: reason.to_string(),
    };
    let (registry, path) = name
        .split_once('/')
        .ok_or_else(|| bad("no registry: write REGISTRY/REPOSITORY"))?;
    if !(registry.contains('.') || registry.contains(':') || registry == "localhost") {
        return Err(bad(
            "the first part must be a registry host (with a dot or a port, or localhost)",
        ));
    }
    let (repository, tag) = match path.rsplit_once(':') {
        Some((r, t)) if !t.contains('/') => (r, Some(t.to_string())),
        _ => (path, None),
    };
    if !repository.split('/').all(is_repository_component) {
        return Err(bad(
            "repository components are lowercase letters, digits, '.', '_' and '-'",
        ));
    }
    if let Some(t) = &tag
        && (t.is_empty()
            || t.len() > 128
            || !t
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)))
    {
        return Err(bad("the tag has characters a tag cannot have"));
    }
    Ok((registry.to_string(), repository.to_string(), tag))
}

/// One `/`-separated part of a repository name: lowercase letters, digits, `.`, `_`, `-`.
pub fn is_repository_component(c: &str) -> bool {
    !c.is_empty()
        && c.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
}

impl Reference {
    /// `REGISTRY/REPOSITORY:TAG`, not yet pinned: what [`Client::resolve`] takes. Its
    /// digest is empty until resolved (and it displays without one).
    pub fn tagged(input: &str) -> Result<Reference, OciError> {
        if input.contains('@') {
            return Err(OciError::Reference {
                input: input.to_string(),
                reason: "a tag to resolve has no digest".into(),
            });
        }
        let (registry, repository, tag) = parse_name(input, input)?;
        if tag.is_none() {
            return Err(OciError::Reference {
                input: input.to_string(),
                reason: "no tag: write REGISTRY/REPOSITORY:TAG".into(),
            });
        }
        Ok(Reference {
            registry,
            repository,
            tag,
            sha256: String::new(),
        })
    }

    /// `REGISTRY/REPOSITORY[:TAG]`, without the digest.
    pub fn name(&self) -> String {
        match &self.tag {
            Some(t) => format!("{}/{}:{t}", self.registry, self.repository),
            None => format!("{}/{}", self.registry, self.repository),
        }
    }

    /// The registry's base URL: plain HTTP only for loopback hosts.
    pub fn base_url(&self) -> String {
        let host = self
            .registry
            .rsplit_once(':')
            .filter(|(_, port)| port.bytes().all(|b| b.is_ascii_digit()))
            .map_or(self.registry.as_str(), |(h, _)| h);
        let loopback = host == "localhost"
            || host == "[::1]"
            || host
                .parse::<std::net::Ipv4Addr>()
                .is_ok_and(|a| a.is_loopback());
        let scheme = if loopback { "http" } else { "https" };
        format!("{scheme}://{}/v2/{}", self.registry, self.repository)
    }
}

/// A blob of a pulled image, verified, in the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blob {
    pub media_type: String,
    pub sha256: String,
    pub size: u64,
    pub path: PathBuf,
}

/// What a pull leaves in the cache for one image.
#[derive(Debug, Clone)]
pub struct Pulled {
    pub reference: Reference,
    /// The linux/amd64 image manifest (the reference's own digest when it named one).
    pub manifest: Blob,
    pub config: Blob,
    pub layers: Vec<Blob>,
}

/// Pulls pinned images into a [`Cache`].
pub struct Client<'a> {
    cache: &'a Cache,
    /// Bearer tokens per registry and repository, in memory only.
    tokens: Mutex<HashMap<String, String>>,
}

impl<'a> Client<'a> {
    pub fn new(cache: &'a Cache) -> Client<'a> {
        Client {
            cache,
            tokens: Mutex::new(HashMap::new()),
        }
    }

    /// Pulls `r`'s linux/amd64 image: its manifest (through its index when the reference
    /// names one), config and layers, each verified against its digest.
    pub fn pull(&self, r: &Reference) -> Result<Pulled, OciError> {
        let (top, top_path) = self.manifest(r, &r.sha256, "the manifest")?;
        let (manifest, manifest_blob) = if top.get("manifests").is_some() {
            let index: ImageIndex = parse(r, "the image index", &top)?;
            let d = platform_manifest(r, &index)?;
            let sha = sha256_of_digest(r, d.digest().as_ref())?;
            let (value, path) = self.manifest(r, &sha, "the linux/amd64 manifest")?;
            let m: ImageManifest = parse(r, "the linux/amd64 manifest", &value)?;
            let blob = Blob {
                media_type: d.media_type().to_string(),
                sha256: sha,
                size: d.size(),
                path,
            };
            (m, blob)
        } else {
            let m: ImageManifest = parse(r, "the manifest", &top)?;
            let size = std::fs::metadata(&top_path).map(|m| m.len()).unwrap_or(0);
            let blob = Blob {
                media_type: m.media_type().as_ref().map_or_else(
                    || "application/vnd.oci.image.manifest.v1+json".into(),
                    |t| t.to_string(),
                ),
                sha256: r.sha256.clone(),
                size,
                path: top_path,
            };
            (m, blob)
        };
        let mut descriptors = vec![manifest.config().clone()];
        descriptors.extend(manifest.layers().iter().cloned());
        let mut wants = Vec::new();
        let mut blobs = Vec::new();
        for d in &descriptors {
            let sha = sha256_of_digest(r, d.digest().as_ref())?;
            wants.push(Want {
                url: format!("{}/blobs/sha256:{sha}", r.base_url()),
                size: d.size(),
                sha256: sha.clone(),
            });
            blobs.push(Blob {
                media_type: d.media_type().to_string(),
                path: self.cache.blob_path(&sha),
                sha256: sha,
                size: d.size(),
            });
        }
        // Blobs already cached (and still hashing right) need no registry at all.
        let mut cached = true;
        for w in &wants {
            if self.cached(r, w)?.is_none() {
                cached = false;
            }
        }
        if !cached {
            let auth = self.authorization(r)?;
            self.cache
                .ensure_all_with(&wants, &r.to_string(), auth.as_deref())
                .map_err(|source| OciError::Blob {
                    reference: r.to_string(),
                    source,
                })?;
        }
        let config = blobs.remove(0);
        Ok(Pulled {
            reference: r.clone(),
            manifest: manifest_blob,
            config,
            layers: blobs,
        })
    }

    /// Pins a tag: the digest of the manifest or index `REGISTRY/REPOSITORY:TAG` names
    /// now (the SHA-256 of the bytes served, which must agree with the registry's
    /// `Docker-Content-Digest` when it sends one). An index must hold a linux/amd64
    /// image. The bytes are cached, so a pull of the pinned reference starts from them.
    pub fn resolve(&self, name: &str) -> Result<Reference, OciError> {
        let mut r = Reference::tagged(name)?;
        let tag = r.tag.clone().unwrap_or_default();
        let url = format!("{}/manifests/{tag}", r.base_url());
        let (bytes, announced) = self.get(&r, &url, ACCEPT)?;
        let sha = hex::encode(Sha256::digest(&bytes));
        if let Some(a) = announced
            && a != format!("sha256:{sha}")
        {
            return Err(OciError::DigestMismatch {
                reference: r.to_string(),
                what: format!("the manifest from {url} (the registry calls it {a})"),
                want: a.trim_start_matches("sha256:").to_string(),
                got: sha,
            });
        }
        let value: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|e| OciError::Invalid {
                reference: r.to_string(),
                what: format!("the manifest from {url}"),
                reason: format!("not JSON: {e}"),
            })?;
        if value.get("manifests").is_some() {
            let index: ImageIndex = parse(&r, "the image index", &value)?;
            platform_manifest(&r, &index)?;
        } else {
            let _: ImageManifest = parse(&r, "the manifest", &value)?;
        }
        self.keep(&r, &sha, &bytes, "the manifest")?;
        r.sha256 = sha;
        Ok(r)
    }

    /// Keeps a manifest or index whose digest `sha` was checked in the cache.
    fn keep(&self, r: &Reference, sha: &str, bytes: &[u8], what: &str) -> Result<(), OciError> {
        let path = self.cache.blob_path(sha);
        let dir = path.parent().unwrap_or(&path);
        std::fs::create_dir_all(dir)
            .and_then(|()| crate::fsutil::write_atomic(&path, bytes, 0o644))
            .map_err(|e| OciError::Invalid {
                reference: r.to_string(),
                what: format!("caching {what} at {}", path.display()),
                reason: e.to_string(),
            })
    }

    fn cached(&self, r: &Reference, w: &Want) -> Result<Option<PathBuf>, OciError> {
        self.cache.verified(w).map_err(|source| OciError::Blob {
            reference: r.to_string(),
            source,
        })
    }

    /// The manifest or index with digest `sha`: from the cache when it is there and
    /// hashes right, else from the registry (verified, then cached). Returns it parsed
    /// as JSON, and its cache path.
    fn manifest(
        &self,
        r: &Reference,
        sha: &str,
        what: &str,
    ) -> Result<(serde_json::Value, PathBuf), OciError> {
        let path = self.cache.blob_path(sha);
        let bytes = match std::fs::read(&path) {
            Ok(b) if hex::encode(Sha256::digest(&b)) == sha => b,
            _ => {
                let url = format!("{}/manifests/sha256:{sha}", r.base_url());
                let (b, _) = self.get(r, &url, ACCEPT)?;
                let got = hex::encode(Sha256::digest(&b));
                if got != sha {
                    return Err(OciError::DigestMismatch {
                        reference: r.to_string(),
                        what: format!("{what} from {url}"),
                        want: sha.to_string(),
                        got,
                    });
                }
                self.keep(r, sha, &b, what)?;
                b
            }
        };
        let value = serde_json::from_slice(&bytes).map_err(|e| OciError::Invalid {
            reference: r.to_string(),
            what: what.to_string(),
            reason: format!("not JSON: {e}"),
        })?;
        Ok((value, path))
    }

    /// The Authorization header for `r`'s repository: a bearer token when the registry
    /// asks for one (found by asking for the pinned manifest without one), else none.
    fn authorization(&self, r: &Reference) -> Result<Option<String>, OciError> {
        if let Some(a) = self.cached_token(r) {
            return Ok(Some(a));
        }
        let url = format!("{}/manifests/sha256:{}", r.base_url(), r.sha256);
        let resp = self.send(r, &url, ACCEPT, None)?;
        if resp.status() != 401 {
            return Ok(None);
        }
        let token = self.token(r, &url, &resp)?;
        Ok(Some(format!("Bearer {token}")))
    }

    /// GETs `url` (at most [`MANIFEST_LIMIT`] bytes), with a bearer token when the
    /// registry asks for one.
    /// Also returns the `Docker-Content-Digest` the registry announced, if any.
    fn get(
        &self,
        r: &Reference,
        url: &str,
        accept: &str,
    ) -> Result<(Vec<u8>, Option<String>), OciError> {
        let auth = self.cached_token(r);
        let mut resp = self.send(r, url, accept, auth.as_deref())?;
        if resp.status() == 401 && auth.is_none() {
            let token = self.token(r, url, &resp)?;
            resp = self.send(r, url, accept, Some(&format!("Bearer {token}")))?;
        }
        let status = resp.status().as_u16();
        let announced = resp
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let mut body = Vec::new();
        resp.body_mut()
            .with_config()
            .limit(MANIFEST_LIMIT)
            .reader()
            .read_to_end(&mut body)
            .map_err(|e| OciError::Unreachable {
                reference: r.to_string(),
                url: url.to_string(),
                reason: e.to_string(),
            })?;
        if status != 200 {
            return Err(refused(r, url, status, &body));
        }
        Ok((body, announced))
    }

    fn cached_token(&self, r: &Reference) -> Option<String> {
        let key = format!("{}/{}", r.registry, r.repository);
        let t = self.tokens.lock().ok()?.get(&key).cloned()?;
        Some(format!("Bearer {t}"))
    }

    fn send(
        &self,
        r: &Reference,
        url: &str,
        accept: &str,
        auth: Option<&str>,
    ) -> Result<ureq::http::Response<ureq::Body>, OciError> {
        let mut req = self
            .cache
            .agent
            .get(url)
            .header("Accept", accept)
            .config()
            .http_status_as_error(false)
            .build();
        if let Some(a) = auth {
            req = req.header("Authorization", a);
        }
        req.call().map_err(|e| OciError::Unreachable {
            reference: r.to_string(),
            url: url.to_string(),
            reason: format!("{e} (and it is not in the cache)"),
        })
    }

    /// The anonymous bearer-token flow a 401 announces in `WWW-Authenticate`.
    fn token(
        &self,
        r: &Reference,
        url: &str,
        resp: &ureq::http::Response<ureq::Body>,
    ) -> Result<String, OciError> {
        let header = resp
            .headers()
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let Some(params) = parse_bearer(header) else {
            return Err(refused(
                r,
                url,
                401,
                format!("authentication required ({header:?}); only anonymous bearer tokens are supported")
                    .as_bytes(),
            ));
        };
        let realm = params.get("realm").cloned().unwrap_or_default();
        let mut token_url = realm.clone();
        let mut sep = if realm.contains('?') { '&' } else { '?' };
        let scope = format!("repository:{}:pull", r.repository);
        for (k, v) in [
            ("service", params.get("service").cloned()),
            ("scope", Some(params.get("scope").cloned().unwrap_or(scope))),
        ] {
            if let Some(v) = v {
                token_url.push(sep);
                token_url.push_str(k);
                token_url.push('=');
                token_url.push_str(&percent(&v));
                sep = '&';
            }
        }
        let mut resp = self.send(r, &token_url, "application/json", None)?;
        let status = resp.status().as_u16();
        let mut body = Vec::new();
        let _ = resp
            .body_mut()
            .with_config()
            .limit(1 << 20)
            .reader()
            .read_to_end(&mut body);
        if status != 200 {
            return Err(refused(r, &realm, status, &body));
        }
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        let token = v
            .get("token")
            .or_else(|| v.get("access_token"))
            .and_then(|t| t.as_str())
            .ok_or_else(|| OciError::Invalid {
                reference: r.to_string(),
                what: format!("the token from {realm}"),
                reason: "no token in the answer".into(),
            })?
            .to_string();
        if let Ok(mut t) = self.tokens.lock() {
            t.insert(format!("{}/{}", r.registry, r.repository), token.clone());
        }
        Ok(token)
    }
}

/// The linux/amd64 entry of an image index.
fn platform_manifest<'i>(
    r: &Reference,
    index: &'i ImageIndex,
) -> Result<&'i oci_spec::image::Descriptor, OciError> {
    let mut available = Vec::new();
    let pick = index.manifests().iter().find(|d| {
        let Some(p) = d.platform() else { return false };
        let (os, arch) = (p.os().to_string(), p.architecture().to_string());
        available.push(format!("{os}/{arch}"));
        (os.as_str(), arch.as_str()) == PLATFORM
    });
    pick.ok_or_else(|| OciError::Platform {
        reference: r.to_string(),
        available: if available.is_empty() {
            "no platforms".into()
        } else {
            available.join(", ")
        },
    })
}

fn refused(r: &Reference, url: &str, status: u16, body: &[u8]) -> OciError {
    // Registries explain refusals as {"errors":[{"code":..,"message":..}]}.
    let text = String::from_utf8_lossy(body);
    let message = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| {
            let e = v.get("errors")?.get(0)?;
            Some(format!(
                "{}: {}",
                e.get("code")?.as_str()?,
                e.get("message").and_then(|m| m.as_str()).unwrap_or("")
            ))
        })
        .unwrap_or_else(|| text.chars().take(200).collect());
    OciError::Refused {
        reference: r.to_string(),
        url: url.to_string(),
        status,
        message,
    }
}

fn parse<T: serde::de::DeserializeOwned>(
    r: &Reference,
    what: &str,
    v: &serde_json::Value,
) -> Result<T, OciError> {
    serde_json::from_value(v.clone()).map_err(|e| OciError::Invalid {
        reference: r.to_string(),
        what: what.to_string(),
        reason: e.to_string(),
    })
}

fn sha256_of_digest(r: &Reference, digest: &str) -> Result<String, OciError> {
    digest
        .strip_prefix("sha256:")
        .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
        .map(str::to_ascii_lowercase)
        .ok_or_else(|| OciError::Invalid {
            reference: r.to_string(),
            what: format!("digest {digest}"),
            reason: "only sha256 digests are supported".into(),
        })
}

/// The parameters of a `Bearer k="v",...` challenge.
fn parse_bearer(header: &str) -> Option<HashMap<String, String>> {
    let rest = header.trim().strip_prefix("Bearer ")?;
    let mut out = HashMap::new();
    let mut s = rest;
    while !s.is_empty() {
        let (k, after) = s.split_once('=')?;
        let (v, after) = if let Some(q) = after.strip_prefix('"') {
            let end = q.find('"')?;
            (&q[..end], &q[end + 1..])
        } else {
            after.split_once(',').map_or((after, ""), |(v, a)| (v, a))
        };
        out.insert(k.trim().to_ascii_lowercase(), v.to_string());
        s = after.trim_start_matches([',', ' ']);
    }
    out.contains_key("realm").then_some(out)
}

fn percent(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn references_parse_and_print_back() {
        for s in [
            format!("registry.k8s.io/pause:3.10@sha256:{D}"),
            format!("127.0.0.1:5000/test/hello@sha256:{D}"),
            format!("localhost/a/b/c:v1.2_x@sha256:{D}"),
        ] {
            let r: Reference = s.parse().unwrap();
            assert_eq!(r.to_string(), s);
        }
        let r: Reference = format!("127.0.0.1:5000/x:1@sha256:{D}").parse().unwrap();
        assert_eq!(r.base_url(), "http://127.0.0.1:5000/v2/x");
        let r: Reference = format!("registry.k8s.io/pause@sha256:{D}").parse().unwrap();
        assert_eq!(r.base_url(), "https://registry.k8s.io/v2/pause");
    }

    #[test]
    fn bad_references_say_why() {
        for (s, why) in [
            ("registry.k8s.io/pause:3.10".to_string(), "no digest"),
            (format!("pause@sha256:{D}"), "no registry"),
            (format!("library/pause@sha256:{D}"), "registry host"),
            (format!("r.io/Pause@sha256:{D}"), "lowercase"),
            ("r.io/pause@sha512:00".to_string(), "sha256:HEX"),
            ("r.io/pause@sha256:00".to_string(), "64 lowercase hex"),
            (format!("r.io/pause:@sha256:{D}"), "tag"),
        ] {
            let e = s.parse::<Reference>().unwrap_err().to_string();
            assert!(e.contains(why) && e.contains(&s), "{s}: {e}");
        }
    }

    #[test]
    fn bearer_challenges_parse() {
        let p = parse_bearer(
            r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull""#,
        )
        .unwrap();
        assert_eq!(p["realm"], "https://auth.example/token");
        assert_eq!(p["service"], "registry.example");
        assert_eq!(p["scope"], "repository:a/b:pull");
        assert!(parse_bearer(r#"Basic realm="x""#).is_none());
        assert_eq!(percent("repository:a/b:pull"), "repository%3Aa%2Fb%3Apull");
    }
}
