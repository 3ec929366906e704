//! A name server for tests: answers A and AAAA queries over UDP from a fixed table of names
//! (NXDOMAIN for any other name), and remembers every name it was asked, so a test can tell
//! which names a resolver tried (its search domains) and that it asked at all.

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

/// A running name server; it stops when dropped.
pub struct DnsServer {
    addr: SocketAddr,
    asked: Arc<Mutex<Vec<String>>>,
    _task: AbortOnDropHandle<()>,
}

impl DnsServer {
    /// Serves `records` (fully qualified names, without the final dot, and their addresses)
    /// on UDP `addr` (port 53 needs root, as resolvers only ask port 53).
    pub async fn start(addr: SocketAddr, records: &[(&str, IpAddr)]) -> anyhow::Result<Self> {
        let socket = UdpSocket::bind(addr).await?;
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
                let answer = answer(&query, &table, &remembered);
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

    /// The names asked so far (lowercase, without the final dot), in order.
    pub fn asked(&self) -> Vec<String> {
        self.asked.lock().map(|a| a.clone()).unwrap_or_default()
    }
}

/// The response to `query` from `table`, remembering its names in `asked`.
fn answer(query: &Message, table: &[(Name, IpAddr)], asked: &Mutex<Vec<String>>) -> Message {
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
            asked.push(text.trim_end_matches('.').to_string());
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
