//! Misbehaving webhook receivers for the fault tests, on raw `std::net` TCP so that they can do
//! what no well-behaved HTTP server does: never answer, trickle a body, reset the connection in
//! the middle of the head, stream a body without end, or let the listen backlog fill up.
//!
//! - [`FaultServer`]: a listener on `127.0.0.1:0`; request number `n` (counted over all its
//!   connections) gets `script(n)`, an [`Act`]. Every request is recorded ([`Seen`]) with what
//!   the server managed to do about it (when it answered, whether the client hung up first, how
//!   many bytes it wrote). Dropping it shuts every connection down and joins its threads.
//! - [`FullBacklog`]: a listener that never accepts, with its accept queue filled by the test's
//!   own connections, so that a further connect gets no SYN-ACK: a connect timeout on loopback.
//! - [`refused_port`]: a loopback port where nothing listens.
//!
//! The request reader is deliberately unbuffered for the head (one byte per `read`): a fault
//! may leave the body unread, so that closing the socket makes the kernel send a RST instead of
//! a FIN — the "reset mid-response" fault without `SO_LINGER`, which std cannot set.
#![allow(dead_code)]

use std::{
    collections::HashMap,
    io::{ErrorKind, Read, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant, SystemTime},
};

/// What the server does with one request.
#[derive(Debug, Clone)]
pub enum Act {
    /// A complete response with `Content-Length`; the connection stays open for the next request.
    Respond { status: u16, headers: Vec<(String, String)>, body: Vec<u8> },
    /// Reads the request and never answers; holds the connection until the client closes it.
    Hang,
    /// The status line and headers (declaring `Content-Length: total`) at once, then the body one
    /// byte every `every`, until `total` bytes or the client hangs up.
    TrickleBody { status: u16, total: usize, every: Duration },
    /// Reads the head only, writes `partial` (the start of a response head), and closes with the
    /// request body still unread, so the kernel resets the connection.
    ResetMidHead { partial: &'static str },
    /// `status` with a chunked body of about `total` bytes (a repeating ASCII pattern, ≈ 64 KiB chunks),
    /// stopping early when the client hangs up.
    EndlessBody { status: u16, total: u64 },
}

impl Act {
    pub fn status(status: u16) -> Self {
        Act::Respond { status, headers: Vec::new(), body: format!("fault server says {status}").into_bytes() }
    }

    pub fn with_header(status: u16, name: &str, value: &str) -> Self {
        Act::Respond {
            status,
            headers: vec![(name.to_owned(), value.to_owned())],
            body: format!("fault server says {status}").into_bytes(),
        }
    }
}

/// The byte at offset `i` of an [`Act::EndlessBody`] body.
pub fn pattern_byte(i: u64) -> u8 {
    b"0123456789abcdefghijklmnopqrstuvwxyz"[(i % 36) as usize]
}

/// One request as the fault server saw it, and what became of it.
#[derive(Debug, Clone)]
pub struct Seen {
    /// 0 for the first request this server got.
    pub index: usize,
    /// Which accepted connection it came on (0 for the first).
    pub connection: usize,
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    /// Empty when the act left it unread.
    pub body: Vec<u8>,
    pub arrived: Instant,
    pub arrived_at: SystemTime,
    /// When the last byte of the answer was written (`Respond` only).
    pub answered_at: Option<SystemTime>,
    pub answered: Option<Instant>,
    /// Body bytes written (`TrickleBody`, `EndlessBody`).
    pub body_bytes_sent: u64,
    /// The client closed the connection (or reset it) before the act was over.
    pub client_hung_up: bool,
    /// The act ran to its end (its whole answer written).
    pub finished: bool,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn event_id(&self) -> &str {
        self.header("X-WSS-Event-Id").unwrap_or_else(|| panic!("request #{} has no X-WSS-Event-Id: {:?}", self.index, self.headers))
    }

    pub fn attempt(&self) -> u32 {
        self.header("X-WSS-Attempt").and_then(|a| a.parse().ok()).unwrap_or_else(|| panic!("request #{} has no X-WSS-Attempt", self.index))
    }
}

type Script = dyn Fn(usize) -> Act + Send + Sync;

struct State {
    stop: AtomicBool,
    /// Clones of the open connections, by number, to shut them down on drop. A handler removes
    /// its own when it ends: the socket is closed only when its last clone is.
    connections: Mutex<HashMap<usize, TcpStream>>,
    seen: Mutex<Vec<Seen>>,
    handlers: Mutex<Vec<JoinHandle<()>>>,
    script: Box<Script>,
}

/// A scripted misbehaving HTTP/1.1 server on `127.0.0.1:<port>`.
pub struct FaultServer {
    pub addr: SocketAddr,
    state: Arc<State>,
    acceptor: Option<JoinHandle<()>>,
}

impl FaultServer {
    /// Request number `n` (from 0) gets `script(n)`.
    pub fn start(script: impl Fn(usize) -> Act + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding a fault server on 127.0.0.1:0");
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State {
            stop: AtomicBool::new(false),
            connections: Mutex::default(),
            seen: Mutex::default(),
            handlers: Mutex::default(),
            script: Box::new(script),
        });
        let shared = state.clone();
        let acceptor = thread::spawn(move || {
            for (connection, stream) in listener.incoming().enumerate() {
                if shared.stop.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(stream) = stream else { continue };
                let _ = stream.set_nodelay(true);
                if let Ok(clone) = stream.try_clone() {
                    shared.connections.lock().unwrap().insert(connection, clone);
                }
                let state = shared.clone();
                let handler = thread::spawn(move || {
                    serve(&state, connection, stream);
                    state.connections.lock().unwrap().remove(&connection);
                });
                shared.handlers.lock().unwrap().push(handler);
            }
        });
        Self { addr, state, acceptor: Some(acceptor) }
    }

