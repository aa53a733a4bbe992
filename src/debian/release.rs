//! `InRelease`: the OpenPGP cleartext signature over the suite's Release file, checked
//! against a Debian archive keyring (rPGP), and the SHA256 list it carries.
//!
//! Only the text inside the verified signature is parsed, so an attacker cannot add
//! fields outside the signed part.

use std::collections::BTreeMap;

use pgp::composed::{CleartextSignedMessage, Deserializable, SignedPublicKey};

use super::control;

#[derive(Debug)]
pub struct Release {
    pub suite: String,
    pub codename: String,
    /// Path below `dists/SUITE/` -> (size, sha256).
    pub sha256: BTreeMap<String, (u64, String)>,
}

/// Loads every public key in an OpenPGP keyring file (binary or armored).
pub fn load_keyring(bytes: &[u8]) -> Result<Vec<SignedPublicKey>, String> {
    let armored = bytes.starts_with(b"-----BEGIN");
    let keys: Vec<SignedPublicKey> = if armored {
        let (iter, _) = SignedPublicKey::from_armor_many(bytes).map_err(|e| e.to_string())?;
        iter.filter_map(Result::ok).collect()
    } else {
        SignedPublicKey::from_bytes_many(bytes)
            .map_err(|e| e.to_string())?
            .filter_map(Result::ok)
            .collect()
    };
    if keys.is_empty() {
        return Err("no OpenPGP public keys in it".into());
    }
    Ok(keys)
}

/// Verifies `inrelease` with any key (primary or subkey) of `keyring` and parses it.
pub fn verify(inrelease: &str, keyring: &[SignedPublicKey]) -> Result<Release, String> {
    let (msg, _) = CleartextSignedMessage::from_string(inrelease)
        .map_err(|e| format!("not an OpenPGP cleartext-signed message: {e}"))?;
    let verified = keyring.iter().any(|k| {
        msg.verify(&k.primary_key).is_ok()
            || k.public_subkeys.iter().any(|s| msg.verify(&s.key).is_ok())
    });
    if !verified {
        return Err("the signature does not verify with any key of the keyring".into());
    }
    parse(&msg.signed_text())
}

fn parse(text: &str) -> Result<Release, String> {
    let paras =
        control::parse(&text.replace("\r\n", "\n")).map_err(|l| format!("line {l}: malformed"))?;
    let p = paras.first().ok_or("empty Release")?;
    let mut sha256 = BTreeMap::new();
    for line in p.get("SHA256").ok_or("no SHA256 field")?.lines() {
        let parts: Vec<&str> = line.split_whitespace().collect();
        if let [hash, size, path] = parts[..] {
            let size = size.parse().map_err(|_| format!("bad size in {line:?}"))?;
            sha256.insert(path.to_string(), (size, hash.to_string()));
        }
    }
    Ok(Release {
        suite: p.get("Suite").unwrap_or("").to_string(),
        codename: p.get("Codename").unwrap_or("").to_string(),
        sha256,
    })
}
