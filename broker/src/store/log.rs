//! The store's files: a lock, and a log of checksummed frames in numbered
//! segments. Only the store thread (and `open` before it starts) touches
//! them.
//!
//! ```text
//! dir/LOCK                  held (flock) while a broker uses the directory
//! dir/store-00000001.log    HEADER, then frames
//! frame:  MAGIC u32 | len u32 | crc32(records) u32 | records (len bytes)
//! ```
//!
//! One frame is one commit: all its records count, or none do. Compaction
//! writes the live records to the next segment (`.tmp`, fsync, rename: a
//! segment without `.tmp` is complete) starting with a `Snapshot` record;
//! replay starts at the newest snapshot segment and the older ones are
//! deleted.
//!
//! Recovery tells a crash from corruption: a frame cut short or failing its
//! checksum at the very end of the newest segment is a write the crash
//! interrupted (never acknowledged: the acknowledgement waits for the
//! write): it is cut off and logged. A bad frame with a good one anywhere
//! after it, a bad header, or a frame whose records do not decode is
//! corruption: an error naming the file, and the broker does not start.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use thiserror::Error;

use super::image::Image;
use super::record::Reader;

const HEADER: &[u8; 16] = b"tidemq-store v1\n";
const MAGIC: u32 = 0x7D3A_51C9;
pub const FRAME_HEADER: usize = 12;

/// Why the store could not be opened.
#[derive(Debug, Error)]
pub enum StoreError {
    #[error("store: {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error(
        "store: {path} is corrupt at byte {offset} ({problem}). tidemq will not start on a \
         damaged store, nor wipe it: move the directory {dir} aside (keep it for inspection) \
         to start with an empty store, or point storage.dir elsewhere"
    )]
    Corrupt {
        path: PathBuf,
        dir: PathBuf,
        offset: u64,
        problem: String,
    },
    #[error(
        "store: {path} is locked: another tidemq uses this directory (stop it, or set a \
         different storage.dir)"
    )]
    Locked { path: PathBuf },
}

impl StoreError {
    pub fn io(path: &Path, source: io::Error) -> StoreError {
        StoreError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    /// Whether the files themselves are bad, rather than the directory
    /// being busy or unwritable.
    pub fn is_corrupt(&self) -> bool {
        matches!(self, StoreError::Corrupt { .. })
    }

    /// Another broker holds the directory.
    pub fn is_locked(&self) -> bool {
        matches!(self, StoreError::Locked { .. })
    }
}

/// Takes the directory's lock; held for as long as the file stays open.
pub fn lock(dir: &Path) -> Result<File, StoreError> {
    fs::create_dir_all(dir).map_err(|e| StoreError::io(dir, e))?;
    let path = dir.join("LOCK");
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| StoreError::io(&path, e))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(fs::TryLockError::WouldBlock) => return Err(StoreError::Locked { path }),
        Err(fs::TryLockError::Error(e)) => return Err(StoreError::io(&path, e)),
    }
    // For the operator: who holds it.
    let _ = file.set_len(0);
    let _ = writeln!(file, "{}", std::process::id());
    Ok(file)
}

fn segment_path(dir: &Path, number: u64) -> PathBuf {
    dir.join(format!("store-{number:08}.log"))
}

