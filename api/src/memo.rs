//! A bounded in-process cache with a TTL: post bodies and known users, so that the cached feed
//! path does not ask PostgreSQL on every request.
//!
//! Sharded `Mutex<HashMap>`s: lookups take one short lock on one shard. When a shard is full, an
//! insert first drops the expired entries and, if that is not enough, an arbitrary eighth of the
//! shard: the size bound holds, and the cache does not need an access list.
//!
//! [`Refreshed`]: one shared value (a pool, a ranked list) reloaded in the background of the
//! requests that find it too old.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, BuildHasherDefault, Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

const SHARDS: usize = 16;

/// A lifetime drawn anew in `[ttl / 2, ttl]`, for memos that are remade on a request's path.
/// Memos made together (a warm-up, the minutes after a deploy, a benchmark's burst of users)
/// would otherwise expire together, and the requests that remake them would queue behind each
/// other: with every feed source on, those requests were the slowest 1% (issue 13's p99).
/// `ttl` stays the upper bound a memo's documentation promises.
pub fn spread(ttl: Duration) -> Duration {
    // 53 random bits as a fraction in [0, 1)
    let r = (uuid::Uuid::new_v4().as_u128() >> 75) as f64 / (1u64 << 53) as f64;
    ttl.mul_f64(0.5 + 0.5 * r)
}

/// Keys being loaded, each with the [`tokio::sync::Notify`] its waiters wait on: concurrent
/// requests that miss the same memo load it once (the others wait for that load, then read the
/// memo). A cold start of many users at once asked PostgreSQL for the same neighbour lists once
/// per concurrent request.
pub struct InFlight<K> {
    loading: Mutex<HashMap<K, Arc<tokio::sync::Notify>>>,
}

/// The keys a request claimed to load: released, and their waiters woken, when it drops (also
/// when the load failed: a waiter then loads the key itself).
pub struct Claim<'a, K: Hash + Eq> {
    owner: &'a InFlight<K>,
    pub keys: Vec<K>,
}

impl<K: Hash + Eq + Clone> InFlight<K> {
    pub fn new() -> Self {
        InFlight {
            loading: Mutex::new(HashMap::new()),
        }
    }

    /// Claims the keys of `keys` nobody is loading, and returns a wait for each of the others
    /// (each wait ends when the request loading its key drops its claim).
    pub fn claim(&self, keys: &[K]) -> (Claim<'_, K>, Vec<tokio::sync::futures::OwnedNotified>) {
        let mut loading = self.loading.lock().unwrap_or_else(|p| p.into_inner());
        let mut mine = Vec::new();
        let mut waits = Vec::new();
        for k in keys {
            match loading.get(k) {
                // created under the lock: the waker cannot notify before it exists
                Some(n) => waits.push(n.clone().notified_owned()),
                None => {
                    loading.insert(k.clone(), Arc::new(tokio::sync::Notify::new()));
                    mine.push(k.clone());
                }
            }
        }
        (
            Claim {
                owner: self,
                keys: mine,
            },
            waits,
        )
    }
}

impl<K: Hash + Eq + Clone> Default for InFlight<K> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K: Hash + Eq> Drop for Claim<'_, K> {
    fn drop(&mut self) {
        let mut loading = self.owner.loading.lock().unwrap_or_else(|p| p.into_inner());
        for k in &self.keys {
            if let Some(n) = loading.remove(k) {
                n.notify_waiters();
            }
        }
    }
}

/// A fast, non-cryptographic hasher (the Fx multiply-rotate scheme) for maps keyed by UUIDs,
/// which are random already and come from the database or signed tokens; SipHash was a visible
/// share of the cached feed path's CPU.
#[derive(Default, Clone, Copy)]
pub struct IdHasher(u64);

const FX_K: u64 = 0x517c_c1b7_2722_0a95;

impl Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            self.0 = (self.0.rotate_left(5) ^ u64::from_le_bytes(b)).wrapping_mul(FX_K);
        }
    }
    fn write_usize(&mut self, n: usize) {
        self.0 = (self.0.rotate_left(5) ^ n as u64).wrapping_mul(FX_K);
    }
    fn finish(&self) -> u64 {
        // Mix the high bits down: shard selection uses the low bits.
        self.0 ^ (self.0 >> 32)
    }
}

/// `HashMap` with [`IdHasher`].
pub type IdMap<K, V> = HashMap<K, V, BuildHasherDefault<IdHasher>>;

/// The shard of a key's hash: bits the shard's own table does not use. The table takes its
/// bucket from the low bits and its tag from the top seven; sharding on the low bits left each
/// shard's keys one sixteenth of the buckets to start from, and lookups probed long chains (a
/// third of the API's CPU with every feed source on, by perf).
fn shard_of(hash: u64) -> usize {
    (hash >> 40) as usize % SHARDS
}

