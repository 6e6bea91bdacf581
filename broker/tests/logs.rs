#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The `tidemq` log as an operator reads it: plain text when it goes to a
//! file or a pipe, colour on a terminal unless `NO_COLOR` is set, one JSON
//! object a line with `log.format = "json"`, and one line per event (a
//! protocol violation is reported once, also with -v).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{FromRawFd, OwnedFd};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(10);

/// A broker process on a free port, its log (standard output) read line by
/// line by a thread. Killed if a test fails before stopping it.
struct Broker {
    child: Child,
    port: u16,
    lines: mpsc::Receiver<String>,
}

impl Broker {
    /// Starts a broker writing its log to `log`; `reader` is the other end
    /// (`None`: the pipe made for standard output).
    fn start(
        env: &[(&str, &str)],
        args: &[&str],
        log: Stdio,
        reader: Option<Box<dyn Read + Send>>,
    ) -> Broker {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut command = Command::new(env!("CARGO_BIN_EXE_tidemq"));
        command
            .env_remove("RUST_LOG")
            .env_remove("NO_COLOR")
            .env("TIDEMQ_STORAGE__ENABLED", "false")
            // No HTTP listener: brokers started in parallel would share 8080.
            .env("TIDEMQ_HTTP__BIND", "")
            .env("TIDEMQ_HTTP__BIND", "")
            .env("TIDEMQ_LISTENER__BIND", format!("127.0.0.1:{port}"))
            .envs(env.iter().copied())
            .args(args)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(Stdio::inherit());
        let mut child = command.spawn().unwrap();
        // The command held the terminal's other end; it is closed now.
        drop(command);
        let reader = reader.unwrap_or_else(|| Box::new(child.stdout.take().unwrap()));
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            // A terminal's reader fails (EIO) once the broker is gone.
            for line in BufReader::new(reader).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Broker { child, port, lines }
    }

    /// The next line containing `needle`, as written (colour codes kept).
    fn wait_for(&self, needle: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => {}
                Err(error) => panic!("no log line with {needle:?}: {error}"),
            }
        }
    }

    /// SIGTERM; asserts exit 0 and returns the rest of the log.
    fn stop(mut self) -> Vec<String> {
        let pid = self.child.id().to_string();
        let status = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(status.success());
        let deadline = Instant::now() + WAIT;
        let code = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status.code();
            }
            assert!(Instant::now() < deadline, "broker did not exit");
            std::thread::sleep(Duration::from_millis(10));
        };
        assert_eq!(code, Some(0));
        let mut rest = Vec::new();
        while let Ok(line) = self.lines.recv_timeout(WAIT) {
            rest.push(line);
        }
        rest
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

/// A broker whose log goes to a pipe.
fn piped(env: &[(&str, &str)], args: &[&str]) -> Broker {
    Broker::start(env, args, Stdio::piped(), None)
}

/// A broker whose log goes to a pseudo-terminal, as when run by hand.
fn on_a_terminal(env: &[(&str, &str)]) -> Broker {
    let (mut master, mut slave) = (-1, -1);
    // SAFETY: openpty writes two descriptors into the integers given; the
    // name, termios and window size are optional and passed as null.
    let opened = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(opened, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: both descriptors were just opened and are owned by nobody
    // else.
    let (master, slave) = unsafe {
        (
            std::fs::File::from_raw_fd(master),
            OwnedFd::from_raw_fd(slave),
        )
    };
    Broker::start(env, &[], Stdio::from(slave), Some(Box::new(master)))
}

#[test]
fn a_log_to_a_pipe_has_no_colour_codes() {
    let broker = piped(&[], &[]);
    let listening = broker.wait_for("listening");
    let rest = broker.stop();
    for line in std::iter::once(&listening).chain(&rest) {
        assert!(!line.contains('\x1b'), "{line:?}");
    }
    assert!(rest.iter().any(|line| line.contains("stopped")), "{rest:?}");
}

/// Proves that colour is kept for a terminal, and that a non-empty
/// `NO_COLOR` turns it off there too (an empty one does not: no-color.org).
#[test]
fn a_log_on_a_terminal_is_coloured_unless_no_color_is_set() {
    for (no_color, coloured) in [(None, true), (Some(""), true), (Some("1"), false)] {
        let env: Vec<(&str, &str)> = no_color
            .map(|value| ("NO_COLOR", value))
            .into_iter()
            .collect();
        let broker = on_a_terminal(&env);
        let listening = broker.wait_for("listening");
        assert_eq!(
            listening.contains("\x1b["),
            coloured,
            "NO_COLOR={no_color:?}: {listening:?}"
        );
        broker.stop();
    }
}

#[test]
fn json_format_writes_one_object_a_line() {
    let broker = piped(&[("TIDEMQ_LOG__FORMAT", "json")], &[]);
    let listening = broker.wait_for("listening");
    let port = broker.port;
    let rest = broker.stop();
    let event: serde_json::Value = serde_json::from_str(&listening).unwrap();
    assert_eq!(event["level"], "INFO", "{listening}");
    assert_eq!(event["message"], "listening", "{listening}");
    assert_eq!(event["addr"], format!("127.0.0.1:{port}"), "{listening}");
    for line in &rest {
        let event: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|error| panic!("not JSON ({error}): {line}"));
        assert!(event["message"].is_string(), "{line}");
    }
}

/// CONNECT for client "cli", clean session, keepalive 60.
const CONNECT: [u8; 17] = [
    0x10, 15, 0, 4, b'M', b'Q', b'T', b'T', 4, 2, 0, 60, 0, 3, b'c', b'l', b'i',
];

/// QoS 0 PUBLISH to `a/+`: a wildcard in a topic name [MQTT-3.3.2-2].
const WILDCARD_PUBLISH: [u8; 8] = [0x30, 6, 0, 3, b'a', b'/', b'+', b'x'];

/// The log lines naming [MQTT-3.3.2-2] after one client broke it.
fn violation_lines(args: &[&str]) -> Vec<String> {
    let broker = piped(&[], args);
    broker.wait_for("listening");
    let mut client = TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], broker.port))).unwrap();
    client.set_read_timeout(Some(WAIT)).unwrap();
    client.write_all(&CONNECT).unwrap();
    let mut connack = [0u8; 4];
    client.read_exact(&mut connack).unwrap();
    assert_eq!(connack, [0x20, 2, 0, 0]);
    client.write_all(&WILDCARD_PUBLISH).unwrap();
    let mut rest = Vec::new();
    client
        .read_to_end(&mut rest)
        .expect("the broker closes the connection");
    // The line is written as the connection ends; the broker's exit
    // flushes everything before it.
    broker
        .stop()
        .into_iter()
        .filter(|line| line.contains("MQTT-3.3.2-2"))
        .collect()
}

#[test]
fn a_protocol_violation_is_logged_once_mqtt_3_3_2_2() {
    for args in [&[][..], &["-v"]] {
        let lines = violation_lines(args);
        assert_eq!(lines.len(), 1, "{args:?}: {lines:#?}");
        assert!(lines[0].contains("WARN"), "{lines:?}");
        assert!(lines[0].contains("conn_id=1"), "{lines:?}");
    }
}
