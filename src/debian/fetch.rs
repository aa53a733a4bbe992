//! The content-addressed download cache and the HTTP edge.
//!
//! Blobs live at `CACHE/sha256/HEX` and are named by the SHA-256 the signed index gave
//! for them. A download goes to `CACHE/partial/HEX` (resumed with a Range request when a
//! previous one was cut off), is hashed while it is written, and is renamed into place
//! only when size and hash match. A cached blob is hashed again before use; one that no
//! longer matches (tampered, truncated) is removed and fetched again, never used.
//!
//! One cache serves many at once: the threads of a build (its roles share packages),
//! a `slipway fetch` beside a `slipway build`, CI jobs on one volume. Each partial file
//! is locked (flock, released by the kernel however its holder dies) while it is
//! written, so a blob is downloaded once while the others wait and then find it; other
//! cached files (release binaries, manifests) are written under unique temporary names
//! and renamed, so two writers of the same bytes are harmless ([`crate::fsutil`]).

use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("fetching {url}: {reason}")]
    Http { url: String, reason: String },
    /// The transfer itself failed (name lookup, connection, cut off): worth another try.
    #[error("fetching {url}: {reason}")]
    Network { url: String, reason: String },
    #[error("{url}: SHA-256 is {got}, expected {want} (from the signed index or manifest)")]
    HashMismatch {
        url: String,
        want: String,
        got: String,
    },
    #[error("{url}: {got} bytes, expected {want} (from the signed index or manifest)")]
    SizeMismatch { url: String, want: u64, got: u64 },
    #[error("{op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// One thing to have in the cache.
#[derive(Debug, Clone)]
pub struct Want {
    pub url: String,
    pub size: u64,
    pub sha256: String,
}

/// Tries per download before a network failure is reported.
pub const ATTEMPTS: u32 = 4;
const RETRY_PAUSE: Duration = if cfg!(test) {
    Duration::from_millis(10)
} else {
    Duration::from_secs(2)
};

pub struct Cache {
    pub dir: PathBuf,
    pub(crate) agent: ureq::Agent,
}

impl Cache {
    pub fn new(dir: &Path) -> Cache {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_connect(Some(Duration::from_secs(15)))
            .timeout_recv_body(Some(Duration::from_secs(60)))
            .build()
            .into();
        tidy(dir);
        Cache {
            dir: dir.to_owned(),
            agent,
        }
    }

    pub fn blob_path(&self, sha256: &str) -> PathBuf {
        self.dir.join("sha256").join(sha256)
    }

