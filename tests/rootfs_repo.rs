//! `slipway rootfs` against a small signed Debian repository built here and served on
//! 127.0.0.1: the good path, reproducibility, and every refusal (bad signature, hash
//! mismatch, unknown package, unsatisfiable dependency, missing mirror, stale lock),
//! each leaving the cache consistent. Real tools make the fixtures: dpkg-deb builds the
//! packages, gpg signs the InRelease.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::check;
use common::http::Server;
use sha2::{Digest, Sha256};
use slipway::profile::DataDir;
use slipway::rootfs::{self, Options, RootfsError};

struct Repo {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    data: PathBuf,
    server: Server,
    gnupg: PathBuf,
}

const SDE: u64 = 1_700_000_000;

/// Builds a .deb with dpkg-deb from (path, contents) pairs.
fn deb(work: &Path, name: &str, version: &str, fields: &str, files: &[(&str, &str)]) -> Vec<u8> {
    let dir = work.join(format!("{name}-build"));
    std::fs::create_dir_all(dir.join("DEBIAN")).unwrap();
    std::fs::write(
        dir.join("DEBIAN/control"),
        format!("Package: {name}\nVersion: {version}\nArchitecture: amd64\nMaintainer: Test <t@slipway.invalid>\nDescription: test package {name}\n{fields}"),
    )
    .unwrap();
    for (p, c) in files {
        let f = dir.join(p);
        std::fs::create_dir_all(f.parent().unwrap()).unwrap();
        std::fs::write(&f, c).unwrap();
    }
    let out = work.join(format!("{name}_{version}_amd64.deb"));
    check(
        Command::new("dpkg-deb")
            .args(["--root-owner-group", "-Zxz", "--build"])
            .arg(&dir)
            .arg(&out),
    );
    std::fs::read(out).unwrap()
}

