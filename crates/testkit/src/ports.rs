//! Ports for servers a test starts later (a registry, a node agent, a pod): free when chosen,
//! and chosen below the kernel's ephemeral range, so that no outgoing connection of any process
//! on the machine can take one as its local port before the server binds it (a port the kernel
//! hands out for `bind(:0)` is in that range, and so are the local ports of every client
//! connection made meanwhile). No port is handed out twice in one test process.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, TcpListener};
use std::sync::{LazyLock, Mutex};

/// The lowest port handed out: above the well-known and most registered services' ports.
const LOWEST: u16 = 10_000;

/// The ports handed out by this process.
static HANDED_OUT: LazyLock<Mutex<HashSet<u16>>> = LazyLock::new(Mutex::default);

/// The first port of the kernel's ephemeral range (`net.ipv4.ip_local_port_range`).
fn ephemeral_start() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
}

/// A port free on every address of the machine a moment ago (bound on 0.0.0.0, which
/// conflicts with any bind of the port), below the ephemeral range, not handed out before by
/// this process.
pub fn free_port() -> std::io::Result<u16> {
    let highest = ephemeral_start().max(LOWEST + 1000);
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|p| p.into_inner());
    for _ in 0..10_000 {
        let port = rand::random_range(LOWEST..highest);
        if handed_out.contains(&port) {
            continue;
        }
        if TcpListener::bind((IpAddr::V4(Ipv4Addr::UNSPECIFIED), port)).is_ok() {
            handed_out.insert(port);
            return Ok(port);
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::AddrInUse,
        format!("no free port between {LOWEST} and {highest}"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_free_below_the_ephemeral_range_and_never_handed_out_twice() {
        let ports: Vec<u16> = (0..200).map(|_| free_port().unwrap()).collect();
        let distinct: HashSet<u16> = ports.iter().copied().collect();
        assert_eq!(distinct.len(), ports.len());
        assert!(
            ports
                .iter()
                .all(|p| (LOWEST..ephemeral_start()).contains(p))
        );
        TcpListener::bind(("127.0.0.1", ports[0])).expect("the port is free");
    }
}
