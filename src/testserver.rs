//! A loopback HTTP server for the library's unit tests (downloads, the release server).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

/// Serves `files` (GET PATH: 200 with `files[PATH]`, else 404) on 127.0.0.1, after
/// cutting the first `fail` connections off without an answer, as a flaky link would.
/// Returns its base URL (`http://127.0.0.1:PORT`) and a count of connections.
pub fn serve(fail: usize, files: BTreeMap<String, Vec<u8>>) -> (String, Arc<Mutex<usize>>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    let count = Arc::new(Mutex::new(0));
    let c = count.clone();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            let n = {
                let mut g = c.lock().unwrap();
                *g += 1;
                *g
            };
            if n <= fail {
                continue;
            }
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut first = String::new();
            let _ = r.read_line(&mut first);
            let mut line = String::new();
            while r.read_line(&mut line).is_ok_and(|n| n > 2) {
                line.clear();
            }
            let path = first.split(' ').nth(1).unwrap_or("");
            let (status, body) = match files.get(path) {
                Some(b) => ("200 OK", b.as_slice()),
                None => ("404 Not Found", &b"not found"[..]),
            };
            let mut s = s;
            let _ = write!(
                s,
                "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = s.write_all(body);
        }
    });
    (url, count)
}
