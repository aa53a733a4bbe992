//! An SPDX 2.3 JSON document listing every package in a root filesystem. Reproducible:
//! its creation time is SOURCE_DATE_EPOCH and its namespace is derived from its content.

use serde_json::json;
use sha2::{Digest, Sha256};

use crate::debian::lock::LockedPackage;

pub fn spdx(
    name: &str,
    suite: &str,
    packages: &[LockedPackage],
    source_date_epoch: u64,
) -> serde_json::Value {
    let created = time::OffsetDateTime::from_unix_timestamp(source_date_epoch as i64)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| "1970-01-01T00:00:00Z".into());
    let mut h = Sha256::new();
    for p in packages {
        h.update(p.sha256.as_bytes());
    }
    let digest = hex::encode(h.finalize());
    let pkgs: Vec<serde_json::Value> = packages
        .iter()
        .map(|p| {
            json!({
                "SPDXID": format!("SPDXRef-Package-deb-{}", spdx_id(&p.name)),
                "name": p.name,
                "versionInfo": p.version,
                "supplier": "Organization: Debian",
                "downloadLocation": "NOASSERTION",
                "filesAnalyzed": false,
                "checksums": [{ "algorithm": "SHA256", "checksumValue": p.sha256 }],
                "externalRefs": [{
                    "referenceCategory": "PACKAGE-MANAGER",
                    "referenceType": "purl",
                    "referenceLocator": format!("pkg:deb/debian/{}@{}?arch={}&distro={suite}", p.name, p.version.replace(':', "%3A"), p.architecture),
                }],
            })
        })
        .collect();
    let relationships: Vec<serde_json::Value> = packages
        .iter()
        .map(|p| {
            json!({
                "spdxElementId": "SPDXRef-DOCUMENT",
                "relationshipType": "DESCRIBES",
                "relatedSpdxElement": format!("SPDXRef-Package-deb-{}", spdx_id(&p.name)),
            })
        })
        .collect();
    json!({
        "spdxVersion": "SPDX-2.3",
        "dataLicense": "CC0-1.0",
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": format!("slipway-rootfs-{name}"),
        "documentNamespace": format!("https://slipway.invalid/spdx/{name}-{digest}"),
        "creationInfo": { "created": created, "creators": [format!("Tool: slipway-{}", env!("CARGO_PKG_VERSION"))] },
        "packages": pkgs,
        "relationships": relationships,
    })
}

/// SPDX ids allow letters, digits, '.' and '-'.
fn spdx_id(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect()
}

/// Adds container images (name `REGISTRY/REPOSITORY:TAG`, manifest SHA-256) to an SPDX
/// document from [`spdx`], as OCI packages with purls.
pub fn add_images(doc: &mut serde_json::Value, images: &[(&str, &str)]) {
    for (name, sha) in images {
        let (repo, tag) = name.rsplit_once(':').unwrap_or((name, ""));
        let last = repo.rsplit('/').next().unwrap_or(repo);
        let id = format!("SPDXRef-Package-oci-{}", spdx_id(name));
        if let Some(p) = doc["packages"].as_array_mut() {
            p.push(json!({
                "SPDXID": id,
                "name": name,
                "versionInfo": format!("sha256:{sha}"),
                "supplier": "NOASSERTION",
                "downloadLocation": "NOASSERTION",
                "filesAnalyzed": false,
                "checksums": [{ "algorithm": "SHA256", "checksumValue": sha }],
                "externalRefs": [{
                    "referenceCategory": "PACKAGE-MANAGER",
                    "referenceType": "purl",
                    "referenceLocator": format!("pkg:oci/{last}@sha256%3A{sha}?repository_url={repo}&tag={tag}"),
                }],
            }));
        }
        if let Some(r) = doc["relationships"].as_array_mut() {
            r.push(json!({
                "spdxElementId": "SPDXRef-DOCUMENT",
                "relationshipType": "DESCRIBES",
                "relatedSpdxElement": id,
            }));
        }
    }
}
