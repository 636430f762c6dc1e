//! Exponential backoff between dials, bounded, with a little jitter so
//! that nodes restarted together do not redial in lockstep.

use std::time::Duration;

/// The waits before successive redials: `min`, `2·min`, ... up to `max`,
/// each stretched by up to a quarter at random.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    /// The first wait.
    min: Duration,
    /// The longest wait (before jitter).
    max: Duration,
    /// The next wait (before jitter).
    current: Duration,
}

impl Backoff {
    /// A backoff starting at `min` and doubling up to `max`.
    pub(crate) fn new(min: Duration, max: Duration) -> Self {
        Backoff {
            min,
            max,
            current: min,
        }
    }

    /// The next wait; the one after it is twice as long (up to `max`).
    pub(crate) fn next_wait(&mut self) -> Duration {
        let base = self.current;
        self.current = (self.current * 2).min(self.max);
        let jitter = getrandom::u32().unwrap_or(0) % 256;
        base + base * jitter / 1024
    }

    /// Starts over from `min` (after a connection that lasted).
    pub(crate) fn reset(&mut self) {
        self.current = self.min;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_bound_and_resets() {
        let ms = Duration::from_millis;
        let mut b = Backoff::new(ms(100), ms(350));
        let waits: Vec<Duration> = (0..5).map(|_| b.next_wait()).collect();
        let bases = [100, 200, 350, 350, 350];
        for (w, base) in waits.iter().zip(bases) {
            assert!(*w >= ms(base) && *w <= ms(base) * 5 / 4, "{w:?} vs {base}");
        }
        b.reset();
        assert!(b.next_wait() <= ms(125));
    }
}
