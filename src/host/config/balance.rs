//! The upstream's balancing: nginx's smooth weighted round robin, computed
//! once per upstream.

/// nginx's smooth weighted round robin, unrolled into one cycle.
pub(super) fn smooth_schedule(weights: &[u32]) -> Result<Vec<usize>, String> {
    fn gcd(a: u64, b: u64) -> u64 {
        if b == 0 {
            a
        } else {
            gcd(b, a % b)
        }
    }
    let g = weights.iter().fold(0u64, |g, w| gcd(g, u64::from(*w)));
    let weights: Vec<i64> = weights.iter().map(|w| (u64::from(*w) / g) as i64).collect();
    let total: i64 = weights.iter().sum();
    if total > 100_000 {
        return Err("`upstream.nodes` weights are too fine-grained (their sum over their common divisor is above 100000)".into());
    }
    let mut current = vec![0i64; weights.len()];
    let mut schedule = Vec::with_capacity(total as usize);
    for _ in 0..total {
        for (c, w) in current.iter_mut().zip(&weights) {
            *c += w;
        }
        let best = (0..current.len())
            .max_by_key(|&i| (current[i], std::cmp::Reverse(i)))
            .unwrap_or(0);
        current[best] -= total;
        schedule.push(best);
    }
    Ok(schedule)
}
