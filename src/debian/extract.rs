//! Unpacking a .deb without root and without running its scripts: the `ar` container
//! (deb(5)), its control.tar and data.tar (xz, zstd, gzip or none), laid into a [`Tree`]
//! with owners, modes, symlinks and hard links as the archive has them.

use std::collections::BTreeMap;
use std::io::Read;
use std::sync::Arc;

use crate::fs::{Entry, Kind, Tree};

use super::control::{self, Paragraph};

/// What a package put where, and its control information.
#[derive(Debug, Clone)]
pub struct Unpacked {
    pub control: Paragraph,
    /// control.tar members other than `control` (conffiles, md5sums, scripts, triggers).
    pub control_files: BTreeMap<String, Vec<u8>>,
    /// Every path of data.tar as dpkg lists it (`/.`, `/usr`, `/usr/bin/x`), in order.
    pub paths: Vec<String>,
}

fn decompress<'a>(name: &str, bytes: &'a [u8]) -> Result<Box<dyn Read + 'a>, String> {
    Ok(match name.rsplit_once('.').map(|(_, e)| e) {
        Some("xz") => Box::new(liblzma::read::XzDecoder::new(bytes)),
        Some("zst") => {
            Box::new(zstd::stream::read::Decoder::new(bytes).map_err(|e| e.to_string())?)
        }
        Some("gz") => Box::new(flate2::read::GzDecoder::new(bytes)),
        Some("tar") => Box::new(bytes),
        _ => return Err(format!("unknown member compression {name:?}")),
    })
}

/// Reads only a .deb's control paragraph (for building an index of local packages).
pub fn control_of(origin: &str, deb: &[u8]) -> Result<Paragraph, String> {
    let mut ar = ar::Archive::new(deb);
    while let Some(m) = ar.next_entry() {
        let mut m = m.map_err(|e| format!("{origin}: not a .deb (ar): {e}"))?;
        let name = String::from_utf8_lossy(m.header().identifier())
            .trim_end_matches('/')
            .to_string();
        if !name.starts_with("control.tar") {
            continue;
        }
        let mut buf = Vec::new();
        m.read_to_end(&mut buf)
            .map_err(|e| format!("{origin}: {e}"))?;
        let mut tar =
            tar::Archive::new(decompress(&name, &buf).map_err(|e| format!("{origin}: {e}"))?);
        for e in tar.entries().map_err(|e| format!("{origin}: {e}"))? {
            let mut e = e.map_err(|e| format!("{origin}: control.tar: {e}"))?;
            let path = e
                .path()
                .map_err(|e| format!("{origin}: {e}"))?
                .to_string_lossy()
                .into_owned();
            if path.trim_start_matches("./") == "control" {
                let mut text = String::new();
                e.read_to_string(&mut text)
                    .map_err(|e| format!("{origin}: {e}"))?;
                let paras = control::parse(&text)
                    .map_err(|l| format!("{origin}: control: line {l} malformed"))?;
                return paras
                    .into_iter()
                    .next()
                    .ok_or_else(|| format!("{origin}: empty control file"));
            }
        }
    }
    Err(format!("{origin}: no control file"))
}

/// A .deb read into memory: control information and data entries in archive order.
/// Reading is independent per package (and runs in parallel); laying the entries into a
/// tree ([`Deb::apply`]) is done in install order. Cloning is cheap: file contents are
/// shared.
#[derive(Debug, Clone)]
pub struct Deb {
    pub control: Paragraph,
    pub control_files: BTreeMap<String, Vec<u8>>,
    entries: Vec<(String, Entry)>,
}

/// The members of a .deb: `debian-binary`, then control.tar and data.tar as (member
/// name, bytes as stored).
type Members = (Vec<u8>, (String, Vec<u8>), (String, Vec<u8>));

fn members(origin: &str, deb: &[u8]) -> Result<Members, String> {
    let err = |e: String| format!("{origin}: {e}");
    let mut ar = ar::Archive::new(deb);
    let mut debian_binary = None;
    let mut control_tar = None;
    let mut data_tar = None;
    while let Some(m) = ar.next_entry() {
        let mut m = m.map_err(|e| err(format!("not a .deb (ar): {e}")))?;
        let name = String::from_utf8_lossy(m.header().identifier())
            .trim_end_matches('/')
            .to_string();
        let mut buf = Vec::new();
        m.read_to_end(&mut buf).map_err(|e| err(e.to_string()))?;
        if name == "debian-binary" {
            debian_binary = Some(buf);
        } else if name.starts_with("control.tar") {
            control_tar = Some((name, buf));
        } else if name.starts_with("data.tar") {
            data_tar = Some((name, buf));
        }
    }
    Ok((
        debian_binary.unwrap_or_else(|| b"2.0\n".to_vec()),
        control_tar.ok_or_else(|| err("no control.tar member".into()))?,
        data_tar.ok_or_else(|| err("no data.tar member".into()))?,
    ))
}

/// Reads `deb`. `origin` names the package in errors.
pub fn read(origin: &str, deb: &[u8]) -> Result<Deb, String> {
    let (_, (cname, cbytes), (dname, dbytes)) = members(origin, deb)?;
    let err = |e: String| format!("{origin}: {e}");
    parse(
        origin,
        decompress(&cname, &cbytes).map_err(err)?,
        decompress(&dname, &dbytes).map_err(err)?,
    )
}

/// zstd level for [`read_recompressed`]: decompressing it is ~10x faster than xz.
const RECOMPRESS_LEVEL: i32 = 1;

