//! The Debian mirror to use when neither the profile nor the command line names one:
//! the host's own apt sources (one-line `sources.list` and deb822 `*.sources`).

use std::path::Path;

/// Debian archive URIs in the host's apt configuration, in file order, with their suites.
pub fn host_debian_uris(root: &Path) -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    let mut files = vec![root.join("etc/apt/sources.list")];
    if let Ok(rd) = std::fs::read_dir(root.join("etc/apt/sources.list.d")) {
        let mut more: Vec<_> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
        more.sort();
        files.extend(more);
    }
    for f in files {
        let Ok(text) = std::fs::read_to_string(&f) else {
            continue;
        };
        let name = f.to_string_lossy();
        if name.ends_with(".sources") {
            out.extend(parse_deb822(&text));
        } else if name.ends_with(".list") {
            out.extend(parse_one_line(&text));
        }
    }
    out
}

/// Picks the main Debian archive: a URI serving a plain (non-security, non-updates)
/// Debian suite such as `bookworm` or `trixie`.
pub fn pick_debian_mirror(uris: &[(String, Vec<String>)]) -> Option<String> {
    uris.iter()
        .find(|(uri, suites)| {
            !uri.contains("security")
                && suites.iter().any(|s| {
                    !s.contains('-')
                        && [
                            "stable", "testing", "unstable", "sid", "bookworm", "trixie", "forky",
                        ]
                        .contains(&s.as_str())
                })
        })
        .map(|(uri, _)| uri.trim_end_matches('/').to_string())
}

fn parse_one_line(text: &str) -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        let mut words = line.split_whitespace().peekable();
        if words.next() != Some("deb") {
            continue;
        }
        if words.peek().is_some_and(|w| w.starts_with('[')) {
            for w in words.by_ref() {
                if w.ends_with(']') {
                    break;
                }
            }
        }
        if let (Some(uri), Some(suite)) = (words.next(), words.next()) {
            out.push((uri.to_string(), vec![suite.to_string()]));
        }
    }
    out
}

fn parse_deb822(text: &str) -> Vec<(String, Vec<String>)> {
    let Ok(paras) = super::control::parse(text) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for p in paras {
        if p.get("Enabled") == Some("no")
            || !p
                .get("Types")
                .unwrap_or("")
                .split_whitespace()
                .any(|t| t == "deb")
        {
            continue;
        }
        let suites: Vec<String> = p
            .get("Suites")
            .unwrap_or("")
            .split_whitespace()
            .map(str::to_string)
            .collect();
        for uri in p.get("URIs").unwrap_or("").split_whitespace() {
            out.push((uri.to_string(), suites.clone()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_formats() {
        let one = parse_one_line(
            "# c\ndeb [arch=amd64 signed-by=/x] http://mirror.invalid/debian bookworm main\ndeb-src http://x/ y main\n",
        );
        assert_eq!(
            one,
            vec![(
                "http://mirror.invalid/debian".into(),
                vec!["bookworm".into()]
            )]
        );
        let d = parse_deb822(
            "Types: deb\nURIs: http://m.invalid/debian\nSuites: bookworm bookworm-updates\nComponents: main\n\nTypes: deb\nURIs: http://m.invalid/debian-security\nSuites: bookworm-security\n",
        );
        assert_eq!(
            pick_debian_mirror(&d).as_deref(),
            Some("http://m.invalid/debian")
        );
        let only_security = vec![(
            "http://m.invalid/debian-security".to_string(),
            vec!["bookworm-security".to_string()],
        )];
        assert_eq!(pick_debian_mirror(&only_security), None);
    }
}
