//! The store: what the broker promised, kept on disk (`[storage]`), so it
//! survives a restart, a `kill -9` and (with `sync` other than "never") a
//! power loss.
//!
//! | who writes        | records                                             |
//! |-------------------|-----------------------------------------------------|
//! | router            | a QoS 1/2 message and its deliveries to persistent  |
//! |                   | sessions; the publisher's QoS 2 packet id; retained |
//! |                   | messages; subscriptions of persistent sessions      |
//! | session task      | sent (packet id), released (PUBREC), done (PUBACK,  |
//! |                   | PUBCOMP); PUBREL's packet id let go; its settings   |
//! | close / expiry    | settings on leaving (offline since, will), gone     |
//!
//! Writers never wait and never touch a file: [`Store::commit`] appends
//! encoded records to one pending buffer under a lock held for a copy. One
//! thread, `tidemq-store`, owns the files (see `log`): it takes everything
//! pending as one commit, writes it as one checksummed frame with one
//! fsync, and only then drops the [`Receipt`]s that came with the records,
//! which lets the PUBACKs, PUBRECs, PUBRELs and PUBCOMPs waiting on them go
//! out. Many connections' acknowledgements share one disk flush (group
//! commit). `sync`:
//!
//! | mode     | a commit is acknowledged after          | survives          |
//! |----------|-----------------------------------------|-------------------|
//! | `always` | its fsync, started at once              | power loss        |
//! | `batch`  | an fsync after gathering for up to      | power loss        |
//! |          | `batch_max_delay_us`                    |                   |
//! | `never`  | its write to the OS                     | kill -9, not a    |
//! |          |                                         | power loss        |
//!
//! The thread keeps an [`Image`] of the live records: it tells the live
//! size (`storage_live_bytes_current`) and is what compaction writes when
//! the log outgrows `compact_min_bytes` and twice the live size. At
//! `max_bytes` the store says it is full ([`Store::is_full`]): the router
//! stops queueing for persistent sessions (`dropped_storage_full`) and
//! keeping retained messages (`retained_refused_storage_full`), as with a
//! full queue; acknowledgements and session ends are still written.
//!
//! If a write fails (disk full, I/O error), the commit is retried every
//! second and its acknowledgements wait: nothing is acknowledged that is
//! not on disk.

mod image;
mod log;
mod record;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tracing::{error, info};

use crate::budget::Budget;
use crate::config::{StorageSettings, SyncMode};
use crate::metrics::Metrics;
use crate::registry::lock;
use crate::types::Receipt;

pub use image::{Image, SessionImage};
pub use log::StoreError;
pub use record::{Reader, Record, StoredMessage, StoredSession, StoredWill, Writer};

use log::{put_frame, Log};

/// The writers' side of the store; cheap to clone.
#[derive(Debug, Clone)]
pub struct Store {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    pending: Mutex<Pending>,
    wake: Condvar,
    /// The last message id handed out.
    last_message_id: AtomicU64,
    full: AtomicBool,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Pending records are counted in the memory budget until written, so
    /// a store that falls behind (a slow disk, a flood of retained QoS 0
    /// messages that nobody waits for) makes the broker refuse new
    /// messages rather than grow without bound.
    budget: Arc<Budget>,
}

#[derive(Debug, Default)]
struct Pending {
    records: Vec<u8>,
    /// Released once `records` are durable.
    receipts: Vec<Receipt>,
    closing: bool,
}

/// What the store held when the broker started.
#[derive(Debug)]
pub struct Recovered {
    pub image: Image,
    pub elapsed: Duration,
    pub frames: u64,
    pub torn_bytes: u64,
    pub file_bytes: u64,
}

impl Store {
    /// Locks `settings.dir`, replays the log and starts the store thread.
    pub fn open(
        settings: &StorageSettings,
        metrics: Arc<Metrics>,
        budget: Arc<Budget>,
    ) -> Result<(Store, Recovered), StoreError> {
        let started = Instant::now();
        let lock_file = log::lock(&settings.dir)?;
        let (log, replayed) = Log::open(&settings.dir)?;
        let recovered = Recovered {
            elapsed: started.elapsed(),
            frames: replayed.frames,
            torn_bytes: replayed.torn_bytes,
            file_bytes: log.len,
            image: Image::default(),
        };
        let image = replayed.image;
        let store = Store {
            shared: Arc::new(Shared {
                pending: Mutex::new(Pending::default()),
                wake: Condvar::new(),
                last_message_id: AtomicU64::new(image.last_message_id),
                full: AtomicBool::new(log.len >= settings.max_bytes),
                thread: Mutex::new(None),
                budget,
            }),
        };
        // The broker rebuilds its state from a copy; the thread keeps the
        // original to go on from.
        let copy = image.clone();
        let writer = StoreThread {
            shared: Arc::clone(&store.shared),
            log,
            image,
            settings: settings.clone(),
            metrics,
            lock_file,
        };
        let thread = std::thread::Builder::new()
            .name("tidemq-store".into())
            .spawn(move || writer.run())
            .map_err(|e| StoreError::io(&settings.dir, e))?;
        *lock(&store.shared.thread) = Some(thread);
        Ok((
            store,
            Recovered {
                image: copy,
                ..recovered
            },
        ))
    }

