//! Proxies a test puts between a node agent and the API server to give the agent a real
//! outage, against the stand-in and a real cluster alike.

mod http;
mod tcp;

pub use http::FaultyApiServer;
pub use tcp::TcpProxy;
