//! The steps behind each subcommand, top to bottom over one set of paths.

use std::path::{Path, PathBuf};

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::cluster::{Cluster, LoadError, Role};
use crate::out::{self, NodeOutput, OutError};
use crate::pki::{self, EnsureOptions, Pki, PkiError, Report};
use crate::profile::DataDir;
use crate::render::{self, NodeRender, RenderError, Renderer};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Cluster(#[from] LoadError),
    #[error("preparing secrets")]
    Pki(#[from] PkiError),
    #[error(transparent)]
    Render(#[from] RenderError),
    #[error("writing output")]
    Out(#[from] OutError),
}

/// The secrets directory used when none is given: `secrets/` beside the cluster file.
pub fn default_secrets_dir(cluster_path: &Path) -> PathBuf {
    cluster_path
        .parent()
        .map(|p| p.join("secrets"))
        .unwrap_or_else(|| PathBuf::from("secrets"))
}

/// Where profiles/ and overlays/ are read from: `$SLIPWAY_DATA_DIR`, else the source tree
/// this binary was built from.
pub fn default_data_dir() -> PathBuf {
    std::env::var_os("SLIPWAY_DATA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

/// Loads the cluster and ensures its secrets.
pub fn secrets(
    cluster_path: &Path,
    secrets_dir: &Path,
    opts: EnsureOptions,
) -> Result<(Cluster, Pki, Report, Vec<String>), Error> {
    let (cluster, warnings) = Cluster::load(cluster_path)?;
    let (pki, report) = pki::ensure(secrets_dir, &cluster, opts)?;
    Ok((cluster, pki, report, warnings))
}

/// Renders every node: files and Ignition JSON. Pure apart from reading overlays once.
pub fn render_nodes(
    cluster: &Cluster,
    pki: &Pki,
    renderer: &Renderer,
) -> Result<Vec<(NodeRender, Vec<u8>)>, Error> {
    cluster
        .nodes
        .iter()
        .map(|n| {
            let r = renderer.render_node(cluster, pki, n)?;
            let json = render::ignition::to_json(&render::ignition::build(cluster, &r));
            Ok((r, json))
        })
        .collect()
}

#[derive(Debug, Serialize)]
pub struct NodeSummary {
    pub name: String,
    pub role: Role,
    pub files: usize,
    pub ignition_sha256: String,
}

#[derive(Debug, Serialize)]
pub struct RenderSummary {
    pub out: PathBuf,
    pub secrets: Report,
    pub nodes: Vec<NodeSummary>,
    pub warnings: Vec<String>,
}

/// A cluster with its secrets ensured and every node rendered: what `render` writes and
/// `build` writes disks beside.
pub struct Rendered {
    pub cluster: Cluster,
    pub report: Report,
    pub warnings: Vec<String>,
    pub nodes: Vec<(NodeRender, Vec<u8>)>,
    pub admin_kubeconfig: String,
}

impl Rendered {
    /// The nodes as [`out::write_nodes`] takes them.
    pub fn outputs(&self) -> Vec<NodeOutput<'_>> {
        self.nodes
            .iter()
            .map(|(node, json)| NodeOutput {
                node,
                ignition: json,
            })
            .collect()
    }
}

/// Model and secrets, templates, then every node's files and Ignition and the admin
/// kubeconfig. Pure apart from the secrets directory and reading overlays.
pub fn prepare(cluster_path: &Path, secrets_dir: &Path, data: &DataDir) -> Result<Rendered, Error> {
    let (cluster, pki, report, warnings) =
        secrets(cluster_path, secrets_dir, EnsureOptions::default())?;
    let renderer = Renderer::new(data)?;
    let nodes = render_nodes(&cluster, &pki, &renderer)?;
    let admin_kubeconfig = renderer.render_admin_kubeconfig(&cluster, &pki)?;
    Ok(Rendered {
        cluster,
        report,
        warnings,
        nodes,
        admin_kubeconfig,
    })
}

/// `slipway render`: secrets, then every node, then an atomic write of `out/nodes`.
pub fn render(
    cluster_path: &Path,
    secrets_dir: &Path,
    data: &DataDir,
    out_dir: &Path,
) -> Result<RenderSummary, Error> {
    // One writer at a time (a build into the same directory writes nodes/ too).
    let _lock = crate::fsutil::DirLock::acquire(out_dir)
        .map_err(|e| OutError::new("locking", out_dir, e))?;
    let r = prepare(cluster_path, secrets_dir, data)?;
    out::write_nodes(out_dir, &r.outputs(), &r.admin_kubeconfig)?;
    Ok(RenderSummary {
        out: out_dir.to_owned(),
        nodes: r
            .nodes
            .iter()
            .map(|(n, json)| NodeSummary {
                name: n.name.clone(),
                role: n.role,
                files: n.files.len(),
                ignition_sha256: hex::encode(Sha256::digest(json)),
            })
            .collect(),
        secrets: r.report,
        warnings: r.warnings,
    })
}
