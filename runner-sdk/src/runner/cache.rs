//! The conf cache: prepared chains by token, tokens by `key`, each entry kept
//! for a lifetime after its last use, the whole bounded in size.
//!
//! The hot path (a call looking up its token) takes a read lock only on a
//! connection's first use of a token: connections keep the `Arc<Entry>` they
//! used and check it with two atomic loads ([`ConfCache::live`]).

use crate::Chain;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::time::Instant;

/// One prepared chain.
#[derive(Debug)]
pub struct Entry {
    /// The token the host uses for it.
    pub token: u32,
    /// The chain.
    pub chain: Chain,
    key: Option<String>,
    /// Milliseconds since the cache's epoch at the last use.
    last_used: AtomicU64,
    /// Set when the entry leaves the cache, so that connections holding it
    /// stop using it.
    evicted: AtomicBool,
}

/// Why a chain could not be cached.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// Every u32 token has been handed out once.
    #[error("conf tokens exhausted: 2^32 - 1 chains prepared in this process")]
    TokensExhausted,
}

/// The shared cache.
#[derive(Debug)]
pub struct ConfCache {
    inner: RwLock<Inner>,
    /// 1.2 x `APISIX_CONF_EXPIRE_TIME`.
    lifetime: Duration,
    capacity: usize,
    epoch: Instant,
}

#[derive(Debug, Default)]
struct Inner {
    by_token: HashMap<u32, Arc<Entry>>,
    by_key: HashMap<String, u32>,
    /// The next token to hand out (never 0).
    next_token: u32,
    /// Tokens handed out so far: at 2^32 - 1 every token was used once.
    issued: u64,
}

/// A random, non-zero first token, so that a token from another runner
/// process (an earlier one the host still remembers, say) is almost never
/// valid here.
///
/// The randomness is std's `RandomState`: its SipHash keys come from the
/// operating system's random source, so hashing anything with it gives an
/// unpredictable value, with no extra dependency. Time and pid are mixed in
/// for good measure. This is not a secret: it only makes collisions between
/// processes unlikely (1 in 2^32).
fn random_first_token() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    if let Ok(now) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        hasher.write_u128(now.as_nanos());
    }
    let bits = hasher.finish();
    match (bits ^ (bits >> 32)) as u32 {
        0 => 1,
        token => token,
    }
}

/// The token after `token`, wrapping from `u32::MAX` to 1 (0 is never a token).
fn next_after(token: u32) -> u32 {
    token.checked_add(1).unwrap_or(1)
}

impl ConfCache {
    /// A cache whose entries live `lifetime` after their last use, holding at
    /// most `capacity` entries (the least recently used goes first). Tokens
    /// start at a random non-zero value and count up, wrapping and skipping 0.
    pub fn new(lifetime: Duration, capacity: usize) -> Self {
        Self::starting_at(lifetime, capacity, random_first_token())
    }

