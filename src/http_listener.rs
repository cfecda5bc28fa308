//! The HTTP listeners of wss, on hyper's HTTP/1.1 server: the operations listener
//! ([`crate::status`]: `/metrics`, `/healthz`, `/readyz`, the status page) on the service's tokio
//! runtime, and the webhook receivers — `wss receive`, `wss bench`'s, the integration tests' —
//! each on a small runtime of its own ([`Listener::bind_standalone`]).
//!
//! # Why hyper, and what is left here
//!
//! Until issue 20 this was a hand-written HTTP/1.1 server of 1,300 lines with a thread per
//! connection. hyper 1 and axum 0.8 were already in the dependency tree through tonic, and a tokio
//! runtime already runs in `serve`. hyper parses request heads, frames bodies (`Content-Length`,
//! chunked with extensions and trailers), answers `Expect: 100-continue` when the body is first
//! read, keeps connections alive, answers pipelined requests in order, and answers a malformed head
//! with 400 and one over [`Options::max_head`] (or [`Options::max_headers`]) with 431 itself.
//! What hyper leaves to its user is this module:
//!
//! - The accept loop: TCP_NODELAY on every connection, TLS with a rustls configuration the caller
//!   builds ([`Options::tls`]; the handshake runs in the connection's task), at most
//!   [`Options::max_connections`] open at once (beyond that, new ones wait in the kernel's backlog),
//!   and a count of accepted connections ([`Listener::connections_accepted`]).
//! - A whole body: a handler gets an `http::Request<Bytes>`, read to its end under
//!   [`Options::max_body`]. A larger body is refused with 413 and the connection closed — before
//!   the body is sent when the client asked `Expect: 100-continue`, otherwise after reading and
//!   discarding what the client sends (up to 64 MiB for at most 5 s), because closing a socket
//!   with unread input makes the kernel send a reset that can destroy the 413 before the client
//!   reads it (a client typically sends its whole body before it reads).
//! - Refusals — 400, 413, 431 — reported to [`Options::on_refusal`] (`wss receive` shows a line
//!   for each). A client that disconnects mid-request is not reported: nobody is left to answer.
//! - [`Options::header_timeout`]: how long a client may take to send a request head, counted from
//!   the moment the connection waits for one, so it is also how long a kept-alive connection may
//!   stay idle. The receivers have none (a sender's pool of keep-alive connections is welcome to
//!   stay), the operations listener has one.
//! - A handler that panics gets its client a 500 and the connection closed, not a dropped
//!   connection.
//! - Dropping a [`Listener`] stops accepting and closes every open connection at once; a
//!   handler still running is dropped with its connection (a blocking one finishes on its thread,
//!   its answer going nowhere).
//!
//! No HTTP/2 and no upgrades: what speaks to these listeners is a sender, a scraper or a browser
//! on HTTP/1.1.

