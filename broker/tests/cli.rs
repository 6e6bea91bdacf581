#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The `tidemq` binary as an operator meets it: exit code 2 and the key's
//! or file's name on every configuration problem (also from
//! `tidemq check-config`), 1 on a runtime failure (a port in use),
//! environment and CLI overrides, a clean exit 0 on SIGTERM and SIGINT with
//! connected clients closed, and `tidemq passwd` writing and deleting
//! entries the broker then accepts or refuses.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(10);

fn tidemq() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tidemq"));
    command
        .env_remove("RUST_LOG")
        .env("TIDEMQ_STORAGE__ENABLED", "false")
        // No HTTP listener: brokers started in parallel would share 8080.
        .env("TIDEMQ_HTTP__BIND", "")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    command
}

/// A port that was free a moment ago.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn connect_when_up(port: u16) -> TcpStream {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + WAIT;
    loop {
        match TcpStream::connect(addr) {
            Ok(stream) => return stream,
            Err(error) if Instant::now() > deadline => panic!("broker not up: {error}"),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

fn wait_exit(child: &mut Child) -> i32 {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code().unwrap_or(-1);
        }
        assert!(Instant::now() < deadline, "broker did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn signal(child: &Child, name: &str) {
    let status = Command::new("kill")
        .args([&format!("-{name}"), &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// CONNECT for client "cli", clean session, keepalive 60.
const CONNECT: [u8; 17] = [
    0x10, 15, 0, 4, b'M', b'Q', b'T', b'T', 4, 2, 0, 60, 0, 3, b'c', b'l', b'i',
];

/// A client that connected to the broker on `port` and got CONNACK 0.
fn connected_client(port: u16) -> TcpStream {
    let mut client = connect_when_up(port);
    client.write_all(&CONNECT).unwrap();
    let mut connack = [0u8; 4];
    client.read_exact(&mut connack).unwrap();
    assert_eq!(connack, [0x20, 2, 0, 0]);
    client
}

fn run_until_signal(name: &str) {
    let port = free_port();
    let mut child = tidemq()
        .env("TIDEMQ_LISTENER__BIND", format!("127.0.0.1:{port}"))
        .spawn()
        .unwrap();
    let mut client = connected_client(port);
    signal(&child, name);
    client.set_read_timeout(Some(WAIT)).unwrap();
    let mut rest = Vec::new();
    let read = client.read_to_end(&mut rest);
    assert!(
        read.is_ok(),
        "the broker closed the client's socket: {read:?}"
    );
    assert_eq!(wait_exit(&mut child), 0);
}

#[test]
fn sigterm_closes_clients_and_exits_0() {
    run_until_signal("TERM");
}

#[test]
fn sigint_closes_clients_and_exits_0() {
    run_until_signal("INT");
}

#[test]
fn port_flag_overrides_the_config() {
    let port = free_port();
    let dir = std::env::temp_dir().join(format!("tidemq-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("listen.toml");
    std::fs::write(&file, "[[listener]]\nbind = \"127.0.0.1:1\"\n").unwrap();
    let mut child = tidemq()
        .args(["-c", file.to_str().unwrap(), "-p", &port.to_string()])
        .spawn()
        .unwrap();
    let _client = connected_client(port);
    signal(&child, "TERM");
    assert_eq!(wait_exit(&mut child), 0);
}

fn bad_config_output(configure: impl FnOnce(&mut Command)) -> (i32, String) {
    let mut command = tidemq();
    configure(&mut command);
    let output = command.output().unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn a_bad_value_in_the_environment_exits_2_naming_the_key() {
    let (code, stderr) = bad_config_output(|c| {
        c.env("TIDEMQ_LIMITS__MAX_INFLIGHT", "0");
    });
    assert_eq!(code, 2);
    assert!(stderr.contains("limits.max_inflight"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
}

#[test]
fn an_unknown_key_in_a_file_exits_2_naming_it() {
    let dir = std::env::temp_dir().join(format!("tidemq-cli-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("bad.toml");
    std::fs::write(&file, "[limits]\nmax_packet_sise = 10\n").unwrap();
    let (code, stderr) = bad_config_output(|c| {
        c.args(["-c", file.to_str().unwrap()]);
    });
    assert_eq!(code, 2);
    assert!(stderr.contains("max_packet_sise"), "{stderr}");
}

#[test]
fn a_missing_config_file_exits_2() {
    let (code, stderr) = bad_config_output(|c| {
        c.args(["-c", "/nonexistent/tidemq.toml"]);
    });
    assert_eq!(code, 2, "{stderr}");
}

/// `tidemq passwd` with `args`; its exit code and standard error.
fn passwd(args: &[&str]) -> (i32, String) {
    let output = tidemq().arg("passwd").args(args).output().unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// The CONNACK return code a 3.1.1 CONNECT with these credentials gets.
fn login_code(port: u16, client_id: &str, user: &str, password: &str) -> u8 {
    let connect = tidemq_protocol::Connect {
        version: tidemq_protocol::ProtocolVersion::V311,
        client_id: client_id.into(),
        clean_session: true,
        keep_alive: 60,
        will: None,
        username: Some(user.into()),
        password: Some(bytes::Bytes::copy_from_slice(password.as_bytes())),
        properties: Default::default(),
    };
    let mut wire = bytes::BytesMut::new();
    tidemq_protocol::encode_connect(&connect, &mut wire);
    let mut client = connect_when_up(port);
    client.set_read_timeout(Some(WAIT)).unwrap();
    client.write_all(&wire).unwrap();
    let mut connack = [0u8; 4];
    client.read_exact(&mut connack).unwrap();
    assert_eq!(connack[..3], [0x20, 2, 0], "CONNACK for {user}");
    connack[3]
}

/// A broker process, killed if the test fails before stopping it.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Running {
    /// SIGTERM, then exit 0.
    fn stop(mut self) {
        signal(&self.0, "TERM");
        assert_eq!(wait_exit(&mut self.0), 0);
    }
}

/// A broker checking `file`, with no anonymous access and no failure delay.
fn broker_with_passwords(file: &std::path::Path) -> (Running, u16) {
    let port = free_port();
    let child = tidemq()
        .stderr(Stdio::null())
        .env("TIDEMQ_LISTENER__BIND", format!("127.0.0.1:{port}"))
        .env("TIDEMQ_AUTH__PASSWORD_FILE", file)
        .env("TIDEMQ_AUTH__ALLOW_ANONYMOUS", "false")
        .env("TIDEMQ_AUTH__FAILED_LOGIN_DELAY_MS", "0")
        .env("TIDEMQ_AUTH__FAILED_LOGIN_MAX_DELAY_MS", "0")
        .spawn()
        .unwrap();
    (Running(child), port)
}

#[test]
fn passwd_writes_entries_the_broker_accepts_and_deletes_them() {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!("tidemq-cli-passwd-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("passwd");
    let path = file.to_str().unwrap();

    let (code, stderr) = passwd(&["-b", "alice-pw", path, "alice"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("added alice"), "{stderr}");
    let (code, stderr) = passwd(&["--scram", "-b", "bob-pw", path, "bob"]);
    assert_eq!(code, 0, "{stderr}");
    let text = std::fs::read_to_string(&file).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(lines[0].starts_with("alice:$argon2id$"), "{text}");
    assert!(lines[1].starts_with("bob:SCRAM-SHA-256$"), "{text}");
    assert!(!text.contains("alice-pw") && !text.contains("bob-pw"));
    let mode = std::fs::metadata(&file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "a new password file is private");

    let (broker, port) = broker_with_passwords(&file);
    assert_eq!(login_code(port, "a", "alice", "alice-pw"), 0);
    assert_eq!(login_code(port, "b", "bob", "bob-pw"), 0);
    assert_eq!(login_code(port, "c", "alice", "bob-pw"), 5);
    broker.stop();

    let (code, stderr) = passwd(&["-D", path, "alice"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("deleted alice"), "{stderr}");
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(
        text.starts_with("bob:") && !text.contains("alice"),
        "{text}"
    );
    let (broker, port) = broker_with_passwords(&file);
    assert_eq!(login_code(port, "a", "alice", "alice-pw"), 5);
    assert_eq!(login_code(port, "b", "bob", "bob-pw"), 0);
    broker.stop();
    let _ = std::fs::remove_dir_all(&dir);
}

// ---------------------------------------------------------------------------
// Exit codes: 2 for a configuration problem, 1 for a runtime failure
// ---------------------------------------------------------------------------

/// A fresh directory of this test's own.
fn scratch(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("tidemq-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs `command` to its exit, killing it after [`WAIT`]: the exit code,
/// standard output and standard error.
fn run_to_exit(command: &mut Command) -> (i32, String, String) {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let gather = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = pipe.read_to_string(&mut text);
            text
        })
    };
    let stdout = gather(Box::new(child.stdout.take().unwrap()));
    let stderr = gather(Box::new(child.stderr.take().unwrap()));
    let mut running = Running(child);
    let code = wait_exit(&mut running.0);
    (code, stdout.join().unwrap(), stderr.join().unwrap())
}

/// One configuration problem: the config file's text, the environment
/// added, and what the error must name.
struct Problem {
    name: &'static str,
    file: &'static str,
    env: &'static [(&'static str, &'static str)],
    names: &'static str,
}

const PROBLEMS: &[Problem] = &[
    Problem {
        name: "unknown key",
        file: "[limits]\nmax_packet_sise = 10\n",
        env: &[],
        names: "max_packet_sise",
    },
    Problem {
        name: "bad value",
        file: "[limits]\nmax_inflight = 0\n",
        env: &[],
        names: "limits.max_inflight",
    },
    Problem {
        name: "bad value in the environment",
        file: "",
        env: &[("TIDEMQ_CONNECTIONS__MAX_PENDING", "0")],
        names: "connections.max_pending",
    },
    Problem {
        name: "not TOML",
        file: "[limits\n",
        env: &[],
        names: "tidemq.toml",
    },
    Problem {
        name: "misspelt log level",
        file: "[log]\nlevel = \"inf\"\n",
        env: &[],
        names: "log.level",
    },
    Problem {
        name: "log level that is no filter",
        file: "[log]\nlevel = \"[\"\n",
        env: &[],
        names: "log.level",
    },
    Problem {
        name: "bad target level",
        file: "[log]\nlevel = \"warn,tidemq=loud\"\n",
        env: &[],
        names: "log.level",
    },
    Problem {
        name: "unknown log format",
        file: "[log]\nformat = \"xml\"\n",
        env: &[],
        names: "log.format",
    },
    Problem {
        name: "misspelt RUST_LOG",
        file: "",
        env: &[("RUST_LOG", "inf")],
        names: "RUST_LOG",
    },
    Problem {
        name: "missing certificate",
        file: "[[listener]]\nbind = \"127.0.0.1:1\"\n\
               tls = { cert = \"/nonexistent/cert.pem\", key = \"/nonexistent/key.pem\" }\n",
        env: &[],
        names: "/nonexistent/cert.pem",
    },
    Problem {
        name: "missing password file",
        file: "[auth]\npassword_file = \"/nonexistent/passwd\"\n",
        env: &[],
        names: "/nonexistent/passwd",
    },
    Problem {
        name: "missing ACL file",
        file: "[auth]\nacl_file = \"/nonexistent/acl\"\n",
        env: &[],
        names: "/nonexistent/acl",
    },
];

/// Proves that every kind of configuration problem, in the file, the
/// environment, `RUST_LOG` or a file the config names, stops the start with
/// exit code 2 and an error naming the key or file, and that
/// `tidemq check-config` finds the same problem with the same answer.
#[test]
fn every_configuration_problem_exits_2_naming_it_at_start_and_in_check_config() {
    let dir = scratch("problems");
    let file = dir.join("tidemq.toml");
    for problem in PROBLEMS {
        std::fs::write(&file, problem.file).unwrap();
        let port = free_port();
        for check in [false, true] {
            let mut command = tidemq();
            command
                .env("TIDEMQ_LISTENER__BIND", format!("127.0.0.1:{port}"))
                .envs(problem.env.iter().copied());
            match check {
                true => command.arg("check-config").arg(&file),
                false => command.arg("-c").arg(&file),
            };
            let (code, stdout, stderr) = run_to_exit(&mut command);
            let what = format!("{} (check-config: {check})", problem.name);
            assert_eq!(code, 2, "{what}: {stderr}");
            assert!(stderr.contains(problem.names), "{what}: {stderr}");
            assert!(stderr.starts_with("tidemq: "), "{what}: {stderr}");
            assert!(!stdout.contains("config OK"), "{what}: {stdout}");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_config_file_that_cannot_be_read_exits_2() {
    let dir = scratch("unreadable");
    for path in [dir.clone(), dir.join("missing.toml")] {
        let (code, _, stderr) = run_to_exit(tidemq().arg("-c").arg(&path));
        assert_eq!(code, 2, "{}: {stderr}", path.display());
        let (code, _, stderr) = run_to_exit(tidemq().arg("check-config").arg(&path));
        assert_eq!(code, 2, "{}: {stderr}", path.display());
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Proves that a runtime failure (here the port is taken) is exit code 1,
/// apart from the configuration problems' 2.
#[test]
fn a_port_in_use_exits_1() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let (code, _, stderr) = run_to_exit(tidemq().env("TIDEMQ_LISTENER__BIND", addr.to_string()));
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains(&format!("cannot listen on {addr}")),
        "{stderr}"
    );
}

// ---------------------------------------------------------------------------
// tidemq check-config
// ---------------------------------------------------------------------------

#[test]
fn check_config_accepts_the_reference_config() {
    let reference = concat!(env!("CARGO_MANIFEST_DIR"), "/../configs/tidemq.toml");
    let (code, stdout, stderr) = run_to_exit(tidemq().args(["check-config", reference]));
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stdout, "config OK\n");
}

/// Proves that `check-config` loads what a listener needs (a certificate
/// and key, a password file, an ACL file) and passes them, without binding:
/// the listener's port is taken while it checks.
#[test]
fn check_config_loads_a_listeners_files_without_binding() {
    let dir = scratch("check-files");
    let rcgen::CertifiedKey { cert, key_pair } =
        rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    std::fs::write(dir.join("cert.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), key_pair.serialize_pem()).unwrap();
    std::fs::write(dir.join("acl"), "topic readwrite #\n").unwrap();
    let passwords = dir.join("passwd");
    let (code, stderr) = passwd(&["-b", "pw", passwords.to_str().unwrap(), "alice"]);
    assert_eq!(code, 0, "{stderr}");
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let file = dir.join("tidemq.toml");
    let path = |name: &str| dir.join(name).display().to_string();
    std::fs::write(
        &file,
        format!(
            "[[listener]]\nbind = \"{addr}\"\n\
             tls = {{ cert = \"{}\", key = \"{}\" }}\n\
             password_file = \"{}\"\nacl_file = \"{}\"\n",
            path("cert.pem"),
            path("key.pem"),
            path("passwd"),
            path("acl"),
        ),
    )
    .unwrap();
    let (code, stdout, stderr) = run_to_exit(tidemq().arg("check-config").arg(&file));
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stdout, "config OK\n");

    // The same config with a key that is not a key: named, exit 2.
    std::fs::write(dir.join("key.pem"), "not a key\n").unwrap();
    let (code, stdout, stderr) = run_to_exit(tidemq().arg("check-config").arg(&file));
    assert_eq!(code, 2, "{stdout}");
    assert!(stderr.contains(&path("key.pem")), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

// ---------------------------------------------------------------------------
// Environment
// ---------------------------------------------------------------------------

/// Proves that only `TIDEMQ_<SECTION>__<KEY>` variables are config: an
/// unrelated `TIDEMQ_HOME` or `TIDEMQ_BIN` (set by scripts/test itself)
/// neither fails the check nor stops the start.
#[test]
fn unrelated_tidemq_variables_do_not_stop_the_broker() {
    let unrelated = [("TIDEMQ_HOME", "/x"), ("TIDEMQ_BIN", "/y")];
    let reference = concat!(env!("CARGO_MANIFEST_DIR"), "/../configs/tidemq.toml");
    let (code, stdout, stderr) =
        run_to_exit(tidemq().envs(unrelated).args(["check-config", reference]));
    assert_eq!((code, stdout.as_str()), (0, "config OK\n"), "{stderr}");

    let port = free_port();
    let child = tidemq()
        .envs(unrelated)
        .env("TIDEMQ_LISTENER__BIND", format!("127.0.0.1:{port}"))
        .spawn()
        .unwrap();
    let broker = Running(child);
    let _client = connected_client(port);
    broker.stop();
}
