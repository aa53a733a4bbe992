//! `slipway rootfs`: an image profile -> locked package set -> verified downloads ->
//! unpacked tree -> declarative configuration -> reproducible tar and SPDX SBOM.
//!
//! Rootless: nothing is mounted, no maintainer script runs, no chroot is entered.

pub mod accounts;
pub mod configure;
pub mod depmod;
pub mod hwdb;
pub mod sbom;

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::debian::fetch::{Cache, FetchError, Want};
use crate::debian::lock::{self, Lock, LockedPackage, LockedProfile};
use crate::debian::packages::{self, Index};
use crate::debian::{extract, release, resolve, sources};
use crate::fs::{Entry, Tree};
use crate::profile::image::ImageProfile;
use crate::profile::{DataDir, ProfileError};

#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error(transparent)]
    Profile(#[from] ProfileError),
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error(transparent)]
    Resolve(#[from] resolve::ResolveError),
    #[error(
        "no Debian mirror: the host's apt sources name none; set `mirror` in the profile or pass --mirror"
    )]
    NoMirror,
    #[error("{}: InRelease of {suite}: {reason}", url)]
    Release {
        url: String,
        suite: String,
        reason: String,
    },
    #[error("keyring {path}: {reason}")]
    Keyring { path: PathBuf, reason: String },
    #[error("{0}")]
    Index(String),
    #[error(
        "{lock}: the entry for profile {profile} is missing or stale (the profile changed); run `slipway lock`"
    )]
    StaleLock { lock: PathBuf, profile: String },
    #[error("{0}")]
    Lock(String),
    #[error("{0}")]
    Unpack(String),
    #[error("configuring the tree: {0}")]
    Configure(String),
    #[error("kernel module indexes: {0}")]
    Depmod(String),
    #[error("the hardware database: {0}")]
    Hwdb(String),
    #[error(transparent)]
    Kube(#[from] crate::kube::KubeError),
    /// Boxed: the largest error by far, and rare.
    #[error(transparent)]
    Oci(Box<crate::oci::OciError>),
}

/// Where a build finds and keeps things.
#[derive(Debug, Clone)]
pub struct Options {
    pub data: DataDir,
    pub cache: PathBuf,
    pub lock_path: PathBuf,
    /// Overrides the profile's mirror and the host's apt sources.
    pub mirror: Option<String>,
    /// Where to read apt sources from ("/" normally; tests point elsewhere).
    pub host_root: PathBuf,
    /// Fail instead of resolving when the lock entry is missing or stale.
    pub locked: bool,
    pub source_date_epoch: u64,
    /// `SLIPWAY_KUBE_ARTIFACTS`: the Kubernetes release tree read instead of the
    /// release server.
    pub kube_artifacts: Option<PathBuf>,
}

