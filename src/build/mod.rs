//! `slipway build`: the cluster's bootable disks.
//!
//! 1. the output directory locked (one build at a time writes it) and what a killed
//!    build left there removed;
//! 2. cluster, secrets and every node's rendered files (as `slipway render`);
//! 3. the cluster's Kubernetes release pinned in slipway.lock when it has no pins yet
//!    (unless `--locked`), where the release server and registries answer;
//! 4. per role used by the cluster, side by side: its content key ([`state`]); the role's
//!    previous outputs kept when the key and the files are unchanged, else its root tree,
//!    [`RoleDisk`] (squashfs, verity, initramfs, UKI, pure, in memory), and
//!    `DIR/images/ROLE.raw` (+ `.qcow2`, `.spdx.json`) and `DIR/pxe/ROLE/`, each written
//!    under a temporary name and renamed;
//! 5. `DIR/nodes/NAME/disk.raw`: the role disk cloned or copied ([`files`]) with the
//!    node's partition tables and ESP written over it (or the previous one, linked, when
//!    its key is unchanged), staged with the rendered files and swapped in with them;
//! 6. `DIR/manifest.json` (every artifact with its size and SHA-256), then the state the
//!    next build reuses from (`DIR/.slipway/state.json`).

pub mod files;
pub mod state;

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::cluster::Role;
use crate::fsutil;
use crate::image::disk::{Layout, RoleDisk, RoleInputs};
use crate::out::{self, OutError};
use crate::pipeline;
use crate::rootfs::{self, RootfsError};
use state::{Recorded, RoleKey, RoleRecord, RoleState, State};

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
    #[error("{lock}: {reason}")]
    Unpinned { lock: PathBuf, reason: String },
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
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Artifact {
    /// Relative to the output directory.
    pub path: String,
    pub size: u64,
    pub sha256: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
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
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
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
    /// The nodes' network identities and the API's address: what `slipway vm` boots a
    /// build's nodes with, on a segment of the cluster's own addresses.
    pub network: NetworkSummary,
    /// Container images baked into every role's image and imported into containerd
    /// before kubelet starts.
    pub images: Vec<BakedImage>,
    /// The Kubernetes binaries in the images, at the cluster's version.
    pub kubernetes: KubeSummary,
    pub artifacts: Vec<Artifact>,
    #[serde(skip)]
    pub warnings: Vec<String>,
    /// What this build did and what it cost (not part of manifest.json: it differs
    /// between builds of the same inputs).
    #[serde(skip)]
    pub report: BuildReport,
}

/// The cluster's addresses as a build's nodes were made for them.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkSummary {
    pub subnet: String,
    pub gateway: String,
    /// The API's virtual address and port (keepalived, HAProxy).
    pub vip: String,
    pub api_port: u16,
    /// The load-balancer pool, first and last address.
    pub loadbalancer_range: [String; 2],
    /// The admin user the nodes' SSH lets in, and the public keys it lets in with.
    pub admin_user: String,
    pub admin_ssh_keys: Vec<String>,
    pub nodes: BTreeMap<String, NodeSummary>,
}

/// One node's identity on the network.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSummary {
    pub role: String,
    pub ip: String,
    pub mac: String,
    /// Its VRRP priority for the VIP (control-plane nodes).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub vrrp_priority: Option<u8>,
}

/// What one build did: its steps with their wall times, what it kept from the previous
/// build, and what it wrote.
#[derive(Debug, Clone, Default, Serialize)]
pub struct BuildReport {
    pub seconds: f64,
    /// (step, seconds), in the order they ended; role steps run side by side.
    pub steps: Vec<(String, f64)>,
    /// Roles whose previous outputs were kept, unchanged.
    pub roles_reused: Vec<String>,
    /// Nodes whose previous disk was kept, unchanged.
    pub nodes_reused: Vec<String>,
    /// Node disks made by a clone of their role disk (no data copied).
    pub nodes_cloned: Vec<String>,
    /// Bytes of disk images this build wrote (role disks, node disks and what was copied
    /// into them); the compressed and qcow2 copies are not counted here.
    pub disk_bytes_written: u64,
    /// Bytes of leftovers of a killed build removed first.
    pub stale_bytes_removed: u64,
}

/// What the images carry of Kubernetes' own binaries.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubeBinary {
    pub name: String,
    pub url: String,
    pub sha512: String,
    pub roles: Vec<String>,
}

/// The steps' wall times, collected from the threads that ran them.
#[derive(Default)]
struct Steps(Mutex<Vec<(String, f64)>>);

