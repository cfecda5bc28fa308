//! A small HTTP/1.1 server for webhook receivers on loopback: `wss receive`, the integration
//! tests' receivers and (to come) `wss bench`.
//!
//! # Why not tiny_http (or hyper)
//!
//! The receivers used to run on tiny_http 0.12. Its connection handling sometimes leaves a new
//! keep-alive connection waiting until another connection closes; measured against `wss
//! receive`, 298 of 300 quick deliveries arrived at once and 2 hung for the sender's whole 15 s
//! attempt timeout. A sender with a pool of keep-alive connections, which wss shares among its
//! sender threads, is exactly the client that runs into it. hyper would fix that at the price of an
//! async runtime inside blocking code and more code than the receivers themselves. What a receiver
//! on loopback needs fits in this file, on `std::net`, readable in one sitting.
//!
//! # What it does
//!
//! - One thread accepts; every connection gets its own thread, so a handler may block or sleep
//!   (the tests script slow receivers) while other connections are served.
//! - Persistent connections: HTTP/1.1 keeps the connection open unless the request says
//!   `Connection: close`; HTTP/1.0 keeps it only with `Connection: keep-alive`. Pipelined requests
//!   are answered in order.
//! - Request bodies framed by `Content-Length` or `Transfer-Encoding: chunked` (chunk extensions
//!   and trailers are read and ignored). `Expect: 100-continue` is answered with `100 Continue`
//!   before the body is read, or with the refusal when the declared body is too large.
//! - Fast enough for `wss bench`: TCP_NODELAY on every connection; the head, its header index, the
//!   body and the response are read into and written from buffers the connection reuses, so a
//!   request costs no allocation beyond the body buffer growing to its largest size; a response
//!   up to 64 KiB goes out in one write.
//! - The handler borrows the [`Request`] and answers through a [`Responder`], whose
//!   [`Responder::send`] says whether the answer was written: the test harness records exactly
//!   that, and `wss receive` warns when it failed.
//!
//! Some requests never reach the handler: the server answers them itself, reports them to
//! [`Options::on_refusal`] and closes the connection (see [`Refusal`]): 400 for a malformed
//! request, 413 for a body over [`Options::max_body`], 431 for a head over [`Options::max_head`],
//! 417 for an `Expect` other than `100-continue`, 501 for a transfer coding other than chunked.
//! A handler that returns (or panics) without answering gets its client a 500; either way the
//! connection is then closed. A client that disconnects mid-request is not reported: nobody is left to answer.
//!
//! # TLS
//!
//! [`Server::bind_tls`] serves HTTPS with a rustls server configuration the caller builds (its
//! certificate, and client-certificate verification if it wants one): the handshake runs on the
//! connection's thread at its first read, and a failed handshake closes the connection like any
//! broken one. `wss bench` measures HTTPS delivery against it. A TLS connection is one rustls
//! stream shared by the reading and the writing side behind a mutex, which is never contended:
//! a connection reads a request, then writes its answer, on one thread.
//!
//! # Limits
//!
//! - No HTTP/2, upgrades or compression. Responses always carry their whole body with
//!   `Content-Length` (none for 204 and 304; `HEAD` gets the headers only), and no `Date`.
//! - No idle timeout and no cap on connections: each open connection costs a thread. That suits
//!   loopback and a sender you run yourself, not the open internet.
//! - The head must be UTF-8 and well formed: bare CRs, control characters in header values and
//!   obsolete line folding are refused. `Host` is not required.
//! - Dropping the [`Server`] stops accepting and shuts down every open connection. A handler
//!   still running finishes, but its answer has nowhere to go.

use std::borrow::Cow;
use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::ops::Range;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

const LOG: &str = "wss::http_server";

/// The default [`Options::max_body`]: far above wss's 256 KiB event limit.
pub const DEFAULT_MAX_BODY: usize = 4 * 1024 * 1024;
/// The default [`Options::max_head`]: request line and headers (and chunked trailers).
pub const DEFAULT_MAX_HEAD: usize = 64 * 1024;

/// Longest chunk-size line (size, extensions, CRLF).
const MAX_CHUNK_LINE: u64 = 1024;
/// Bytes read from the socket at a time.
const READ_BUFFER: usize = 16 * 1024;
/// A body buffer that grew beyond this is given back after its request.
const KEPT_BODY_CAPACITY: usize = 256 * 1024;
/// A response body up to this size is copied behind its head and sent with one write.
const ONE_WRITE: usize = 64 * 1024;
/// After a refusal, how long (and how much) the client's unread input is drained before closing.
const LINGER: Duration = Duration::from_secs(5);
const LINGER_BYTES: u64 = 64 * 1024 * 1024;
/// How long [`Server`]'s drop tries to connect to the listener to wake the accept loop.
const WAKE_TIMEOUT: Duration = Duration::from_secs(1);
/// Pause after a failed `accept`, so that a lasting failure (out of file descriptors) does not
/// spin a core.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(10);
const TEXT_PLAIN: &str = "text/plain; charset=utf-8";

/// Answers one request: `handler(&request, responder)`.
pub type Handler = dyn Fn(&Request<'_>, Responder<'_>) + Send + Sync;
/// Told about a request the server refused itself; gets its head when that was read (with an
/// empty body), `None` otherwise.
pub type RefusalHook = dyn Fn(&Refusal, Option<&Request<'_>>) + Send + Sync;

/// How a [`Server`] limits and reports requests. `Options::default()` suits most receivers.
#[derive(Clone)]
pub struct Options {
    /// Largest request body accepted; a larger one is refused with 413.
    pub max_body: usize,
    /// Largest request head (request line and headers) accepted; a larger one is refused with 431.
    pub max_head: usize,
    /// Called on the connection's thread for every refused request, before the refusal is
    /// written (so a log of requests keeps their order).
    pub on_refusal: Option<Arc<RefusalHook>>,
}

impl Default for Options {
    fn default() -> Self {
        Options { max_body: DEFAULT_MAX_BODY, max_head: DEFAULT_MAX_HEAD, on_refusal: None }
    }
}

/// The HTTP version of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    Http10,
    Http11,
}