pub struct TtlCache<K, V> {
    shards: Vec<Mutex<IdMap<K, (Instant, V)>>>,
    hasher: BuildHasherDefault<IdHasher>,
    per_shard: usize,
    ttl: Duration,
}

impl<K: Hash + Eq + Clone, V: Clone> TtlCache<K, V> {
    /// A cache of at most `capacity` entries (rounded up to a multiple of the shard count), each
    /// kept at most `ttl`.
    pub fn new(capacity: usize, ttl: Duration) -> Self {
        let per_shard = capacity.div_ceil(SHARDS).max(1);
        TtlCache {
            shards: (0..SHARDS).map(|_| Mutex::new(IdMap::default())).collect(),
            hasher: BuildHasherDefault::default(),
            per_shard,
            ttl,
        }
    }

    fn shard(&self, k: &K) -> &Mutex<IdMap<K, (Instant, V)>> {
        &self.shards[shard_of(self.hasher.hash_one(k))]
    }

    pub fn get(&self, k: &K) -> Option<V> {
        let now = Instant::now();
        let shard = self.shard(k).lock().unwrap_or_else(|p| p.into_inner());
        match shard.get(k) {
            Some((expires, v)) if *expires > now => Some(v.clone()),
            _ => None,
        }
    }

    pub fn insert(&self, k: K, v: V) {
        let now = Instant::now();
        let mut shard = self.shard(&k).lock().unwrap_or_else(|p| p.into_inner());
        if shard.len() >= self.per_shard && !shard.contains_key(&k) {
            shard.retain(|_, (expires, _)| *expires > now);
            if shard.len() >= self.per_shard {
                let drop_n = (self.per_shard / 8).max(1);
                let victims: Vec<K> = shard.keys().take(drop_n).cloned().collect();
                for victim in victims {
                    shard.remove(&victim);
                }
            }
        }
        shard.insert(k, (now + self.ttl, v));
    }

    pub fn remove(&self, k: &K) {
        self.shard(k)
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(k);
    }

    pub fn clear(&self) {
        for s in &self.shards {
            s.lock().unwrap_or_else(|p| p.into_inner()).clear();
        }
    }

    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).len())
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Posts changed (PostgreSQL's notifications), numbered in order, the latest few remembered: what
/// was made from posts when the count was `n` (a user's hydrated list, neighbour lists with their
/// authors) is still good while none of its posts changed after `n`, so a change to one post does
/// not void what every user has memoized.
pub struct ChangeLog<K> {
    count: AtomicU64,
    /// `(number, key)`, oldest first; `None`: everything changed.
    recent: Mutex<VecDeque<(u64, Option<K>)>>,
    capacity: usize,
}

impl<K: Eq> ChangeLog<K> {
    pub fn new(capacity: usize) -> Self {
        ChangeLog {
            count: AtomicU64::new(0),
            recent: Mutex::new(VecDeque::new()),
            capacity: capacity.max(1),
        }
    }

    /// The number of changes so far: read it before reading what a memo is made from.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::SeqCst)
    }

    /// `key` changed (`None`: everything may have changed).
    pub fn record(&self, key: Option<K>) {
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        let n = self.count.fetch_add(1, Ordering::SeqCst) + 1;
        recent.push_back((n, key));
        if recent.len() > self.capacity {
            recent.pop_front();
        }
    }

    /// Whether nothing `holds` changed after the change number in `stamp` (a memo's, taken with
    /// [`ChangeLog::count`] before reading what it is made from); when so, `stamp` is brought
    /// forward, so the next check starts from now.
    pub fn still_unchanged(&self, stamp: &AtomicU64, holds: impl Fn(&K) -> bool) -> bool {
        let now = self.count();
        let at = stamp.load(Ordering::Relaxed);
        if at == now {
            return true;
        }
        let good = self.unchanged_since(at, holds);
        if good {
            stamp.fetch_max(now, Ordering::Relaxed);
        }
        good
    }

    /// Whether nothing `holds` changed after change number `since` (false when that is older
    /// than what is remembered, or everything changed since).
    pub fn unchanged_since(&self, since: u64, holds: impl Fn(&K) -> bool) -> bool {
        if self.count() == since {
            return true;
        }
        let recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        match recent.front() {
            Some(&(oldest, _)) if oldest <= since + 1 => {}
            _ => return false,
        }
        recent
            .iter()
            .filter(|(n, _)| *n > since)
            .all(|(_, k)| k.as_ref().is_some_and(|k| !holds(k)))
    }
}