/// The complete segments in `dir`, oldest first; removes leftovers of an
/// interrupted compaction.
fn segments(dir: &Path) -> Result<Vec<u64>, StoreError> {
    let mut numbers = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| StoreError::io(dir, e))? {
        let entry = entry.map_err(|e| StoreError::io(dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.starts_with("store-") && name.ends_with(".tmp") {
            let _ = fs::remove_file(entry.path());
            continue;
        }
        let number = name
            .strip_prefix("store-")
            .and_then(|rest| rest.strip_suffix(".log"))
            .and_then(|digits| digits.parse::<u64>().ok());
        if let Some(number) = number {
            numbers.push(number);
        }
    }
    numbers.sort_unstable();
    Ok(numbers)
}

/// The open log: the newest segment, appended to.
#[derive(Debug)]
pub struct Log {
    dir: PathBuf,
    number: u64,
    file: File,
    /// Bytes in the segment.
    pub len: u64,
}

/// What replaying the log found.
#[derive(Debug, Default)]
pub struct Replayed {
    pub image: Image,
    /// Bytes cut off the end: a commit a crash interrupted.
    pub torn_bytes: u64,
    pub frames: u64,
}

impl Log {
    /// Replays every segment from the newest snapshot into an image, cuts
    /// off a torn last commit, deletes superseded segments, and opens the
    /// newest segment (a new one in an empty directory) for appending.
    pub fn open(dir: &Path) -> Result<(Log, Replayed), StoreError> {
        let numbers = segments(dir)?;
        let mut replayed = Replayed::default();
        let mut start = 0;
        for (index, number) in numbers.iter().enumerate() {
            if starts_with_snapshot(&segment_path(dir, *number))? {
                start = index;
            }
        }
        let live = numbers.get(start..).unwrap_or_default();
        for (index, number) in live.iter().enumerate() {
            let last = index + 1 == live.len();
            replay(dir, *number, last, &mut replayed)?;
        }
        replayed.image.settle();
        for number in numbers.get(..start).unwrap_or_default() {
            let _ = fs::remove_file(segment_path(dir, *number));
        }
        let log = match live.last() {
            Some(number) => Log::append_to(dir, *number)?,
            None => Log::create(dir, 1, &[])?,
        };
        Ok((log, replayed))
    }

    fn append_to(dir: &Path, number: u64) -> Result<Log, StoreError> {
        let path = segment_path(dir, number);
        let file = OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(|e| StoreError::io(&path, e))?;
        let len = file.metadata().map_err(|e| StoreError::io(&path, e))?.len();
        Ok(Log {
            dir: dir.to_path_buf(),
            number,
            file,
            len,
        })
    }

    /// Writes segment `number` with `first` as its first frame (if not
    /// empty), via a `.tmp` file renamed once synced, and opens it.
    fn create(dir: &Path, number: u64, first: &[u8]) -> Result<Log, StoreError> {
        let path = segment_path(dir, number);
        let tmp = path.with_extension("log.tmp");
        let mut file = File::create(&tmp).map_err(|e| StoreError::io(&tmp, e))?;
        let mut bytes = HEADER.to_vec();
        if !first.is_empty() {
            put_frame(&mut bytes, first);
        }
        file.write_all(&bytes)
            .and_then(|()| file.sync_all())
            .map_err(|e| StoreError::io(&tmp, e))?;
        fs::rename(&tmp, &path).map_err(|e| StoreError::io(&path, e))?;
        sync_dir(dir);
        drop(file);
        Log::append_to(dir, number)
    }

    pub fn path(&self) -> PathBuf {
        segment_path(&self.dir, self.number)
    }

    /// Appends one commit; `sync` asks for fsync (fdatasync) before
    /// returning. On error the segment is cut back to where it was, so a
    /// retry does not leave half a frame behind.
    pub fn append(&mut self, frame: &[u8], sync: bool) -> io::Result<()> {
        let result = self.file.write_all(frame).and_then(|()| match sync {
            true => self.file.sync_data(),
            false => Ok(()),
        });
        match result {
            Ok(()) => {
                self.len += frame.len() as u64;
                Ok(())
            }
            Err(error) => {
                let _ = self.file.set_len(self.len);
                Err(error)
            }
        }
    }

    pub fn sync(&mut self) -> io::Result<()> {
        self.file.sync_data()
    }

    /// Replaces the log with a new segment holding `snapshot` (the live
    /// records); the old segment is deleted once the new one is complete.
    pub fn compact(&mut self, snapshot: &[u8]) -> Result<(), StoreError> {
        let old = self.path();
        let next = Log::create(&self.dir, self.number + 1, snapshot)?;
        *self = next;
        let _ = fs::remove_file(old);
        sync_dir(&self.dir);
        Ok(())
    }
}

/// Frames `records` (one commit) into `out`.
pub fn put_frame(out: &mut Vec<u8>, records: &[u8]) {
    out.extend_from_slice(&MAGIC.to_le_bytes());
    out.extend_from_slice(
        &u32::try_from(records.len())
            .unwrap_or(u32::MAX)
            .to_le_bytes(),
    );
    out.extend_from_slice(&crc32fast::hash(records).to_le_bytes());
    out.extend_from_slice(records);
}

fn sync_dir(dir: &Path) {
    if let Ok(handle) = File::open(dir) {
        let _ = handle.sync_all();
    }
}

fn read_segment(path: &Path) -> Result<Bytes, StoreError> {
    fs::read(path)
        .map(Bytes::from)
        .map_err(|e| StoreError::io(path, e))
}

fn starts_with_snapshot(path: &Path) -> Result<bool, StoreError> {
    let bytes = read_segment(path)?;
    let first = bytes
        .get(HEADER.len()..)
        .and_then(|rest| frame_at(rest, 0).ok())
        .and_then(|records| records.first().copied());
    Ok(first == Some(0))
}

/// The records of the frame at `at` in `bytes`, if a whole, valid one
/// is there.
fn frame_at(bytes: &[u8], at: usize) -> Result<&[u8], &'static str> {
    let word = |offset: usize| -> Option<u32> {
        let raw = bytes.get(at + offset..at + offset + 4)?;
        Some(u32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]))
    };
    let (Some(magic), Some(len), Some(crc)) = (word(0), word(4), word(8)) else {
        return Err("frame header cut short");
    };
    if magic != MAGIC {
        return Err("no frame marker");
    }
    let start = at + FRAME_HEADER;
    let records = start
        .checked_add(len as usize)
        .and_then(|end| bytes.get(start..end))
        .ok_or("frame cut short")?;
    if crc32fast::hash(records) != crc {
        return Err("checksum mismatch");
    }
    Ok(records)
}