    /// As [`ConfCache::new`], with the first token given (`0` counts as 1).
    fn starting_at(lifetime: Duration, capacity: usize, first_token: u32) -> Self {
        ConfCache {
            inner: RwLock::new(Inner {
                next_token: first_token.max(1),
                ..Inner::default()
            }),
            lifetime,
            capacity: capacity.max(1),
            epoch: Instant::now(),
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// True while `entry` may be used: in the cache and not expired.
    pub fn live(&self, entry: &Entry, now_ms: u64) -> bool {
        !entry.evicted.load(Ordering::Relaxed)
            && now_ms.saturating_sub(entry.last_used.load(Ordering::Relaxed))
                <= self.lifetime.as_millis() as u64
    }

    /// Marks `entry` used now, if it is still live; else `false`.
    pub fn touch(&self, entry: &Entry) -> bool {
        let now = self.now_ms();
        if !self.live(entry, now) {
            return false;
        }
        entry.last_used.store(now, Ordering::Relaxed);
        true
    }

    /// The live entry for `token`, marked used.
    pub fn get(&self, token: u32) -> Option<Arc<Entry>> {
        let entry = self
            .inner
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .by_token
            .get(&token)
            .cloned()?;
        self.touch(&entry).then_some(entry)
    }

    /// The live token cached for `key`, marked used.
    pub fn get_by_key(&self, key: &str) -> Option<Arc<Entry>> {
        let token = *self
            .inner
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .by_key
            .get(key)?;
        self.get(token)
    }

    /// Caches `chain` under a new token, or returns the live entry already
    /// cached for `key` (two connections preparing one key at once get one
    /// token).
    ///
    /// # Errors
    /// No token is left.
    pub fn insert(&self, chain: Chain, key: Option<&str>) -> Result<Arc<Entry>, CacheError> {
        let now = self.now_ms();
        let mut inner = self.inner.write().unwrap_or_else(|p| p.into_inner());
        if let Some(key) = key {
            if let Some(entry) = inner.by_key.get(key).and_then(|t| inner.by_token.get(t)) {
                if self.live(entry, now) {
                    entry.last_used.store(now, Ordering::Relaxed);
                    return Ok(entry.clone());
                }
            }
        }
        if inner.by_token.len() >= self.capacity {
            self.sweep_locked(&mut inner, now);
        }
        if inner.by_token.len() >= self.capacity {
            let oldest = inner
                .by_token
                .values()
                .min_by_key(|e| e.last_used.load(Ordering::Relaxed))
                .map(|e| e.token);
            if let Some(token) = oldest {
                Self::remove_locked(&mut inner, token);
            }
        }
        // Unique for the life of the process: after 2^32 - 1 tokens the next
        // one would repeat one the host may still hold.
        if inner.issued >= u64::from(u32::MAX) {
            return Err(CacheError::TokensExhausted);
        }
        let token = inner.next_token;
        inner.next_token = next_after(token);
        inner.issued += 1;
        let entry = Arc::new(Entry {
            token,
            chain,
            key: key.map(str::to_owned),
            last_used: AtomicU64::new(now),
            evicted: AtomicBool::new(false),
        });
        if let Some(key) = key {
            inner.by_key.insert(key.to_owned(), token);
        }
        inner.by_token.insert(token, entry.clone());
        Ok(entry)
    }

    /// Drops every expired entry; returns how many.
    pub fn sweep(&self) -> usize {
        let now = self.now_ms();
        let mut inner = self.inner.write().unwrap_or_else(|p| p.into_inner());
        self.sweep_locked(&mut inner, now)
    }

    /// How many entries are cached (expired ones not yet swept included).
    pub fn len(&self) -> usize {
        self.inner
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .by_token
            .len()
    }

    /// True when nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn sweep_locked(&self, inner: &mut Inner, now: u64) -> usize {
        let expired: Vec<u32> = inner
            .by_token
            .values()
            .filter(|e| !self.live(e, now))
            .map(|e| e.token)
            .collect();
        for token in &expired {
            Self::remove_locked(inner, *token);
        }
        expired.len()
    }

    fn remove_locked(inner: &mut Inner, token: u32) {
        if let Some(entry) = inner.by_token.remove(&token) {
            entry.evicted.store(true, Ordering::Relaxed);
            if let Some(key) = &entry.key {
                if inner.by_key.get(key) == Some(&token) {
                    inner.by_key.remove(key);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Registry;

    fn chain() -> Chain {
        Chain::prepare(&Registry::new(), []).unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn tokens_are_unique_and_never_zero_and_keys_are_idempotent() {
        let cache = ConfCache::new(Duration::from_secs(10), 100);
        let a = cache.insert(chain(), None).unwrap().token;
        let b = cache.insert(chain(), None).unwrap().token;
        assert!(a != 0 && b != 0 && a != b);
        let k1 = cache.insert(chain(), Some("route-1#v1")).unwrap().token;
        let k2 = cache.insert(chain(), Some("route-1#v1")).unwrap().token;
        assert_eq!(k1, k2);
        assert_eq!(cache.get_by_key("route-1#v1").unwrap().token, k1);
    }

    #[test]
    fn tokens_start_at_random_and_wrap_past_zero() {
        let firsts: Vec<u32> = (0..4)
            .map(|_| {
                ConfCache::new(Duration::from_secs(10), 10)
                    .insert(chain(), None)
                    .unwrap()
                    .token
            })
            .collect();
        assert!(firsts.iter().all(|t| *t != 0));
        // Four caches starting on the same value: 1 chance in 2^96.
        assert!(firsts.iter().any(|t| *t != firsts[0]), "{firsts:?}");
        let cache = ConfCache::starting_at(Duration::from_secs(10), 10, u32::MAX - 1);
        let tokens: Vec<u32> = (0..4)
            .map(|_| cache.insert(chain(), None).unwrap().token)
            .collect();
        assert_eq!(tokens, vec![u32::MAX - 1, u32::MAX, 1, 2]);
    }

    #[test]
    fn tokens_run_out_after_every_u32_but_zero() {
        let cache = ConfCache::starting_at(Duration::from_secs(10), 10, 5);
        cache.inner.write().unwrap().issued = u64::from(u32::MAX) - 1;
        assert_eq!(cache.insert(chain(), None).unwrap().token, 5);
        assert!(matches!(
            cache.insert(chain(), None),
            Err(CacheError::TokensExhausted)
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn entries_expire_after_their_last_use() {
        let cache = ConfCache::new(Duration::from_secs(12), 100);
        let t = cache.insert(chain(), Some("k")).unwrap().token;
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(cache.get(t).is_some(), "used at 10s: lives until 22s");
        tokio::time::advance(Duration::from_secs(11)).await;
        assert!(cache.get(t).is_some(), "21s");
        tokio::time::advance(Duration::from_secs(13)).await;
        assert!(cache.get(t).is_none(), "34s: 13s after the last use");
        assert!(cache.get_by_key("k").is_none());
        let fresh = cache.insert(chain(), Some("k")).unwrap().token;
        assert_ne!(fresh, t, "an expired key gets a new token");
        assert_eq!(cache.sweep(), 1);
        assert_eq!(cache.len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn the_size_is_bounded_and_the_least_recently_used_goes() {
        let cache = ConfCache::new(Duration::from_secs(100), 2);
        let a = cache.insert(chain(), None).unwrap();
        tokio::time::advance(Duration::from_millis(5)).await;
        let b = cache.insert(chain(), None).unwrap();
        tokio::time::advance(Duration::from_millis(5)).await;
        assert!(cache.touch(&a));
        let c = cache.insert(chain(), None).unwrap();
        assert_eq!(cache.len(), 2);
        assert!(cache.get(b.token).is_none());
        assert!(
            !cache.touch(&b),
            "a connection holding the evicted entry sees it gone"
        );
        assert!(cache.get(a.token).is_some() && cache.get(c.token).is_some());
    }
}