/// One request, borrowed from its connection's buffers for the duration of the handler call.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub method: &'a str,
    /// The request target as sent (path and query).
    pub path: &'a str,
    pub version: Version,
    /// The body, de-chunked.
    pub body: &'a [u8],
    head: &'a str,
    spans: &'a [HeaderSpan],
}

/// Where one header's name and value are in the head.
#[derive(Debug, Clone)]
struct HeaderSpan {
    name: Range<usize>,
    value: Range<usize>,
}

impl<'a> Request<'a> {
    /// Every header as `(name, value)`, in the order sent; values trimmed of surrounding spaces.
    pub fn headers(&self) -> impl Iterator<Item = (&'a str, &'a str)> + 'a {
        let head = self.head;
        self.spans.iter().map(move |span| (&head[span.name.clone()], &head[span.value.clone()]))
    }

    /// The first value of a header, by case-insensitive name.
    pub fn header(&self, name: &str) -> Option<&'a str> {
        self.headers_named(name).next()
    }

    /// Every value of a header, by case-insensitive name, in the order sent.
    pub fn headers_named<'n>(&self, name: &'n str) -> impl Iterator<Item = &'a str> + 'n
    where
        'a: 'n,
    {
        self.headers().filter(move |(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, value)| value)
    }
}

/// An answer. The server adds `Content-Length` and `Connection` itself.
#[derive(Debug, Clone)]
pub struct Response {
    /// 200..=999.
    pub status: u16,
    pub content_type: Option<&'static str>,
    /// Further headers; not `Content-Length`, `Transfer-Encoding` or `Connection`.
    pub headers: Vec<(String, String)>,
    pub body: Cow<'static, [u8]>,
}

impl Response {
    /// `status` with an empty body (allocates nothing).
    pub fn empty(status: u16) -> Self {
        Response { status, content_type: None, headers: Vec::new(), body: Cow::Borrowed(b"") }
    }

    /// `status` with a `text/plain` body.
    pub fn text(status: u16, body: impl Into<Cow<'static, str>>) -> Self {
        let body = match body.into() {
            Cow::Borrowed(text) => Cow::Borrowed(text.as_bytes()),
            Cow::Owned(text) => Cow::Owned(text.into_bytes()),
        };
        Response { status, content_type: Some(TEXT_PLAIN), headers: Vec::new(), body }
    }
}

/// Writes the answer to one request; see [`Responder::send`].
pub struct Responder<'c> {
    writer: &'c mut Writer,
    keep_alive: bool,
    head_only: bool,
    sent: &'c mut Sent,
}

/// What became of a request's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sent {
    Not,
    Written,
    Failed,
}

impl Responder<'_> {
    /// Writes `response`. `Ok` means the whole answer was handed to the kernel; an error means
    /// the client is gone (the connection is then closed) or `response` was invalid (nothing was
    /// written, and the client gets a 500).
    pub fn send(self, response: Response) -> io::Result<()> {
        if let Err(what) = check_response(&response) {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, what));
        }
        let written = self.writer.write_response(
            response.status,
            response.content_type,
            &response.headers,
            &response.body,
            self.keep_alive,
            self.head_only,
        );
        *self.sent = if written.is_ok() { Sent::Written } else { Sent::Failed };
        written
    }
}

/// Why the server answered a request itself instead of calling the handler.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("malformed request: {what}")]
    Malformed { what: &'static str },
    #[error("the request head is larger than {limit} bytes")]
    HeadTooLarge { limit: usize },
    #[error("the body is larger than {limit} bytes")]
    BodyTooLarge { limit: usize },
    #[error("only the chunked transfer coding is supported")]
    UnsupportedTransferCoding,
    #[error("only `Expect: 100-continue` is supported")]
    UnsupportedExpectation,
}

impl Refusal {
    /// The status the refusal is answered with.
    pub fn status(&self) -> u16 {
        match self {
            Refusal::Malformed { .. } => 400,
            Refusal::HeadTooLarge { .. } => 431,
            Refusal::BodyTooLarge { .. } => 413,
            Refusal::UnsupportedTransferCoding => 501,
            Refusal::UnsupportedExpectation => 417,
        }
    }
}

/// A listening server. Dropping it stops accepting and shuts down every open connection.
pub struct Server {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

/// What the accept loop and every connection thread share.
struct Shared {
    handler: Box<Handler>,
    options: Options,
    /// HTTPS: every connection is wrapped in TLS with this configuration.
    tls: Option<Arc<rustls::ServerConfig>>,
    stopping: AtomicBool,
    /// A handle on every open connection, so that dropping the server can shut them down.
    open: Mutex<OpenConnections>,
}

#[derive(Default)]
struct OpenConnections {
    next_id: u64,
    streams: HashMap<u64, TcpStream>,
}

impl Server {
    /// Listens on `addr` (port 0 picks a free one) with the default [`Options`], answering every
    /// request with `handler` on its connection's thread.
    pub fn bind(addr: SocketAddr, handler: impl Fn(&Request<'_>, Responder<'_>) + Send + Sync + 'static) -> io::Result<Server> {
        Server::bind_with(addr, Options::default(), handler)
    }

    /// [`Server::bind`] with explicit options.
    pub fn bind_with(
        addr: SocketAddr,
        options: Options,
        handler: impl Fn(&Request<'_>, Responder<'_>) + Send + Sync + 'static,
    ) -> io::Result<Server> {
        Server::start(addr, options, None, handler)
    }

