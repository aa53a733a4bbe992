//! deb822 control paragraphs (Release, Packages, a .deb's control file, dpkg's status).
//! Field names keep their case; lookups are case-insensitive as Debian Policy 5.1 says.

/// One paragraph: fields in file order; multi-line values keep their continuation lines.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Paragraph {
    pub fields: Vec<(String, String)>,
}

impl Paragraph {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Renders the paragraph in deb822 form (no trailing blank line).
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        for (k, v) in &self.fields {
            s.push_str(k);
            s.push(':');
            if !v.starts_with('\n') {
                s.push(' ');
            }
            s.push_str(v);
            s.push('\n');
        }
        s
    }
}

/// Parses every paragraph. Returns the 1-based line of the first malformed line on error.
pub fn parse(text: &str) -> Result<Vec<Paragraph>, usize> {
    let mut out = Vec::new();
    let mut cur = Paragraph::default();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            if !cur.fields.is_empty() {
                out.push(std::mem::take(&mut cur));
            }
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        if line.starts_with(' ') || line.starts_with('\t') {
            let Some((_, v)) = cur.fields.last_mut() else {
                return Err(i + 1);
            };
            v.push('\n');
            v.push_str(line);
            continue;
        }
        let Some((k, v)) = line.split_once(':') else {
            return Err(i + 1);
        };
        cur.fields
            .push((k.trim().to_string(), v.trim().to_string()));
    }
    if !cur.fields.is_empty() {
        out.push(cur);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paragraphs_and_continuations() {
        let t = "Package: a\nDescription: short\n long line\n .\n more\n\nPackage: b\nversion: 1\n";
        let p = parse(t).unwrap();
        assert_eq!(p.len(), 2);
        assert_eq!(
            p[0].get("description"),
            Some("short\n long line\n .\n more")
        );
        assert_eq!(p[1].get("Version"), Some("1"));
        assert_eq!(parse("Package: a\nbroken\n"), Err(2));
        assert_eq!(parse(" leading\n"), Err(1));
    }
}