use std::{
    error::Error as StdError,
    future::Future,
    io,
    net::SocketAddr,
    panic::AssertUnwindSafe,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use futures_util::FutureExt as _;
use http::{header, request::Parts, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Either, Full};
use hyper::{
    body::{Body, Incoming},
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::{TcpListener, TcpStream},
    runtime::{Handle, Runtime},
    sync::{watch, OwnedSemaphorePermit, Semaphore},
    time::Instant,
};

pub use hyper::body::Bytes;

const LOG: &str = "wss::http_listener";

/// The default [`Options::max_body`]: far above wss's 256 KiB event limit.
pub const DEFAULT_MAX_BODY: usize = 4 * 1024 * 1024;
/// The default [`Options::max_head`]: request line and headers.
pub const DEFAULT_MAX_HEAD: usize = 64 * 1024;
/// The default [`Options::max_headers`]: a webhook's own headers come on top of wss's ten or so.
pub const DEFAULT_MAX_HEADERS: usize = 256;
/// The default [`Options::max_connections`]: far above any sender pool the tests or the bench use.
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;

/// When a body is over the limit, how long (and how much) of what the client still sends is read
/// and discarded before the 413 is written (see the module's note).
const LINGER: Duration = Duration::from_secs(5);
const LINGER_BYTES: u64 = 64 * 1024 * 1024;
/// Pause after a failed `accept`, so that a lasting failure (out of file descriptors) does not
/// spin a core.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(10);
/// How long dropping a [`Listener`] waits for its connections to be closed.
const STOP_WAIT: Duration = Duration::from_secs(2);
/// Worker threads of a standalone listener's runtime: the machines that run the bench have two
/// cores, and a receiver's work per request is a few microseconds.
const STANDALONE_WORKERS: usize = 2;
const TEXT_PLAIN: &str = "text/plain; charset=utf-8";

/// Told about a request the listener refused itself; gets the request's head when it was read.
pub type RefusalHook = dyn Fn(&Refusal, Option<&Parts>) + Send + Sync;

/// How a [`Listener`] limits and reports requests. `Options::default()` suits a receiver.
#[derive(Clone)]
pub struct Options {
    /// Largest request head (request line and headers; chunked trailers too) accepted; a larger
    /// one is answered 431 by hyper.
    pub max_head: usize,
    /// Most header fields in a request; more are answered 431 by hyper.
    pub max_headers: usize,
    /// Largest request body accepted; a larger one is refused with 413.
    pub max_body: usize,
    /// Most connections open at once; more wait in the kernel's accept queue.
    pub max_connections: usize,
    /// How long a client may take to send a request head, waiting between requests included;
    /// the connection is closed after it. `None`: no limit.
    pub header_timeout: Option<Duration>,
    /// HTTPS: every connection is wrapped in TLS with this configuration.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Called for every refused request, before its refusal is written when the head was read.
    pub on_refusal: Option<Arc<RefusalHook>>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            max_head: DEFAULT_MAX_HEAD,
            max_headers: DEFAULT_MAX_HEADERS,
            max_body: DEFAULT_MAX_BODY,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            header_timeout: None,
            tls: None,
            on_refusal: None,
        }
    }
}

/// Why the listener answered a request itself instead of calling the handler.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// hyper could not parse the head (400), or the chunked body is malformed.
    #[error("malformed request: {what}")]
    Malformed { what: String },
    #[error("the request head is larger than {max_head} bytes or has more than {max_headers} header fields")]
    HeadTooLarge { max_head: usize, max_headers: usize },
    #[error("the body is larger than {limit} bytes")]
    BodyTooLarge { limit: usize },
}

impl Refusal {
    /// The status the refusal is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            Refusal::Malformed { .. } => StatusCode::BAD_REQUEST,
            Refusal::HeadTooLarge { .. } => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Refusal::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        }
    }
}

/// `status` with a `text/plain` body.
pub fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(TEXT_PLAIN));
    response
}

/// `status` with an empty body.
pub fn empty(status: StatusCode) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = status;
    response
}

/// A listening server. Dropping it stops accepting and closes every open connection.
pub struct Listener {
    addr: SocketAddr,
    accepted: Arc<AtomicU64>,
    stop: watch::Sender<bool>,
    /// Every task of the listener holds a sender of this channel: it disconnects once they have
    /// all ended (and their connections are closed).
    stopped: crossbeam_channel::Receiver<()>,
    /// A standalone listener's own runtime.
    runtime: Option<Runtime>,
}

/// What the accept loop and every connection share.
struct Shared<H> {
    handler: H,
    options: Options,
    tls: Option<tokio_rustls::TlsAcceptor>,
    accepted: Arc<AtomicU64>,
    slots: Arc<Semaphore>,
}

impl Listener {
    /// Listens on `addr` (port 0 picks a free one) at once — a taken port is an error now, not
    /// later — and serves on `runtime`, answering every request with `handler`.
    pub fn bind<H, F, B>(addr: SocketAddr, options: Options, runtime: &Handle, handler: H) -> io::Result<Listener>
    where
        H: Fn(Request<Bytes>) -> F + Send + Sync + 'static,
        F: Future<Output = Response<B>> + Send + 'static,
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn StdError + Send + Sync>>,
    {
        let listener = std::net::TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let listener = {
            let _entered = runtime.enter();
            TcpListener::from_std(listener)?
        };
        let accepted = Arc::new(AtomicU64::new(0));
        let shared = Arc::new(Shared {
            handler,
            tls: options.tls.clone().map(tokio_rustls::TlsAcceptor::from),
            slots: Arc::new(Semaphore::new(options.max_connections.max(1))),
            options,
            accepted: accepted.clone(),
        });
        let (stop, stopping) = watch::channel(false);
        let (running, stopped) = crossbeam_channel::bounded(0);
        runtime.spawn(accept_loop(listener, shared, stopping, running));
        Ok(Listener { addr, accepted, stop, stopped, runtime: None })
    }

