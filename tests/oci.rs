//! The OCI pull client against a real registry: Debian's docker-registry (the CNCF
//! distribution registry) on 127.0.0.1, test images pushed with skopeo from OCI layouts
//! this test writes. Checked: pull by index digest picks linux/amd64; every blob lands
//! in the cache and hashes right; a second pull works with the registry gone; a tampered
//! layer or manifest in the registry's storage is refused by digest; an index without
//! linux/amd64, an unknown digest and a registry that is not there are refused, named.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use slipway::debian::fetch::Cache;
use slipway::oci::{Client, OciError, Reference};

/// A docker-registry on 127.0.0.1, killed on drop.
struct Registry {
    child: Child,
    port: u16,
    storage: PathBuf,
}

impl Registry {
    fn start(dir: &Path) -> Registry {
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
    fn blob_data(&self, sha256: &str) -> PathBuf {
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

fn sha(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

/// One image per architecture, each a single-layer tar holding /hello-ARCH.
struct Layout {
    dir: PathBuf,
    index: String,
    /// (architecture, manifest sha256, layer sha256)
    images: Vec<(String, String, String)>,
}

fn layout(dir: &Path, archs: &[&str]) -> Layout {
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
        let content = format!("hello from {arch}\n");
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
fn skopeo_copy(dir: &Path, from: &str, to: &str, all: bool) {
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
    common::check(cmd.arg(from).arg(to));
}

/// Pushes `l` to `reg` as REPO:v1 with skopeo, digests preserved.
fn push(reg: &Registry, l: &Layout, repo: &str, dir: &Path) {
    skopeo_copy(
        dir,
        &format!("oci:{}:v1", l.dir.display()),
        &format!("docker://127.0.0.1:{}/{repo}:v1", reg.port),
        true,
    );
}

fn reference(reg: &Registry, repo: &str, sha256: &str) -> Reference {
    format!("127.0.0.1:{}/{repo}:v1@sha256:{sha256}", reg.port)
        .parse()
        .unwrap()
}

#[test]
fn pulls_amd64_by_index_digest_and_again_with_the_registry_gone() {
    let tmp = tempfile::tempdir().unwrap();
    let reg = Registry::start(tmp.path());
    let l = layout(&tmp.path().join("layout"), &["arm64", "amd64"]);
    push(&reg, &l, "test/hello", tmp.path());
    let cache = Cache::new(&tmp.path().join("cache"));
    let r = reference(&reg, "test/hello", &l.index);
    let p = Client::new(&cache).pull(&r).unwrap();
    let (_, amd64, layer) = l.images.iter().find(|i| i.0 == "amd64").unwrap();
    assert_eq!(&p.manifest.sha256, amd64, "the linux/amd64 manifest");
    assert_eq!(p.layers.len(), 1);
    assert_eq!(&p.layers[0].sha256, layer);
    for b in std::iter::once(&p.config)
        .chain(&p.layers)
        .chain([&p.manifest])
    {
        let bytes = std::fs::read(&b.path).unwrap();
        assert_eq!(sha(&bytes), b.sha256, "{}", b.path.display());
        assert_eq!(bytes.len() as u64, b.size);
    }
    let layer_tar = std::fs::read(&p.layers[0].path).unwrap();
    assert!(String::from_utf8_lossy(&layer_tar).contains("hello from amd64"));

    // The registry gone: the same pull is served by the cache, verified again.
    drop(reg);
    let again = Client::new(&cache).pull(&r).unwrap();
    assert_eq!(again.layers, p.layers);
    // ...but an empty cache cannot be filled, and says so.
    let empty = Cache::new(&tmp.path().join("empty"));
    let e = Client::new(&empty).pull(&r).unwrap_err();
    assert!(
        matches!(e, OciError::Unreachable { .. }) && e.to_string().contains("not in the cache"),
        "{e}"
    );
}

#[test]
fn a_tampered_layer_or_manifest_is_refused_by_digest() {
    let tmp = tempfile::tempdir().unwrap();
    let reg = Registry::start(tmp.path());
    let l = layout(&tmp.path().join("layout"), &["amd64"]);
    push(&reg, &l, "test/tampered", tmp.path());
    let (_, manifest, layer) = l.images[0].clone();
    let flip = |path: &Path| {
        let mut b = std::fs::read(path).unwrap();
        let i = b.len() / 2;
        b[i] ^= 0x20;
        std::fs::write(path, b).unwrap();
    };
    flip(&reg.blob_data(&layer));
    let cache = Cache::new(&tmp.path().join("cache"));
    let e = Client::new(&cache)
        .pull(&reference(&reg, "test/tampered", &l.index))
        .unwrap_err();
    assert!(
        e.to_string().contains(&layer) && e.to_string().contains("SHA-256 is"),
        "{e}"
    );
    assert!(
        !cache.blob_path(&layer).exists(),
        "a tampered layer reached the cache"
    );

    flip(&reg.blob_data(&manifest));
    let cache = Cache::new(&tmp.path().join("cache2"));
    let e = Client::new(&cache)
        .pull(&reference(&reg, "test/tampered", &l.index))
        .unwrap_err();
    assert!(
        matches!(e, OciError::DigestMismatch { .. }) && e.to_string().contains(&manifest),
        "{e}"
    );
}

#[test]
fn no_amd64_image_and_unknown_digests_are_refused_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    let reg = Registry::start(tmp.path());
    let l = layout(&tmp.path().join("layout"), &["arm64", "riscv64"]);
    push(&reg, &l, "test/arm", tmp.path());
    let cache = Cache::new(&tmp.path().join("cache"));
    let e = Client::new(&cache)
        .pull(&reference(&reg, "test/arm", &l.index))
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("no linux/amd64 image in its index (it has: linux/arm64, linux/riscv64)"),
        "{e}"
    );
    let unknown = sha(b"not pushed");
    let e = Client::new(&cache)
        .pull(&reference(&reg, "test/arm", &unknown))
        .unwrap_err();
    assert!(
        matches!(e, OciError::Refused { status: 404, .. })
            && e.to_string().contains("MANIFEST_UNKNOWN"),
        "{e}"
    );

    // The CLI says the same, and refuses a reference without a digest.
    let o = Command::new(env!("CARGO_BIN_EXE_slipway"))
        .args(["pull", "--cache"])
        .arg(tmp.path().join("cli-cache"))
        .arg(format!(
            "127.0.0.1:{}/test/arm:v1@sha256:{}",
            reg.port, l.index
        ))
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("no linux/amd64 image"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let o = Command::new(env!("CARGO_BIN_EXE_slipway"))
        .args(["pull", "registry.example/pause:3.10"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("no digest: pin it as NAME@sha256:HEX"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// A loopback front for `reg` that wants a bearer token, as public registries do: a
/// request without `Bearer good-token` gets 401 and a challenge naming /token, which
/// hands out that token for the right scope. Returns its port and its request log.
fn token_front(reg: &Registry) -> (u16, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let upstream = format!("http://127.0.0.1:{}", reg.port);
    let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log2 = log.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
            let (mut auth, mut accept) = (String::new(), String::new());
            loop {
                let mut h = String::new();
                reader.read_line(&mut h).unwrap();
                if h.trim().is_empty() {
                    break;
                }
                let (k, v) = h.split_once(':').unwrap_or((&h, ""));
                match k.to_ascii_lowercase().as_str() {
                    "authorization" => auth = v.trim().to_string(),
                    "accept" => accept = v.trim().to_string(),
                    _ => {}
                }
            }
            log2.lock()
                .unwrap()
                .push(format!("{path} auth={}", !auth.is_empty()));
            let (status, ctype, body): (u16, String, Vec<u8>) = if path.starts_with("/token?") {
                if path.contains("service=test-registry")
                    && path.contains("scope=repository%3Atest%2Fhello%3Apull")
                {
                    (
                        200,
                        "application/json".into(),
                        br#"{"token":"good-token"}"#.to_vec(),
                    )
                } else {
                    (403, "text/plain".into(), b"wrong scope".to_vec())
                }
            } else if auth != "Bearer good-token" {
                (
                    401,
                    "application/json".into(),
                    br#"{"errors":[{"code":"UNAUTHORIZED","message":"token needed"}]}"#.to_vec(),
                )
            } else {
                let resp = ureq::get(&format!("{upstream}{path}"))
                    .header("Accept", &accept)
                    .config()
                    .http_status_as_error(false)
                    .build()
                    .call()
                    .unwrap();
                let status = resp.status().as_u16();
                let ctype = resp
                    .headers()
                    .get("content-type")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("application/octet-stream")
                    .to_string();
                let mut body = Vec::new();
                resp.into_body()
                    .into_reader()
                    .read_to_end(&mut body)
                    .unwrap();
                (status, ctype, body)
            };
            let mut s = stream;
            let mut head = format!(
                "HTTP/1.1 {status} X\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n",
                body.len()
            );
            if status == 401 {
                head.push_str(&format!(
                    "WWW-Authenticate: Bearer realm=\"http://127.0.0.1:{port}/token\",service=\"test-registry\",scope=\"repository:test/hello:pull\"\r\n"
                ));
            }
            head.push_str("\r\n");
            let _ = s.write_all(head.as_bytes());
            let _ = s.write_all(&body);
        }
    });
    (port, log)
}

#[test]
fn a_registry_that_wants_a_bearer_token_gets_one() {
    let tmp = tempfile::tempdir().unwrap();
    let reg = Registry::start(tmp.path());
    let l = layout(&tmp.path().join("layout"), &["amd64"]);
    push(&reg, &l, "test/hello", tmp.path());
    let (port, log) = token_front(&reg);
    let r: Reference = format!("127.0.0.1:{port}/test/hello:v1@sha256:{}", l.index)
        .parse()
        .unwrap();
    let cache = Cache::new(&tmp.path().join("cache"));
    let p = Client::new(&cache).pull(&r).unwrap();
    assert_eq!(p.layers[0].sha256, l.images[0].2);
    let log = log.lock().unwrap().clone();
    assert!(log.iter().any(|l| l.starts_with("/token?")), "{log:?}");
    // Blobs went with the token.
    assert!(
        log.iter()
            .filter(|l| l.contains("/blobs/"))
            .all(|l| l.ends_with("auth=true")),
        "{log:?}"
    );
}

#[test]
fn built_archives_are_valid_oci_layouts_that_registries_take() {
    use slipway::oci::archive::{ImageFile, build};
    let tmp = tempfile::tempdir().unwrap();
    let image = build(
        "127.0.0.1:5000/test/pause:1.0",
        &[ImageFile {
            path: "/pause".into(),
            mode: 0o755,
            bytes: std::fs::read(common::init_binary().with_file_name("slipway-pause"))
                .expect("slipway-pause (make init builds it)"),
        }],
        &["/pause"],
        1_700_000_000,
    )
    .unwrap();
    let archive = tmp.path().join("pause.tar");
    std::fs::write(&archive, &image.bytes).unwrap();
    // skopeo reads the manifest back with the digest we recorded...
    let raw = common::check(
        Command::new("skopeo")
            .args(["inspect", "--raw"])
            .arg(format!("oci-archive:{}", archive.display())),
    );
    assert_eq!(sha(&raw.stdout), image.manifest_sha256);
    let cfg = common::check(
        Command::new("skopeo")
            .args(["inspect", "--config"])
            .arg(format!("oci-archive:{}", archive.display())),
    );
    let cfg: serde_json::Value = serde_json::from_slice(&cfg.stdout).unwrap();
    assert_eq!(cfg["architecture"], "amd64");
    assert_eq!(cfg["config"]["Entrypoint"][0], "/pause");
    // ...copies it to a registry (verifying every blob on the way), and our client pulls
    // the same manifest and layer back.
    let reg = Registry::start(tmp.path());
    skopeo_copy(
        tmp.path(),
        &format!("oci-archive:{}", archive.display()),
        &format!("docker://127.0.0.1:{}/test/pause:1.0", reg.port),
        false,
    );
    let cache = Cache::new(&tmp.path().join("cache"));
    let p = Client::new(&cache)
        .pull(&reference(&reg, "test/pause", &image.manifest_sha256))
        .unwrap();
    assert_eq!(p.layers[0].sha256, image.layer_sha256);
    assert_eq!(p.config.sha256, image.config_sha256);
}

/// A profile's `[[images]]`: one pulled from a registry (pinned), one made from a
/// directory; both end up in the control-plane root only, listed with their digests.
#[test]
fn profile_images_from_a_registry_and_a_directory_are_baked_in() {
    let tmp = tempfile::tempdir().unwrap();
    let reg = Registry::start(tmp.path());
    let l = layout(&tmp.path().join("layout"), &["amd64", "arm64"]);
    push(&reg, &l, "test/hello", tmp.path());
    // A data directory: the project's profiles and overlays, plus images for the
    // control-plane role.
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    for d in ["profiles", "overlays"] {
        common::check(
            Command::new("cp")
                .arg("-a")
                .arg(common::repo().join(d))
                .arg(&data),
        );
    }
    std::fs::create_dir_all(data.join("tools/usr/bin")).unwrap();
    std::fs::write(data.join("tools/usr/bin/tool"), "#!/bin/sh\necho tool\n").unwrap();
    let cp = data.join("profiles/control-plane.toml");
    let mut text = std::fs::read_to_string(&cp).unwrap();
    text.push_str(&format!(
        "\n[[images]]\nname = \"registry.example/test/hello:v1\"\nsource = \"oci:127.0.0.1:{}/test/hello:v1@sha256:{}\"\n\n[[images]]\nname = \"registry.example/test/tool:1\"\nsource = \"dir:tools\"\nentrypoint = [\"/usr/bin/tool\"]\n",
        reg.port, l.index
    ));
    std::fs::write(&cp, text).unwrap();
    let mut rootfs = common::offline_options();
    rootfs.data = slipway::profile::DataDir::new(&data);
    let opts = slipway::build::BuildOptions {
        rootfs,
        secrets_dir: tmp.path().join("secrets"),
        init: common::init_binary(),
        qcow2: false,
        progress: false,
    };
    let out = tmp.path().join("out");
    let m = slipway::build::build(&common::example(), &opts, &out).unwrap();
    let find = |n: &str| m.images.iter().find(|i| i.name == n).unwrap();
    let hello = find("registry.example/test/hello:v1");
    let (_, amd64, _) = l.images.iter().find(|i| i.0 == "amd64").unwrap();
    assert_eq!(hello.digest, format!("sha256:{amd64}"));
    assert_eq!(hello.roles, ["control-plane"]);
    let tool = find("registry.example/test/tool:1");
    assert_eq!(tool.roles, ["control-plane"]);
    // Recorded as the profile wrote it, not as an absolute path of this checkout.
    assert_eq!(tool.source, "dir:tools");
    assert_eq!(find("registry.k8s.io/pause:3.10").roles.len(), 2);
    // Read back from the control-plane root by skopeo: the recorded digests, and the
    // tool's file with its mode.
    let disk = out.join("images/control-plane.raw");
    let root_part = common::sfdisk_parts(&disk)
        .into_iter()
        .find(|p| p.name == "root-a")
        .unwrap();
    let root = tmp.path().join("root.sqfs");
    std::fs::write(
        &root,
        common::read_range(&disk, root_part.start, root_part.size),
    )
    .unwrap();
    let x = tmp.path().join("x");
    common::check(
        Command::new("unsquashfs")
            .args(["-q", "-d"])
            .arg(&x)
            .arg(&root)
            .arg("usr/share/slipway/images"),
    );
    for i in [hello, tool] {
        let raw = common::check(
            Command::new("skopeo")
                .args(["inspect", "--raw"])
                .arg(format!("oci-archive:{}{}", x.display(), i.path)),
        );
        assert_eq!(
            format!("sha256:{}", sha(&raw.stdout)),
            i.digest,
            "{}",
            i.name
        );
    }
    let unpacked = tmp.path().join("tool-oci");
    skopeo_copy(
        tmp.path(),
        &format!("oci-archive:{}{}", x.display(), tool.path),
        &format!("oci:{}", unpacked.display()),
        false,
    );
    // With the registry gone, a second build takes the pulled image from the cache.
    drop(reg);
    let again = slipway::build::build(&common::example(), &opts, &out).unwrap();
    assert_eq!(
        again.images.iter().map(|i| &i.digest).collect::<Vec<_>>(),
        m.images.iter().map(|i| &i.digest).collect::<Vec<_>>()
    );
    // A bad source is refused by profile, field and reason (the profile's own etcd
    // image is images[0], the two added here 1 and 2).
    let clean = std::fs::read_to_string(&cp).unwrap();
    for (source, why) in [
        ("http://x", "expected oci:"),
        (
            "deb:etcd-server,Not_A_Package",
            "\"Not_A_Package\" is not a Debian package name",
        ),
    ] {
        std::fs::write(
            &cp,
            format!(
                "{clean}\n[[images]]\nname = \"registry.example/x:1\"\nsource = \"{source}\"\n"
            ),
        )
        .unwrap();
        let e = slipway::build::build(&common::example(), &opts, &out).unwrap_err();
        let e = format!("{e:#}");
        assert!(
            e.contains("control-plane.toml") && e.contains("images[3].source") && e.contains(why),
            "{e}"
        );
    }
}
