//! The dormitory: where idle connections wait without tasks.
//!
//! A connection that has had nothing to do for `limits.rest_after_ms` gives
//! up its read, write and session tasks and its buffers, and hands what must
//! survive (its socket and its session) to the dormitory as a [`Sleeper`].
//! One thread watches every sleeper's socket in one epoll set (through mio)
//! together with its keepalive deadline, so a resting connection costs its
//! session state and a kernel epoll entry: no task, no timer, no reactor
//! registration, no buffer. It is what lets a broker hold many idle clients
//! in little memory, the way an event-loop broker does.
//!
//! A sleeper is woken, and its tasks spawned again, when:
//!
//! | event                                  | by                            |
//! |----------------------------------------|-------------------------------|
//! | its socket becomes readable (or closes)| the epoll set                 |
//! | its deadline passes (keepalive, or the | this thread's poll timeout    |
//! | read timeout of a partial packet)      |                               |
//! | mail reaches its mailbox, or a newer   | its [`Alarm`], rung from any  |
//! | connection claims its client id        | thread, which wakes it itself |
//! | the broker shuts down                  | [`Dormitory::close`]          |
//!
//! The lock on the beds is held for bookkeeping only, never while a sleeper
//! runs; a sleeper's `wake` just spawns its tasks on the runtime.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io;
use std::os::fd::RawFd;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};
use tracing::{debug, warn};

/// The waker's token; bed keys never reach it (their index is 32 bits).
const WAKER: Token = Token(usize::MAX);
/// Longest poll; a backstop only, every change that matters wakes the thread.
const MAX_POLL: Duration = Duration::from_secs(60);
/// Events taken per poll.
const EVENTS: usize = 1024;

/// A connection at rest: what the dormitory needs to watch and wake it.
pub trait Sleeper: Send + 'static {
    /// The socket to watch for readability.
    fn fd(&self) -> RawFd;
    /// When to wake it even if nothing happens (its keepalive, or its
    /// partial packet's read timeout).
    fn deadline(&self) -> Option<Instant>;
    /// Gives the sleeper its alarm, before anything can wake it. Returns
    /// `true` when it must be woken at once (mail is already waiting, or it
    /// was claimed meanwhile).
    fn install_alarm(&self, alarm: Alarm) -> bool;
    /// Hands the sleeper back to the runtime (spawns its tasks).
    fn wake(self: Box<Self>);
}

/// Wakes one sleeper from any thread; ringing after it woke does nothing.
#[derive(Clone)]
pub struct Alarm {
    shared: Arc<Shared>,
    key: u64,
}

impl std::fmt::Debug for Alarm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Alarm").field("key", &self.key).finish()
    }
}

impl Alarm {
    /// Wakes the sleeper right here, on the ringing thread (usually a
    /// runtime worker, so its tasks start without a hand-off through the
    /// dormitory's thread).
    pub fn ring(&self) {
        let sleeper = lock(&self.shared.beds).take(self.key);
        if let Some(sleeper) = sleeper {
            self.shared.release(sleeper);
        }
    }
}

/// Holds the sleepers; cheap to share by reference.
pub struct Dormitory {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Dormitory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dormitory")
            .field("sleeping", &self.sleeping())
            .finish()
    }
}

struct Shared {
    registry: mio::Registry,
    waker: Waker,
    beds: Mutex<Beds>,
}

impl Shared {
    fn wake_thread(&self) {
        if let Err(error) = self.waker.wake() {
            warn!(%error, "cannot wake the dormitory thread");
        }
    }

    /// Stops watching a sleeper taken out of its bed and wakes it.
    fn release(&self, sleeper: Box<dyn Sleeper>) {
        let fd = sleeper.fd();
        if let Err(error) = self.registry.deregister(&mut SourceFd(&fd)) {
            debug!(%error, "cannot stop watching a socket");
        }
        sleeper.wake();
    }
}

struct Bed {
    generation: u32,
    sleeper: Option<Box<dyn Sleeper>>,
}