/// A value reloaded when older than `max_age` (or when marked stale): one reload at a time,
/// the other callers keep the previous value meanwhile (when there is one).
pub struct Refreshed<T> {
    current: RwLock<Option<(Instant, Arc<T>)>>,
    reload: tokio::sync::Mutex<()>,
    max_age: Duration,
    // Counts mark_stale calls: a reload that a mark overtook may have read the data before the
    // change, so what it loaded is kept as already stale.
    marks: AtomicU64,
}

impl<T> Refreshed<T> {
    pub fn new(max_age: Duration) -> Self {
        Refreshed {
            current: RwLock::new(None),
            reload: tokio::sync::Mutex::new(()),
            max_age,
            marks: AtomicU64::new(0),
        }
    }

    fn current(&self) -> Option<(Instant, Arc<T>)> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The next caller reloads (the value is still served until then).
    pub fn mark_stale(&self) {
        self.marks.fetch_add(1, Ordering::SeqCst);
        if let Some(c) = self
            .current
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .as_mut()
        {
            c.0 = Instant::now()
                .checked_sub(self.max_age)
                .unwrap_or(c.0.min(Instant::now()));
        }
    }

    /// Drops the value: the next caller loads it from scratch (and waits for it).
    pub fn forget(&self) {
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// The value, reloaded by `load` (given the previous value) when it is too old; when the
    /// reload fails, the previous value if there is one, else the error.
    pub async fn get<E, F, Fut>(&self, load: F) -> Result<Arc<T>, E>
    where
        F: FnOnce(Option<Arc<T>>) -> Fut,
        Fut: std::future::Future<Output = Result<T, E>>,
    {
        let young = |c: &Option<(Instant, Arc<T>)>| {
            c.as_ref()
                .filter(|(at, _)| at.elapsed() < self.max_age)
                .map(|(_, v)| v.clone())
        };
        let current = self.current();
        if let Some(v) = young(&current) {
            return Ok(v);
        }
        let guard = match (&current, self.reload.try_lock()) {
            (_, Ok(g)) => g,
            (Some((_, old)), Err(_)) => return Ok(old.clone()),
            (None, Err(_)) => self.reload.lock().await,
        };
        let again = self.current();
        if let Some(v) = young(&again) {
            return Ok(v);
        }
        let previous = again.map(|(_, v)| v);
        let marks = self.marks.load(Ordering::SeqCst);
        let value = match load(previous.clone()).await {
            Ok(v) => Arc::new(v),
            // A failed reload keeps serving the previous value (the next caller tries again).
            Err(_) if previous.is_some() => return Ok(previous.expect("checked")),
            Err(e) => return Err(e),
        };
        let now = Instant::now();
        let loaded_at = if self.marks.load(Ordering::SeqCst) == marks {
            now
        } else {
            now.checked_sub(self.max_age).unwrap_or(now)
        };
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Some((loaded_at, value.clone()));
        drop(guard);
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_key_being_loaded_is_waited_for_and_released_when_its_claim_drops() {
        let inflight: InFlight<u32> = InFlight::new();
        let (first, waits) = inflight.claim(&[1, 2]);
        assert_eq!((first.keys.clone(), waits.len()), (vec![1, 2], 0));
        let (second, mut waits) = inflight.claim(&[2, 3]);
        assert_eq!(
            (second.keys.clone(), waits.len()),
            (vec![3], 1),
            "2 is being loaded"
        );
        let wait = waits.pop().unwrap();
        drop(first); // loaded (or failed): the waiter wakes, the key can be claimed again
        tokio::time::timeout(Duration::from_secs(5), wait)
            .await
            .expect("the waiter is woken when the claim drops");
        let (third, waits) = inflight.claim(&[1, 2, 3]);
        assert_eq!(
            (third.keys.clone(), waits.len()),
            (vec![1, 2], 1),
            "3 still claimed"
        );
    }

    #[test]
    fn spread_lifetimes_stay_within_the_ttl_and_cover_its_second_half() {
        let ttl = Duration::from_secs(10);
        let drawn: Vec<Duration> = (0..1000).map(|_| spread(ttl)).collect();
        assert!(drawn.iter().all(|d| *d >= ttl / 2 && *d <= ttl));
        // 1,000 draws: the chance that none falls in a tenth of the range is 0.9^1000
        let (lo, hi) = (drawn.iter().min().unwrap(), drawn.iter().max().unwrap());
        assert!(
            *lo < ttl.mul_f64(0.55) && *hi > ttl.mul_f64(0.95),
            "{lo:?}..{hi:?}"
        );
    }

    #[tokio::test]
    async fn refreshed_reloads_when_stale_and_keeps_the_old_value_when_a_reload_fails() {
        let r: Refreshed<u32> = Refreshed::new(Duration::from_secs(3600));
        let first = r.get(|_| async { Ok::<_, ()>(1) }).await.unwrap();
        assert_eq!(*first, 1);
        let cached = r.get(|_| async { Ok::<_, ()>(2) }).await.unwrap();
        assert_eq!(*cached, 1, "young: not reloaded");
        r.mark_stale();
        let kept = r.get(|_| async { Err::<u32, ()>(()) }).await.unwrap();
        assert_eq!(*kept, 1, "a failed reload serves the previous value");
        let next = r
            .get(|prev| async move { Ok::<_, ()>(*prev.unwrap() + 10) })
            .await
            .unwrap();
        assert_eq!(*next, 11, "the reload is given the previous value");
        r.forget();
        assert!(r.get(|_| async { Err::<u32, ()>(()) }).await.is_err());
    }

    #[tokio::test]
    async fn a_change_marked_while_reloading_is_read_by_the_next_caller() {
        let r: Refreshed<u32> = Refreshed::new(Duration::from_secs(3600));
        // the change is notified while the reload is reading: what it read may predate it
        let first = r
            .get(|_| async {
                r.mark_stale();
                Ok::<_, ()>(1)
            })
            .await
            .unwrap();
        assert_eq!(*first, 1);
        let next = r.get(|_| async { Ok::<_, ()>(2) }).await.unwrap();
        assert_eq!(*next, 2, "the value loaded across a mark is stale at once");
        let kept = r.get(|_| async { Ok::<_, ()>(3) }).await.unwrap();
        assert_eq!(*kept, 2, "a reload no mark overtook is young");
    }

    #[test]
    fn a_shards_keys_spread_over_the_low_bits_its_table_indexes_by() {
        let hasher = BuildHasherDefault::<IdHasher>::default();
        let mut low_bits = [0usize; 16];
        let mut in_shard = 0;
        for i in 0..64_000u128 {
            let id =
                uuid::Uuid::from_u128(i.wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835));
            let h = hasher.hash_one(id);
            if shard_of(h) == 3 {
                in_shard += 1;
                low_bits[(h & 15) as usize] += 1;
            }
        }
        // about 4,000 keys in the shard: every low-bit value about 250 times, none left out
        let expected = in_shard / 16;
        for (v, &n) in low_bits.iter().enumerate() {
            assert!(
                n > expected / 2 && n < expected * 2,
                "low bits {v}: {n} of {in_shard} keys: {low_bits:?}"
            );
        }
    }

    #[test]
    fn a_change_log_voids_only_what_holds_a_changed_key() {
        let log: ChangeLog<u32> = ChangeLog::new(3);
        let at = log.count();
        assert!(log.unchanged_since(at, |_| true), "nothing changed yet");
        log.record(Some(7));
        assert!(log.unchanged_since(at, |k| *k != 7), "7 is not held");
        assert!(!log.unchanged_since(at, |k| *k == 7), "7 is held");
        assert!(
            log.unchanged_since(log.count(), |_| true),
            "nothing after now"
        );
        let before_all = log.count();
        log.record(None);
        assert!(
            !log.unchanged_since(before_all, |_| false),
            "everything changed"
        );
        for k in 0..3 {
            log.record(Some(100 + k));
        }
        assert!(
            !log.unchanged_since(at, |_| false),
            "older than what is remembered: void"
        );
        let recent = log.count() - 2;
        assert!(log.unchanged_since(recent, |k| *k < 100));
        assert!(!log.unchanged_since(recent, |k| *k == 102));
    }

    #[test]
    fn stays_within_its_capacity() {
        let c = TtlCache::new(64, Duration::from_secs(60));
        for i in 0..10_000u32 {
            c.insert(i, i);
        }
        assert!(c.len() <= 64, "{} entries", c.len());
        assert_eq!(c.get(&9_999), Some(9_999), "the newest entry is kept");
    }

    #[test]
    fn entries_expire() {
        // No timing assumption: an hour is never reached within the test, a zero TTL has passed
        // by the first read, and sleeping twice a TTL guarantees at least that much time.
        let kept = TtlCache::new(64, Duration::from_secs(3600));
        kept.insert("a", 1);
        assert_eq!(kept.get(&"a"), Some(1));
        let gone = TtlCache::new(64, Duration::ZERO);
        gone.insert("a", 1);
        assert_eq!(gone.get(&"a"), None);
        let short = TtlCache::new(64, Duration::from_millis(20));
        short.insert("a", 1);
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(short.get(&"a"), None);
    }

    #[test]
    fn remove_and_clear() {
        let c = TtlCache::new(64, Duration::from_secs(60));
        c.insert(1, "x");
        c.insert(2, "y");
        c.remove(&1);
        assert_eq!(c.get(&1), None);
        assert_eq!(c.get(&2), Some("y"));
        c.clear();
        assert!(c.is_empty());
    }
}
