//! A local apt repository of exactly a locked package set (unsigned: its packages were
//! verified when they entered the cache). For air-gapped mirrors, and for building the
//! same set with other tools (the mmdebstrap comparison and benchmark).

use std::path::Path;

use super::extract;
use super::lock::LockedPackage;

/// Writes `dir/POOL.deb` files and `dir/dists/SUITE/{Release,main/binary-ARCH/Packages}`.
/// Use it with `deb [trusted=yes] copy://DIR SUITE main`.
pub fn write(
    dir: &Path,
    suite: &str,
    arch: &str,
    packages: &[LockedPackage],
    cache: &Path,
) -> Result<(), String> {
    let index_dir = dir.join(format!("dists/{suite}/main/binary-{arch}"));
    std::fs::create_dir_all(&index_dir)
        .map_err(|e| format!("creating {}: {e}", index_dir.display()))?;
    let mut index = String::new();
    for p in packages {
        let blob = cache.join("sha256").join(&p.sha256);
        let name = p.filename.rsplit('/').next().unwrap_or(&p.filename);
        let bytes = std::fs::read(&blob).map_err(|e| format!("{}: {e}", blob.display()))?;
        std::fs::write(dir.join(name), &bytes).map_err(|e| format!("writing {name}: {e}"))?;
        let mut para = extract::control_of(name, &bytes)?;
        para.fields.push(("Filename".into(), name.to_string()));
        para.fields.push(("Size".into(), p.size.to_string()));
        para.fields.push(("SHA256".into(), p.sha256.clone()));
        index.push_str(&para.to_text());
        index.push('\n');
    }
    std::fs::write(index_dir.join("Packages"), index)
        .map_err(|e| format!("writing Packages: {e}"))?;
    let release = format!(
        "Origin: Debian\nLabel: Debian\nSuite: {suite}\nCodename: {suite}\nArchitectures: {arch}\nComponents: main\n"
    );
    std::fs::write(dir.join(format!("dists/{suite}/Release")), release)
        .map_err(|e| format!("writing Release: {e}"))
}
