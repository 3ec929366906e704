//! Sending a guest's outgoing HTTP request (`wasi:http/outgoing-handler`) as wasmtime-wasi-http's
//! default sender does (HTTP/1.1; TLS trusting the webpki roots; its connect, first-byte and
//! between-bytes timeouts, 10 minutes each unless the guest sets them), except that the host's
//! name resolves with the pod's DNS configuration ([`PodResolver`]) instead of the node's.

use crate::dns::PodResolver;
use bytes::Bytes;
use http::uri::Scheme;
use http_body_util::BodyExt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, ready};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use wasm_host::descriptors::DescriptorPermit;
use wasmtime_wasi::p2::bindings::sockets::network::ErrorCode;
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody};

/// The timeouts wasmtime-wasi-http uses when a guest sets none.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);

/// A connection, plain or over TLS.
trait Stream: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Stream for T {}

/// What the request's sender hands back: the response, and the connection's I/O, which must be
/// driven for the response body to arrive.
pub type Sent = (
    http::Response<WasiBody>,
    Box<dyn Future<Output = Result<(), Error>> + Send>,
);

/// What an outgoing connection holds until it closes: its place among the container's
/// connections, and its descriptor.
pub type ConnectionPermit = (tokio::sync::OwnedSemaphorePermit, DescriptorPermit);

/// Sends `request` to the host its URI names, resolved by `resolver`; the connection holds
/// `permit` until it closes.
pub async fn send(
    mut request: http::Request<WasiBody>,
    options: Option<RequestOptions>,
    resolver: Arc<PodResolver>,
    permit: ConnectionPermit,
) -> Result<Sent, Error> {
    let timeout = |pick: fn(&RequestOptions) -> Option<Duration>| {
        options.as_ref().and_then(pick).unwrap_or(DEFAULT_TIMEOUT)
    };
    let connect_timeout = timeout(|o| o.connect_timeout);
    let first_byte_timeout = timeout(|o| o.first_byte_timeout);
    // An interval of zero panics; a nanosecond is as good as none.
    let between_bytes_timeout = timeout(|o| o.between_bytes_timeout).max(Duration::from_nanos(1));

    let uri = request.uri();
    let use_tls = uri.scheme() == Some(&Scheme::HTTPS);
    let host = uri.host().ok_or(Error::HttpRequestUriInvalid)?;
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = uri.port_u16().unwrap_or(if use_tls { 443 } else { 80 });

    let connecting = async {
        let stream = connect(&resolver, &host, port).await?;
        let stream: Box<dyn Stream> = if use_tls {
            let name = rustls::pki_types::ServerName::try_from(host.clone())
                .map_err(|_| Error::HttpRequestUriInvalid)?;
            Box::new(tls().connect(name, stream).await.map_err(Error::Tls)?)
        } else {
            Box::new(stream)
        };
        Ok::<_, Error>(
            hyper::client::conn::http1::Builder::new()
                .handshake(hyper_util::rt::TokioIo::new(stream))
                .await?,
        )
    };
    let (mut sender, conn) = tokio::time::timeout(connect_timeout, connecting)
        .await
        .map_err(|_| Error::ConnectionTimeout)??;

    // The request line carries the path only: scheme and authority are for proxies.
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    *request.uri_mut() = http::Uri::builder()
        .path_and_query(path)
        .build()
        .map_err(|_| Error::HttpRequestUriInvalid)?;

    // The connection's I/O is driven while the response is awaited.
    let response = tokio::time::timeout(first_byte_timeout, sender.send_request(request));
    tokio::pin!(response);
    let mut conn = Some(conn);
    let response = loop {
        match conn.as_mut() {
            Some(io) => tokio::select! {
                response = &mut response => break response,
                ended = io => {
                    conn = None;
                    ended?;
                }
            },
            None => break response.await,
        }
    };
    let response = response.map_err(|_| Error::ConnectionReadTimeout)??;
    let response = response.map(|incoming| {
        let mut timeout = tokio::time::interval(between_bytes_timeout);
        timeout.reset();
        TimedBody { incoming, timeout }.boxed_unsync()
    });
    let io = async move {
        let _permit = permit;
        match conn {
            Some(io) => io.await.map_err(|e| {
                if e.is_timeout() {
                    Error::HttpResponseTimeout
                } else {
                    e.into()
                }
            }),
            None => Ok(()),
        }
    };
    Ok((response, Box::new(io)))
}

/// A TCP connection to `host`: its addresses, from the pod's resolver, tried in order.
async fn connect(resolver: &Arc<PodResolver>, host: &str, port: u16) -> Result<TcpStream, Error> {
    let addresses = resolver.lookup(host).await.map_err(|code| match code {
        ErrorCode::NameUnresolvable => Error::DnsError {
            rcode: Some("NXDOMAIN".into()),
            info_code: None,
        },
        ErrorCode::InvalidArgument => Error::HttpRequestUriInvalid,
        _ => Error::DnsTimeout,
    })?;
    let mut last = None;
    for ip in addresses {
        match TcpStream::connect(SocketAddr::new(ip, port)).await {
            Ok(stream) => return Ok(stream),
            Err(e) => last = Some(e),
        }
    }
    Err(last.map_or(Error::DestinationNotFound, Error::Connect))
}

/// The TLS client of guests' requests: the webpki roots, no client certificate.
fn tls() -> tokio_rustls::TlsConnector {
    static CONFIG: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
    let config = CONFIG.get_or_init(|| {
        let roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.into(),
        };
        Arc::new(
            rustls::ClientConfig::builder()
                .with_root_certificates(roots)
                .with_no_client_auth(),
        )
    });
    tokio_rustls::TlsConnector::from(config.clone())
}

/// A response body that fails when no frame comes within the between-bytes timeout.
struct TimedBody {
    incoming: hyper::body::Incoming,
    timeout: tokio::time::Interval,
}

impl http_body::Body for TimedBody {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Error>>> {
        match Pin::new(&mut self.incoming).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                self.timeout.reset();
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) if e.is_timeout() => {
                Poll::Ready(Some(Err(Error::HttpResponseTimeout)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                ready!(self.timeout.poll_tick(cx));
                Poll::Ready(Some(Err(Error::ConnectionReadTimeout)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.incoming.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.incoming.size_hint()
    }
}
