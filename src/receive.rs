//! `wss receive`: a demo webhook endpoint, for a newcomer's first delivery and for checking a
//! secret by hand.
//!
//! It is deliberately what a real receiver should be, and nothing more: read the *raw* body,
//! verify it with the same [`crate::signature`] functions the sender is tested against, answer
//! `200 ok` or `401 <reason>`, and show one line per request on stdout (flushed, so it reads live
//! through a pipe). It is not part of the delivery pipeline, touches no Redis key, and runs one
//! blocking thread: a demo needs no concurrency, and requests are shown in arrival order.
//!
//! The secret is never printed. Bodies and header values come from whoever connects, so control
//! characters in them are escaped and long bodies shortened before they reach the terminal.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;

use crate::signature::{self, StandardSigner, VerifyError};

/// A larger body is refused with 413 without being verified (the event size limit is 256 KiB).
const MAX_BODY: u64 = 4 * 1024 * 1024;
/// Characters of the body shown per line; the rest is summarised.
const SHOWN_BODY_CHARS: usize = 2000;
/// Characters of a header value shown per line.
const SHOWN_HEADER_CHARS: usize = 128;

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

/// A bound demo receiver; [`Receiver::serve`] answers requests.
pub struct Receiver {
    server: tiny_http::Server,
    addr: SocketAddr,
    scheme: Scheme,
    tolerance: Duration,
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
        anyhow::ensure!(
            !opts.secret.is_empty(),
            "--secret is empty: pass the webhook's secret"
        );
        let scheme = if opts.standard_webhooks {
            StandardSigner::new(&opts.secret)
                .context("--secret is not a usable Standard Webhooks secret")?;
            Scheme::Standard {
                secret: opts.secret,
            }
        } else {
            Scheme::Wss {
                secret: opts.secret.into_bytes(),
            }
        };
        let server = tiny_http::Server::http(opts.bind)
            .map_err(anyhow::Error::from_boxed)
            .with_context(|| format!("cannot listen on {}", opts.bind))?;
        let addr = server
            .server_addr()
            .to_ip()
            .context("the listener has no IP address")?;
        Ok(Receiver {
            server,
            addr,
            scheme,
            tolerance: opts.tolerance,
        })
    }

    /// The address actually listened on (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Answers requests one at a time, writing one line per request to `out`. Returns only if
    /// `out` fails (e.g. the pipe it wrote to was closed).
    pub fn serve(self, mut out: impl Write) -> anyhow::Result<()> {
        writeln!(
            out,
            "listening on http://{} — verifying with the given secret",
            self.addr
        )
        .and_then(|()| out.flush())
        .context("cannot write to stdout")?;
        for mut request in self.server.incoming_requests() {
            let mut body = Vec::new();
            let read = request
                .as_reader()
                .take(MAX_BODY + 1)
                .read_to_end(&mut body);
            let headers: Vec<(&str, &str)> = request
                .headers()
                .iter()
                .map(|h| (h.field.as_str().as_str(), h.value.as_str()))
                .collect();
            let verdict = match read {
                Err(err) => Err(Rejection::BodyUnreadable(err)),
                Ok(_) if body.len() as u64 > MAX_BODY => Err(Rejection::BodyTooLarge),
                Ok(_) => check(
                    &self.scheme,
                    self.tolerance,
                    &headers,
                    &body,
                    SystemTime::now(),
                ),
            };
            let line = log_line(&verdict, &headers, &body);
            drop(headers);

            let response = match &verdict {
                Ok(()) => tiny_http::Response::from_string("ok\n"),
                Err(rejection) => tiny_http::Response::from_string(format!("{rejection}\n"))
                    .with_status_code(rejection.status()),
            };
            if let Err(err) = request.respond(response) {
                log::warn!(target: "wss::receive", "could not send the response: {err}");
            }
            writeln!(out, "{line}")
                .and_then(|()| out.flush())
                .context("cannot write to stdout")?;
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
    #[error("the body is larger than {MAX_BODY} bytes")]
    BodyTooLarge,
    #[error("the body could not be read: {0}")]
    BodyUnreadable(#[source] io::Error),
}

impl Rejection {
    fn status(&self) -> u16 {
        match self {
            Rejection::Verify(_) | Rejection::MissingHeader(_) => 401,
            Rejection::BodyTooLarge => 413,
            Rejection::BodyUnreadable(_) => 400,
        }
    }
}

fn check(
    scheme: &Scheme,
    tolerance: Duration,
    headers: &[(&str, &str)],
    body: &[u8],
    now: SystemTime,
) -> Result<(), Rejection> {
    match scheme {
        Scheme::Wss { secret } => {
            signature::verify_headers(secret, headers.iter().copied(), body, tolerance, now)?;
        }
        Scheme::Standard { secret } => {
            let required =
                |name: &'static str| header(headers, name).ok_or(Rejection::MissingHeader(name));
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
        names
            .iter()
            .find_map(|name| header(headers, name))
            .map_or_else(
                || "-".to_owned(),
                |value| printable(value, SHOWN_HEADER_CHARS),
            )
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
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|&(_, v)| v)
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
    use std::net::TcpStream;
    use std::time::UNIX_EPOCH;

    const BODY: &[u8] = br#"{"order_id":"A-1001","status":"shipped"}"#;

    fn wss(secret: &str) -> Scheme {
        Scheme::Wss {
            secret: secret.as_bytes().to_vec(),
        }
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
        let ok = check(
            &wss("s3cret"),
            signature::DEFAULT_TOLERANCE,
            &headers,
            BODY,
            now,
        );
        assert_eq!(
            log_line(&ok, &headers, BODY),
            r#"✔ verified  event=1767225600000-0 type=order.status_updated attempt=2  {"order_id":"A-1001","status":"shipped"}"#
        );

        let bad = check(
            &wss("other"),
            signature::DEFAULT_TOLERANCE,
            &headers,
            BODY,
            now,
        );
        let line = log_line(&bad, &headers, BODY);
        assert!(
            line.starts_with("✘ rejected  (no signature matches"),
            "{line}"
        );
        assert!(line.contains("event=1767225600000-0"), "{line}");
        assert!(
            !line.contains("other") && !line.contains("s3cret"),
            "the secret leaked: {line}"
        );
        assert_eq!(bad.unwrap_err().status(), 401);
    }

    #[test]
    fn standard_webhooks_headers_are_required_by_name() {
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let scheme = Scheme::Standard {
            secret: secret.to_owned(),
        };
        let body = br#"{"test": 2432232314}"#;
        let sig = StandardSigner::new(secret)
            .unwrap()
            .sign("msg_1", "1614265330", body);
        let now = UNIX_EPOCH + Duration::from_secs(1_614_265_330);
        let mut headers = vec![
            ("Webhook-Id", "msg_1"),
            ("Webhook-Timestamp", "1614265330"),
            ("Webhook-Signature", sig.as_str()),
        ];
        assert!(check(&scheme, signature::DEFAULT_TOLERANCE, &headers, body, now).is_ok());
        assert!(log_line(&Ok(()), &headers, body).contains("event=msg_1 type=- attempt=-"));
        headers.remove(0);
        let missing =
            check(&scheme, signature::DEFAULT_TOLERANCE, &headers, body, now).unwrap_err();
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
        assert!(
            shown.contains("whsec_") && !shown.contains("not-a-whsec-secret"),
            "{shown}"
        );
    }

    /// Sends one raw HTTP/1.1 request and returns the response's status line and body.
    fn post(addr: SocketAddr, headers: &[(&str, &str)], body: &[u8]) -> (String, String) {
        let mut stream = TcpStream::connect(addr).unwrap();
        let mut request = format!(
            "POST /hook HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
            body.len()
        );
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        stream.write_all(request.as_bytes()).unwrap();
        stream.write_all(body).unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        let status = response.lines().next().unwrap_or_default().to_owned();
        let body = response
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        (status, body)
    }

    #[test]
    fn answers_200_when_signed_and_401_with_the_reason_otherwise() {
        let receiver = Receiver::bind(ReceiveOptions {
            bind: "127.0.0.1:0".parse().unwrap(),
            secret: "s3cret".into(),
            tolerance: signature::DEFAULT_TOLERANCE,
            standard_webhooks: false,
        })
        .unwrap();
        let addr = receiver.local_addr();
        // The server thread lives until the test process exits.
        std::thread::spawn(move || receiver.serve(io::sink()));

        let ts = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
            .to_string();
        let sig = signature::sign(b"s3cret", &ts, BODY);
        let (status, body) = post(
            addr,
            &[("X-WSS-Timestamp", &ts), ("X-WSS-Signature", &sig)],
            BODY,
        );
        assert!(status.starts_with("HTTP/1.1 200"), "{status}");
        assert_eq!(body, "ok\n");

        let (status, body) = post(addr, &[("X-WSS-Timestamp", &ts)], BODY);
        assert!(status.starts_with("HTTP/1.1 401"), "{status}");
        assert_eq!(body, "the X-WSS-Signature header is missing\n");

        let (status, _) = post(
            addr,
            &[("X-WSS-Timestamp", &ts), ("X-WSS-Signature", &sig)],
            b"{}",
        );
        assert!(status.starts_with("HTTP/1.1 401"), "{status}");
    }
}
