//! The queue from the signer to the sender threads: bounded, one producer, many consumers, and
//! an idle consumer sleeps at once.
//!
//! Why not a bare crossbeam channel, as between the other stages: a crossbeam receiver that finds
//! its channel empty backs off first — spins, then `sched_yield`s several times — before it parks.
//! That is right for one consumer, but 256 blocking sender threads waiting for work turned every
//! delivery into a storm of yields: in a profile of the throughput bench, three quarters of the
//! senders' context switches were those yields, and context switching was a third of wss's CPU
//! (docs/performance.md, "Context switches"). A mutex and condition variable instead made all
//! of them contend for one lock. Here the items still travel through a crossbeam channel
//! (lock-free), taken with `try_recv`, which never spins; a consumer that finds nothing puts
//! itself on a list of idle threads and parks (one futex wait), and the producer unparks them.
//!
//! The producer wakes consumers in bursts, not one per item: [`Producer::send`] queues quietly
//! until [`WAKE_AT`] items wait, and [`Producer::wake`] — called by the signer when it has
//! nothing more to hand on for the moment — wakes as many waiting consumers as there are items.
//! A woken thread preempts the one that woke it, so waking one sender per delivery cost the
//! signer a switch per delivery too; and a sender that finishes its request while items still
//! wait takes the next without sleeping at all.

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex, MutexGuard,
    },
    thread::{self, Thread},
};

use crossbeam_channel::{Receiver, Sender, TryRecvError, TrySendError};

/// Items queued before [`Producer::send`] wakes a consumer by itself, when the producer is busy
/// and has not called [`Producer::wake`].
pub const WAKE_AT: usize = 16;

/// An idle consumer: its thread, and the flag [`Idle::wake`] sets when it takes it off the list
/// (so that the woken thread need not look for itself there).
type Parked = (Thread, Arc<AtomicBool>);

thread_local! {
    /// This thread's [`Parked`] flag.
    static TAKEN: Arc<AtomicBool> = Arc::default();
}

/// The consumers that found the queue empty and parked, to be unparked one per item.
#[derive(Default)]
struct Idle(Mutex<Vec<Parked>>);

impl Idle {
    fn lock(&self) -> MutexGuard<'_, Vec<Parked>> {
        // Nothing in the list can be left half-changed by a panic.
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Unparks up to `n` idle consumers.
    fn wake(&self, n: usize) {
        if n == 0 {
            return;
        }
        let woken: Vec<Parked> = {
            let mut idle = self.lock();
            let keep = idle.len().saturating_sub(n);
            let woken = idle.split_off(keep);
            // Marked under the lock, where a consumer also registers (and clears its flag): a
            // thread that came back and registered again is never marked by a late wake.
            for (_, taken) in &woken {
                taken.store(true, Ordering::Release);
            }
            woken
        };
        for (consumer, _) in woken {
            consumer.unpark();
        }
    }
}

/// The sending end (the signer). Dropping it closes the queue.
pub struct Producer<T> {
    items: Option<Sender<T>>,
    idle: Arc<Idle>,
}

/// A receiving end (a sender thread); clone one per thread.
pub struct Consumer<T> {
    items: Receiver<T>,
    idle: Arc<Idle>,
}

impl<T> Clone for Consumer<T> {
    fn clone(&self) -> Self {
        Self { items: self.items.clone(), idle: self.idle.clone() }
    }
}

/// A queue holding at most `capacity` items.
pub fn bounded<T>(capacity: usize) -> (Producer<T>, Consumer<T>) {
    let (tx, rx) = crossbeam_channel::bounded(capacity.max(1));
    let idle = Arc::new(Idle::default());
    (Producer { items: Some(tx), idle: idle.clone() }, Consumer { items: rx, idle })
}

/// Every consumer is gone: the item comes back.
#[derive(Debug, PartialEq, Eq)]
pub struct Disconnected<T>(pub T);

impl<T> Producer<T> {
    /// Queues `item`, waiting while the queue is full; fails when no consumer is left.
    pub fn send(&self, item: T) -> Result<(), Disconnected<T>> {
        let items = self.items.as_ref().expect("the sender is only taken on drop");
        match items.try_send(item) {
            Ok(()) => {
                if items.len() >= WAKE_AT {
                    self.idle.wake(1);
                }
                Ok(())
            }
            Err(TrySendError::Disconnected(item)) => Err(Disconnected(item)),
            Err(TrySendError::Full(item)) => {
                // Full: whoever is idle must drain it before there is room.
                self.idle.wake(usize::MAX);
                items.send(item).map_err(|e| Disconnected(e.into_inner()))
            }
        }
    }

    /// Wakes as many idle consumers as items wait: the producer has nothing more for now.
    pub fn wake(&self) {
        let waiting = self.items.as_ref().map_or(0, |items| items.len());
        self.idle.wake(waiting);
    }
}

impl<T> Drop for Producer<T> {
    fn drop(&mut self) {
        // Closed first, then every idle consumer woken to see it.
        drop(self.items.take());
        self.idle.wake(usize::MAX);
    }
}

impl<T> Consumer<T> {
    /// The next item, waiting for one; `None` once the producer is gone and the queue is empty.
    pub fn recv(&self) -> Option<T> {
        loop {
            match self.items.try_recv() {
                Ok(item) => return Some(item),
                Err(TryRecvError::Disconnected) => return None,
                Err(TryRecvError::Empty) => {}
            }
            let me = thread::current();
            let taken = TAKEN.with(Arc::clone);
            {
                let mut idle = self.idle.lock();
                taken.store(false, Ordering::Relaxed);
                idle.push((me.clone(), taken.clone()));
            }
            // Looked again after registering, so that an item queued (or a close) in between
            // is not missed: its wake-up may have come before this thread was in the list.
            let found = match self.items.try_recv() {
                Ok(item) => Some(Some(item)),
                Err(TryRecvError::Disconnected) => Some(None),
                Err(TryRecvError::Empty) => {
                    thread::park();
                    None
                }
            };
            // Woken by `wake`, the thread is off the list already; otherwise (it found an item
            // itself, or the park returned spuriously) it takes itself off.
            if !taken.load(Ordering::Acquire) {
                self.leave_idle(&me);
            }
            if let Some(item) = found {
                return item;
            }
        }
    }

