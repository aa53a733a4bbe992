//! Network boot: what `slipway build` writes to `DIR/pxe/` (pure text and a plan of
//! files) and `slipway serve` (in [`serve`]), which hands it to machines.
//!
//! The chain: the machine's PXE ROM asks DHCP (dnsmasq, `dnsmasq.conf.example`) and gets
//! iPXE over TFTP; iPXE asks DHCP again and gets `http://SERVER/boot.ipxe`; that script
//! chains to `pxe/nodes/MAC.ipxe`, which boots the role's kernel and initramfs (the same
//! ones as in the disk's UKI) in install mode. slipway-init then fetches the node's config
//! and the role's disk image, writes the install disk and reboots into it
//! (docs/pxe.md).
//!
//! Why install, not a live root: a node's state (etcd, containerd's images, kubelet's
//! pods) belongs on its disk, and a node that boots from its own disk keeps working when
//! the provisioning server is down; PXE is for first install and for reimaging.

pub mod serve;

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::cluster::{Cluster, Node};

/// What a role's install needs from its build: the image's identity and size.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleInstall {
    pub role: String,
    /// dm-verity root hash (hex): slipway-init checks the written disk against it.
    pub root_hash: String,
    /// The uncompressed disk image's size and SHA-256.
    pub size: u64,
    pub sha256: String,
}

/// The line of `boot.ipxe` that `slipway serve` replaces with the address it was reached
/// at; behind another web server, edit it.
pub const BASE_PLACEHOLDER: &str = "isset ${slipway-base} || set slipway-base http://CHANGE-ME";

/// A MAC as iPXE's `${mac:hexhyp}` and FAT-safe file names write it: `52-54-00-00-00-11`.
pub fn mac_file_name(node: &Node) -> String {
    node.mac.to_string().replace(':', "-")
}

/// The generic chain script: every machine loads it, and it chains to its own by MAC.
pub fn boot_script(cluster: &Cluster) -> String {
    format!(
        "#!ipxe\n\
         # Slipway cluster {name}: the chain script every machine gets from DHCP\n\
         # (pxe/dnsmasq.conf.example). `slipway serve` replaces the next line with the\n\
         # address it was reached at; behind another web server, put yours there.\n\
         {BASE_PLACEHOLDER}\n\
         echo Slipway: ${{mac}} asks for its node script\n\
         chain ${{slipway-base}}/pxe/nodes/${{mac:hexhyp}}.ipxe || goto unknown\n\
         :unknown\n\
         echo Slipway: no node of cluster {name} has MAC ${{mac}} (see cluster.toml); booting from disk\n\
         sleep 10\n\
         exit 1\n",
        name = cluster.name
    )
}

/// The kernel parameter that tells the installer to keep or wipe the state partition;
/// `slipway serve --keep-state` turns the one into the other.
pub fn state_param(keep: bool) -> &'static str {
    if keep {
        "slipway.install.state=keep"
    } else {
        "slipway.install.state=wipe"
    }
}

/// A node's install parameters besides its sources, as the installer reads them from the
/// kernel command line (iPXE) or a medium's `slipway/install.cmdline` (`slipway iso`):
/// the uncompressed image's SHA-256 and size, the install disk, keep or wipe.
pub fn install_params(sha256: &str, size: u64, disk: &str, keep_state: bool) -> String {
    format!(
        "slipway.install.sha256={sha256} slipway.install.size={size} \
         slipway.install.disk={disk} {}",
        state_param(keep_state)
    )
}

