//! Image profiles (`profiles/NAME.toml`): which Debian suite, components, kernel and
//! packages make an image. A profile may extend another; package lists accumulate and
//! later scalar settings win.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::ProfileError;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ImageFile {
    description: String,
    extends: Option<String>,
    suite: Option<String>,
    components: Option<Vec<String>>,
    architecture: Option<String>,
    kernel: Option<String>,
    mirror: Option<String>,
    keyring: Option<PathBuf>,
    #[serde(default)]
    packages: Vec<String>,
    #[serde(default)]
    initramfs_modules: Vec<String>,
    #[serde(default)]
    images: Vec<ImageEntry>,
    kubernetes: Option<KubernetesSection>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KubernetesSection {
    #[serde(default)]
    binaries: Vec<String>,
    release_url: Option<String>,
    #[serde(default)]
    images: Vec<String>,
    image_repository: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ImageEntry {
    name: String,
    source: String,
    #[serde(default)]
    entrypoint: Vec<String>,
}

/// A container image to bake into the OS image (`[[images]]` in a profile).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerImage {
    /// `REGISTRY/REPOSITORY:TAG`: what containerd knows it as.
    pub name: String,
    pub source: ImageSource,
    /// For `dir:` sources: what the image runs.
    pub entrypoint: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageSource {
    /// `oci:REF@sha256:HEX`: pulled from a registry, digest pinned.
    Registry(String),
    /// `deb:PKG[,PKG...]`: the files of exactly these Debian packages (no dependencies,
    /// no maintainer scripts), pinned in slipway.lock with the profile's packages.
    Debian(Vec<String>),
    /// `dir:PATH`: the files under PATH (relative to the data directory), at the same
    /// paths in the image's one layer.
    Dir {
        /// PATH resolved against the data directory: where the files are read.
        path: PathBuf,
        /// PATH as the profile wrote it: what manifest.json records, so that two
        /// checkouts of the same inputs give the same manifest.
        written: String,
    },
}

/// A profile with its `extends` chain merged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageProfile {
    pub name: String,
    pub description: String,
    pub suite: String,
    pub components: Vec<String>,
    pub architecture: String,
    pub kernel: String,
    /// None: the host's apt sources decide.
    pub mirror: Option<String>,
    pub keyring: PathBuf,
    /// Kernel first, then packages in profile order, without duplicates.
    pub packages: Vec<String>,
    /// Kernel modules the initramfs loads before it looks for the root (with their
    /// dependencies), in profile order.
    pub initramfs_modules: Vec<String>,
    /// Container images baked in, in profile order (a later profile's entry with the
    /// same name replaces an earlier one).
    pub images: Vec<ContainerImage>,
    /// Kubernetes release binaries installed as /usr/bin/NAME, at the cluster's
    /// `kubernetes_version` (`[kubernetes] binaries`; a later profile adds to them).
    pub kube_binaries: Vec<String>,
    /// Where they are published (`[kubernetes] release_url`).
    pub kube_release_url: String,
    /// Container images of the Kubernetes release (`[kubernetes] images`): a bare
    /// REPOSITORY is `{kube_image_repository}/REPOSITORY:{kubernetes_version}`, a full
    /// `REGISTRY/REPOSITORY:TAG` (an add-on's) is taken as written. Pinned by digest with
    /// the binaries by `slipway lock --kubernetes VERSION`.
    pub kube_images: Vec<String>,
    /// Where the release's own images are (`[kubernetes] image_repository`).
    pub kube_image_repository: String,
}

/// A Debian package name (policy 5.6.1): lower-case letters, digits, `+`, `-`, `.`;
/// at least two characters, starting with a letter or digit.
fn is_package_name(s: &str) -> bool {
    s.len() >= 2
        && s.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+-.".contains(c))
}

/// A `[kubernetes] images` entry that names its registry and tag itself (an add-on's),
/// not a repository of the release's.
fn is_full_name(entry: &str) -> bool {
    entry.contains(['/', ':'])
}

pub const DEFAULT_KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

