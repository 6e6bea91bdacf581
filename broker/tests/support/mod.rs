//! The harness of `persistence.rs`: a `tidemq` process on a storage
//! directory of its own (started, stopped with SIGTERM, killed with
//! SIGKILL, its log lines waited for), and a small synchronous MQTT client
//! (`client`). Every wait is bounded and waits for something: a packet, a
//! log line, the process's exit.

// Each test binary uses a part of the harness.
#![allow(dead_code)]

mod client;

use std::io::{BufRead, BufReader, Read};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

pub use client::*;

/// Longest wait for anything that should happen (a packet, a log line, an
/// exit).
pub const WAIT: Duration = Duration::from_secs(10);

/// A fresh storage directory, removed when dropped.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        let dir =
            std::env::temp_dir().join(format!("tidemq-persist-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn segment(&self) -> PathBuf {
        self.0.join("store-00000001.log")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The lines a child wrote to one pipe, ANSI colours stripped, gathered by
/// a thread so the pipe never fills.
#[derive(Default)]
pub struct Output {
    state: Mutex<(Vec<String>, bool)>,
    grew: Condvar,
}

impl Output {
    pub fn capture(pipe: impl Read + Send + 'static) -> Arc<Output> {
        let output = Arc::new(Output::default());
        let writer = Arc::clone(&output);
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                writer.state.lock().unwrap().0.push(strip_ansi(&line));
                writer.grew.notify_all();
            }
            writer.state.lock().unwrap().1 = true;
            writer.grew.notify_all();
        });
        output
    }

    /// The first line containing `needle`, waiting up to `wait` for it;
    /// `None` if the pipe closed or the time ran out without it.
    pub fn wait_for(&self, needle: &str, wait: Duration) -> Option<String> {
        let deadline = Instant::now() + wait;
        let mut state = self.state.lock().unwrap();
        loop {
            if let Some(line) = state.0.iter().find(|line| line.contains(needle)) {
                return Some(line.clone());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if state.1 || left.is_zero() {
                return None;
            }
            state = self.grew.wait_timeout(state, left).unwrap().0;
        }
    }

    /// The lines read so far, without waiting for more.
    pub fn so_far(&self) -> String {
        self.state.lock().unwrap().0.join("\n")
    }

    /// Everything written so far (all of it, once the process has exited
    /// and the pipe closed).
    pub fn text(&self) -> String {
        let deadline = Instant::now() + WAIT;
        let mut state = self.state.lock().unwrap();
        while !state.1 && Instant::now() < deadline {
            state = self
                .grew
                .wait_timeout(state, Duration::from_millis(100))
                .unwrap()
                .0;
        }
        state.0.join("\n")
    }
}

/// `line` without its `ESC [ ... m` colour sequences.
pub fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The number after `key=` in a structured log line.
pub fn field(line: &str, key: &str) -> u64 {
    let prefix = format!("{key}=");
    line.split_whitespace()
        .find_map(|token| token.strip_prefix(&prefix))
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| panic!("no {key}=N in {line:?}"))
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A free port for a mosquitto started by a test, below Linux's
/// ephemeral range (32768 and up by default): a broker given
/// [`free_port`] or a client's outgoing socket cannot take it while
/// mosquitto is down between restarts.
pub fn mosquitto_port() -> u16 {
    use std::hash::BuildHasher;
    let random = std::collections::hash_map::RandomState::new();
    (0u64..)
        .map(|n| 10_000 + (random.hash_one(n) % 22_000) as u16)
        .find(|&port| TcpListener::bind(("127.0.0.1", port)).is_ok())
        .unwrap()
}

/// One `tidemq` process. Killed if still running when dropped, so a failed
/// test leaves no broker behind.
pub struct Broker {
    child: Child,
    pub port: u16,
    /// The tracing log (the fmt subscriber writes to stdout).
    pub stdout: Arc<Output>,
    /// What `main` prints before exiting on an error.
    pub stderr: Arc<Output>,
}

impl Broker {
    /// Starts a broker on `dir` and a free port, without waiting for it.
    pub fn spawn(dir: &Path, env: &[(&str, &str)]) -> Broker {
        Broker::spawn_with_args(dir, env, &[])
    }

    /// As [`Broker::spawn`], with command-line arguments (`-c FILE`); the
    /// free port replaces the first listener's address.
    pub fn spawn_with_args(dir: &Path, env: &[(&str, &str)], args: &[&str]) -> Broker {
        let port = free_port();
        let mut command = Command::new(env!("CARGO_BIN_EXE_tidemq"));
        command
            .args(args)
            .env_remove("RUST_LOG")
            .env("TIDEMQ_LISTENER__BIND", format!("127.0.0.1:{port}"))
            .env("TIDEMQ_STORAGE__ENABLED", "true")
            .env("TIDEMQ_STORAGE__DIR", dir)
            .env("TIDEMQ_SYS__INTERVAL_SECS", "0")
            // No HTTP listener: brokers started in parallel would share 8080.
            .env("TIDEMQ_HTTP__BIND", "")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (key, value) in env {
            command.env(key, value);
        }
        let mut child = command.spawn().unwrap();
        let stdout = Output::capture(child.stdout.take().unwrap());
        let stderr = Output::capture(child.stderr.take().unwrap());
        Broker {
            child,
            port,
            stdout,
            stderr,
        }
    }

    /// Starts a broker on `dir` and returns once it listens (after its
    /// recovery). A port taken meanwhile by someone else is retried.
    pub fn start(dir: &Path, env: &[(&str, &str)]) -> Broker {
        Broker::start_with_args(dir, env, &[])
    }

    /// As [`Broker::start`], with command-line arguments.
    pub fn start_with_args(dir: &Path, env: &[(&str, &str)], args: &[&str]) -> Broker {
        for _ in 0..3 {
            let mut broker = Broker::spawn_with_args(dir, env, args);
            let listening = format!("listening addr=127.0.0.1:{}", broker.port);
            if broker.stdout.wait_for(&listening, WAIT).is_some() {
                return broker;
            }
            let code = broker.wait_exit();
            let stderr = broker.stderr.text();
            assert!(
                stderr.contains("cannot listen"),
                "broker did not start (exit {code}): {stderr}\n{}",
                broker.stdout.text()
            );
        }
        panic!("no free port after 3 tries");
    }

    /// The `store recovered` line of this start.
    pub fn recovered(&self) -> String {
        self.stdout
            .wait_for("store recovered", WAIT)
            .expect("a `store recovered` line")
    }

    pub fn wait_exit(&mut self) -> i32 {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code().unwrap_or(-1);
            }
            assert!(Instant::now() < deadline, "broker did not exit");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGTERM: asserts exit 0 and returns the `store closed` line.
    pub fn stop(mut self) -> String {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        assert_eq!(self.wait_exit(), 0, "{}", self.stderr.text());
        self.stdout
            .wait_for("store closed", WAIT)
            .expect("a `store closed` line")
    }

    /// SIGTERM for a broker without a store: asserts exit 0.
    pub fn stop_without_store(mut self) {
        self.signal("TERM");
        assert_eq!(self.wait_exit(), 0, "{}", self.stderr.text());
    }

    /// Sends the process a signal by name (`HUP`, `TERM`, ...).
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// SIGKILL: the process gets no chance to flush or close anything.
    pub fn crash(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
