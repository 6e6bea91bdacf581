//! The dormitory with real sockets: every way a sleeper is woken.

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::sync::mpsc;

use super::*;

/// A sleeper that reports its waking on a channel.
struct Probe {
    socket: TcpStream,
    deadline: Option<Instant>,
    /// Whether `install_alarm` asks to be woken at once.
    wake_at_once: bool,
    alarms: mpsc::Sender<Alarm>,
    woken: mpsc::Sender<&'static str>,
    name: &'static str,
}

impl Sleeper for Probe {
    fn fd(&self) -> RawFd {
        use std::os::fd::AsRawFd;
        self.socket.as_raw_fd()
    }

    fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    fn install_alarm(&self, alarm: Alarm) -> bool {
        self.alarms.send(alarm).unwrap();
        self.wake_at_once
    }

    fn wake(self: Box<Self>) {
        self.woken.send(self.name).unwrap();
    }
}

/// A connected pair: (the sleeper's side, the peer's side).
fn pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let peer = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (mine, _) = listener.accept().unwrap();
    mine.set_nonblocking(true).unwrap();
    (mine, peer)
}

struct Fixture {
    dormitory: Dormitory,
    alarms: mpsc::Receiver<Alarm>,
    woken: mpsc::Receiver<&'static str>,
    alarm_tx: mpsc::Sender<Alarm>,
    woken_tx: mpsc::Sender<&'static str>,
}

impl Fixture {
    fn new() -> Fixture {
        let (alarm_tx, alarms) = mpsc::channel();
        let (woken_tx, woken) = mpsc::channel();
        Fixture {
            dormitory: Dormitory::start().unwrap(),
            alarms,
            woken,
            alarm_tx,
            woken_tx,
        }
    }

    fn admit(
        &self,
        name: &'static str,
        socket: TcpStream,
        deadline: Option<Instant>,
        wake_at_once: bool,
    ) -> Alarm {
        self.dormitory.admit(Box::new(Probe {
            socket,
            deadline,
            wake_at_once,
            alarms: self.alarm_tx.clone(),
            woken: self.woken_tx.clone(),
            name,
        }));
        self.alarms.recv_timeout(Duration::from_secs(1)).unwrap()
    }

    fn woken(&self) -> Option<&'static str> {
        self.woken.recv_timeout(Duration::from_secs(2)).ok()
    }

    fn quiet(&self) -> bool {
        self.woken.recv_timeout(Duration::from_millis(100)).is_err()
    }
}

#[test]
fn data_on_the_socket_wakes_its_sleeper_only() {
    let fixture = Fixture::new();
    let (a, mut peer_a) = pair();
    let (b, _peer_b) = pair();
    fixture.admit("a", a, None, false);
    fixture.admit("b", b, None, false);
    assert_eq!(fixture.dormitory.sleeping(), 2);
    assert!(fixture.quiet());
    peer_a.write_all(&[0xC0, 0]).unwrap();
    assert_eq!(fixture.woken(), Some("a"));
    assert!(fixture.quiet());
    assert_eq!(fixture.dormitory.sleeping(), 1);
}

#[test]
fn a_peer_closing_wakes_the_sleeper() {
    let fixture = Fixture::new();
    let (a, peer) = pair();
    fixture.admit("a", a, None, false);
    drop(peer);
    assert_eq!(fixture.woken(), Some("a"));
}

#[test]
fn data_already_waiting_wakes_at_once() {
    let fixture = Fixture::new();
    let (a, mut peer) = pair();
    peer.write_all(&[0xC0, 0]).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    fixture.admit("a", a, None, false);
    assert_eq!(fixture.woken(), Some("a"));
}

#[test]
fn the_alarm_wakes_once_and_later_rings_do_nothing() {
    let fixture = Fixture::new();
    let (a, _peer) = pair();
    let alarm = fixture.admit("a", a, None, false);
    alarm.ring();
    assert_eq!(fixture.woken(), Some("a"));
    // The bed is reused by another sleeper; the old alarm must not wake it.
    let (b, _peer_b) = pair();
    fixture.admit("b", b, None, false);
    alarm.ring();
    assert!(fixture.quiet());
}

#[test]
fn asking_at_admission_wakes_at_once() {
    let fixture = Fixture::new();
    let (a, _peer) = pair();
    fixture.admit("a", a, None, true);
    assert_eq!(fixture.woken(), Some("a"));
}

#[test]
fn deadlines_wake_in_order() {
    let fixture = Fixture::new();
    let (a, _peer_a) = pair();
    let (b, _peer_b) = pair();
    let now = Instant::now();
    fixture.admit("late", a, Some(now + Duration::from_millis(300)), false);
    fixture.admit("early", b, Some(now + Duration::from_millis(100)), false);
    assert_eq!(fixture.woken(), Some("early"));
    assert_eq!(fixture.woken(), Some("late"));
    assert!(now.elapsed() >= Duration::from_millis(300));
}

#[test]
fn closing_wakes_everyone_and_refuses_newcomers() {
    let fixture = Fixture::new();
    let (a, _peer_a) = pair();
    let (b, _peer_b) = pair();
    fixture.admit("a", a, None, false);
    fixture.admit("b", b, None, false);
    fixture.dormitory.close();
    let mut woken = [fixture.woken().unwrap(), fixture.woken().unwrap()];
    woken.sort();
    assert_eq!(woken, ["a", "b"]);
    let (c, _peer_c) = pair();
    fixture.dormitory.admit(Box::new(Probe {
        socket: c,
        deadline: None,
        wake_at_once: false,
        alarms: fixture.alarm_tx.clone(),
        woken: fixture.woken_tx.clone(),
        name: "c",
    }));
    assert_eq!(fixture.woken(), Some("c"));
}

#[test]
fn stale_deadlines_are_compacted() {
    let fixture = Fixture::new();
    let far = Instant::now() + Duration::from_secs(3600);
    // Just past the rebuild threshold (2 x sleeping + 1024).
    for _ in 0..1100 {
        let (a, _peer) = pair();
        let alarm = fixture.admit("a", a, Some(far), false);
        alarm.ring();
        assert_eq!(fixture.woken(), Some("a"));
    }
    let beds = lock(&fixture.dormitory.shared.beds);
    assert!(beds.deadlines.len() <= 2 * beds.sleeping + 1024 + 1);
}