impl Steps {
    fn done(&self, bar: ProgressBar, t: Instant) {
        let secs = t.elapsed().as_secs_f64();
        let msg = bar.message();
        if let Ok(mut v) = self.0.lock() {
            v.push((msg.clone(), secs));
        }
        bar.finish_with_message(format!("{msg} ({secs:.1} s)"));
    }
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

/// A statically linked program the images carry (slipway-init, slipway-pause): read, and
/// refused if it needs a dynamic loader. `hint` says where it comes from.
fn read_static(path: &Path, hint: &str) -> Result<Vec<u8>, String> {
    let bytes = fs::read(path).map_err(|e| format!("{e} ({hint})"))?;
    crate::image::initramfs::check_static_init(&bytes)?;
    Ok(bytes)
}

/// Where a role's UKI is kept for the node disks of later builds (not an artifact).
fn uki_path(role: &str) -> String {
    format!("{}/roles/{role}.uki", state::STATE_DIR)
}

/// Removes what a killed build left in `out` (temporary files and staged trees): this
/// process holds the output's lock, so nobody else is writing there.
fn remove_leftovers(out: &Path) -> Result<u64, OutError> {
    let mut dirs = vec![
        out.to_owned(),
        out.join("images"),
        out.join("pxe"),
        out.join(state::STATE_DIR),
        out.join(state::STATE_DIR).join("roles"),
    ];
    if let Ok(rd) = fs::read_dir(out.join("pxe")) {
        dirs.extend(rd.flatten().filter(|e| e.path().is_dir()).map(|e| e.path()));
    }
    let mut freed = 0;
    for d in dirs {
        freed += fsutil::remove_stale(&d, Duration::ZERO)
            .map_err(|e| OutError::new("removing leftovers in", &d, e))?;
    }
    Ok(freed)
}

/// Builds every disk of the cluster at `cluster_path` into `out_dir`.
pub fn build(
    cluster_path: &Path,
    opts: &BuildOptions,
    out_dir: &Path,
) -> Result<Manifest, BuildError> {
    let started = Instant::now();
    let steps = Steps::default();
    // 1. one build at a time in this output; what a killed one left goes first
    let _lock =
        fsutil::DirLock::acquire(out_dir).map_err(|e| OutError::new("locking", out_dir, e))?;
    let stale_bytes_removed = remove_leftovers(out_dir)?;
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

    // 2. model, secrets, rendered nodes (pure apart from the secrets directory)
    let (bar, t) = step(opts.progress, "secrets and rendered nodes".into());
    let prepared = pipeline::prepare(cluster_path, &opts.secrets_dir, &opts.rootfs.data)?;
    steps.done(bar, t);
    let cluster = &prepared.cluster;
    let rendered = &prepared.nodes;
    let mut warnings = prepared.warnings.clone();

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

    let mut roles: Vec<Role> = cluster.nodes.iter().map(|n| n.role).collect();
    roles.sort_by_key(|r| r.as_str());
    roles.dedup();
    let role_names: Vec<String> = roles.iter().map(|r| r.as_str().to_string()).collect();
    // Lock entries first, one role after the other (resolving may rewrite the lock file,
    // which two threads must not do at once).
    for role in &role_names {
        rootfs::ensure_locked(role, &opts.rootfs).map_err(|source| BuildError::Rootfs {
            role: role.clone(),
            source,
        })?;
    }
    // 3. the cluster's Kubernetes release, pinned now if the lock has none for it
    let v = &cluster.kubernetes.tag;
    let (bar, t) = step(opts.progress, format!("Kubernetes {v} pins"));
    let unpinned = pin_kubernetes_if_missing(v, &role_names, &opts.rootfs)?;
    steps.done(bar, t);
    let lock = crate::debian::lock::Lock::load(&opts.rootfs.lock_path).map_err(|reason| {
        BuildError::Rootfs {
            role: "all".into(),
            source: rootfs::RootfsError::Lock(reason),
        }
    })?;

    // 4. one disk per role the cluster uses, side by side: each is mostly one thread of
    // squashfs compression and hashing once its packages are unpacked
    let images = out_dir.join("images");
    fs::create_dir_all(&images).map_err(|e| OutError::new("creating", &images, e))?;
    let previous = State::load(out_dir);
    let mp = MultiProgress::with_draw_target(if opts.progress {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    });
    let shared = rootfs::SharedDebs::default();
    // Node disks are made with their roles, here, and moved into the nodes' tree when it
    // is staged.
    let disks_dir = fsutil::TempDir::beside(&out_dir.join("node-disks"), 0o700)
        .map_err(|e| OutError::new("creating", out_dir, e))?;
    let ctx = RoleContext {
        nodes: rendered,
        disks_dir: disks_dir.path(),
        kube_version: v,
        kube_pins: lock.kubernetes.get(v),
        lock: &lock,
        baked: &baked,
        etcd_image: &cluster.images.etcd,
        component_images: crate::cluster::CONTROL_PLANE_COMPONENTS
            .iter()
            .map(|c| cluster.images.component(c, v))
            .collect(),
        shared: &shared,
        opts,
        init: &init,
        out: out_dir,
        epoch,
        mp: &mp,
        steps: &steps,
        previous: &previous,
    };
    let built: Vec<RoleOut> = std::thread::scope(|s| {
        let handles: Vec<_> = roles
            .iter()
            .map(|&role| {
                let ctx = &ctx;
                s.spawn(move || role_outputs(role, ctx))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect::<Result<_, _>>()
    })?;
    let mut report = BuildReport {
        stale_bytes_removed,
        ..BuildReport::default()
    };
    let mut summaries = Vec::new();
    let mut known: BTreeMap<String, Artifact> = BTreeMap::new();
    let mut baked_images: Vec<BakedImage> = Vec::new();
    let mut installs = BTreeMap::new();
    let mut kubernetes = KubeSummary {
        version: cluster.kubernetes.tag.clone(),
        ..KubeSummary::default()
    };
    for b in &built {
        let r = &b.record;
        for k in &r.kube {
            match kubernetes.binaries.iter_mut().find(|x| x.name == k.name) {
                Some(x) => x.roles.extend(k.roles.iter().cloned()),
                None => kubernetes.binaries.push(k.clone()),
            }
        }
        for m in &r.kube_missing {
            if !kubernetes.missing.contains(m) {
                kubernetes.missing.push(m.clone());
            }
        }
        installs.insert(b.role, r.install.clone());
        for i in &r.images {
            match baked_images
                .iter_mut()
                .find(|x| x.name == i.name && x.digest == i.digest)
            {
                Some(x) => x.roles.extend(i.roles.iter().cloned()),
                None => baked_images.push(i.clone()),
            }
        }
        summaries.push(r.summary.clone());
        known.extend(r.artifacts.iter().map(|a| (a.path.clone(), a.clone())));
        if b.reused {
            report.roles_reused.push(b.role.as_str().to_string());
        }
        report.disk_bytes_written += b.written;
    }

    // 5. nodes: rendered files, config.ign and disk.raw (made with their roles), swapped
    // in together with the roles' new files
    let (bar, t) = step(opts.progress, format!("{} nodes' files", rendered.len()));
    out::write_nodes_with(
        out_dir,
        &prepared.outputs(),
        &prepared.admin_kubeconfig,
        |staged| {
            for d in built.iter().flat_map(|b| &b.nodes) {
                let to = staged.join(&d.name).join("disk.raw");
                fs::rename(&d.path, &to).map_err(|e| OutError::new("moving into", &to, e))?;
            }
            // Everything is written: the roles' new files into place, then (on return)
            // the nodes' tree swapped in.
            for b in &built {
                let pending = b.pending.lock().map(|mut p| std::mem::take(&mut *p));
                pending.unwrap_or_default().commit()?;
            }
            Ok(())
        },
    )?;
    drop(disks_dir);
    write_pxe_scripts(out_dir, cluster, &installs)?;
    for d in built.iter().flat_map(|b| &b.nodes) {
        known.insert(
            format!("nodes/{}/disk.raw", d.name),
            Artifact {
                path: format!("nodes/{}/disk.raw", d.name),
                size: d.size,
                sha256: d.sha256.clone(),
            },
        );
        report.disk_bytes_written += d.written.bytes;
        if d.reused {
            report.nodes_reused.push(d.name.clone());
        }
        if d.written.cloned {
            report.nodes_cloned.push(d.name.clone());
        }
    }
    report.nodes_reused.sort();
    report.nodes_cloned.sort();
    steps.done(bar, t);

    // 6. manifest, then the state the next build starts from
    let (bar, t) = step(
        opts.progress,
        "manifest.json (SHA-256 of every artifact)".into(),
    );
    let artifacts = hash_artifacts(out_dir, &known)?;
    if !kubernetes.missing.is_empty() {
        warnings.push(format!(
            "the images carry none of {} at {}: slipway.lock does not pin them{} (run `slipway lock --kubernetes {}` where the release server and the image registries are reachable; {}=DIR reads the binaries from a copy of the release tree); kubelet.service is skipped on nodes without kubelet, and a node pulls what it lacks",
            kubernetes.missing.join(", "),
            kubernetes.version,
            unpinned.map(|r| format!(", and {r}")).unwrap_or_default(),
            kubernetes.version,
            crate::kube::ARTIFACTS_ENV
        ));
    }
    let manifest = Manifest {
        cluster: cluster.name.clone(),
        source_date_epoch: epoch,
        roles: summaries,
        nodes: cluster
            .nodes
            .iter()
            .map(|n| (n.name.clone(), n.role.as_str().to_string()))
            .collect(),
        network: NetworkSummary {
            subnet: cluster.network.subnet.to_string(),
            gateway: cluster.network.gateway.to_string(),
            vip: cluster.control_plane.vip.to_string(),
            api_port: cluster.control_plane.port,
            loadbalancer_range: [
                cluster.network.loadbalancer_range.first.to_string(),
                cluster.network.loadbalancer_range.last.to_string(),
            ],
            admin_user: cluster.admin.user.clone(),
            admin_ssh_keys: cluster.admin.ssh_authorized_keys.clone(),
            nodes: cluster
                .nodes
                .iter()
                .map(|n| {
                    (
                        n.name.clone(),
                        NodeSummary {
                            role: n.role.as_str().to_string(),
                            ip: n.ip.to_string(),
                            mac: n.mac.to_string(),
                            vrrp_priority: n.vrrp_priority,
                        },
                    )
                })
                .collect(),
        },
        images: baked_images,
        artifacts,
        warnings,
        kubernetes,
        report: BuildReport::default(),
    };
    let path = out_dir.join("manifest.json");
    let mut text = serde_json::to_vec_pretty(&manifest)
        .map_err(|e| OutError::new("serializing", &path, io::Error::other(e)))?;
    text.push(b'\n');
    fsutil::write_atomic(&path, &text, 0o644).map_err(|e| OutError::new("writing", &path, e))?;
    save_state(out_dir, &built)?;
    steps.done(bar, t);
    report.steps = steps.0.into_inner().unwrap_or_default();
    report.seconds = started.elapsed().as_secs_f64();
    Ok(Manifest { report, ..manifest })
}

/// Records what this build wrote, as it is now, for the next build to reuse.
fn save_state(out: &Path, built: &[RoleOut]) -> Result<(), OutError> {
    let rec = |rel: &str, sha: &str| {
        Recorded::now(out, rel, sha).map_err(|e| OutError::new("recording", &out.join(rel), e))
    };
    let mut st = State {
        version: 1,
        ..State::default()
    };
    for b in built {
        let mut files = Vec::new();
        for a in &b.record.artifacts {
            files.push(rec(&a.path, &a.sha256)?);
        }
        let uki = uki_path(b.role.as_str());
        files.push(rec(&uki, "")?);
        st.roles.insert(
            b.role.as_str().to_string(),
            RoleState {
                key: b.key.clone(),
                built: b.record.clone(),
                files,
            },
        );
    }
    for d in built.iter().flat_map(|b| &b.nodes) {
        st.nodes.insert(
            d.name.clone(),
            state::NodeState {
                key: d.key.clone(),
                disk: rec(&format!("nodes/{}/disk.raw", d.name), &d.sha256)?,
            },
        );
    }
    st.save(out)
        .map_err(|e| OutError::new("writing", &State::path(out), e))
}

/// How long a failed attempt to pin the cluster's Kubernetes release keeps later builds
/// from trying again (each attempt may wait on an unreachable network).
const PIN_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// Pins the profiles' Kubernetes binaries and images at `version` in slipway.lock when
/// it pins none there: refused under `--locked`; where the release server or registries
/// cannot be reached, the reason is returned for the build's warning (it goes on without
/// them, as before), and no new attempt is made for [`PIN_RETRY_AFTER`] (recorded in the
/// cache).
fn pin_kubernetes_if_missing(
    version: &str,
    profiles: &[String],
    opts: &rootfs::Options,
) -> Result<Option<String>, BuildError> {
    let lock =
        crate::debian::lock::Lock::load(&opts.lock_path).map_err(|reason| BuildError::Rootfs {
            role: "all".into(),
            source: rootfs::RootfsError::Lock(reason),
        })?;
    if lock.kubernetes.contains_key(version) {
        return Ok(None);
    }
    // What the profiles would have pinned.
    let mut wanted = Vec::new();
    for name in profiles {
        let p = crate::profile::image::ImageProfile::load(&opts.data.root, name).map_err(|e| {
            BuildError::Rootfs {
                role: name.clone(),
                source: e.into(),
            }
        })?;
        for w in p
            .kube_binaries
            .iter()
            .cloned()
            .chain(p.kube_image_names(version))
        {
            if !wanted.contains(&w) {
                wanted.push(w);
            }
        }
    }
    if wanted.is_empty() {
        return Ok(None);
    }
    if opts.locked {
        return Err(BuildError::Unpinned {
            lock: opts.lock_path.clone(),
            reason: format!(
                "pins nothing of Kubernetes {version} ({}), and --locked keeps the build from pinning it; run `slipway lock --kubernetes {version}`",
                wanted.join(", ")
            ),
        });
    }
    // Per version and place: another release server or registry is tried afresh.
    let place = profiles
        .iter()
        .filter_map(|n| crate::profile::image::ImageProfile::load(&opts.data.root, n).ok())
        .map(|p| p.kube_release_url)
        .chain(wanted.iter().cloned())
        .collect::<Vec<_>>()
        .join("\n");
    let marker = opts.cache.join("kubernetes-unpinned").join(format!(
        "{version}-{}",
        &hex::encode(Sha256::digest(place.as_bytes()))[..16]
    ));
    let recent = opts.kube_artifacts.is_none()
        && fs::metadata(&marker)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|m| m.elapsed().ok())
            .is_some_and(|age| age < PIN_RETRY_AFTER);
    let reason = if recent {
        format!(
            "pinning them failed less than an hour ago ({}; `slipway lock --kubernetes {version}` tries now)",
            fs::read_to_string(&marker).unwrap_or_default().trim()
        )
    } else {
        match rootfs::lock_kubernetes(&[version.to_string()], profiles, opts) {
            Ok(_) => {
                let _ = fs::remove_file(&marker);
                return Ok(None);
            }
            Err(e) => {
                let why = e.to_string();
                // Only a network attempt is worth not repeating (a local release tree
                // answers at once).
                if opts.kube_artifacts.is_none()
                    && let Some(dir) = marker.parent()
                {
                    let _ = fs::create_dir_all(dir)
                        .and_then(|()| fsutil::write_atomic(&marker, why.as_bytes(), 0o644));
                }
                format!("pinning them failed: {why}")
            }
        }
    };
    Ok(Some(reason))
}

/// What a role's build shares with the other roles'.
struct RoleContext<'a> {
    /// cluster.toml's `kubernetes_version` and what slipway.lock pins at it.
    kube_version: &'a str,
    kube_pins: Option<&'a crate::kube::LockedRelease>,
    lock: &'a crate::debian::lock::Lock,
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
    /// The output directory.
    out: &'a Path,
    epoch: u64,
    mp: &'a MultiProgress,
    steps: &'a Steps,
    previous: &'a State,
    /// Every node's rendered files and Ignition config.
    nodes: &'a [(crate::render::NodeRender, Vec<u8>)],
    /// Where node disks are made before the nodes' tree is staged.
    disks_dir: &'a Path,
}

/// A role's outputs, built now or kept from the previous build.
struct RoleOut {
    role: Role,
    key: String,
    record: RoleRecord,
    reused: bool,
    /// Bytes of disk image written for it.
    written: u64,
    /// Its new files, renamed into place at the end of the build.
    pending: Mutex<Pending>,
    /// Its nodes' disks, made (or kept) under the build's temporary directory.
    nodes: Vec<NodeDisk>,
}

/// The content key of a role's outputs: everything they are made of (see [`state`]).
fn role_key(role: Role, ctx: &RoleContext<'_>) -> Result<String, BuildError> {
    let name = role.as_str();
    let err = |e: io::Error| BuildError::Image {
        role: name.into(),
        reason: format!("computing its content key: {e}"),
    };
    let data = &ctx.opts.rootfs.data;
    let profile = crate::profile::image::ImageProfile::load(&data.root, name).map_err(|e| {
        BuildError::Rootfs {
            role: name.into(),
            source: e.into(),
        }
    })?;
    let entry = ctx
        .lock
        .fresh(&profile)
        .map(serde_json::to_vec)
        .transpose()
        .map_err(|e| err(io::Error::other(e)))?
        .unwrap_or_default();
    let pins = serde_json::to_vec(&ctx.kube_pins).map_err(|e| err(io::Error::other(e)))?;
    let mut k = RoleKey::new("role-v1");
    k.part("role", name.as_bytes())
        .part("lock", &entry)
        .part("kubernetes", ctx.kube_version.as_bytes())
        .part("kubernetes-pins", &pins)
        .part("init", &Sha256::digest(ctx.init))
        .part("epoch", &ctx.epoch.to_le_bytes())
        .part("etcd-image", ctx.etcd_image.as_bytes())
        .part(
            "component-images",
            ctx.component_images.join("\n").as_bytes(),
        )
        .part("qcow2", &[u8::from(ctx.opts.qcow2)]);
    for (a, source) in ctx.baked {
        k.part("baked", a.name.as_bytes())
            .part("archive", &Sha256::digest(&a.bytes))
            .part("source", source.as_bytes());
    }
    k.tree("profiles", &data.root.join("profiles"))
        .map_err(err)?
        .tree("overlays/rootfs", &data.overlays().join("rootfs"))
        .map_err(err)?;
    for img in &profile.images {
        if let crate::profile::image::ImageSource::Dir { path, .. } = &img.source {
            k.tree(&img.name, path).map_err(err)?;
        }
    }
    k.tool("depmod");
    if ctx.opts.qcow2 {
        k.tool("qemu-img");
    }
    Ok(k.finish())
}

/// A role's outputs: the previous build's when its key and files are unchanged, else
/// built now; with its nodes' disks.
fn role_outputs(role: Role, ctx: &RoleContext<'_>) -> Result<RoleOut, BuildError> {
    let name = role.as_str();
    let key = role_key(role, ctx)?;
    if let Some(prev) = ctx.previous.reusable_role(name, &key, ctx.out)
        && let Ok(uki) = fs::read(ctx.out.join(uki_path(name)))
        && let Ok(uki_sha256) = <[u8; 32]>::try_from(
            hex::decode(&prev.built.uki_sha256)
                .unwrap_or_default()
                .as_slice(),
        )
    {
        let raw = ctx.out.join(format!("images/{name}.raw"));
        let (bar, t) = role_step(ctx.mp, format!("{name}: node disks"));
        let nodes = node_disks(
            role,
            &key,
            &uki,
            &uki_sha256,
            &prev.built.layout,
            &raw,
            None,
            ctx,
        )?;
        ctx.steps.done(bar, t);
        return Ok(RoleOut {
            role,
            key,
            record: prev.built.clone(),
            reused: true,
            written: 0,
            pending: Mutex::default(),
            nodes,
        });
    }
    build_role(role, key, ctx)
}

/// One role: root tree, disk parts, `images/ROLE.{raw,qcow2,spdx.json}`, `pxe/ROLE/`.
fn build_role(role: Role, key: String, ctx: &RoleContext<'_>) -> Result<RoleOut, BuildError> {
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
    ctx.steps.done(bar, t);
    // Kubernetes binaries, where slipway.lock pins them at the cluster's version.
    let (bar, t) = role_step(ctx.mp, format!("{name}: Kubernetes and container images"));
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
    // What slipway-images.service imports and pins: "ARCHIVE NAME DIGEST" per line.
    let mut list = String::new();
    for (image, source) in &archives {
        let file = archive_name(&image.name);
        list.push_str(&format!(
            "{file} {} sha256:{}\n",
            image.name, image.manifest_sha256
        ));
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
    ctx.steps.done(bar, t);
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
    drop(r.tree);
    ctx.steps.done(bar, t);

    let (bar, t) = role_step(ctx.mp, format!("{name}: images/{name}.raw"));
    let images = ctx.out.join("images");
    let (esp, esp_id) = disk.esp(None).map_err(image_err)?;
    let raw = images.join(format!("{name}.raw"));
    let image = disk.image(&esp, &esp_id, name).map_err(image_err)?;
    let mut pending = Pending::default();
    let written = pending
        .fill(&raw, 0o644, |f| files::write_image(f, &image))?
        .bytes;
    let raw_now = pending.now_at(&raw).unwrap_or(&raw).to_owned();
    ctx.steps.done(bar, t);
    // The rest reads the disk written: its qcow2 copy (qemu-img, another process), its
    // compressed copy for network installs and its nodes' disks, side by side.
    let qcow = images.join(format!("{name}.qcow2"));
    let (pxe, qcow_done, nodes) = std::thread::scope(|s| {
        let qcow2_task = s.spawn(|| -> Result<Option<(Pending, Artifact)>, OutError> {
            if !ctx.opts.qcow2 {
                return Ok(None);
            }
            let (bar, t) = role_step(ctx.mp, format!("{name}: images/{name}.qcow2"));
            let mut p = Pending::default();
            p.tool(&qcow, 0o644, |tmp| qcow2(&raw_now, tmp))?;
            let (size, sha256) = hash_file(p.now_at(&qcow).unwrap_or(&qcow))?;
            ctx.steps.done(bar, t);
            let a = Artifact {
                path: format!("images/{name}.qcow2"),
                size,
                sha256,
            };
            Ok(Some((p, a)))
        });
        let pxe_task = s.spawn(|| -> Result<(String, Pending, Vec<Artifact>), OutError> {
            let (bar, t) = role_step(ctx.mp, format!("{name}: pxe/{name}/"));
            let mut p = Pending::default();
            let sha256 = image.sha256();
            let a = write_pxe_role(&ctx.out.join("pxe"), &disk, &image, &mut p)?;
            ctx.steps.done(bar, t);
            Ok((sha256, p, a))
        });
        let (bar, t) = role_step(ctx.mp, format!("{name}: node disks"));
        let nodes = node_disks(
            role,
            &key,
            &disk.uki,
            &disk.uki_sha256,
            &disk.layout(),
            &raw_now,
            Some(&disk),
            ctx,
        );
        ctx.steps.done(bar, t);
        let pxe = pxe_task
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p));
        let qcow = qcow2_task
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p));
        (pxe, qcow, nodes)
    });
    let (sha256, pxe_pending, mut artifacts) = pxe?;
    let nodes = nodes?;
    pending.0.extend(pxe_pending.0);
    drop(image);
    let size = disk.disk_size();
    match qcow_done? {
        Some((p, a)) => {
            pending.0.extend(p.0);
            artifacts.push(a);
        }
        None => {
            // A qcow2 of an earlier build would be listed as this one's.
            if let Err(e) = fs::remove_file(&qcow)
                && e.kind() != io::ErrorKind::NotFound
            {
                return Err(OutError::new("removing", &qcow, e).into());
            }
        }
    }
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
    let image_names: Vec<(&str, &str)> = archives
        .iter()
        .map(|(a, _)| (a.name.as_str(), a.manifest_sha256.as_str()))
        .collect();
    rootfs::sbom::add_images(&mut sbom_doc, &image_names);
    let sbom_text = serde_json::to_vec_pretty(&sbom_doc)
        .map_err(|e| OutError::new("serializing the SBOM of", &raw, io::Error::other(e)))?;
    let sbom = rootfs::sbom_path(&images.join(format!("{name}.tar")));
    pending.write(&sbom, 0o644, &sbom_text)?;
    artifacts.push(Artifact {
        path: format!("images/{name}.spdx.json"),
        size: sbom_text.len() as u64,
        sha256: hex::encode(Sha256::digest(&sbom_text)),
    });
    artifacts.sort_by(|a, b| a.path.cmp(&b.path));
    // The UKI, kept for the node disks of later builds that reuse this role.
    pending.write(&ctx.out.join(uki_path(name)), 0o644, &disk.uki)?;
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
    Ok(RoleOut {
        role,
        key,
        record: RoleRecord {
            summary,
            kube,
            kube_missing,
            images: baked,
            install,
            layout: disk.layout(),
            uki_sha256: hex::encode(disk.uki_sha256),
            artifacts,
        },
        reused: false,
        written,
        pending: Mutex::new(pending),
        nodes,
    })
}