    /// Numbers a message about to be written.
    pub fn next_message_id(&self) -> u64 {
        self.shared.last_message_id.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// At `max_bytes`: new messages for persistent sessions and retained
    /// messages are not written.
    pub fn is_full(&self) -> bool {
        self.shared.full.load(Ordering::Relaxed)
    }

    /// Queues records for the next commit; `receipt` (if any) is held until
    /// they are durable.
    pub fn commit(&self, receipt: Option<&Receipt>, write: impl FnOnce(&mut Writer<'_>)) {
        let mut pending = lock(&self.shared.pending);
        let before = pending.records.len();
        write(&mut Writer(&mut pending.records));
        let added = pending.records.len() - before;
        if let Some(receipt) = receipt {
            pending.receipts.push(receipt.clone());
        }
        drop(pending);
        self.shared.budget.charge(added as u64);
        let was_empty = before == 0;
        if was_empty {
            self.shared.wake.notify_one();
        }
    }

    /// Writes what is pending, syncs, and stops the thread (graceful
    /// shutdown). Blocks until the thread is done.
    pub fn close(&self) {
        lock(&self.shared.pending).closing = true;
        self.shared.wake.notify_one();
        let thread = lock(&self.shared.thread).take();
        if let Some(thread) = thread {
            let _ = thread.join();
        }
    }
}

struct StoreThread {
    shared: Arc<Shared>,
    log: Log,
    image: Image,
    settings: StorageSettings,
    metrics: Arc<Metrics>,
    /// Held (and so the directory locked) until the thread ends.
    #[allow(dead_code)]
    lock_file: std::fs::File,
}

/// Acknowledgements already waiting that make a `batch` commit go without
/// its gathering delay.
const GATHERED: usize = 64;

/// How often a failed write is retried.
const RETRY: Duration = Duration::from_secs(1);
/// Retries of the last commit at shutdown before giving up on it.
const RETRIES_AT_CLOSE: u32 = 3;

impl StoreThread {
    fn run(mut self) {
        let mut records = Vec::new();
        let mut frame = Vec::new();
        loop {
            let (receipts, closing) = self.take(&mut records);
            if !records.is_empty() {
                frame.clear();
                put_frame(&mut frame, &records);
                if self.write(&frame, closing) {
                    // The acknowledgements go first: the image is only this
                    // thread's bookkeeping.
                    drop(receipts);
                    self.apply(&records);
                    self.maybe_compact();
                } else {
                    // Never acknowledged: the broker is going down anyway.
                    std::mem::forget(receipts);
                }
                self.shared.budget.release(records.len() as u64);
                self.report();
            }
            if closing {
                self.close();
                return;
            }
        }
    }

    /// Waits for records, gathers for `batch_max_delay_us` in "batch" mode,
    /// and takes everything pending (swapping buffers with `records`).
    fn take(&self, records: &mut Vec<u8>) -> (Vec<Receipt>, bool) {
        records.clear();
        let mut pending = lock(&self.shared.pending);
        while pending.records.is_empty() && !pending.closing {
            pending = self
                .shared
                .wake
                .wait(pending)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
        // Gathering pays when few writers are waiting; under load the
        // previous fsync has gathered a batch already.
        let gather = self.settings.sync == SyncMode::Batch
            && self.settings.batch_max_delay_us > 0
            && pending.receipts.len() < GATHERED
            && !pending.closing;
        if gather {
            drop(pending);
            std::thread::sleep(Duration::from_micros(self.settings.batch_max_delay_us));
            pending = lock(&self.shared.pending);
        }
        std::mem::swap(records, &mut pending.records);
        (std::mem::take(&mut pending.receipts), pending.closing)
    }

    /// Appends one commit, retrying on error; `false` if it gave up
    /// (only while closing).
    fn write(&mut self, frame: &[u8], closing: bool) -> bool {
        let sync = self.settings.sync != SyncMode::Never;
        let mut failures = 0;
        loop {
            match self.log.append(frame, sync) {
                Ok(()) => {
                    Metrics::incr(&self.metrics.storage_commits);
                    if sync {
                        Metrics::incr(&self.metrics.storage_fsyncs);
                    }
                    return true;
                }
                Err(e) => {
                    failures += 1;
                    Metrics::incr(&self.metrics.storage_errors);
                    error!(
                        file = %self.log.path().display(),
                        error = %e,
                        failures,
                        "store: write failed; acknowledgements wait until it succeeds"
                    );
                    if closing && failures >= RETRIES_AT_CLOSE {
                        return false;
                    }
                    std::thread::sleep(RETRY);
                }
            }
        }
    }

    fn apply(&mut self, records: &[u8]) {
        let mut reader = Reader::new(Bytes::copy_from_slice(records));
        while !reader.is_empty() {
            match self.image.apply_next(&mut reader, false) {
                Ok(()) => {}
                Err(bad) => {
                    error!(error = %bad, "store: a record just written does not read back");
                    break;
                }
            }
        }
        self.image.settle();
    }

    fn maybe_compact(&mut self) {
        let len = self.log.len;
        if len < self.settings.compact_min_bytes || len < 2 * self.image.live_bytes {
            return;
        }
        let started = Instant::now();
        let mut snapshot = Vec::new();
        self.image.write_snapshot(&mut snapshot);
        match self.log.compact(&snapshot) {
            Ok(()) => {
                Metrics::incr(&self.metrics.storage_compactions);
                info!(
                    before = len,
                    after = self.log.len,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "store compacted"
                );
            }
            Err(e) => {
                Metrics::incr(&self.metrics.storage_errors);
                error!(error = %e, "store: compaction failed; the log keeps growing");
            }
        }
    }

    fn report(&self) {
        let full = self.log.len >= self.settings.max_bytes;
        self.shared.full.store(full, Ordering::Relaxed);
        Metrics::set(&self.metrics.storage_bytes_current, self.log.len);
        Metrics::set(
            &self.metrics.storage_live_bytes_current,
            self.image.live_bytes,
        );
    }

    fn close(&mut self) {
        if let Err(e) = self.log.sync() {
            error!(error = %e, "store: final sync failed");
        }
        info!(
            bytes = self.log.len,
            fsyncs = self.metrics.storage_fsyncs.load(Ordering::Relaxed),
            commits = self.metrics.storage_commits.load(Ordering::Relaxed),
            "store closed"
        );
    }
}

/// Milliseconds since the Unix epoch now.
pub fn unix_ms_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A monotonic deadline as wall-clock milliseconds, for the disk.
pub fn instant_to_unix_ms(at: tokio::time::Instant) -> u64 {
    let now = tokio::time::Instant::now();
    let base = unix_ms_now();
    if at >= now {
        base.saturating_add(u64::try_from((at - now).as_millis()).unwrap_or(u64::MAX))
    } else {
        base.saturating_sub(u64::try_from((now - at).as_millis()).unwrap_or(u64::MAX))
    }
}

/// Wall-clock milliseconds from the disk as a monotonic deadline (now, if
/// already past).
pub fn unix_ms_to_instant(ms: u64) -> tokio::time::Instant {
    let left = ms.saturating_sub(unix_ms_now());
    tokio::time::Instant::now() + Duration::from_millis(left)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(name: &str) -> StorageSettings {
        let dir = std::env::temp_dir().join(format!("tidemq-store-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        StorageSettings {
            enabled: true,
            dir,
            sync: SyncMode::Batch,
            batch_max_delay_us: 500,
            max_bytes: 1 << 30,
            compact_min_bytes: 1 << 24,
        }
    }

    #[test]
    fn a_receipt_is_released_once_its_records_are_on_disk_and_the_budget_given_back() {
        let settings = settings("receipt");
        let metrics = Arc::new(Metrics::default());
        let budget = Arc::new(Budget::new(Arc::clone(&metrics), u64::MAX));
        let (store, _) = Store::open(&settings, Arc::clone(&metrics), Arc::clone(&budget)).unwrap();
        let (receipt, released) = Receipt::new();
        store.commit(Some(&receipt), |w| w.hold("c", 7));
        assert!(budget.used() > 0, "pending records are counted");
        drop(receipt);
        // The receipt's last clone is the store's: released after the write.
        let _ = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(released);
        assert!(metrics.storage_fsyncs.load(Ordering::Relaxed) >= 1);
        let written = std::fs::read(settings.dir.join("store-00000001.log")).unwrap();
        assert!(written.len() > 16, "the commit is in the file");
        store.close();
        assert_eq!(budget.used(), 0);
        // Reopened: the record is there.
        let (store, recovered) = Store::open(&settings, metrics, budget).unwrap();
        assert!(recovered.image.sessions["c"].held.contains(&7));
        store.close();
    }
}
