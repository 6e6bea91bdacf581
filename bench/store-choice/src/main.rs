//! Storage-engine comparison for tidemq's persistent session queue.
//!
//! Workload: QoS 1 messages for one persistent subscriber ("sub-1") are
//! inserted in groups of G, each group committed durably (one fsync), and the
//! same commit deletes the G messages of the previous group (their PUBACKs).
//! See README.md.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

const CLIENT: &str = "sub-1";
const TOPIC: &str = "bench/0/3";
const PAYLOAD_LEN: usize = 64;
const GROUPS: [u64; 4] = [1, 10, 100, 800];
const MAX_MSGS: u64 = 200_000;
const MAX_TIME: Duration = Duration::from_secs(5);
const RECOVER_MSGS: u64 = 100_000;
const RECOVER_GROUP: u64 = 1_000;

/// A stored message as the broker would keep it: a few header bytes, the
/// topic and a 64-byte payload (95 bytes in all).
fn message(seq: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(96);
    v.push(1); // qos
    v.push(0); // flags (retain, dup)
    v.extend_from_slice(&((seq % 65_535) as u16 + 1).to_be_bytes()); // packet id
    v.extend_from_slice(&seq.to_be_bytes()); // received-at stand-in
    v.extend_from_slice(&u32::MAX.to_be_bytes()); // expiry
    v.extend_from_slice(&(TOPIC.len() as u16).to_be_bytes());
    v.extend_from_slice(TOPIC.as_bytes());
    v.extend_from_slice(&(PAYLOAD_LEN as u32).to_be_bytes());
    // Pseudo-random payload so that compressing engines get no free ride.
    let mut x = seq.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for _ in 0..PAYLOAD_LEN {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.push(x as u8);
    }
    v
}

/// One engine under test. `commit` must be durable (fsync'd) when it returns.
trait Store {
    fn commit(&mut self, inserts: &[(u64, Vec<u8>)], deletes: std::ops::Range<u64>);
    /// Read every live message of CLIENT back into memory.
    fn load_all(&self) -> Vec<(u64, Vec<u8>)>;
}

struct Engine {
    name: &'static str,
    open: fn(&Path) -> Box<dyn Store>,
}

// ---------------------------------------------------------------- redb ----

/// redb 3.x and 5.x have the same API for what we use: instantiate it twice.
macro_rules! redb_store {
    ($module:ident, $krate:ident) => {
        mod $module {
            use $krate::{
                Database, Durability, ReadableDatabase, ReadableTable, TableDefinition,
            };

            const QUEUE: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("queue");

            pub struct Store(Database);

            pub fn open(dir: &std::path::Path) -> Box<dyn super::Store> {
                let db = Database::create(dir.join("queue.redb")).expect("redb open");
                let tx = db.begin_write().unwrap();
                tx.open_table(QUEUE).unwrap();
                tx.commit().unwrap();
                Box::new(Store(db))
            }

            impl super::Store for Store {
                fn commit(&mut self, ins: &[(u64, Vec<u8>)], del: std::ops::Range<u64>) {
                    let mut tx = self.0.begin_write().unwrap();
                    tx.set_durability(Durability::Immediate).unwrap();
                    {
                        let mut t = tx.open_table(QUEUE).unwrap();
                        for (seq, v) in ins {
                            t.insert((super::CLIENT, *seq), v.as_slice()).unwrap();
                        }
                        for seq in del {
                            t.remove((super::CLIENT, seq)).unwrap();
                        }
                    }
                    tx.commit().unwrap();
                }

                fn load_all(&self) -> Vec<(u64, Vec<u8>)> {
                    let tx = self.0.begin_read().unwrap();
                    let t = tx.open_table(QUEUE).unwrap();
                    t.iter()
                        .unwrap()
                        .map(|r| {
                            let (k, v) = r.unwrap();
                            (k.value().1, v.value().to_vec())
                        })
                        .collect()
                }
            }
        }
    };
}
redb_store!(redb3_store, redb3);
redb_store!(redb5_store, redb);

// --------------------------------------------------------------- fjall ----

