//! Retry scheduler: deliveries waiting for their next attempt, in a `BinaryHeap` ordered by due
//! time, served by one `Select` whose timer is the earliest due time (or never).
//!
//! It never blocks on its input: while a due delivery waits for room in the signer's queue, the
//! same `Select` keeps receiving new retries. That is what keeps the bounded-channel cycle
//! (signer → sender → outcomes → scheduler → signer) free of deadlock. Its size is bounded by the
//! in-flight window, since every waiting retry belongs to an unacknowledged entry.
//! On shutdown the heap is dropped: those entries are still pending in Redis.
//!
//! It tells the live view (`super::live`) how many deliveries of each webhook wait in the heap,
//! for `GetWebhookStats`.

use std::{cmp::Ordering, collections::BinaryHeap, time::Instant};

use crossbeam_channel::{at, never, Receiver, Select, Sender};
use prometheus::IntGauge;

use super::{live::LiveView, Delivery, Scheduled};

/// Heap entry: earliest due first, then first scheduled first.
struct Waiting {
    due: Instant,
    seq: u64,
    delivery: Delivery,
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

/// `heap_size` (`wss_retry_heap_size`) is set as the heap changes: one atomic store; `live`
/// counts each webhook's waiting retries for `GetWebhookStats`.
pub fn run(input: Receiver<Scheduled>, out: Sender<Delivery>, heap_size: &IntGauge, shutdown: Receiver<()>, live: &LiveView) {
    let mut heap: BinaryHeap<Waiting> = BinaryHeap::new();
    let mut seq = 0u64;
    // A due delivery waiting for room in the signer's queue.
    let mut ready: Option<Delivery> = None;
    loop {
        if ready.is_none() && heap.peek().is_some_and(|w| w.due <= Instant::now()) {
            ready = heap.pop().map(|w| w.delivery);
            if let Some(delivery) = &ready {
                live.retries(&delivery.webhook_id, -1);
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
        let on_send = ready.as_ref().map(|_| select.send(&out));
        let op = select.select();
        match op.index() {
            i if i == on_input => match op.recv(&input) {
                Ok(Scheduled { due, delivery }) => {
                    live.retries(&delivery.webhook_id, 1);
                    seq += 1;
                    heap.push(Waiting { due, seq, delivery });
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
                let delivery = ready.take().expect("a send is only offered with a ready delivery");
                if op.send(&out, delivery).is_err() {
                    return;
                }
            }
            _ => unreachable!("no other operation was offered"),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{
        sync::Arc,
        time::Duration,
    };

    use crossbeam_channel::bounded;

    use super::*;
    use crate::pipeline::{EntryTicket, EventMeta};

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
        let worker = std::thread::spawn(move || run(in_rx, out_tx, &IntGauge::new("heap", "heap").unwrap(), stop_rx, &view));
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
}
