//! The OCI pull client against a real registry: Debian's docker-registry (the CNCF
//! distribution registry) on 127.0.0.1, test images pushed with skopeo from OCI layouts
//! this test writes. Checked: pull by index digest picks linux/amd64; every blob lands
//! in the cache and hashes right; a second pull works with the registry gone; a tampered
//! layer or manifest in the registry's storage is refused by digest; an index without
//! linux/amd64, an unknown digest and a registry that is not there are refused, named.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::Command;

use common::registry::{Registry, layout, layout_labelled, push, reference, sha, skopeo_copy};
use slipway::debian::fetch::Cache;
use slipway::oci::{Client, OciError, Reference};

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

/// What `slipway lock --kubernetes` does with a tag: the digest of what the registry
/// serves for it now (an index here), which a pull then takes; a tag moved to another
/// image resolves to that one; an unknown tag, a tag without linux/amd64 and a name
/// without a tag are refused, named.
#[test]
fn a_tag_resolves_to_the_digest_it_names_now() {
    let tmp = tempfile::tempdir().unwrap();
    let reg = Registry::start(tmp.path());
    let l = layout(&tmp.path().join("layout"), &["arm64", "amd64"]);
    push(&reg, &l, "test/hello", tmp.path());
    let arm = layout(&tmp.path().join("arm"), &["arm64"]);
    push(&reg, &arm, "test/arm", tmp.path());
    let cache = Cache::new(&tmp.path().join("cache"));
    let client = Client::new(&cache);
    let name = format!("127.0.0.1:{}/test/hello:v1", reg.port);
    let r = client.resolve(&name).unwrap();
    assert_eq!(r.sha256, l.index);
    assert_eq!(r.to_string(), format!("{name}@sha256:{}", l.index));
    let (_, amd64, _) = l.images.iter().find(|i| i.0 == "amd64").unwrap();
    assert_eq!(&client.pull(&r).unwrap().manifest.sha256, amd64);

    let moved = layout_labelled(&tmp.path().join("moved"), &["amd64"], "moved");
    push(&reg, &moved, "test/hello", tmp.path());
    assert_eq!(client.resolve(&name).unwrap().sha256, moved.index);

    let e = client
        .resolve(&format!("127.0.0.1:{}/test/hello:v9", reg.port))
        .unwrap_err();
    assert!(
        matches!(e, OciError::Refused { status: 404, .. })
            && e.to_string().contains("MANIFEST_UNKNOWN")
            && e.to_string().contains("test/hello:v9"),
        "{e}"
    );
    let e = client
        .resolve(&format!("127.0.0.1:{}/test/arm:v1", reg.port))
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("test/arm:v1: no linux/amd64 image in its index (it has: linux/arm64)"),
        "{e}"
    );
    for (bad, why) in [
        ("127.0.0.1:5000/test/hello", "no tag"),
        (
            &format!("127.0.0.1:5000/test/hello:v1@sha256:{}", l.index)[..],
            "has no digest",
        ),
        ("hello:v1", "no registry"),
    ] {
        let e = client.resolve(bad).unwrap_err().to_string();
        assert!(e.contains(bad) && e.contains(why), "{e}");
    }
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
    let data = common::data_copy(tmp.path());
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
    let opts = common::build_options(rootfs, &tmp.path().join("secrets"));
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
