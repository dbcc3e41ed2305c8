//! A striped event counter: every thread adds to its own cache line, a read sums the stripes. Written by
//! every decision, so it must not be one shared word that bounces between cores.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// How many stripes a counter has (a power of two); threads beyond it share stripes.
const STRIPES: usize = 16;

/// One stripe on its own cache lines (128 bytes covers adjacent-line prefetching).
#[repr(align(128))]
#[derive(Default)]
struct Stripe(AtomicU64);

/// A counter that threads add to without sharing a cache line (up to [`STRIPES`] threads).
#[derive(Default)]
pub(crate) struct Striped {
    stripes: [Stripe; STRIPES],
}

thread_local! {
    /// This thread's stripe, handed out round-robin when the thread first counts.
    static STRIPE: usize = {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        NEXT.fetch_add(1, Ordering::Relaxed) % STRIPES
    };
}

impl Striped {
    /// Adds one.
    pub fn incr(&self) {
        let i = STRIPE.try_with(|s| *s).unwrap_or(0);
        self.stripes[i].0.fetch_add(1, Ordering::Relaxed);
    }

    /// The sum of every stripe: exact once no thread is adding.
    pub fn get(&self) -> u64 {
        self.stripes
            .iter()
            .map(|s| s.0.load(Ordering::Relaxed))
            .fold(0, u64::wrapping_add)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_from_every_thread() {
        let c = Striped::default();
        std::thread::scope(|s| {
            for _ in 0..20 {
                s.spawn(|| (0..1000).for_each(|_| c.incr()));
            }
        });
        assert_eq!(c.get(), 20_000);
        assert!(std::mem::align_of::<Stripe>() >= 128);
    }
}
