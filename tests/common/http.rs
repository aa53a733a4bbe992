//! A loopback-only HTTP/1.1 file server for tests: GET with Range, a request log, and
//! nothing else. It binds 127.0.0.1 on a free port and never reaches past loopback.
#![allow(dead_code, clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

pub struct Server {
    pub url: String,
    pub log: Arc<Mutex<Vec<String>>>,
}

impl Server {
    pub fn serve(root: PathBuf) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let log = Arc::new(Mutex::new(Vec::new()));
        let log2 = log.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let root = root.clone();
                let log = log2.clone();
                std::thread::spawn(move || {
                    let _ = handle(stream, &root, &log);
                });
            }
        });
        Server { url, log }
    }

    /// Requests whose path contains `needle`.
    pub fn requests(&self, needle: &str) -> Vec<String> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(needle))
            .cloned()
            .collect()
    }
}

fn handle(
    stream: TcpStream,
    root: &std::path::Path,
    log: &Mutex<Vec<String>>,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
        let mut range_start = None;
        loop {
            let mut h = String::new();
            reader.read_line(&mut h)?;
            if h.trim().is_empty() {
                break;
            }
            let lower = h.to_ascii_lowercase();
            if let Some(v) = lower.strip_prefix("range: bytes=") {
                range_start = v.trim().trim_end_matches('-').parse::<usize>().ok();
            }
        }
        log.lock().unwrap().push(format!(
            "{path}{}",
            range_start
                .map(|r| format!(" range={r}"))
                .unwrap_or_default()
        ));
        let file = root.join(path.trim_start_matches('/'));
        let mut out = stream.try_clone()?;
        match std::fs::File::open(&file).and_then(|mut f| {
            let mut v = Vec::new();
            f.read_to_end(&mut v)?;
            Ok(v)
        }) {
            Ok(body) => {
                let (status, body) = match range_start {
                    Some(s) if s <= body.len() => ("206 Partial Content", body[s..].to_vec()),
                    _ => ("200 OK", body),
                };
                write!(
                    out,
                    "HTTP/1.1 {status}\r\nContent-Length: {}\r\n\r\n",
                    body.len()
                )?;
                out.write_all(&body)?;
            }
            Err(_) => {
                write!(out, "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")?;
            }
        }
        out.flush()?;
    }
}
