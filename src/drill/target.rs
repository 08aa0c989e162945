//! Where a random drill aims: a uniformly random instant inside a plan's
//! restorable windows (engines that archive a log), or a random snapshot
//! (engines that restore to snapshot points only), drawn from a seed.
//!
//! A seed always gives the same pick from the same windows or snapshots, in
//! every build and version (the generator is SplitMix64, written out here,
//! not a library whose output may change): a drill's report records its
//! seed, and `holdfast drill --random --seed N` aims where it aimed, as long
//! as the repository's windows have not moved since.

use chrono::{DateTime, Duration, Utc};

/// One SplitMix64 output for `seed` (Steele, Lea and Flood, 2014).
fn mix(seed: u64) -> u64 {
    let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A number in `0..n` from `seed`: the high bits of a 128-bit product, so
/// the bias is below n / 2^64.
fn below(seed: u64, n: u64) -> u64 {
    ((u128::from(mix(seed)) * u128::from(n)) >> 64) as u64
}

/// A fresh seed. Kept below 2^32 so that the report's JSON number reads
/// back exactly in any JSON reader (jq, JavaScript: doubles).
pub fn fresh_seed() -> u64 {
    let mut b = [0u8; 4];
    getrandom::fill(&mut b).expect("the OS gives random bytes");
    u64::from(u32::from_le_bytes(b))
}

/// Which of `n` snapshots (oldest first) a random drill restores; each is
/// as likely. `None` when there is none.
pub fn snapshot_index(n: usize, seed: u64) -> Option<usize> {
    (n > 0).then(|| below(seed, n as u64) as usize)
}

/// A uniformly random instant inside `windows` (each `(from, to)`, in any
/// order), in whole microseconds from a window's start (PostgreSQL's
/// timestamp resolution), never in a gap between windows and never at a
/// window's very end: a time target needs an archived transaction after it
/// to stop at, and the newest one ends the window. A window twice as long
/// is twice as likely. When every window is a single instant (a base backup
/// with nothing archived after it), one of them, each as likely. `None`
/// when there is no window or one ends before it starts.
pub fn instant_in(windows: &[(DateTime<Utc>, DateTime<Utc>)], seed: u64) -> Option<DateTime<Utc>> {
    if windows.is_empty() || windows.iter().any(|(from, to)| to < from) {
        return None;
    }
    let micros = |(from, to): &(DateTime<Utc>, DateTime<Utc>)| -> u64 {
        (*to - *from).num_microseconds().unwrap_or(i64::MAX) as u64
    };
    let total: u64 = windows
        .iter()
        .map(micros)
        .fold(0u64, |a, b| a.saturating_add(b));
    if total == 0 {
        let i = below(seed, windows.len() as u64) as usize;
        return Some(windows[i].0);
    }
    let mut offset = below(seed, total);
    for w in windows {
        let len = micros(w);
        if offset < len {
            return Some(w.0 + Duration::microseconds(offset as i64));
        }
        offset -= len;
    }
    unreachable!("an offset below the windows' total length lies in one of them")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn every_pick_lies_inside_the_window_and_the_picks_spread_over_it() {
        let (from, to) = (t("2026-03-02T08:00:00Z"), t("2026-03-02T10:00:00Z"));
        let mut quarters = [0u32; 4];
        for seed in 0..4000 {
            let at = instant_in(&[(from, to)], seed).unwrap();
            assert!(from <= at && at < to, "seed {seed}: {at}");
            quarters[((at - from).num_seconds() / 1800) as usize] += 1;
        }
        // Uniform: each half hour gets about a quarter of 4000 picks.
        for (i, n) in quarters.iter().enumerate() {
            assert!((850..=1150).contains(n), "quarter {i}: {n} of 4000");
        }
    }

    #[test]
    fn windows_with_a_gap_are_picked_from_only_inside_a_window_by_length() {
        // 1 h, then a 5 h gap (a missing WAL segment), then 3 h.
        let a = (t("2026-03-02T00:00:00Z"), t("2026-03-02T01:00:00Z"));
        let b = (t("2026-03-02T06:00:00Z"), t("2026-03-02T09:00:00Z"));
        let (mut in_a, mut in_b) = (0, 0);
        for seed in 0..4000 {
            let at = instant_in(&[a, b], seed).unwrap();
            if a.0 <= at && at < a.1 {
                in_a += 1;
            } else if b.0 <= at && at < b.1 {
                in_b += 1;
            } else {
                panic!("seed {seed}: {at} is in no window");
            }
        }
        // Three times as long, three times as likely (1000 vs 3000 expected).
        assert!(
            (850..=1150).contains(&in_a),
            "{in_a} of 4000 in the 1 h window"
        );
        assert_eq!(in_a + in_b, 4000);
    }

    #[test]
    fn single_instants_a_single_snapshot_and_nothing() {
        let one = t("2026-03-02T08:00:00Z");
        for seed in 0..50 {
            assert_eq!(instant_in(&[(one, one)], seed), Some(one));
            assert_eq!(snapshot_index(1, seed), Some(0));
        }
        // Zero-length windows only: each as likely, always one of them.
        let two = t("2026-03-03T08:00:00Z");
        let picks: Vec<_> = (0..200)
            .map(|seed| instant_in(&[(one, one), (two, two)], seed).unwrap())
            .collect();
        assert!(picks.iter().all(|p| *p == one || *p == two));
        assert!(picks.contains(&one) && picks.contains(&two));
        // A zero-length window next to a real one is an instant in time:
        // the picks land in the real one.
        let real = (t("2026-03-04T08:00:00Z"), t("2026-03-04T09:00:00Z"));
        for seed in 0..200 {
            let at = instant_in(&[(one, one), real], seed).unwrap();
            assert!(real.0 <= at && at < real.1, "seed {seed}: {at}");
        }
        assert_eq!(instant_in(&[], 7), None);
        assert_eq!(instant_in(&[(two, one)], 7), None);
        assert_eq!(snapshot_index(0, 7), None);
    }

    #[test]
    fn a_seed_gives_the_same_pick_every_time_and_every_snapshot_gets_picked() {
        let w = [(t("2026-03-02T08:00:00Z"), t("2026-03-02T10:00:00Z"))];
        assert_eq!(instant_in(&w, 42), instant_in(&w, 42));
        assert_ne!(instant_in(&w, 42), instant_in(&w, 43));
        // Pinned: a recorded seed must aim where it aimed in every version.
        assert_eq!(mix(0), 0xE220_A839_7B1D_CDAF);
        let mut seen = [0u32; 5];
        for seed in 0..1000 {
            seen[snapshot_index(5, seed).unwrap()] += 1;
        }
        for (i, n) in seen.iter().enumerate() {
            assert!((150..=250).contains(n), "snapshot {i}: {n} of 1000");
        }
        assert!(fresh_seed() <= u64::from(u32::MAX));
    }
}