    /// [`Server::bind_with`], serving HTTPS with `tls` (see the module's note on TLS).
    pub fn bind_tls(
        addr: SocketAddr,
        options: Options,
        tls: Arc<rustls::ServerConfig>,
        handler: impl Fn(&Request<'_>, Responder<'_>) + Send + Sync + 'static,
    ) -> io::Result<Server> {
        Server::start(addr, options, Some(tls), handler)
    }

    fn start(
        addr: SocketAddr,
        options: Options,
        tls: Option<Arc<rustls::ServerConfig>>,
        handler: impl Fn(&Request<'_>, Responder<'_>) + Send + Sync + 'static,
    ) -> io::Result<Server> {
        let listener = TcpListener::bind(addr)?;
        let addr = listener.local_addr()?;
        let shared =
            Arc::new(Shared { handler: Box::new(handler), options, tls, stopping: AtomicBool::new(false), open: Mutex::default() });
        let accept = thread::Builder::new().name("http-accept".into()).spawn({
            let shared = shared.clone();
            move || accept_loop(listener, &shared)
        })?;
        Ok(Server { addr, shared, accept: Some(accept) })
    }

    /// The address actually listened on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Connections accepted so far (with TLS: handshakes begun).
    pub fn connections_accepted(&self) -> u64 {
        self.shared.open.lock().next_id
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        // The accept loop blocks in `accept`: a connection of our own wakes it to see the flag.
        let woken = TcpStream::connect_timeout(&wake_address(self.addr), WAKE_TIMEOUT).is_ok();
        if let Some(accept) = self.accept.take() {
            // Joined only when woken: otherwise it would block forever. An unwoken loop still
            // stops at its next connection.
            if woken {
                let _ = accept.join();
            }
        }
        // After the join no connection is registered any more: shut down every one there is.
        let open = std::mem::take(&mut self.shared.open.lock().streams);
        for stream in open.into_values() {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }
}

/// `addr`, with an unspecified IP (listening on all interfaces) replaced by loopback.
fn wake_address(addr: SocketAddr) -> SocketAddr {
    let ip = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, addr.port())
}

fn accept_loop(listener: TcpListener, shared: &Arc<Shared>) {
    for stream in listener.incoming() {
        if shared.stopping.load(Ordering::SeqCst) {
            return;
        }
        let stream = match stream {
            Ok(stream) => stream,
            Err(err) => {
                log::warn!(target: LOG, "accepting a connection failed: {err}");
                thread::sleep(ACCEPT_BACKOFF);
                continue;
            }
        };
        let id = match stream.try_clone() {
            Ok(handle) => shared.register(handle),
            Err(err) => {
                log::warn!(target: LOG, "dropping a new connection, its socket cannot be cloned: {err}");
                continue;
            }
        };
        let conn_shared = shared.clone();
        let spawned = thread::Builder::new().name("http-conn".into()).spawn(move || {
            let _registered = Registered { shared: &conn_shared, id };
            serve_connection(stream, &conn_shared);
        });
        if let Err(err) = spawned {
            log::warn!(target: LOG, "dropping a new connection, no thread for it: {err}");
            shared.open.lock().streams.remove(&id);
        }
    }
}

impl Shared {
    fn register(&self, handle: TcpStream) -> u64 {
        let mut open = self.open.lock();
        let id = open.next_id;
        open.next_id += 1;
        open.streams.insert(id, handle);
        id
    }
}

/// Removes a connection's handle when its thread ends, even by a panic.
struct Registered<'s> {
    shared: &'s Shared,
    id: u64,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.shared.open.lock().streams.remove(&self.id);
    }
}

/// One side (reading or writing) of a connection: the socket itself, or the TLS stream both
/// sides share.
enum Half {
    Plain(TcpStream),
    Tls {
        stream: Arc<Mutex<rustls::StreamOwned<rustls::ServerConnection, TcpStream>>>,
        /// The same socket, to shut down and to time out without taking the stream's lock.
        socket: TcpStream,
    },
}

impl Half {
    fn socket(&self) -> &TcpStream {
        match self {
            Half::Plain(socket) | Half::Tls { socket, .. } => socket,
        }
    }
}

impl Read for Half {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Half::Plain(socket) => socket.read(buf),
            Half::Tls { stream, .. } => stream.lock().read(buf),
        }
    }
}

impl Write for Half {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Half::Plain(socket) => socket.write(buf),
            Half::Tls { stream, .. } => stream.lock().write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Half::Plain(socket) => socket.flush(),
            Half::Tls { stream, .. } => stream.lock().flush(),
        }
    }
}

/// The writing half of a connection and its response buffer.
struct Writer {
    stream: Half,
    out: Vec<u8>,
}

impl Writer {
    fn write_response(
        &mut self,
        status: u16,
        content_type: Option<&str>,
        headers: &[(String, String)],
        body: &[u8],
        keep_alive: bool,
        head_only: bool,
    ) -> io::Result<()> {
        let out = &mut self.out;
        out.clear();
        write!(out, "HTTP/1.1 {status} {}\r\n", reason(status))?;
        if let Some(content_type) = content_type {
            write!(out, "Content-Type: {content_type}\r\n")?;
        }
        for (name, value) in headers {
            write!(out, "{name}: {value}\r\n")?;
        }
        // RFC 9110 §8.6: no Content-Length (and no body) in a 204 or 304.
        let has_body = !matches!(status, 204 | 304);
        if has_body {
            write!(out, "Content-Length: {}\r\n", body.len())?;
        }
        out.extend_from_slice(if keep_alive { b"Connection: keep-alive\r\n\r\n" } else { b"Connection: close\r\n\r\n" });
        let send_body = has_body && !head_only && !body.is_empty();
        let body_apart = send_body && body.len() > ONE_WRITE;
        if send_body && !body_apart {
            out.extend_from_slice(body);
        }
        self.stream.write_all(out)?;
        if body_apart {
            self.stream.write_all(body)?;
        }
        self.stream.flush()
    }
}

