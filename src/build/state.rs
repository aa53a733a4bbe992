//! What a build leaves for the next one: `OUT/.slipway/state.json`, the content key of
//! each role disk and node disk it wrote and the file status (inode, size, times) each
//! had when the build ended. A later build into the same directory whose key for a role
//! or node is unchanged, and whose file is still the one recorded (nothing wrote to it,
//! nothing replaced it), keeps it instead of writing it again.
//!
//! Keys are SHA-256 over everything the result is made of (see [`RoleKey`]): the package
//! set as locked, the profiles and root overlay as files, slipway-init and slipway-pause,
//! SOURCE_DATE_EPOCH, the pinned Kubernetes release, the tools whose output lands in the
//! image, and this program itself (its executable's bytes, so that a changed Slipway,
//! released or not, never reuses an older one's work). A key says nothing about a file;
//! the recorded status does, and any doubt (a missing or unreadable state, a file
//! touched since) means the work is done again: the outputs are always what a build from
//! scratch writes.

use std::collections::BTreeMap;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{Artifact, BakedImage, KubeBinary, RoleSummary};
use crate::image::disk::Layout;

/// `state.json`'s format; a state of another version is ignored (everything rebuilt).
const STATE_VERSION: u32 = 1;

/// Where the state lives in the output directory.
pub const STATE_DIR: &str = ".slipway";

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct State {
    pub version: u32,
    pub roles: BTreeMap<String, RoleState>,
    pub nodes: BTreeMap<String, NodeState>,
}

/// A role's outputs as the build that wrote them left them.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleState {
    pub key: String,
    pub built: RoleRecord,
    /// Every file of the role's outputs, `images/`, `pxe/ROLE/` and its UKI under
    /// [`STATE_DIR`], with their status.
    pub files: Vec<Recorded>,
}

/// What a role's build produced besides its files: all that manifest.json and the node
/// disks need of it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleRecord {
    pub summary: RoleSummary,
    pub kube: Vec<KubeBinary>,
    pub kube_missing: Vec<String>,
    pub images: Vec<BakedImage>,
    pub install: crate::pxe::RoleInstall,
    pub layout: Layout,
    /// SHA-256 (hex) of the UKI on its ESP and its nodes' (kept under [`STATE_DIR`]).
    pub uki_sha256: String,
    /// The role's artifacts (relative to OUT) with size and SHA-256.
    pub artifacts: Vec<Artifact>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeState {
    pub key: String,
    pub disk: Recorded,
}

/// A file and its status when recorded, with its size and SHA-256.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recorded {
    /// Relative to OUT.
    pub path: String,
    pub sha256: String,
    pub status: Status,
}

/// The parts of a file's status that change when anything writes to it, replaces it or
/// changes its links: the inode, size, modification and change times (nanoseconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Status {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime_ns: i128,
    pub ctime_ns: i128,
}

impl Status {
    pub fn of(path: &Path) -> io::Result<Status> {
        let m = std::fs::metadata(path)?;
        Ok(Status {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
            ctime_ns: i128::from(m.ctime()) * 1_000_000_000 + i128::from(m.ctime_nsec()),
        })
    }
}

impl Recorded {
    /// Records `rel` (under `out`) as it is now.
    pub fn now(out: &Path, rel: &str, sha256: &str) -> io::Result<Recorded> {
        Ok(Recorded {
            path: rel.to_string(),
            sha256: sha256.to_string(),
            status: Status::of(&out.join(rel))?,
        })
    }

    /// Whether the file is still exactly the one recorded.
    pub fn intact(&self, out: &Path) -> bool {
        Status::of(&out.join(&self.path)).is_ok_and(|s| s == self.status)
    }
}

impl State {
    pub fn path(out: &Path) -> PathBuf {
        out.join(STATE_DIR).join("state.json")
    }

    /// The state a previous build left, or an empty one (anything unreadable, of another
    /// version, or not there: nothing is reused).
    pub fn load(out: &Path) -> State {
        std::fs::read(State::path(out))
            .ok()
            .and_then(|b| serde_json::from_slice::<State>(&b).ok())
            .filter(|s| s.version == STATE_VERSION)
            .unwrap_or_default()
    }

    pub fn save(&self, out: &Path) -> io::Result<()> {
        let path = State::path(out);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let mut text = serde_json::to_vec_pretty(self).map_err(io::Error::other)?;
        text.push(b'\n');
        crate::fsutil::write_atomic(&path, &text, 0o644)
    }

    /// The role's previous outputs when its key is `key` and every one of its files is
    /// still as recorded.
    pub fn reusable_role(&self, role: &str, key: &str, out: &Path) -> Option<&RoleState> {
        self.roles
            .get(role)
            .filter(|r| r.key == key && r.files.iter().all(|f| f.intact(out)))
    }

    /// The node's previous disk when its key is `key` and the file is still as recorded.
    pub fn reusable_node(&self, node: &str, key: &str, out: &Path) -> Option<&Recorded> {
        self.nodes
            .get(node)
            .filter(|n| n.key == key && n.disk.intact(out))
            .map(|n| &n.disk)
    }
}

/// SHA-256 of this program's executable, once per process: part of every key.
pub fn program_digest() -> &'static str {
    static D: OnceLock<String> = OnceLock::new();
    D.get_or_init(|| {
        std::env::current_exe()
            .and_then(|p| crate::debian::fetch::hash_file(&p))
            .map(|(_, h)| h)
            // Unreadable: a key nothing else has, so nothing is ever reused.
            .unwrap_or_else(|e| {
                format!("unknown executable: {e} {:?}", std::time::SystemTime::now())
            })
    })
}

/// A content key being built: named parts, each length-prefixed, so no two different
/// sets of inputs give the same stream.
pub struct RoleKey(Sha256);

impl RoleKey {
    pub fn new(kind: &str) -> RoleKey {
        let mut k = RoleKey(Sha256::new());
        k.part("kind", kind.as_bytes());
        k.part("slipway", program_digest().as_bytes());
        k
    }

    pub fn part(&mut self, name: &str, bytes: &[u8]) -> &mut RoleKey {
        for b in [name.as_bytes(), bytes] {
            self.0.update((b.len() as u64).to_le_bytes());
            self.0.update(b);
        }
        self
    }

    /// Every file under `dir` (sorted), by relative path, mode and bytes; a missing
    /// directory counts as empty.
    pub fn tree(&mut self, name: &str, dir: &Path) -> io::Result<&mut RoleKey> {
        use std::os::unix::fs::PermissionsExt;
        self.part("tree", name.as_bytes());
        let files = match crate::profile::walk(dir) {
            Ok(f) => f,
            Err(_) if !dir.exists() => Vec::new(),
            Err(e) => return Err(io::Error::other(e.to_string())),
        };
        for p in files {
            let rel = p
                .strip_prefix(dir)
                .unwrap_or(&p)
                .to_string_lossy()
                .into_owned();
            let mode = std::fs::metadata(&p)?.permissions().mode();
            self.part("path", rel.as_bytes());
            self.part("mode", &mode.to_le_bytes());
            self.part("bytes", &std::fs::read(&p)?);
        }
        Ok(self)
    }

    /// What `program --version` prints (a tool whose output lands in the image), or that
    /// it could not run.
    pub fn tool(&mut self, program: &str) -> &mut RoleKey {
        let v = std::process::Command::new(program)
            .arg("--version")
            .output()
            .map(|o| o.stdout)
            .unwrap_or_else(|e| format!("{program}: {e}").into_bytes());
        self.part(program, &v)
    }

    pub fn finish(&self) -> String {
        hex::encode(self.0.clone().finalize())
    }
}