    /// The cached blob if it is present and still hashes right; a bad one is removed.
    pub fn verified(&self, want: &Want) -> Result<Option<PathBuf>, FetchError> {
        let path = self.blob_path(&want.sha256);
        match hash_file(&path) {
            Ok((size, got)) if size == want.size && got == want.sha256 => Ok(Some(path)),
            Ok(_) => {
                // Tampered or truncated: never used, fetched again. (Another thread or
                // process may have removed it first.)
                match fs::remove_file(&path) {
                    Ok(()) => Ok(None),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
                    Err(e) => Err(io_err("removing", &path)(e)),
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err("reading", &path)(e)),
        }
    }

    /// GETs a small resource (InRelease) without caching it, trying again after a
    /// network failure as downloads do.
    pub fn get_text(&self, url: &str) -> Result<String, FetchError> {
        String::from_utf8(get_bytes(&self.agent, url, 64 << 20)?).map_err(|_| FetchError::Http {
            url: url.to_string(),
            reason: "not UTF-8 text".into(),
        })
    }

    /// Makes sure every blob is cached and verified, downloading what is missing with a
    /// few parallel connections. Returns each blob's path, in the order given.
    pub fn ensure_all(&self, wants: &[Want], label: &str) -> Result<Vec<PathBuf>, FetchError> {
        self.ensure_all_with(wants, label, None)
    }

    /// [`Cache::ensure_all`], sending `authorization` (a registry's bearer token: never
    /// logged or stored) as the Authorization header of each download.
    pub fn ensure_all_with(
        &self,
        wants: &[Want],
        label: &str,
        authorization: Option<&str>,
    ) -> Result<Vec<PathBuf>, FetchError> {
        // Each missing blob once: two downloads into one partial file would corrupt it.
        let mut missing = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for (i, w) in wants.iter().enumerate() {
            if seen.insert(w.sha256.as_str()) && self.verified(w)?.is_none() {
                missing.push(i);
            }
        }
        if !missing.is_empty() {
            let total: u64 = missing.iter().map(|&i| wants[i].size).sum();
            let bar = progress(total, label);
            let queue = Mutex::new(missing);
            let first_error: Mutex<Option<FetchError>> = Mutex::new(None);
            std::thread::scope(|s| {
                for _ in 0..4 {
                    s.spawn(|| {
                        loop {
                            if first_error.lock().map(|e| e.is_some()).unwrap_or(true) {
                                return;
                            }
                            let Some(i) = queue.lock().ok().and_then(|mut q| q.pop()) else {
                                return;
                            };
                            if let Err(e) = self.download_retrying(&wants[i], &bar, authorization)
                                && let Ok(mut slot) = first_error.lock()
                            {
                                slot.get_or_insert(e);
                            }
                        }
                    });
                }
            });
            bar.finish_and_clear();
            if let Some(e) = first_error.into_inner().ok().flatten() {
                return Err(e);
            }
        }
        Ok(wants.iter().map(|w| self.blob_path(&w.sha256)).collect())
    }

    /// [`Cache::download`], tried again after a network failure; each attempt resumes
    /// where the last one stopped.
    fn download_retrying(
        &self,
        want: &Want,
        bar: &ProgressBar,
        authorization: Option<&str>,
    ) -> Result<(), FetchError> {
        retrying(|| self.download(want, bar, authorization))
    }

    /// Downloads one blob into `partial/HEX` and renames it to `sha256/HEX` when its size
    /// and hash match. The partial file is locked (flock) while it is written, so threads
    /// and processes sharing the cache take turns: whoever waited finds the blob in place
    /// and downloads nothing. A download cut off (or a writer killed) leaves the partial
    /// file to be resumed; `sha256/` only ever receives whole, verified blobs by rename.
    fn download(
        &self,
        want: &Want,
        bar: &ProgressBar,
        authorization: Option<&str>,
    ) -> Result<(), FetchError> {
        use std::io::{Seek, SeekFrom};
        use std::os::unix::fs::MetadataExt;
        let partial_dir = self.dir.join("partial");
        let blob_dir = self.dir.join("sha256");
        for d in [&partial_dir, &blob_dir] {
            fs::create_dir_all(d).map_err(io_err("creating", d))?;
        }
        let partial = partial_dir.join(&want.sha256);
        let mut f = loop {
            let f = fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&partial)
                .map_err(io_err("opening", &partial))?;
            rustix::fs::flock(&f, rustix::fs::FlockOperation::LockExclusive)
                .map_err(|e| io_err("locking", &partial)(e.into()))?;
            // Still the file at that name (not one renamed into sha256/ meanwhile)?
            let held = f.metadata().map_err(io_err("reading", &partial))?;
            let current = match fs::metadata(&partial) {
                Ok(m) => m.ino() == held.ino() && m.dev() == held.dev(),
                Err(e) if e.kind() == io::ErrorKind::NotFound => false,
                Err(e) => return Err(io_err("reading", &partial)(e)),
            };
            // Whoever held the lock before may have finished it; then what this open
            // created (or found left over) is nobody's download any more.
            if self.verified(want)?.is_some() {
                if current {
                    let _ = fs::remove_file(&partial);
                }
                return Ok(());
            }
            if current {
                break f;
            }
        };
        // Resume: hash what is already there, ask for the rest.
        let mut hasher = Sha256::new();
        let mut have = 0u64;
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = f.read(&mut buf).map_err(io_err("reading", &partial))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            have += n as u64;
        }
        let restart =
            |f: &mut fs::File, hasher: &mut Sha256, have: &mut u64| -> Result<(), FetchError> {
                f.set_len(0).map_err(io_err("truncating", &partial))?;
                f.seek(SeekFrom::Start(0))
                    .map_err(io_err("truncating", &partial))?;
                *hasher = Sha256::new();
                *have = 0;
                Ok(())
            };
        if have > want.size {
            restart(&mut f, &mut hasher, &mut have)?;
        }
        let mut req = self.agent.get(&want.url);
        if let Some(a) = authorization {
            req = req.header("Authorization", a);
        }
        if have > 0 {
            req = req.header("Range", format!("bytes={have}-"));
        }
        let mut resp = req.call().map_err(|e| classify(&want.url, e))?;
        if have > 0 && resp.status() != 206 {
            // The server ignored the range: start over.
            restart(&mut f, &mut hasher, &mut have)?;
        }
        bar.inc(have);
        let mut body = resp.body_mut().with_config().limit(want.size + 1).reader();
        loop {
            let n = body.read(&mut buf).map_err(|e| FetchError::Network {
                url: want.url.clone(),
                reason: e.to_string(),
            })?;
            if n == 0 {
                break;
            }
            f.write_all(&buf[..n])
                .map_err(io_err("writing", &partial))?;
            hasher.update(&buf[..n]);
            have += n as u64;
            bar.inc(n as u64);
        }
        f.sync_all().map_err(io_err("writing", &partial))?;
        if have != want.size {
            if have > want.size {
                let _ = fs::remove_file(&partial);
            }
            return Err(FetchError::SizeMismatch {
                url: want.url.clone(),
                want: want.size,
                got: have,
            });
        }
        let got = hex::encode(hasher.finalize());
        if got != want.sha256 {
            let _ = fs::remove_file(&partial);
            return Err(FetchError::HashMismatch {
                url: want.url.clone(),
                want: want.sha256.clone(),
                got,
            });
        }
        let dest = self.blob_path(&want.sha256);
        // Renamed while still locked: a waiter then sees its file gone from `partial/`.
        fs::rename(&partial, &dest).map_err(io_err("renaming", &dest))
    }
}

