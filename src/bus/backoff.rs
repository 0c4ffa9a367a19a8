//! Capped, jittered exponential backoff.

use std::time::Duration;

/// The next delay of a capped, jittered exponential backoff.
#[derive(Debug)]
pub struct Backoff {
    first: Duration,
    cap: Duration,
    current: Duration,
}

impl Backoff {
    pub fn new(first: Duration, cap: Duration) -> Backoff {
        Backoff {
            first,
            cap,
            current: first,
        }
    }

    pub fn reset(&mut self) {
        self.current = self.first;
    }

    /// Between half and all of the current delay, which then doubles up to the cap.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.current;
        self.current = (self.current * 2).min(self.cap);
        delay / 2 + delay.mul_f64(random_fraction() / 2.0)
    }
}

/// A number in [0, 1) that differs from call to call (for jitter, not for secrets).
fn random_fraction() -> f64 {
    use std::hash::{BuildHasher, RandomState};
    let bits = RandomState::new().hash_one(std::time::SystemTime::now());
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_its_cap_with_jitter() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_millis(400));
        let delays: Vec<Duration> = (0..6).map(|_| backoff.next_delay()).collect();
        assert!(delays[0] >= Duration::from_millis(50) && delays[0] <= Duration::from_millis(100));
        assert!(delays[5] >= Duration::from_millis(200) && delays[5] <= Duration::from_millis(400));
    }
}
