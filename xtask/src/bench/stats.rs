//! Robust summaries (medians and percentiles: a noisy, shared 2-core machine has long tails)
//! and number formatting for the tables.

/// The value at quantile `q` (0..=1) of `v`, nearest rank; 0 for an empty slice.
pub fn quantile(v: &[f64], q: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let rank = ((q * s.len() as f64).ceil() as usize).clamp(1, s.len());
    s[rank - 1]
}

pub fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

/// Nanoseconds with thousands separators: `12 345 ns`.
pub fn ns(v: f64) -> String {
    format!("{} ns", group(v.round() as u64))
}

/// Milliseconds, 2 decimals below 10, 1 decimal above.
pub fn ms(v: f64) -> String {
    if v < 10.0 {
        format!("{v:.2} ms")
    } else {
        format!("{v:.1} ms")
    }
}

/// A ratio against a baseline: `×1.02`.
pub fn ratio(v: f64, base: f64) -> String {
    if base <= 0.0 {
        return "–".to_string();
    }
    format!("×{:.2}", v / base)
}

/// 1234567 → "1 234 567" (thin, unambiguous grouping).
pub fn group(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(' ');
        }
        out.push(c);
    }
    out
}

/// KiB as MB with two decimals (1 MB = 10^6 bytes, as the figures).
pub fn mb(kib: f64) -> String {
    format!("{:.2} MB", kib * 1024.0 / 1e6)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_quantiles() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&v, 0.5), 50.0);
        assert_eq!(quantile(&v, 0.99), 99.0);
        assert_eq!(quantile(&v, 1.0), 100.0);
        assert_eq!(quantile(&[], 0.5), 0.0);
    }

    #[test]
    fn formatting() {
        assert_eq!(group(1_234_567), "1 234 567");
        assert_eq!(group(12), "12");
        assert_eq!(ns(1234.4), "1 234 ns");
        assert_eq!(ratio(110.0, 100.0), "×1.10");
        assert_eq!(ms(1.234), "1.23 ms");
        assert_eq!(ms(12.34), "12.3 ms");
    }
}
