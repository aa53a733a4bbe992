//! Shared helpers for the integration tests: paths, a fresh render of the example
//! cluster, and running the independent tools we check our output with.
#![allow(dead_code, clippy::unwrap_used)]

pub mod http;
pub mod registry;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use slipway::pipeline;
use slipway::profile::DataDir;

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn example() -> PathBuf {
    repo().join("examples/homelab/cluster.toml")
}

pub fn data() -> DataDir {
    DataDir::new(repo())
}

/// A render of `cluster` into a fresh temp dir: (tempdir guard, out dir, secrets dir).
pub fn render(cluster: &Path) -> (tempfile::TempDir, PathBuf, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let secrets = tmp.path().join("secrets");
    pipeline::render(cluster, &secrets, &data(), &out).unwrap();
    (tmp, out, secrets)
}

pub fn node_files(out: &Path, node: &str) -> PathBuf {
    out.join("nodes").join(node).join("files")
}

/// Runs an independent checker. A missing tool fails the test: `make deps` installs them.
pub fn run(cmd: &mut Command) -> Output {
    let shown = format!("{cmd:?}");
    match cmd.output() {
        Ok(o) => o,
        Err(e) => panic!("cannot run {shown}: {e} (install the test tools with `make deps`)"),
    }
}

/// Runs a checker and requires success, showing its output otherwise.
pub fn check(cmd: &mut Command) -> Output {
    let shown = format!("{cmd:?}");
    let o = run(cmd);
    assert!(
        o.status.success(),
        "{shown} failed ({}):\n{}{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Every regular file under `dir`, relative, sorted.
pub fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p.strip_prefix(dir).unwrap().to_owned());
            }
        }
    }
    out.sort();
    out
}

/// Every entry under `dir` (directories and symlinks included, symlinks not followed),
/// relative, sorted.
pub fn walk_all(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            out.push(p.strip_prefix(dir).unwrap().to_owned());
            if e.file_type().unwrap().is_dir() {
                stack.push(p);
            }
        }
    }
    out.sort();
    out
}

/// The example cluster's text with one substitution applied (which must match).
pub fn example_with(from: &str, to: &str) -> String {
    let text = std::fs::read_to_string(example()).unwrap();
    assert!(text.contains(from), "example does not contain {from:?}");
    text.replacen(from, to, 1)
}

/// A 0700 directory (gpg refuses a world-readable home).
pub fn create_private_dir(p: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(p).unwrap();
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o700)).unwrap();
}

/// Copies every regular file under `from` to the same place under `to`.
pub fn copy_tree(from: &Path, to: &Path) {
    for rel in walk(from) {
        let dst = to.join(&rel);
        std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
        std::fs::copy(from.join(&rel), &dst).unwrap();
    }
}

/// A path from an environment variable `make test` sets (its test-fixtures step fetches
/// the Debian packages the root filesystem tests build from).
pub fn fixture(var: &str) -> PathBuf {
    match std::env::var_os(var) {
        Some(p) => PathBuf::from(p),
        None => panic!(
            "{var} is not set: run `make test` (its test-fixtures step fetches the Debian packages once)"
        ),
    }
}

/// Whether the test lock pins the example's Kubernetes release (`make test
/// SLIPWAY_TEST_KUBERNETES=1`): the example's images then carry kubelet, kubectl and the
/// release and add-on images.
#[allow(dead_code)]
pub fn kubernetes_pinned() -> bool {
    let (model, _) = slipway::cluster::Cluster::load(&example()).unwrap();
    let lock = slipway::debian::lock::Lock::load(&fixture("SLIPWAY_TEST_LOCK")).unwrap();
    lock.kubernetes.contains_key(&model.kubernetes.tag)
}

/// Where the tests' builds look for the Kubernetes release when the test lock pins none
/// (a build then tries to pin it): a directory that does not exist, so that the attempt
/// fails at once, here, and never reaches out.
pub fn no_release() -> PathBuf {
    repo().join("target/no-kubernetes-release")
}

/// Build options that work offline from the fixtures: a mirror on a closed loopback
/// port, so a missing package (or a stale lock entry) fails instead of reaching out, and
/// the Kubernetes release looked for in [`no_release`] only. Not `--locked`: that
/// refuses a lock without the cluster's Kubernetes release, which the test lock has only
/// under `SLIPWAY_TEST_KUBERNETES=1`.
pub fn offline_options() -> slipway::rootfs::Options {
    slipway::rootfs::Options {
        data: data(),
        cache: fixture("SLIPWAY_TEST_CACHE"),
        lock_path: fixture("SLIPWAY_TEST_LOCK"),
        mirror: Some("http://127.0.0.1:9".into()),
        host_root: PathBuf::from("/nonexistent"),
        locked: false,
        source_date_epoch: 1_764_000_000,
        kube_artifacts: Some(no_release()),
    }
}

