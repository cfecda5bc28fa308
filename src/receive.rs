//! `wss receive`: a demo webhook endpoint, for a newcomer's first delivery and for checking a
//! secret by hand.
//!
//! It is deliberately what a real receiver should be, and nothing more: read the *raw* body,
//! verify it with the same [`crate::signature`] functions the sender is tested against, answer
//! `200 ok` or `401 <reason>`, and show one line per request on stdout (flushed, so it reads live
//! through a pipe). It is not part of the delivery pipeline and touches no Redis key.
//!
//! HTTP is [`crate::http_listener`]'s (hyper on a small runtime of its own): wss's pool of
//! keep-alive connections is served at once. Each request's line is queued before its answer is
//! written and printed by the thread that called [`Receiver::serve`], so requests a client sends
//! one after another are shown in that order. Requests the listener refuses itself (a body over
//! 4 MiB: 413, a malformed request: 400) get a line too.
//!
//! The secret is never printed. Bodies and header values come from whoever connects, so control
//! characters in them are escaped and long bodies shortened before they reach the terminal.

use std::io::{self, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use http::{request::Parts, Request, StatusCode};
use tokio::sync::mpsc;

use crate::http_listener::{self, Bytes, Listener, Options, Refusal};
use crate::signature::{self, StandardSigner, VerifyError};

/// A larger body is refused with 413 without being verified (the event size limit is 256 KiB).
const MAX_BODY: usize = 4 * 1024 * 1024;
/// Characters of the body shown per line; the rest is summarised.
const SHOWN_BODY_CHARS: usize = 2000;
/// Characters of a header value shown per line.
const SHOWN_HEADER_CHARS: usize = 128;
/// Lines waiting to be printed; when stdout cannot keep up, requests wait for it (and the lines
/// of refused requests beyond it are dropped: a refusal is answered at once).
const QUEUED_LINES: usize = 1024;

/// What `wss receive --port P --secret S [--tolerance 300s] [--scheme wss|standard-webhooks]` asks for.
pub struct ReceiveOptions {
    /// Address to listen on (`127.0.0.1:<port>`; port 0 picks a free one).
    pub bind: SocketAddr,
    /// The webhook's secret, exactly as `CreateWebhook` or `RotateWebhookSecret` returned it.
    pub secret: String,
    /// How far a request's timestamp may be from this machine's clock, in either direction.
    pub tolerance: Duration,
    /// Verify the Standard Webhooks headers (`webhook-*`, `whsec_` secret) instead of `X-WSS-*`.
    pub standard_webhooks: bool,
}

/// Listens and verifies requests until the process is stopped.
pub fn run(opts: ReceiveOptions) -> anyhow::Result<()> {
    Receiver::bind(opts)?.serve(io::stdout())
}

/// A listening demo receiver: requests are answered as soon as it is bound, and their lines
/// wait for [`Receiver::serve`] to print them.
pub struct Receiver {
    listener: Listener,
    lines: mpsc::Receiver<String>,
}

/// The secret, already checked to be usable by the chosen scheme.
enum Scheme {
    Wss { secret: Vec<u8> },
    Standard { secret: String },
}

impl Receiver {
    /// Checks the secret, then binds the listener, so that a bad secret fails before anything
    /// listens.
    pub fn bind(opts: ReceiveOptions) -> anyhow::Result<Self> {
        anyhow::ensure!(!opts.secret.is_empty(), "--secret is empty: pass the webhook's secret");
        let scheme = if opts.standard_webhooks {
            StandardSigner::new(&opts.secret).context("--secret is not a usable Standard Webhooks secret")?;
            Scheme::Standard { secret: opts.secret }
        } else {
            Scheme::Wss { secret: opts.secret.into_bytes() }
        };
        let tolerance = opts.tolerance;
        let (queue, lines) = mpsc::channel(QUEUED_LINES);

        let refusals = queue.clone();
        let options = Options {
            max_body: MAX_BODY,
            on_refusal: Some(Arc::new(move |refusal: &Refusal, request: Option<&Parts>| {
                let headers = request.map(|r| header_pairs(&r.headers)).unwrap_or_default();
                let rejection = Err(Rejection::Refused(refusal.clone()));
                // Fails when `serve` has stopped (no line can be shown then) or is QUEUED_LINES behind.
                let _ = refusals.try_send(log_line(&rejection, &headers, b""));
            })),
            ..Options::default()
        };
        let scheme = Arc::new(scheme);
        let handler = move |request: Request<Bytes>| {
            let headers = header_pairs(request.headers());
            let verdict = check(&scheme, tolerance, &headers, request.body(), SystemTime::now());
            let line = log_line(&verdict, &headers, request.body());
            let response = match &verdict {
                Ok(()) => http_listener::text(StatusCode::OK, "ok\n"),
                Err(rejection) => http_listener::text(rejection.status(), format!("{rejection}\n")),
            };
            let queue = queue.clone();
            async move {
                // Queued before the answer is written, so that a client's requests are shown in
                // the order it sent them; fails only once `serve` has stopped.
                let _ = queue.send(line).await;
                response
            }
        };
        let listener = Listener::bind_standalone(opts.bind, options, handler).with_context(|| format!("cannot listen on {}", opts.bind))?;
        Ok(Receiver { listener, lines })
    }

    /// The address actually listened on (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr()
    }

    /// Writes one line per request to `out`, as requests are answered. Returns only if `out`
    /// fails (e.g. the pipe it wrote to was closed); the listener closes with it.
    pub fn serve(mut self, mut out: impl Write) -> anyhow::Result<()> {
        writeln!(out, "listening on http://{} — verifying with the given secret", self.local_addr())
            .and_then(|()| out.flush())
            .context("cannot write to stdout")?;
        // Never ends by itself: the listener's handler holds the sending side.
        while let Some(line) = self.lines.blocking_recv() {
            writeln!(out, "{line}").and_then(|()| out.flush()).context("cannot write to stdout")?;
        }
        Ok(())
    }
}

