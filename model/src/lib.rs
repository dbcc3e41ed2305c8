//! Model checks of the store's hand-rolled protocol: `src/store/bound.rs`, compiled here with shuttle's atomics
//! in place of the standard ones, so that shuttle can explore the interleavings of threads publishing shard
//! fronts, scanning them and refreshing the bound. Run with `cargo test --manifest-path model/Cargo.toml`.

/// The atomics `bound.rs` names: shuttle's, which yield to its scheduler at every access.
mod sync {
    pub(crate) use shuttle::sync::atomic::{AtomicI64, AtomicU64, Ordering};
}

#[path = "../../src/store/bound.rs"]
#[allow(dead_code)]
mod bound;

#[cfg(test)]
mod tests {
    use super::bound::{bound_ms, Fronts};
    use shuttle::sync::Arc;
    use shuttle::thread;

    /// A scan that found nothing to evict raises the bound (what `Store::admit` does).
    fn scan(f: &Fronts) {
        let seen = f.bound();
        f.refresh(seen);
    }

    /// Each thread owns one shard (as the shard lock makes it: one writer of a front at a time) and moves its
    /// front through `times`, scanning after each step; others do the same on theirs. After every step the
    /// bound is at most the thread's own front, and at the end at most every front.
    fn race(times: &'static [&'static [i64]]) {
        let f = Arc::new(Fronts::new(times.len()));
        let handles: Vec<_> = times
            .iter()
            .enumerate()
            .map(|(i, steps)| {
                let f = Arc::clone(&f);
                thread::spawn(move || {
                    for &t in *steps {
                        f.publish(i, t);
                        assert!(bound_ms(f.bound()) <= t.min(f.front(i)), "after publish");
                        scan(&f);
                        assert!(bound_ms(f.bound()) <= f.front(i), "after a scan");
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        assert!(bound_ms(f.bound()) <= f.oldest_ms(), "at the end");
    }

    #[test]
    fn the_bound_never_exceeds_a_live_front_two_shards() {
        // A front set, popped to a later entry, emptied, and set again, against one rising.
        shuttle::check_pct(|| race(&[&[5, 9, i64::MAX, 7], &[3, 10]]), 5_000, 3);
        shuttle::check_random(|| race(&[&[5, 9, i64::MAX, 7], &[3, 10]]), 5_000);
    }

    #[test]
    fn the_bound_never_exceeds_a_live_front_three_shards() {
        shuttle::check_random(|| race(&[&[5, 9, i64::MAX], &[3, 10], &[8, 2]]), 5_000);
        shuttle::check_pct(|| race(&[&[5, 9, i64::MAX], &[3, 10], &[8, 2]]), 5_000, 3);
    }

    #[test]
    fn a_fresh_store_has_no_bound() {
        shuttle::check_random(
            || {
                let f = Fronts::new(4);
                assert_eq!(f.oldest_ms(), i64::MAX);
                assert!(bound_ms(f.bound()) >= (1 << 47));
                assert_eq!(f.oldest(0, false), None);
            },
            1,
        );
    }
}