fn sha(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

fn gpg(gnupg: &Path) -> Command {
    let mut c = Command::new("gpg");
    c.env("GNUPGHOME", gnupg).args([
        "--batch",
        "--quiet",
        "--pinentry-mode",
        "loopback",
        "--passphrase",
        "",
    ]);
    c
}

/// Writes the index and a signed InRelease. `tamper` edits the Packages text before it is
/// hashed and signed (for hash-mismatch cases).
fn publish(root: &Path, gnupg: &Path, signer: &str, packages: &str) {
    let dists = root.join("dists/test/main/binary-amd64");
    std::fs::create_dir_all(&dists).unwrap();
    let mut xz = liblzma::write::XzEncoder::new(Vec::new(), 6);
    xz.write_all(packages.as_bytes()).unwrap();
    let xz = xz.finish().unwrap();
    std::fs::write(dists.join("Packages.xz"), &xz).unwrap();
    let release = format!(
        "Origin: Slipway test\nSuite: test\nCodename: test\nArchitectures: amd64\nComponents: main\nSHA256:\n {} {} main/binary-amd64/Packages.xz\n",
        sha(&xz),
        xz.len()
    );
    let rel = root.join("dists/test/Release");
    std::fs::write(&rel, release).unwrap();
    let _ = std::fs::remove_file(root.join("dists/test/InRelease"));
    check(
        gpg(gnupg)
            .args(["--local-user", signer, "--clearsign", "--output"])
            .arg(root.join("dists/test/InRelease"))
            .arg(&rel),
    );
}

fn repo() -> Repo {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("mirror");
    let work = tmp.path().join("work");
    let gnupg = tmp.path().join("gnupg");
    std::fs::create_dir_all(&work).unwrap();
    common::create_private_dir(&gnupg);
    for uid in [
        "Slipway Test <test@slipway.invalid>",
        "Stranger <other@slipway.invalid>",
    ] {
        check(gpg(&gnupg).args(["--quick-gen-key", uid, "ed25519", "sign", "never"]));
    }
    let pool = root.join("pool");
    std::fs::create_dir_all(&pool).unwrap();
    let mut packages = String::new();
    let mut add = |name: &str, version: &str, fields: &str, files: &[(&str, &str)]| {
        let bytes = deb(&work, name, version, fields, files);
        let file = format!("pool/{name}_{version}_amd64.deb");
        std::fs::write(root.join(&file), &bytes).unwrap();
        packages.push_str(&format!(
            "Package: {name}\nVersion: {version}\nArchitecture: amd64\n{fields}Filename: {file}\nSize: {}\nSHA256: {}\n\n",
            bytes.len(),
            sha(&bytes)
        ));
    };
    add(
        "base-passwd",
        "3.6.7",
        "Priority: required\n",
        &[
            (
                "usr/share/base-passwd/passwd.master",
                "root:*:0:0:root:/root:/bin/bash\nnobody:*:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n",
            ),
            (
                "usr/share/base-passwd/group.master",
                "root:*:0:\nshadow:*:42:\nnogroup:*:65534:\n",
            ),
        ],
    );
    add("libfoo", "1.2-1", "", &[("usr/lib/libfoo.so.1", "foo")]);
    add(
        "hello",
        "2.10-3",
        "Depends: libfoo (>= 1.0), greeter | hello-greeter\n",
        &[
            ("usr/bin/hello", "#!/bin/sh\necho hello\n"),
            (
                "usr/lib/sysusers.d/hello.conf",
                "u hello - \"Hello daemon\" /var/lib/hello\n",
            ),
        ],
    );
    add(
        "greeter",
        "1",
        "Provides: hello-greeter\n",
        &[("usr/share/greeter", "hi")],
    );
    add(
        "broken",
        "1",
        "Depends: missing (>= 2)\n",
        &[("usr/share/broken", "x")],
    );
    std::fs::write(root.join("Packages.txt"), &packages).unwrap();
    publish(&root, &gnupg, "test@slipway.invalid", &packages);
    // The archive keyring holds only the test key.
    let keyring = tmp.path().join("keyring.gpg");
    let o = check(gpg(&gnupg).args(["--export", "test@slipway.invalid"]));
    std::fs::write(&keyring, o.stdout).unwrap();
    // Data dir: the project's rules and overlays, plus a test profile.
    let data = tmp.path().join("data");
    std::fs::create_dir_all(data.join("profiles/debian")).unwrap();
    std::fs::copy(
        common::repo().join("profiles/debian/maintscripts.toml"),
        data.join("profiles/debian/maintscripts.toml"),
    )
    .unwrap();
    common::copy_tree(
        &common::repo().join("overlays/rootfs"),
        &data.join("overlays/rootfs"),
    );
    write_profile(&data, &keyring, &["hello"]);
    let server = Server::serve(root.clone());
    Repo {
        _tmp: tmp,
        root,
        data,
        server,
        gnupg,
    }
}

fn write_profile(data: &Path, keyring: &Path, packages: &[&str]) {
    let list = packages
        .iter()
        .map(|p| format!("{p:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    std::fs::write(
        data.join("profiles/test.toml"),
        format!(
            "description = \"test\"\nsuite = \"test\"\nkernel = \"libfoo\"\nkeyring = {:?}\npackages = [{list}]\n",
            keyring.display().to_string()
        ),
    )
    .unwrap();
}

impl Repo {
    fn opts(&self, cache: &Path) -> Options {
        Options {
            data: DataDir::new(&self.data),
            cache: cache.to_owned(),
            lock_path: cache.parent().unwrap().join("slipway.lock"),
            mirror: Some(self.server.url.clone()),
            host_root: self.data.join("no-host"),
            locked: false,
            source_date_epoch: SDE,
            kube_artifacts: None,
        }
    }
    fn keyring(&self) -> PathBuf {
        self._tmp.path().join("keyring.gpg")
    }
    fn packages(&self) -> String {
        std::fs::read_to_string(self.root.join("Packages.txt")).unwrap()
    }
}

/// Every blob in the cache hashes to its name, and no partial download is left.
fn assert_cache_consistent(cache: &Path) {
    if let Ok(rd) = std::fs::read_dir(cache.join("sha256")) {
        for e in rd {
            let p = e.unwrap().path();
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            assert_eq!(
                sha(&std::fs::read(&p).unwrap()),
                name,
                "{} is corrupt",
                p.display()
            );
        }
    }
    let partial = std::fs::read_dir(cache.join("partial"))
        .map(|r| r.count())
        .unwrap_or(0);
    assert_eq!(partial, 0, "partial downloads left behind");
}

fn build_tar(r: &Repo, cache: &Path, out: &Path) -> String {
    let built = rootfs::build("test", &r.opts(cache)).unwrap();
    rootfs::write_outputs(&built, out, SDE).unwrap()
}

#[test]
fn builds_reproducibly_from_a_signed_repository() {
    let r = repo();
    let work = tempfile::tempdir().unwrap();
    let cache = work.path().join("cache");
    let a = build_tar(&r, &cache, &work.path().join("a.tar"));
    // The output directory is created when missing.
    assert_eq!(build_tar(&r, &cache, &work.path().join("new/dir/x.tar")), a);
    let debs_fetched = r.server.requests(".deb").len();
    assert_eq!(
        debs_fetched,
        4,
        "base-passwd, libfoo, hello, greeter: {:?}",
        r.server.requests("")
    );
    // Second build: same lock, same SOURCE_DATE_EPOCH, warm cache, no .deb downloaded.
    let b = build_tar(&r, &cache, &work.path().join("b.tar"));
    assert_eq!(a, b, "two builds differ");
    assert_eq!(
        r.server.requests(".deb").len(),
        debs_fetched,
        "the warm build downloaded again"
    );
    // A cold cache gives the same bytes too.
    let c = build_tar(
        &r,
        &work.path().join("cache2/c"),
        &work.path().join("c.tar"),
    );
    assert_eq!(a, c);
    assert_cache_consistent(&cache);

    // Contents, read back with the real tar.
    let list = common::stdout(&check(
        Command::new("tar")
            .arg("-tvf")
            .arg(work.path().join("a.tar")),
    ));
    for want in [
        "usr/bin/hello",
        "etc/passwd",
        "etc/shadow",
        "var/lib/dpkg/status",
        "usr/lib/libfoo.so.1",
        "usr/share/greeter",
    ] {
        assert!(
            list.lines().any(|l| l.ends_with(&format!(" {want}"))),
            "{want} missing:\n{list}"
        );
    }
    assert!(
        list.lines()
            .all(|l| l.contains("0/0") || l.contains("0/42")),
        "owners are numeric root (and shadow):\n{list}"
    );
    assert!(
        list.lines().all(|l| l.contains("2023-11-14")),
        "mtimes are SOURCE_DATE_EPOCH:\n{list}"
    );
    let x = tempfile::tempdir().unwrap();
    check(
        Command::new("tar")
            .arg("-xf")
            .arg(work.path().join("a.tar"))
            .arg("-C")
            .arg(x.path()),
    );
    let passwd = std::fs::read_to_string(x.path().join("etc/passwd")).unwrap();
    assert!(
        passwd.contains("hello:x:999:999:Hello daemon:/var/lib/hello:/usr/sbin/nologin"),
        "{passwd}"
    );
    let status = std::fs::read_to_string(x.path().join("var/lib/dpkg/status")).unwrap();
    assert_eq!(
        status.matches("Status: install ok installed").count(),
        4,
        "{status}"
    );
    check(
        Command::new("dpkg")
            .arg(format!(
                "--admindir={}",
                x.path().join("var/lib/dpkg").display()
            ))
            .args(["--audit"]),
    );
    // The SBOM names every package with its checksum.
    let sbom: serde_json::Value =
        serde_json::from_slice(&std::fs::read(work.path().join("a.spdx.json")).unwrap()).unwrap();
    assert_eq!(sbom["spdxVersion"], "SPDX-2.3");
    let names: Vec<&str> = sbom["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["base-passwd", "greeter", "hello", "libfoo"]);
    // The lock pins what was used.
    let lock = std::fs::read_to_string(cache.parent().unwrap().join("slipway.lock")).unwrap();
    assert!(
        lock.contains("name = \"hello\"") && lock.contains("version = \"2.10-3\""),
        "{lock}"
    );
}

#[test]
fn bad_signature_is_refused() {
    let r = repo();
    publish(&r.root, &r.gnupg, "other@slipway.invalid", &r.packages());
    let work = tempfile::tempdir().unwrap();
    let cache = work.path().join("cache");
    let e = rootfs::build("test", &r.opts(&cache)).err().unwrap();
    assert!(matches!(e, RootfsError::Release { .. }), "{e}");
    assert!(e.to_string().contains("does not verify"), "{e}");
    assert!(r.server.requests(".deb").is_empty() && r.server.requests("Packages").is_empty());
    assert_cache_consistent(&cache);
    // A Packages index changed after signing is caught by its signed hash.
    let r = repo();
    let xz = r.root.join("dists/test/main/binary-amd64/Packages.xz");
    let mut bytes = std::fs::read(&xz).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 0xff;
    std::fs::write(&xz, bytes).unwrap();
    let cache = work.path().join("cache2/c");
    let e = rootfs::build("test", &r.opts(&cache)).err().unwrap();
    assert!(e.to_string().contains("SHA-256"), "{e}");
    assert_cache_consistent(&cache);
}

#[test]
fn hash_mismatch_is_refused_and_not_cached() {
    let r = repo();
    let hello = r.root.join("pool/hello_2.10-3_amd64.deb");
    let mut bytes = std::fs::read(&hello).unwrap();
    let n = bytes.len();
    bytes[n - 10] ^= 0x55;
    std::fs::write(&hello, bytes).unwrap();
    let work = tempfile::tempdir().unwrap();
    let cache = work.path().join("cache");
    let e = rootfs::build("test", &r.opts(&cache)).err().unwrap();
    let msg = e.to_string();
    assert!(
        msg.contains("hello_2.10-3_amd64.deb") && msg.contains("SHA-256"),
        "{msg}"
    );
    assert_cache_consistent(&cache);
}

#[test]
fn unknown_and_unsatisfiable_packages() {
    let r = repo();
    let work = tempfile::tempdir().unwrap();
    write_profile(&r.data, &r.keyring(), &["hello", "nope"]);
    let e = rootfs::build("test", &r.opts(&work.path().join("c1/c")))
        .err()
        .unwrap();
    assert_eq!(e.to_string(), "unknown package nope");
    write_profile(&r.data, &r.keyring(), &["broken"]);
    let e = rootfs::build("test", &r.opts(&work.path().join("c2/c")))
        .err()
        .unwrap();
    assert_eq!(
        e.to_string(),
        "broken depends on missing (>= 2), which no package in the index satisfies"
    );
    assert!(
        r.server.requests(".deb").is_empty(),
        "nothing is downloaded for an unresolvable set"
    );
    assert_cache_consistent(&work.path().join("c1/c"));
    assert_cache_consistent(&work.path().join("c2/c"));
}

#[test]
fn missing_mirror_is_a_clear_error() {
    let r = repo();
    let work = tempfile::tempdir().unwrap();
    let mut opts = r.opts(&work.path().join("cache"));
    opts.mirror = None;
    let e = rootfs::build("test", &opts).err().unwrap();
    assert!(matches!(e, RootfsError::NoMirror), "{e}");
    assert!(
        e.to_string()
            .contains("set `mirror` in the profile or pass --mirror"),
        "{e}"
    );
    assert_cache_consistent(&work.path().join("cache"));
}

#[test]
fn tampered_or_truncated_cache_is_refetched() {
    let r = repo();
    let work = tempfile::tempdir().unwrap();
    let cache = work.path().join("cache");
    let good = build_tar(&r, &cache, &work.path().join("a.tar"));
    let before = r.server.requests("hello_").len();
    // Tamper with one cached blob and truncate another.
    let hello_sha = sha(&std::fs::read(r.root.join("pool/hello_2.10-3_amd64.deb")).unwrap());
    let libfoo_sha = sha(&std::fs::read(r.root.join("pool/libfoo_1.2-1_amd64.deb")).unwrap());
    let blob = cache.join("sha256").join(&hello_sha);
    let mut b = std::fs::read(&blob).unwrap();
    b[100] ^= 1;
    std::fs::write(&blob, b).unwrap();
    let lib = cache.join("sha256").join(&libfoo_sha);
    let b = std::fs::read(&lib).unwrap();
    std::fs::write(&lib, &b[..b.len() / 2]).unwrap();
    let again = build_tar(&r, &cache, &work.path().join("b.tar"));
    assert_eq!(good, again);
    assert_eq!(
        r.server.requests("hello_").len(),
        before + 1,
        "the tampered blob was fetched again"
    );
    assert_cache_consistent(&cache);
    // An interrupted download resumes with a Range request.
    std::fs::remove_file(&lib).unwrap();
    std::fs::create_dir_all(cache.join("partial")).unwrap();
    std::fs::write(cache.join("partial").join(&libfoo_sha), &b[..b.len() / 2]).unwrap();
    build_tar(&r, &cache, &work.path().join("c.tar"));
    let ranged: Vec<String> = r
        .server
        .requests("libfoo_")
        .into_iter()
        .filter(|l| l.contains("range="))
        .collect();
    assert_eq!(ranged.len(), 1, "{:?}", r.server.requests("libfoo_"));
    assert_cache_consistent(&cache);
}

#[test]
fn locked_build_refuses_a_stale_lock() {
    let r = repo();
    let work = tempfile::tempdir().unwrap();
    let cache = work.path().join("cache");
    build_tar(&r, &cache, &work.path().join("a.tar"));
    write_profile(&r.data, &r.keyring(), &["hello", "greeter"]);
    let mut opts = r.opts(&cache);
    opts.locked = true;
    let e = rootfs::build("test", &opts).err().unwrap();
    assert!(matches!(e, RootfsError::StaleLock { .. }), "{e}");
    assert!(e.to_string().contains("run `slipway lock`"), "{e}");
    // Fresh lock: --locked builds offline from the cache, the mirror unreachable.
    write_profile(&r.data, &r.keyring(), &["hello"]);
    opts.mirror = Some("http://127.0.0.1:9".into());
    assert!(rootfs::build("test", &opts).is_ok());
}
