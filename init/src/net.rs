//! The network in install mode: one interface, chosen by MAC, with the IPv4 address iPXE
//! got from DHCP (passed as `slipway.net=`), over rtnetlink (the rust-netlink crates'
//! message types and socket, the ones `rtnetlink` is built on, used synchronously: PID 1
//! has no async runtime). No DHCP client: iPXE already did that exchange, and reusing its
//! lease keeps the initramfs small.

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_REPLACE, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage,
    NetlinkPayload,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{LinkFlags, LinkMessage};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

use crate::cmdline::Net;
use crate::log::step;

/// The interface whose MAC is `mac` (lower case, colons): (name, ifindex). NIC drivers
/// were loaded with the other modules; the interface may take a moment to appear.
fn find(mac: &str, timeout: Duration) -> Result<(String, u32), String> {
    let start = Instant::now();
    loop {
        let mut seen = Vec::new();
        if let Ok(dir) = std::fs::read_dir("/sys/class/net") {
            for e in dir.flatten() {
                let p = e.path();
                let addr = std::fs::read_to_string(p.join("address")).unwrap_or_default();
                let name = e.file_name().to_string_lossy().into_owned();
                if addr.trim().eq_ignore_ascii_case(mac) {
                    let index = std::fs::read_to_string(p.join("ifindex"))
                        .ok()
                        .and_then(|s| s.trim().parse().ok())
                        .ok_or_else(|| format!("{name}: no ifindex"))?;
                    return Ok((name, index));
                }
                seen.push(format!("{name} {}", addr.trim()));
            }
        }
        if start.elapsed() > timeout {
            return Err(format!(
                "no network interface with MAC {mac} (slipway.net=) after {} s; interfaces: [{}]. \
                 Is the NIC's driver in the profile's initramfs_modules?",
                timeout.as_secs(),
                seen.join(", ")
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Sends one request and waits for its acknowledgement.
fn request(
    socket: &Socket,
    msg: RouteNetlinkMessage,
    flags: u16,
    what: &str,
) -> Result<(), String> {
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
    let mut m = NetlinkMessage::new(header, NetlinkPayload::from(msg));
    m.finalize();
    let mut buf = vec![0; m.buffer_len()];
    m.serialize(&mut buf);
    socket
        .send(&buf, 0)
        .map_err(|e| format!("{what}: sending to rtnetlink: {e}"))?;
    let mut reply = vec![0; 8192];
    let n = socket
        .recv(&mut &mut reply[..], 0)
        .map_err(|e| format!("{what}: reading rtnetlink's answer: {e}"))?;
    let answer = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&reply[..n])
        .map_err(|e| format!("{what}: rtnetlink's answer: {e}"))?;
    match answer.payload {
        NetlinkPayload::Error(e) if e.code.is_some() => Err(format!("{what}: {}", e.to_io())),
        _ => Ok(()),
    }
}

/// Brings up `lo` and the interface of `net.mac` with its address (and a default route
/// through the gateway, if any); waits for the link's carrier. Returns the interface name.
pub fn configure(net: &Net) -> Result<String, String> {
    let (name, index) = find(&net.mac, Duration::from_secs(15))?;
    let socket = Socket::new(NETLINK_ROUTE).map_err(|e| format!("opening rtnetlink: {e}"))?;
    socket
        .connect(&SocketAddr::new(0, 0))
        .map_err(|e| format!("connecting rtnetlink: {e}"))?;
    let lo = std::fs::read_to_string("/sys/class/net/lo/ifindex")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(1);
    for (i, n) in [(lo, "lo"), (index, name.as_str())] {
        let mut link = LinkMessage::default();
        link.header.index = i;
        link.header.flags = LinkFlags::Up;
        link.header.change_mask = LinkFlags::Up;
        request(
            &socket,
            RouteNetlinkMessage::SetLink(link),
            0,
            &format!("bringing {n} up"),
        )?;
    }

    let mut addr = AddressMessage::default();
    addr.header.family = AddressFamily::Inet;
    addr.header.prefix_len = net.prefix;
    addr.header.index = index;
    addr.attributes = vec![
        AddressAttribute::Local(IpAddr::V4(net.address)),
        AddressAttribute::Address(IpAddr::V4(net.address)),
        AddressAttribute::Broadcast(broadcast(net.address, net.prefix)),
    ];
    request(
        &socket,
        RouteNetlinkMessage::NewAddress(addr),
        NLM_F_CREATE | NLM_F_REPLACE,
        &format!("adding {}/{} to {name}", net.address, net.prefix),
    )?;

    if let Some(gw) = net.gateway {
        let mut route = RouteMessage::default();
        route.header.address_family = AddressFamily::Inet;
        route.header.table = netlink_packet_route::route::RouteHeader::RT_TABLE_MAIN;
        route.header.protocol = RouteProtocol::Boot;
        route.header.scope = RouteScope::Universe;
        route.header.kind = RouteType::Unicast;
        route.attributes = vec![
            RouteAttribute::Gateway(RouteAddress::Inet(gw)),
            RouteAttribute::Oif(index),
        ];
        request(
            &socket,
            RouteNetlinkMessage::NewRoute(route),
            NLM_F_CREATE | NLM_F_REPLACE,
            &format!("adding the default route via {gw}"),
        )?;
    }

    // Carrier: an interface reports it once the link is negotiated (a second or two on
    // real NICs; at once in VMs). Going on without it would only make the first request
    // time out.
    let carrier = format!("/sys/class/net/{name}/carrier");
    let start = Instant::now();
    while std::fs::read_to_string(&carrier)
        .map(|s| s.trim() != "1")
        .unwrap_or(true)
    {
        if start.elapsed() > Duration::from_secs(30) {
            return Err(format!("{name}: no carrier after 30 s (is the cable in?)"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    step(&format!(
        "network: {name} ({}) up with {}/{}{}",
        net.mac,
        net.address,
        net.prefix,
        net.gateway.map(|g| format!(" via {g}")).unwrap_or_default()
    ));
    Ok(name)
}

fn broadcast(a: Ipv4Addr, prefix: u8) -> Ipv4Addr {
    let host = if prefix >= 32 { 0 } else { u32::MAX >> prefix };
    Ipv4Addr::from(u32::from(a) | host)
}

#[cfg(test)]
mod tests {
    #[test]
    fn broadcast() {
        let a = "192.168.1.50"
            .parse()
            .unwrap_or(std::net::Ipv4Addr::UNSPECIFIED);
        assert_eq!(super::broadcast(a, 24).to_string(), "192.168.1.255");
        assert_eq!(super::broadcast(a, 16).to_string(), "192.168.255.255");
        assert_eq!(super::broadcast(a, 32), a);
    }
}
