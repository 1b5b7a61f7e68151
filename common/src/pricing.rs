//! Pricing math, pure: parsing AWS price strings, resolving conflicting
//! reports, and the canonical hourly series.
//!
//! * **Resolution**: for one pool and one AWS timestamp, a PRIMARY's report
//!   wins; otherwise the median of the reports (the mean of the two middle
//!   values for an even count).
//! * **Hourly series**: a spot price holds until the next change, so an
//!   hour takes the time-weighted price of the step function over the part
//!   of the hour that is known. An hour with no observation but between two
//!   known points at most `max_gap` apart is filled with the price that
//!   holds through it and flagged `interpolated`. Hours before the first
//!   point, after the last one, or inside a longer gap stay empty: nothing
//!   is invented. The latest price holds until `known_until` (the time of
//!   the consolidation), at most `max_gap`. Every output lies within
//!   [min, max] of the inputs.

use std::collections::BTreeMap;

pub const HOUR_MS: i64 = 3_600_000;

/// A price in millionths of a dollar (AWS gives 6 decimals).
pub type Micros = i64;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("price {0:?} is not a non-negative decimal with at most 6 decimals")]
pub struct BadPrice(pub String);

/// "0.031400" -> 31400.
pub fn parse_price(s: &str) -> Result<Micros, BadPrice> {
    let bad = || BadPrice(s.to_owned());
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    if int.is_empty()
        || !int.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
        || frac.len() > 6
        || int.len() > 9
    {
        return Err(bad());
    }
    let int: i64 = int.parse().map_err(|_| bad())?;
    let frac_val: i64 = if frac.is_empty() {
        0
    } else {
        format!("{frac:0<6}").parse().map_err(|_| bad())?
    };
    Ok(int * 1_000_000 + frac_val)
}

/// 31400 -> "0.031400".
/// Micro-dollars as dollars (for models, which think in floats).
pub fn to_dollars(m: Micros) -> f64 {
    m as f64 / 1_000_000.0
}

pub fn format_price(m: Micros) -> String {
    format!("{}.{:06}", m / 1_000_000, m % 1_000_000)
}

/// One report of one price at one AWS timestamp.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub ts_ms: i64,
    pub price: Micros,
    pub from_primary: bool,
}

/// How a timestamp's price was decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ResolveStats {
    /// Timestamps where a PRIMARY's report overrode others that differed.
    pub primary_precedence: u64,
    /// Timestamps with differing reports and no PRIMARY: median taken.
    pub conflicts_median: u64,
}

fn median(v: &mut [Micros]) -> Micros {
    v.sort_unstable();
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2] + 1) / 2
    }
}

