//! `slipway build` the way a new user meets it: an empty download cache, the Debian
//! packages from a mirror (here a loopback one holding the example's packages, served
//! by this test on 127.0.0.1), both roles built side by side, and two `slipway build`
//! processes started at once into one cache. Then a rebuild killed with SIGKILL half-way:
//! the previous output stays whole, a second build into the same output is refused while
//! one runs, and the next build removes what the killed one left.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use common::http::Server;
use common::{check, stdout};

/// A mirror of the test lock's packages: each at its `Filename` below the mirror root,
/// linked from the fixture cache (the packages verified when they entered it).
fn mirror(root: &Path) -> (Server, usize) {
    let lock = slipway::debian::lock::Lock::load(&common::fixture("SLIPWAY_TEST_LOCK")).unwrap();
    let cache = common::fixture("SLIPWAY_TEST_CACHE");
    let mut n = 0;
    for p in lock
        .profiles
        .values()
        .flat_map(|l| l.packages.iter().chain(&l.image_packages))
    {
        let to = root.join(&p.filename);
        if to.exists() {
            continue;
        }
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::hard_link(cache.join("sha256").join(&p.sha256), &to).unwrap();
        n += 1;
    }
    (Server::serve(root.to_owned()), n)
}

/// `slipway build` of `cluster` into `out` as a process, from `mirror` into `cache`.
fn build(cluster: &Path, secrets: &Path, out: &Path, mirror: &str, cache: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_slipway"));
    c.arg("build")
        .arg(cluster)
        .arg("--out")
        .arg(out)
        .arg("--secrets")
        .arg(secrets)
        .arg("--no-qcow2")
        .args(["--mirror", mirror])
        .arg("--cache")
        .arg(cache)
        .arg("--lock")
        .arg(common::fixture("SLIPWAY_TEST_LOCK"))
        .arg("--kube-artifacts")
        .arg(common::no_release())
        .arg("--init")
        .arg(common::init_binary())
        .env("SOURCE_DATE_EPOCH", "1764000000");
    c
}

/// Hidden temporary files (`.NAME.tmp-PID-N`, staged trees) anywhere under `dir`.
fn leftovers(dir: &Path) -> Vec<PathBuf> {
    common::walk(dir)
        .into_iter()
        .filter(|p| p.to_string_lossy().contains(".tmp-"))
        .collect()
}

/// Waits until `f` holds, or fails after `timeout` naming `what`.
fn wait(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < timeout, "{what} within {timeout:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn two_builds_at_once_from_an_empty_cache_then_a_killed_one() {
    let tmp = tempfile::tempdir().unwrap();
    let (server, packages) = mirror(&tmp.path().join("mirror"));
    let cache = tmp.path().join("cache");
    let cluster = tmp.path().join("cluster.toml");
    std::fs::copy(common::example(), &cluster).unwrap();
    let secrets = tmp.path().join("secrets");
    check(
        Command::new(env!("CARGO_BIN_EXE_slipway"))
            .arg("secrets")
            .arg(&cluster)
            .arg("--secrets")
            .arg(&secrets),
    );

    // Two processes at once, one empty cache: both succeed, byte for byte alike.
    let (a, b) = (tmp.path().join("out-a"), tmp.path().join("out-b"));
    let t = Instant::now();
    let mut first = build(&cluster, &secrets, &a, &server.url, &cache)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let second = check(&mut build(&cluster, &secrets, &b, &server.url, &cache));
    let first_out = {
        let status = first.wait().unwrap();
        let mut err = String::new();
        std::io::Read::read_to_string(first.stderr.as_mut().unwrap(), &mut err).unwrap();
        assert!(status.success(), "the first build failed: {err}");
        err
    };
    eprintln!(
        "two builds from an empty cache at once: {:.1} s ({packages} packages)",
        t.elapsed().as_secs_f64()
    );
    assert!(
        !first_out.lines().any(|l| l.starts_with("error")),
        "{first_out}"
    );
    assert!(stdout(&second).contains("manifest.json"));
    let sums_a = common::sha256s(&a);
    assert_eq!(
        sums_a,
        common::sha256s(&b),
        "two builds of the same inputs differ"
    );
    assert_eq!(
        std::fs::read(a.join("manifest.json")).unwrap(),
        std::fs::read(b.join("manifest.json")).unwrap()
    );
    // Each package fetched once (the second process waited for the first's download),
    // every cached blob whole, no partial download left.
    let mut gets: BTreeMap<String, usize> = BTreeMap::new();
    for l in server.log.lock().unwrap().iter() {
        *gets
            .entry(l.split(' ').next().unwrap().to_string())
            .or_default() += 1;
    }
    assert_eq!(gets.len(), packages, "{gets:?}");
    let twice: Vec<_> = gets.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "fetched more than once: {twice:?}");
    for e in std::fs::read_dir(cache.join("sha256")).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with('.') {
            panic!("a temporary file in the cache: {}", p.display());
        }
        let (_, sum) = slipway::debian::fetch::hash_file(&p).unwrap();
        assert_eq!(sum, name, "{} is corrupt", p.display());
    }
    assert_eq!(std::fs::read_dir(cache.join("partial")).unwrap().count(), 0);

    // A rebuild of out-a with other inputs (another SOURCE_DATE_EPOCH: every role is
    // built again), killed while it writes a role's disk.
    let mut rebuild = build(&cluster, &secrets, &a, &server.url, &cache);
    rebuild.env("SOURCE_DATE_EPOCH", "1764086400");
    let mut victim = Killed(rebuild.spawn().unwrap());
    wait(
        "the rebuild writing a role disk",
        Duration::from_secs(600),
        || !leftovers(&a.join("images")).is_empty(),
    );
    // While it runs, nobody else writes out-a.
    let refused = build(&cluster, &secrets, &a, &server.url, &cache)
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        err.contains("another slipway process is writing") && err.contains("out-a"),
        "{err}"
    );
    victim.0.kill().unwrap();
    victim.0.wait().unwrap();
    // The previous output is whole: every file as the build that wrote it listed it.
    assert_eq!(
        common::sha256s(&a),
        sums_a,
        "a killed build changed the output"
    );
    let left = leftovers(&a);
    assert!(!left.is_empty());

    // The next build removes what the killed one left (and reuses what it can).
    let o = check(&mut build(&cluster, &secrets, &a, &server.url, &cache));
    assert!(
        stdout(&o).contains("kept the role images of control-plane, worker unchanged"),
        "{}",
        stdout(&o)
    );
    assert_eq!(leftovers(&a), Vec::<PathBuf>::new());
    assert_eq!(common::sha256s(&a), sums_a);
}
