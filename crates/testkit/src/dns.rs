//! A name server for tests: answers A and AAAA queries over UDP from a fixed table of names
//! (NXDOMAIN for any other name), and remembers every name it was asked and by whom, so a test
//! can tell which names a resolver tried (its search domains), and from which address.

use anyhow::Context;
use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use tokio::net::UdpSocket;
use tokio_util::task::AbortOnDropHandle;

/// Names asked, at most; later ones are not remembered.
const MAX_REMEMBERED: usize = 10_000;

/// A name a client asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Asked {
    /// The name, lowercase, without the final dot.
    pub name: String,
    /// The client's address.
    pub from: IpAddr,
}

/// A running name server; it stops when dropped.
pub struct DnsServer {
    addr: SocketAddr,
    asked: Arc<Mutex<Vec<Asked>>>,
    _task: AbortOnDropHandle<()>,
}

impl DnsServer {
    /// Serves `records` (fully qualified names, without the final dot, and their addresses)
    /// on UDP `addr` (port 53 needs root, as resolvers only ask port 53). `addr` need not be
    /// this machine's yet (a bridge a CNI plugin makes later, say).
    pub async fn start(addr: SocketAddr, records: &[(&str, IpAddr)]) -> anyhow::Result<Self> {
        let socket =
            bind_free(addr).with_context(|| format!("binding a name server to UDP {addr}"))?;
        let addr = socket.local_addr()?;
        let table: Vec<(Name, IpAddr)> = records
            .iter()
            .map(|(name, ip)| Ok((Name::from_str(&format!("{name}."))?, *ip)))
            .collect::<anyhow::Result<_>>()?;
        let asked = Arc::new(Mutex::new(Vec::new()));
        let remembered = asked.clone();
        let task = tokio::spawn(async move {
            let mut buffer = vec![0u8; 4096];
            loop {
                let Ok((n, peer)) = socket.recv_from(&mut buffer).await else {
                    continue;
                };
                let Ok(query) = Message::from_vec(&buffer[..n]) else {
                    continue;
                };
                let answer = answer(&query, &table, (peer.ip(), &remembered));
                if let Ok(bytes) = answer.to_vec() {
                    let _ = socket.send_to(&bytes, peer).await;
                }
            }
        });
        Ok(Self {
            addr,
            asked,
            _task: AbortOnDropHandle::new(task),
        })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// What was asked so far, in order.
    pub fn asked(&self) -> Vec<Asked> {
        self.asked.lock().map(|a| a.clone()).unwrap_or_default()
    }

    /// The names asked so far, in order.
    pub fn names_asked(&self) -> Vec<String> {
        self.asked().into_iter().map(|a| a.name).collect()
    }
}

/// A UDP socket bound to `addr`, which need not be local yet (IP_FREEBIND).
fn bind_free(addr: SocketAddr) -> anyhow::Result<UdpSocket> {
    use rustix::net::{AddressFamily, SocketType, sockopt};
    let family = match addr {
        SocketAddr::V4(_) => AddressFamily::INET,
        SocketAddr::V6(_) => AddressFamily::INET6,
    };
    let fd = rustix::net::socket(family, SocketType::DGRAM, None)?;
    match addr {
        SocketAddr::V4(_) => sockopt::set_ip_freebind(&fd, true)?,
        SocketAddr::V6(_) => sockopt::set_ipv6_freebind(&fd, true)?,
    }
    rustix::net::bind(&fd, &addr)?;
    let socket = std::net::UdpSocket::from(fd);
    socket.set_nonblocking(true)?;
    Ok(UdpSocket::from_std(socket)?)
}

/// The response to `query` from `table`, remembering its names (and its sender) in `asked`.
fn answer(
    query: &Message,
    table: &[(Name, IpAddr)],
    (from, asked): (IpAddr, &Mutex<Vec<Asked>>),
) -> Message {
    let mut response = Message::new(query.metadata.id, MessageType::Response, OpCode::Query);
    response.metadata.recursion_desired = query.metadata.recursion_desired;
    response.metadata.recursion_available = true;
    response.metadata.authoritative = true;
    response.add_queries(query.queries.iter().cloned());
    let mut known = false;
    for question in &query.queries {
        let name = question.name();
        if let Ok(mut asked) = asked.lock()
            && asked.len() < MAX_REMEMBERED
        {
            let text = name.to_ascii().to_ascii_lowercase();
            let name = text.trim_end_matches('.').to_string();
            asked.push(Asked { name, from });
        }
        for (known_name, ip) in table.iter().filter(|(n, _)| n == name) {
            known = true;
            let rdata = match (question.query_type(), ip) {
                (RecordType::A, IpAddr::V4(ip)) => RData::A(A(*ip)),
                (RecordType::AAAA, IpAddr::V6(ip)) => RData::AAAA(AAAA(*ip)),
                _ => continue,
            };
            response.add_answer(Record::from_rdata(known_name.clone(), 5, rdata));
        }
    }
    if !known {
        response.metadata.response_code = ResponseCode::NXDomain;
    }
    response
}
