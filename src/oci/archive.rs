//! Container images made from local files, with no registry involved: one layer (an
//! uncompressed tar), an OCI image config and manifest, wrapped as an OCI image layout in
//! one tar (what `ctr images import` and `skopeo copy oci-archive:` read). Pure and
//! deterministic: the same files, name and epoch give the same bytes and digests.

use sha2::{Digest, Sha256};

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

    // The layer: parent directories, then files, sorted, owned by root.
    let mut entries: std::collections::BTreeMap<String, Option<&ImageFile>> = Default::default();
    for f in files {
        let rel = f.path.trim_start_matches('/');
        if rel.is_empty()
            || rel
                .split('/')
                .any(|c| c.is_empty() || c == "." || c == "..")
        {
            return Err(format!("image {name}: bad path {:?}", f.path));
        }
        let mut dir = String::new();
        for c in rel
            .split('/')
            .collect::<Vec<_>>()
            .iter()
            .rev()
            .skip(1)
            .rev()
        {
            dir.push_str(c);
            dir.push('/');
            entries.entry(dir.clone()).or_insert(None);
        }
        entries.insert(rel.to_string(), Some(f));
    }
    let mut layer = tar::Builder::new(Vec::new());
    for (path, file) in &entries {
        let mut h = tar::Header::new_ustar();
        h.set_mtime(epoch);
        h.set_uid(0);
        h.set_gid(0);
        match file {
            None => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
                h.set_size(0);
                h.set_cksum();
                layer.append_data(&mut h, path, std::io::empty())
            }
            Some(f) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(f.mode);
                h.set_size(f.bytes.len() as u64);
                h.set_cksum();
                layer.append_data(&mut h, path, f.bytes.as_slice())
            }
        }
        .map_err(|e| format!("image {name}: layer: {e}"))?;
    }
    let layer = layer
        .into_inner()
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
    blobs.sort_by(|a, b| a.0.cmp(&b.0));
    blobs.dedup_by(|a, b| a.0 == b.0);
    let mut out = tar::Builder::new(Vec::new());
    let mut add = |path: &str, bytes: &[u8], dir: bool| {
        let mut h = tar::Header::new_ustar();
        h.set_mtime(epoch);
        h.set_uid(0);
        h.set_gid(0);
        h.set_entry_type(if dir {
            tar::EntryType::Directory
        } else {
            tar::EntryType::Regular
        });
        h.set_mode(if dir { 0o755 } else { 0o644 });
        h.set_size(bytes.len() as u64);
        h.set_cksum();
        out.append_data(&mut h, path, bytes)
            .map_err(|e| format!("image {name}: archive: {e}"))
    };
    add("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#, false)?;
    add("index.json", &index, false)?;
    add("blobs/", &[], true)?;
    add("blobs/sha256/", &[], true)?;
    for (sha, bytes) in &blobs {
        add(&format!("blobs/sha256/{sha}"), bytes, false)?;
    }
    out.into_inner()
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
