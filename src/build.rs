//! `slipway build`: the cluster's bootable disks.
//!
//! 1. cluster, secrets and every node's rendered files (as `slipway render`);
//! 2. per role used by the cluster: its root tree, then [`RoleDisk`] (squashfs, verity,
//!    initramfs, UKI) - pure, in memory;
//! 3. `DIR/images/ROLE.raw` (+ `.qcow2`, `.spdx.json`), each written under a temporary
//!    name and renamed;
//! 4. `DIR/nodes/NAME/disk.raw` (the role disk with the node's config on its ESP) staged
//!    with the rendered files and swapped in with them;
//! 5. `DIR/manifest.json`: every artifact with its size and SHA-256.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::cluster::Role;
use crate::fsutil;
use crate::image::disk::{RoleDisk, RoleInputs};
use crate::image::gpt;
use crate::out::{self, OutError};
use crate::pipeline;
use crate::rootfs::{self, RootfsError};

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Pipeline(#[from] pipeline::Error),
    #[error("role {role}: {source}")]
    Rootfs {
        role: String,
        #[source]
        source: RootfsError,
    },
    #[error("slipway-init {path}: {reason}")]
    Init { path: PathBuf, reason: String },
    #[error("slipway-pause {path}: {reason}")]
    Pause { path: PathBuf, reason: String },
    #[error("role {role}: {reason}")]
    Image { role: String, reason: String },
    #[error("writing output")]
    Out(#[from] OutError),
    #[error("{what}: {reason}")]
    Tool { what: String, reason: String },
}

/// How to build.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    pub rootfs: rootfs::Options,
    pub secrets_dir: PathBuf,
    /// The statically linked slipway-init; slipway-pause (the pod sandbox image's
    /// binary) is taken from the same directory.
    pub init: PathBuf,
    /// Also write `images/ROLE.qcow2` (qemu-img).
    pub qcow2: bool,
    /// Progress on stderr (when it is a terminal).
    pub progress: bool,
}

/// One file of the output, as manifest.json lists it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Artifact {
    /// Relative to the output directory.
    pub path: String,
    pub size: u64,
    pub sha256: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct RoleSummary {
    pub role: String,
    pub packages: usize,
    pub kernel: String,
    pub cmdline: String,
    pub root_hash: String,
    pub root_size: u64,
    pub root_slot: u64,
    pub esp_size: u64,
    pub disk_size: u64,
    pub initramfs_size: u64,
    pub initramfs_modules: Vec<String>,
}

/// A container image in the OS image.
#[derive(Debug, Clone, Serialize)]
pub struct BakedImage {
    pub name: String,
    /// The manifest's digest, as `ctr images ls` shows it.
    pub digest: String,
    /// Where in the root filesystem the OCI archive lies.
    pub path: String,
    pub size: u64,
    /// What it was made from.
    pub source: String,
    /// The roles whose images carry it.
    pub roles: Vec<String>,
}

/// Where baked image archives lie in the root filesystem.
pub const IMAGES_DIR: &str = "usr/share/slipway/images";

/// What `DIR/manifest.json` holds and `--json` prints.
#[derive(Debug, Clone, Serialize)]
pub struct Manifest {
    pub cluster: String,
    pub source_date_epoch: u64,
    pub roles: Vec<RoleSummary>,
    /// Node name -> role.
    pub nodes: BTreeMap<String, String>,
    /// Container images baked into every role's image and imported into containerd
    /// before kubelet starts.
    pub images: Vec<BakedImage>,
    /// The Kubernetes binaries in the images, at the cluster's version.
    pub kubernetes: KubeSummary,
    pub artifacts: Vec<Artifact>,
    #[serde(skip)]
    pub warnings: Vec<String>,
    #[serde(skip)]
    pub seconds: f64,
}

/// What the images carry of Kubernetes' own binaries.
#[derive(Debug, Clone, Default, Serialize)]
pub struct KubeSummary {
    /// cluster.toml's `kubernetes_version`.
    pub version: String,
    pub binaries: Vec<KubeBinary>,
    /// Binaries and images (`[kubernetes]` in the profiles) that slipway.lock does not
    /// pin at this version: the images were built without them.
    pub missing: Vec<String>,
}

impl KubeSummary {
    /// The images carry everything of Kubernetes their profiles name, kubelet among it.
    pub fn complete(&self) -> bool {
        self.missing.is_empty() && self.binaries.iter().any(|b| b.name == "kubelet")
    }
}

/// One Kubernetes binary, as installed at `/usr/bin/NAME`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KubeBinary {
    pub name: String,
    pub url: String,
    pub sha512: String,
    pub roles: Vec<String>,
}

