// JavaScript-client tests for tidemq: MQTT.js in Node (over WebSocket and
// plain TCP) and MQTT.js's browser bundle in headless Chromium.
//
// Starts the broker (TIDEMQ_BIN, default target/debug/tidemq) on two port-0
// listeners (mqtt and ws) and a port-0 HTTP listener (the dashboard), reads
// their addresses from its "listening" and "http listening" log lines, runs
// the tests, stops everything. Prints one line per test and
// "js: N passed, M failed"; exits 1 on any failure. Every wait is bounded,
// and so is the whole run (JS_TEST_TIMEOUT_MS, default 120 s).
//
// Usage: node tests/js/run.mjs   (after `npm ci` in tests/js)
// Env: TIDEMQ_BIN, CHROMIUM_BIN (default /usr/bin/chromium), JS_TEST_FILTER
// (substring of test names to run).

import { spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync, existsSync } from 'node:fs';
import http from 'node:http';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import mqtt from 'mqtt';
import puppeteer from 'puppeteer-core';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const ROOT = path.resolve(HERE, '..', '..');
const BIN = process.env.TIDEMQ_BIN || path.join(ROOT, 'target', 'debug', 'tidemq');
const CHROMIUM = process.env.CHROMIUM_BIN || '/usr/bin/chromium';
const WAIT_MS = 10_000; // any single wait
const TEST_MS = 30_000; // one test
const RUN_MS = Number(process.env.JS_TEST_TIMEOUT_MS || 120_000); // everything

// ---------------------------------------------------------------- helpers

/** Rejects after `ms` with `what` unless `promise` settles first. */
function within(ms, what, promise) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

function assert(cond, message) {
  if (!cond) throw new Error(`assertion failed: ${message}`);
}

function assertEq(actual, expected, what) {
  const a = JSON.stringify(actual);
  const e = JSON.stringify(expected);
  if (a !== e) throw new Error(`${what}: expected ${e}, got ${a}`);
}

const uid = () => randomBytes(6).toString('hex');

// ---------------------------------------------------------------- broker

const cleanup = []; // run last-in first-out at the end, whatever happens
let broker = null;
let chromium = null; // the browser's process while it runs
const brokerLog = [];

