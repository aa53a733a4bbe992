//! The content-addressed download cache and the HTTP edge.
//!
//! Blobs live at `CACHE/sha256/HEX` and are named by the SHA-256 the signed index gave
//! for them. A download goes to `CACHE/partial/HEX` (resumed with a Range request when a
//! previous one was cut off), is hashed while it is written, and is renamed into place
//! only when size and hash match. A cached blob is hashed again before use; one that no
//! longer matches (tampered, truncated) is removed and fetched again, never used.

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
                // Tampered or truncated: never used, fetched again.
                fs::remove_file(&path).map_err(io_err("removing", &path))?;
                Ok(None)
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

    fn download(
        &self,
        want: &Want,
        bar: &ProgressBar,
        authorization: Option<&str>,
    ) -> Result<(), FetchError> {
        let partial_dir = self.dir.join("partial");
        let blob_dir = self.dir.join("sha256");
        for d in [&partial_dir, &blob_dir] {
            fs::create_dir_all(d).map_err(io_err("creating", d))?;
        }
        let partial = partial_dir.join(&want.sha256);
        // Resume: hash what is already there, ask for the rest.
        let mut hasher = Sha256::new();
        let mut have = 0u64;
        if let Ok(mut f) = fs::File::open(&partial) {
            let mut buf = vec![0u8; 1 << 16];
            loop {
                let n = f.read(&mut buf).map_err(io_err("reading", &partial))?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
                have += n as u64;
            }
        }
        if have > want.size {
            fs::remove_file(&partial).map_err(io_err("removing", &partial))?;
            hasher = Sha256::new();
            have = 0;
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
            hasher = Sha256::new();
            have = 0;
            let _ = fs::remove_file(&partial);
        }
        bar.inc(have);
        let mut out = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&partial)
            .map_err(io_err("writing", &partial))?;
        let mut body = resp.body_mut().with_config().limit(want.size + 1).reader();
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = body.read(&mut buf).map_err(|e| FetchError::Network {
                url: want.url.clone(),
                reason: e.to_string(),
            })?;
            if n == 0 {
                break;
            }
            out.write_all(&buf[..n])
                .map_err(io_err("writing", &partial))?;
            hasher.update(&buf[..n]);
            have += n as u64;
            bar.inc(n as u64);
        }
        out.sync_all().map_err(io_err("writing", &partial))?;
        drop(out);
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
        fs::rename(&partial, &dest).map_err(io_err("renaming", &dest))
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