/// How old a temporary file must be before a writer that holds no lock on it counts as
/// dead ([`crate::fsutil::remove_stale`]).
const STALE_AFTER: Duration = Duration::from_secs(60);

/// Removes, once per process and cache, the temporary files and directories that killed
/// writers left in the cache's directories (never a live writer's; never `partial/`,
/// whose files are resumed).
fn tidy(dir: &Path) {
    static DONE: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
    let Ok(mut done) = DONE.lock() else { return };
    if done.iter().any(|d| d == dir) {
        return;
    }
    done.push(dir.to_owned());
    for sub in ["sha256", "sha512", "depmod", "hwdb", "deb-zstd"] {
        // Best effort: a cache that cannot be tidied still works.
        let _ = crate::fsutil::remove_stale(&dir.join(sub), STALE_AFTER);
    }
}

/// How long a response body read in one piece may take (a release binary of ~100 MB
/// cannot be resumed): the agent's own limit suits downloads that resume.
const WHOLE_BODY_TIMEOUT: Duration = Duration::from_secs(1800);

/// GETs `url` into memory, at most `limit` bytes, for what has no size or SHA-256 to
/// resume and check by (an index, a release binary its caller checks against a pin):
/// tried again from the start after a network failure, like a download; a refusal, or a
/// body over `limit`, is final.
pub fn get_bytes(agent: &ureq::Agent, url: &str, limit: u64) -> Result<Vec<u8>, FetchError> {
    retrying(|| {
        let mut resp = agent
            .get(url)
            .config()
            .timeout_recv_body(Some(WHOLE_BODY_TIMEOUT))
            .build()
            .call()
            .map_err(|e| classify(url, e))?;
        resp.body_mut()
            .with_config()
            .limit(limit)
            .read_to_vec()
            .map_err(|e| classify(url, e))
    })
}

/// Runs `fetch` again after a network failure (a name lookup, a connection or a
/// transfer cut off: what a mirror or a home network does now and then), up to
/// [`ATTEMPTS`] times with a growing pause. A refusal or a wrong size or hash is final.
fn retrying<T>(mut fetch: impl FnMut() -> Result<T, FetchError>) -> Result<T, FetchError> {
    let mut attempt = 1;
    loop {
        match fetch() {
            Err(FetchError::Network { .. }) if attempt < ATTEMPTS => {
                std::thread::sleep(RETRY_PAUSE * attempt);
                attempt += 1;
            }
            r => return r,
        }
    }
}

/// A refusal by status (404, 403, ...) or a body over its limit is final; anything else
/// is the network's doing.
fn classify(url: &str, e: ureq::Error) -> FetchError {
    match e {
        ureq::Error::StatusCode(_) | ureq::Error::BodyExceedsLimit(_) => FetchError::Http {
            url: url.to_string(),
            reason: e.to_string(),
        },
        _ => FetchError::Network {
            url: url.to_string(),
            reason: e.to_string(),
        },
    }
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> FetchError {
    let path = path.to_owned();
    move |source| FetchError::Io { op, path, source }
}

/// (size, hex SHA-256) of a file.
pub fn hash_file(path: &Path) -> io::Result<(u64, String)> {
    let mut f = fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut size = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        size += n as u64;
    }
    Ok((size, hex::encode(h.finalize())))
}