fn check_response(response: &Response) -> Result<(), &'static str> {
    if !(200..=999).contains(&response.status) {
        return Err("the status is not in 200..=999");
    }
    if response.content_type.is_some_and(|ct| !is_field_value(ct)) {
        return Err("the content type has a control character");
    }
    for (name, value) in &response.headers {
        if !is_token(name) {
            return Err("a header name is not a token");
        }
        if !is_field_value(value) {
            return Err("a header value has a control character");
        }
        if ["content-length", "transfer-encoding", "connection"].iter().any(|framing| name.eq_ignore_ascii_case(framing)) {
            return Err("Content-Length, Transfer-Encoding and Connection are the server's to write");
        }
    }
    Ok(())
}

/// The reusable buffers of one connection.
#[derive(Default)]
struct Buffers {
    head: Vec<u8>,
    spans: Vec<HeaderSpan>,
    body: Vec<u8>,
    line: Vec<u8>,
}

/// What to do with a connection after a request.
enum Next {
    KeepAlive,
    Close,
}

/// Reading a request failed: either the connection broke or the request is refused.
enum ReadError {
    Io(io::Error),
    Refused(Refusal),
}

impl From<io::Error> for ReadError {
    fn from(err: io::Error) -> Self {
        ReadError::Io(err)
    }
}

impl From<Refusal> for ReadError {
    fn from(refusal: Refusal) -> Self {
        ReadError::Refused(refusal)
    }
}

/// Serves requests on one connection until either side closes it.
fn serve_connection(stream: TcpStream, shared: &Shared) {
    if let Err(err) = stream.set_nodelay(true) {
        log::debug!(target: LOG, "cannot set TCP_NODELAY: {err}");
    }
    let (read_half, write_half) = match halves(stream, shared.tls.as_ref()) {
        Ok(halves) => halves,
        Err(err) => {
            log::warn!(target: LOG, "dropping a connection, its socket cannot be cloned: {err}");
            return;
        }
    };
    let mut reader = BufReader::with_capacity(READ_BUFFER, read_half);
    let mut writer = Writer { stream: write_half, out: Vec::with_capacity(1024) };
    let mut buffers = Buffers::default();
    while let Next::KeepAlive = serve_request(&mut reader, &mut writer, &mut buffers, shared) {}
}

/// The reading and writing sides of a new connection, in TLS when `tls` is given.
fn halves(stream: TcpStream, tls: Option<&Arc<rustls::ServerConfig>>) -> io::Result<(Half, Half)> {
    let Some(config) = tls else {
        let read_half = stream.try_clone()?;
        return Ok((Half::Plain(read_half), Half::Plain(stream)));
    };
    let (read_socket, write_socket) = (stream.try_clone()?, stream.try_clone()?);
    let connection = rustls::ServerConnection::new(config.clone()).map_err(io::Error::other)?;
    let shared = Arc::new(Mutex::new(rustls::StreamOwned::new(connection, stream)));
    Ok((Half::Tls { stream: shared.clone(), socket: read_socket }, Half::Tls { stream: shared, socket: write_socket }))
}

/// Reads one request, answers it, and says whether the connection stays open.
fn serve_request(reader: &mut BufReader<Half>, writer: &mut Writer, buffers: &mut Buffers, shared: &Shared) -> Next {
    let options = &shared.options;
    match read_head(reader, &mut buffers.head, options.max_head) {
        Ok(true) => {}
        Ok(false) => return Next::Close,
        Err(ReadError::Io(err)) => return broken(&err),
        Err(ReadError::Refused(refusal)) => return refuse(reader, writer, shared, &refusal, None),
    }
    let Ok(head) = std::str::from_utf8(&buffers.head) else {
        let refusal = Refusal::Malformed { what: "the head is not UTF-8" };
        return refuse(reader, writer, shared, &refusal, None);
    };
    let (method, path, version) = match parse_head(head, &mut buffers.spans) {
        Ok(parsed) => parsed,
        Err(refusal) => return refuse(reader, writer, shared, &refusal, None),
    };
    let mut request = Request { method, path, version, body: &[], head, spans: &buffers.spans };
    let framing = match framing(&request, options.max_body) {
        Ok(framing) => framing,
        Err(refusal) => return refuse(reader, writer, shared, &refusal, Some(&request)),
    };
    if framing.expect_continue {
        if let Err(err) = writer.stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n") {
            return broken(&err);
        }
    }
    let body = &mut buffers.body;
    match read_body(reader, framing.body, body, &mut buffers.line, options) {
        Ok(()) => {}
        Err(ReadError::Io(err)) => return broken(&err),
        Err(ReadError::Refused(refusal)) => return refuse(reader, writer, shared, &refusal, Some(&request)),
    }
    request.body = body;

    let mut sent = Sent::Not;
    let responder = Responder { writer: &mut *writer, keep_alive: framing.keep_alive, head_only: method == "HEAD", sent: &mut sent };
    let handled = panic::catch_unwind(AssertUnwindSafe(|| (shared.handler)(&request, responder)));
    if handled.is_err() {
        log::error!(target: LOG, "the handler panicked on {method} {path}; closing the connection");
    }
    let next = match sent {
        Sent::Written if handled.is_ok() && framing.keep_alive => Next::KeepAlive,
        Sent::Written | Sent::Failed => Next::Close,
        Sent::Not => {
            let body = b"the handler sent no response\n";
            let _ = writer.write_response(500, Some(TEXT_PLAIN), &[], body, false, false);
            Next::Close
        }
    };
    if buffers.body.capacity() > KEPT_BODY_CAPACITY {
        buffers.body = Vec::new();
    }
    next
}

/// The connection broke (or the client closed it mid-request): nobody is left to answer.
fn broken(err: &io::Error) -> Next {
    log::debug!(target: LOG, "closing a connection: {err}");
    Next::Close
}