/// A labelled spinner for one step, hidden unless progress is wanted.
fn step(progress: bool, msg: String) -> (ProgressBar, Instant) {
    let bar = if progress {
        ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr())
    } else {
        ProgressBar::hidden()
    };
    spin(bar, msg)
}

/// A spinner for one step of a role, on the roles' shared progress display.
fn role_step(mp: &MultiProgress, msg: String) -> (ProgressBar, Instant) {
    spin(mp.add(ProgressBar::new_spinner()), msg)
}

fn spin(bar: ProgressBar, msg: String) -> (ProgressBar, Instant) {
    bar.set_style(
        ProgressStyle::with_template("{spinner} {msg} {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    bar.set_message(msg);
    bar.enable_steady_tick(Duration::from_millis(120));
    (bar, Instant::now())
}

fn done(bar: ProgressBar, t: Instant) {
    let msg = format!("{} ({:.1} s)", bar.message(), t.elapsed().as_secs_f64());
    bar.finish_with_message(msg);
}

/// A statically linked program the images carry (slipway-init, slipway-pause): read, and
/// refused if it needs a dynamic loader. `hint` says where it comes from.
fn read_static(path: &Path, hint: &str) -> Result<Vec<u8>, String> {
    let bytes = fs::read(path).map_err(|e| format!("{e} ({hint})"))?;
    crate::image::initramfs::check_static_init(&bytes)?;
    Ok(bytes)
}

/// Builds every disk of the cluster at `cluster_path` into `out_dir`.
pub fn build(
    cluster_path: &Path,
    opts: &BuildOptions,
    out_dir: &Path,
) -> Result<Manifest, BuildError> {
    let started = Instant::now();
    let init =
        read_static(&opts.init, "build it with `make init`, or pass --init").map_err(|reason| {
            BuildError::Init {
                path: opts.init.clone(),
                reason,
            }
        })?;
    let epoch = opts.rootfs.source_date_epoch;
    let pause_path = opts.init.with_file_name("slipway-pause");
    let pause = read_static(&pause_path, "`make init` builds it beside slipway-init").map_err(
        |reason| BuildError::Pause {
            path: pause_path.clone(),
            reason,
        },
    )?;

    // 1. model, secrets, rendered nodes (pure apart from the secrets directory)
    let prepared = pipeline::prepare(cluster_path, &opts.secrets_dir, &opts.rootfs.data)?;
    let cluster = &prepared.cluster;
    let rendered = &prepared.nodes;

    // Container images every node runs, baked in so that no node pulls them: the pod
    // sandbox (pause) image under the name containerd is configured with.
    let pause_image = crate::oci::archive::build(
        &cluster.images.pause(),
        &[crate::oci::archive::ImageFile {
            path: "/pause".into(),
            mode: 0o755,
            bytes: pause,
        }],
        &["/pause"],
        epoch,
    )
    .map_err(|reason| BuildError::Pause {
        path: pause_path.clone(),
        reason,
    })?;
    let pause_sha = hex::encode(Sha256::digest(&pause_image.bytes));
    let baked = vec![(
        pause_image,
        format!("slipway-pause (archive sha256:{pause_sha})"),
    )];

    // 2. one disk per role the cluster uses
    let mut roles: Vec<Role> = cluster.nodes.iter().map(|n| n.role).collect();
    roles.sort_by_key(|r| r.as_str());
    roles.dedup();
    let images = out_dir.join("images");
    fs::create_dir_all(&images).map_err(|e| OutError::new("creating", &images, e))?;
    let pxe = out_dir.join("pxe");
    // Lock entries first, one role after the other (resolving may rewrite the lock file,
    // which two threads must not do at once).
    for role in &roles {
        rootfs::ensure_locked(role.as_str(), &opts.rootfs).map_err(|source| {
            BuildError::Rootfs {
                role: role.as_str().into(),
                source,
            }
        })?;
    }
    // The roles are built side by side: each is mostly one thread of squashfs
    // compression and hashing once its packages are unpacked.
    let mp = MultiProgress::with_draw_target(if opts.progress {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    });
    let shared = rootfs::SharedDebs::default();
    // The Kubernetes binaries pinned at the cluster's version, if any.
    let lock = crate::debian::lock::Lock::load(&opts.rootfs.lock_path).map_err(|reason| {
        BuildError::Rootfs {
            role: "all".into(),
            source: rootfs::RootfsError::Lock(reason),
        }
    })?;
    let kube_pins = lock.kubernetes.get(&cluster.kubernetes.tag);
    let v = &cluster.kubernetes.tag;
    let ctx = RoleContext {
        kube_version: v,
        kube_pins,
        baked: &baked,
        etcd_image: &cluster.images.etcd,
        component_images: crate::cluster::CONTROL_PLANE_COMPONENTS
            .iter()
            .map(|c| cluster.images.component(c, v))
            .collect(),
        shared: &shared,
        opts,
        init: &init,
        images: &images,
        pxe: &pxe,
        epoch,
        mp: &mp,
    };
    let built: Vec<RoleBuilt> = std::thread::scope(|s| {
        let handles: Vec<_> = roles
            .iter()
            .map(|&role| {
                let ctx = &ctx;
                s.spawn(move || build_role(role, ctx))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect::<Result<_, _>>()
    })?;
    let mut disks: BTreeMap<Role, RoleDisk> = BTreeMap::new();
    let mut summaries = Vec::new();
    let mut known: BTreeMap<String, Artifact> = BTreeMap::new();
    let mut baked_images: Vec<BakedImage> = Vec::new();
    let mut installs = BTreeMap::new();
    let mut kubernetes = KubeSummary {
        version: cluster.kubernetes.tag.clone(),
        ..KubeSummary::default()
    };
    for b in built {
        for k in b.kube {
            match kubernetes.binaries.iter_mut().find(|x| x.name == k.name) {
                Some(x) => x.roles.extend(k.roles),
                None => kubernetes.binaries.push(k),
            }
        }
        for m in b.kube_missing {
            if !kubernetes.missing.contains(&m) {
                kubernetes.missing.push(m);
            }
        }
        installs.insert(b.role, b.install);
        for i in &b.images {
            match baked_images
                .iter_mut()
                .find(|x| x.name == i.name && x.digest == i.digest)
            {
                Some(x) => x.roles.extend(i.roles.iter().cloned()),
                None => baked_images.push(i.clone()),
            }
        }
        summaries.push(b.summary);
        known.extend(b.artifacts.into_iter().map(|a| (a.path.clone(), a)));
        disks.insert(b.role, b.disk);
    }

    write_pxe_scripts(out_dir, cluster, &installs)?;

    // 3. nodes: rendered files, config.ign and disk.raw, swapped in together
    let (bar, t) = step(opts.progress, format!("{} node disks", rendered.len()));
    let node_hashes = std::sync::Mutex::new(Vec::new());
    out::write_nodes_with(
        out_dir,
        &prepared.outputs(),
        &prepared.admin_kubeconfig,
        |staged| {
            let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
            let queue = std::sync::Mutex::new(rendered.iter());
            std::thread::scope(|s| {
                let workers: Vec<_> = (0..threads)
                    .map(|_| {
                        s.spawn(|| -> Result<(), OutError> {
                            loop {
                                let next = queue.lock().ok().and_then(|mut q| q.next());
                                let Some((node, json)) = next else {
                                    return Ok(());
                                };
                                let disk = &disks[&node.role];
                                let path = staged.join(&node.name).join("disk.raw");
                                let esp = disk.esp(Some(json)).map_err(|e| {
                                    OutError::new("building", &path, io::Error::other(e))
                                })?;
                                let (size, sha256) =
                                    write_disk(&path, disk, &esp, &node.name, 0o600)?;
                                if let Ok(mut v) = node_hashes.lock() {
                                    v.push(Artifact {
                                        path: format!("nodes/{}/disk.raw", node.name),
                                        size,
                                        sha256,
                                    });
                                }
                            }
                        })
                    })
                    .collect();
                workers
                    .into_iter()
                    .try_for_each(|w| w.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            })
        },
    )?;
    known.extend(
        node_hashes
            .into_inner()
            .unwrap_or_default()
            .into_iter()
            .map(|a| (a.path.clone(), a)),
    );
    done(bar, t);

    // 4. manifest
    let (bar, t) = step(
        opts.progress,
        "manifest.json (SHA-256 of every artifact)".into(),
    );
    let artifacts = hash_artifacts(out_dir, &known)?;
    let manifest = Manifest {
        cluster: cluster.name.clone(),
        source_date_epoch: epoch,
        roles: summaries,
        nodes: cluster
            .nodes
            .iter()
            .map(|n| (n.name.clone(), n.role.as_str().to_string()))
            .collect(),
        images: baked_images,
        artifacts,
        warnings: {
            let mut w = prepared.warnings.clone();
            if !kubernetes.missing.is_empty() {
                w.push(format!(
                    "the images carry none of {} at {}: slipway.lock does not pin them (run `slipway lock --kubernetes {}` where the release server and the image registries are reachable; {}=DIR reads the binaries from a copy of the release tree); kubelet.service is skipped on nodes without kubelet, and a node pulls what it lacks",
                    kubernetes.missing.join(", "),
                    kubernetes.version,
                    kubernetes.version,
                    crate::kube::ARTIFACTS_ENV
                ));
            }
            w
        },
        kubernetes,
        seconds: 0.0,
    };
    let path = out_dir.join("manifest.json");
    let mut text = serde_json::to_vec_pretty(&manifest)
        .map_err(|e| OutError::new("serializing", &path, io::Error::other(e)))?;
    text.push(b'\n');
    fsutil::write_atomic(&path, &text, 0o644).map_err(|e| OutError::new("writing", &path, e))?;
    done(bar, t);
    Ok(Manifest {
        seconds: started.elapsed().as_secs_f64(),
        ..manifest
    })
}

/// What a role's build shares with the other roles'.
struct RoleContext<'a> {
    /// cluster.toml's `kubernetes_version` and what slipway.lock pins at it.
    kube_version: &'a str,
    kube_pins: Option<&'a crate::kube::LockedRelease>,
    /// Container images for every role, with their sources.
    baked: &'a [(crate::oci::archive::ImageArchive, String)],
    /// The etcd static pod's image: the control-plane role must carry it.
    etcd_image: &'a str,
    /// The other static pods' images (kube-apiserver, ...): the control-plane role
    /// carries them, or they are pinned nowhere and reported missing.
    component_images: Vec<String>,
    shared: &'a rootfs::SharedDebs,
    opts: &'a BuildOptions,
    init: &'a [u8],
    images: &'a Path,
    /// `DIR/pxe`: network-install files.
    pxe: &'a Path,
    epoch: u64,
    mp: &'a MultiProgress,
}

struct RoleBuilt {
    role: Role,
    /// Kubernetes binaries installed, and those not pinned (left out).
    kube: Vec<KubeBinary>,
    kube_missing: Vec<String>,
    /// The container images in its root.
    images: Vec<BakedImage>,
    disk: RoleDisk,
    /// What its nodes' iPXE scripts need.
    install: crate::pxe::RoleInstall,
    summary: RoleSummary,
    /// The role's images, hashed as they were written.
    artifacts: Vec<Artifact>,
}

/// One role: root tree, disk parts, `images/ROLE.{raw,qcow2,spdx.json}`.
fn build_role(role: Role, ctx: &RoleContext<'_>) -> Result<RoleBuilt, BuildError> {
    let name = role.as_str();
    let image_err = |reason| BuildError::Image {
        role: name.into(),
        reason,
    };
    let (bar, t) = role_step(ctx.mp, format!("{name}: root filesystem"));
    let mut r =
        rootfs::build_shared(name, &ctx.opts.rootfs, Some(ctx.shared)).map_err(|source| {
            BuildError::Rootfs {
                role: name.into(),
                source,
            }
        })?;
    done(bar, t);
    // Kubernetes binaries, where slipway.lock pins them at the cluster's version.
    let mut kube = Vec::new();
    let mut kube_missing = Vec::new();
    let cache = crate::debian::fetch::Cache::new(&ctx.opts.rootfs.cache);
    let source = crate::kube::Source::of(
        &r.profile,
        ctx.opts.rootfs.kube_artifacts.as_deref(),
        &cache.agent,
    );
    for b in &r.profile.kube_binaries {
        let Some(pin) = ctx.kube_pins.and_then(|p| p.binaries.get(b)) else {
            kube_missing.push(b.clone());
            continue;
        };
        let bytes = crate::kube::fetch(
            &source,
            &ctx.opts.rootfs.cache,
            ctx.kube_version,
            &r.profile.architecture,
            b,
            pin,
        )
        .map_err(|e| image_err(e.to_string()))?;
        r.tree.insert(
            &format!("usr/bin/{b}"),
            crate::fs::Entry::file(bytes, 0o755),
        );
        kube.push(KubeBinary {
            name: b.clone(),
            url: pin.url.clone(),
            sha512: pin.sha512.clone(),
            roles: vec![name.to_string()],
        });
    }
    let (bar, t) = role_step(ctx.mp, format!("{name}: container images"));
    let mut archives: Vec<(crate::oci::archive::ImageArchive, String)> = ctx.baked.to_vec();
    for img in &r.profile.images {
        archives.retain(|(a, _)| a.name != img.name);
        archives.push(profile_image(img, &r, ctx, &cache).map_err(image_err)?);
    }
    // The release's images (kube-apiserver, ...) and add-ons' (CoreDNS, the CNI's), where
    // slipway.lock pins them at the cluster's version.
    let kube_images = r.profile.kube_image_names(ctx.kube_version);
    for image in &kube_images {
        let Some(pinned) = ctx.kube_pins.and_then(|p| p.image(image)) else {
            kube_missing.push(image.clone());
            continue;
        };
        archives.retain(|(a, _)| a.name != *image);
        archives.push(registry_image(image, &pinned, ctx, &cache).map_err(image_err)?);
    }
    if role == Role::ControlPlane {
        if !archives.iter().any(|(a, _)| a.name == ctx.etcd_image) {
            return Err(image_err(format!(
                "the etcd image {} (cluster.etcd_image) is not among the role's images; \
                 add it to the profile's [[images]] so that no node has to pull it",
                ctx.etcd_image
            )));
        }
        for c in &ctx.component_images {
            if !archives.iter().any(|(a, _)| a.name == *c) && !kube_images.contains(c) {
                return Err(image_err(format!(
                    "the static pod image {c} (cluster.image_repository and \
                     kubernetes_version) is not among the role's [kubernetes] images ({}); \
                     set the profile's [kubernetes] image_repository to cluster.image_repository",
                    kube_images.join(", ")
                )));
            }
        }
    }
    let mut baked = Vec::new();
    // What slipway-images.service imports and pins: "ARCHIVE NAME" per line.
    let mut list = String::new();
    for (image, source) in &archives {
        let file = archive_name(&image.name);
        list.push_str(&format!("{file} {}\n", image.name));
        let path = format!("{IMAGES_DIR}/{file}");
        r.tree
            .insert(&path, crate::fs::Entry::file(image.bytes.clone(), 0o644));
        baked.push(BakedImage {
            name: image.name.clone(),
            digest: format!("sha256:{}", image.manifest_sha256),
            path: format!("/{path}"),
            size: image.bytes.len() as u64,
            source: source.clone(),
            roles: vec![name.to_string()],
        });
    }
    r.tree.insert(
        &format!("{IMAGES_DIR}/images.list"),
        crate::fs::Entry::file(list.into_bytes(), 0o644),
    );
    done(bar, t);
    let (bar, t) = role_step(
        ctx.mp,
        format!("{name}: squashfs, dm-verity, initramfs, UKI"),
    );
    let disk = RoleDisk::assemble(
        &r.tree,
        &RoleInputs {
            name,
            init: ctx.init,
            modules: &r.profile.initramfs_modules,
            source_date_epoch: ctx.epoch,
        },
    )
    .map_err(image_err)?;
    done(bar, t);

    let (bar, t) = role_step(ctx.mp, format!("{name}: images/{name}.raw, pxe/{name}/"));
    let esp = disk.esp(None).map_err(image_err)?;
    let raw = ctx.images.join(format!("{name}.raw"));
    let image = lay_out(&disk, &esp, name, &raw)?;
    let mut hashed = (0, String::new());
    write_replacing(&raw, 0o644, |tmp| {
        hashed = write_sparse(tmp, &image, 0o644)?;
        Ok(())
    })?;
    let mut artifacts = write_pxe_role(ctx.pxe, &disk, &image)?;
    drop(image);
    let (size, sha256) = hashed;
    let install = crate::pxe::RoleInstall {
        role: name.into(),
        root_hash: disk.verity.root_hash_hex(),
        size,
        sha256: sha256.clone(),
    };
    artifacts.push(Artifact {
        path: format!("images/{name}.raw"),
        size,
        sha256,
    });
    let mut sbom_doc = rootfs::sbom::spdx(name, &r.locked.codename, &r.locked.packages, ctx.epoch);
    let images: Vec<(&str, &str)> = archives
        .iter()
        .map(|(a, _)| (a.name.as_str(), a.manifest_sha256.as_str()))
        .collect();
    rootfs::sbom::add_images(&mut sbom_doc, &images);
    let sbom_text = serde_json::to_vec_pretty(&sbom_doc)
        .map_err(|e| OutError::new("serializing the SBOM of", &raw, io::Error::other(e)))?;
    let sbom = rootfs::sbom_path(&ctx.images.join(format!("{name}.tar")));
    fsutil::write_atomic(&sbom, &sbom_text, 0o644)
        .map_err(|e| OutError::new("writing", &sbom, e))?;
    if ctx.opts.qcow2 {
        let qcow = ctx.images.join(format!("{name}.qcow2"));
        write_replacing(&qcow, 0o644, |tmp| qcow2(&raw, tmp))?;
        let (size, sha256) = hash_file(&qcow)?;
        artifacts.push(Artifact {
            path: format!("images/{name}.qcow2"),
            size,
            sha256,
        });
    }
    done(bar, t);
    let summary = RoleSummary {
        role: name.into(),
        packages: r.locked.packages.len(),
        kernel: disk.kernel_release.clone(),
        cmdline: disk.cmdline.clone(),
        root_hash: disk.verity.root_hash_hex(),
        root_size: disk.root.len() as u64,
        root_slot: disk.root_slot,
        esp_size: disk.esp_size,
        disk_size: disk.disk_size(),
        initramfs_size: disk.initramfs_size,
        initramfs_modules: disk.initramfs_modules.clone(),
    };
    Ok(RoleBuilt {
        role,
        kube,
        kube_missing,
        images: baked,
        disk,
        install,
        summary,
        artifacts,
    })
}

/// A profile's `[[images]]` entry as an archive, with its source for manifest.json:
/// pulled (verified) into the package cache and repacked with its digests unchanged, or
/// made from Debian packages or a directory's files.
fn profile_image(
    img: &crate::profile::image::ContainerImage,
    r: &rootfs::Rootfs,
    ctx: &RoleContext<'_>,
    cache: &crate::debian::fetch::Cache,
) -> Result<(crate::oci::archive::ImageArchive, String), String> {
    use crate::profile::image::ImageSource;
    let entry: Vec<&str> = img.entrypoint.iter().map(String::as_str).collect();
    match &img.source {
        ImageSource::Debian(names) => {
            // The packages' files over the merged-/usr links, as the root has them; no
            // maintainer scripts run (a container image has no init to configure).
            let mut tree = crate::fs::Tree::new_merged_usr();
            let mut pinned = Vec::new();
            for n in names {
                let (Some(p), Some(blob)) = (
                    r.locked.image_packages.iter().find(|p| p.name == *n),
                    r.image_debs.get(n),
                ) else {
                    return Err(format!(
                        "image {}: package {n} is not pinned in the lock",
                        img.name
                    ));
                };
                let bytes = fs::read(blob)
                    .map_err(|e| format!("image {}: {}: {e}", img.name, blob.display()))?;
                crate::debian::extract::read(n, &bytes)
                    .map_err(|e| format!("image {}: {e}", img.name))?
                    .apply(&mut tree);
                pinned.push(format!("{n}={}", p.version));
            }
            let missing = crate::oci::archive::missing_libraries(&tree);
            if !missing.is_empty() {
                return Err(format!(
                    "image {} (deb:{}): {}; name the packages that provide them in its source",
                    img.name,
                    names.join(","),
                    missing.join(", ")
                ));
            }
            let a = crate::oci::archive::build_tree(&img.name, &tree, &entry, ctx.epoch)?;
            Ok((a, format!("deb:{}", pinned.join(","))))
        }
        ImageSource::Registry(reference) => registry_image(&img.name, reference, ctx, cache),
        ImageSource::Dir { path: dir, written } => {
            use std::os::unix::fs::PermissionsExt;
            let mut files = Vec::new();
            let walked = crate::profile::walk(dir)
                .map_err(|e| format!("image {} (dir:{}): {e}", img.name, dir.display()))?;
            for p in walked {
                let err = |e: io::Error| format!("image {}: {}: {e}", img.name, p.display());
                let meta = fs::metadata(&p).map_err(err)?;
                let rel = p.strip_prefix(dir).unwrap_or(&p).to_string_lossy();
                files.push(crate::oci::archive::ImageFile {
                    path: format!("/{rel}"),
                    mode: meta.permissions().mode() & 0o7777,
                    bytes: fs::read(&p).map_err(err)?,
                });
            }
            if files.is_empty() {
                return Err(format!(
                    "image {} (dir:{}): the directory has no files",
                    img.name,
                    dir.display()
                ));
            }
            let a = crate::oci::archive::build(&img.name, &files, &entry, ctx.epoch)?;
            Ok((a, format!("dir:{written}")))
        }
    }
}

/// The image `reference` (pinned) pulled (verified) into the package cache and repacked
/// as `name`, its digests unchanged.
fn registry_image(
    name: &str,
    reference: &str,
    ctx: &RoleContext<'_>,
    cache: &crate::debian::fetch::Cache,
) -> Result<(crate::oci::archive::ImageArchive, String), String> {
    let r: crate::oci::Reference = reference.parse().map_err(|e| format!("{e}"))?;
    let pulled = crate::oci::Client::new(cache)
        .pull(&r)
        .map_err(|e| format!("image {name}: {e}"))?;
    let a = crate::oci::archive::from_pulled(name, &pulled, ctx.epoch)?;
    Ok((a, format!("oci:{reference}")))
}

/// The file name of an image's archive: its reference with `/` and `:` made safe.
fn archive_name(image: &str) -> String {
    format!("{}.tar", image.replace(['/', ':'], "_"))
}

/// Runs `write` on a temporary name beside `path`, then renames it into place; on
/// failure the temporary file is removed and `path` is untouched.
fn write_replacing(
    path: &Path,
    mode: u32,
    write: impl FnOnce(&Path) -> Result<(), OutError>,
) -> Result<(), OutError> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
    let _ = fs::remove_file(&tmp);
    let r = write(&tmp).and_then(|()| {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&tmp, fs::Permissions::from_mode(mode))
            .map_err(|e| OutError::new("setting mode of", &tmp, e))?;
        fs::rename(&tmp, path).map_err(|e| OutError::new("renaming into", path, e))
    });
    if r.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    r
}

/// A disk of `disk`'s layout with `esp` as its ESP, laid out in memory.
fn lay_out(disk: &RoleDisk, esp: &[u8], identity: &str, path: &Path) -> Result<Vec<u8>, OutError> {
    let parts = disk.parts(esp);
    let size = gpt::disk_size(&parts);
    let (image, _) = gpt::write(
        io::Cursor::new(vec![0u8; size as usize]),
        size,
        disk.disk_guid(identity),
        &parts,
    )
    .map_err(|e| OutError::new("laying out", path, io::Error::other(e)))?;
    Ok(image.into_inner())
}

/// Writes a disk of `disk`'s layout with `esp` as its ESP to a new file at `path`,
/// sparse where the layout is empty, flushes it, and returns its size and SHA-256. The
/// disk is laid out in memory first and hashed there: reading a sparse file back makes
/// the kernel zero every hole page.
fn write_disk(
    path: &Path,
    disk: &RoleDisk,
    esp: &[u8],
    identity: &str,
    mode: u32,
) -> Result<(u64, String), OutError> {
    let image = lay_out(disk, esp, identity, path)?;
    write_sparse(path, &image, mode)
}

/// Writes `image` to a new file at `path`, skipping all-zero chunks (holes), and
/// returns its size and SHA-256.
fn write_sparse(path: &Path, image: &[u8], mode: u32) -> Result<(u64, String), OutError> {
    use std::io::{Seek, SeekFrom, Write};
    let size = image.len() as u64;
    let sha256 = hex::encode(Sha256::digest(image));
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| OutError::new("creating", path, e))?;
    file.set_len(size)
        .map_err(|e| OutError::new("sizing", path, e))?;
    const CHUNK: usize = 64 << 10;
    for (i, chunk) in image.chunks(CHUNK).enumerate() {
        if chunk.iter().all(|&b| b == 0) {
            continue;
        }
        file.seek(SeekFrom::Start((i * CHUNK) as u64))
            .and_then(|_| file.write_all(chunk))
            .map_err(|e| OutError::new("writing", path, e))?;
    }
    file.sync_all()
        .map_err(|e| OutError::new("flushing", path, e))?;
    Ok((size, sha256))
}

/// The network-install files of a role under `DIR/pxe/ROLE/`: the UKI's kernel and
/// initramfs, and the role disk zstd-compressed (level 3, single-threaded so the bytes
/// are reproducible; the frame records the size). No secret: nodes fetch their configs
/// separately, by MAC.
fn write_pxe_role(pxe: &Path, disk: &RoleDisk, image: &[u8]) -> Result<Vec<Artifact>, OutError> {
    let dir = pxe.join(&disk.name);
    fs::create_dir_all(&dir).map_err(|e| OutError::new("creating", &dir, e))?;
    let zst = dir.join("disk.img.zst");
    let compressed = {
        let mut enc =
            zstd::bulk::Compressor::new(3).map_err(|e| OutError::new("compressing", &zst, e))?;
        enc.set_parameter(zstd::zstd_safe::CParameter::ContentSizeFlag(true))
            .map_err(|e| OutError::new("compressing", &zst, e))?;
        enc.compress(image)
            .map_err(|e| OutError::new("compressing", &zst, e))?
    };
    let mut out = Vec::new();
    for (name, bytes) in [
        ("vmlinuz", disk.kernel.as_slice()),
        ("initrd.img", disk.initrd.as_slice()),
        ("disk.img.zst", compressed.as_slice()),
        ("installer.efi", disk.installer_uki.as_slice()),
    ] {
        let path = dir.join(name);
        fsutil::write_atomic(&path, bytes, 0o644)
            .map_err(|e| OutError::new("writing", &path, e))?;
        out.push(Artifact {
            path: format!("pxe/{}/{name}", disk.name),
            size: bytes.len() as u64,
            sha256: hex::encode(Sha256::digest(bytes)),
        });
    }
    Ok(out)
}

/// `DIR/pxe/`'s scripts: the chain script, one script per node (scripts of nodes no
/// longer in the cluster removed), the MAC table and the dnsmasq example.
fn write_pxe_scripts(
    out_dir: &Path,
    cluster: &crate::cluster::Cluster,
    installs: &BTreeMap<Role, crate::pxe::RoleInstall>,
) -> Result<(), OutError> {
    let pxe = out_dir.join("pxe");
    let nodes = pxe.join("nodes");
    fs::create_dir_all(&nodes).map_err(|e| OutError::new("creating", &nodes, e))?;
    let mut wanted = std::collections::BTreeSet::new();
    for node in &cluster.nodes {
        let Some(role) = installs.get(&node.role) else {
            continue;
        };
        let name = format!("{}.ipxe", crate::pxe::mac_file_name(node));
        let path = nodes.join(&name);
        let text = crate::pxe::node_script(node, role, false);
        fsutil::write_atomic(&path, text.as_bytes(), 0o644)
            .map_err(|e| OutError::new("writing", &path, e))?;
        wanted.insert(name);
    }
    for e in fs::read_dir(&nodes).map_err(|e| OutError::new("listing", &nodes, e))? {
        let e = e.map_err(|e| OutError::new("listing", &nodes, e))?;
        let name = e.file_name().to_string_lossy().into_owned();
        if name.ends_with(".ipxe") && !wanted.contains(&name) {
            fs::remove_file(e.path()).map_err(|err| OutError::new("removing", &e.path(), err))?;
        }
    }
    for (name, text) in [
        ("boot.ipxe", crate::pxe::boot_script(cluster)),
        ("macs.json", crate::pxe::macs_json(cluster)),
        ("dnsmasq.conf.example", crate::pxe::dnsmasq_example(cluster)),
    ] {
        let path = pxe.join(name);
        fsutil::write_atomic(&path, text.as_bytes(), 0o644)
            .map_err(|e| OutError::new("writing", &path, e))?;
    }
    Ok(())
}

/// `qemu-img convert` to qcow2: QEMU's own writer, so the result is what QEMU expects.
fn qcow2(raw: &Path, out: &Path) -> Result<(), OutError> {
    let o = Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "qcow2"])
        .arg(raw)
        .arg(out)
        .output()
        .map_err(|e| OutError::new("running qemu-img (package qemu-utils) for", out, e))?;
    if !o.status.success() {
        return Err(OutError::new(
            "converting to qcow2",
            out,
            io::Error::other(String::from_utf8_lossy(&o.stderr).trim().to_string()),
        ));
    }
    Ok(())
}