    /// [`Listener::bind`] on a small runtime of its own, which lives as long as the listener: for
    /// the receivers, which run in processes (the tests, the bench, `wss receive`) whose own
    /// threads block.
    pub fn bind_standalone<H, F, B>(addr: SocketAddr, options: Options, handler: H) -> io::Result<Listener>
    where
        H: Fn(Request<Bytes>) -> F + Send + Sync + 'static,
        F: Future<Output = Response<B>> + Send + 'static,
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn StdError + Send + Sync>>,
    {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(STANDALONE_WORKERS)
            .thread_name("http-listener")
            .enable_all()
            .build()?;
        let mut listener = Listener::bind(addr, options, runtime.handle(), handler)?;
        listener.runtime = Some(runtime);
        Ok(listener)
    }

    /// The address actually listened on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Connections accepted so far (with TLS: handshakes begun).
    pub fn connections_accepted(&self) -> u64 {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        // No receiver left means the accept loop has already ended.
        let _ = self.stop.send(true);
        // Returns (disconnected) once every task has dropped its connection; bounded in case the
        // runtime it runs on was shut down first, which dropped them anyway.
        let _ = self.stopped.recv_timeout(STOP_WAIT);
        if let Some(runtime) = self.runtime.take() {
            // Its tasks have ended; a blocking handler still running finishes on its own.
            runtime.shutdown_background();
        }
    }
}

async fn accept_loop<H, F, B>(
    listener: TcpListener,
    shared: Arc<Shared<H>>,
    mut stopping: watch::Receiver<bool>,
    running: crossbeam_channel::Sender<()>,
) where
    H: Fn(Request<Bytes>) -> F + Send + Sync + 'static,
    F: Future<Output = Response<B>> + Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    let accepting = async {
        loop {
            // A slot first: at the cap, new connections wait in the kernel's queue.
            let slot = tokio::select! {
                slot = shared.slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
                _ = stopping.changed() => return,
            };
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                _ = stopping.changed() => return,
            };
            let stream = match accepted {
                Ok((stream, _peer)) => stream,
                Err(err) => {
                    log::warn!(target: LOG, "accepting a connection on {:?} failed: {err}", listener.local_addr().ok());
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            };
            shared.accepted.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(connection(stream, shared.clone(), stopping.clone(), running.clone(), slot));
        }
    };
    accepting.await;
    // The socket is closed before `running` goes, so that a dropped `Listener`, which waits for
    // every `running` to go, returns only once nothing listens on the address (left to the
    // parameters' drop order, a test could still connect right after the drop).
    drop(listener);
    drop(running);
}

/// Serves one connection until either side closes it or the listener is dropped.
async fn connection<H, F, B>(
    stream: TcpStream,
    shared: Arc<Shared<H>>,
    mut stopping: watch::Receiver<bool>,
    _running: crossbeam_channel::Sender<()>,
    _slot: OwnedSemaphorePermit,
) where
    H: Fn(Request<Bytes>) -> F + Send + Sync + 'static,
    F: Future<Output = Response<B>> + Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    if let Err(err) = stream.set_nodelay(true) {
        log::debug!(target: LOG, "cannot set TCP_NODELAY: {err}");
    }
    let served = async {
        match &shared.tls {
            None => serve(stream, &shared).await,
            Some(acceptor) => match acceptor.accept(stream).await {
                Ok(stream) => serve(stream, &shared).await,
                Err(err) => log::debug!(target: LOG, "closing a connection, its TLS handshake failed: {err}"),
            },
        }
    };
    tokio::select! {
        () = served => {}
        _ = stopping.changed() => {}
    }
}

