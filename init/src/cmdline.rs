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
    /// Install mode (`slipway.install=URL` and its companions, written by the per-node
    /// iPXE script of `slipway build`): write the image to the named disk and reboot.
    pub install: Option<Install>,
    /// `slipway.install.media=VOLUME-ID`: install from the ISO 9660 medium of that volume
    /// id (a CD, BMC virtual media or a USB stick written with `slipway iso`), whose
    /// `slipway/install.cmdline` holds the node's install parameters.
    pub install_media: Option<String>,
}

/// What to do in install mode: every `slipway.install.*` and `slipway.net` parameter.
#[derive(Debug, PartialEq, Eq)]
pub struct Install {
    /// `slipway.install=URL`: the role's disk image, zstd-compressed (`disk.img.zst`).
    pub image: String,
    /// `slipway.install.sha256=HEX`: SHA-256 of the uncompressed image.
    pub sha256: Vec<u8>,
    /// `slipway.install.size=BYTES`: the uncompressed image's size.
    pub size: u64,
    /// `slipway.install.config=URL`: the node's Ignition config, laid on the new ESP.
    pub config: String,
    /// `slipway.install.disk=/dev/disk/by-path/...|/dev/disk/by-id/...`: where to write.
    pub disk: String,
    /// `slipway.install.state=wipe|keep` (default wipe): keep an existing state partition.
    pub keep_state: bool,
    /// `slipway.net=MAC,ADDRESS,NETMASK[,GATEWAY]`: the interface to bring up and its
    /// address (iPXE passes what DHCP gave it: `${mac:hexhyp},${ip},${netmask},${gateway}`).
    /// Required when the image or the config is a URL; None for an install from media.
    pub net: Option<Net>,
}

/// A static IPv4 configuration for one interface, chosen by MAC.
#[derive(Debug, PartialEq, Eq, Clone)]
pub struct Net {
    /// Lower case, colon-separated, as in /sys/class/net/*/address.
    pub mac: String,
    pub address: std::net::Ipv4Addr,
    pub prefix: u8,
    pub gateway: Option<std::net::Ipv4Addr>,
}

impl Net {
    pub fn parse(s: &str) -> Result<Net, String> {
        let bad = |why: &str| format!("slipway.net={s}: {why} (MAC,ADDRESS,NETMASK[,GATEWAY])");
        let f: Vec<&str> = s.split(',').collect();
        if !(3..=4).contains(&f.len()) {
            return Err(bad("needs 3 or 4 comma-separated fields"));
        }
        let mac = f[0].to_ascii_lowercase().replace('-', ":");
        let hex_pairs = mac
            .split(':')
            .all(|b| b.len() == 2 && b.bytes().all(|c| c.is_ascii_hexdigit()));
        if mac.split(':').count() != 6 || !hex_pairs {
            return Err(bad("not a MAC address"));
        }
        let address = f[1].parse().map_err(|_| bad("not an IPv4 address"))?;
        let mask: std::net::Ipv4Addr = f[2].parse().map_err(|_| bad("not a netmask"))?;
        let bits = u32::from(mask);
        if bits.leading_ones() + bits.trailing_zeros() != 32 {
            return Err(bad("not a contiguous netmask"));
        }
        let gateway = match f.get(3).map(|g| g.trim()) {
            None | Some("") | Some("0.0.0.0") => None,
            Some(g) => Some(
                g.parse()
                    .map_err(|_| bad("gateway is not an IPv4 address"))?,
            ),
        };
        Ok(Net {
            mac,
            address,
            prefix: bits.leading_ones() as u8,
            gateway,
        })
    }
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
        let mut kv = std::collections::BTreeMap::new();
        let mut install_media = None;
        for word in text.split_whitespace() {
            let Some((key, value)) = word.split_once('=') else {
                continue;
            };
            match key {
                "slipway.roothash" => roothash = Some(parse_hex(key, value)?),
                "slipway.timeout" => {
                    timeout_secs = value
                        .parse()
                        .map_err(|_| format!("slipway.timeout={value}: not a number of seconds"))?
                }
                "slipway.init" => init = value.to_string(),
                "slipway.install.media" => install_media = Some(value.to_string()),
                k if k.starts_with("slipway.install") || k == "slipway.net" => {
                    kv.insert(k.to_string(), value.to_string());
                }
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
            install: Install::from_params(&kv)?,
            install_media,
        })
    }
}