impl ImageProfile {
    /// The `[kubernetes] images` as `REGISTRY/REPOSITORY:TAG` for `version`, in profile
    /// order.
    pub fn kube_image_names(&self, version: &str) -> Vec<String> {
        self.kube_images
            .iter()
            .map(|i| {
                if is_full_name(i) {
                    i.clone()
                } else {
                    format!("{}/{i}:{version}", self.kube_image_repository)
                }
            })
            .collect()
    }

    /// The Debian packages of its `deb:` images, each once, in profile order. They are
    /// pinned in the lock beside the root's packages but not installed in the root.
    pub fn image_packages(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for i in &self.images {
            if let ImageSource::Debian(pkgs) = &i.source {
                for p in pkgs {
                    if !out.contains(p) {
                        out.push(p.clone());
                    }
                }
            }
        }
        out
    }

    /// Loads `profiles/NAME.toml` from `root`, following `extends`.
    pub fn load(root: &Path, name: &str) -> Result<ImageProfile, ProfileError> {
        let mut chain = Vec::new();
        let mut next = Some(name.to_string());
        while let Some(n) = next {
            let path = root.join("profiles").join(format!("{n}.toml"));
            if chain
                .iter()
                .any(|(m, _, _): &(String, PathBuf, ImageFile)| *m == n)
            {
                return Err(ProfileError::Invalid {
                    path,
                    field: "extends".into(),
                    reason: format!("profile {n:?} extends itself through a cycle"),
                });
            }
            if !super::is_plain_name(&n) {
                return Err(ProfileError::Invalid {
                    path,
                    field: "extends".into(),
                    reason: format!("{n:?} is not a profile name"),
                });
            }
            let text = std::fs::read_to_string(&path).map_err(|source| ProfileError::Io {
                path: path.clone(),
                source,
            })?;
            let f: ImageFile = toml::from_str(&text).map_err(|e| ProfileError::Parse {
                path: path.clone(),
                message: e.to_string().trim_end().to_string(),
            })?;
            next = f.extends.clone();
            chain.push((n, path, f));
        }
        // Base first, the named profile last.
        chain.reverse();
        let mut p = ImageProfile {
            name: name.to_string(),
            description: String::new(),
            suite: "trixie".into(),
            components: vec!["main".into()],
            architecture: "amd64".into(),
            kernel: "linux-image-amd64".into(),
            mirror: None,
            keyring: PathBuf::from(DEFAULT_KEYRING),
            packages: Vec::new(),
            initramfs_modules: Vec::new(),
            images: Vec::new(),
            kube_binaries: Vec::new(),
            kube_release_url: crate::kube::DEFAULT_RELEASE_URL.into(),
            kube_images: Vec::new(),
            kube_image_repository: crate::kube::DEFAULT_IMAGE_REPOSITORY.into(),
        };
        let mut packages: Vec<String> = Vec::new();
        for (_, path, f) in chain {
            p.description = f.description;
            if let Some(v) = f.suite {
                p.suite = v;
            }
            if let Some(v) = f.components {
                p.components = v;
            }
            if let Some(v) = f.architecture {
                p.architecture = v;
            }
            if let Some(v) = f.kernel {
                p.kernel = v;
            }
            if f.mirror.is_some() {
                p.mirror = f.mirror;
            }
            if let Some(v) = f.keyring {
                p.keyring = v;
            }
            for (i, m) in f.initramfs_modules.into_iter().enumerate() {
                if m.is_empty()
                    || !m
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
                {
                    return Err(ProfileError::Invalid {
                        path: path.clone(),
                        field: format!("initramfs_modules[{i}]"),
                        reason: format!("{m:?} is not a kernel module name"),
                    });
                }
                if !p.initramfs_modules.contains(&m) {
                    p.initramfs_modules.push(m);
                }
            }
            for (i, e) in f.images.into_iter().enumerate() {
                let bad = |field: &str, reason: String| ProfileError::Invalid {
                    path: path.clone(),
                    field: format!("images[{i}].{field}"),
                    reason,
                };
                if crate::oci::name_tag(&e.name).is_none() {
                    return Err(bad(
                        "name",
                        format!("{:?} is not REGISTRY/REPOSITORY:TAG", e.name),
                    ));
                }
                let source = if let Some(r) = e.source.strip_prefix("oci:") {
                    r.parse::<crate::oci::Reference>()
                        .map_err(|err| bad("source", err.to_string()))?;
                    ImageSource::Registry(r.to_string())
                } else if let Some(list) = e.source.strip_prefix("deb:") {
                    let pkgs: Vec<String> = list.split(',').map(str::to_string).collect();
                    if let Some(p) = pkgs.iter().find(|p| !is_package_name(p)) {
                        return Err(bad(
                            "source",
                            format!("deb:{list}: {p:?} is not a Debian package name"),
                        ));
                    }
                    ImageSource::Debian(pkgs)
                } else if let Some(d) = e.source.strip_prefix("dir:") {
                    if d.is_empty() {
                        return Err(bad("source", "dir: needs a directory".into()));
                    }
                    if e.entrypoint.is_empty() {
                        return Err(bad(
                            "entrypoint",
                            "a dir: image needs the command it runs".into(),
                        ));
                    }
                    ImageSource::Dir {
                        path: root.join(d),
                        written: d.to_string(),
                    }
                } else {
                    return Err(bad(
                        "source",
                        format!(
                            "{:?}: expected oci:REGISTRY/REPOSITORY@sha256:HEX, deb:PACKAGE[,PACKAGE...] or dir:PATH",
                            e.source
                        ),
                    ));
                };
                p.images.retain(|x| x.name != e.name);
                p.images.push(ContainerImage {
                    name: e.name,
                    source,
                    entrypoint: e.entrypoint,
                });
            }
            if let Some(k) = f.kubernetes {
                if let Some(u) = k.release_url {
                    if !(u.starts_with("https://") || u.starts_with("http://")) {
                        return Err(ProfileError::Invalid {
                            path: path.clone(),
                            field: "kubernetes.release_url".into(),
                            reason: format!("{u:?} is not an http(s) URL"),
                        });
                    }
                    p.kube_release_url = u;
                }
                for (i, b) in k.binaries.into_iter().enumerate() {
                    if !super::is_plain_name(&b) {
                        return Err(ProfileError::Invalid {
                            path: path.clone(),
                            field: format!("kubernetes.binaries[{i}]"),
                            reason: format!("{b:?} is not a binary name"),
                        });
                    }
                    if !p.kube_binaries.contains(&b) {
                        p.kube_binaries.push(b);
                    }
                }
                if let Some(r) = k.image_repository {
                    let ok = crate::oci::Reference::tagged(&format!("{r}/x:1")).is_ok();
                    if !ok {
                        return Err(ProfileError::Invalid {
                            path: path.clone(),
                            field: "kubernetes.image_repository".into(),
                            reason: format!(
                                "{r:?} is not REGISTRY[/PATH] (a host with a dot or a port)"
                            ),
                        });
                    }
                    p.kube_image_repository = r;
                }
                for (i, img) in k.images.into_iter().enumerate() {
                    let ok = if is_full_name(&img) {
                        crate::oci::name_tag(&img).is_some()
                            && crate::oci::Reference::tagged(&img).is_ok()
                    } else {
                        crate::oci::is_repository_component(&img)
                    };
                    if !ok {
                        return Err(ProfileError::Invalid {
                            path: path.clone(),
                            field: format!("kubernetes.images[{i}]"),
                            reason: format!(
                                "{img:?} is neither an image of the release (kube-apiserver) \
                                 nor REGISTRY/REPOSITORY:TAG"
                            ),
                        });
                    }
                    if !p.kube_images.contains(&img) {
                        p.kube_images.push(img);
                    }
                }
            }
            for (i, pkg) in f.packages.into_iter().enumerate() {
                if pkg.is_empty() || pkg.contains(char::is_whitespace) {
                    return Err(ProfileError::Invalid {
                        path: path.clone(),
                        field: format!("packages[{i}]"),
                        reason: format!("{pkg:?} is not a package name"),
                    });
                }
                if !packages.contains(&pkg) {
                    packages.push(pkg);
                }
            }
        }
        let mut all = vec![p.kernel.clone()];
        all.extend(packages.into_iter().filter(|x| *x != p.kernel));
        p.packages = all;
        Ok(p)
    }
}
