//! `slipway serve` against a fake build output on loopback: what it serves byte for byte,
//! what it must never serve (each secret file holds a marker no response body may contain),
//! Range, 100 concurrent clients, and its refusal of a directory that is not a build.

#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use slipway::pxe::serve::{ServeError, ServeOptions, serve};

/// Starts the server on `dir` (port `listen`), keeping the state of `keep`.
fn spawn(
    dir: std::path::PathBuf,
    listen: SocketAddr,
) -> Result<(SocketAddr, slipway::pxe::serve::ServerHandle), ServeError> {
    slipway::pxe::serve::spawn(&ServeOptions {
        dir,
        listen,
        keep_state: Vec::new(),
    })
}

const MAC: &str = "52-54-00-00-00-11";
const SECRET_MARKERS: [&str; 4] = [
    "SECRET-CONFIG-MARKER",
    "SECRET-DISK-MARKER",
    "SECRET-ADMIN-MARKER",
    "SECRET-CA-KEY-MARKER",
];
const BOOT: &str = "#!ipxe\nisset ${slipway-base} || set slipway-base http://CHANGE-ME\n\
                    chain ${slipway-base}/pxe/nodes/${net0/mac:hexhyp}.ipxe\n";

/// Bytes that differ at every offset a Range could pick.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[1] ^ seed)
        .collect()
}