/// Reads `deb` and also returns it recompressed: the same members, control.tar and
/// data.tar as zstd (`.tar.zst`, which [`read`] reads like any .deb) instead of xz, so
/// that reading it again costs a tenth of the time.
pub fn read_recompressed(origin: &str, deb: &[u8]) -> Result<(Deb, Vec<u8>), String> {
    let (debian_binary, (cname, cbytes), (dname, dbytes)) = members(origin, deb)?;
    let err = |e: String| format!("{origin}: {e}");
    let plain = |name: &str, bytes: &[u8]| -> Result<Vec<u8>, String> {
        let mut v = Vec::new();
        decompress(name, bytes)
            .map_err(err)?
            .read_to_end(&mut v)
            .map_err(|e| err(format!("{name}: {e}")))?;
        Ok(v)
    };
    let (control, data) = (plain(&cname, &cbytes)?, plain(&dname, &dbytes)?);
    let deb = parse(origin, &control[..], &data[..])?;
    let mut out = ar::Builder::new(Vec::new());
    for (name, bytes) in [
        ("debian-binary", debian_binary),
        (
            "control.tar.zst",
            zstd::bulk::compress(&control, RECOMPRESS_LEVEL).map_err(|e| err(e.to_string()))?,
        ),
        (
            "data.tar.zst",
            zstd::bulk::compress(&data, RECOMPRESS_LEVEL).map_err(|e| err(e.to_string()))?,
        ),
    ] {
        let mut h = ar::Header::new(name.as_bytes().to_vec(), bytes.len() as u64);
        h.set_mode(0o100644);
        out.append(&h, &bytes[..])
            .map_err(|e| err(format!("writing {name}: {e}")))?;
    }
    Ok((deb, out.into_inner().map_err(|e| err(e.to_string()))?))
}

/// A package's control.tar and data.tar, read.
fn parse(origin: &str, control_tar: impl Read, data_tar: impl Read) -> Result<Deb, String> {
    let err = |e: String| format!("{origin}: {e}");
    let mut control_files = BTreeMap::new();
    let mut control_para = None;
    let mut tar = tar::Archive::new(control_tar);
    for e in tar.entries().map_err(|e| err(e.to_string()))? {
        let mut e = e.map_err(|e| err(format!("control.tar: {e}")))?;
        if e.header().entry_type() != tar::EntryType::Regular {
            continue;
        }
        let path = e
            .path()
            .map_err(|e| err(e.to_string()))?
            .to_string_lossy()
            .into_owned();
        let name = path.trim_start_matches("./").to_string();
        let mut buf = Vec::new();
        e.read_to_end(&mut buf).map_err(|e| err(e.to_string()))?;
        if name == "control" {
            let text = String::from_utf8_lossy(&buf);
            let paras =
                control::parse(&text).map_err(|l| err(format!("control: line {l} malformed")))?;
            control_para = paras.into_iter().next();
        } else {
            control_files.insert(name, buf);
        }
    }
    let control = control_para.ok_or_else(|| err("control.tar has no control file".into()))?;

    let mut entries = Vec::new();
    let mut tar = tar::Archive::new(data_tar);
    for e in tar.entries().map_err(|e| err(e.to_string()))? {
        let mut e = e.map_err(|e| err(format!("data.tar: {e}")))?;
        let h = e.header();
        let raw = e
            .path()
            .map_err(|e| err(e.to_string()))?
            .to_string_lossy()
            .into_owned();
        let mode = h.mode().map_err(|e| err(e.to_string()))? & 0o7777;
        let uid = h.uid().map_err(|e| err(e.to_string()))? as u32;
        let gid = h.gid().map_err(|e| err(e.to_string()))? as u32;
        let kind = match h.entry_type() {
            tar::EntryType::Directory => Kind::Dir,
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let mut buf = Vec::with_capacity(h.size().unwrap_or(0) as usize);
                e.read_to_end(&mut buf).map_err(|e| err(e.to_string()))?;
                Kind::File(Arc::new(buf))
            }
            tar::EntryType::Symlink => {
                let t = e
                    .link_name()
                    .map_err(|e| err(e.to_string()))?
                    .ok_or_else(|| err(format!("{raw}: symlink without target")))?;
                Kind::Symlink(t.to_string_lossy().into_owned())
            }
            tar::EntryType::Link => {
                let t = e
                    .link_name()
                    .map_err(|e| err(e.to_string()))?
                    .ok_or_else(|| err(format!("{raw}: hard link without target")))?;
                let t = crate::fs::normalize(&t.to_string_lossy())
                    .ok_or_else(|| err(format!("{raw}: bad hard link target")))?;
                Kind::Hardlink(t)
            }
            other => return Err(err(format!("{raw}: unsupported tar entry type {other:?}"))),
        };
        entries.push((
            raw,
            Entry {
                kind,
                mode,
                uid,
                gid,
            },
        ));
    }
    Ok(Deb {
        control,
        control_files,
        entries,
    })
}

impl Deb {
    /// Lays the package's entries into `tree` (later packages replace earlier files).
    pub fn apply(self, tree: &mut Tree) -> Unpacked {
        let mut paths = Vec::with_capacity(self.entries.len());
        for (raw, mut entry) in self.entries {
            if let Kind::Hardlink(t) = &entry.kind {
                entry.kind = Kind::Hardlink(tree.canonical(t));
            }
            paths.push(match crate::fs::normalize(&raw) {
                Some(p) => format!("/{p}"),
                None => "/.".to_string(),
            });
            tree.insert(&raw, entry);
        }
        Unpacked {
            control: self.control,
            control_files: self.control_files,
            paths,
        }
    }
}

/// Unpacks `deb` into `tree`. `origin` names the package in errors.
pub fn unpack(origin: &str, deb: &[u8], tree: &mut Tree) -> Result<Unpacked, String> {
    Ok(read(origin, deb)?.apply(tree))
}