    /// Always the same act.
    pub fn always(act: Act) -> Self {
        Self::start(move |_| act.clone())
    }

    /// `http://127.0.0.1:<port>/hook`
    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    /// Every request so far, in arrival order.
    pub fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }
}

impl Drop for FaultServer {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
        for conn in self.state.connections.lock().unwrap().values() {
            let _ = conn.shutdown(Shutdown::Both);
        }
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1)); // wakes the acceptor
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
        // Connections accepted meanwhile (the wake-up one included).
        for conn in self.state.connections.lock().unwrap().values() {
            let _ = conn.shutdown(Shutdown::Both);
        }
        let handlers = std::mem::take(&mut *self.state.handlers.lock().unwrap());
        for handler in handlers {
            let _ = handler.join();
        }
    }
}

/// A request head, read byte by byte (see the module doc).
struct Head {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
}

impl Head {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// `None` at EOF or on an error before a complete head.
fn read_head(stream: &mut TcpStream) -> Option<Head> {
    let mut raw = Vec::with_capacity(512);
    let mut byte = [0u8; 1];
    while !raw.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(0) | Err(_) => return None,
            Ok(_) => raw.push(byte[0]),
        }
        if raw.len() > 64 * 1024 {
            return None;
        }
    }
    let text = String::from_utf8_lossy(&raw);
    let mut lines = text.split("\r\n");
    let mut request_line = lines.next()?.split(' ');
    let method = request_line.next()?.to_owned();
    let path = request_line.next()?.to_owned();
    let headers = lines
        .filter(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    Some(Head { method, path, headers })
}

/// The body after `head`: `Content-Length` or chunked.
fn read_body(stream: &mut TcpStream, head: &Head) -> Option<Vec<u8>> {
    if head.header("Transfer-Encoding").is_some_and(|te| te.eq_ignore_ascii_case("chunked")) {
        let mut body = Vec::new();
        loop {
            let mut size_line = Vec::new();
            let mut byte = [0u8; 1];
            while !size_line.ends_with(b"\r\n") {
                stream.read_exact(&mut byte).ok()?;
                size_line.push(byte[0]);
            }
            let size_text = String::from_utf8_lossy(&size_line);
            let size = usize::from_str_radix(size_text.trim().split(';').next()?.trim(), 16).ok()?;
            if size == 0 {
                // Trailer lines, if any, then an empty line.
                let mut line = Vec::new();
                loop {
                    stream.read_exact(&mut byte).ok()?;
                    line.push(byte[0]);
                    if line.ends_with(b"\r\n") {
                        if line.len() == 2 {
                            return Some(body);
                        }
                        line.clear();
                    }
                }
            }
            let start = body.len();
            body.resize(start + size + 2, 0);
            stream.read_exact(&mut body[start..]).ok()?;
            body.truncate(start + size);
        }
    }
    let len: usize = head.header("Content-Length").and_then(|l| l.parse().ok()).unwrap_or(0);
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body).ok()?;
    Some(body)
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        301 => "Moved Permanently",
        302 => "Found",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        410 => "Gone",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Whatever",
    }
}