fn sha(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

fn write(path: &Path, bytes: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

struct Fixture {
    _tmp: tempfile::TempDir,
    dir: std::path::PathBuf,
    config: Vec<u8>,
    node_ipxe: Vec<u8>,
    disk: Vec<u8>,
    kernel: Vec<u8>,
}

/// DIR as `slipway build` lays it out, small except for a 3 MiB disk and a 2 MiB kernel.
fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("out");
    let config = format!(
        r#"{{"ignition":{{"version":"3.4.0"}},"storage":{{"files":[{{"path":"/etc/kubernetes/pki/ca.key","contents":{{"source":"data:,{}"}}}}]}}}}"#,
        SECRET_MARKERS[0]
    )
    .into_bytes();
    let node_ipxe = b"#!ipxe\nkernel ${slipway-base}/pxe/control-plane/vmlinuz \
                      slipway.install.state=wipe\nboot\n"
        .to_vec();
    let disk = pattern(3 << 20, 0x5a);
    let kernel = pattern(2 << 20, 0xa5);
    write(&dir.join("pxe/boot.ipxe"), BOOT.as_bytes());
    write(&dir.join(format!("pxe/nodes/{MAC}.ipxe")), &node_ipxe);
    write(&dir.join("pxe/control-plane/vmlinuz"), &kernel);
    write(&dir.join("pxe/control-plane/initrd.img"), b"initrd");
    write(&dir.join("pxe/control-plane/disk.img.zst"), &disk);
    write(
        &dir.join("pxe/macs.json"),
        format!(r#"{{"{MAC}": "master1", "52-54-00-00-00-12": "../admin.conf"}}"#).as_bytes(),
    );
    write(&dir.join("nodes/master1/config.ign"), &config);
    write(
        &dir.join("nodes/master1/disk.raw"),
        SECRET_MARKERS[1].as_bytes(),
    );
    write(
        &dir.join("nodes/master1/files/etc/kubernetes/pki/ca.key"),
        SECRET_MARKERS[3].as_bytes(),
    );
    write(&dir.join("admin.conf"), SECRET_MARKERS[2].as_bytes());
    write(&dir.join("secrets/ca.key"), SECRET_MARKERS[3].as_bytes());
    // Symlinks inside pxe/ that lead out of it, absolute and relative.
    std::os::unix::fs::symlink(dir.join("admin.conf"), dir.join("pxe/leak")).unwrap();
    std::os::unix::fs::symlink("../admin.conf", dir.join("pxe/leak2")).unwrap();
    std::os::unix::fs::symlink("../nodes", dir.join("pxe/nodesdir")).unwrap();
    Fixture {
        _tmp: tmp,
        dir,
        config,
        node_ipxe,
        disk,
        kernel,
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into()
}

/// GET with ureq: status, headers we look at, body.
fn get(agent: &ureq::Agent, url: &str, range: Option<&str>) -> (u16, Option<String>, Vec<u8>) {
    let mut req = agent.get(url);
    if let Some(r) = range {
        req = req.header("Range", r);
    }
    let resp = req.call().unwrap();
    let status = resp.status().as_u16();
    let ctype = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned());
    let mut body = Vec::new();
    resp.into_body()
        .into_reader()
        .read_to_end(&mut body)
        .unwrap();
    (status, ctype, body)
}

/// One request over a raw socket, so the path reaches the server exactly as written (an
/// HTTP client would normalize `..` away): status and the whole response, headers included.
fn raw(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).unwrap();
    let resp = String::from_utf8_lossy(&resp).into_owned();
    let status = resp
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line for {method} {path}: {resp:?}"));
    (status, resp)
}

#[test]
fn serves_artifacts_and_configs_and_nothing_else() {
    let f = fixture();
    let (addr, server) = spawn(f.dir.clone(), "127.0.0.1:0".parse().unwrap()).unwrap();
    let base = format!("http://{addr}");
    let agent = agent();

    // 1. The chain script points back at the address the client used.
    let (status, ctype, body) = get(&agent, &format!("{base}/boot.ipxe"), None);
    let body = String::from_utf8(body).unwrap();
    assert_eq!(status, 200);
    assert!(ctype.unwrap().starts_with("text/plain"));
    assert!(
        body.lines()
            .any(|l| l == format!("set slipway-base http://127.0.0.1:{}", addr.port())),
        "{body}"
    );
    assert!(!body.contains("CHANGE-ME"), "{body}");
    assert!(body.contains("chain ${slipway-base}/pxe/nodes/"), "{body}");
    // A Host that could break out of the iPXE line is refused.
    let (status, _) = raw_with_host(addr, "/boot.ipxe", "evil ; shell");
    assert_eq!(status, 400);

    // 2. Static artifacts, byte for byte, and a Range of the large one.
    let (status, _, body) = get(&agent, &format!("{base}/pxe/nodes/{MAC}.ipxe"), None);
    assert_eq!((status, body), (200, f.node_ipxe.clone()));
    let (status, _, body) = get(
        &agent,
        &format!("{base}/pxe/control-plane/disk.img.zst"),
        None,
    );
    assert_eq!(status, 200);
    assert_eq!(sha(&body), sha(&f.disk));
    let (status, _, body) = get(
        &agent,
        &format!("{base}/pxe/control-plane/disk.img.zst"),
        Some("bytes=100-199"),
    );
    assert_eq!(status, 206);
    assert_eq!(body, f.disk[100..200]);
    // The tail of a resumed download.
    let (status, _, body) = get(
        &agent,
        &format!("{base}/pxe/control-plane/disk.img.zst"),
        Some(&format!("bytes={}-", f.disk.len() - 1000)),
    );
    assert_eq!(status, 206);
    assert_eq!(body, f.disk[f.disk.len() - 1000..]);
    // HEAD: headers only.
    let (status, resp) = raw(addr, "HEAD", "/pxe/control-plane/vmlinuz");
    assert_eq!(status, 200);
    assert!(
        resp.to_ascii_lowercase()
            .contains(&format!("content-length: {}", f.kernel.len())),
        "{resp}"
    );

    // 3. Configs by MAC, in either spelling and any case.
    for mac in [
        MAC.to_owned(),
        MAC.replace('-', ":"),
        MAC.replace('-', ":").to_uppercase(),
    ] {
        let (status, ctype, body) = get(&agent, &format!("{base}/nodes/{mac}/config.ign"), None);
        assert_eq!(status, 200, "{mac}");
        assert_eq!(
            ctype.as_deref(),
            Some("application/vnd.coreos.ignition+json")
        );
        assert_eq!(body, f.config, "{mac}");
    }

    // ... and nothing else: every one a 4xx whose response carries no secret.
    let refused = [
        "/nodes/52-54-00-00-00-99/config.ign",
        "/nodes/52-54-00-00-00-1/config.ign",
        "/nodes/52-54-00-00-00-zz/config.ign",
        "/nodes/52-54-00-00-00-12/config.ign", // macs.json names "../admin.conf"
        "/nodes/master1/config.ign",
        "/nodes/master1/disk.raw",
        &format!("/nodes/{MAC}/disk.raw"),
        "/nodes/master1/files/etc/kubernetes/pki/ca.key",
        "/admin.conf",
        "/secrets/ca.key",
        "/pxe/../admin.conf",
        "/pxe/%2e%2e/admin.conf",
        "/pxe/%2E%2E/admin.conf",
        "/pxe/..%2fadmin.conf",
        "/pxe/control-plane/../../admin.conf",
        "/pxe//etc/passwd",
        "/pxe/%2fetc%2fpasswd",
        "/pxe/..%5cadmin.conf",
        "/pxe/a%00b",
        "/pxe/",
        "/pxe",
        "/pxe/control-plane",
        "/pxe/control-plane/",
        "/pxe/nodes",
        "/pxe/leak",
        "/pxe/leak2",
        "/pxe/nodesdir/master1/config.ign",
        "/nodes/",
        "/",
        "/boot.ipxe/../admin.conf",
    ];
    for path in refused {
        let (status, resp) = raw(addr, "GET", path);
        assert!((400..500).contains(&status), "{path}: {status}\n{resp}");
        for marker in SECRET_MARKERS {
            assert!(!resp.contains(marker), "{path} leaked {marker}:\n{resp}");
        }
    }

    // 5. Methods other than GET and HEAD, on routes that exist and on ones that do not.
    for path in ["/boot.ipxe", "/pxe/control-plane/vmlinuz", "/elsewhere"] {
        for method in ["POST", "PUT", "DELETE"] {
            let (status, resp) = raw(addr, method, path);
            assert_eq!(status, 405, "{method} {path}");
            assert!(resp.contains("allow: GET, HEAD") || resp.contains("Allow: GET, HEAD"));
        }
    }

    // 7. The server is still up after all of the above, and stops when dropped.
    let (status, _, _) = get(&agent, &format!("{base}/boot.ipxe"), None);
    assert_eq!(status, 200);
    drop(server);
    assert!(
        TcpStream::connect(addr).is_err(),
        "still listening after drop"
    );
}

fn raw_with_host(addr: SocketAddr, path: &str, host: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).unwrap();
    let resp = String::from_utf8_lossy(&resp).into_owned();
    let status = resp.split(' ').nth(1).unwrap().parse().unwrap();
    (status, resp)
}

