//! Our dm-verity hash trees, judged by cryptsetup's `veritysetup verify` (userspace: no
//! device-mapper, no root needed).
#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;

use common::{check, run};
use slipway::image::verity::{self, BLOCK};

fn data(blocks: usize) -> Vec<u8> {
    // Varied content, so every block hashes differently.
    (0..blocks * BLOCK)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect()
}

#[test]
fn veritysetup_verifies_our_tree_and_catches_a_flipped_byte() {
    for blocks in [1, 2, 128, 129, 1000, 16_385] {
        let dir = tempfile::tempdir().unwrap();
        let d = data(blocks);
        let v = verity::build(&d).unwrap();
        let (dp, hp) = (dir.path().join("data"), dir.path().join("hash"));
        std::fs::write(&dp, &d).unwrap();
        std::fs::write(&hp, &v.hash_device).unwrap();
        let o = run(Command::new("veritysetup")
            .arg("verify")
            .arg(&dp)
            .arg(&hp)
            .arg(v.root_hash_hex()));
        assert!(
            o.status.success(),
            "{blocks} blocks: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let dump = common::stdout(&check(Command::new("veritysetup").arg("dump").arg(&hp)));
        assert!(dump.contains(&v.uuid_string()), "{dump}");
        let data_blocks = dump
            .lines()
            .find_map(|l| l.strip_prefix("Data blocks:"))
            .map(|v| v.trim().to_string());
        assert_eq!(data_blocks, Some(blocks.to_string()), "{dump}");
        // One flipped byte anywhere in the data must fail verification.
        let mut bad = d.clone();
        let at = (blocks * BLOCK) / 2 + 17;
        bad[at] ^= 0x01;
        std::fs::write(&dp, &bad).unwrap();
        let o = run(Command::new("veritysetup")
            .arg("verify")
            .arg(&dp)
            .arg(&hp)
            .arg(v.root_hash_hex()));
        assert!(
            !o.status.success(),
            "{blocks} blocks: a flipped byte verified"
        );
        // And a wrong root hash fails too.
        std::fs::write(&dp, &d).unwrap();
        let mut wrong = v.root_hash;
        wrong[0] ^= 1;
        let o = run(Command::new("veritysetup")
            .arg("verify")
            .arg(&dp)
            .arg(&hp)
            .arg(hex::encode(wrong)));
        assert!(
            !o.status.success(),
            "{blocks} blocks: a wrong root hash verified"
        );
    }
}

#[test]
fn same_format_as_veritysetup_format() {
    // veritysetup format with our salt and UUID writes the same hash device bytes.
    let dir = tempfile::tempdir().unwrap();
    let d = data(300);
    let v = verity::build(&d).unwrap();
    let (dp, hp) = (dir.path().join("data"), dir.path().join("hash"));
    std::fs::write(&dp, &d).unwrap();
    let out = common::stdout(&check(
        Command::new("veritysetup")
            .args([
                "format",
                "--hash=sha256",
                "--data-block-size=4096",
                "--hash-block-size=4096",
            ])
            .arg(format!("--salt={}", hex::encode(v.salt)))
            .arg(format!("--uuid={}", v.uuid_string()))
            .arg(&dp)
            .arg(&hp),
    ));
    assert!(out.contains(&v.root_hash_hex()), "{out}");
    assert_eq!(std::fs::read(&hp).unwrap(), v.hash_device);
}
