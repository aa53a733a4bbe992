//! Per-node files from the overlay templates, and their Ignition config.
//!
//! Pure: given a validated cluster, loaded secrets and role profiles, produce each node's
//! files (path, mode, bytes) and an Ignition 3.3.0 config carrying exactly those files,
//! directories, units and the admin user. Writing them out is [`crate::out`]'s job.
//! Templates run in handlebars strict mode: a misspelt variable is an error, not an empty
//! string.

pub mod context;
pub mod ignition;

use std::collections::BTreeMap;

use handlebars::Handlebars;

use crate::cluster::{Cluster, Node, Role};
use crate::pki::{self, Pki};
use crate::profile::{DataDir, DirSpec, ProfileError, RoleProfile};

pub use context::Context;

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error(transparent)]
    Profile(#[from] ProfileError),
    #[error("template {name}")]
    Template {
        name: String,
        #[source]
        source: Box<handlebars::TemplateError>,
    },
    #[error("rendering {template} for node {node}")]
    Render {
        template: String,
        node: String,
        #[source]
        source: Box<handlebars::RenderError>,
    },
}

/// A file placed on a node.
#[derive(Clone, PartialEq, Eq)]
pub struct NodeFile {
    /// Absolute path on the node.
    pub path: String,
    pub contents: Vec<u8>,
    pub mode: u32,
    /// Key material: never printed, written 0600.
    pub secret: bool,
}

impl std::fmt::Debug for NodeFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "NodeFile({}, {:o}, {} bytes{})",
            self.path,
            self.mode,
            self.contents.len(),
            if self.secret { ", secret" } else { "" }
        )
    }
}

/// Everything one node receives.
#[derive(Debug, Clone)]
pub struct NodeRender {
    pub name: String,
    pub role: Role,
    /// Sorted by path; includes unit files and drop-ins.
    pub files: Vec<NodeFile>,
    pub directories: Vec<DirSpec>,
    /// Units to enable (with or without a file here).
    pub enable: Vec<String>,
}

impl NodeRender {
    pub fn file(&self, path: &str) -> Option<&NodeFile> {
        self.files.iter().find(|f| f.path == path)
    }
}

/// Loaded templates for every role.
pub struct Renderer {
    hb: Handlebars<'static>,
    roles: BTreeMap<Role, RoleProfile>,
}

impl std::fmt::Debug for Renderer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Renderer")
            .field("roles", &self.roles.keys())
            .finish()
    }
}

impl Renderer {
    pub fn new(data: &DataDir) -> Result<Renderer, RenderError> {
        let mut hb = Handlebars::new();
        hb.set_strict_mode(true);
        // Config files are not HTML.
        hb.register_escape_fn(handlebars::no_escape);
        for (name, text) in data.partials()? {
            hb.register_partial(&name, text)
                .map_err(|e| RenderError::Template {
                    name: format!("partials/{name}"),
                    source: Box::new(e),
                })?;
        }
        let mut roles = BTreeMap::new();
        for role in [Role::ControlPlane, Role::Worker] {
            let profile = data.load_role(role)?;
            for f in profile.files.values().filter(|f| f.template) {
                let name = f.source.to_string_lossy().into_owned();
                if hb.has_template(&name) {
                    continue;
                }
                let text =
                    std::fs::read_to_string(&f.source).map_err(|source| ProfileError::Io {
                        path: f.source.clone(),
                        source,
                    })?;
                hb.register_template_string(&name, text)
                    .map_err(|e| RenderError::Template {
                        name: name.clone(),
                        source: Box::new(e),
                    })?;
            }
            roles.insert(role, profile);
        }
        Ok(Renderer { hb, roles })
    }

    /// Renders one node.
    pub fn render_node(
        &self,
        cluster: &Cluster,
        pki: &Pki,
        node: &Node,
    ) -> Result<NodeRender, RenderError> {
        let profile = &self.roles[&node.role];
        let ctx = handlebars::Context::wraps(Context::new(cluster, pki, node)).map_err(|e| {
            RenderError::Render {
                template: "(context)".into(),
                node: node.name.clone(),
                source: Box::new(e),
            }
        })?;
        let mut files = BTreeMap::new();
        for f in profile.files.values() {
            let contents = if f.template {
                let name = f.source.to_string_lossy();
                self.hb
                    .render_with_context(&name, &ctx)
                    .map_err(|e| RenderError::Render {
                        template: name.into_owned(),
                        node: node.name.clone(),
                        source: Box::new(e),
                    })?
                    .into_bytes()
            } else {
                std::fs::read(&f.source).map_err(|source| ProfileError::Io {
                    path: f.source.clone(),
                    source,
                })?
            };
            files.insert(
                f.dest.clone(),
                NodeFile {
                    path: f.dest.clone(),
                    contents,
                    mode: f.mode,
                    secret: f.secret,
                },
            );
        }
        for s in pki::node_secrets(pki, node) {
            files.insert(
                s.path.clone(),
                NodeFile {
                    path: s.path,
                    contents: s.contents.into_bytes(),
                    mode: 0o600,
                    secret: true,
                },
            );
        }
        Ok(NodeRender {
            name: node.name.clone(),
            role: node.role,
            files: files.into_values().collect(),
            directories: profile.directories.clone(),
            enable: profile.enable.clone(),
        })
    }

    /// Renders the operator's admin kubeconfig (server = the VIP).
    pub fn render_admin_kubeconfig(
        &self,
        cluster: &Cluster,
        pki: &Pki,
    ) -> Result<String, RenderError> {
        let kc = context::admin_kubeconfig(cluster, pki);
        self.hb
            .render_template("{{> kubeconfig}}", &kc)
            .map_err(|e| RenderError::Render {
                template: "partials/kubeconfig".into(),
                node: "(operator)".into(),
                source: Box::new(e),
            })
    }
}
