//! How much to measure: the full run (≈ 4–6 minutes of measuring on 2 cores, plus the build)
//! and a quick smoke run for development (numbers not for publishing).

use super::connect::scene::Policy;

#[derive(Debug, Clone)]
pub struct Plan {
    /// Set sizes for the guard and the nftables variants.
    pub sizes: Vec<usize>,
    /// Interleaved rounds of the connect loops; each result is the median over rounds.
    pub rounds: usize,
    /// Connects per batch; each round runs one batch per variant and destination.
    pub iters: usize,
    /// Rounds of the per-program (bpf_stats) batches, and connects per batch.
    pub stats_rounds: usize,
    pub stats_iters: usize,
    /// Trials per update-latency event (≥ 100 for a p99).
    pub update_trials: usize,
    /// Timed deliveries per size and client.
    pub delivery_runs: usize,
    /// Traced runs for the peak RSS.
    pub rss_runs: usize,
    /// Runs of the NAT loop per path.
    pub nat_runs: usize,
    pub quick: bool,
}

impl Plan {
    pub fn full() -> Plan {
        Plan {
            sizes: vec![10, 10_000, 1_000_000],
            rounds: 100,
            iters: 200,
            stats_rounds: 5,
            stats_iters: 2000,
            update_trials: 200,
            delivery_runs: 41,
            rss_runs: 5,
            nat_runs: 21,
            quick: false,
        }
    }

    pub fn quick() -> Plan {
        Plan {
            sizes: vec![10, 10_000],
            rounds: 20,
            iters: 100,
            stats_rounds: 2,
            stats_iters: 300,
            update_trials: 20,
            delivery_runs: 5,
            rss_runs: 2,
            nat_runs: 3,
            quick: true,
        }
    }

    /// No policy, then the guard at each size, then nftables at each size.
    pub fn policies(&self) -> Vec<Policy> {
        let mut p = vec![Policy::Bare];
        p.extend(self.sizes.iter().map(|&n| Policy::Guard(n)));
        p.extend(self.sizes.iter().map(|&n| Policy::Nft(n)));
        p
    }
}