/// A node's disk as this build made or kept it.
struct NodeDisk {
    name: String,
    /// Where it is until the nodes' tree is staged.
    path: PathBuf,
    /// Its content key: its role's key, its name and its config.
    key: String,
    size: u64,
    sha256: String,
    written: files::Written,
    reused: bool,
}

/// The disks of `role`'s nodes, side by side, into the build's temporary directory for
/// them: each kept (linked) from the previous build when its key and file are unchanged,
/// else made by [`node_disk`] from the role disk at `base`.
#[allow(clippy::too_many_arguments)]
fn node_disks(
    role: Role,
    role_key: &str,
    uki: &[u8],
    uki_sha256: &[u8; 32],
    layout: &Layout,
    base: &Path,
    disk: Option<&RoleDisk>,
    ctx: &RoleContext<'_>,
) -> Result<Vec<NodeDisk>, OutError> {
    let mine: Vec<&(crate::render::NodeRender, Vec<u8>)> =
        ctx.nodes.iter().filter(|(n, _)| n.role == role).collect();
    let queue = Mutex::new(mine.iter());
    let made = Mutex::new(Vec::new());
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads.min(mine.len()))
            .map(|_| {
                s.spawn(|| -> Result<(), OutError> {
                    loop {
                        let Some((node, config)) = queue.lock().ok().and_then(|mut q| q.next())
                        else {
                            return Ok(());
                        };
                        let key = RoleKey::new("node-disk-v1")
                            .part("role", role_key.as_bytes())
                            .part("node", node.name.as_bytes())
                            .part("config", config)
                            .finish();
                        let path = ctx.disks_dir.join(format!("{}.raw", node.name));
                        let d = match ctx.previous.reusable_node(&node.name, &key, ctx.out) {
                            Some(rec) => {
                                let from = ctx.out.join(&rec.path);
                                fs::hard_link(&from, &path)
                                    .map_err(|e| OutError::new("linking", &path, e))?;
                                NodeDisk {
                                    name: node.name.clone(),
                                    path,
                                    key,
                                    size: rec.status.size,
                                    sha256: rec.sha256.clone(),
                                    written: files::Written::default(),
                                    reused: true,
                                }
                            }
                            None => {
                                let spec = NodeSpec {
                                    uki,
                                    uki_sha256,
                                    layout,
                                    base,
                                    disk,
                                };
                                let (size, sha256, written) =
                                    node_disk(&spec, config, &node.name, &path)?;
                                NodeDisk {
                                    name: node.name.clone(),
                                    path,
                                    key,
                                    size,
                                    sha256,
                                    written,
                                    reused: false,
                                }
                            }
                        };
                        if let Ok(mut v) = made.lock() {
                            v.push(d);
                        }
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .try_for_each(|w| w.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
    })?;
    let mut made = made.into_inner().unwrap_or_default();
    made.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(made)
}

/// What a node disk is made from: its role's UKI, layout and disk file, and the role's
/// bytes when they are at hand (the role was built now).
struct NodeSpec<'a> {
    uki: &'a [u8],
    uki_sha256: &'a [u8; 32],
    layout: &'a Layout,
    base: &'a Path,
    disk: Option<&'a RoleDisk>,
}

/// A node's disk at `path` (new): its role's disk with the node's partition tables and
/// ESP (its config beside the UKI). With the role's bytes at hand it is a clone of the
/// role disk patched where the node's differs (a filesystem with shared extents), else
/// written whole from memory; without them, the role disk cloned or copied (its data
/// extents) and patched, and hashed from the file. Either way the bytes are those of the
/// disk laid out from scratch ([`Layout::image`]). Returns its size, SHA-256 and cost.
fn node_disk(
    spec: &NodeSpec<'_>,
    config: &[u8],
    node: &str,
    path: &Path,
) -> Result<(u64, String, files::Written), OutError> {
    let plan_err = |e: String| OutError::new("planning", path, io::Error::other(e));
    let (esp, esp_id) = crate::image::disk::build_esp(
        spec.layout.esp_size,
        spec.uki,
        spec.uki_sha256,
        Some(config),
    )
    .map_err(plan_err)?;
    // What differs from the role disk: the tables and the ESP.
    let patch = spec
        .layout
        .image(&esp, &esp_id, &[], &[], node)
        .map_err(plan_err)?;
    let src = fs::File::open(spec.base).map_err(|e| OutError::new("opening", spec.base, e))?;
    let dst = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| OutError::new("creating", path, e))?;
    let write_err = |e| OutError::new("writing", path, e);
    let patch_all = |written: &mut files::Written| -> Result<(), OutError> {
        for (at, bytes) in &patch.extents {
            written.bytes += files::patch(&dst, *at, bytes).map_err(write_err)?;
        }
        Ok(())
    };
    match spec.disk {
        Some(disk) => {
            let whole = disk.image(&esp, &esp_id, node).map_err(plan_err)?;
            let written = if rustix::fs::ioctl_ficlone(&dst, &src).is_ok() {
                let mut w = files::Written {
                    bytes: 0,
                    cloned: true,
                };
                patch_all(&mut w)?;
                w
            } else {
                files::write_image(&dst, &whole).map_err(write_err)?
            };
            Ok((whole.size, whole.sha256(), written))
        }
        None => {
            let mut written = files::clone_or_copy(&src, &dst)
                .map_err(|e| OutError::new("copying into", path, e))?;
            patch_all(&mut written)?;
            let (size, sha256) =
                files::sparse_sha256(&dst).map_err(|e| OutError::new("hashing", path, e))?;
            Ok((size, sha256, written))
        }
    }
}

/// New outputs, written under temporary names beside their places and renamed into
/// place together at the end of the build, just before the nodes' tree is swapped in:
/// until then a killed or failed build has touched nothing of the previous output (and
/// the next build removes the temporary files). Disk images are not fsynced: every one is
/// re-derived from the build's inputs, and a later build trusts one only by its recorded
/// status.
#[derive(Default)]
struct Pending(Vec<(fsutil::TempFile, PathBuf)>);

impl Pending {
    /// A new file for `path`, filled by `fill`.
    fn fill<T>(
        &mut self,
        path: &Path,
        mode: u32,
        fill: impl FnOnce(&fs::File) -> io::Result<T>,
    ) -> Result<T, OutError> {
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).map_err(|e| OutError::new("creating", dir, e))?;
        }
        let mut tmp =
            fsutil::TempFile::beside(path, mode).map_err(|e| OutError::new("creating", path, e))?;
        let v = fill(tmp.file()).map_err(|e| OutError::new("writing", path, e))?;
        self.0.push((tmp, path.to_owned()));
        Ok(v)
    }

    /// A new file for `path` holding `bytes`.
    fn write(&mut self, path: &Path, mode: u32, bytes: &[u8]) -> Result<(), OutError> {
        self.fill(path, mode, |mut f| io::Write::write_all(&mut f, bytes))
    }

    /// A new file for `path` that a tool writes at the temporary path it is given.
    fn tool(
        &mut self,
        path: &Path,
        mode: u32,
        run: impl FnOnce(&Path) -> Result<(), OutError>,
    ) -> Result<(), OutError> {
        let tmp =
            fsutil::TempFile::beside(path, mode).map_err(|e| OutError::new("creating", path, e))?;
        run(tmp.path())?;
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(tmp.path(), fs::Permissions::from_mode(mode))
            .map_err(|e| OutError::new("setting mode of", path, e))?;
        self.0.push((tmp, path.to_owned()));
        Ok(())
    }

    /// Where the new file for `path` is until it is renamed.
    fn now_at(&self, path: &Path) -> Option<&Path> {
        self.0
            .iter()
            .find(|(_, p)| p == path)
            .map(|(t, _)| t.path())
    }

    /// Renames every file into place.
    fn commit(self) -> Result<(), OutError> {
        for (tmp, path) in self.0 {
            tmp.persist(&path)
                .map_err(|e| OutError::new("renaming into", &path, e))?;
        }
        Ok(())
    }
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
                rootfs::read_deb(n, &p.sha256, blob, &ctx.opts.rootfs.cache)
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