/// (4.) A rack booting at once: 100 clients, each on its own connection, fetch a 2 MiB kernel
/// and its config; every byte must be right, and all within a bounded time.
#[test]
fn hundred_concurrent_clients() {
    const CLIENTS: usize = 100;
    let f = fixture();
    let (addr, server) = spawn(f.dir.clone(), "127.0.0.1:0".parse().unwrap()).unwrap();
    let want_kernel = sha(&f.kernel);
    let want_config = sha(&f.config);
    let start = Instant::now();
    let threads: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let base = format!("http://{addr}");
            std::thread::spawn(move || {
                let agent = agent();
                let (s1, _, kernel) =
                    get(&agent, &format!("{base}/pxe/control-plane/vmlinuz"), None);
                let mac = if i % 2 == 0 {
                    MAC.to_owned()
                } else {
                    MAC.replace('-', ":")
                };
                let (s2, _, config) = get(&agent, &format!("{base}/nodes/{mac}/config.ign"), None);
                (s1, sha(&kernel), s2, sha(&config))
            })
        })
        .collect();
    for t in threads {
        let (s1, kernel, s2, config) = t.join().unwrap();
        assert_eq!((s1, s2), (200, 200));
        assert_eq!(kernel, want_kernel);
        assert_eq!(config, want_config);
    }
    let took = start.elapsed();
    eprintln!(
        "{CLIENTS} clients x ({} MiB + config) in {:.2} s",
        f.kernel.len() >> 20,
        took.as_secs_f64()
    );
    assert!(took < Duration::from_secs(60), "took {took:?}");
    server.stop().unwrap();
}

