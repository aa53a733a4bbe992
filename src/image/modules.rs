//! Kernel modules for the initramfs: which files a set of module names needs, with their
//! dependencies, read from the modules' own `.modinfo` sections (the `depends=` field
//! depmod builds modules.dep from), so no depmod run or generated file is needed.
//! Modules built into the kernel (listed in modules.builtin) need no file.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;

use object::{Object, ObjectSection};

use crate::fs::Tree;

/// Module names compare with '-' and '_' equal, as the kernel's module loader does.
pub fn canonical(name: &str) -> String {
    name.replace('-', "_")
}

pub fn module_name(path: &str) -> Option<String> {
    let file = path.rsplit('/').next()?;
    let stem = file
        .strip_suffix(".ko")
        .or_else(|| file.strip_suffix(".ko.xz"))
        .or_else(|| file.strip_suffix(".ko.zst"))
        .or_else(|| file.strip_suffix(".ko.gz"))?;
    Some(canonical(stem))
}

pub fn decompress(path: &str, bytes: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    let r: std::io::Result<usize> = if path.ends_with(".xz") {
        liblzma::read::XzDecoder::new(bytes).read_to_end(&mut out)
    } else if path.ends_with(".zst") {
        zstd::stream::read::Decoder::new(bytes).and_then(|mut d| d.read_to_end(&mut out))
    } else if path.ends_with(".gz") {
        flate2::read::GzDecoder::new(bytes).read_to_end(&mut out)
    } else {
        out.extend_from_slice(bytes);
        Ok(out.len())
    };
    r.map_err(|e| format!("{path}: {e}"))?;
    Ok(out)
}

/// The `depends=` list of a module file.
pub fn depends(path: &str, bytes: &[u8]) -> Result<Vec<String>, String> {
    let elf = decompress(path, bytes)?;
    let file = object::File::parse(&*elf).map_err(|e| format!("{path}: not an ELF module: {e}"))?;
    let Some(section) = file.section_by_name(".modinfo") else {
        return Ok(Vec::new());
    };
    let data = section
        .data()
        .map_err(|e| format!("{path}: .modinfo: {e}"))?;
    Ok(data
        .split(|b| *b == 0)
        .filter_map(|kv| kv.strip_prefix(b"depends="))
        .flat_map(|v| {
            String::from_utf8_lossy(v)
                .split(',')
                .filter(|s| !s.is_empty())
                .map(canonical)
                .collect::<Vec<_>>()
        })
        .collect())
}

/// The modules of kernel `release` in `tree`.
pub struct Modules<'a> {
    tree: &'a Tree,
    /// name -> path of the module file
    files: BTreeMap<String, String>,
    builtin: BTreeSet<String>,
}

impl<'a> Modules<'a> {
    pub fn new(tree: &'a Tree, release: &str) -> Result<Modules<'a>, String> {
        let base = format!("usr/lib/modules/{release}/");
        let files: BTreeMap<String, String> = tree
            .iter()
            .filter(|(p, _)| p.starts_with(&base))
            .filter_map(|(p, _)| module_name(p).map(|n| (n, p.clone())))
            .collect();
        if files.is_empty() {
            return Err(format!("no modules under /{base}"));
        }
        let builtin = tree
            .read(&format!("{base}modules.builtin"))
            .map(|b| {
                String::from_utf8_lossy(b)
                    .lines()
                    .filter_map(module_name)
                    .collect()
            })
            .unwrap_or_default();
        Ok(Modules {
            tree,
            files,
            builtin,
        })
    }

    /// Files for `wanted` and everything they depend on, dependencies first; builtin
    /// modules need none. An unknown name is an error.
    pub fn resolve(&self, wanted: &[&str]) -> Result<Vec<String>, String> {
        let mut order = Vec::new();
        let mut seen = BTreeSet::new();
        for w in wanted {
            self.visit(&canonical(w), &mut seen, &mut order, 0)?;
        }
        Ok(order)
    }

    fn visit(
        &self,
        name: &str,
        seen: &mut BTreeSet<String>,
        order: &mut Vec<String>,
        depth: usize,
    ) -> Result<(), String> {
        if depth > 64 {
            return Err(format!("module dependency loop at {name}"));
        }
        if !seen.insert(name.to_string()) || self.builtin.contains(name) {
            return Ok(());
        }
        let path = self
            .files
            .get(name)
            .ok_or_else(|| format!("no module {name} in this kernel"))?;
        let bytes = self
            .tree
            .read(path)
            .ok_or_else(|| format!("{path}: not a regular file"))?;
        for dep in depends(path, bytes)? {
            self.visit(&dep, seen, order, depth + 1)?;
        }
        order.push(path.clone());
        Ok(())
    }
}