/// `dir/data`: a copy of the project's profiles and overlays, for a test to change.
pub fn data_copy(dir: &Path) -> PathBuf {
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    for d in ["profiles", "overlays"] {
        check(Command::new("cp").arg("-a").arg(repo().join(d)).arg(&data));
    }
    data
}

/// A directory for the one build of the example a test binary shares among its tests
/// (held in a static, which is never dropped, so a `TempDir` there would leak several GiB
/// per run): `target/test-shared-build/`, emptied first. Test binaries run one after
/// another, so a run leaves at most one such build behind.
pub fn shared_build_dir() -> PathBuf {
    let d = repo().join("target/test-shared-build");
    match std::fs::remove_dir_all(&d) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            panic!("emptying {}: {e}", d.display())
        }
        _ => {}
    }
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The statically linked slipway-init `make init` builds (`$SLIPWAY_INIT`).
pub fn init_binary() -> PathBuf {
    let p = std::env::var_os("SLIPWAY_INIT")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("target/init/slipway-init"));
    assert!(
        p.exists(),
        "{} is missing: run `make init` (or `make test`, which builds it)",
        p.display()
    );
    p
}

/// Build options with `rootfs` (often [`offline_options`] changed a little), secrets in
/// `secrets`, `make init`'s slipway-init, no qcow2, no progress display.
pub fn build_options(
    rootfs: slipway::rootfs::Options,
    secrets: &Path,
) -> slipway::build::BuildOptions {
    slipway::build::BuildOptions {
        rootfs,
        secrets_dir: secrets.to_owned(),
        init: init_binary(),
        qcow2: false,
        progress: false,
    }
}

/// `slipway build` of `cluster` into `out` with secrets in `secrets`, offline.
pub fn build(cluster: &Path, secrets: &Path, out: &Path, qcow2: bool) -> slipway::build::Manifest {
    let opts = slipway::build::BuildOptions {
        qcow2,
        ..build_options(offline_options(), secrets)
    };
    slipway::build::build(cluster, &opts, out).unwrap_or_else(|e| panic!("build: {e:#}"))
}

/// A partition of a disk image as `sfdisk --json` (util-linux) reports it.
#[derive(Debug, Clone)]
pub struct SfPart {
    pub name: String,
    pub type_guid: String,
    pub uuid: String,
    pub start: u64,
    pub size: u64,
}

pub fn sfdisk_parts(disk: &Path) -> Vec<SfPart> {
    let o = check(Command::new("sfdisk").arg("--json").arg(disk));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    v["partitiontable"]["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| SfPart {
            name: p["name"].as_str().unwrap_or_default().to_string(),
            type_guid: p["type"].as_str().unwrap().to_string(),
            uuid: p["uuid"].as_str().unwrap().to_string(),
            start: p["start"].as_u64().unwrap() * 512,
            size: p["size"].as_u64().unwrap() * 512,
        })
        .collect()
}

/// Bytes `[start, start+len)` of a file.
pub fn read_range(path: &Path, start: u64, len: u64) -> Vec<u8> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(path).unwrap();
    f.seek(SeekFrom::Start(start)).unwrap();
    let mut buf = vec![0u8; len as usize];
    f.read_exact(&mut buf).unwrap();
    buf
}

/// Every file under `dir` that a build lists (the hidden ones, its lock and its state for
/// the next build, aside), with its SHA-256 as OpenSSL computes it: a judge independent
/// of the build's own hashing.
pub fn sha256s(dir: &Path) -> std::collections::BTreeMap<String, String> {
    let files: Vec<PathBuf> = walk(dir)
        .into_iter()
        .filter(|p| !p.to_string_lossy().split('/').any(|c| c.starts_with('.')))
        .collect();
    let o = check(
        Command::new("openssl")
            .args(["dgst", "-sha256", "-r"])
            .current_dir(dir)
            .args(&files),
    );
    stdout(&o)
        .lines()
        .map(|l| {
            let (sum, path) = l.split_once(" *").unwrap();
            (path.to_string(), sum.to_string())
        })
        .collect()
}
