//! Writing rendered nodes to the output directory, atomically.
//!
//! The whole `DIR/nodes` tree is built beside its final place and swapped in with one
//! rename, so an interrupted or failed render leaves the previous tree intact. Files are
//! not fsynced one by one: everything here is re-derived from the cluster file and the
//! secrets (which are fsynced), and an fsync per file made a 100-node render 2200
//! flushes long.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::fsutil;
use crate::render::NodeRender;

/// One node ready to write: its rendered files and its Ignition JSON.
pub struct NodeOutput<'a> {
    pub node: &'a NodeRender,
    pub ignition: &'a [u8],
}

#[derive(Debug, thiserror::Error)]
#[error("{op} {path}")]
pub struct OutError {
    op: &'static str,
    path: PathBuf,
    #[source]
    source: io::Error,
}

fn ctx(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> OutError {
    let path = path.to_owned();
    move |source| OutError { op, path, source }
}

impl OutError {
    pub fn new(op: &'static str, path: &Path, source: io::Error) -> OutError {
        OutError {
            op,
            path: path.to_owned(),
            source,
        }
    }
}

/// Writes `DIR/nodes/NAME/{config.ign,files/...}` for every node and `DIR/admin.conf`.
/// `config.ign` and every secret are 0600; the nodes tree is 0700 since it holds keys.
pub fn write_nodes(dir: &Path, nodes: &[NodeOutput<'_>], admin_conf: &str) -> Result<(), OutError> {
    write_nodes_with(dir, nodes, admin_conf, |_| Ok(()))
}

/// [`write_nodes`], with `extra` adding files to the staged tree (its argument) before
/// the swap: what it writes is swapped in with the rest, or not at all.
pub fn write_nodes_with(
    dir: &Path,
    nodes: &[NodeOutput<'_>],
    admin_conf: &str,
    extra: impl FnOnce(&Path) -> Result<(), OutError>,
) -> Result<(), OutError> {
    fs::create_dir_all(dir).map_err(ctx("creating", dir))?;
    let target = dir.join("nodes");
    let staging = fsutil::TempDir::beside(&target, 0o700).map_err(ctx("creating", &target))?;
    let staged = staging.path().to_owned();
    // Metadata operations dominate (thousands of small files); a few threads overlap
    // their latency.
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get() * 2);
    let chunk = nodes.len().div_ceil(threads).max(1);
    std::thread::scope(|s| {
        let handles: Vec<_> = nodes
            .chunks(chunk)
            .map(|part| {
                let staged = &staged;
                s.spawn(move || part.iter().try_for_each(|n| write_node(staged, n)))
            })
            .collect();
        handles
            .into_iter()
            .try_for_each(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
    })?;
    extra(&staged)?;
    staging
        .replace(&target)
        .map_err(ctx("replacing", &target))?;
    let admin = dir.join("admin.conf");
    fsutil::write_atomic(&admin, admin_conf.as_bytes(), 0o600).map_err(ctx("writing", &admin))
}

fn write_node(staged: &Path, n: &NodeOutput<'_>) -> Result<(), OutError> {
    let node_dir = staged.join(&n.node.name);
    fsutil::create_dir_mode(&node_dir, 0o700).map_err(ctx("creating", &node_dir))?;
    let ign = node_dir.join("config.ign");
    fsutil::write_new(&ign, n.ignition, 0o600).map_err(ctx("writing", &ign))?;
    let files = node_dir.join("files");
    // Every directory once, parents before children.
    let mut dirs: BTreeMap<PathBuf, u32> = BTreeMap::new();
    for f in &n.node.files {
        let mut p = Path::new(f.path.trim_start_matches('/')).parent();
        while let Some(d) = p.filter(|d| !d.as_os_str().is_empty()) {
            dirs.entry(d.to_owned()).or_insert(0o755);
            p = d.parent();
        }
    }
    for d in &n.node.directories {
        let rel = Path::new(d.path.trim_start_matches('/'));
        let mut p = rel.parent();
        while let Some(parent) = p.filter(|d| !d.as_os_str().is_empty()) {
            dirs.entry(parent.to_owned()).or_insert(0o755);
            p = parent.parent();
        }
        dirs.insert(rel.to_owned(), d.mode);
    }
    fs::create_dir(&files).map_err(ctx("creating", &files))?;
    for (rel, mode) in &dirs {
        let p = files.join(rel);
        fs::DirBuilder::new()
            .mode(*mode)
            .create(&p)
            .map_err(ctx("creating", &p))?;
        fs::set_permissions(&p, fs::Permissions::from_mode(*mode))
            .map_err(ctx("setting mode of", &p))?;
    }
    for f in &n.node.files {
        let p = files.join(f.path.trim_start_matches('/'));
        fsutil::write_new(&p, &f.contents, f.mode).map_err(ctx("writing", &p))?;
    }
    Ok(())
}
