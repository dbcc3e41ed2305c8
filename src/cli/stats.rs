//! Latency percentiles with bounded memory: a log-linear histogram (16 buckets per power of two, so a
//! reported percentile is within ~6% of the true value).

use std::time::Duration;

const SUB: u32 = 16;

/// A histogram of durations in nanoseconds.
pub struct Histogram {
    buckets: Vec<u64>,
    count: u64,
    max: u64,
    total: u128,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            buckets: vec![0; (64 * SUB) as usize],
            count: 0,
            max: 0,
            total: 0,
        }
    }
}

fn bucket(v: u64) -> usize {
    if v < u64::from(SUB) {
        return v as usize;
    }
    let exp = 63 - v.leading_zeros(); // >= 4
    let mantissa = (v >> (exp - 4)) & u64::from(SUB - 1);
    ((exp - 3) * SUB) as usize + mantissa as usize
}

fn bucket_high(i: usize) -> u64 {
    let i = i as u64;
    let sub = u64::from(SUB);
    if i < sub {
        return i;
    }
    let exp = i / sub + 3;
    let mantissa = i % sub;
    ((sub + mantissa + 1) << (exp - 4)) - 1
}

impl Histogram {
    /// Records one duration.
    pub fn record(&mut self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        if let Some(b) = self.buckets.get_mut(bucket(ns)) {
            *b += 1;
        }
        self.count += 1;
        self.max = self.max.max(ns);
        self.total += u128::from(ns);
    }

    /// How many durations were recorded.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The `q` quantile (0.0 to 1.0), as the upper bound of its bucket.
    pub fn quantile(&self, q: f64) -> Duration {
        if self.count == 0 {
            return Duration::ZERO;
        }
        let rank = ((q * self.count as f64).ceil() as u64).clamp(1, self.count);
        let mut seen = 0;
        for (i, &n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Duration::from_nanos(bucket_high(i).min(self.max));
            }
        }
        Duration::from_nanos(self.max)
    }

    /// The largest duration recorded.
    pub fn max(&self) -> Duration {
        Duration::from_nanos(self.max)
    }

    /// The buckets that hold a duration: (lowest, highest nanoseconds, count), shortest first.
    pub fn buckets(&self) -> impl Iterator<Item = (u64, u64, u64)> + '_ {
        self.buckets
            .iter()
            .enumerate()
            .filter(|(_, &n)| n > 0)
            .map(|(i, &n)| {
                let low = if i == 0 { 0 } else { bucket_high(i - 1) + 1 };
                (low, bucket_high(i), n)
            })
    }

    /// The sum of every duration recorded.
    pub fn total(&self) -> Duration {
        Duration::from_nanos(u64::try_from(self.total).unwrap_or(u64::MAX))
    }
}

/// A duration for people: `850ns`, `3.2µs`, `1.4ms`, `2.0s`.
pub fn human(d: Duration) -> String {
    let ns = d.as_nanos();
    if ns < 1_000 {
        format!("{ns}ns")
    } else if ns < 1_000_000 {
        format!("{:.1}µs", ns as f64 / 1e3)
    } else if ns < 1_000_000_000 {
        format!("{:.1}ms", ns as f64 / 1e6)
    } else {
        format!("{:.1}s", ns as f64 / 1e9)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotonic_and_tight() {
        let mut last = 0;
        for v in [0u64, 1, 15, 16, 17, 31, 32, 100, 1_000, 12_345, 1 << 40] {
            let b = bucket(v);
            assert!(b >= last);
            last = b;
            let high = bucket_high(b);
            assert!(high >= v, "{v} -> {b} -> {high}");
            assert!(high as f64 <= v as f64 * 1.07 + 1.0, "{v} -> {high}");
        }
    }

    #[test]
    fn quantiles_of_a_known_spread() {
        let mut h = Histogram::default();
        for i in 1..=1000u64 {
            h.record(Duration::from_nanos(i * 1000));
        }
        let p50 = h.quantile(0.5).as_nanos() as f64;
        assert!((500_000.0..=535_000.0).contains(&p50), "{p50}");
        assert_eq!(h.quantile(1.0), Duration::from_micros(1000));
        assert_eq!(h.count(), 1000);
        let b: Vec<(u64, u64, u64)> = h.buckets().collect();
        assert_eq!(b.iter().map(|x| x.2).sum::<u64>(), 1000);
        assert!(b.iter().all(|&(lo, hi, _)| lo <= hi));
        assert!(b.windows(2).all(|w| w[0].1 < w[1].0));
        assert!(b[0].0 <= 1000 && b[0].1 >= 1000);
    }
}
