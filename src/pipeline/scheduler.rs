//! Retry scheduler: deliveries waiting for their next attempt, in a `BinaryHeap` ordered by due
//! time, served by one `Select` whose timer is the earliest due time (or never).
//!
//! It never blocks on its input: while a due delivery waits for room in the signer's queue (or
//! the rehydrator's), the same `Select` keeps receiving new retries. That is what keeps the
//! bounded-channel cycle (signer → sender → outcomes → scheduler → signer) free of deadlock. Its
//! size is bounded by the in-flight window, since every waiting retry belongs to an
//! unacknowledged entry. On shutdown the heap is dropped: those entries are still pending in
//! Redis, and the delivery history has their attempts and due times.
//!
//! A retry due further ahead than `in_memory_for` (`WSS_RETRY_IN_MEMORY_FOR`) is held light
//! ([`Light`]): its body, attempts and event metadata are dropped, and only what finds them again
//! is kept — the entry's ticket (with its stream id: the entry stays in the window and pending, so
//! leases and acknowledgements are unchanged), the webhook and the attempt number. A million
//! retries an hour away were 725 MiB held whole (README "Performance"). When a light retry comes
//! due it goes to `super::rehydrate`, which rebuilds it from the stream and the history off this
//! thread, since this one must never wait on Redis. Short backoffs stay whole: rebuilding costs
//! two Redis reads.
//!
//! It tells the live view (`super::live`) how many deliveries of each webhook wait in the heap,
//! for `GetWebhookStats`.

use std::{
    cmp::Ordering,
    collections::BinaryHeap,
    sync::Arc,
    time::{Duration, Instant},
};

use crossbeam_channel::{at, never, Receiver, Select, Sender};
use prometheus::IntGauge;

use super::{live::LiveView, Delivery, EntryTicket, Scheduled};

/// A retry waiting without its body and attempts, to be rebuilt when due.
#[derive(Debug)]
pub struct Light {
    /// Its entry's ticket, with the stream id to read the entry again.
    pub ticket: Arc<EntryTicket>,
    pub webhook_id: Arc<str>,
    /// Number of the attempt about to be made.
    pub attempt: u32,
}

/// What a heap slot holds. Whole deliveries are boxed so that a slot stays small for the light
/// ones, which are the many.
#[derive(Debug)]
enum Held {
    Whole(Box<Delivery>),
    Light(Light),
}

impl Held {
    /// Whole when due within `in_memory_for` of `now`, light otherwise.
    fn of(delivery: Delivery, due: Instant, now: Instant, in_memory_for: Duration) -> Self {
        if due.saturating_duration_since(now) > in_memory_for {
            let Delivery { ticket, webhook_id, attempt, .. } = delivery;
            Held::Light(Light { ticket, webhook_id, attempt })
        } else {
            Held::Whole(Box::new(delivery))
        }
    }

    fn webhook_id(&self) -> &str {
        match self {
            Held::Whole(delivery) => &delivery.webhook_id,
            Held::Light(light) => &light.webhook_id,
        }
    }
}

/// Heap entry: earliest due first, then first scheduled first.
struct Waiting {
    due: Instant,
    seq: u64,
    held: Held,
}

impl PartialEq for Waiting {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Waiting {}
impl PartialOrd for Waiting {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Waiting {
    fn cmp(&self, other: &Self) -> Ordering {
        (other.due, other.seq).cmp(&(self.due, self.seq))
    }
}

/// Where due retries go: whole ones to the signer, light ones to the rehydrator.
pub struct Outputs {
    pub whole: Sender<Delivery>,
    pub light: Sender<Light>,
}

/// `heap_size` (`wss_retry_heap_size`) is set as the heap changes: one atomic store; `live`
/// counts each webhook's waiting retries for `GetWebhookStats`.
pub fn run(input: Receiver<Scheduled>, out: Outputs, in_memory_for: Duration, heap_size: &IntGauge, shutdown: Receiver<()>, live: &LiveView) {
    let mut heap: BinaryHeap<Waiting> = BinaryHeap::new();
    let mut seq = 0u64;
    // A due retry waiting for room in the next stage's queue.
    let mut ready: Option<Held> = None;
    loop {
        if ready.is_none() && heap.peek().is_some_and(|w| w.due <= Instant::now()) {
            ready = heap.pop().map(|w| w.held);
            if let Some(held) = &ready {
                live.retries(held.webhook_id(), -1);
            }
            heap_size.set(heap.len() as i64);
        }
        let timer = match (&ready, heap.peek()) {
            (None, Some(next)) => at(next.due),
            _ => never(),
        };
        let mut select = Select::new();
        let on_input = select.recv(&input);
        let on_shutdown = select.recv(&shutdown);
        let on_timer = select.recv(&timer);
        let on_send = match &ready {
            Some(Held::Whole(_)) => Some(select.send(&out.whole)),
            Some(Held::Light(_)) => Some(select.send(&out.light)),
            None => None,
        };
        let op = select.select();
        match op.index() {
            i if i == on_input => match op.recv(&input) {
                Ok(Scheduled { due, delivery }) => {
                    live.retries(&delivery.webhook_id, 1);
                    seq += 1;
                    let held = Held::of(delivery, due, Instant::now(), in_memory_for);
                    heap.push(Waiting { due, seq, held });
                    heap_size.set(heap.len() as i64);
                }
                Err(_) => return,
            },
            i if i == on_shutdown => {
                let _ = op.recv(&shutdown);
                return;
            }
            i if i == on_timer => {
                let _ = op.recv(&timer);
            }
            i if Some(i) == on_send => {
                let sent = match ready.take().expect("a send is only offered with a ready retry") {
                    Held::Whole(delivery) => op.send(&out.whole, *delivery).is_ok(),
                    Held::Light(light) => op.send(&out.light, light).is_ok(),
                };
                if !sent {
                    return;
                }
            }
            _ => unreachable!("no other operation was offered"),
        }
    }
}

#[cfg(test)]
mod tests {
    use crossbeam_channel::bounded;