/// HTTP/1.1 on an open connection (plain or TLS).
async fn serve<I, H, F, B>(io: I, shared: &Arc<Shared<H>>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: Fn(Request<Bytes>) -> F + Send + Sync + 'static,
    F: Future<Output = Response<B>> + Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    let options = &shared.options;
    let mut http = http1::Builder::new();
    http.max_header_size(options.max_head).max_headers(options.max_headers);
    match options.header_timeout {
        Some(timeout) => http.timer(TokioTimer::new()).header_read_timeout(timeout),
        None => http.header_read_timeout(None),
    };
    let answering = shared.clone();
    let service = service_fn(move |request| answer(answering.clone(), request));
    if let Err(err) = http.serve_connection(TokioIo::new(io), service).await {
        let refusal = if err.is_parse_too_large() {
            Refusal::HeadTooLarge { max_head: options.max_head, max_headers: options.max_headers }
        } else if err.is_parse() {
            Refusal::Malformed { what: err.to_string() }
        } else {
            // The client went away, or kept the connection idle past the header timeout.
            log::debug!(target: LOG, "closing a connection: {err}");
            return;
        };
        // hyper has answered it (400 or 431) and closed the connection.
        log::debug!(target: LOG, "refused a request ({}): {refusal}", refusal.status());
        if let Some(on_refusal) = &options.on_refusal {
            on_refusal(&refusal, None);
        }
    }
}

/// Reads the whole body under the limit, then calls the handler.
async fn answer<H, F, B>(
    shared: Arc<Shared<H>>,
    request: Request<Incoming>,
) -> Result<Response<Either<B, Full<Bytes>>>, std::convert::Infallible>
where
    H: Fn(Request<Bytes>) -> F + Send + Sync + 'static,
    F: Future<Output = Response<B>> + Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    let (parts, body) = request.into_parts();
    let body = match read_body(body, &parts, shared.options.max_body).await {
        Ok(body) => body,
        Err(BodyError::Refused(refusal)) => return Ok(refuse(&shared.options, &refusal, &parts)),
        Err(BodyError::Gone(err)) => {
            log::debug!(target: LOG, "the client closed mid-body: {err}");
            return Ok(closing(text(StatusCode::BAD_REQUEST, "the request body was cut short\n")).map(Either::Right));
        }
    };
    let (method, uri) = (parts.method.clone(), parts.uri.clone());
    let handled = AssertUnwindSafe(async { (shared.handler)(Request::from_parts(parts, body)).await }).catch_unwind().await;
    Ok(match handled {
        Ok(response) => response.map(Either::Left),
        Err(_) => {
            log::error!(target: LOG, "the handler panicked on {method} {}; answering 500 and closing the connection", uri.path());
            closing(text(StatusCode::INTERNAL_SERVER_ERROR, "the handler panicked\n")).map(Either::Right)
        }
    })
}

/// Reports `refusal` and makes its answer, which closes the connection.
fn refuse<B>(options: &Options, refusal: &Refusal, parts: &Parts) -> Response<Either<B, Full<Bytes>>> {
    log::debug!(target: LOG, "refusing a request ({}): {refusal}", refusal.status());
    if let Some(on_refusal) = &options.on_refusal {
        on_refusal(refusal, Some(parts));
    }
    closing(text(refusal.status(), format!("{refusal}\n"))).map(Either::Right)
}