/// The per-node script: the role's kernel and initramfs in install mode, with the node's
/// install disk, the image's hash and size, and the network iPXE was given.
pub fn node_script(node: &Node, role: &RoleInstall, keep_state: bool) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "#!ipxe");
    let _ = writeln!(
        s,
        "# {} ({}): install {} on {}, state partition {}",
        node.name,
        role.role,
        role.role,
        node.install_disk,
        if keep_state { "kept" } else { "wiped" }
    );
    let _ = writeln!(s, "echo Slipway: installing {} ({})", node.name, role.role);
    let base = format!("${{slipway-base}}/pxe/{}", role.role);
    // `initrd=initrd.img` lets the kernel's EFI stub find the initramfs iPXE registered
    // under that name (UEFI); BIOS iPXE passes it the usual way and ignores the word.
    let _ = writeln!(
        s,
        "kernel {base}/vmlinuz initrd=initrd.img console=tty0 console=ttyS0,115200 \
         printk.devkmsg=on slipway.roothash={hash} slipway.install={base}/disk.img.zst \
         {params} slipway.install.config=${{slipway-base}}/nodes/${{mac:hexhyp}}/config.ign \
         slipway.net=${{mac:hexhyp}},${{ip}},${{netmask}},${{gateway}}",
        hash = role.root_hash,
        params = install_params(&role.sha256, role.size, &node.install_disk, keep_state),
    );
    let _ = writeln!(s, "initrd {base}/initrd.img");
    let _ = writeln!(s, "boot");
    s
}

/// MAC (dashes) -> node name, for `slipway serve`'s per-MAC configs. Holds no secret.
pub fn macs_json(cluster: &Cluster) -> String {
    let map: BTreeMap<String, &str> = cluster
        .nodes
        .iter()
        .map(|n| (mac_file_name(n), n.name.as_str()))
        .collect();
    let mut s = serde_json::to_string_pretty(&map).unwrap_or_default();
    s.push('\n');
    s
}

/// A dnsmasq configuration for proxy-DHCP (the network's own DHCP server keeps handing
/// out addresses) and TFTP, chainloading PXE ROMs (BIOS and UEFI) into iPXE and iPXE
/// into `slipway serve`. The interface and the server address are the operator's.
pub fn dnsmasq_example(cluster: &Cluster) -> String {
    format!(
        "# dnsmasq for network-booting the nodes of cluster {name} into Slipway's installer.\n\
         # Copy to /etc/dnsmasq.d/slipway.conf, set INTERFACE and SERVER, and run\n\
         # `slipway serve OUT --listen SERVER:8080` on the same machine.\n\
         # Proxy-DHCP: the network's DHCP server keeps giving out addresses; dnsmasq only\n\
         # adds the boot information, so both run side by side.\n\
         port=0\n\
         interface=INTERFACE\n\
         bind-interfaces\n\
         log-dhcp\n\
         dhcp-range={net},proxy,{mask}\n\
         # TFTP for the first stage: iPXE from Debian's ipxe package.\n\
         enable-tftp\n\
         tftp-root=/usr/lib/ipxe\n\
         # iPXE identifies itself with option 175; PXE ROMs do not.\n\
         dhcp-match=set:ipxe,175\n\
         # First stage, for ROMs that are not iPXE: Debian's iPXE over TFTP. UEFI x86-64\n\
         # ROMs (client architecture 7 or 9) get ipxe.efi; BIOS ROMs get undionly, for which\n\
         # a proxy asks NAME.0: link undionly.kpxe as undionly.0 in a TFTP root of your own.\n\
         pxe-service=tag:!ipxe,X86-64_EFI,\"Slipway: iPXE (UEFI)\",ipxe.efi\n\
         pxe-service=tag:!ipxe,BC_EFI,\"Slipway: iPXE (UEFI)\",ipxe.efi\n\
         pxe-service=tag:!ipxe,x86PC,\"Slipway: iPXE (BIOS)\",undionly\n\
         # Second stage, iPXE: Slipway's chain script, which picks the node's own by MAC.\n\
         dhcp-boot=tag:ipxe,http://SERVER:8080/boot.ipxe\n",
        name = cluster.name,
        net = cluster.network.subnet.network(),
        mask = cluster.network.subnet.netmask(),
    )
}
