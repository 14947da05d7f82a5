// fledge patch (vendor/pingora-core-idle-pool.patch): the keep-alive pool of
// idle upstream connections, without a task per connection.
//
// Pingora's pool (`pingora_pool::ConnectionPool`) watches every connection
// it keeps with a task of its own: on each release (once per request on a
// kept-alive upstream) it wraps the stream in an `Arc<Mutex>`, makes a
// oneshot channel, a `Notify` and an LRU entry and spawns a task that reads
// the idle connection under a timer; on each reuse it wakes that task,
// waits for its lock and unwraps the `Arc`. That is a spawned task, five
// allocations and a timer per request, to learn early that a server closed
// a connection it was not using.
//
// Here a released connection goes on its peer's stack (the most recently
// used is taken first) with the time it was released. It is checked when it
// is taken: past its idle timeout, closed, or with bytes the server sent
// unasked, it is dropped and the next one is tried. A sweeper task, one per
// pool, closes every second the connections that servers closed or that
// outlived their idle timeout, so none lingers on a peer that gets no more
// requests (a worker taken out of a pool). The pool holds at most `max`
// connections: a release beyond that closes the oldest idle connection,
// whichever its peer, as Pingora's LRU does. The pool's callback hears of
// every idle connection closed without reuse (expired, closed by its
// server, bytes sent unasked, pool full), not only of evictions.

use super::{test_reusable_stream, PoolCallback};
use crate::protocols::Stream;
use parking_lot::Mutex;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

const SHARDS: usize = 16;
const SWEEP_EVERY: Duration = Duration::from_secs(1);

struct Idle {
    stream: Stream,
    since: Instant,
    timeout: Option<Duration>,
}

impl Idle {
    fn expired(&self, now: Instant) -> bool {
        self.timeout
            .is_some_and(|t| now.saturating_duration_since(self.since) >= t)
    }
}

/// Keyed by a peer's reuse hash, itself a hash already: `ahash` spreads it
/// for a fraction of the cost of the standard SipHash, twice a request
/// (take and release).
type Shard = Mutex<HashMap<u64, VecDeque<Idle>, ahash::RandomState>>;

pub(crate) struct IdlePool {
    shards: Box<[Shard]>,
    held: AtomicUsize,
    max: usize,
    sweeping: AtomicBool,
    unexpected_data: Arc<AtomicU64>,
    callback: Option<PoolCallback>,
}