fn serve(state: &State, connection: usize, mut stream: TcpStream) {
    loop {
        if state.stop.load(Ordering::SeqCst) {
            return;
        }
        let Some(head) = read_head(&mut stream) else { return };
        // Recorded (and numbered) as soon as its head is in, before the script is asked.
        let index = {
            let mut all = state.seen.lock().unwrap();
            let index = all.len();
            all.push(Seen {
                index,
                connection,
                method: head.method.clone(),
                path: head.path.clone(),
                headers: head.headers.clone(),
                body: Vec::new(),
                arrived: Instant::now(),
                arrived_at: SystemTime::now(),
                answered_at: None,
                answered: None,
                body_bytes_sent: 0,
                client_hung_up: false,
                finished: false,
            });
            index
        };
        let act = (state.script)(index);
        if let Act::ResetMidHead { .. } = act {
            // Leave the body unread, but make sure some of it has arrived: closing with unread
            // data is what makes the kernel answer with a RST.
            let mut probe = [0u8; 1];
            let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
            let _ = stream.peek(&mut probe);
        } else {
            let Some(body) = read_body(&mut stream, &head) else { return };
            state.seen.lock().unwrap()[index].body = body;
        }
        let update = |f: &dyn Fn(&mut Seen)| f(&mut state.seen.lock().unwrap()[index]);
        match act {
            Act::Respond { status, headers, body } => {
                let mut out = format!("HTTP/1.1 {status} {}\r\nContent-Length: {}\r\n", reason(status), body.len());
                for (name, value) in &headers {
                    out.push_str(&format!("{name}: {value}\r\n"));
                }
                out.push_str("\r\n");
                let mut bytes = out.into_bytes();
                bytes.extend_from_slice(&body);
                if stream.write_all(&bytes).and_then(|()| stream.flush()).is_err() {
                    update(&|s| s.client_hung_up = true);
                    return;
                }
                let (at, instant) = (SystemTime::now(), Instant::now());
                update(&|s| {
                    s.answered_at = Some(at);
                    s.answered = Some(instant);
                    s.finished = true;
                });
            }
            Act::Hang => {
                // Until the client gives up (EOF or reset) or the server is dropped.
                let mut sink = [0u8; 1024];
                loop {
                    match stream.read(&mut sink) {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {}
                    }
                }
                if !state.stop.load(Ordering::SeqCst) {
                    update(&|s| s.client_hung_up = true);
                }
                return;
            }
            Act::TrickleBody { status, total, every } => {
                let head = format!("HTTP/1.1 {status} {}\r\nContent-Type: text/plain\r\nContent-Length: {total}\r\n\r\n", reason(status));
                if stream.write_all(head.as_bytes()).is_err() {
                    update(&|s| s.client_hung_up = true);
                    return;
                }
                for i in 0..total as u64 {
                    if state.stop.load(Ordering::SeqCst) {
                        return;
                    }
                    thread::sleep(every); // the receiver's own slowness, not a test waiting for work
                    if stream.write_all(&[pattern_byte(i)]).is_err() {
                        update(&|s| s.client_hung_up = true);
                        return;
                    }
                    update(&|s| s.body_bytes_sent = i + 1);
                }
                update(&|s| s.finished = true);
            }
            Act::ResetMidHead { partial } => {
                let _ = stream.write_all(partial.as_bytes());
                let _ = stream.flush();
                // Dropping the socket with the request body unread: RST, not FIN.
                return;
            }
            Act::EndlessBody { status, total } => {
                let head =
                    format!("HTTP/1.1 {status} {}\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n", reason(status));
                if stream.write_all(head.as_bytes()).is_err() {
                    update(&|s| s.client_hung_up = true);
                    return;
                }
                // A multiple of the pattern's period (36), so that chunks continue it seamlessly.
                const CHUNK: u64 = 36 * 1820; // ≈ 64 KiB
                let framed = [format!("{CHUNK:x}\r\n").into_bytes(), (0..CHUNK).map(pattern_byte).collect(), b"\r\n".to_vec()].concat();
                let mut sent = 0u64;
                while sent < total {
                    if state.stop.load(Ordering::SeqCst) {
                        return;
                    }
                    if stream.write_all(&framed).is_err() {
                        update(&|s| s.client_hung_up = true);
                        return;
                    }
                    sent += CHUNK;
                    update(&|s| s.body_bytes_sent = sent);
                }
                if stream.write_all(b"0\r\n\r\n").is_err() {
                    update(&|s| s.client_hung_up = true);
                    return;
                }
                update(&|s| s.finished = true);
            }
        }
    }
}

/// A loopback port where nothing listens (bound, then closed again). Connecting to it is
/// refused, unless something else happens to bind it meanwhile — unlikely for a port the OS
/// just handed out.
pub fn refused_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("a free port");
    listener.local_addr().unwrap().port()
}

/// A listener with a backlog of 1 that never accepts, and test connections filling its accept
/// queue: Linux then drops further SYNs, so a connect to it times out — the loopback way to get
/// a connect timeout. Must be created inside a tokio runtime (tokio's `TcpSocket` is the only
/// dependency that can set the backlog).
pub struct FullBacklog {
    pub addr: SocketAddr,
    _listener: tokio::net::TcpListener,
    _fillers: Vec<TcpStream>,
}

impl FullBacklog {
    pub fn new() -> Self {
        let socket = tokio::net::TcpSocket::new_v4().expect("a TCP socket");
        socket.bind("127.0.0.1:0".parse().unwrap()).expect("binding 127.0.0.1:0");
        let listener = socket.listen(1).expect("listen with a backlog of 1");
        let addr = listener.local_addr().unwrap();
        let mut fillers = Vec::new();
        // Each connect that completes takes a place in the accept queue; the first that does
        // not complete within the probe time shows that the queue is full.
        for _ in 0..64 {
            match TcpStream::connect_timeout(&addr, Duration::from_millis(500)) {
                Ok(stream) => fillers.push(stream),
                Err(e) if e.kind() == ErrorKind::TimedOut || e.kind() == ErrorKind::WouldBlock => {
                    return Self { addr, _listener: listener, _fillers: fillers };
                }
                Err(e) => panic!("filling the backlog of {addr}: unexpected {e}"),
            }
        }
        panic!("the accept queue of {addr} never filled: {} connections completed", fillers.len());
    }

    /// `http://127.0.0.1:<port>/hook`
    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }
}