/// Reports `refusal`, answers it and closes the connection.
fn refuse(reader: &mut BufReader<Half>, writer: &mut Writer, shared: &Shared, refusal: &Refusal, request: Option<&Request<'_>>) -> Next {
    log::debug!(target: LOG, "refusing a request ({}): {refusal}", refusal.status());
    if let Some(on_refusal) = &shared.options.on_refusal {
        on_refusal(refusal, request);
    }
    let body = format!("{refusal}\n");
    let written = writer.write_response(refusal.status(), Some(TEXT_PLAIN), &[], body.as_bytes(), false, false);
    if written.is_ok() {
        linger(reader);
    }
    Next::Close
}

/// Closing a socket with unread input makes the kernel send a reset, which can destroy the
/// refusal before the client reads it (a client typically sends its whole body before reading).
/// So: stop writing, then read and discard what the client still sends until it closes, for at
/// most [`LINGER`] and [`LINGER_BYTES`].
fn linger(reader: &mut BufReader<Half>) {
    let _ = reader.get_ref().socket().shutdown(Shutdown::Write);
    let deadline = Instant::now() + LINGER;
    let mut drained = 0;
    let mut scratch = [0; 8192];
    while drained < LINGER_BYTES {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || reader.get_ref().socket().set_read_timeout(Some(left)).is_err() {
            return;
        }
        match reader.read(&mut scratch) {
            Ok(0) | Err(_) => return,
            Ok(n) => drained += n as u64,
        }
    }
}

/// Reads a request head (through its empty line) into `head`. `Ok(false)`: the client closed
/// the connection cleanly before a new request. Empty lines before the request line are
/// ignored (RFC 9112 §2.2) but count towards the limit.
fn read_head(reader: &mut BufReader<Half>, head: &mut Vec<u8>, max_head: usize) -> Result<bool, ReadError> {
    head.clear();
    let mut started = false;
    loop {
        let start = head.len();
        let room = max_head.saturating_sub(start) as u64;
        let n = reader.by_ref().take(room).read_until(b'\n', head)?;
        if n == 0 && start == 0 {
            return Ok(false);
        }
        if n == 0 || head.last() != Some(&b'\n') {
            return Err(if head.len() >= max_head {
                Refusal::HeadTooLarge { limit: max_head }.into()
            } else {
                io::Error::new(io::ErrorKind::UnexpectedEof, "the client closed mid-head").into()
            });
        }
        let blank = matches!(&head[start..], b"\n" | b"\r\n");
        if blank && started {
            return Ok(true);
        }
        started |= !blank;
    }
}

/// Splits a head into request line and header spans (into `spans`).
fn parse_head<'h>(head: &'h str, spans: &mut Vec<HeaderSpan>) -> Result<(&'h str, &'h str, Version), Refusal> {
    let malformed = |what| Refusal::Malformed { what };
    spans.clear();
    let mut lines = head.split('\n').map(|line| line.strip_suffix('\r').unwrap_or(line));
    let request_line = lines.by_ref().find(|line| !line.is_empty()).ok_or(malformed("no request line"))?;
    let mut parts = request_line.split(' ');
    let (Some(method), Some(path), Some(version), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(malformed("the request line is not `METHOD target HTTP/1.x`"));
    };
    if !is_token(method) {
        return Err(malformed("the method is not a token"));
    }
    if path.is_empty() || path.bytes().any(|b| b.is_ascii_control()) {
        return Err(malformed("the request target is empty or has a control character"));
    }
    let version = match version {
        "HTTP/1.1" => Version::Http11,
        "HTTP/1.0" => Version::Http10,
        _ => return Err(malformed("the HTTP version is not 1.1 or 1.0")),
    };
    for line in lines.take_while(|line| !line.is_empty()) {
        if line.starts_with([' ', '\t']) {
            return Err(malformed("obsolete header line folding"));
        }
        let (name, value) = line.split_once(':').ok_or(malformed("a header line has no colon"))?;
        if !is_token(name) {
            return Err(malformed("a header name is not a token"));
        }
        let value = value.trim_matches([' ', '\t']);
        if !is_field_value(value) {
            return Err(malformed("a header value has a control character"));
        }
        spans.push(HeaderSpan { name: span(head, name), value: span(head, value) });
    }
    Ok((method, path, version))
}

/// Where `part`, a slice of `whole`, lies in it.
fn span(whole: &str, part: &str) -> Range<usize> {
    let start = part.as_ptr() as usize - whole.as_ptr() as usize;
    start..start + part.len()
}

/// RFC 9110 §5.6.2 token.
fn is_token(text: &str) -> bool {
    !text.is_empty() && text.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// No control characters but tab (which also rules out CR and LF).
fn is_field_value(text: &str) -> bool {
    text.bytes().all(|b| b == b'\t' || !b.is_ascii_control())
}

/// How a request's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyKind {
    None,
    Length(u64),
    Chunked,
}

/// What the headers say about the body and the connection.
#[derive(Debug)]
struct Framing {
    body: BodyKind,
    keep_alive: bool,
    expect_continue: bool,
}

