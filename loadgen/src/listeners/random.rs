//! The random source of the listener generator and its two samplers.
//!
//! Our own SplitMix64 instead of `rand`'s `StdRng`: its stream is fixed forever (`StdRng` may
//! change between `rand` releases, and a seed should name the same traffic in every build),
//! and it stays fast in unoptimised test builds, where the generic `rand` machinery costs
//! tens of times more per draw.

/// The splitmix64 finalizer: a bijection of u64 that scatters its input.
pub(super) fn mix64(value: u64) -> u64 {
    let mut mixed = (value ^ (value >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    mixed = (mixed ^ (mixed >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    mixed ^ (mixed >> 31)
}

/// SplitMix64 (Steele, Lea and Flood): a counter through [`mix64`].
#[derive(Debug, Clone)]
pub(super) struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    pub(super) fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    pub(super) fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix64(self.state)
    }

    /// Uniform in `0..bound` (Lemire's multiply; the bias is below 2^-40 for our bounds).
    pub(super) fn below(&mut self, bound: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(bound)) >> 64) as u64
    }

    /// Uniform in `low..=high`.
    pub(super) fn between(&mut self, low: i64, high: i64) -> i64 {
        debug_assert!(low <= high);
        low + self.below(high.abs_diff(low) + 1) as i64
    }

    /// Uniform in `[0, 1)`.
    pub(super) fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    pub(super) fn chance(&mut self, probability: f64) -> bool {
        self.unit() < probability
    }

    /// Log-uniform in `low..=high` (both positive): as likely 1–10 s as 10–100 s.
    pub(super) fn log_uniform(&mut self, low: i64, high: i64) -> i64 {
        let (log_low, log_high) = ((low as f64).ln(), (high as f64).ln());
        let value = (log_low + self.unit() * (log_high - log_low)).exp();
        (value as i64).clamp(low, high)
    }

    /// Exponentially distributed with the given mean.
    pub(super) fn exponential(&mut self, mean: f64) -> f64 {
        -mean * (1.0 - self.unit()).ln()
    }
}

/// Walker's alias method (Vose's construction): a weighted draw in constant time, from one
/// random number.
#[derive(Debug, Clone)]
pub(super) struct AliasTable {
    /// Per column: keep it when a random fraction is below the first number (a share of
    /// 2^32), else take the column named by the second. Side by side, one cache line a draw.
    columns: Box<[(u32, u32)]>,
}

impl AliasTable {
    pub(super) fn new(weights: impl IntoIterator<Item = f64>) -> Self {
        let weights: Vec<f64> = weights.into_iter().collect();
        let len = weights.len();
        let total: f64 = weights.iter().sum();
        let mut keep: Vec<f64> = weights
            .iter()
            .map(|weight| weight * len as f64 / total)
            .collect();
        let mut alias: Vec<u32> = (0..len as u32).collect();
        let (mut small, mut large): (Vec<usize>, Vec<usize>) =
            (0..len).partition(|index| keep[*index] < 1.0);
        while let (Some(&under), Some(&over)) = (small.last(), large.last()) {
            small.pop();
            alias[under] = over as u32;
            keep[over] -= 1.0 - keep[under];
            if keep[over] < 1.0 {
                large.pop();
                small.push(over);
            }
        }
        // What is left is full up to rounding.
        for index in small.into_iter().chain(large) {
            keep[index] = 1.0;
        }
        // A full column's alias is itself, so rounding its share down changes nothing.
        let columns = keep
            .into_iter()
            .zip(alias)
            .map(|(share, alias)| ((share.min(1.0) * f64::from(u32::MAX)) as u32, alias))
            .collect();
        Self { columns }
    }

    /// Zipf weights `rank^-exponent` for ranks 1..=len.
    pub(super) fn zipf(len: usize, exponent: f64) -> Self {
        Self::new((1..=len).map(|rank| (rank as f64).powf(-exponent)))
    }

    pub(super) fn len(&self) -> usize {
        self.columns.len()
    }

    pub(super) fn sample(&self, rng: &mut SplitMix64) -> usize {
        // The high half of random × len picks the column, the low half is a uniform fraction.
        let wide = u128::from(rng.next_u64()) * self.columns.len() as u128;
        let column = (wide >> 64) as usize;
        let (keep_below, alias) = self.columns[column];
        if ((wide as u64) >> 32) < u64::from(keep_below) {
            column
        } else {
            alias as usize
        }
    }

    /// A draw restricted to `0..limit`, by the weights of that prefix (by rejection, so a
    /// prefix should hold most of the weight).
    pub(super) fn sample_below(&self, rng: &mut SplitMix64, limit: usize) -> usize {
        debug_assert!(limit >= 1);
        loop {
            let index = self.sample(rng);
            if index < limit {
                return index;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frequencies(draws: usize, len: usize, mut sample: impl FnMut() -> usize) -> Vec<f64> {
        let mut counts = vec![0usize; len];
        for _ in 0..draws {
            counts[sample()] += 1;
        }
        counts
            .into_iter()
            .map(|count| count as f64 / draws as f64)
            .collect()
    }

    #[test]
    fn alias_draws_follow_the_weights() {
        let weights = [5.0, 0.0, 1.0, 3.0, 1.0];
        let alias = AliasTable::new(weights);
        let mut rng = SplitMix64::new(7);
        let observed = frequencies(200_000, 5, || alias.sample(&mut rng));
        for (observed, weight) in observed.iter().zip(weights) {
            assert!(
                (observed - weight / 10.0).abs() < 0.005,
                "{observed} vs {weight}"
            );
        }
        let first_three = frequencies(200_000, 5, || alias.sample_below(&mut rng, 3));
        assert!(
            (first_three[0] - 5.0 / 6.0).abs() < 0.005,
            "{first_three:?}"
        );
        assert_eq!(first_three[3] + first_three[4], 0.0);
        let zipf = AliasTable::zipf(1_000, 1.0);
        let top = frequencies(200_000, 1_000, || zipf.sample(&mut rng));
        assert!(
            (top[0] / top[9] - 10.0).abs() < 1.0,
            "{} vs {}",
            top[0],
            top[9]
        );
    }

    #[test]
    fn uniform_draws_stay_in_range() {
        let mut rng = SplitMix64::new(1);
        let mut seen = [false; 5];
        for _ in 0..1_000 {
            let value = rng.between(-2, 2);
            seen[(value + 2) as usize] = true;
            let unit = rng.unit();
            assert!((0.0..1.0).contains(&unit));
            assert!((10..=1_000).contains(&rng.log_uniform(10, 1_000)));
        }
        assert!(seen.iter().all(|seen| *seen));
    }
}