impl IdlePool {
    pub(crate) fn new(
        max: usize,
        unexpected_data: Arc<AtomicU64>,
        callback: Option<PoolCallback>,
    ) -> Arc<Self> {
        Arc::new(IdlePool {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::default())).collect(),
            held: AtomicUsize::new(0),
            max,
            sweeping: AtomicBool::new(false),
            unexpected_data,
            callback,
        })
    }

    fn shard(&self, key: u64) -> &Shard {
        &self.shards[(key as usize) % SHARDS]
    }

    fn left_unused(&self, idle: &Idle) {
        if let Some(callback) = &self.callback {
            callback(idle.since.elapsed());
        }
    }

    /// Keep `stream` for a later request to the peer whose reuse hash is `key`.
    pub(crate) fn put(self: &Arc<Self>, key: u64, stream: Stream, timeout: Option<Duration>) {
        if self.max == 0 {
            return;
        }
        self.start_sweeper();
        let idle = Idle {
            stream,
            since: Instant::now(),
            timeout,
        };
        if self.held.fetch_add(1, Ordering::Relaxed) >= self.max {
            // Full: make room by closing the oldest (`pop_oldest` counts it
            // out; this one stays counted in), or close this one.
            match self.pop_oldest() {
                Some(oldest) => self.left_unused(&oldest),
                None => {
                    self.held.fetch_sub(1, Ordering::Relaxed);
                    self.left_unused(&idle);
                    return;
                }
            }
        }
        self.shard(key).lock().entry(key).or_default().push_back(idle);
    }

    /// The connection idle the longest, whichever its peer; `held` counts
    /// it out. Only when the pool is full: it looks at every shard, one
    /// lock at a time.
    fn pop_oldest(&self) -> Option<Idle> {
        let mut oldest: Option<(usize, u64, Instant)> = None;
        for (i, shard) in self.shards.iter().enumerate() {
            for (key, stack) in shard.lock().iter() {
                if let Some(front) = stack.front() {
                    if oldest.is_none_or(|(_, _, since)| front.since < since) {
                        oldest = Some((i, *key, front.since));
                    }
                }
            }
        }
        let (i, key, _) = oldest?;
        let mut shard = self.shards[i].lock();
        let stack = shard.get_mut(&key)?;
        let idle = stack.pop_front()?;
        if stack.is_empty() {
            shard.remove(&key);
        }
        self.held.fetch_sub(1, Ordering::Relaxed);
        Some(idle)
    }

    /// A kept connection to the peer whose reuse hash is `key` that is still
    /// open, silent and within its idle timeout, if there is one; `accept`
    /// checks that it leads where it should.
    pub(crate) fn take(&self, key: u64, accept: impl Fn(&Stream) -> bool) -> Option<Stream> {
        let now = Instant::now();
        let mut dropped = Vec::new();
        let found = {
            let mut shard = self.shard(key).lock();
            let stack = shard.get_mut(&key)?;
            let mut found = None;
            while let Some(mut idle) = stack.pop_back() {
                self.held.fetch_sub(1, Ordering::Relaxed);
                if !idle.expired(now)
                    && accept(&idle.stream)
                    && test_reusable_stream(&mut idle.stream, &self.unexpected_data)
                {
                    found = Some(idle.stream);
                    break;
                }
                dropped.push(idle);
            }
            if stack.is_empty() {
                shard.remove(&key);
            }
            found
        };
        // Closed outside the lock.
        for idle in &dropped {
            self.left_unused(idle);
        }
        found
    }

    /// Close the connections that servers closed, that sent bytes unasked
    /// or that outlived their idle timeout.
    fn sweep(&self) {
        let now = Instant::now();
        for shard in self.shards.iter() {
            let mut dropped = Vec::new();
            {
                let mut shard = shard.lock();
                shard.retain(|_, stack| {
                    let mut kept = VecDeque::with_capacity(stack.len());
                    for mut idle in stack.drain(..) {
                        if !idle.expired(now)
                            && test_reusable_stream(&mut idle.stream, &self.unexpected_data)
                        {
                            kept.push_back(idle);
                        } else {
                            dropped.push(idle);
                        }
                    }
                    *stack = kept;
                    !stack.is_empty()
                });
            }
            self.held.fetch_sub(dropped.len(), Ordering::Relaxed);
            for idle in &dropped {
                self.left_unused(idle);
            }
        }
    }

    /// The sweeper starts with the first connection kept, on the runtime
    /// that keeps it, and ends with the pool.
    fn start_sweeper(self: &Arc<Self>) {
        if self.sweeping.load(Ordering::Relaxed) || self.sweeping.swap(true, Ordering::Relaxed) {
            return;
        }
        // Clears `sweeping` when the task ends for any reason (its runtime
        // shut down, say), so that the next release starts another.
        struct Running(Weak<IdlePool>);
        impl Drop for Running {
            fn drop(&mut self) {
                if let Some(pool) = self.0.upgrade() {
                    pool.sweeping.store(false, Ordering::Relaxed);
                }
            }
        }
        let pool: Weak<IdlePool> = Arc::downgrade(self);
        let running = Running(pool.clone());
        pingora_runtime::current_handle().spawn(async move {
            let _running = running;
            let mut tick = tokio::time::interval(SWEEP_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(pool) = pool.upgrade() else { break };
                pool.sweep();
            }
        });
    }
}
