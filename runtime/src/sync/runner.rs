//! When to sync: kube-proxy's bounded-frequency runner, as a pure state machine over injected
//! instants. A requested sync runs at once if the last one started at least `min_interval`
//! ago (an isolated change after a quiet period is applied immediately), otherwise when that
//! interval has passed (a burst of changes is coalesced into one sync); with nothing requested
//! a sync still runs every `max_interval` (the periodic verification). After a failure the
//! next attempt backs off exponentially from `min_interval` up to `max_interval`.

use std::time::{Duration, Instant};

/// The scheduler of sync rounds.
#[derive(Clone, Debug)]
pub struct Runner {
    min_interval: Duration,
    max_interval: Duration,
    last_run: Option<Instant>,
    requested: bool,
    failures: u32,
}

impl Runner {
    /// `min_interval` is `--min-sync-period`, `max_interval` is `--sync-period`.
    pub fn new(min_interval: Duration, max_interval: Duration) -> Runner {
        Runner {
            min_interval,
            max_interval: max_interval.max(min_interval),
            last_run: None,
            requested: false,
            failures: 0,
        }
    }

    /// Something changed: a sync should run as soon as the rate limit allows.
    pub fn request(&mut self) {
        self.requested = true;
    }

    /// Whether a sync has been requested and not yet run.
    pub fn requested(&self) -> bool {
        self.requested
    }

    /// When the next sync is due.
    pub fn deadline(&self, now: Instant) -> Instant {
        let Some(last) = self.last_run else {
            return now;
        };
        let periodic = last + self.max_interval;
        if self.failures > 0 {
            return (last + self.backoff()).min(periodic);
        }
        if self.requested {
            (last + self.min_interval).min(periodic)
        } else {
            periodic
        }
    }

    /// Whether the next sync is a periodic one (nothing requested), as of `now`.
    pub fn is_periodic(&self) -> bool {
        !self.requested && self.failures == 0
    }

    /// A sync round starts at `now`.
    pub fn started(&mut self, now: Instant) {
        self.last_run = Some(now);
        self.requested = false;
    }

    /// The round that started last succeeded or failed.
    pub fn finished(&mut self, ok: bool) {
        if ok {
            self.failures = 0;
        } else {
            self.failures = self.failures.saturating_add(1);
        }
    }

    /// Failures since the last success.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    fn backoff(&self) -> Duration {
        let factor = 1u32 << self.failures.saturating_sub(1).min(10);
        (self.min_interval.max(Duration::from_millis(100)) * factor).min(self.max_interval)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_secs(1);
    const MAX: Duration = Duration::from_secs(30);

    #[test]
    fn first_sync_is_immediate() {
        let now = Instant::now();
        assert_eq!(Runner::new(MIN, MAX).deadline(now), now);
    }

    #[test]
    fn isolated_change_runs_at_once_and_bursts_coalesce() {
        let t0 = Instant::now();
        let mut r = Runner::new(MIN, MAX);
        r.started(t0);
        r.finished(true);
        // Quiet: the next round is the periodic one.
        assert_eq!(r.deadline(t0), t0 + MAX);
        assert!(r.is_periodic());
        // A change 5 s later: due at once (the last run is more than min ago).
        let t1 = t0 + Duration::from_secs(5);
        r.request();
        assert!(r.deadline(t1) <= t1);
        r.started(t1);
        r.finished(true);
        // A burst right after: coalesced until min has passed since t1.
        r.request();
        r.request();
        assert_eq!(r.deadline(t1 + Duration::from_millis(10)), t1 + MIN);
    }

    #[test]
    fn failures_back_off_up_to_the_sync_period() {
        let t0 = Instant::now();
        let mut r = Runner::new(MIN, MAX);
        let mut last = Duration::ZERO;
        for _ in 0..12 {
            r.started(t0);
            r.finished(false);
            let wait = r.deadline(t0) - t0;
            assert!(wait >= last && wait <= MAX, "{wait:?} after {last:?}");
            last = wait;
        }
        assert_eq!(last, MAX);
        r.finished(true);
        assert_eq!(r.deadline(t0), t0 + MAX);
    }
}
