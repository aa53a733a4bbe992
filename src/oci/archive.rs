//! Container images made from local files, with no registry involved: one layer (an
//! uncompressed tar), an OCI image config and manifest, wrapped as an OCI image layout in
//! one tar (what `ctr images import` and `skopeo copy oci-archive:` read). Pure and
//! deterministic: the same files, name and epoch give the same bytes and digests.

use sha2::{Digest, Sha256};

use crate::fs::{Entry, Tree};

/// One file of the image's single layer.
pub struct ImageFile {
    /// Absolute path in the image.
    pub path: String,
    pub mode: u32,
    pub bytes: Vec<u8>,
}

/// A built image: the archive and the digests it is known by.
#[derive(Debug, Clone)]
pub struct ImageArchive {
    /// The full reference it is imported as (`REGISTRY/REPOSITORY:TAG`).
    pub name: String,
    /// SHA-256 of the image manifest: the digest containerd lists for the image.
    pub manifest_sha256: String,
    pub config_sha256: String,
    pub layer_sha256: String,
    /// The OCI image layout as a tar.
    pub bytes: Vec<u8>,
}

const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";

/// Builds the image `name` (`REGISTRY/REPOSITORY:TAG`) from `files`, running
/// `entrypoint`, with every timestamp at `epoch`.
pub fn build(
    name: &str,
    files: &[ImageFile],
    entrypoint: &[&str],
    epoch: u64,
) -> Result<ImageArchive, String> {
    let tag = tag_of(name)?;

    // The layer: the files with their parent directories, as the root filesystem's own
    // reproducible tar writer lays out any tree.
    let mut tree = Tree::default();
    for f in files {
        let rel = f.path.trim_start_matches('/');
        if rel.is_empty()
            || rel
                .split('/')
                .any(|c| c.is_empty() || c == "." || c == "..")
        {
            return Err(format!("image {name}: bad path {:?}", f.path));
        }
        tree.insert(rel, Entry::file(f.bytes.clone(), f.mode));
    }
    let layer = crate::image::tar::write(&tree, epoch, Vec::new())
        .map_err(|e| format!("image {name}: layer: {e}"))?;
    let layer_sha = hex::encode(Sha256::digest(&layer));

    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": { "Entrypoint": entrypoint },
        "rootfs": { "type": "layers", "diff_ids": [format!("sha256:{layer_sha}")] },
        "history": [{ "created_by": "slipway build" }],
    });
    let config = serde_json::to_vec(&config).map_err(|e| e.to_string())?;
    let config_sha = hex::encode(Sha256::digest(&config));
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_TYPE,
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": format!("sha256:{config_sha}"),
            "size": config.len(),
        },
        "layers": [{
            "mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": format!("sha256:{layer_sha}"),
            "size": layer.len(),
        }],
    });
    let manifest = serde_json::to_vec(&manifest).map_err(|e| e.to_string())?;
    let manifest_sha = hex::encode(Sha256::digest(&manifest));
    let blobs = vec![(config_sha.clone(), config), (layer_sha.clone(), layer)];
    let bytes = layout_tar(name, &tag, MANIFEST_TYPE, &manifest, blobs, epoch)?;
    Ok(ImageArchive {
        name: name.to_string(),
        manifest_sha256: manifest_sha,
        config_sha256: config_sha,
        layer_sha256: layer_sha,
        bytes,
    })
}

/// An archive of a pulled image (its blobs read from the cache, digests unchanged),
/// imported as `name`.
pub fn from_pulled(name: &str, pulled: &super::Pulled, epoch: u64) -> Result<ImageArchive, String> {
    let tag = tag_of(name)?;
    let read = |b: &super::Blob| {
        std::fs::read(&b.path).map_err(|e| format!("image {name}: {}: {e}", b.path.display()))
    };
    let manifest = read(&pulled.manifest)?;
    let mut blobs = vec![(pulled.config.sha256.clone(), read(&pulled.config)?)];
    for l in &pulled.layers {
        blobs.push((l.sha256.clone(), read(l)?));
    }
    let layer_sha256 = pulled
        .layers
        .first()
        .map(|l| l.sha256.clone())
        .unwrap_or_default();
    let bytes = layout_tar(
        name,
        &tag,
        &pulled.manifest.media_type,
        &manifest,
        blobs,
        epoch,
    )?;
    Ok(ImageArchive {
        name: name.to_string(),
        manifest_sha256: pulled.manifest.sha256.clone(),
        config_sha256: pulled.config.sha256.clone(),
        layer_sha256,
        bytes,
    })
}

fn tag_of(name: &str) -> Result<String, String> {
    name.rsplit_once(':')
        .filter(|(repo, t)| !t.is_empty() && !t.contains('/') && repo.contains('/'))
        .map(|(_, t)| t.to_string())
        .ok_or_else(|| format!("image name {name:?}: expected REGISTRY/REPOSITORY:TAG"))
}

/// The OCI image layout tar: `oci-layout`, `index.json` naming the manifest as `name`,
/// and every blob, in a fixed order with fixed metadata.
fn layout_tar(
    name: &str,
    tag: &str,
    manifest_type: &str,
    manifest: &[u8],
    mut blobs: Vec<(String, Vec<u8>)>,
    epoch: u64,
) -> Result<Vec<u8>, String> {
    let manifest_sha = hex::encode(Sha256::digest(manifest));
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": manifest_type,
            "digest": format!("sha256:{manifest_sha}"),
            "size": manifest.len(),
            "platform": { "architecture": "amd64", "os": "linux" },
            "annotations": {
                "io.containerd.image.name": name,
                "org.opencontainers.image.ref.name": tag,
            },
        }],
    });
    let index = serde_json::to_vec(&index).map_err(|e| e.to_string())?;
    blobs.push((manifest_sha, manifest.to_vec()));
    let mut tree = Tree::default();
    tree.insert(
        "oci-layout",
        Entry::file(&br#"{"imageLayoutVersion":"1.0.0"}"#[..], 0o644),
    );
    tree.insert("index.json", Entry::file(index, 0o644));
    for (sha, bytes) in blobs {
        tree.insert(&format!("blobs/sha256/{sha}"), Entry::file(bytes, 0o644));
    }
    crate::image::tar::write(&tree, epoch, Vec::new())
        .map_err(|e| format!("image {name}: archive: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pause() -> Vec<ImageFile> {
        vec![ImageFile {
            path: "/pause".into(),
            mode: 0o755,
            bytes: b"\x7fELF not really".to_vec(),
        }]
    }

    #[test]
    fn same_inputs_same_bytes_and_names_are_checked() {
        let a = build("registry.k8s.io/pause:3.10", &pause(), &["/pause"], 1).unwrap();
        let b = build("registry.k8s.io/pause:3.10", &pause(), &["/pause"], 1).unwrap();
        assert_eq!(a.bytes, b.bytes);
        let c = build("registry.k8s.io/pause:3.10", &pause(), &["/pause"], 2).unwrap();
        assert_ne!(a.manifest_sha256, c.manifest_sha256);
        for bad in ["pause:3.10", "registry.k8s.io/pause", "r.io/x:"] {
            let e = build(bad, &pause(), &["/pause"], 1).unwrap_err();
            assert!(e.contains("REGISTRY/REPOSITORY:TAG"), "{bad}: {e}");
        }
        let e = build(
            "r.io/x:1",
            &[ImageFile {
                path: "/a/../b".into(),
                mode: 0o644,
                bytes: vec![],
            }],
            &[],
            1,
        )
        .unwrap_err();
        assert!(e.contains("bad path"), "{e}");
    }
}
