//! The kernel command line parameters slipway-init reads. The image builder writes them
//! into the UKI's .cmdline, which systemd-stub passes to the kernel unchanged.

/// Parsed `slipway.*` parameters.
#[derive(Debug, PartialEq, Eq)]
pub struct Args {
    /// `slipway.roothash=HEX`: the dm-verity root hash of the root partition.
    pub roothash: Vec<u8>,
    /// `slipway.timeout=SECONDS`: how long to wait for the partitions (default 90).
    pub timeout_secs: u64,
    /// `slipway.init=PATH`: what to execute in the new root (default /sbin/init).
    pub init: String,
}

impl Args {
    pub fn read() -> Result<Args, String> {
        let text = std::fs::read_to_string("/proc/cmdline")
            .map_err(|e| format!("reading /proc/cmdline: {e}"))?;
        Args::parse(&text)
    }

    pub fn parse(text: &str) -> Result<Args, String> {
        let mut roothash = None;
        let mut timeout_secs = 90;
        let mut init = "/sbin/init".to_string();
        for word in text.split_whitespace() {
            let Some((key, value)) = word.split_once('=') else {
                continue;
            };
            match key {
                "slipway.roothash" => roothash = Some(parse_hex(value)?),
                "slipway.timeout" => {
                    timeout_secs = value
                        .parse()
                        .map_err(|_| format!("slipway.timeout={value}: not a number of seconds"))?
                }
                "slipway.init" => init = value.to_string(),
                _ => {}
            }
        }
        let roothash = roothash
            .ok_or("no slipway.roothash= on the kernel command line: not a Slipway UKI?")?;
        if roothash.len() != 32 {
            return Err(format!(
                "slipway.roothash has {} bytes; a SHA-256 root hash has 32",
                roothash.len()
            ));
        }
        Ok(Args {
            roothash,
            timeout_secs,
            init,
        })
    }
}

fn parse_hex(s: &str) -> Result<Vec<u8>, String> {
    let bad = || format!("slipway.roothash={s}: not hexadecimal");
    if !s.len().is_multiple_of(2) {
        return Err(bad());
    }
    (0..s.len())
        .step_by(2)
        .map(|i| {
            s.get(i..i + 2)
                .and_then(|b| u8::from_str_radix(b, 16).ok())
                .ok_or_else(bad)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_refuses() {
        let h = "ab".repeat(32);
        let a = Args::parse(&format!(
            "console=ttyS0 slipway.roothash={h} slipway.timeout=5\n"
        ))
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(a.roothash, vec![0xab; 32]);
        assert_eq!(a.timeout_secs, 5);
        assert_eq!(a.init, "/sbin/init");
        assert!(Args::parse("quiet").is_err());
        assert!(Args::parse("slipway.roothash=abc").is_err());
        assert!(Args::parse("slipway.roothash=zz").is_err());
        assert!(Args::parse(&format!("slipway.roothash={}", "ab".repeat(16))).is_err());
        assert!(Args::parse(&format!("slipway.roothash={h} slipway.timeout=x")).is_err());
    }
}