struct Beds {
    beds: Vec<Bed>,
    free: Vec<u32>,
    /// Keepalive deadlines, in nanoseconds since `epoch` (16-byte entries).
    /// Entries of sleepers that woke otherwise stay until they come due or
    /// the heap is rebuilt.
    deadlines: BinaryHeap<Reverse<(u64, u64)>>,
    /// The dormitory's start; deadlines before it count as due.
    epoch: Instant,
    sleeping: usize,
    closed: bool,
}

fn key(index: u32, generation: u32) -> u64 {
    (u64::from(generation) << 32) | u64::from(index)
}

fn lock(beds: &Mutex<Beds>) -> MutexGuard<'_, Beds> {
    // Every critical section leaves the beds consistent.
    beds.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Beds {
    fn new() -> Beds {
        Beds {
            beds: Vec::new(),
            free: Vec::new(),
            deadlines: BinaryHeap::new(),
            epoch: Instant::now(),
            sleeping: 0,
            closed: false,
        }
    }

    fn nanos(&self, at: Instant) -> u64 {
        let since = at.saturating_duration_since(self.epoch).as_nanos();
        u64::try_from(since).unwrap_or(u64::MAX)
    }

    fn insert(&mut self, sleeper: Box<dyn Sleeper>, deadline: Option<Instant>) -> u64 {
        let index = match self.free.pop() {
            Some(index) => index,
            None => {
                self.beds.push(Bed {
                    generation: 0,
                    sleeper: None,
                });
                (self.beds.len() - 1) as u32
            }
        };
        let bed = &mut self.beds[index as usize];
        bed.sleeper = Some(sleeper);
        let key = key(index, bed.generation);
        if let Some(deadline) = deadline {
            let nanos = self.nanos(deadline);
            self.deadlines.push(Reverse((nanos, key)));
            self.compact();
        }
        self.sleeping += 1;
        key
    }

    /// Takes the sleeper of `key` out, if it is still there.
    fn take(&mut self, key: u64) -> Option<Box<dyn Sleeper>> {
        let index = (key & u64::from(u32::MAX)) as u32;
        let generation = (key >> 32) as u32;
        let bed = self.beds.get_mut(index as usize)?;
        if bed.generation != generation {
            return None;
        }
        let sleeper = bed.sleeper.take()?;
        bed.generation = bed.generation.wrapping_add(1);
        self.free.push(index);
        self.sleeping -= 1;
        Some(sleeper)
    }

    /// Takes every sleeper whose deadline has passed.
    fn take_due(&mut self, now: Instant, woken: &mut Vec<Box<dyn Sleeper>>) {
        let now = self.nanos(now);
        while let Some(Reverse((deadline, key))) = self.deadlines.peek().copied() {
            if deadline > now {
                break;
            }
            self.deadlines.pop();
            woken.extend(self.take(key));
        }
    }

    /// Rebuilds the deadline heap once stale entries (of sleepers woken
    /// otherwise) outnumber the live ones: clients that rest and wake often
    /// would pile them up until their old deadlines came due.
    fn compact(&mut self) {
        if self.deadlines.len() <= 2 * self.sleeping + 1024 {
            return;
        }
        let live: Vec<(Instant, u64)> = self
            .beds
            .iter()
            .enumerate()
            .filter_map(|(index, bed)| {
                let deadline = bed.sleeper.as_ref()?.deadline()?;
                Some((deadline, key(index as u32, bed.generation)))
            })
            .collect();
        self.deadlines = live
            .into_iter()
            .map(|(deadline, key)| Reverse((self.nanos(deadline), key)))
            .collect();
    }

    fn take_all(&mut self, woken: &mut Vec<Box<dyn Sleeper>>) {
        for index in 0..self.beds.len() {
            let generation = self.beds[index].generation;
            woken.extend(self.take(key(index as u32, generation)));
        }
        self.deadlines.clear();
    }

    fn poll_timeout(&self, now: Instant) -> Duration {
        let now = self.nanos(now);
        match self.deadlines.peek() {
            Some(Reverse((deadline, _))) => {
                Duration::from_nanos(deadline.saturating_sub(now)).min(MAX_POLL)
            }
            None => MAX_POLL,
        }
    }
}