/// zstd level of the network-install disk: most of what is not zeros is the squashfs
/// root, compressed already; level 1 takes two thirds of level 3's time for 0.4 % more
/// bytes (measured on the example's control-plane disk).
const PXE_ZSTD_LEVEL: i32 = 1;

/// The network-install files of a role under `DIR/pxe/ROLE/`: the UKI's kernel and
/// initramfs, and the role disk zstd-compressed (level 3, single-threaded so the bytes
/// are reproducible; the frame records the size). No secret: nodes fetch their configs
/// separately, by MAC.
fn write_pxe_role(
    pxe: &Path,
    disk: &RoleDisk,
    image: &crate::image::disk::DiskImage<'_>,
    pending: &mut Pending,
) -> Result<Vec<Artifact>, OutError> {
    let dir = pxe.join(&disk.name);
    let zst = dir.join("disk.img.zst");
    let compressed = {
        let err = |e| OutError::new("compressing", &zst, e);
        let mut enc = zstd::stream::Encoder::new(Vec::new(), PXE_ZSTD_LEVEL).map_err(err)?;
        enc.include_contentsize(true).map_err(err)?;
        enc.set_pledged_src_size(Some(image.size)).map_err(err)?;
        image
            .stream(|b| std::io::Write::write_all(&mut enc, b))
            .map_err(err)?;
        enc.finish().map_err(err)?
    };
    let mut out = Vec::new();
    for (name, bytes) in [
        ("vmlinuz", disk.kernel.as_slice()),
        ("initrd.img", disk.initrd.as_slice()),
        ("disk.img.zst", compressed.as_slice()),
        ("installer.efi", disk.installer_uki.as_slice()),
    ] {
        pending.write(&dir.join(name), 0o644, bytes)?;
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