/// (6.) A directory that `slipway build` did not write is refused before anything is bound.
#[test]
fn refuses_a_directory_that_is_not_a_build() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(tmp.path().join("pxe")).unwrap();
    for dir in [tmp.path().to_owned(), tmp.path().join("missing")] {
        let opts = ServeOptions {
            dir: dir.clone(),
            listen: "127.0.0.1:0".parse().unwrap(),
            keep_state: Vec::new(),
        };
        let err = serve(&opts).unwrap_err();
        assert!(matches!(err, ServeError::NotBuildOutput { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(
            msg.contains(&dir.join("pxe/boot.ipxe").display().to_string()),
            "{msg}"
        );
        assert!(msg.contains("slipway build"), "{msg}");
        assert!(spawn(dir, "127.0.0.1:0".parse().unwrap()).is_err());
    }
}

#[test]
fn bind_failure_names_the_address() {
    let f = fixture();
    let (addr, _server) = spawn(f.dir.clone(), "127.0.0.1:0".parse().unwrap()).unwrap();
    // Bind the same port without SO_REUSEPORT: refused while the first listens.
    let err = match spawn(f.dir.clone(), addr) {
        Err(e) => e,
        Ok(_) => panic!("bound {addr} twice"),
    };
    assert!(matches!(err, ServeError::Bind { .. }), "{err:?}");
    assert!(err.to_string().contains(&addr.to_string()), "{err}");
}

/// `--keep-state NODE`: that node's script says keep, every other file is as built; an
/// unknown node name is refused before anything is bound.
#[test]
fn keep_state_rewrites_only_that_nodes_script() {
    let f = fixture();
    let (addr, _server) = slipway::pxe::serve::spawn(&ServeOptions {
        dir: f.dir.clone(),
        listen: "127.0.0.1:0".parse().unwrap(),
        keep_state: vec!["master1".into()],
    })
    .unwrap();
    let a = agent();
    let (status, _, body) = get(&a, &format!("http://{addr}/pxe/nodes/{MAC}.ipxe"), None);
    let body = String::from_utf8(body).unwrap();
    assert_eq!(status, 200);
    assert!(body.contains("slipway.install.state=keep"), "{body}");
    assert!(!body.contains("state=wipe"), "{body}");
    // On disk it stays as built.
    let on_disk = std::fs::read_to_string(f.dir.join(format!("pxe/nodes/{MAC}.ipxe"))).unwrap();
    assert!(on_disk.contains("state=wipe"));
    // Without the option the script is served as built.
    let (addr2, _s2) = spawn(f.dir.clone(), "127.0.0.1:0".parse().unwrap()).unwrap();
    let (_, _, body) = get(&a, &format!("http://{addr2}/pxe/nodes/{MAC}.ipxe"), None);
    assert_eq!(body, f.node_ipxe);

    let err = match slipway::pxe::serve::spawn(&ServeOptions {
        dir: f.dir.clone(),
        listen: "127.0.0.1:0".parse().unwrap(),
        keep_state: vec!["master9".into()],
    }) {
        Err(e) => e,
        Ok(_) => panic!("an unknown node was accepted"),
    };
    assert!(err.to_string().contains("--keep-state master9"), "{err}");
}