/// Every file under `dir` (manifest.json itself excepted, temporary names skipped),
/// sorted, with size and SHA-256: taken from `known` (hashed as they were written) or
/// hashed here on a few threads.
fn hash_artifacts(
    dir: &Path,
    known: &BTreeMap<String, Artifact>,
) -> Result<Vec<Artifact>, OutError> {
    let mut files = Vec::new();
    collect(dir, dir, &mut files)?;
    files.retain(|p| p != "manifest.json");
    files.sort();
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let queue = std::sync::Mutex::new(files.iter().enumerate());
    let results: std::sync::Mutex<Vec<Option<Result<Artifact, OutError>>>> =
        std::sync::Mutex::new(files.iter().map(|_| None).collect());
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                loop {
                    let Some((i, rel)) = queue.lock().ok().and_then(|mut q| q.next()) else {
                        return;
                    };
                    let r = match known.get(rel) {
                        Some(a) => Ok(a.clone()),
                        None => hash_file(&dir.join(rel)).map(|(size, sha256)| Artifact {
                            path: rel.clone(),
                            size,
                            sha256,
                        }),
                    };
                    if let Ok(mut v) = results.lock() {
                        v[i] = Some(r);
                    }
                }
            });
        }
    });
    let results = results.into_inner().unwrap_or_default();
    results
        .into_iter()
        .zip(&files)
        .map(|(r, rel)| {
            r.unwrap_or_else(|| {
                Err(OutError::new(
                    "hashing",
                    &dir.join(rel),
                    io::Error::other("a hashing thread stopped"),
                ))
            })
        })
        .collect()
}

fn collect(root: &Path, dir: &Path, out: &mut Vec<String>) -> Result<(), OutError> {
    for e in fs::read_dir(dir).map_err(|e| OutError::new("listing", dir, e))? {
        let e = e.map_err(|e| OutError::new("listing", dir, e))?;
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        let p = e.path();
        let ft = e.file_type().map_err(|e| OutError::new("reading", &p, e))?;
        if ft.is_dir() {
            collect(root, &p, out)?;
        } else if ft.is_file() {
            let rel = p
                .strip_prefix(root)
                .unwrap_or(&p)
                .to_string_lossy()
                .into_owned();
            out.push(rel);
        }
    }
    Ok(())
}

fn hash_file(path: &Path) -> Result<(u64, String), OutError> {
    crate::debian::fetch::hash_file(path).map_err(|e| OutError::new("hashing", path, e))
}
