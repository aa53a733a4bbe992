//! Writing rendered nodes to the output directory, atomically.
//!
//! The whole `DIR/nodes` tree is built beside its final place and swapped in with one
//! rename, so an interrupted or failed render leaves the previous tree intact.

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
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

/// Writes `DIR/nodes/NAME/{config.ign,files/...}` for every node and `DIR/admin.conf`.
/// `config.ign` and every secret are 0600; the nodes tree is 0700 since it holds keys.
pub fn write_nodes(dir: &Path, nodes: &[NodeOutput<'_>], admin_conf: &str) -> Result<(), OutError> {
    fs::create_dir_all(dir).map_err(ctx("creating", dir))?;
    let staged = dir.join(format!(".nodes.staging-{}", std::process::id()));
    if staged.exists() {
        fs::remove_dir_all(&staged).map_err(ctx("removing", &staged))?;
    }
    let result = (|| {
        fsutil::create_dir_mode(&staged, 0o700).map_err(ctx("creating", &staged))?;
        for n in nodes {
            let node_dir = staged.join(&n.node.name);
            fsutil::create_dir_mode(&node_dir, 0o700).map_err(ctx("creating", &node_dir))?;
            let ign = node_dir.join("config.ign");
            fsutil::write_atomic(&ign, n.ignition, 0o600).map_err(ctx("writing", &ign))?;
            let files = node_dir.join("files");
            for d in &n.node.directories {
                let p = files.join(d.path.trim_start_matches('/'));
                fs::create_dir_all(&p).map_err(ctx("creating", &p))?;
                fs::set_permissions(&p, fs::Permissions::from_mode(d.mode))
                    .map_err(ctx("setting mode of", &p))?;
            }
            for f in &n.node.files {
                let p = files.join(f.path.trim_start_matches('/'));
                if let Some(parent) = p.parent() {
                    fs::create_dir_all(parent).map_err(ctx("creating", parent))?;
                }
                fsutil::write_atomic(&p, &f.contents, f.mode).map_err(ctx("writing", &p))?;
            }
        }
        let target = dir.join("nodes");
        fsutil::replace_dir(&staged, &target).map_err(ctx("replacing", &target))
    })();
    if result.is_err() {
        let _ = fs::remove_dir_all(&staged);
    }
    result?;
    let admin = dir.join("admin.conf");
    fsutil::write_atomic(&admin, admin_conf.as_bytes(), 0o600).map_err(ctx("writing", &admin))
}
