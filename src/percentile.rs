//! The one definition of a median and a percentile for everything ustad times: `bench`'s frame
//! and network times and the daemon's latency summaries. Nearest rank, so every reported value is
//! a time that was actually measured.
//!
//! (The threshold's quantile, `ustad_core::judge::threshold::quantile_sorted`, interpolates on
//! purpose: it is fitted on a few hundred scores and must move smoothly with the target rate.)

/// Nearest-rank percentile `q ∈ [0, 1]` of ascending `sorted` (empty → NaN).
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Sorts `values` and returns their nearest-rank median (empty → NaN).
pub fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    percentile(values, 0.5)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_is_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.99), 99.0);
        assert_eq!(percentile(&v, 0.5), 50.0);
        assert_eq!(percentile(&v, 1.0), 100.0);
        assert_eq!(percentile(&[3.0], 0.99), 3.0);
        assert!(percentile(&[], 0.5).is_nan());
    }

    #[test]
    fn median_sorts_first_and_takes_the_lower_middle() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 3.0, 2.0]), 2.0);
        assert!(median(&mut []).is_nan());
    }
}