fn framing(request: &Request<'_>, max_body: usize) -> Result<Framing, Refusal> {
    let malformed = |what| Refusal::Malformed { what };
    let tokens = |name| request.headers_named(name).flat_map(|value| value.split(',')).map(str::trim).filter(|token| !token.is_empty());
    let close = tokens("connection").any(|t| t.eq_ignore_ascii_case("close"));
    let keep_alive = match request.version {
        Version::Http11 => !close,
        Version::Http10 => !close && tokens("connection").any(|t| t.eq_ignore_ascii_case("keep-alive")),
    };

    let mut codings = tokens("transfer-encoding");
    let chunked = match (codings.next(), codings.next()) {
        (None, _) => false,
        (Some(coding), None) if coding.eq_ignore_ascii_case("chunked") => true,
        _ => return Err(Refusal::UnsupportedTransferCoding),
    };
    let mut length = None;
    for value in request.headers_named("content-length").flat_map(|value| value.split(',')) {
        let n = parse_decimal(value.trim()).ok_or(malformed("an invalid Content-Length"))?;
        if length.is_some_and(|seen| seen != n) {
            return Err(malformed("conflicting Content-Length values"));
        }
        length = Some(n);
    }
    let body = match (chunked, length) {
        // RFC 9112 §6.3: a request with both may be an attempt at request smuggling.
        (true, Some(_)) => return Err(malformed("both Transfer-Encoding and Content-Length")),
        (true, None) => BodyKind::Chunked,
        (false, None | Some(0)) => BodyKind::None,
        (false, Some(n)) if n > max_body as u64 => return Err(Refusal::BodyTooLarge { limit: max_body }),
        (false, Some(n)) => BodyKind::Length(n),
    };

    let expect_continue = match request.header("expect") {
        None => false,
        Some(expect) if expect.eq_ignore_ascii_case("100-continue") => {
            // RFC 9110 §10.1.1: ignored from HTTP/1.0 clients.
            request.version == Version::Http11 && body != BodyKind::None
        }
        Some(_) => return Err(Refusal::UnsupportedExpectation),
    };
    Ok(Framing { body, keep_alive, expect_continue })
}