/// Why a request was not accepted.
#[derive(Debug, thiserror::Error)]
enum Rejection {
    #[error("{0}")]
    Verify(#[from] VerifyError),
    #[error("the {0} header is missing")]
    MissingHeader(&'static str),
    /// Answered by the HTTP server before verification (413, 400, ...).
    #[error("{0}")]
    Refused(Refusal),
}

impl Rejection {
    fn status(&self) -> StatusCode {
        match self {
            Rejection::Verify(_) | Rejection::MissingHeader(_) => StatusCode::UNAUTHORIZED,
            Rejection::Refused(refusal) => refusal.status(),
        }
    }
}

/// A request's headers as `(name, value)` pairs, names in lower case; a value that is not UTF-8
/// is left out (none of the headers verification reads can be one).
fn header_pairs(headers: &http::HeaderMap) -> Vec<(&str, &str)> {
    headers.iter().filter_map(|(name, value)| Some((name.as_str(), std::str::from_utf8(value.as_bytes()).ok()?))).collect()
}

fn check(scheme: &Scheme, tolerance: Duration, headers: &[(&str, &str)], body: &[u8], now: SystemTime) -> Result<(), Rejection> {
    match scheme {
        Scheme::Wss { secret } => {
            signature::verify_headers(secret, headers.iter().copied(), body, tolerance, now)?;
        }
        Scheme::Standard { secret } => {
            let required = |name: &'static str| header(headers, name).ok_or(Rejection::MissingHeader(name));
            let id = required("webhook-id")?;
            let timestamp = required("webhook-timestamp")?;
            let signature = required("webhook-signature")?;
            signature::verify_standard(secret, id, timestamp, signature, body, tolerance, now)?;
        }
    }
    Ok(())
}

/// `✔ verified  event=… type=… attempt=…  <body>` or `✘ rejected  (<reason>)  event=… …`.
fn log_line(verdict: &Result<(), Rejection>, headers: &[(&str, &str)], body: &[u8]) -> String {
    let field = |names: &[&str]| {
        names.iter().find_map(|name| header(headers, name)).map_or_else(|| "-".to_owned(), |value| printable(value, SHOWN_HEADER_CHARS))
    };
    let details = format!(
        "event={} type={} attempt={}  {}",
        field(&["X-WSS-Event-Id", "webhook-id"]),
        field(&["X-WSS-Event-Type"]),
        field(&["X-WSS-Attempt"]),
        printable(&String::from_utf8_lossy(body), SHOWN_BODY_CHARS),
    );
    match verdict {
        Ok(()) => format!("✔ verified  {details}"),
        Err(rejection) => format!("✘ rejected  ({rejection})  {details}"),
    }
}

/// The first value of a header, by case-insensitive name.
fn header<'a>(headers: &[(&str, &'a str)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|&(_, v)| v)
}