/// Whether a whole, valid frame starts anywhere after `at`.
fn valid_frame_after(bytes: &[u8], at: usize) -> bool {
    let marker = MAGIC.to_le_bytes();
    (at + 1..bytes.len().saturating_sub(FRAME_HEADER - 1))
        .filter(|&offset| bytes.get(offset..offset + 4) == Some(&marker[..]))
        .any(|offset| frame_at(bytes, offset).is_ok())
}

fn replay(dir: &Path, number: u64, last: bool, out: &mut Replayed) -> Result<(), StoreError> {
    let path = segment_path(dir, number);
    let bytes = read_segment(&path)?;
    let corrupt = |offset: usize, problem: String| StoreError::Corrupt {
        path: path.clone(),
        dir: dir.to_path_buf(),
        offset: offset as u64,
        problem,
    };
    if bytes.get(..HEADER.len()) != Some(&HEADER[..]) {
        return Err(corrupt(0, "not a tidemq store segment (bad header)".into()));
    }
    let mut at = HEADER.len();
    while at < bytes.len() {
        let records = match frame_at(&bytes, at) {
            Ok(records) => records,
            Err(problem) if last && !valid_frame_after(&bytes, at) => {
                // A commit the crash interrupted: never acknowledged.
                out.torn_bytes = (bytes.len() - at) as u64;
                tracing::warn!(
                    file = %path.display(),
                    offset = at,
                    bytes = out.torn_bytes,
                    problem,
                    "store: cutting off an incomplete last commit (the broker stopped while writing it; it was never acknowledged)"
                );
                let file = OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(|e| StoreError::io(&path, e))?;
                file.set_len(at as u64)
                    .and_then(|()| file.sync_all())
                    .map_err(|e| StoreError::io(&path, e))?;
                return Ok(());
            }
            Err(problem) => return Err(corrupt(at, problem.to_string())),
        };
        let start = at + FRAME_HEADER;
        let mut reader = Reader::new(bytes.slice(start..start + records.len()));
        while !reader.is_empty() {
            let offset = start + reader.position();
            out.image
                .apply_next(&mut reader, true)
                .map_err(|bad| corrupt(offset, bad.to_string()))?;
        }
        out.frames += 1;
        at = start + records.len();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use tidemq_protocol::QoS;

    use super::*;
    use crate::store::record::{Record, StoredMessage, Writer};

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("tidemq-log-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn commit(log: &mut Log, records: &[Record]) {
        let mut body = Vec::new();
        for record in records {
            Writer(&mut body).record(record);
        }
        let mut frame = Vec::new();
        put_frame(&mut frame, &body);
        log.append(&frame, true).unwrap();
    }

    fn message(id: u64) -> Record {
        Record::Message(StoredMessage {
            id,
            topic: tidemq_protocol::TopicName::new("t").unwrap(),
            payload: Bytes::from(vec![b'x'; 100]),
            qos: QoS::AtLeastOnce,
            retain: false,
            expires_at_ms: None,
            properties: None,
        })
    }

    fn queue(id: u64) -> Record {
        Record::Queue {
            client: "c".into(),
            id,
            qos: QoS::AtLeastOnce,
            retain: false,
            subscription_ids: vec![],
        }
    }

    fn write_three(dir: &Path) -> PathBuf {
        let (mut log, _) = Log::open(dir).unwrap();
        for id in 1..=3 {
            commit(&mut log, &[message(id), queue(id)]);
        }
        log.path()
    }

    #[test]
    fn commits_replay_after_reopening() {
        let dir = temp_dir("replay");
        write_three(&dir);
        let (_, replayed) = Log::open(&dir).unwrap();
        assert_eq!(replayed.frames, 3);
        assert_eq!(replayed.image.sessions["c"].queue.len(), 3);
    }

    #[test]
    fn a_torn_last_commit_is_cut_off_and_the_rest_kept() {
        let dir = temp_dir("torn");
        let path = write_three(&dir);
        let len = fs::metadata(&path).unwrap().len();
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        file.set_len(len - 10).unwrap();
        let (log, replayed) = Log::open(&dir).unwrap();
        assert_eq!(replayed.frames, 2);
        assert!(replayed.torn_bytes > 0);
        assert_eq!(replayed.image.sessions["c"].queue.len(), 2);
        assert!(!replayed.image.messages.contains_key(&3));
        assert_eq!(log.len, fs::metadata(&path).unwrap().len());
    }

    #[test]
    fn a_flipped_byte_before_the_last_commit_is_corruption() {
        let dir = temp_dir("flip");
        let path = write_three(&dir);
        let mut bytes = fs::read(&path).unwrap();
        bytes[HEADER.len() + FRAME_HEADER + 20] ^= 0xFF;
        fs::write(&path, &bytes).unwrap();
        let error = Log::open(&dir).unwrap_err();
        assert!(error.is_corrupt(), "{error}");
        let message = error.to_string();
        assert!(message.contains("store-00000001.log"), "{message}");
    }

    #[test]
    fn a_bad_header_is_corruption() {
        let dir = temp_dir("header");
        let path = write_three(&dir);
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        file.set_len(5).unwrap();
        assert!(Log::open(&dir).unwrap_err().is_corrupt());
    }

    #[test]
    fn compaction_keeps_the_live_records_and_drops_the_rest() {
        let dir = temp_dir("compact");
        let (mut log, _) = Log::open(&dir).unwrap();
        for id in 1..=3 {
            commit(&mut log, &[message(id), queue(id)]);
        }
        commit(
            &mut log,
            &[Record::Done {
                client: "c".into(),
                id: 1,
            }],
        );
        let (_, replayed) = Log::open(&dir).unwrap();
        let mut snapshot = Vec::new();
        replayed.image.write_snapshot(&mut snapshot);
        let before = log.len;
        log.compact(&snapshot).unwrap();
        assert!(log.len < before);
        assert_eq!(segments(&dir).unwrap(), vec![2]);
        let (_, again) = Log::open(&dir).unwrap();
        let ids: Vec<u64> = again.image.sessions["c"].queue.keys().copied().collect();
        assert_eq!(ids, vec![2, 3]);
    }

    #[test]
    fn a_second_lock_on_the_directory_is_refused() {
        let dir = temp_dir("lock");
        let _held = lock(&dir).unwrap();
        assert!(matches!(lock(&dir), Err(StoreError::Locked { .. })));
    }
}