/// Digits only (no sign, no spaces), fitting a u64.
fn parse_decimal(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// Reads the body `kind` describes into `body`.
fn read_body(
    reader: &mut BufReader<Half>,
    kind: BodyKind,
    body: &mut Vec<u8>,
    line: &mut Vec<u8>,
    options: &Options,
) -> Result<(), ReadError> {
    body.clear();
    match kind {
        BodyKind::None => Ok(()),
        BodyKind::Length(n) => read_exactly(reader, n, body),
        BodyKind::Chunked => {
            loop {
                read_line(reader, line, MAX_CHUNK_LINE)?;
                let size = parse_chunk_size(line).ok_or(Refusal::Malformed { what: "a bad chunk size" })?;
                if size == 0 {
                    break;
                }
                if size > (options.max_body - body.len()) as u64 {
                    return Err(Refusal::BodyTooLarge { limit: options.max_body }.into());
                }
                read_exactly(reader, size, body)?;
                read_line(reader, line, MAX_CHUNK_LINE)?;
                if !matches!(line.as_slice(), b"\r\n" | b"\n") {
                    return Err(Refusal::Malformed { what: "a chunk is longer than its size" }.into());
                }
            }
            // Trailer fields, read and ignored, through the empty line.
            let mut trailers = 0;
            loop {
                read_line(reader, line, options.max_head as u64)?;
                if matches!(line.as_slice(), b"\r\n" | b"\n") {
                    return Ok(());
                }
                trailers += line.len();
                if trailers > options.max_head {
                    return Err(Refusal::HeadTooLarge { limit: options.max_head }.into());
                }
            }
        }
    }
}

/// Appends exactly `n` bytes to `body`.
fn read_exactly(reader: &mut BufReader<Half>, n: u64, body: &mut Vec<u8>) -> Result<(), ReadError> {
    let want = body.len() + n as usize;
    body.reserve(n as usize);
    reader.by_ref().take(n).read_to_end(body)?;
    if body.len() < want {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the client closed mid-body").into());
    }
    Ok(())
}

/// Reads one line (through `\n`) into `line`; a longer line than `limit` is malformed.
fn read_line(reader: &mut BufReader<Half>, line: &mut Vec<u8>, limit: u64) -> Result<(), ReadError> {
    line.clear();
    let n = reader.by_ref().take(limit).read_until(b'\n', line)?;
    if line.last() == Some(&b'\n') {
        Ok(())
    } else if n as u64 == limit {
        Err(Refusal::Malformed { what: "a line of the chunked body is too long" }.into())
    } else {
        Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the client closed mid-body").into())
    }
}

/// `1a3f[;extensions]\r\n` → 0x1a3f.
fn parse_chunk_size(line: &[u8]) -> Option<u64> {
    let line = std::str::from_utf8(line).ok()?;
    let size = line.split(';').next()?.trim();
    if size.is_empty() || size.len() > 15 || !size.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u64::from_str_radix(size, 16).ok()
}

/// The reason phrase for a status (clients ignore it; people reading traces do not).
fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        304 => "Not Modified",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        410 => "Gone",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        417 => "Expectation Failed",
        422 => "Unprocessable Content",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => match status / 100 {
            2 => "Success",
            3 => "Redirection",
            4 => "Client Error",
            _ => "Server Error",
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crossbeam_channel::{bounded, Receiver as Rx};
    use std::sync::atomic::AtomicUsize;

    /// An upper bound for giving up on a broken server, never a timing assertion.
    const GIVE_UP: Duration = Duration::from_secs(20);

    /// Answers `200 <method> <path> <body>`.
    fn echo(request: &Request<'_>, responder: Responder<'_>) {
        let text = format!("{} {} {}", request.method, request.path, String::from_utf8_lossy(request.body));
        responder.send(Response::text(200, text)).unwrap();
    }

    fn loopback() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 0))
    }

    struct Client {
        reader: BufReader<TcpStream>,
        writer: TcpStream,
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
            let writer = TcpStream::connect(addr).unwrap();
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

        /// True when the server closed the connection (and sent nothing more).
        fn closed(&mut self) -> bool {
            let mut rest = Vec::new();
            matches!(self.reader.read_to_end(&mut rest), Ok(0))
        }
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
        let server = Server::bind_tls(loopback(), Options::default(), Arc::new(config), echo).unwrap();
        let tls = ureq::tls::TlsConfig::builder()
            .root_certs(ureq::tls::RootCerts::new_with_certs(&[ureq::tls::Certificate::from_der(cert.der()).to_owned()]))
            .build();
        let agent: ureq::Agent = ureq::Agent::config_builder().tls_config(tls).timeout_global(Some(GIVE_UP)).build().into();
        let url = format!("https://localhost:{}/tls", server.local_addr().port());
        for body in ["one", "two", "three"] {
            let mut response = agent.post(&url).send(body).unwrap();
            assert_eq!(response.body_mut().read_to_string().unwrap(), format!("POST /tls {body}"));
        }
        assert_eq!(server.shared.open.lock().next_id, 1, "three requests on one kept-alive TLS connection");
        let plain = ureq::get(format!("http://localhost:{}/tls", server.local_addr().port())).call();
        assert!(plain.is_err(), "plain HTTP to a TLS listener fails: {plain:?}");
    }

    #[test]
    fn one_keep_alive_connection_carries_several_requests() {
        let server = Server::bind(loopback(), echo).unwrap();
        let mut client = Client::connect(server.local_addr());
        client.send(b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nfirst");
        let first = client.answer();
        assert_eq!((first.status, first.body.as_str()), (200, "POST /a first"));
        assert_eq!(first.header("connection"), Some("keep-alive"));
        assert_eq!(first.header("content-type"), Some(TEXT_PLAIN));

        // The second request on the same socket, pipelined with a third.
        client.send(b"GET /b?q=1 HTTP/1.1\r\nHost: x\r\n\r\nPUT /c HTTP/1.1\r\ncontent-length: 1\r\n\r\n!");
        let second = client.answer();
        let third = client.answer();
        assert_eq!((second.status, second.body.as_str()), (200, "GET /b?q=1 "));
        assert_eq!((third.status, third.body.as_str()), (200, "PUT /c !"));
    }

    #[test]
    fn chunked_bodies_are_decoded_and_their_trailers_skipped() {
        let server = Server::bind(loopback(), echo).unwrap();
        let mut client = Client::connect(server.local_addr());
        client.send(
            b"POST /hook HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n\
              4\r\nWiki\r\n5;name=value\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\nX-Trailer: t\r\n\r\n",
        );
        let answer = client.answer();
        assert_eq!(answer.body, "POST /hook Wikipedia in\r\n\r\nchunks.");
        // The framing ended exactly after the trailers: the connection is still usable.
        client.send(b"GET /next HTTP/1.1\r\n\r\n");
        assert_eq!(client.answer().body, "GET /next ");
    }

    #[test]
    fn headers_are_found_by_any_case_in_order() {
        let (seen_tx, seen) = bounded(1);
        let server = Server::bind(loopback(), move |request: &Request<'_>, responder: Responder<'_>| {
            let all: Vec<String> = request.headers_named("x-sig").map(str::to_owned).collect();
            let first = request.header("X-SIG").map(str::to_owned);
            let count = request.headers().count();
            seen_tx.send((first, all, count)).unwrap();
            responder.send(Response::empty(204)).unwrap();
        })
        .unwrap();
        let mut client = Client::connect(server.local_addr());
        client.send(b"GET / HTTP/1.1\r\nX-Sig:  a \r\nHost: x\r\nx-sig:b\r\n\r\n");
        let answer = client.answer();
        assert_eq!(answer.status, 204);
        assert_eq!(answer.header("content-length"), None, "no Content-Length in a 204");
        let (first, all, count) = seen.recv_timeout(GIVE_UP).unwrap();
        assert_eq!(first.as_deref(), Some("a"));
        assert_eq!(all, ["a", "b"]);
        assert_eq!(count, 3);
    }

    /// Each refusal and the path of its request, when that was read.
    type Refusals = Rx<(Refusal, Option<String>)>;

    /// A server whose handler counts calls, with refusals forwarded to a channel.
    fn counting(options: Options) -> (Server, Arc<AtomicUsize>, Refusals) {
        let calls = Arc::new(AtomicUsize::new(0));
        let (refused_tx, refused) = bounded(8);
        let options = Options {
            on_refusal: Some(Arc::new(move |refusal: &Refusal, request: Option<&Request<'_>>| {
                let path = request.map(|r| r.path.to_owned());
                refused_tx.send((refusal.clone(), path)).unwrap();
            })),
            ..options
        };
        let counter = calls.clone();
        let server = Server::bind_with(loopback(), options, move |request: &Request<'_>, responder: Responder<'_>| {
            counter.fetch_add(1, Ordering::SeqCst);
            echo(request, responder);
        })
        .unwrap();
        (server, calls, refused)
    }

    #[test]
    fn an_oversize_body_is_refused_with_413_and_the_connection_closed() {
        let (server, calls, refused) = counting(Options::default());
        let mut client = Client::connect(server.local_addr());
        // The client sends its whole body before reading, as most do.
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
        let small = Options { max_body: 8, ..Options::default() };
        let (server, small_calls, refused) = counting(small);
        let mut client = Client::connect(server.local_addr());
        client.send(b"POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n12345\r\n5\r\n67890\r\n0\r\n\r\n");
        assert_eq!(client.answer().status, 413);
        assert!(client.closed());
        let mut client = Client::connect(server.local_addr());
        client.send(b"POST /e HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 9\r\n\r\n");
        assert_eq!(client.answer().status, 413, "refused instead of 100 Continue");
        assert!(client.closed());
        assert_eq!(refused.recv_timeout(GIVE_UP).unwrap().1.as_deref(), Some("/c"));
        assert_eq!(refused.recv_timeout(GIVE_UP).unwrap().1.as_deref(), Some("/e"));
        assert_eq!((calls.load(Ordering::SeqCst), small_calls.load(Ordering::SeqCst)), (0, 0), "the handler never saw them");
    }

    #[test]
    fn malformed_requests_get_400_and_a_closed_connection() {
        let (server, calls, refused) = counting(Options::default());
        let cases: [&[u8]; 6] = [
            b"garbage\r\n\r\n",
            b"GET / HTTP/2.0\r\n\r\n",
            b"GET / HTTP/1.1\r\nno colon\r\n\r\n",
            b"GET / HTTP/1.1\r\nX: a\r\n folded\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        ];
        for raw in cases {
            let mut client = Client::connect(server.local_addr());
            client.send(raw);
            let answer = client.answer();
            let shown = String::from_utf8_lossy(raw);
            assert_eq!(answer.status, 400, "{shown:?}: {answer:?}");
            assert!(answer.body.starts_with("malformed request: "), "{shown:?}: {answer:?}");
            assert!(client.closed(), "{shown:?}");
            let (refusal, _) = refused.recv_timeout(GIVE_UP).unwrap();
            assert_eq!(refusal.status(), 400);
        }
        let mut client = Client::connect(server.local_addr());
        client.send(b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n");
        assert_eq!(client.answer().status, 501);
        let mut client = Client::connect(server.local_addr());
        client.send(b"POST / HTTP/1.1\r\nExpect: something\r\nContent-Length: 1\r\n\r\n.");
        assert_eq!(client.answer().status, 417);
        assert_eq!(calls.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn connection_close_and_http_1_0_close_after_the_answer() {
        let server = Server::bind(loopback(), echo).unwrap();
        for raw in [
            &b"GET /1 HTTP/1.1\r\nConnection: close\r\n\r\n"[..],
            b"GET /2 HTTP/1.1\r\nConnection: TE, Close\r\n\r\n",
            b"GET /3 HTTP/1.0\r\n\r\n",
        ] {
            let mut client = Client::connect(server.local_addr());
            client.send(raw);
            let answer = client.answer();
            assert_eq!(answer.status, 200);
            assert_eq!(answer.header("connection"), Some("close"));
            assert!(client.closed(), "{:?}", String::from_utf8_lossy(raw));
        }
        // HTTP/1.0 keeps the connection when asked to.
        let mut client = Client::connect(server.local_addr());
        client.send(b"GET /4 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
        assert_eq!(client.answer().header("connection"), Some("keep-alive"));
        client.send(b"GET /5 HTTP/1.0\r\n\r\n");
        assert_eq!(client.answer().body, "GET /5 ");
        assert!(client.closed());
    }

    #[test]
    fn expect_100_continue_is_answered_before_the_body_is_sent() {
        let server = Server::bind(loopback(), echo).unwrap();
        let mut client = Client::connect(server.local_addr());
        client.send(b"POST /e HTTP/1.1\r\nExpect: 100-Continue\r\nContent-Length: 4\r\n\r\n");
        let interim = client.answer();
        assert_eq!(interim.status, 100);
        client.send(b"body");
        assert_eq!(client.answer().body, "POST /e body");
    }

    #[test]
    fn a_slow_handler_does_not_hold_up_another_connection() {
        let (started_tx, started) = bounded(1);
        let (release_tx, release) = bounded::<()>(1);
        let server = Server::bind(loopback(), move |request: &Request<'_>, responder: Responder<'_>| {
            if request.path == "/slow" {
                started_tx.send(()).unwrap();
                // Blocks until the test has been answered on the other connection.
                release.recv_timeout(GIVE_UP).unwrap();
            }
            echo(request, responder);
        })
        .unwrap();
        let mut slow = Client::connect(server.local_addr());
        slow.send(b"GET /slow HTTP/1.1\r\n\r\n");
        started.recv_timeout(GIVE_UP).unwrap();

        // While /slow's handler blocks, a new connection is answered.
        let mut fast = Client::connect(server.local_addr());
        fast.send(b"GET /fast HTTP/1.1\r\n\r\n");
        assert_eq!(fast.answer().body, "GET /fast ");
        release_tx.send(()).unwrap();
        assert_eq!(slow.answer().body, "GET /slow ");
    }

    #[test]
    fn a_handler_that_does_not_answer_gets_its_client_a_500() {
        let server = Server::bind(loopback(), |request: &Request<'_>, responder: Responder<'_>| {
            if request.path == "/bad-header" {
                let mut response = Response::empty(200);
                response.headers.push(("X-Injected".into(), "a\r\nb: c".into()));
                let err = responder.send(response).unwrap_err();
                assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
            }
        })
        .unwrap();
        for path in ["/silent", "/bad-header"] {
            let mut client = Client::connect(server.local_addr());
            client.send(format!("GET {path} HTTP/1.1\r\n\r\n").as_bytes());
            let answer = client.answer();
            assert_eq!(answer.status, 500, "{path}");
            assert!(client.closed(), "{path}");
        }
    }

    #[test]
    fn dropping_the_server_closes_its_connections_and_stops_listening() {
        let server = Server::bind(loopback(), echo).unwrap();
        let addr = server.local_addr();
        let mut idle = Client::connect(addr);
        idle.send(b"GET / HTTP/1.1\r\n\r\n");
        assert_eq!(idle.answer().status, 200);
        drop(server);
        assert!(idle.closed());
        assert!(TcpStream::connect(addr).is_err());
    }

    #[test]
    fn heads_parse_into_spans() {
        let head = "\r\nPOST /p HTTP/1.1\r\nA: 1\r\nB:\t two words \r\n\r\n";
        let mut spans = Vec::new();
        let (method, path, version) = parse_head(head, &mut spans).unwrap();
        assert_eq!((method, path, version), ("POST", "/p", Version::Http11));
        let request = Request { method, path, version, body: b"", head, spans: &spans };
        let headers: Vec<_> = request.headers().collect();
        assert_eq!(headers, [("A", "1"), ("B", "two words")]);
        assert_eq!(parse_chunk_size(b"1a;x=y\r\n"), Some(0x1a));
        assert_eq!(parse_chunk_size(b"+1\r\n"), None);
        assert_eq!(parse_chunk_size(b"\r\n"), None);
    }
}
