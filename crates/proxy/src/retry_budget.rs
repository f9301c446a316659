//! The retry budget: how many retries a worker may make, so that a sick
//! fleet is not hammered with retry storms.

/// How many retries a worker may make: a share of its recent requests, so
/// a sick fleet is not hammered with retry storms (Envoy's retry budget;
/// Linkerd's too). A small floor lets a quiet proxy still retry.
#[derive(Debug)]
pub(crate) struct RetryBudget {
    window_ms: u64,
    percent: u64,
    start_ms: u64,
    requests: u64,
    retries: u64,
    previous_requests: u64,
    previous_retries: u64,
}

/// Retries allowed in any window whatever the request count.
const MIN_RETRIES: u64 = 3;

impl RetryBudget {
    pub(crate) fn new(window_ms: u64, percent: u64) -> Self {
        Self {
            window_ms: window_ms.max(1),
            percent,
            start_ms: 0,
            requests: 0,
            retries: 0,
            previous_requests: 0,
            previous_retries: 0,
        }
    }

    fn roll(&mut self, now_ms: u64) {
        let elapsed = now_ms.saturating_sub(self.start_ms);
        if elapsed >= self.window_ms {
            let fresh = elapsed < 2 * self.window_ms;
            self.previous_requests = if fresh { self.requests } else { 0 };
            self.previous_retries = if fresh { self.retries } else { 0 };
            self.requests = 0;
            self.retries = 0;
            self.start_ms = now_ms;
        }
    }

    /// Counts a request.
    pub(crate) fn on_request(&mut self, now_ms: u64) {
        self.roll(now_ms);
        self.requests += 1;
    }

    /// Takes one retry from the budget, if any is left.
    pub(crate) fn try_retry(&mut self, now_ms: u64) -> bool {
        self.roll(now_ms);
        let requests = self.requests + self.previous_requests;
        let retries = self.retries + self.previous_retries;
        let allowed = (requests * self.percent / 100).max(MIN_RETRIES);
        if retries >= allowed {
            return false;
        }
        self.retries += 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::RetryBudget;

    #[test]
    fn the_budget_allows_a_share_of_requests_plus_a_floor() {
        let mut budget = RetryBudget::new(10_000, 20);
        for _ in 0..100 {
            budget.on_request(1_000);
        }
        let granted = (0..100).filter(|_| budget.try_retry(1_000)).count();
        assert_eq!(granted, 20);
        // A quiet proxy may still retry a little.
        let mut quiet = RetryBudget::new(10_000, 20);
        quiet.on_request(0);
        assert_eq!((0..10).filter(|_| quiet.try_retry(0)).count(), 3);
    }

    #[test]
    fn the_window_slides() {
        let mut budget = RetryBudget::new(1_000, 50);
        for _ in 0..10 {
            budget.on_request(0);
        }
        assert_eq!((0..10).filter(|_| budget.try_retry(0)).count(), 5);
        // One window later the old counts still weigh; two later they are gone.
        budget.on_request(1_500);
        assert!(!budget.try_retry(1_500));
        budget.on_request(4_000);
        assert!(budget.try_retry(4_000));
    }
}
