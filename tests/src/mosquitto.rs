//! Eclipse mosquitto's command-line clients (`mosquitto_pub`,
//! `mosquitto_sub`, Debian package `mosquitto-clients`) run against a test
//! broker, bounded in time and killed when dropped. CI installs the package,
//! so a missing binary fails the test rather than skipping it.

use std::io::Read;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use tokio::time::Instant;

use crate::{TestBroker, WAIT};

/// How often a running process is checked for its exit.
const POLL: Duration = Duration::from_millis(10);
/// `mosquitto_sub -W`: the subscriber gives up by itself after this many
/// seconds, should the test die before it can kill it.
const SUB_GIVES_UP_SECS: &str = "15";

/// A mosquitto client run against a test broker; killed when dropped, so no
/// test leaves one behind.
pub struct Process {
    tool: &'static str,
    child: Child,
}

/// How a process ended and what it printed.
pub struct Exit {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Process {
    pub fn start(tool: &'static str, broker: &TestBroker, args: &[&str]) -> Process {
        let child = Command::new(tool)
            .args(["-h", "127.0.0.1", "-p", &broker.port().to_string()])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|error| {
                panic!(
                    "cannot run {tool} ({error}): install the mosquitto-clients package, CI does"
                )
            });
        Process { tool, child }
    }

    /// The exit, if the process ends within `wait`.
    pub async fn exit_within(&mut self, wait: Duration) -> Option<Exit> {
        let deadline = Instant::now() + wait;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                let mut stdout = String::new();
                let mut stderr = String::new();
                // The process has exited: both pipes are at EOF.
                self.child
                    .stdout
                    .take()
                    .unwrap()
                    .read_to_string(&mut stdout)
                    .unwrap();
                self.child
                    .stderr
                    .take()
                    .unwrap()
                    .read_to_string(&mut stderr)
                    .unwrap();
                return Some(Exit {
                    status,
                    stdout,
                    stderr,
                });
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits up to [`WAIT`] for a successful exit; returns its stdout.
    pub async fn succeeds(mut self) -> String {
        let tool = self.tool;
        let exit = self
            .exit_within(WAIT)
            .await
            .unwrap_or_else(|| panic!("{tool} did not finish within {WAIT:?}"));
        exit.succeeded(tool)
    }

    /// Sends SIGKILL: the client closes its socket without DISCONNECT.
    pub fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Exit {
    pub fn succeeded(self, tool: &str) -> String {
        assert!(
            self.status.success(),
            "{tool} failed ({}): stdout {:?}, stderr {:?}",
            self.status,
            self.stdout,
            self.stderr
        );
        self.stdout
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `mosquitto_sub` with `args` (plus `-W`).
pub fn start_sub(broker: &TestBroker, args: &[&str]) -> Process {
    let mut args = args.to_vec();
    args.extend(["-W", SUB_GIVES_UP_SECS]);
    Process::start("mosquitto_sub", broker, &args)
}

/// Runs `mosquitto_pub` to completion; it must succeed (at QoS 1 and 2 it
/// exits only after the broker's acknowledgements).
pub async fn run_pub(broker: &TestBroker, args: &[&str]) {
    Process::start("mosquitto_pub", broker, args)
        .succeeds()
        .await;
}