    use super::*;
    use crate::pipeline::EventMeta;

    fn delivery(name: &str) -> Delivery {
        Delivery {
            ticket: EntryTicket::new(name.into(), false),
            event: Arc::new(EventMeta::new(name, "t", "acme")),
            webhook_id: "wh".into(),
            body: Arc::from(&b"{}"[..]),
            attempt: 2,
            history: Vec::new(),
        }
    }

    #[test]
    fn deliveries_come_out_in_due_order_and_never_early() {
        let (in_tx, in_rx) = bounded(16);
        let (out_tx, out_rx) = bounded(1);
        let (stop_tx, stop_rx) = bounded::<()>(0);
        let live = Arc::new(LiveView::new(
            crate::pipeline::isolation::Settings { max_in_flight: 1, failures_to_open: 1, cooldown: Duration::from_secs(1), auto_disable_after: None },
            "test".into(),
        ));
        let view = live.clone();
        let (light_tx, _light_rx) = bounded(1);
        let out = Outputs { whole: out_tx, light: light_tx };
        let in_memory_for = Duration::from_secs(3600);
        let worker = std::thread::spawn(move || run(in_rx, out, in_memory_for, &IntGauge::new("heap", "heap").unwrap(), stop_rx, &view));
        let start = Instant::now();
        for (name, ms) in [("c", 60), ("a", 20), ("b", 40), ("now", 0)] {
            in_tx.send(Scheduled { due: start + Duration::from_millis(ms), delivery: delivery(name) }).unwrap();
        }
        let mut order = Vec::new();
        for _ in 0..4 {
            let d = out_rx.recv_timeout(Duration::from_secs(10)).unwrap();
            let expected_due = match d.event.id() { "a" => 20, "b" => 40, "c" => 60, _ => 0 };
            assert!(start.elapsed() >= Duration::from_millis(expected_due), "{} came early", d.event.id());
            order.push(d.event.id().to_owned());
        }
        assert_eq!(order, ["now", "a", "b", "c"]);
        assert_eq!(live.of("wh").waiting.retries, 0, "every delivery left the heap");
        drop(stop_tx);
        worker.join().unwrap();
    }

    #[test]
    fn only_retries_due_beyond_the_threshold_go_light() {
        let now = Instant::now();
        let limit = Duration::from_secs(30);
        for (ahead, light) in [(0, false), (29_999, false), (30_000, false), (30_001, true), (3_600_000, true)] {
            let held = Held::of(delivery("e"), now + Duration::from_millis(ahead), now, limit);
            assert_eq!(matches!(held, Held::Light(_)), light, "{ahead} ms ahead");
        }
        // Already overdue (a recovered retry whose time passed): whole.
        let earlier = now.checked_sub(Duration::from_secs(5)).unwrap_or(now);
        assert!(matches!(Held::of(delivery("e"), earlier, now, limit), Held::Whole(_)));
        match Held::of(delivery("e"), now + Duration::from_secs(60), now, limit) {
            Held::Light(light) => {
                assert_eq!((&*light.ticket.stream_id, &*light.webhook_id, light.attempt), ("e", "wh", 2), "it keeps what finds the delivery again");
            }
            Held::Whole(_) => panic!("a retry an hour away is held light"),
        }
        assert!(std::mem::size_of::<Waiting>() <= 64, "a heap slot is {} bytes", std::mem::size_of::<Waiting>());
    }

    #[test]
    fn light_retries_leave_by_their_own_channel_in_due_order() {
        let (in_tx, in_rx) = bounded(16);
        let (out_tx, out_rx) = bounded(4);
        let (light_tx, light_rx) = bounded(1);
        let (stop_tx, stop_rx) = bounded::<()>(0);
        let live = Arc::new(LiveView::new(
            crate::pipeline::isolation::Settings { max_in_flight: 1, failures_to_open: 1, cooldown: Duration::from_secs(1), auto_disable_after: None },
            "test".into(),
        ));
        let view = live.clone();
        let out = Outputs { whole: out_tx, light: light_tx };
        // Anything more than 30 ms ahead is light.
        let worker =
            std::thread::spawn(move || run(in_rx, out, Duration::from_millis(30), &IntGauge::new("heap", "heap").unwrap(), stop_rx, &view));
        let start = Instant::now();
        for (name, ms) in [("light-2", 400), ("whole", 0), ("light-1", 200)] {
            in_tx.send(Scheduled { due: start + Duration::from_millis(ms), delivery: delivery(name) }).unwrap();
        }
        assert_eq!(out_rx.recv_timeout(Duration::from_secs(10)).unwrap().event.id(), "whole");
        for (name, ms) in [("light-1", 200), ("light-2", 400)] {
            let light = light_rx.recv_timeout(Duration::from_secs(10)).unwrap();
            assert_eq!(light.ticket.stream_id, name);
            assert!(start.elapsed() >= Duration::from_millis(ms), "{name} came early");
        }
        assert!(out_rx.try_recv().is_err(), "light retries never reach the signer's queue");
        assert_eq!(live.of("wh").waiting.retries, 0, "every retry left the heap");
        drop(stop_tx);
        worker.join().unwrap();
    }
}