/// The default download cache: `$SLIPWAY_CACHE`, else `$XDG_CACHE_HOME/slipway`, else
/// `~/.cache/slipway`.
pub fn default_cache() -> PathBuf {
    if let Some(p) = std::env::var_os("SLIPWAY_CACHE") {
        return PathBuf::from(p);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/var/cache"));
    base.join("slipway")
}

/// SOURCE_DATE_EPOCH from the environment, if set and valid.
pub fn source_date_epoch_env() -> Option<u64> {
    std::env::var("SOURCE_DATE_EPOCH").ok()?.trim().parse().ok()
}

fn mirror(profile: &ImageProfile, opts: &Options) -> Result<String, RootfsError> {
    if let Some(m) = opts.mirror.clone().or_else(|| profile.mirror.clone()) {
        return Ok(m.trim_end_matches('/').to_string());
    }
    sources::pick_debian_mirror(&sources::host_debian_uris(&opts.host_root))
        .ok_or(RootfsError::NoMirror)
}

/// Resolves a profile against its mirror's signed indexes (network).
pub fn resolve_profile(
    profile: &ImageProfile,
    opts: &Options,
    cache: &Cache,
) -> Result<LockedProfile, RootfsError> {
    let mirror = mirror(profile, opts)?;
    let keyring_bytes = std::fs::read(&profile.keyring).map_err(|e| RootfsError::Keyring {
        path: profile.keyring.clone(),
        reason: e.to_string(),
    })?;
    let keyring = release::load_keyring(&keyring_bytes).map_err(|reason| RootfsError::Keyring {
        path: profile.keyring.clone(),
        reason,
    })?;
    let url = format!("{mirror}/dists/{}/InRelease", profile.suite);
    let text = cache.get_text(&url)?;
    let rel = release::verify(&text, &keyring).map_err(|reason| RootfsError::Release {
        url: url.clone(),
        suite: profile.suite.clone(),
        reason,
    })?;
    let mut index = Index::default();
    for comp in &profile.components {
        let path = format!("{comp}/binary-{}/Packages.xz", profile.architecture);
        let (size, sha256) =
            rel.sha256
                .get(&path)
                .cloned()
                .ok_or_else(|| RootfsError::Release {
                    url: url.clone(),
                    suite: profile.suite.clone(),
                    reason: format!("lists no {path}"),
                })?;
        let want = Want {
            url: format!("{mirror}/dists/{}/{path}", profile.suite),
            size,
            sha256,
        };
        let blob = cache.ensure_all(std::slice::from_ref(&want), "index")?;
        let raw = std::fs::read(&blob[0])
            .map_err(|e| RootfsError::Index(format!("{}: {e}", blob[0].display())))?;
        let mut text = String::new();
        liblzma::read::XzDecoder::new(&raw[..])
            .read_to_string(&mut text)
            .map_err(|e| RootfsError::Index(format!("{}: {e}", want.url)))?;
        index
            .add(&want.url, &text, &profile.architecture)
            .map_err(RootfsError::Index)?;
    }
    let names = resolve::resolve(&index, &profile.packages, true)?;
    let pin = |p: &packages::Package| LockedPackage {
        name: p.name.clone(),
        version: p.version.to_string(),
        architecture: p.architecture.clone(),
        filename: p.filename.clone(),
        size: p.size,
        sha256: p.sha256.clone(),
    };
    let packages = names.iter().map(|n| pin(&index.packages[n])).collect();
    // Container images take exactly the packages they name: no dependencies.
    let image_packages = profile
        .image_packages()
        .iter()
        .map(|n| {
            index.packages.get(n).map(pin).ok_or_else(|| {
                RootfsError::Index(format!(
                    "profile {}: the deb: image package {n:?} is not in {} {} ({})",
                    profile.name,
                    profile.suite,
                    profile.components.join(" "),
                    profile.architecture
                ))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(LockedProfile {
        inputs: lock::inputs_hash(profile),
        suite: rel.suite,
        codename: rel.codename,
        packages,
        image_packages,
    })
}

/// `slipway lock [--kubernetes VERSION]`: resolves each profile's packages against its
/// mirror and, for each VERSION, pins the profiles' Kubernetes binaries and images
/// ([`lock_kubernetes`]); the lock is written once, when all of it succeeded, so a
/// refusal anywhere leaves the previous lock as it was.
pub fn refresh_lock(
    profiles: &[String],
    kubernetes: &[String],
    opts: &Options,
) -> Result<Lock, RootfsError> {
    let cache = Cache::new(&opts.cache);
    let mut lock = Lock::load(&opts.lock_path).map_err(RootfsError::Lock)?;
    pin_kubernetes(&mut lock, kubernetes, profiles, opts, &cache)?;
    for name in profiles {
        let p = ImageProfile::load(&opts.data.root, name)?;
        let entry = resolve_profile(&p, opts, &cache)?;
        lock.profiles.insert(p.name.clone(), entry);
    }
    save_lock(&lock, &opts.lock_path)?;
    Ok(lock)
}

/// `slipway lock --kubernetes VERSION` without refreshing the packages: pins the
/// profiles' Kubernetes binaries at each version (their published SHA-512) and their
/// `[kubernetes] images` (each tag's digest in its registry now) into the lock.
pub fn lock_kubernetes(
    versions: &[String],
    profiles: &[String],
    opts: &Options,
) -> Result<Lock, RootfsError> {
    let cache = Cache::new(&opts.cache);
    let mut lock = Lock::load(&opts.lock_path).map_err(RootfsError::Lock)?;
    pin_kubernetes(&mut lock, versions, profiles, opts, &cache)?;
    save_lock(&lock, &opts.lock_path)?;
    Ok(lock)
}

fn pin_kubernetes(
    lock: &mut Lock,
    versions: &[String],
    profiles: &[String],
    opts: &Options,
    cache: &Cache,
) -> Result<(), RootfsError> {
    let client = crate::oci::Client::new(cache);
    for version in versions {
        let mut pins = crate::kube::LockedRelease::default();
        for name in profiles {
            let p = ImageProfile::load(&opts.data.root, name)?;
            let source = crate::kube::Source::of(&p, opts.kube_artifacts.as_deref(), &cache.agent);
            let missing: Vec<String> = p
                .kube_binaries
                .iter()
                .filter(|b| !pins.binaries.contains_key(*b))
                .cloned()
                .collect();
            pins.binaries.extend(crate::kube::pin(
                &source,
                version,
                &p.architecture,
                &missing,
            )?);
            for image in p.kube_image_names(version) {
                if let std::collections::btree_map::Entry::Vacant(slot) = pins.images.entry(image) {
                    let r = client
                        .resolve(slot.key())
                        .map_err(|e| RootfsError::Oci(Box::new(e)))?;
                    slot.insert(format!("sha256:{}", r.sha256));
                }
            }
        }
        lock.kubernetes.insert(version.clone(), pins);
    }
    Ok(())
}

/// `slipway fetch --kubernetes VERSION`: everything slipway.lock pins at each version for
/// the profiles (release binaries, images) into the cache, verified, so that builds need
/// no network. Returns what was fetched or found cached, one line each.
pub fn fetch_kubernetes(
    versions: &[String],
    profiles: &[String],
    opts: &Options,
) -> Result<Vec<String>, RootfsError> {
    let cache = Cache::new(&opts.cache);
    let client = crate::oci::Client::new(&cache);
    let lock = Lock::load(&opts.lock_path).map_err(RootfsError::Lock)?;
    let unpinned = |what: &str, version: &str| {
        RootfsError::Lock(format!(
            "{}: {what} is not pinned at {version}; run `slipway lock --kubernetes {version}`",
            opts.lock_path.display()
        ))
    };
    let mut done: Vec<String> = Vec::new();
    for version in versions {
        let pins = lock
            .kubernetes
            .get(version)
            .ok_or_else(|| unpinned("Kubernetes", version))?;
        for name in profiles {
            let p = ImageProfile::load(&opts.data.root, name)?;
            let source = crate::kube::Source::of(&p, opts.kube_artifacts.as_deref(), &cache.agent);
            for b in &p.kube_binaries {
                let line = format!("{b} {version}");
                if done.contains(&line) {
                    continue;
                }
                let pin = pins.binaries.get(b).ok_or_else(|| unpinned(b, version))?;
                crate::kube::fetch(&source, &opts.cache, version, &p.architecture, b, pin)?;
                done.push(line);
            }
            for image in p.kube_image_names(version) {
                let pinned = pins
                    .image(&image)
                    .ok_or_else(|| unpinned(&image, version))?;
                if done.contains(&pinned) {
                    continue;
                }
                let oci = |e| RootfsError::Oci(Box::new(e));
                let r: crate::oci::Reference = pinned.parse().map_err(oci)?;
                client.pull(&r).map_err(oci)?;
                done.push(pinned);
            }
        }
    }
    Ok(done)
}

fn save_lock(lock: &Lock, path: &Path) -> Result<(), RootfsError> {
    let text = lock.to_text().map_err(RootfsError::Lock)?;
    crate::fsutil::write_atomic(path, text.as_bytes(), 0o644)
        .map_err(|e| RootfsError::Lock(format!("writing {}: {e}", path.display())))
}

/// A built root filesystem.
pub struct Rootfs {
    pub profile: ImageProfile,
    pub tree: Tree,
    pub locked: LockedProfile,
    /// The cached `.deb` of each of `locked.image_packages`, by package name.
    pub image_debs: BTreeMap<String, PathBuf>,
    /// Whether the lock file was (re)written.
    pub lock_updated: bool,
}

/// The locked package set of a profile, resolving (and writing the lock) when the entry
/// is missing or stale and `opts.locked` allows it. Returns the entry and whether the lock
/// file was written.
fn locked_profile(
    profile: &ImageProfile,
    opts: &Options,
    cache: &Cache,
) -> Result<(LockedProfile, bool), RootfsError> {
    let mut lock = Lock::load(&opts.lock_path).map_err(RootfsError::Lock)?;
    if let Some(l) = lock.fresh(profile) {
        return Ok((l.clone(), false));
    }
    if opts.locked {
        return Err(RootfsError::StaleLock {
            lock: opts.lock_path.clone(),
            profile: profile.name.clone(),
        });
    }
    let l = resolve_profile(profile, opts, cache)?;
    lock.profiles.insert(profile.name.clone(), l.clone());
    save_lock(&lock, &opts.lock_path)?;
    Ok((l, true))
}

/// Downloads (or verifies in the cache) every package of the locked set. The mirror is
/// needed only for what is missing.
fn fetch_locked(
    profile: &ImageProfile,
    locked: &LockedProfile,
    opts: &Options,
    cache: &Cache,
) -> Result<Vec<PathBuf>, RootfsError> {
    let mirror_for_urls = mirror(profile, opts).unwrap_or_default();
    let wants: Vec<Want> = locked
        .packages
        .iter()
        .chain(&locked.image_packages)
        .map(|p| Want {
            url: format!("{mirror_for_urls}/{}", p.filename),
            size: p.size,
            sha256: p.sha256.clone(),
        })
        .collect();
    if mirror_for_urls.is_empty() {
        for w in &wants {
            if cache.verified(w)?.is_none() {
                return Err(RootfsError::NoMirror);
            }
        }
    }
    Ok(cache.ensure_all(&wants, "packages")?)
}

/// The profile's lock entry, resolved (and the lock file written) when missing or stale
/// and `opts.locked` allows it; nothing is downloaded.
pub fn ensure_locked(profile_name: &str, opts: &Options) -> Result<bool, RootfsError> {
    let profile = ImageProfile::load(&opts.data.root, profile_name)?;
    let cache = Cache::new(&opts.cache);
    Ok(locked_profile(&profile, opts, &cache)?.1)
}

/// `slipway fetch`: the profile's packages into the cache, for building offline later.
pub fn fetch(profile_name: &str, opts: &Options) -> Result<(LockedProfile, bool), RootfsError> {
    let profile = ImageProfile::load(&opts.data.root, profile_name)?;
    let cache = Cache::new(&opts.cache);
    let (locked, updated) = locked_profile(&profile, opts, &cache)?;
    fetch_locked(&profile, &locked, opts, &cache)?;
    Ok((locked, updated))
}

/// Builds the tree of `profile`.
pub fn build(profile_name: &str, opts: &Options) -> Result<Rootfs, RootfsError> {
    build_shared(profile_name, opts, None)
}

/// [`build`], taking unpacked packages from (and adding them to) `shared`.
pub fn build_shared(
    profile_name: &str,
    opts: &Options,
    shared: Option<&SharedDebs>,
) -> Result<Rootfs, RootfsError> {
    // 1. profile and lock
    let profile = ImageProfile::load(&opts.data.root, profile_name)?;
    let cache = Cache::new(&opts.cache);
    let (locked, lock_updated) = locked_profile(&profile, opts, &cache)?;

    // 2. packages into the cache
    let mut blobs = fetch_locked(&profile, &locked, opts, &cache)?;
    let image_blobs = blobs.split_off(locked.packages.len());
    let image_debs = locked
        .image_packages
        .iter()
        .map(|p| p.name.clone())
        .zip(image_blobs)
        .collect();

    // 3. unpack: read and decompress in parallel, lay into the tree in name order
    let debs = read_debs(&locked.packages, &blobs, shared, &opts.cache)?;
    let mut tree = Tree::new_merged_usr();
    let unpacked: Vec<_> = debs.into_iter().map(|d| d.apply(&mut tree)).collect();

    // 4. what the maintainer scripts would have done
    let rules_path = opts.data.root.join("profiles/debian/maintscripts.toml");
    let rules_text = std::fs::read_to_string(&rules_path).map_err(|source| ProfileError::Io {
        path: rules_path.clone(),
        source,
    })?;
    let rules: configure::Rules = toml::from_str(&rules_text).map_err(|e| ProfileError::Parse {
        path: rules_path.clone(),
        message: e.to_string().trim_end().to_string(),
    })?;
    let overlay = opts.data.overlays().join("rootfs");
    lay_overlay(&mut tree, &overlay)?;
    let version = &locked.inputs[..12];
    let image_id = format!("slipway-{}", profile.name);
    configure::configure(
        &mut tree,
        &unpacked,
        &rules,
        &configure::Identity {
            image_id: &image_id,
            image_version: version,
        },
        opts.source_date_epoch,
    )
    .map_err(RootfsError::Configure)?;
    // 5. what the kernel's postinst would have done
    depmod::run(&mut tree, &opts.cache).map_err(RootfsError::Depmod)?;
    // 6. what systemd-hwdb-update would do at first boot
    hwdb::run(&mut tree, &opts.cache).map_err(RootfsError::Hwdb)?;
    Ok(Rootfs {
        profile,
        tree,
        locked,
        image_debs,
        lock_updated,
    })
}

/// Unpacked packages shared between root filesystem builds in one process (`slipway
/// build` makes several roles from mostly the same packages), keyed by SHA-256. Each
/// package is decompressed once: the first build to need it does, others wait for it.
#[derive(Default)]
pub struct SharedDebs {
    map: std::sync::Mutex<std::collections::HashMap<String, Arc<DebCell>>>,
}

/// One package, unpacked by whichever build needed it first.
type DebCell = std::sync::OnceLock<Result<extract::Deb, String>>;

impl SharedDebs {
    fn get(
        &self,
        sha256: &str,
        read: impl FnOnce() -> Result<extract::Deb, String>,
    ) -> Result<extract::Deb, String> {
        let cell = match self.map.lock() {
            Ok(mut m) => m.entry(sha256.to_string()).or_default().clone(),
            Err(_) => return read(),
        };
        cell.get_or_init(read).clone()
    }
}

/// Where packages recompressed by [`extract::read_recompressed`] are kept, by the
/// SHA-256 of the package they were made from.
const RECOMPRESSED_DIR: &str = "deb-zstd";

/// Reads a verified package `blob` (SHA-256 `sha256`): from its zstd recompression in
/// the cache when there is one, else from the package itself, keeping the recompression
/// for the next build (xz decompression was half of a warm build's time; zstd reads
/// the same members ten times faster). Made only from a package that was verified
/// against the lock in the same build, as depmod's output is from its modules.
pub(crate) fn read_deb(
    name: &str,
    sha256: &str,
    blob: &Path,
    cache: &Path,
) -> Result<extract::Deb, String> {
    let kept = cache.join(RECOMPRESSED_DIR).join(sha256);
    if let Ok(bytes) = std::fs::read(&kept)
        && let Ok(deb) = extract::read(name, &bytes)
    {
        return Ok(deb);
    }
    let bytes = std::fs::read(blob).map_err(|e| format!("{}: {e}", blob.display()))?;
    let (deb, recompressed) = extract::read_recompressed(name, &bytes)?;
    // Best effort: without it the next build reads the package again.
    if let Some(dir) = kept.parent()
        && std::fs::create_dir_all(dir).is_ok()
    {
        let _ = crate::fsutil::write_replacing(&kept, &recompressed, 0o644);
    }
    Ok(deb)
}

/// Reads every .deb on a few threads (decompression dominates), keeping their order.
fn read_debs(
    packages: &[LockedPackage],
    blobs: &[PathBuf],
    shared: Option<&SharedDebs>,
    cache: &Path,
) -> Result<Vec<extract::Deb>, RootfsError> {
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    // Biggest first, so the kernel does not start last.
    let mut order: Vec<usize> = (0..packages.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(packages[i].size));
    let queue = std::sync::Mutex::new(order.into_iter());
    let mut slots: Vec<Option<Result<extract::Deb, String>>> =
        (0..packages.len()).map(|_| None).collect();
    let results = std::sync::Mutex::new(&mut slots);
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                loop {
                    let Some(i) = queue.lock().ok().and_then(|mut q| q.next()) else {
                        return;
                    };
                    let read =
                        || read_deb(&packages[i].name, &packages[i].sha256, &blobs[i], cache);
                    let r = match shared {
                        Some(sh) => sh.get(&packages[i].sha256, read),
                        None => read(),
                    };
                    if let Ok(mut slots) = results.lock() {
                        slots[i] = Some(r);
                    }
                }
            });
        }
    });
    slots
        .into_iter()
        .map(|r| {
            r.unwrap_or_else(|| Err("a reader thread stopped".into()))
                .map_err(RootfsError::Unpack)
        })
        .collect()
}