impl Install {
    /// The parameters in `text` (a medium's `slipway/install.cmdline`), with the image and
    /// the config at the files `image` and `config`.
    pub fn from_media_text(text: &str, image: &str, config: &str) -> Result<Install, String> {
        let mut kv: std::collections::BTreeMap<String, String> = text
            .split_whitespace()
            .filter_map(|w| w.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        for k in ["slipway.install", "slipway.install.config"] {
            if kv.contains_key(k) {
                return Err(format!(
                    "{k}: set by the medium itself, not its install.cmdline"
                ));
            }
        }
        kv.insert("slipway.install".into(), image.into());
        kv.insert("slipway.install.config".into(), config.into());
        Install::from_params(&kv)?.ok_or_else(|| "no install parameters".to_string())
    }

    /// None when there is no `slipway.install=`; otherwise every companion is required.
    fn from_params(
        kv: &std::collections::BTreeMap<String, String>,
    ) -> Result<Option<Install>, String> {
        let Some(image) = kv.get("slipway.install") else {
            if let Some(k) = kv.keys().next() {
                return Err(format!("{k}= is given without slipway.install="));
            }
            return Ok(None);
        };
        let need = |k: &str| {
            kv.get(k).cloned().ok_or_else(|| {
                format!("slipway.install= needs {k}= on the kernel command line too")
            })
        };
        let sha256 = parse_hex("slipway.install.sha256", &need("slipway.install.sha256")?)?;
        if sha256.len() != 32 {
            return Err("slipway.install.sha256 must be 64 hexadecimal digits".into());
        }
        let size = need("slipway.install.size")?;
        let size = size
            .parse()
            .map_err(|_| format!("slipway.install.size={size}: not a number of bytes"))?;
        let disk = need("slipway.install.disk")?;
        if !(disk.starts_with("/dev/disk/by-path/") || disk.starts_with("/dev/disk/by-id/")) {
            return Err(format!(
                "slipway.install.disk={disk}: name the disk by /dev/disk/by-path/ or /dev/disk/by-id/ \
                 (kernel names like /dev/sda change between boots)"
            ));
        }
        let keep_state = match kv.get("slipway.install.state").map(String::as_str) {
            None | Some("wipe") => false,
            Some("keep") => true,
            Some(v) => return Err(format!("slipway.install.state={v}: wipe or keep")),
        };
        for k in kv.keys() {
            let known = [
                "slipway.install",
                "slipway.install.sha256",
                "slipway.install.size",
                "slipway.install.config",
                "slipway.install.disk",
                "slipway.install.state",
                "slipway.net",
            ];
            if !known.contains(&k.as_str()) {
                return Err(format!("{k}: unknown parameter"));
            }
        }
        let config = need("slipway.install.config")?;
        // A network source needs the network; files (an install medium) do not.
        let remote = [image, &config].iter().any(|s| !s.starts_with('/'));
        let net = match kv.get("slipway.net") {
            Some(n) => Some(Net::parse(n)?),
            None if remote => {
                return Err(
                    "slipway.install= needs slipway.net= on the kernel command line too".into(),
                );
            }
            None => None,
        };
        Ok(Some(Install {
            image: image.clone(),
            sha256,
            size,
            config,
            disk,
            keep_state,
            net,
        }))
    }
}

fn parse_hex(name: &str, s: &str) -> Result<Vec<u8>, String> {
    let bad = || format!("{name}={s}: not hexadecimal");
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
        assert_eq!(a.install, None);
    }