mod fjall_store {
    use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};

    /// fjall 3 naming: a `Database` holds `Keyspace`s (fjall 2's keyspace
    /// and partitions).
    pub struct Store {
        db: Database,
        queue: Keyspace,
    }

    fn key(seq: u64) -> Vec<u8> {
        let mut k = Vec::with_capacity(super::CLIENT.len() + 9);
        k.extend_from_slice(super::CLIENT.as_bytes());
        k.push(0);
        k.extend_from_slice(&seq.to_be_bytes());
        k
    }

    pub fn open(dir: &std::path::Path) -> Box<dyn super::Store> {
        let db = Database::builder(dir.join("fjall")).open().expect("fjall open");
        let queue = db.keyspace("queue", KeyspaceCreateOptions::default).unwrap();
        Box::new(Store { db, queue })
    }

    impl super::Store for Store {
        fn commit(&mut self, ins: &[(u64, Vec<u8>)], del: std::ops::Range<u64>) {
            let mut batch = self.db.batch();
            for (seq, v) in ins {
                batch.insert(&self.queue, key(*seq), v.as_slice());
            }
            for seq in del {
                batch.remove(&self.queue, key(seq));
            }
            batch.commit().unwrap();
            self.db.persist(PersistMode::SyncData).unwrap();
        }

        fn load_all(&self) -> Vec<(u64, Vec<u8>)> {
            let prefix = &key(0)[..super::CLIENT.len() + 1];
            self.queue
                .prefix(prefix)
                .map(|g| {
                    let (k, v) = g.into_inner().unwrap();
                    let seq = u64::from_be_bytes(k[k.len() - 8..].try_into().unwrap());
                    (seq, v.to_vec())
                })
                .collect()
        }
    }
}

// ----------------------------------------------------------------- log ----

/// Our own append-only log. Each commit is one frame
/// `[u32 len][u32 crc32][records]`, written with one `write_all` and made
/// durable with one `sync_data`. Records:
/// `[u8 op][u16 client len][client][u64 seq]` then, for an insert,
/// `[u32 value len][value]`. Recovery replays frames up to the first torn or
/// corrupt one. There is no compaction: the file only grows.
mod log_store {
    use super::*;

    const INSERT: u8 = 1;
    const DELETE: u8 = 2;

    pub struct Store {
        file: File,
        path: std::path::PathBuf,
        frame: Vec<u8>,
    }

    pub fn open(dir: &Path) -> Box<dyn super::Store> {
        let path = dir.join("queue.log");
        let file = OpenOptions::new().create(true).append(true).open(&path).unwrap();
        File::open(dir).unwrap().sync_all().unwrap(); // make the new name durable
        Box::new(Store { file, path, frame: Vec::new() })
    }

    fn record_head(buf: &mut Vec<u8>, op: u8, seq: u64) {
        buf.push(op);
        buf.extend_from_slice(&(CLIENT.len() as u16).to_le_bytes());
        buf.extend_from_slice(CLIENT.as_bytes());
        buf.extend_from_slice(&seq.to_le_bytes());
    }

    impl super::Store for Store {
        fn commit(&mut self, ins: &[(u64, Vec<u8>)], del: std::ops::Range<u64>) {
            let f = &mut self.frame;
            f.clear();
            f.extend_from_slice(&[0; 8]); // header, filled below
            for (seq, v) in ins {
                record_head(f, INSERT, *seq);
                f.extend_from_slice(&(v.len() as u32).to_le_bytes());
                f.extend_from_slice(v);
            }
            for seq in del {
                record_head(f, DELETE, seq);
            }
            let len = (f.len() - 8) as u32;
            let crc = crc32fast::hash(&f[8..]);
            f[0..4].copy_from_slice(&len.to_le_bytes());
            f[4..8].copy_from_slice(&crc.to_le_bytes());
            self.file.write_all(f).unwrap();
            self.file.sync_data().unwrap();
        }

        fn load_all(&self) -> Vec<(u64, Vec<u8>)> {
            let mut data = Vec::new();
            File::open(&self.path).unwrap().read_to_end(&mut data).unwrap();
            let mut live: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
            let mut pos = 0;
            while pos + 8 <= data.len() {
                let len = u32::from_le_bytes(data[pos..pos + 4].try_into().unwrap()) as usize;
                let crc = u32::from_le_bytes(data[pos + 4..pos + 8].try_into().unwrap());
                let Some(body) = data.get(pos + 8..pos + 8 + len) else { break };
                if crc32fast::hash(body) != crc {
                    break;
                }
                let mut r = body;
                while !r.is_empty() {
                    let op = r[0];
                    let clen = u16::from_le_bytes([r[1], r[2]]) as usize;
                    let client = &r[3..3 + clen];
                    let seq = u64::from_le_bytes(r[3 + clen..11 + clen].try_into().unwrap());
                    r = &r[11 + clen..];
                    let ours = client == CLIENT.as_bytes();
                    if op == INSERT {
                        let vlen = u32::from_le_bytes(r[..4].try_into().unwrap()) as usize;
                        if ours {
                            live.insert(seq, r[4..4 + vlen].to_vec());
                        }
                        r = &r[4 + vlen..];
                    } else if ours {
                        live.remove(&seq);
                    }
                }
                pos += 8 + len;
            }
            live.into_iter().collect()
        }
    }
}