    fn leave_idle(&self, me: &Thread) {
        let mut idle = self.idle.lock();
        if let Some(at) = idle.iter().rposition(|(t, _)| t.id() == me.id()) {
            idle.swap_remove(at);
        }
    }

    /// Items waiting (the gauges' edge depth).
    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

impl<T> Iterator for &Consumer<T> {
    type Item = T;

    fn next(&mut self) -> Option<T> {
        self.recv()
    }
}

#[cfg(test)]
mod tests {
    use std::{thread, time::Duration};

    use super::*;

    #[test]
    fn items_come_out_in_order_and_the_end_after_the_last() {
        let (tx, rx) = bounded(4);
        for i in 0..3 {
            tx.send(i).unwrap();
        }
        assert_eq!(rx.len(), 3);
        drop(tx);
        assert_eq!((&rx).collect::<Vec<_>>(), vec![0, 1, 2]);
        assert_eq!(rx.recv(), None);
    }

    #[test]
    fn a_full_queue_holds_the_producer_until_a_consumer_takes_one() {
        let (tx, rx) = bounded(2);
        tx.send(1).unwrap();
        tx.send(2).unwrap();
        let producer = thread::spawn(move || {
            tx.send(3).unwrap();
            tx
        });
        // The producer cannot finish before an item is taken; once one is, it must.
        thread::sleep(Duration::from_millis(20));
        assert_eq!(rx.len(), 2, "a full queue takes nothing more");
        assert_eq!(rx.recv(), Some(1));
        let tx = producer.join().unwrap();
        assert_eq!(rx.len(), 2);
        drop(tx);
        assert_eq!((&rx).collect::<Vec<_>>(), vec![2, 3]);
    }

    #[test]
    fn a_waiting_consumer_gets_a_lone_item_once_the_producer_wakes_it() {
        let (tx, rx) = bounded(64);
        let consumer = thread::spawn(move || rx.recv());
        tx.send(7).unwrap();
        // Below WAKE_AT the item waits for `wake` (the producer has more coming, or calls it).
        tx.wake();
        assert_eq!(consumer.join().unwrap(), Some(7));
    }

    #[test]
    fn a_busy_producer_wakes_consumers_by_itself_past_the_threshold() {
        let (tx, rx) = bounded(1024);
        let idle = rx.idle.clone();
        let consumer = thread::spawn(move || (0..WAKE_AT).map(|_| rx.recv().unwrap()).collect::<Vec<_>>());
        // Once it is parked, no `wake` comes: the WAKE_AT-th item must wake it.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while idle.lock().is_empty() {
            assert!(std::time::Instant::now() < deadline, "the consumer never went idle");
            thread::sleep(Duration::from_millis(1));
        }
        for i in 0..WAKE_AT {
            tx.send(i).unwrap();
        }
        assert_eq!(consumer.join().unwrap(), (0..WAKE_AT).collect::<Vec<_>>());
    }

    #[test]
    fn sending_fails_once_every_consumer_is_gone_even_while_waiting_for_room() {
        let (tx, rx) = bounded(1);
        let second = rx.clone();
        tx.send(1).unwrap();
        let producer = thread::spawn(move || tx.send(2));
        drop(rx);
        drop(second);
        assert_eq!(producer.join().unwrap(), Err(Disconnected(2)));
    }

    #[test]
    fn the_idle_list_holds_each_waiting_consumer_once() {
        let (tx, rx) = bounded(8);
        let idle = rx.idle.clone();
        let consumers: Vec<_> = (0..16)
            .map(|_| {
                let rx = rx.clone();
                thread::spawn(move || (&rx).count())
            })
            .collect();
        drop(rx);
        for i in 0..20_000 {
            tx.send(i).unwrap();
            if i % 7 == 0 {
                tx.wake();
            }
        }
        tx.wake();
        // Once the queue is drained, every consumer parks: each on the list exactly once, none
        // left there by a wake-up it did not need (a stale entry would make a later wake miss).
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let ids: Vec<_> = idle.lock().iter().map(|(t, _)| t.id()).collect();
            let unique: std::collections::HashSet<_> = ids.iter().collect();
            assert_eq!(unique.len(), ids.len(), "a consumer is on the idle list twice");
            if ids.len() == 16 && tx.items.as_ref().is_some_and(|items| items.is_empty()) {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "{} of 16 consumers idle", ids.len());
            thread::sleep(Duration::from_millis(1));
        }
        drop(tx);
        assert_eq!(consumers.into_iter().map(|c| c.join().unwrap()).sum::<usize>(), 20_000);
    }

    #[test]
    fn every_item_reaches_exactly_one_of_many_waiting_consumers() {
        let (tx, rx) = bounded(8);
        let consumers: Vec<_> = (0..16)
            .map(|_| {
                let rx = rx.clone();
                thread::spawn(move || (&rx).collect::<Vec<u32>>())
            })
            .collect();
        drop(rx);
        for i in 0..10_000 {
            tx.send(i).unwrap();
        }
        drop(tx);
        let mut seen: Vec<u32> = consumers.into_iter().flat_map(|c| c.join().unwrap()).collect();
        seen.sort_unstable();
        assert_eq!(seen, (0..10_000).collect::<Vec<_>>());
    }
}