fn closing<B>(mut response: Response<B>) -> Response<B> {
    response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// Why a body was not read.
enum BodyError {
    Refused(Refusal),
    /// The connection broke (or the client closed it) mid-body.
    Gone(hyper::Error),
}

/// The whole body, when it is at most `max` bytes (see the module's note on a larger one).
async fn read_body(mut body: Incoming, parts: &Parts, max: usize) -> Result<Bytes, BodyError> {
    let too_large = BodyError::Refused(Refusal::BodyTooLarge { limit: max });
    let declared = body.size_hint().exact();
    let over = declared.is_some_and(|n| n > max as u64);
    if over && expects_continue(parts) {
        // Refused before the client sends it: hyper sends `100 Continue` only once the body is read.
        return Err(too_large);
    }
    let mut chunks: Vec<Bytes> = Vec::new();
    let mut total: u64 = 0;
    // Set once the body is known to be too large: from then on it is drained, until then.
    let mut drain_until = over.then(|| Instant::now() + LINGER);
    loop {
        let frame = match drain_until {
            None => body.frame().await,
            Some(deadline) => match tokio::time::timeout_at(deadline, body.frame()).await {
                Ok(frame) => frame,
                Err(_elapsed) => return Err(too_large),
            },
        };
        let Some(frame) = frame else { break };
        let frame = frame.map_err(classify)?;
        let Ok(data) = frame.into_data() else { continue }; // trailers: ignored
        total += data.len() as u64;
        if drain_until.is_none() && total > max as u64 {
            drain_until = Some(Instant::now() + LINGER);
            chunks = Vec::new();
        }
        if drain_until.is_some() {
            if total > LINGER_BYTES {
                return Err(too_large);
            }
            continue;
        }
        chunks.push(data);
    }
    if drain_until.is_some() {
        return Err(too_large);
    }
    Ok(match chunks.len() {
        0 => Bytes::new(),
        1 => chunks.pop().expect("one chunk"),
        _ => chunks.concat().into(),
    })
}

fn expects_continue(parts: &Parts) -> bool {
    parts.headers.get(header::EXPECT).is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
}

/// A body that cannot be read: malformed (bad chunk framing) or cut short.
fn classify(err: hyper::Error) -> BodyError {
    let io = err.source().and_then(|source| source.downcast_ref::<io::Error>());
    match io.map(io::Error::kind) {
        Some(io::ErrorKind::InvalidData | io::ErrorKind::InvalidInput) => {
            BodyError::Refused(Refusal::Malformed { what: io.map_or_else(String::new, ToString::to_string) })
        }
        _ => BodyError::Gone(err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::TcpStream as StdStream;
    use std::sync::atomic::AtomicUsize;
    use std::sync::Mutex;

    /// An upper bound for giving up on a broken listener, never a timing assertion.
    const GIVE_UP: Duration = Duration::from_secs(20);

    fn loopback() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 0))
    }

    /// Answers `200 <method> <target> <body>`.
    fn echo(request: Request<Bytes>) -> std::future::Ready<Response<Full<Bytes>>> {
        let shown = format!("{} {} {}", request.method(), request.uri(), String::from_utf8_lossy(request.body()));
        std::future::ready(text(StatusCode::OK, shown))
    }

    struct Client {
        reader: BufReader<StdStream>,
        writer: StdStream,
    }

    #[derive(Debug)]
    struct Answer {
        status: u16,
        headers: Vec<(String, String)>,
        body: String,
    }

    impl Answer {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
        }
    }

    impl Client {
        fn connect(addr: SocketAddr) -> Client {
            let writer = StdStream::connect(addr).unwrap();
            writer.set_read_timeout(Some(GIVE_UP)).unwrap();
            let reader = BufReader::new(writer.try_clone().unwrap());
            Client { reader, writer }
        }

        fn send(&mut self, raw: &[u8]) {
            self.writer.write_all(raw).unwrap();
        }

        /// Reads one response (framed by Content-Length).
        fn answer(&mut self) -> Answer {
            let mut line = String::new();
            self.reader.read_line(&mut line).unwrap();
            let status = line.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("not a status line: {line:?}"));
            let mut headers = Vec::new();
            loop {
                let mut line = String::new();
                self.reader.read_line(&mut line).unwrap();
                let line = line.trim_end();
                if line.is_empty() {
                    break;
                }
                let (name, value) = line.split_once(':').unwrap();
                headers.push((name.to_owned(), value.trim().to_owned()));
            }
            let mut answer = Answer { status, headers, body: String::new() };
            let length: usize = answer.header("content-length").map_or(0, |v| v.parse().unwrap());
            let mut body = vec![0; length];
            self.reader.read_exact(&mut body).unwrap();
            answer.body = String::from_utf8(body).unwrap();
            answer
        }

        /// True when the listener closed the connection (and sent nothing more).
        fn closed(&mut self) -> bool {
            let mut rest = Vec::new();
            matches!(self.reader.read_to_end(&mut rest), Ok(0))
        }
    }

    /// Each refusal and the path of its request, when that was read.
    type Refusals = crossbeam_channel::Receiver<(Refusal, Option<String>)>;

    /// A listener whose handler counts calls, with refusals forwarded to a channel.
    fn counting(options: Options) -> (Listener, Arc<AtomicUsize>, Refusals) {
        let calls = Arc::new(AtomicUsize::new(0));
        let (refused_tx, refused) = crossbeam_channel::bounded(8);
        let options = Options {
            on_refusal: Some(Arc::new(move |refusal: &Refusal, request: Option<&Parts>| {
                let path = request.map(|r| r.uri.path().to_owned());
                refused_tx.send((refusal.clone(), path)).unwrap();
            })),
            ..options
        };
        let counter = calls.clone();
        let listener = Listener::bind_standalone(loopback(), options, move |request| {
            counter.fetch_add(1, Ordering::SeqCst);
            echo(request)
        })
        .unwrap();
        (listener, calls, refused)
    }

    #[test]
    fn one_keep_alive_connection_carries_several_requests_chunked_and_pipelined() {
        let listener = Listener::bind_standalone(loopback(), Options::default(), echo).unwrap();
        let mut client = Client::connect(listener.local_addr());
        client.send(b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nfirst");
        let first = client.answer();
        assert_eq!((first.status, first.body.as_str()), (200, "POST /a first"));
        assert_eq!(first.header("content-type"), Some(TEXT_PLAIN));
        // Pipelined, and chunked with an extension and a trailer.
        client.send(
            b"GET /b?q=1 HTTP/1.1\r\nHost: x\r\n\r\n\
              POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nWiki\r\n5;name=value\r\npedia\r\n0\r\nX-Trailer: t\r\n\r\n",
        );
        assert_eq!(client.answer().body, "GET /b?q=1 ");
        assert_eq!(client.answer().body, "POST /c Wikipedia");
        assert_eq!(listener.connections_accepted(), 1);
    }

    #[test]
    fn an_oversize_body_is_refused_with_413_and_the_connection_closed() {
        let (listener, calls, refused) = counting(Options::default());
        let mut client = Client::connect(listener.local_addr());
        // The client sends its whole body before reading, as most do: it is read and
        // discarded, so that the 413 is not destroyed by a reset.
        let body = vec![b'x'; DEFAULT_MAX_BODY + 1];
        client.send(format!("POST /big HTTP/1.1\r\nContent-Length: {}\r\n\r\n", body.len()).as_bytes());
        client.send(&body);
        let answer = client.answer();
        assert_eq!(answer.status, 413);
        assert_eq!(answer.body, format!("the body is larger than {DEFAULT_MAX_BODY} bytes\n"));
        assert_eq!(answer.header("connection"), Some("close"));
        assert!(client.closed());
        let limit = DEFAULT_MAX_BODY;
        assert_eq!(refused.recv_timeout(GIVE_UP).unwrap(), (Refusal::BodyTooLarge { limit }, Some("/big".to_owned())));

        // Chunked, the limit is found while reading; with 100-continue, before the body.
        let (listener, small_calls, refused) = counting(Options { max_body: 8, ..Options::default() });
        let mut client = Client::connect(listener.local_addr());
        client.send(b"POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n12345\r\n5\r\n67890\r\n0\r\n\r\n");
        assert_eq!(client.answer().status, 413);
        assert!(client.closed());
        let mut client = Client::connect(listener.local_addr());
        client.send(b"POST /e HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 9\r\n\r\n");
        assert_eq!(client.answer().status, 413, "refused instead of 100 Continue");
        assert!(client.closed());
        assert_eq!(refused.recv_timeout(GIVE_UP).unwrap().1.as_deref(), Some("/c"));
        assert_eq!(refused.recv_timeout(GIVE_UP).unwrap().1.as_deref(), Some("/e"));
        assert_eq!((calls.load(Ordering::SeqCst), small_calls.load(Ordering::SeqCst)), (0, 0), "the handler never saw them");

        // At the limit, it is read; 100 Continue first when asked for.
        let mut client = Client::connect(listener.local_addr());
        client.send(b"POST /ok HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 8\r\n\r\n");
        assert_eq!(client.answer().status, 100);
        client.send(b"12345678");
        assert_eq!(client.answer().body, "POST /ok 12345678");
    }

    #[test]
    fn malformed_and_oversize_heads_get_400_and_431_and_are_reported() {
        let (listener, calls, refused) = counting(Options::default());
        let cases: [&[u8]; 4] = [
            b"garbage\r\n\r\n",
            b"GET / HTTP/1.1\r\nno colon\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            b"GET / HTTP/1.1\r\nBad Header: x\r\n\r\n",
        ];
        for raw in cases {
            let mut client = Client::connect(listener.local_addr());
            client.send(raw);
            let shown = String::from_utf8_lossy(raw);
            assert_eq!(client.answer().status, 400, "{shown:?}");
            assert!(client.closed(), "{shown:?}");
            let (refusal, path) = refused.recv_timeout(GIVE_UP).unwrap();
            assert!(matches!(refusal, Refusal::Malformed { .. }) && path.is_none(), "{shown:?}: {refusal:?}");
        }
        // A bad chunk size is found while reading the body: the head was read.
        let mut client = Client::connect(listener.local_addr());
        client.send(b"POST /chunks HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n");
        assert_eq!(client.answer().status, 400);
        let (refusal, path) = refused.recv_timeout(GIVE_UP).unwrap();
        assert_eq!((refusal.status(), path.as_deref()), (StatusCode::BAD_REQUEST, Some("/chunks")));

        let mut client = Client::connect(listener.local_addr());
        client.send(format!("GET / HTTP/1.1\r\nX-Big: {}\r\n\r\n", "x".repeat(DEFAULT_MAX_HEAD)).as_bytes());
        assert_eq!(client.answer().status, 431);
        assert!(client.closed());
        let (refusal, _) = refused.recv_timeout(GIVE_UP).unwrap();
        assert_eq!(refusal, Refusal::HeadTooLarge { max_head: DEFAULT_MAX_HEAD, max_headers: DEFAULT_MAX_HEADERS });
        let mut client = Client::connect(listener.local_addr());
        let many: String = (0..=DEFAULT_MAX_HEADERS).map(|i| format!("X-{i}: v\r\n")).collect();
        client.send(format!("GET / HTTP/1.1\r\n{many}\r\n").as_bytes());
        assert_eq!(client.answer().status, 431, "more header fields than allowed");
        assert_eq!(calls.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn connection_close_and_http_1_0_close_after_the_answer() {
        let listener = Listener::bind_standalone(loopback(), Options::default(), echo).unwrap();
        for raw in [&b"GET /1 HTTP/1.1\r\nConnection: close\r\n\r\n"[..], b"GET /2 HTTP/1.0\r\n\r\n"] {
            let mut client = Client::connect(listener.local_addr());
            client.send(raw);
            assert_eq!(client.answer().status, 200);
            assert!(client.closed(), "{:?}", String::from_utf8_lossy(raw));
        }
    }

    #[test]
    fn a_slow_handler_does_not_hold_up_another_connection_and_a_panic_is_a_500() {
        let release = Arc::new(tokio::sync::Notify::new());
        let (started_tx, started) = crossbeam_channel::bounded(1);
        let held = release.clone();
        let listener = Listener::bind_standalone(loopback(), Options::default(), move |request: Request<Bytes>| {
            let (held, started_tx) = (held.clone(), started_tx.clone());
            async move {
                match request.uri().path() {
                    "/slow" => {
                        let released = held.notified();
                        started_tx.send(()).unwrap();
                        released.await;
                    }
                    "/panic" => panic!("a handler bug"),
                    _ => {}
                }
                echo(request).await
            }
        })
        .unwrap();
        let mut slow = Client::connect(listener.local_addr());
        slow.send(b"GET /slow HTTP/1.1\r\n\r\n");
        started.recv_timeout(GIVE_UP).unwrap();
        // While /slow's handler waits, other connections are answered.
        let mut fast = Client::connect(listener.local_addr());
        fast.send(b"GET /fast HTTP/1.1\r\n\r\n");
        assert_eq!(fast.answer().body, "GET /fast ");
        let mut panicking = Client::connect(listener.local_addr());
        panicking.send(b"GET /panic HTTP/1.1\r\n\r\n");
        assert_eq!(panicking.answer().status, 500);
        assert!(panicking.closed());
        release.notify_one();
        assert_eq!(slow.answer().body, "GET /slow ");
    }

    #[test]
    fn connections_beyond_the_cap_wait_and_a_silent_client_is_closed_after_the_header_timeout() {
        let options = Options { max_connections: 1, header_timeout: Some(Duration::from_millis(300)), ..Options::default() };
        let listener = Listener::bind_standalone(loopback(), options, echo).unwrap();
        let mut first = Client::connect(listener.local_addr());
        first.send(b"GET /1 HTTP/1.1\r\n\r\n");
        assert_eq!(first.answer().body, "GET /1 ");
        // The second connection is queued by the kernel and not accepted while the first is open;
        // the first, idle, is closed at the header timeout, and then the second is served.
        let mut second = Client::connect(listener.local_addr());
        second.send(b"GET /2 HTTP/1.1\r\n\r\n");
        let asked = Instant::now();
        assert_eq!(second.answer().body, "GET /2 ");
        assert!(first.closed(), "the idle connection was closed");
        assert!(asked.elapsed() >= Duration::from_millis(250), "the second waited for the first to go: {:?}", asked.elapsed());
        assert_eq!(listener.connections_accepted(), 2);

        // A client that never finishes its head is closed too.
        let mut silent = Client::connect(listener.local_addr());
        silent.send(b"GET /never HTTP/1.1\r\nX-Partial: ");
        let mut rest = Vec::new();
        let _ = silent.reader.read_to_end(&mut rest);
        let shown = String::from_utf8_lossy(&rest);
        assert!(rest.is_empty() || shown.starts_with("HTTP/1.1 408"), "closed without an answer to a request: {shown:?}");
    }

    #[test]
    fn dropping_the_listener_closes_its_connections_and_stops_listening() {
        let listener = Listener::bind_standalone(loopback(), Options::default(), echo).unwrap();
        let addr = listener.local_addr();
        let mut idle = Client::connect(addr);
        idle.send(b"GET / HTTP/1.1\r\n\r\n");
        assert_eq!(idle.answer().status, 200);
        drop(listener);
        assert!(idle.closed());
        assert!(StdStream::connect(addr).is_err());
    }

    #[test]
    fn tls_connections_are_served_and_kept_alive() {
        use rcgen::{CertificateParams, KeyPair};
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["localhost".to_owned()]).unwrap().self_signed(&key).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.der().clone()], rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap())
            .unwrap();
        let options = Options { tls: Some(Arc::new(config)), ..Options::default() };
        let listener = Listener::bind_standalone(loopback(), options, echo).unwrap();
        let tls = ureq::tls::TlsConfig::builder()
            .root_certs(ureq::tls::RootCerts::new_with_certs(&[ureq::tls::Certificate::from_der(cert.der()).to_owned()]))
            .build();
        let agent: ureq::Agent = ureq::Agent::config_builder().tls_config(tls).timeout_global(Some(GIVE_UP)).build().into();
        let url = format!("https://localhost:{}/tls", listener.local_addr().port());
        for body in ["one", "two", "three"] {
            let mut response = agent.post(&url).send(body).unwrap();
            assert_eq!(response.body_mut().read_to_string().unwrap(), format!("POST /tls {body}"));
        }
        assert_eq!(listener.connections_accepted(), 1, "three requests on one kept-alive TLS connection");
        let plain = ureq::get(format!("http://localhost:{}/tls", listener.local_addr().port())).call();
        assert!(plain.is_err(), "plain HTTP to a TLS listener fails: {plain:?}");
    }

    #[test]
    fn a_listener_on_a_shared_runtime_is_stopped_by_dropping_it() {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        // The runtime runs on a thread of its own, as the service's does.
        let (stop_tx, stop) = tokio::sync::oneshot::channel::<()>();
        let handle = runtime.handle().clone();
        let thread = std::thread::spawn(move || runtime.block_on(async { stop.await.ok() }));
        let listener = Listener::bind(loopback(), Options::default(), &handle, move |request: Request<Bytes>| {
            record.lock().unwrap().push(request.uri().to_string());
            echo(request)
        })
        .unwrap();
        let mut client = Client::connect(listener.local_addr());
        client.send(b"GET /shared HTTP/1.1\r\n\r\n");
        assert_eq!(client.answer().body, "GET /shared ");
        drop(listener);
        assert!(client.closed());
        assert_eq!(*seen.lock().unwrap(), ["/shared"]);
        stop_tx.send(()).unwrap();
        thread.join().unwrap();
    }
}