/// One price per timestamp, sorted by time.
pub fn resolve(reports: &[Report]) -> (Vec<(i64, Micros)>, ResolveStats) {
    let mut by_ts: BTreeMap<i64, Vec<&Report>> = BTreeMap::new();
    for r in reports {
        by_ts.entry(r.ts_ms).or_default().push(r);
    }
    let mut stats = ResolveStats::default();
    let out = by_ts
        .into_iter()
        .map(|(ts, rs)| {
            let differ = rs.iter().any(|r| r.price != rs[0].price);
            let mut primary: Vec<Micros> = rs
                .iter()
                .filter(|r| r.from_primary)
                .map(|r| r.price)
                .collect();
            let price = if !primary.is_empty() {
                if differ {
                    stats.primary_precedence += 1;
                }
                median(&mut primary)
            } else {
                if differ {
                    stats.conflicts_median += 1;
                }
                let mut all: Vec<Micros> = rs.iter().map(|r| r.price).collect();
                median(&mut all)
            };
            (ts, price)
        })
        .collect();
    (out, stats)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HourPoint {
    pub hour_ms: i64,
    pub price: Micros,
    pub interpolated: bool,
}

pub fn hour_floor(ms: i64) -> i64 {
    ms.div_euclid(HOUR_MS) * HOUR_MS
}

/// The canonical hourly series of `points` (sorted by time, one per
/// timestamp) for the hours starting in [from_hour, to_hour).
pub fn hourly(
    points: &[(i64, Micros)],
    from_hour: i64,
    to_hour: i64,
    max_gap_ms: i64,
    known_until_ms: i64,
) -> Vec<HourPoint> {
    let mut out = Vec::new();
    if points.is_empty() {
        return out;
    }
    let mut hour = hour_floor(from_hour);
    // Index of the last point at or before the hour's start.
    let mut i = 0usize;
    while hour < to_hour {
        let end = hour + HOUR_MS;
        while i + 1 < points.len() && points[i + 1].0 <= hour {
            i += 1;
        }
        // Segments of the step function inside [hour, end): each point
        // holds until the next, if the next is within max_gap.
        let mut weighted: i128 = 0;
        let mut covered: i64 = 0;
        let mut observed = false;
        let mut j = i;
        while j < points.len() && points[j].0 < end {
            let (t, p) = points[j];
            let next = points.get(j + 1).map(|n| n.0);
            if t >= hour {
                observed = true;
            }
            let seg_end = match next {
                Some(n) if n - t <= max_gap_ms => n.min(end),
                // A gap too long: nothing we can vouch for after it.
                Some(_) => t,
                // The latest price holds until now (at most max_gap).
                None => end.min(known_until_ms).min(t + max_gap_ms).max(t),
            };
            let seg_start = t.max(hour);
            if seg_end > seg_start {
                weighted += i128::from(p) * i128::from(seg_end - seg_start);
                covered += seg_end - seg_start;
            }
            j += 1;
        }
        if covered > 0 {
            let price = i64::try_from((weighted + i128::from(covered) / 2) / i128::from(covered))
                .unwrap_or(0);
            out.push(HourPoint {
                hour_ms: hour,
                price,
                interpolated: !observed,
            });
        } else if observed {
            // Only an instant is known (the last point of the series, or
            // one right before a long gap): its own price.
            if let Some(&(_, p)) = points.iter().rev().find(|(t, _)| *t >= hour && *t < end) {
                out.push(HourPoint {
                    hour_ms: hour,
                    price: p,
                    interpolated: false,
                });
            }
        }
        hour = end;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const H: i64 = HOUR_MS;
    const M: i64 = 60_000;

    fn rep(ts: i64, price: Micros, from_primary: bool) -> Report {
        Report {
            ts_ms: ts,
            price,
            from_primary,
        }
    }

    #[test]
    fn prices_parse_and_format() {
        assert_eq!(parse_price("0.031400"), Ok(31_400));
        assert_eq!(parse_price("1.5"), Ok(1_500_000));
        assert_eq!(parse_price("2"), Ok(2_000_000));
        for bad in ["", "-0.1", "0.1234567", "abc", "1e3", ".5", "0..1"] {
            assert!(parse_price(bad).is_err(), "{bad}");
        }
        assert_eq!(format_price(31_400), "0.031400");
    }

    #[test]
    fn primary_wins_over_other_reports() {
        let (p, s) = resolve(&[rep(0, 100, false), rep(0, 300, true), rep(0, 200, false)]);
        assert_eq!(p, vec![(0, 300)]);
        assert_eq!(s.primary_precedence, 1);
    }

    #[test]
    fn median_with_odd_and_even_counts() {
        let (p, s) = resolve(&[rep(0, 100, false), rep(0, 300, false), rep(0, 200, false)]);
        assert_eq!(p, vec![(0, 200)]);
        assert_eq!(s.conflicts_median, 1);
        let (p, _) = resolve(&[rep(0, 100, false), rep(0, 201, false)]);
        assert_eq!(p, vec![(0, 151)], "mean of the middle two, rounded");
        let (_, s) = resolve(&[rep(0, 100, false), rep(0, 100, false)]);
        assert_eq!(
            s,
            ResolveStats::default(),
            "agreeing reports are no conflict"
        );
    }

    #[test]
    fn time_weighted_hours_and_interpolation_flags() {
        // 0.10 from 00:00, 0.20 from 00:30, nothing in hour 1, 0.40 from 02:10.
        let pts = [(0, 100_000), (30 * M, 200_000), (2 * H + 10 * M, 400_000)];
        let s = hourly(&pts, 0, 6 * H, 24 * H, 4 * H);
        assert_eq!(s.len(), 4, "{s:?}");
        assert_eq!(
            s[0],
            HourPoint {
                hour_ms: 0,
                price: 150_000,
                interpolated: false
            }
        );
        assert_eq!(
            s[1],
            HourPoint {
                hour_ms: H,
                price: 200_000,
                interpolated: true
            }
        );
        // 10 min at 0.20, 50 min at 0.40.
        assert_eq!(
            s[2],
            HourPoint {
                hour_ms: 2 * H,
                price: 366_667,
                interpolated: false
            }
        );
        // The latest price holds until the consolidation time, not after.
        assert_eq!(
            s[3],
            HourPoint {
                hour_ms: 3 * H,
                price: 400_000,
                interpolated: true
            }
        );
    }

    #[test]
    fn the_latest_price_holds_at_most_max_gap() {
        let s = hourly(&[(0, 100_000)], 0, 10 * H, 3 * H, 10 * H);
        assert_eq!(s.len(), 3, "{s:?}");
    }

    #[test]
    fn long_gaps_stay_empty() {
        let pts = [(0, 100_000), (30 * H, 200_000)];
        let s = hourly(&pts, 0, 32 * H, 24 * H, 30 * H + 1);
        assert_eq!(
            s.iter().map(|p| p.hour_ms).collect::<Vec<_>>(),
            vec![0, 30 * H]
        );
    }

    #[test]
    fn idempotent_and_late_data_changes_only_its_hours() {
        let pts = vec![(0, 100_000), (3 * H, 200_000), (6 * H, 300_000)];
        let a = hourly(&pts, 0, 7 * H, 24 * H, 7 * H);
        assert_eq!(a, hourly(&pts, 0, 7 * H, 24 * H, 7 * H));
        let mut late = pts.clone();
        late.insert(1, (H + 30 * M, 150_000));
        let b = hourly(&late, 0, 7 * H, 24 * H, 7 * H);
        let changed: Vec<i64> = a
            .iter()
            .zip(&b)
            .filter(|(x, y)| x != y)
            .map(|(x, _)| x.hour_ms)
            .collect();
        assert_eq!(
            changed,
            vec![H, 2 * H],
            "only the hours the late point touches"
        );
    }

    proptest! {
        /// Consolidation never produces a price outside [min, max] of its inputs.
        #[test]
        fn output_within_input_range(
            raw in prop::collection::vec((0i64..200, 1i64..5_000_000, any::<bool>()), 1..60),
            gap_h in 1i64..48,
        ) {
            let reports: Vec<Report> = raw.iter().map(|(t, p, pr)| rep(t * 20 * M, *p, *pr)).collect();
            let (pts, _) = resolve(&reports);
            let lo = raw.iter().map(|r| r.1).min().unwrap();
            let hi = raw.iter().map(|r| r.1).max().unwrap();
            for h in hourly(&pts, 0, 80 * H, gap_h * H, 70 * H) {
                prop_assert!(h.price >= lo && h.price <= hi, "{h:?} outside [{lo}, {hi}]");
            }
        }
    }
}