function stripAnsi(s) {
  // eslint-disable-next-line no-control-regex
  return s.replace(/\x1b\[[0-9;]*m/g, '');
}

/** Starts tidemq; resolves with { mqtt: "127.0.0.1:P", ws: "127.0.0.1:Q", http: "127.0.0.1:R" }. */
async function startBroker(dir) {
  if (!existsSync(BIN)) throw new Error(`broker binary not found: ${BIN} (build it or set TIDEMQ_BIN)`);
  const config = path.join(dir, 'tidemq.toml');
  writeFileSync(
    config,
    [
      '[[listener]]',
      'bind = "127.0.0.1:0"',
      'protocol = "mqtt"',
      '',
      '[[listener]]',
      'bind = "127.0.0.1:0"',
      'protocol = "ws"',
      'ws_path = "/mqtt"',
      '',
      '[sys]',
      'interval_secs = 0',
      '',
      '[http]',
      'bind = "127.0.0.1:0"',
      '',
      '[storage]',
      'enabled = false',
      `dir = ${JSON.stringify(path.join(dir, 'data'))}`,
      '',
      '[log]',
      'level = "info"',
      '',
    ].join('\n'),
  );
  const env = { ...process.env, NO_COLOR: '1' };
  delete env.RUST_LOG;
  for (const key of Object.keys(env)) if (key.startsWith('TIDEMQ_') && key !== 'TIDEMQ_BIN') delete env[key];
  const child = spawn(BIN, ['-c', config], { cwd: dir, env, stdio: ['ignore', 'pipe', 'pipe'] });
  broker = child;
  const exited = new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
  child.exitedPromise = exited;
  cleanup.push(() => stopBroker(child));

  const addrs = {};
  const listening = new Promise((resolve, reject) => {
    const onLine = (raw) => {
      const line = stripAnsi(raw);
      brokerLog.push(line);
      if (brokerLog.length > 500) brokerLog.shift();
      const m = /\blistening\s+addr=(\S+)\s+protocol=(\w+)\s+tls=(\w+)/.exec(line);
      if (m) addrs[m[2].toLowerCase()] = m[1];
      const h = /\bhttp listening\s+addr=(\S+)/.exec(line);
      if (h) addrs.http = h[1];
      if (addrs.mqtt && addrs.ws && addrs.http) resolve(addrs);
    };
    for (const stream of [child.stdout, child.stderr]) {
      let buf = '';
      stream.setEncoding('utf8');
      stream.on('data', (chunk) => {
        buf += chunk;
        let nl;
        while ((nl = buf.indexOf('\n')) >= 0) {
          onLine(buf.slice(0, nl));
          buf = buf.slice(nl + 1);
        }
      });
    }
    child.once('error', reject);
    exited.then(({ code, signal }) => reject(new Error(`broker exited before listening (code ${code}, signal ${signal})`)));
  });
  return within(WAIT_MS, 'broker "listening" and "http listening" log lines', listening);
}

async function stopBroker(child) {
  if (child.exitCode !== null || child.signalCode !== null) return;
  child.kill('SIGTERM');
  try {
    await within(8_000, 'broker shutdown', child.exitedPromise);
  } catch {
    child.kill('SIGKILL');
    await within(2_000, 'broker kill', child.exitedPromise).catch(() => {});
  }
}

// ---------------------------------------------------------------- MQTT.js

/** A connected MQTT.js client that records every message it receives. */
async function client(url, options, track) {
  const c = mqtt.connect(url, {
    clientId: `js-${uid()}`,
    reconnectPeriod: 0,
    connectTimeout: 5_000,
    ...options,
  });
  track.push(c);
  c.received = [];
  c.waiters = [];
  c.on('message', (topic, payload, packet) => {
    const msg = { topic, raw: Buffer.from(payload), payload: payload.toString('utf8'), qos: packet.qos, retain: packet.retain, properties: packet.properties };
    c.received.push(msg);
    for (const w of [...c.waiters]) w();
  });
  await within(
    WAIT_MS,
    `connect to ${url}`,
    new Promise((resolve, reject) => {
      c.once('connect', resolve);
      c.once('error', reject);
      c.once('close', () => reject(new Error(`connection to ${url} closed before CONNACK`)));
    }),
  );
  c.removeAllListeners('error');
  c.on('error', (e) => {
    c.lastError = e;
  });
  return c;
}

/** Waits until `count` received messages satisfy `pred`; returns them. */
function waitMessages(c, pred, count, what) {
  const matching = () => c.received.filter(pred);
  return within(
    WAIT_MS,
    what,
    new Promise((resolve) => {
      const check = () => {
        const m = matching();
        if (m.length >= count) {
          c.waiters = c.waiters.filter((w) => w !== check);
          resolve(m);
        }
      };
      c.waiters.push(check);
      check();
    }),
  ).catch((e) => {
    throw new Error(`${e.message} (got ${JSON.stringify(matching().map((m) => [m.topic, m.payload]))})`);
  });
}

async function subscribe(c, filter, qos) {
  const granted = await within(WAIT_MS, `subscribe ${filter}`, c.subscribeAsync(filter, { qos }));
  assertEq(granted.map((g) => g.qos), [qos], `granted QoS for ${filter}`);
}

function publish(c, topic, payload, opts) {
  return within(WAIT_MS, `publish QoS ${opts.qos} to ${topic}`, c.publishAsync(topic, payload, opts));
}

async function endAll(clients) {
  await Promise.all(clients.map((c) => within(3_000, 'client end', c.endAsync(true)).catch(() => {})));
}

// ---------------------------------------------------------------- tests

const tests = [];
const test = (name, fn) => tests.push({ name, fn });
let A; // broker addresses
const wsUrl = () => `ws://${A.ws}/mqtt`;
const tcpUrl = () => `mqtt://${A.mqtt}`;

for (const version of [4, 5]) {
  test(`ws: MQTT ${version === 5 ? '5' : '3.1.1'} subscribe and publish QoS 0/1/2`, async (track) => {
    const base = `js/ws/v${version}/${uid()}`;
    const c = await client(wsUrl(), { protocolVersion: version }, track);
    await subscribe(c, `${base}/#`, 2);
    const sent = [0, 1, 2].map((qos) => ({ topic: `${base}/q${qos}`, payload: `payload qos ${qos} ${uid()}`, qos }));
    for (const m of sent) {
      const opts = { qos: m.qos };
      if (version === 5) opts.properties = { userProperties: { test: `q${m.qos}` }, contentType: 'text/plain' };
      await publish(c, m.topic, m.payload, opts);
    }
    const got = await waitMessages(c, (m) => m.topic.startsWith(`${base}/`), 3, `three messages on ${base}/#`);
    for (const m of sent) {
      const r = got.find((g) => g.topic === m.topic);
      assert(r, `message on ${m.topic} received`);
      assertEq(r.payload, m.payload, `payload on ${m.topic}`);
      assertEq(r.qos, m.qos, `QoS on ${m.topic}`);
      if (version === 5) {
        assertEq(r.properties?.userProperties?.test, `q${m.qos}`, `user property on ${m.topic}`);
        assertEq(r.properties?.contentType, 'text/plain', `content type on ${m.topic}`);
      }
    }
    assertEq(got.length, 3, 'messages received (no duplicates)');
  });
}

test('cross transport: ws publishes, tcp receives; tcp publishes, ws receives', async (track) => {
  const base = `js/cross/${uid()}`;
  const ws = await client(wsUrl(), { protocolVersion: 5 }, track);
  const tcp = await client(tcpUrl(), { protocolVersion: 4 }, track);
  await subscribe(tcp, `${base}/ws2tcp`, 1);
  await subscribe(ws, `${base}/tcp2ws`, 2);
  const p1 = `from ws ${uid()}`;
  const p2 = `from tcp ${uid()}`;
  await publish(ws, `${base}/ws2tcp`, p1, { qos: 1 });
  await publish(tcp, `${base}/tcp2ws`, p2, { qos: 2 });
  const [a] = await waitMessages(tcp, (m) => m.topic === `${base}/ws2tcp`, 1, 'tcp client gets the ws message');
  const [b] = await waitMessages(ws, (m) => m.topic === `${base}/tcp2ws`, 1, 'ws client gets the tcp message');
  assertEq(a.payload, p1, 'payload ws -> tcp');
  assertEq(a.qos, 1, 'QoS ws -> tcp');
  assertEq(b.payload, p2, 'payload tcp -> ws');
  assertEq(b.qos, 2, 'QoS tcp -> ws');
  // A binary payload survives both framings byte for byte.
  const bin = Buffer.from([0, 1, 2, 0xfe, 0xff, 0x80, 0x0a, 0x0d]);
  await publish(tcp, `${base}/tcp2ws`, bin, { qos: 1 });
  const got = await waitMessages(ws, (m) => m.topic === `${base}/tcp2ws`, 2, 'binary payload on ws');
  assertEq([...got[1].raw], [...bin], 'binary payload tcp -> ws');
});

test('retained: a ws subscriber gets the retained message on subscribe', async (track) => {
  const topic = `js/retained/${uid()}`;
  const payload = `retained ${uid()}`;
  const tcp = await client(tcpUrl(), {}, track);
  await publish(tcp, topic, payload, { qos: 1, retain: true });
  for (const version of [4, 5]) {
    const ws = await client(wsUrl(), { protocolVersion: version }, track);
    await subscribe(ws, topic, 1);
    const [m] = await waitMessages(ws, (x) => x.topic === topic, 1, `retained message (MQTT v${version})`);
    assertEq(m.payload, payload, 'retained payload');
    assertEq(m.retain, true, 'retain flag on delivery');
    assertEq(m.qos, 1, 'retained QoS');
  }
  // Clear it, and a later subscriber gets nothing retained: a live message
  // published afterwards is the first thing it sees.
  await publish(tcp, topic, '', { qos: 1, retain: true });
  const late = await client(wsUrl(), {}, track);
  await subscribe(late, topic, 1);
  await publish(tcp, topic, 'live', { qos: 1 });
  const [first] = await waitMessages(late, (x) => x.topic === topic, 1, 'live message after clearing');
  assertEq([first.payload, first.retain], ['live', false], 'first message after the retained one was cleared');
});

test('ws handshake: subprotocol mqtt chosen, wrong path refused with 404', async () => {
  const [host, port] = [A.ws.slice(0, A.ws.lastIndexOf(':')), Number(A.ws.slice(A.ws.lastIndexOf(':') + 1))];
  const upgrade = (reqPath, protocols) =>
    within(
      WAIT_MS,
      `upgrade ${reqPath}`,
      new Promise((resolve, reject) => {
        const key = randomBytes(16).toString('base64');
        const req = http.request({
          host,
          port,
          path: reqPath,
          headers: {
            Connection: 'Upgrade',
            Upgrade: 'websocket',
            'Sec-WebSocket-Version': '13',
            'Sec-WebSocket-Key': key,
            'Sec-WebSocket-Protocol': protocols,
          },
        });
        req.on('upgrade', (res, socket) => {
          socket.destroy();
          resolve({ status: res.statusCode, headers: res.headers, key });
        });
        req.on('response', (res) => {
          res.resume();
          resolve({ status: res.statusCode, headers: res.headers, key });
        });
        req.on('error', reject);
        req.end();
      }),
    );
  const ok = await upgrade('/mqtt', 'foo, mqtt');
  assertEq(ok.status, 101, 'status for /mqtt');
  assertEq(ok.headers['sec-websocket-protocol'], 'mqtt', 'chosen subprotocol');
  const accept = createHash('sha1').update(ok.key + '258EAFA5-E914-47DA-95CA-C5AB0DC85B11').digest('base64');
  assertEq(ok.headers['sec-websocket-accept'], accept, 'Sec-WebSocket-Accept');
  const wrong = await upgrade('/not-mqtt', 'mqtt');
  assertEq(wrong.status, 404, 'status for a wrong path');
});

test('browser: MQTT.js bundle in headless Chromium round-trips over ws', async (track) => {
  const base = `js/browser/${uid()}`;
  const bundle = readFileSync(path.join(HERE, 'node_modules', 'mqtt', 'dist', 'mqtt.min.js'));
  const html = readFileSync(path.join(HERE, 'page.html'));
  const server = http.createServer((req, res) => {
    const p = new URL(req.url, 'http://x').pathname;
    if (p === '/') {
      res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' }).end(html);
    } else if (p === '/mqtt.min.js') {
      res.writeHead(200, { 'content-type': 'text/javascript; charset=utf-8' }).end(bundle);
    } else {
      res.writeHead(404).end();
    }
  });
  await within(WAIT_MS, 'page server listen', new Promise((resolve) => server.listen(0, '127.0.0.1', resolve)));
  const profile = mkdtempSync(path.join(tmpdir(), 'tidemq-js-chromium-'));
  const pageLog = [];
  let browser = null;
  try {
    // The Node side: a plain-TCP client that talks to the page.
    const tcp = await client(tcpUrl(), {}, track);
    await subscribe(tcp, `${base}/from-browser`, 1);

    browser = await launchChromium(profile);
    const page = await browser.newPage();
    page.on('console', (m) => pageLog.push(`console.${m.type()}: ${m.text()}`));
    page.on('pageerror', (e) => pageLog.push(`pageerror: ${e.message}`));
    const { port } = server.address();
    const url = `http://127.0.0.1:${port}/?ws=${encodeURIComponent(wsUrl())}&base=${encodeURIComponent(base)}&v=4`;
    await page.goto(url, { waitUntil: 'load', timeout: WAIT_MS });

    await page.waitForFunction(
      () => window.__state === 'subscribed' || window.__result !== undefined,
      { timeout: WAIT_MS, polling: 50 },
    );
    const early = await page.evaluate(() => window.__result);
    if (early && !early.ok) throw new Error(`page failed: ${JSON.stringify(early)}`);
    const toBrowser = `to browser ${uid()}`;
    await publish(tcp, `${base}/to-browser`, toBrowser, { qos: 2 });

    await page.waitForFunction(() => window.__result !== undefined, { timeout: WAIT_MS, polling: 50 });
    const result = await page.evaluate(() => window.__result);
    assert(result.ok, `page result ok: ${JSON.stringify(result)}`);
    assertEq(result.echo, result.ping, 'the page got its own message back');
    assertEq(result.echoQos, 1, 'QoS of the echo');
    assertEq(result.toBrowser, toBrowser, 'the page got the Node client message');
    assertEq(result.subprotocol, 'mqtt', 'WebSocket subprotocol the page negotiated');
    assertEq(result.url, wsUrl(), 'WebSocket URL the page used');
    const [ack] = await waitMessages(tcp, (m) => m.topic === `${base}/from-browser`, 1, 'the page answer');
    assertEq(ack.payload, `ack:${toBrowser}`, 'the page answer');
  } catch (e) {
    if (pageLog.length) e.message += `\n  page log:\n    ${pageLog.slice(-20).join('\n    ')}`;
    throw e;
  } finally {
    if (browser) {
      const proc = browser.process();
      await within(5_000, 'chromium close', browser.close()).catch(() => {
        if (proc && proc.exitCode === null) proc.kill('SIGKILL');
      });
      chromium = null;
    }
    server.closeAllConnections?.();
    await within(3_000, 'page server close', new Promise((resolve) => server.close(resolve))).catch(() => {});
    rmSync(profile, { recursive: true, force: true });
  }
});

/** Headless Chromium with the flags this machine needs (see scripts/js-test). */
async function launchChromium(profile) {
  const browser = await puppeteer.launch({
    executablePath: CHROMIUM,
    headless: true,
    userDataDir: profile,
    timeout: 20_000,
    protocolTimeout: 20_000,
    args: [
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
      '--disable-dev-shm-usage',
    ],
  });
  chromium = browser.process();
  return browser;
}

test('dashboard: retained topics paged; numbers and charts move while clients publish; kick closes a client', async (track) => {
  const base = `js/dashboard/${uid()}`;
  const victimId = `dash-victim-${uid()}`;
  const profile = mkdtempSync(path.join(tmpdir(), 'tidemq-js-chromium-'));
  const pageLog = [];
  let browser = null;
  let publishing = null;
  let stop = false;
  try {
    const victim = await client(tcpUrl(), { clientId: victimId, protocolVersion: 5 }, track);
    const victimClosed = new Promise((resolve) => victim.once('close', resolve));
    const publisher = await client(wsUrl(), {}, track);
    // One more retained message than the dashboard's page of 100 ($SYS is
    // off in this broker, so these are all it stores).
    const retainedTopic = (n) => `${base}/retained/${String(n).padStart(3, '0')}`;
    for (let n = 0; n <= 100; n++) {
      await publish(publisher, retainedTopic(n), `kept ${n}`, { qos: 1, retain: true });
    }

    browser = await launchChromium(profile);
    const page = await browser.newPage();
    page.on('console', (m) => pageLog.push(`console.${m.type()}: ${m.text()}`));
    page.on('pageerror', (e) => pageLog.push(`pageerror: ${e.message}`));
    page.on('requestfailed', (r) => pageLog.push(`requestfailed: ${r.url()}`));
    await page.goto(`http://${A.http}/`, { waitUntil: 'load', timeout: WAIT_MS });
    await page.waitForFunction(() => window.__dashboard && window.__dashboard.polls >= 2, { timeout: WAIT_MS, polling: 50 });
    const before = await page.evaluate(() => window.__dashboard.stats.metrics.messages_received);

    // The retained topics: a first page of 100 rows and a `more` button
    // that brings the 101st.
    const retainedRows = () =>
      page.evaluate(() => [...document.querySelectorAll('#retained tbody tr')].map((r) => [...r.cells].map((c) => c.textContent)));
    await page.waitForFunction(() => document.querySelectorAll('#retained tbody tr').length === 100, { timeout: WAIT_MS, polling: 50 });
    const firstPage = await retainedRows();
    assertEq(firstPage[0], [retainedTopic(0), '1', String('kept 0'.length), 'kept 0'], 'first retained row');
    assertEq(await page.$eval('#retained-count', (e) => e.textContent), '101', 'retained tile');
    assertEq(await page.$eval('#retained-more', (e) => e.hidden), false, 'the more button shown');
    // The page reloads its first page every 5 s, which can undo a click
    // made just before: the click is retried until both pages show at once.
    const bothPages = async () => {
      await page.click('#retained-more');
      return page
        .waitForFunction(
          (topic) => {
            const rows = document.querySelectorAll('#retained tbody tr');
            const last = rows[100];
            return rows.length === 101 && last.cells[0].textContent === topic && last.cells[3].textContent === 'kept 100' && document.getElementById('retained-more').hidden;
          },
          { timeout: 2_000, polling: 50 },
          retainedTopic(100),
        )
        .then(() => true, () => false);
    };
    let paged = false;
    for (let attempt = 0; attempt < 3 && !paged; attempt++) paged = await bothPages();
    assert(paged, `the 101st retained row after "more": ${JSON.stringify((await retainedRows()).slice(-2))}`);
    for (let n = 0; n <= 100; n++) {
      await publish(publisher, retainedTopic(n), '', { qos: 1, retain: true });
    }

    // A steady publisher (QoS 0, every 20 ms) for as long as the test runs.
    publishing = (async () => {
      for (let i = 0; !stop && i < 1500; i++) {
        await publish(publisher, `${base}/load`, `m${i}`, { qos: 0 });
        await new Promise((r) => setTimeout(r, 20));
      }
    })();

    // The numbers move: the received counter grows and the rate shows it.
    await page.waitForFunction(
      (floor) => {
        const d = window.__dashboard;
        const last = d.samples[d.samples.length - 1];
        return last && last.received >= floor + 20 && last.rateIn > 0 && Number(document.getElementById('rate-in').textContent) > 0;
      },
      { timeout: WAIT_MS, polling: 100 },
      before,
    );
    const shown = await page.evaluate(() => ({
      received: document.getElementById('received').textContent,
      connections: document.getElementById('connections').textContent,
    }));
    assert(Number(shown.connections) >= 2, `connections shown: ${JSON.stringify(shown)}`);
    // The rate chart has been drawn: some pixels are not transparent.
    const painted = await page.evaluate(() => {
      const c = document.getElementById('chart-rates');
      const data = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
      let n = 0;
      for (let i = 3; i < data.length; i += 4) if (data[i] > 0) n++;
      return n;
    });
    assert(painted > 100, `rate chart painted (${painted} pixels)`);

    // The client list: the search box narrows it to the victim.
    await page.type('#search', victimId);
    await page.waitForFunction(
      (id) => {
        const rows = [...document.querySelectorAll('#clients tbody tr')];
        return rows.length === 1 && rows[0].dataset.clientId === id;
      },
      { timeout: WAIT_MS, polling: 50 },
      victimId,
    );
    // Kick it: the MQTT client sees its connection closed.
    const clicked = await page.evaluate((id) => {
      const button = [...document.querySelectorAll('button.kick')].find((b) => b.dataset.clientId === id);
      if (!button) return false;
      button.click();
      return true;
    }, victimId);
    assert(clicked, 'kick button found');
    await within(WAIT_MS, 'the kicked client sees its connection closed', victimClosed);
    assert(!victim.connected, 'the kicked client is disconnected');
    // And the list no longer shows it.
    await page.waitForFunction(
      (id) => ![...document.querySelectorAll('#clients tbody tr')].some((r) => r.dataset.clientId === id),
      { timeout: WAIT_MS, polling: 100 },
      victimId,
    );
    const errors = pageLog.filter((l) => l.startsWith('pageerror'));
    assertEq(errors, [], 'page errors');
  } catch (e) {
    if (pageLog.length) e.message += `\n  page log:\n    ${pageLog.slice(-20).join('\n    ')}`;
    throw e;
  } finally {
    stop = true;
    if (publishing) await publishing.catch(() => {});
    if (browser) {
      const proc = browser.process();
      await within(5_000, 'chromium close', browser.close()).catch(() => {
        if (proc && proc.exitCode === null) proc.kill('SIGKILL');
      });
      chromium = null;
    }
    rmSync(profile, { recursive: true, force: true });
  }
});

test('broker still running after the tests', async () => {
  assert(broker.exitCode === null && broker.signalCode === null, `broker exited (code ${broker.exitCode}, signal ${broker.signalCode})`);
  // A fresh ws connection still works.
  const c = await client(wsUrl(), {}, []);
  await within(3_000, 'end', c.endAsync());
});

// ---------------------------------------------------------------- runner

async function runCleanup() {
  while (cleanup.length) {
    const fn = cleanup.pop();
    try {
      await fn();
    } catch (e) {
      console.error(`cleanup: ${e.message}`);
    }
  }
}

async function main() {
  const started = Date.now();
  const dir = mkdtempSync(path.join(tmpdir(), 'tidemq-js-'));
  cleanup.push(() => rmSync(dir, { recursive: true, force: true }));
  let passed = 0;
  let failed = 0;
  try {
    A = await startBroker(dir);
    console.log(`broker ${BIN}: mqtt ${A.mqtt}, ws ${A.ws}, http ${A.http}`);
    const filter = process.env.JS_TEST_FILTER;
    for (const t of tests) {
      if (filter && !t.name.includes(filter)) continue;
      const t0 = Date.now();
      const track = [];
      try {
        await within(TEST_MS, t.name, t.fn(track));
        passed++;
        console.log(`ok   ${t.name} (${Date.now() - t0} ms)`);
      } catch (e) {
        failed++;
        console.log(`FAIL ${t.name} (${Date.now() - t0} ms): ${e.message}`);
      } finally {
        await endAll(track);
      }
    }
  } catch (e) {
    failed++;
    console.log(`FAIL setup: ${e.message}`);
  }
  if (failed && brokerLog.length) {
    console.log(`broker log (last 30 lines):\n  ${brokerLog.slice(-30).join('\n  ')}`);
  }
  await runCleanup();
  console.log(`took ${((Date.now() - started) / 1000).toFixed(1)} s`);
  console.log(`js: ${passed} passed, ${failed} failed`);
  return failed === 0 && passed > 0 ? 0 : 1;
}

// Bounds the whole run; kills the broker (and with it the run) if exceeded.
const watchdog = setTimeout(() => {
  console.log(`FAIL run: whole run exceeded ${RUN_MS} ms`);
  console.log('js: 0 passed, 1 failed');
  process.exit(1); // the 'exit' handler kills what is left
}, RUN_MS);
process.on('exit', () => {
  for (const p of [chromium, broker]) {
    if (p && p.exitCode === null && p.signalCode === null) p.kill('SIGKILL');
  }
});
for (const sig of ['SIGINT', 'SIGTERM']) process.on(sig, () => process.exit(130));

main().then(
  (code) => {
    clearTimeout(watchdog);
    process.exit(code);
  },
  async (e) => {
    console.log(`FAIL runner: ${e.stack || e}`);
    await runCleanup();
    process.exit(1);
  },
);