impl Dormitory {
    /// Starts the dormitory's thread.
    pub fn start() -> io::Result<Dormitory> {
        let poll = Poll::new()?;
        let waker = Waker::new(poll.registry(), WAKER)?;
        let shared = Arc::new(Shared {
            registry: poll.registry().try_clone()?,
            waker,
            beds: Mutex::new(Beds::new()),
        });
        let thread_shared = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("tidemq-dormitory".into())
            .spawn(move || watch(poll, &thread_shared))?;
        Ok(Dormitory { shared })
    }

    /// Puts a sleeper to rest. Once the dormitory is closed, or when its
    /// socket cannot be watched, the sleeper is woken at once instead.
    pub fn admit(&self, sleeper: Box<dyn Sleeper>) {
        let fd = sleeper.fd();
        let deadline = sleeper.deadline();
        let mut beds = lock(&self.shared.beds);
        if beds.closed {
            drop(beds);
            sleeper.wake();
            return;
        }
        let earliest = beds.deadlines.peek().map(|Reverse((at, _))| *at);
        let key = beds.insert(sleeper, deadline);
        let deadline = deadline.map(|deadline| beds.nanos(deadline));
        let alarm = Alarm {
            shared: Arc::clone(&self.shared),
            key,
        };
        // The alarm is installed under the beds' lock, before the socket is
        // watched: nothing can wake the sleeper before it has its alarm.
        let wake_now = beds.beds[(key & u64::from(u32::MAX)) as usize]
            .sleeper
            .as_ref()
            .is_some_and(|sleeper| sleeper.install_alarm(alarm));
        let token = Token(key as usize);
        if let Err(error) =
            self.shared
                .registry
                .register(&mut SourceFd(&fd), token, Interest::READABLE)
        {
            debug!(%error, "cannot watch a resting connection's socket");
            let sleeper = beds.take(key);
            drop(beds);
            // It goes back to work; it will try to rest again later.
            if let Some(sleeper) = sleeper {
                sleeper.wake();
            }
            return;
        }
        let sooner = match (deadline, earliest) {
            (Some(deadline), Some(earliest)) => deadline < earliest,
            (Some(_), None) => true,
            (None, _) => false,
        };
        let woken = if wake_now { beds.take(key) } else { None };
        drop(beds);
        if let Some(sleeper) = woken {
            self.shared.release(sleeper);
        } else if sooner {
            self.shared.wake_thread();
        }
    }

    /// Wakes every sleeper and refuses new ones; the thread then ends.
    pub fn close(&self) {
        lock(&self.shared.beds).closed = true;
        self.shared.wake_thread();
    }

    /// How many connections are resting.
    pub fn sleeping(&self) -> usize {
        lock(&self.shared.beds).sleeping
    }
}

impl Drop for Dormitory {
    /// Ends the thread with its context. A resting connection holds the
    /// context, so a broker dropped without `shutdown` while clients rest
    /// keeps serving them, as `Broker` documents for every connection.
    fn drop(&mut self) {
        self.close();
    }
}

/// The dormitory's thread: waits for events, wakes their sleepers.
fn watch(mut poll: Poll, shared: &Shared) {
    let mut events = Events::with_capacity(EVENTS);
    let mut woken: Vec<Box<dyn Sleeper>> = Vec::new();
    loop {
        let timeout = lock(&shared.beds).poll_timeout(Instant::now());
        if let Err(error) = poll.poll(&mut events, Some(timeout)) {
            if error.kind() != io::ErrorKind::Interrupted {
                warn!(%error, "dormitory poll failed");
                std::thread::sleep(Duration::from_millis(10));
            }
            continue;
        }
        let closed = {
            let mut beds = lock(&shared.beds);
            // The waker only makes the thread look again at its deadlines
            // and the closed flag.
            for event in events.iter().filter(|event| event.token() != WAKER) {
                woken.extend(beds.take(event.token().0 as u64));
            }
            beds.take_due(Instant::now(), &mut woken);
            if beds.closed {
                beds.take_all(&mut woken);
            }
            beds.closed
        };
        for sleeper in woken.drain(..) {
            shared.release(sleeper);
        }
        if closed {
            return;
        }
    }
}

#[cfg(test)]
mod tests;
