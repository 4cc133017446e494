//! The sensor edge: a bounded single-producer/single-consumer ring that never blocks its producer.
//!
//! Overflow policy: **drop the oldest**. The producer (a capture thread or callback) pushes with `try_push`; when
//! the ring is full it takes the consumer half with `try_lock` — never waiting — and discards the oldest items to
//! make room, counting each one. If the consumer happens to be mid-read at that instant (the lock is held), space
//! is about to appear, so the producer tries once more and, failing that, drops the incoming item instead; that
//! rare case is counted too. Every dropped item is counted in `dropped`.
//!
//! Built on the `ringbuf` crate's lock-free SPSC `HeapRb`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use ringbuf::traits::{Consumer, Observer, Producer, Split};
use ringbuf::{HeapCons, HeapProd, HeapRb};

/// Counters shared by both ends.
#[derive(Debug, Default)]
pub struct RingStats {
    /// Items accepted.
    pub pushed: AtomicU64,
    /// Items handed to the consumer.
    pub popped: AtomicU64,
    /// Items dropped because the ring was full (oldest, or in a rare race the incoming one).
    pub dropped: AtomicU64,
}

/// The producing end.
pub struct RingProducer<T> {
    prod: HeapProd<T>,
    cons: Arc<Mutex<HeapCons<T>>>,
    stats: Arc<RingStats>,
}

/// The consuming end.
pub struct RingConsumer<T> {
    cons: Arc<Mutex<HeapCons<T>>>,
    stats: Arc<RingStats>,
}

impl<T> std::fmt::Debug for RingProducer<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RingProducer")
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl<T> std::fmt::Debug for RingConsumer<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RingConsumer")
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

/// A ring of `capacity` items (at least 1).
pub fn ring<T>(capacity: usize) -> (RingProducer<T>, RingConsumer<T>) {
    let (prod, cons) = HeapRb::<T>::new(capacity.max(1)).split();
    let cons = Arc::new(Mutex::new(cons));
    let stats = Arc::new(RingStats::default());
    (
        RingProducer {
            prod,
            cons: Arc::clone(&cons),
            stats: Arc::clone(&stats),
        },
        RingConsumer { cons, stats },
    )
}

impl<T> RingProducer<T> {
    /// Pushes an item; never blocks. Returns how many items were dropped to make room (0 or 1).
    pub fn push(&mut self, item: T) -> u64 {
        let item = match self.prod.try_push(item) {
            Ok(()) => {
                self.stats.pushed.fetch_add(1, Ordering::Relaxed);
                return 0;
            }
            Err(item) => item,
        };
        // Full: drop the oldest if the consumer is not reading right now.
        let evicted = match self.cons.try_lock() {
            Ok(mut cons) => cons.try_pop().is_some(),
            Err(_) => false,
        };
        match self.prod.try_push(item) {
            Ok(()) => {
                self.stats.pushed.fetch_add(1, Ordering::Relaxed);
                if evicted {
                    self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                    1
                } else {
                    0
                }
            }
            Err(_incoming) => {
                // The consumer held the lock and had not freed space yet: drop the incoming item instead.
                self.stats.dropped.fetch_add(1 + u64::from(evicted), Ordering::Relaxed);
                1 + u64::from(evicted)
            }
        }
    }

    /// The shared counters.
    pub fn stats(&self) -> &Arc<RingStats> {
        &self.stats
    }
}

impl<T> RingConsumer<T> {
    /// Moves every queued item into `out` (oldest first); returns how many.
    pub fn drain_into(&self, out: &mut Vec<T>) -> usize {
        let mut cons = match self.cons.lock() {
            Ok(c) => c,
            Err(poisoned) => poisoned.into_inner(),
        };
        let before = out.len();
        while let Some(item) = cons.try_pop() {
            out.push(item);
        }
        let n = out.len() - before;
        self.stats.popped.fetch_add(n as u64, Ordering::Relaxed);
        n
    }

    /// Items waiting.
    pub fn len(&self) -> usize {
        match self.cons.lock() {
            Ok(c) => c.occupied_len(),
            Err(poisoned) => poisoned.into_inner().occupied_len(),
        }
    }

    /// True when nothing is waiting.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The shared counters.
    pub fn stats(&self) -> &Arc<RingStats> {
        &self.stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_drops_oldest_when_full_and_counts() {
        let (mut p, c) = ring::<u32>(3);
        for i in 0..5 {
            p.push(i);
        }
        let mut out = Vec::new();
        c.drain_into(&mut out);
        assert_eq!(out, vec![2, 3, 4]);
        assert_eq!(p.stats().dropped.load(Ordering::Relaxed), 2);
        assert_eq!(p.stats().pushed.load(Ordering::Relaxed), 5);
        assert_eq!(c.stats().popped.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn counters_balance_under_concurrency() {
        let (mut p, c) = ring::<u64>(64);
        let reader = std::thread::Builder::new()
            .name("ring-test".into())
            .spawn(move || {
                let mut got = Vec::new();
                let mut seen = 0;
                while seen < 10 {
                    got.clear();
                    if c.drain_into(&mut got) == 0 {
                        seen += 1;
                        std::thread::sleep(std::time::Duration::from_millis(1));
                    } else {
                        seen = 0;
                        assert!(got.windows(2).all(|w| w[0] < w[1]), "order kept");
                    }
                }
                c
            })
            .unwrap();
        for i in 0..100_000u64 {
            p.push(i);
        }
        let c = reader.join().unwrap();
        let s = p.stats();
        let mut rest = Vec::new();
        c.drain_into(&mut rest);
        let (pushed, popped, dropped) = (
            s.pushed.load(Ordering::Relaxed),
            s.popped.load(Ordering::Relaxed),
            s.dropped.load(Ordering::Relaxed),
        );
        // Every item offered was either delivered or dropped, exactly once.
        assert_eq!(
            popped + dropped,
            100_000,
            "pushed {pushed} popped {popped} dropped {dropped}"
        );
    }
}
