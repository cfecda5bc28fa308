//! The raw HTTP limit: what the delivery client alone achieves on this machine, measured in the
//! same run and against the same receiver as the pipeline, so that `ratio = pipeline / raw`
//! says how much of the machine's HTTP capacity the rest of wss (Redis, routing, signing,
//! bookkeeping) leaves to delivery.
//!
//! Same client, configured the same way: the agents come from `wss::http::agents` with the
//! service's sender-thread count, each thread posts through its lane as a sender does, and each
//! request is made as the sender stage makes it (per request connect and total timeouts, the
//! headers wss sends, at most 1 KiB of the response kept and 64 KiB read). The same number of threads pull request numbers from one counter and POST
//! pre-signed bodies, round robin over the webhooks' URLs: no Redis, no pipeline.

use std::{
    io::{self, Read},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::Context;
use wss::http::Agents;
use wss::signature::{WssSigner, SIGNATURE_HEADER, TIMESTAMP_HEADER};

use super::{
    receiver::{secret_of, Receiver},
    redis::EventShape,
};

/// The default policy's attempt timeout, as the sender would set it.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(15);

/// One pre-signed request.
pub(super) struct Prepared {
    pub url: String,
    pub body: Vec<u8>,
    pub headers: Vec<(&'static str, String)>,
}

/// Requests per second for `requests` POSTs from `threads` threads (after one warm-up request
/// per thread, which opens the connections), and the bench process's CPU time per request.
pub fn run(receiver: &Receiver, threads: usize, webhooks: usize, requests: u64, shape: &EventShape) -> anyhow::Result<(f64, f64)> {
    let agents = wss::http::agents(threads, true);
    let timestamp = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()).to_string();
    let prepared: Arc<Vec<Prepared>> = Arc::new(
        (0..webhooks.max(1))
            .map(|i| {
                let body = shape.body_for(i);
                let signature = WssSigner::new(secret_of(i).as_bytes()).sign(&timestamp, &body);
                let headers = vec![
                    ("Content-Type", "application/json".to_owned()),
                    (SIGNATURE_HEADER, signature),
                    (TIMESTAMP_HEADER, timestamp.clone()),
                    ("X-WSS-Event-Id", "1767225600000-0".to_owned()),
                    ("X-WSS-Event-Type", "bench.event".to_owned()),
                    ("X-WSS-Attempt", "1".to_owned()),
                ];
                Prepared { url: receiver.url(i), body, headers }
            })
            .collect(),
    );
    let total = requests + threads as u64;
    let next = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let warm = Arc::new(std::sync::Barrier::new(threads + 1));
    let go = Arc::new(std::sync::Barrier::new(threads + 1));
    let mut workers = Vec::with_capacity(threads);
    for slot in 0..threads {
        let (agents, prepared, next, failed, warm, go) =
            (agents.clone(), prepared.clone(), next.clone(), failed.clone(), warm.clone(), go.clone());
        workers.push(thread::Builder::new().name("bench-raw".into()).spawn(move || {
            // Warm-up: one request each, so that every thread has its connection.
            post(&agents, slot, &prepared[0]).unwrap_or_else(|_| {
                failed.fetch_add(1, Ordering::Relaxed);
            });
            warm.wait();
            go.wait();
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= requests {
                    return;
                }
                if post(&agents, slot, &prepared[n as usize % prepared.len()]).is_err() {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        })?);
    }
    warm.wait();
    let cpu_before = super::service::cpu_secs(std::process::id())?;
    let start = Instant::now();
    go.wait();
    for worker in workers {
        let _ = worker.join();
    }
    let elapsed = start.elapsed();
    let cpu = super::service::cpu_secs(std::process::id())? - cpu_before;
    let failed = failed.load(Ordering::Relaxed);
    anyhow::ensure!(failed == 0, "{failed} of {total} raw requests to the receiver failed");
    Ok((requests as f64 / elapsed.as_secs_f64(), cpu * 1e6 / requests as f64))
}

/// One POST from thread `slot`, made as `wss`'s sender makes it, through its lane of the agents
/// (also the bare pipeline's, [`super::bare`]).
pub(super) fn post(agents: &Agents, slot: usize, prepared: &Prepared) -> anyhow::Result<()> {
    let mut request = agents
        .agent(None, &prepared.url, slot)
        .post(&prepared.url)
        .config()
        .timeout_global(Some(ATTEMPT_TIMEOUT))
        .timeout_connect(Some(ATTEMPT_TIMEOUT))
        .build();
    for (name, value) in &prepared.headers {
        request = request.header(*name, value);
    }
    let mut response = request.send(&prepared.body[..]).context("raw POST")?;
    let status = response.status().as_u16();
    let mut limited = response.body_mut().as_reader().take(64 * 1024);
    let mut excerpt = Vec::with_capacity(256);
    (&mut limited).take(1024).read_to_end(&mut excerpt)?;
    io::copy(&mut limited, &mut io::sink())?;
    anyhow::ensure!((200..300).contains(&status), "the receiver answered {status}");
    Ok(())
}
