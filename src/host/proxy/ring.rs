//! The consistent-hash ring of `chash` upstreams: each node owns points on
//! a ring of 64-bit hashes (160 per unit of weight, as APISIX's
//! resty.chash), and a key goes to the owner of the first point at or
//! after its hash. A node's points depend only on its own address and
//! weight, so removing a node moves only the keys it owned.
//!
//! Hand-written (about 60 lines) rather than a crate: the consistent-hash
//! crates looked at either key nodes by socket address only (nodes here
//! are `host:port` names) or leave weights and virtual points to the
//! caller, which is most of this file.

/// Points per unit of a node's weight.
const POINTS_PER_WEIGHT: u64 = 160;
/// The most points a ring holds; past it every node's count is scaled
/// down alike (then removing a node may move a few other keys).
const MAX_POINTS: u64 = 1 << 20;

/// A ring over an upstream's nodes.
pub(super) struct Ring {
    /// `(hash, node index)`, sorted.
    points: Vec<(u64, usize)>,
}

/// FNV-1a, then a 64-bit finalizer (splitmix64's) so that similar inputs
/// (`node#1`, `node#2`) spread over the whole ring. Stable across builds
/// and processes: every proxy of a fleet sends a key to the same node.
pub(super) fn hash(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

impl Ring {
    /// The ring of `nodes` (`(host:port, weight)`, weights above 0).
    pub(super) fn new(nodes: &[(String, u32)]) -> Ring {
        let total: u64 = nodes
            .iter()
            .map(|(_, w)| u64::from(*w) * POINTS_PER_WEIGHT)
            .sum();
        let scale = if total > MAX_POINTS {
            MAX_POINTS as f64 / total as f64
        } else {
            1.0
        };
        let mut points = Vec::new();
        for (index, (name, weight)) in nodes.iter().enumerate() {
            let n = ((u64::from(*weight) * POINTS_PER_WEIGHT) as f64 * scale).max(1.0) as u64;
            for j in 0..n {
                points.push((hash(format!("{name}#{j}").as_bytes()), index));
            }
        }
        points.sort_unstable();
        Ring { points }
    }

    /// The nodes in ring order from `key`'s place: the first is the key's
    /// node; the next ones are where it goes when that one is skipped
    /// (unhealthy, or already tried). Each node may come more than once.
    pub(super) fn walk(&self, key: &[u8]) -> impl Iterator<Item = usize> + '_ {
        let h = hash(key);
        let start = self.points.partition_point(|&(p, _)| p < h);
        let n = self.points.len();
        (0..n).map(move |i| self.points[(start + i) % n].1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(names: &[&str]) -> Vec<(String, u32)> {
        names.iter().map(|n| ((*n).to_owned(), 1)).collect()
    }

    fn owner(ring: &Ring, nodes: &[(String, u32)], key: &str) -> String {
        let i = ring.walk(key.as_bytes()).next().unwrap();
        nodes[i].0.clone()
    }

    #[test]
    fn removing_a_node_moves_only_its_keys() {
        let all = nodes(&["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80", "10.0.0.4:80"]);
        let fewer: Vec<_> = all
            .iter()
            .filter(|(n, _)| n != "10.0.0.3:80")
            .cloned()
            .collect();
        let (before, after) = (Ring::new(&all), Ring::new(&fewer));
        let mut moved = 0;
        for k in 0..10_000 {
            let key = format!("user-{k}");
            let was = owner(&before, &all, &key);
            let now = owner(&after, &fewer, &key);
            if was == "10.0.0.3:80" {
                moved += 1;
            } else {
                assert_eq!(was, now, "key {key} moved off a node that stayed");
            }
        }
        // Its share, about a quarter, moved; no more.
        assert!((1_800..3_200).contains(&moved), "{moved} keys moved");
    }

    #[test]
    fn keys_spread_by_weight() {
        let list = vec![("a:1".to_owned(), 1), ("b:1".to_owned(), 3)];
        let ring = Ring::new(&list);
        let b = (0..20_000)
            .filter(|k| owner(&ring, &list, &k.to_string()) == "b:1")
            .count();
        assert!(
            (13_500..16_500).contains(&b),
            "{b} of 20000 on the node of weight 3"
        );
    }

    #[test]
    fn the_walk_reaches_every_node() {
        let list = nodes(&["a:1", "b:1", "c:1"]);
        let ring = Ring::new(&list);
        let mut seen: Vec<usize> = ring.walk(b"k").collect();
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen, vec![0, 1, 2]);
    }
}