/// Copies the plain files of an overlay tree into the image tree (0644, or 0755 where
/// the source is executable).
fn lay_overlay(tree: &mut Tree, dir: &Path) -> Result<(), RootfsError> {
    use std::os::unix::fs::PermissionsExt;
    for p in crate::profile::walk(dir)? {
        let io = |source| ProfileError::Io {
            path: p.clone(),
            source,
        };
        let bytes = std::fs::read(&p).map_err(io)?;
        let exec = std::fs::metadata(&p).map_err(io)?.permissions().mode() & 0o111 != 0;
        let rel = p
            .strip_prefix(dir)
            .unwrap_or(&p)
            .to_string_lossy()
            .into_owned();
        tree.insert(&rel, Entry::file(bytes, if exec { 0o755 } else { 0o644 }));
    }
    Ok(())
}

/// Writes the tree as a reproducible tar to `out` (atomically) and the SBOM beside it
/// (`out` with `.spdx.json`). Returns the tar's SHA-256.
pub fn write_outputs(r: &Rootfs, out: &Path, source_date_epoch: u64) -> std::io::Result<String> {
    use sha2::{Digest, Sha256};
    /// Hashes what passes through on its way to the file.
    struct Hashing<'a> {
        inner: &'a mut dyn std::io::Write,
        hash: Sha256,
    }
    impl std::io::Write for Hashing<'_> {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let n = self.inner.write(buf)?;
            self.hash.update(&buf[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            self.inner.flush()
        }
    }
    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    let sha = crate::fsutil::write_atomic_with(out, 0o644, |w| {
        let h = Hashing {
            inner: w,
            hash: Sha256::new(),
        };
        let h = crate::image::tar::write(&r.tree, source_date_epoch, h)?;
        Ok(hex::encode(h.hash.finalize()))
    })?;
    let sbom = sbom::spdx(
        &r.profile.name,
        &r.locked.codename,
        &r.locked.packages,
        source_date_epoch,
    );
    let sbom_path = sbom_path(out);
    let text = serde_json::to_vec_pretty(&sbom).map_err(std::io::Error::other)?;
    crate::fsutil::write_atomic(&sbom_path, &text, 0o644)?;
    Ok(sha)
}

pub fn sbom_path(out: &Path) -> PathBuf {
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let stem = name.strip_suffix(".tar").unwrap_or(&name);
    out.with_file_name(format!("{stem}.spdx.json"))
}
