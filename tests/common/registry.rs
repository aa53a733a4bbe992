//! A real registry for the tests: Debian's docker-registry (the CNCF distribution
//! registry) on 127.0.0.1, and test images as OCI layouts written here, pushed with
//! skopeo (digests preserved).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use slipway::oci::Reference;

/// A docker-registry on 127.0.0.1, killed on drop.
pub struct Registry {
    child: Child,
    pub port: u16,
    storage: PathBuf,
}

impl Registry {
    pub fn start(dir: &Path) -> Registry {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let storage = dir.join("storage");
        let config = dir.join("registry.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n  secret: test-only\n",
                storage.display()
            ),
        )
        .unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("registry.log")).unwrap())
            .spawn()
            .expect("docker-registry (make deps installs it)");
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "docker-registry did not listen"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Registry {
            child,
            port,
            storage,
        }
    }

    /// The file the registry serves for `sha256`.
    pub fn blob_data(&self, sha256: &str) -> PathBuf {
        self.storage
            .join("docker/registry/v2/blobs/sha256")
            .join(&sha256[..2])
            .join(sha256)
            .join("data")
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn sha(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

/// One image per architecture, each a single-layer tar holding /hello-ARCH.
pub struct Layout {
    pub dir: PathBuf,
    pub index: String,
    /// (architecture, manifest sha256, layer sha256)
    pub images: Vec<(String, String, String)>,
}

pub fn layout(dir: &Path, archs: &[&str]) -> Layout {
    layout_labelled(dir, archs, "hello")
}

/// As [`layout`], the file holding `LABEL from ARCH`: images that differ by label.
pub fn layout_labelled(dir: &Path, archs: &[&str], label: &str) -> Layout {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let put = |b: &[u8]| {
        let h = sha(b);
        std::fs::write(blobs.join(&h), b).unwrap();
        (h, b.len())
    };
    let mut images = Vec::new();
    let mut entries = Vec::new();
    for arch in archs {
        let mut t = tar::Builder::new(Vec::new());
        let content = format!("{label} from {arch}\n");
        let mut h = tar::Header::new_ustar();
        h.set_size(content.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        t.append_data(&mut h, format!("hello-{arch}"), content.as_bytes())
            .unwrap();
        let (layer, layer_size) = put(&t.into_inner().unwrap());
        let config = serde_json::json!({
            "architecture": arch, "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{layer}")]},
            "config": {}
        });
        let (config, config_size) = put(config.to_string().as_bytes());
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": format!("sha256:{config}"), "size": config_size},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                        "digest": format!("sha256:{layer}"), "size": layer_size}]
        });
        let (m, m_size) = put(manifest.to_string().as_bytes());
        entries.push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": format!("sha256:{m}"), "size": m_size,
            "platform": {"architecture": arch, "os": "linux"}
        }));
        images.push((arch.to_string(), m, layer));
    }
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": entries
    });
    let (index, index_size) = put(index.to_string().as_bytes());
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    std::fs::write(
        dir.join("index.json"),
        serde_json::json!({
            "schemaVersion": 2,
            "manifests": [{
                "mediaType": "application/vnd.oci.image.index.v1+json",
                "digest": format!("sha256:{index}"), "size": index_size,
                "annotations": {"org.opencontainers.image.ref.name": "v1"}
            }]
        })
        .to_string(),
    )
    .unwrap();
    Layout {
        dir: dir.to_owned(),
        index,
        images,
    }
}

/// `skopeo copy` (digests preserved; `--all` for indexes) with a policy that accepts
/// unsigned images, kept in `dir`.
pub fn skopeo_copy(dir: &Path, from: &str, to: &str, all: bool) {
    let policy = dir.join("policy.json");
    std::fs::write(
        &policy,
        r#"{"default":[{"type":"insecureAcceptAnything"}]}"#,
    )
    .unwrap();
    let mut cmd = Command::new("skopeo");
    cmd.arg("--policy").arg(&policy).args([
        "copy",
        "--quiet",
        "--preserve-digests",
        "--dest-tls-verify=false",
    ]);
    if all {
        cmd.arg("--all");
    }
    super::check(cmd.arg(from).arg(to));
}

/// Pushes `l` to `reg` as REPO:v1 with skopeo, digests preserved.
pub fn push(reg: &Registry, l: &Layout, repo: &str, dir: &Path) {
    push_as(reg, l, &format!("{repo}:v1"), dir);
}

/// Pushes `l` to `reg` as `REPO:TAG`.
pub fn push_as(reg: &Registry, l: &Layout, repo_tag: &str, dir: &Path) {
    skopeo_copy(
        dir,
        &format!("oci:{}:v1", l.dir.display()),
        &format!("docker://127.0.0.1:{}/{repo_tag}", reg.port),
        true,
    );
}

pub fn reference(reg: &Registry, repo: &str, sha256: &str) -> Reference {
    format!("127.0.0.1:{}/{repo}:v1@sha256:{sha256}", reg.port)
        .parse()
        .unwrap()
}