// ------------------------------------------------------------- harness ----

/// Size of everything under `p`, shown as "apparent (allocated)": fjall
/// preallocates its journal, so the two differ a lot.
fn dir_size(p: &Path) -> String {
    fn walk(p: &Path) -> (u64, u64) {
        let mut total = (0, 0);
        for e in std::fs::read_dir(p).unwrap() {
            let e = e.unwrap();
            let m = e.metadata().unwrap();
            let (len, alloc) = if m.is_dir() { walk(&e.path()) } else { (m.len(), m.blocks() * 512) };
            total = (total.0 + len, total.1 + alloc);
        }
        total
    }
    let (len, alloc) = walk(p);
    format!("{} ({})", human(len), human(alloc))
}

fn fresh_dir() -> tempfile::TempDir {
    tempfile::Builder::new().prefix("store-choice-").tempdir_in("/tmp").unwrap()
}

fn human(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / (1 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{b} B"),
    }
}

/// Insert G / delete previous G per commit until MAX_MSGS or MAX_TIME.
fn throughput(e: &Engine, g: u64) -> String {
    let dir = fresh_dir();
    let mut store = (e.open)(dir.path());
    let (mut seq, mut commits) = (0u64, 0u64);
    let start = Instant::now();
    while seq < MAX_MSGS && start.elapsed() < MAX_TIME {
        let ins: Vec<_> = (seq..seq + g).map(|s| (s, message(s))).collect();
        store.commit(&ins, seq.saturating_sub(g)..seq);
        seq += g;
        commits += 1;
    }
    let secs = start.elapsed().as_secs_f64();
    assert_eq!(store.load_all().len() as u64, g, "{}: live set should be one group", e.name);
    drop(store);
    let size = dir_size(dir.path());
    format!(
        "| {} | {} | {:.0} | {:.0} | {} | {} in {:.2} s |",
        e.name, g, seq as f64 / secs, commits as f64 / secs, size, seq, secs
    )
}

/// Fill 100k live messages, close, then time reopen + read all into memory.
fn recovery(e: &Engine) -> String {
    let dir = fresh_dir();
    let mut store = (e.open)(dir.path());
    for first in (0..RECOVER_MSGS).step_by(RECOVER_GROUP as usize) {
        let ins: Vec<_> = (first..first + RECOVER_GROUP).map(|s| (s, message(s))).collect();
        store.commit(&ins, 0..0);
    }
    drop(store);
    let size = dir_size(dir.path());
    let start = Instant::now();
    let store = (e.open)(dir.path());
    let opened = start.elapsed();
    let msgs = store.load_all();
    let total = start.elapsed();
    assert_eq!(msgs.len() as u64, RECOVER_MSGS, "{}: lost messages", e.name);
    assert!(msgs.iter().enumerate().all(|(i, (s, v))| *s == i as u64 && *v == message(*s)));
    drop(store);
    format!(
        "| {} | {:.1} ms | {:.1} ms | {} |",
        e.name,
        opened.as_secs_f64() * 1e3,
        total.as_secs_f64() * 1e3,
        size
    )
}

fn main() {
    let engines = [
        Engine { name: "redb 3", open: redb3_store::open },
        Engine { name: "redb 5", open: redb5_store::open },
        Engine { name: "fjall", open: fjall_store::open },
        Engine { name: "log", open: log_store::open },
    ];
    // Optional argument: only run engines whose name contains it (e.g. "fjall").
    let only = std::env::args().nth(1).unwrap_or_default();
    let engines: Vec<_> = engines.into_iter().filter(|e| e.name.contains(only.as_str())).collect();
    println!("value size: {} bytes; bound per run: {} msgs or {:?}\n", message(0).len(), MAX_MSGS, MAX_TIME);
    println!("| engine | G | msgs/s | fsyncs/s | final size (allocated) | msgs in time |");
    println!("|---|---:|---:|---:|---:|---:|");
    for g in GROUPS {
        for e in &engines {
            println!("{}", throughput(e, g));
        }
    }
    println!("\nRecovery of {RECOVER_MSGS} live messages (written in groups of {RECOVER_GROUP}), warm page cache:\n");
    println!("| engine | open | open + read all | size (allocated) |");
    println!("|---|---:|---:|---:|");
    for e in &engines {
        println!("{}", recovery(e));
    }
}