/// One terminal-safe line: control characters escaped, at most `max` characters kept.
fn printable(text: &str, max: usize) -> String {
    let mut out = String::new();
    for (shown, c) in text.chars().enumerate() {
        if shown == max {
            out.push_str(&format!("… ({} bytes in all)", text.len()));
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::net::TcpStream;
    use std::time::UNIX_EPOCH;

    const BODY: &[u8] = br#"{"order_id":"A-1001","status":"shipped"}"#;

    fn wss(secret: &str) -> Scheme {
        Scheme::Wss { secret: secret.as_bytes().to_vec() }
    }

    #[test]
    fn lines_show_the_event_and_the_reason() {
        let ts = "1767225600";
        let now = UNIX_EPOCH + Duration::from_secs(1_767_225_600);
        let sig = signature::sign(b"s3cret", ts, BODY);
        let headers = [
            ("x-wss-timestamp", ts),
            ("x-wss-signature", sig.as_str()),
            ("X-WSS-Event-Id", "1767225600000-0"),
            ("X-WSS-Event-Type", "order.status_updated"),
            ("X-WSS-Attempt", "2"),
        ];
        let ok = check(&wss("s3cret"), signature::DEFAULT_TOLERANCE, &headers, BODY, now);
        assert_eq!(
            log_line(&ok, &headers, BODY),
            r#"✔ verified  event=1767225600000-0 type=order.status_updated attempt=2  {"order_id":"A-1001","status":"shipped"}"#
        );

        let bad = check(&wss("other"), signature::DEFAULT_TOLERANCE, &headers, BODY, now);
        let line = log_line(&bad, &headers, BODY);
        assert!(line.starts_with("✘ rejected  (no signature matches"), "{line}");
        assert!(line.contains("event=1767225600000-0"), "{line}");
        assert!(!line.contains("other") && !line.contains("s3cret"), "the secret leaked: {line}");
        assert_eq!(bad.unwrap_err().status(), 401);
    }

    #[test]
    fn standard_webhooks_headers_are_required_by_name() {
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let scheme = Scheme::Standard { secret: secret.to_owned() };
        let body = br#"{"test": 2432232314}"#;
        let sig = StandardSigner::new(secret).unwrap().sign("msg_1", "1614265330", body);
        let now = UNIX_EPOCH + Duration::from_secs(1_614_265_330);
        let mut headers = vec![("Webhook-Id", "msg_1"), ("Webhook-Timestamp", "1614265330"), ("Webhook-Signature", sig.as_str())];
        assert!(check(&scheme, signature::DEFAULT_TOLERANCE, &headers, body, now).is_ok());
        assert!(log_line(&Ok(()), &headers, body).contains("event=msg_1 type=- attempt=-"));
        headers.remove(0);
        let missing = check(&scheme, signature::DEFAULT_TOLERANCE, &headers, body, now).unwrap_err();
        assert_eq!(missing.to_string(), "the webhook-id header is missing");
    }

    #[test]
    fn untrusted_text_stays_on_one_short_line() {
        assert_eq!(printable("a\nb\u{1b}[31m", 100), "a\\nb\\u{1b}[31m");
        assert_eq!(printable("ééé", 2), "éé… (6 bytes in all)");
        assert_eq!(printable("", 2), "");
    }

    #[test]
    fn a_bad_standard_secret_fails_before_listening() {
        let opts = ReceiveOptions {
            bind: "127.0.0.1:0".parse().unwrap(),
            secret: "not-a-whsec-secret".into(),
            tolerance: signature::DEFAULT_TOLERANCE,
            standard_webhooks: true,
        };
        let err = Receiver::bind(opts).err().expect("rejected");
        let shown = format!("{err:#}");
        assert!(shown.contains("whsec_") && !shown.contains("not-a-whsec-secret"), "{shown}");
    }

    /// Sends one raw HTTP/1.1 request and returns the response's status line and body.
    fn post(addr: SocketAddr, headers: &[(&str, &str)], body: &[u8]) -> (String, String) {
        let mut stream = TcpStream::connect(addr).unwrap();
        let mut request = format!("POST /hook HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        stream.write_all(request.as_bytes()).unwrap();
        stream.write_all(body).unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        let status = response.lines().next().unwrap_or_default().to_owned();
        let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
        (status, body)
    }

    /// Sends every complete line written to it down a channel.
    struct LineSink {
        partial: Vec<u8>,
        lines: crossbeam_channel::Sender<String>,
    }

    impl Write for LineSink {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.partial.extend_from_slice(buf);
            while let Some(end) = self.partial.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.partial.drain(..=end).collect();
                let line = String::from_utf8_lossy(&line).trim_end().to_owned();
                // The test may have finished; the line then has no reader.
                let _ = self.lines.send(line);
            }
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn answers_200_when_signed_and_401_or_413_with_the_reason_otherwise_one_line_each() {
        let receiver = Receiver::bind(ReceiveOptions {
            bind: "127.0.0.1:0".parse().unwrap(),
            secret: "s3cret".into(),
            tolerance: signature::DEFAULT_TOLERANCE,
            standard_webhooks: false,
        })
        .unwrap();
        let addr = receiver.local_addr();
        let (lines_tx, lines) = crossbeam_channel::unbounded();
        let sink = LineSink { partial: Vec::new(), lines: lines_tx };
        // The server thread lives until the test process exits.
        std::thread::spawn(move || receiver.serve(sink));
        // An upper bound for giving up, not a timing assertion.
        let next_line = || lines.recv_timeout(Duration::from_secs(20)).unwrap();
        assert!(next_line().starts_with("listening on http://127.0.0.1:"));

        let ts = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs().to_string();
        let sig = signature::sign(b"s3cret", &ts, BODY);
        let (status, body) = post(addr, &[("X-WSS-Timestamp", &ts), ("X-WSS-Signature", &sig)], BODY);
        assert!(status.starts_with("HTTP/1.1 200"), "{status}");
        assert_eq!(body, "ok\n");
        let line = next_line();
        assert!(line.starts_with("✔ verified  event=- "), "{line}");

        let (status, body) = post(addr, &[("X-WSS-Timestamp", &ts)], BODY);
        assert!(status.starts_with("HTTP/1.1 401"), "{status}");
        assert_eq!(body, "the X-WSS-Signature header is missing\n");
        let line = next_line();
        assert!(line.starts_with("✘ rejected  (the X-WSS-Signature header is missing)"), "{line}");

        let (status, _) = post(addr, &[("X-WSS-Timestamp", &ts), ("X-WSS-Signature", &sig)], b"{}");
        assert!(status.starts_with("HTTP/1.1 401"), "{status}");
        assert!(next_line().starts_with("✘ rejected  (no signature matches"));

        let big = vec![b'x'; MAX_BODY + 1];
        let (status, body) = post(addr, &[("X-WSS-Event-Id", "evt-big")], &big);
        assert!(status.starts_with("HTTP/1.1 413"), "{status}");
        assert_eq!(body, format!("the body is larger than {MAX_BODY} bytes\n"));
        let line = next_line();
        assert!(line.starts_with("✘ rejected  (the body is larger than 4194304 bytes)  event=evt-big"), "{line}");

        let (status, _) = post(addr, &[("Bad Header", "x")], b"");
        assert!(status.starts_with("HTTP/1.1 400"), "{status}");
        let line = next_line();
        assert!(line.starts_with("✘ rejected  (malformed request: "), "{line}");
    }
}