fn progress(total: u64, label: &str) -> ProgressBar {
    use std::io::IsTerminal;
    let bar = ProgressBar::with_draw_target(
        Some(total),
        if io::stderr().is_terminal() {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        },
    );
    if let Ok(style) = ProgressStyle::with_template(
        "{msg} {bar:30} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
    ) {
        bar.set_style(style);
    }
    bar.set_message(label.to_string());
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    /// [`crate::testserver::serve`] of `body` at /blob: its URL and connection counter.
    fn flaky(fail: usize, body: &'static [u8]) -> (String, std::sync::Arc<Mutex<usize>>) {
        let files = std::collections::BTreeMap::from([("/blob".to_string(), body.to_vec())]);
        let (base, count) = crate::testserver::serve(fail, files);
        (format!("{base}/blob"), count)
    }

    #[test]
    fn a_download_cut_off_is_tried_again_and_a_dead_server_is_reported() {
        let body: &[u8] = b"package bytes";
        let want = |url: String| Want {
            url,
            size: body.len() as u64,
            sha256: hex::encode(Sha256::digest(body)),
        };
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path());
        let (url, count) = flaky(2, b"package bytes");
        let paths = cache.ensure_all(&[want(url)], "test").unwrap();
        assert_eq!(fs::read(&paths[0]).unwrap(), body);
        assert_eq!(*count.lock().unwrap(), 3, "two failures, then the download");

        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path());
        let (url, count) = flaky(usize::MAX, b"");
        let e = cache.ensure_all(&[want(url.clone())], "test").unwrap_err();
        assert!(
            matches!(e, FetchError::Network { .. }) && e.to_string().contains(&url),
            "{e}"
        );
        assert_eq!(*count.lock().unwrap(), ATTEMPTS as usize);
    }

    #[test]
    fn caches_sharing_a_directory_fetch_each_blob_once() {
        let bodies: Vec<Vec<u8>> = (0..3u8).map(|i| vec![i; 200_000 + i as usize]).collect();
        let files = bodies
            .iter()
            .enumerate()
            .map(|(i, b)| (format!("/blob{i}"), b.clone()))
            .collect();
        let (base, count) = crate::testserver::serve(0, files);
        let wants: Vec<Want> = bodies
            .iter()
            .enumerate()
            .map(|(i, b)| Want {
                url: format!("{base}/blob{i}"),
                size: b.len() as u64,
                sha256: hex::encode(Sha256::digest(b)),
            })
            .collect();
        let dir = tempfile::tempdir().unwrap();
        // Four builds at once (threads here; processes lock the same way), each with its
        // own Cache over one directory.
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    let paths = Cache::new(dir.path()).ensure_all(&wants, "test").unwrap();
                    for (p, b) in paths.iter().zip(&bodies) {
                        assert!(fs::read(p).unwrap() == *b);
                    }
                });
            }
        });
        assert_eq!(*count.lock().unwrap(), 3, "each blob downloaded once");
        assert_eq!(fs::read_dir(dir.path().join("partial")).unwrap().count(), 0);
        assert_eq!(fs::read_dir(dir.path().join("sha256")).unwrap().count(), 3);
    }

    #[test]
    fn a_cut_off_download_leaves_a_partial_that_is_resumed() {
        let body = vec![7u8; 100_000];
        let want = Want {
            url: String::new(),
            size: body.len() as u64,
            sha256: hex::encode(Sha256::digest(&body)),
        };
        let dir = tempfile::tempdir().unwrap();
        // What a killed download leaves: the first part, in partial/, nothing in sha256/.
        fs::create_dir_all(dir.path().join("partial")).unwrap();
        fs::write(
            dir.path().join("partial").join(&want.sha256),
            &body[..40_000],
        )
        .unwrap();
        let cache = Cache::new(dir.path());
        assert!(cache.verified(&want).unwrap().is_none());
        // A server that ignores ranges: the partial is started over, not appended to.
        let (url, count) = flaky(0, Box::leak(body.clone().into_boxed_slice()));
        let paths = cache.ensure_all(&[Want { url, ..want }], "test").unwrap();
        assert!(fs::read(&paths[0]).unwrap() == body);
        assert_eq!(*count.lock().unwrap(), 1);
        assert_eq!(fs::read_dir(dir.path().join("partial")).unwrap().count(), 0);
    }

    #[test]
    fn a_whole_body_get_is_tried_again_and_a_body_over_its_limit_is_final() {
        let agent = Cache::new(Path::new("/nonexistent")).agent;
        let (url, count) = flaky(2, b"release binary");
        assert_eq!(get_bytes(&agent, &url, 1 << 20).unwrap(), b"release binary");
        assert_eq!(*count.lock().unwrap(), 3, "two failures, then the body");

        let (url, count) = flaky(0, b"release binary");
        let e = get_bytes(&agent, &url, 4).unwrap_err();
        assert!(
            matches!(e, FetchError::Http { .. }) && e.to_string().contains(&url),
            "{e}"
        );
        assert_eq!(*count.lock().unwrap(), 1, "not tried again");
    }
}
