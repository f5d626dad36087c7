//! Figures for the benchmarks: medians and spreads of repeated runs.

/// The median of `values` (the upper middle for an even count); NaN when
/// there are none.
pub fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted.get(sorted.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Median, smallest and largest of a series of runs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Spread {
    pub fn of(values: &[f64]) -> Self {
        let min = values.iter().copied().reduce(f64::min).unwrap_or(f64::NAN);
        let max = values.iter().copied().reduce(f64::max).unwrap_or(f64::NAN);
        Self { median: median(values), min, max }
    }
}

impl std::fmt::Display for Spread {
    /// `median (min–max)`, with the precision given (`{:.2}`).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let p = f.precision().unwrap_or(2);
        write!(f, "{:.p$} ({:.p$}–{:.p$})", self.median, self.min, self.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_median_is_the_middle_value_whatever_the_order() {
        assert_eq!(median(&[5.0, 1.0, 3.0]), 3.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 3.0);
        assert!(median(&[]).is_nan());
    }

    #[test]
    fn a_spread_shows_median_and_range() {
        let s = Spread::of(&[2.0, 9.5, 4.25]);
        assert_eq!(s, Spread { median: 4.25, min: 2.0, max: 9.5 });
        assert_eq!(format!("{s:.1}"), "4.2 (2.0–9.5)");
    }
}