    #[test]
    fn install_mode() {
        let h = "ab".repeat(32);
        let base = format!(
            "slipway.roothash={h} slipway.install=http://192.168.1.5:8080/pxe/worker/disk.img.zst \
             slipway.install.sha256={h} slipway.install.size=1048576 \
             slipway.install.config=http://192.168.1.5:8080/nodes/52-54-00-00-00-21/config.ign \
             slipway.install.disk=/dev/disk/by-path/pci-0000:00:04.0"
        );
        let a = Args::parse(&format!(
            "{base} slipway.net=52-54-00-00-00-21,192.168.1.50,255.255.255.0,"
        ))
        .unwrap_or_else(|e| panic!("{e}"));
        let i = a.install.unwrap_or_else(|| panic!("no install"));
        assert_eq!(i.size, 1 << 20);
        assert!(!i.keep_state);
        let net = i.net.unwrap_or_else(|| panic!("no net"));
        assert_eq!(net.mac, "52:54:00:00:00:21");
        assert_eq!(net.prefix, 24);
        assert_eq!(net.gateway, None);
        let a = Args::parse(&format!(
            "{base} slipway.install.state=keep slipway.net=52:54:00:00:00:21,10.0.0.9,255.255.0.0,10.0.0.1"
        ))
        .unwrap_or_else(|e| panic!("{e}"));
        let i = a.install.unwrap_or_else(|| panic!("no install"));
        assert!(i.keep_state);
        let net = i.net.unwrap_or_else(|| panic!("no net"));
        assert_eq!(net.prefix, 16);
        assert_eq!(net.gateway, Some("10.0.0.1".parse().unwrap()));
        // Refusals, each naming the parameter.
        for (extra, word) in [
            ("", "slipway.net"),
            (
                "slipway.net=52-54-00-00-00-21,192.168.1.50,255.0.255.0",
                "netmask",
            ),
            ("slipway.net=52-54-00-21,192.168.1.50,255.255.255.0", "MAC"),
            (
                "slipway.net=52-54-00-00-00-21,192.168.1.50,255.255.255.0 slipway.install.state=maybe",
                "wipe or keep",
            ),
            (
                "slipway.net=52-54-00-00-00-21,192.168.1.50,255.255.255.0 slipway.install.sizes=1",
                "unknown",
            ),
        ] {
            let e = Args::parse(&format!("{base} {extra}"))
                .err()
                .unwrap_or_default();
            assert!(e.contains(word), "{extra}: {e}");
        }
        let e = Args::parse(&format!(
            "slipway.roothash={h} slipway.install.disk=/dev/sda"
        ))
        .err()
        .unwrap_or_default();
        assert!(e.contains("without slipway.install="), "{e}");
        let e = Args::parse(&base.replace("/dev/disk/by-path/pci-0000:00:04.0", "/dev/sda"))
            .err()
            .unwrap_or_default();
        assert!(e.contains("by-path"), "{e}");
    }

    #[test]
    fn install_from_media() {
        let h = "ab".repeat(32);
        let a = Args::parse(&format!(
            "slipway.roothash={h} slipway.install.media=SLIPWAY_INSTALL"
        ))
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(a.install, None);
        assert_eq!(a.install_media.as_deref(), Some("SLIPWAY_INSTALL"));
        let text = format!(
            "slipway.install.sha256={h} slipway.install.size=4096 \
             slipway.install.disk=/dev/disk/by-id/virtio-X slipway.install.state=keep\n"
        );
        let i = Install::from_media_text(&text, "/m/disk.img.zst", "/m/config.ign")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(i.net, None);
        assert!(i.keep_state);
        assert_eq!(i.image, "/m/disk.img.zst");
        let e = Install::from_media_text(&format!("{text} slipway.install=http://x/"), "/a", "/b")
            .err()
            .unwrap_or_default();
        assert!(e.contains("set by the medium"), "{e}");
    }
}
