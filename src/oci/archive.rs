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
    build_tree(name, &tree, entrypoint, epoch)
}

/// The search path the image config gives processes, so that a pod's `command: [etcd]`
/// finds `/usr/bin/etcd`.
const PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Builds the image `name` whose one layer is `tree`.
pub fn build_tree(
    name: &str,
    tree: &Tree,
    entrypoint: &[&str],
    epoch: u64,
) -> Result<ImageArchive, String> {
    let tag = tag_of(name)?;
    let layer = crate::image::tar::write(tree, epoch, Vec::new())
        .map_err(|e| format!("image {name}: layer: {e}"))?;
    let layer_sha = hex::encode(Sha256::digest(&layer));

    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": { "Entrypoint": entrypoint, "Env": [PATH] },
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
    super::name_tag(name)
        .map(str::to_string)
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

/// The shared libraries an image's programs need that the image lacks: for every ELF
/// file in `tree`, its program interpreter (`PT_INTERP`) and each `DT_NEEDED` library
/// looked up in the dynamic linker's default directories. Each missing one as
/// "FILE needs LIBRARY". A program that would not start in the container is found here,
/// at build time, rather than as a crash-looping pod on a node.
pub fn missing_libraries(tree: &Tree) -> Vec<String> {
    const LIB_DIRS: [&str; 4] = [
        "usr/lib/x86_64-linux-gnu",
        "lib/x86_64-linux-gnu",
        "usr/lib",
        "lib",
    ];
    let present = |path: &str| {
        tree.resolve(path.trim_start_matches('/'))
            .is_some_and(|p| tree.read(&p).is_some())
    };
    let mut missing = Vec::new();
    for (path, _) in tree.iter() {
        let Some(data) = tree.read(path) else {
            continue;
        };
        if !data.starts_with(b"\x7fELF") {
            continue;
        }
        let Ok(Needs {
            interp,
            needed,
            runpath,
        }) = elf_needs(data)
        else {
            continue;
        };
        // DT_RUNPATH/DT_RPATH first (glibc's gconv modules find their helpers through
        // `$ORIGIN`), then the default directories.
        let origin = path.rsplit_once('/').map_or("", |(d, _)| d);
        let dirs: Vec<String> = runpath
            .iter()
            .flat_map(|r| r.split(':'))
            .filter(|d| !d.is_empty())
            .map(|d| {
                d.replace("${ORIGIN}", &format!("/{origin}"))
                    .replace("$ORIGIN", &format!("/{origin}"))
            })
            .chain(LIB_DIRS.iter().map(|d| format!("/{d}")))
            .collect();
        if let Some(i) = interp
            && !present(&i)
        {
            missing.push(format!("/{path} needs its interpreter {i}"));
        }
        for lib in needed {
            if !dirs.iter().any(|d| present(&format!("{d}/{lib}"))) {
                missing.push(format!("/{path} needs {lib}"));
            }
        }
    }
    missing
}

/// What an ELF file needs to be loaded.
struct Needs {
    /// `PT_INTERP`.
    interp: Option<String>,
    /// `DT_NEEDED`.
    needed: Vec<String>,
    /// `DT_RUNPATH` and `DT_RPATH`.
    runpath: Vec<String>,
}

fn elf_needs(data: &[u8]) -> Result<Needs, object::read::Error> {
    use object::read::elf::{Dyn, ElfFile64, FileHeader, ProgramHeader};
    let elf = ElfFile64::<object::Endianness>::parse(data)?;
    let endian = elf.endian();
    let mut interp = None;
    for ph in elf.elf_program_headers() {
        if ph.p_type(endian) == object::elf::PT_INTERP
            && let Ok(bytes) = ph.data(endian, data)
        {
            let s = bytes.split(|&b| b == 0).next().unwrap_or_default();
            interp = Some(String::from_utf8_lossy(s).into_owned());
        }
    }
    let mut needed = Vec::new();
    let mut runpath = Vec::new();
    let sections = elf.elf_header().sections(endian, data)?;
    if let Some((dynamic, index)) = sections.dynamic(endian, data)? {
        // `index` is the dynamic section's linked string table.
        let strings = sections.strings(endian, data, index)?;
        for d in dynamic {
            let tag = d.tag(endian);
            let list = if tag == object::elf::DT_NEEDED {
                &mut needed
            } else if tag == object::elf::DT_RUNPATH || tag == object::elf::DT_RPATH {
                &mut runpath
            } else {
                continue;
            };
            if let Ok(s) = d.string(endian, strings) {
                list.push(String::from_utf8_lossy(s).into_owned());
            }
        }
    }
    Ok(Needs {
        interp,
        needed,
        runpath,
    })
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
    fn a_program_without_its_libraries_is_found_out() {
        // The host's /usr/bin/true: dynamically linked against libc, as Debian builds it.
        let prog = std::fs::read("/usr/bin/true").unwrap();
        let mut tree = Tree::new_merged_usr();
        tree.insert("usr/bin/true", Entry::file(prog, 0o755));
        tree.insert(
            "usr/share/doc/x",
            Entry::file(&b"\x7fELF, but not one"[..], 0o644),
        );
        let missing = missing_libraries(&tree);
        assert_eq!(
            missing,
            [
                "/usr/bin/true needs its interpreter /lib64/ld-linux-x86-64.so.2",
                "/usr/bin/true needs libc.so.6"
            ]
        );
        // The interpreter through /lib64 -> usr/lib64 and a relative link, as libc6 lays
        // it out; libc.so.6 in the multiarch directory.
        tree.insert(
            "usr/lib64/ld-linux-x86-64.so.2",
            Entry::symlink("../lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"),
        );
        assert_eq!(
            missing_libraries(&tree).len(),
            2,
            "a dangling link is not a library"
        );
        tree.insert(
            "usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
            Entry::file(&b"ld"[..], 0o755),
        );
        tree.insert(
            "usr/lib/x86_64-linux-gnu/libc.so.6",
            Entry::file(&b"c"[..], 0o755),
        );
        assert!(
            missing_libraries(&tree).is_empty(),
            "{:?}",
            missing_libraries(&tree)
        );
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
