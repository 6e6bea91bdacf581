// tidemq's live dashboard. Polls the admin API: /api/stats every second
// (the charts keep the last 5 minutes), /api/clients every 2 s (and as the
// search box changes), /api/retained every 5 s. The charts are drawn on
// <canvas> here; nothing is loaded from elsewhere. An API token, when the
// broker asks for one (401), is kept in localStorage.
//
// window.__dashboard exposes what was drawn, for the browser test.
'use strict';

(() => {
  const STATS_MS = 1000;
  const CLIENTS_MS = 2000;
  const RETAINED_MS = 5000;
  const WINDOW_SAMPLES = 300; // 5 minutes of one-second samples
  const PAGE = 100;

  const $ = (id) => document.getElementById(id);
  const state = {
    samples: [], // { t, connections, received, sent, rateIn, rateOut }
    stats: null,
    clients: [],
    retained: [],
    retainedAfter: null,
    polls: 0,
    errors: 0,
  };
  window.__dashboard = state;

  // ------------------------------------------------------------ API

  let token = localStorage.getItem('tidemq-token') || '';

  async function api(path, options = {}) {
    const headers = { ...(options.headers || {}) };
    if (token) headers.Authorization = `Bearer ${token}`;
    const response = await fetch(path, { ...options, headers, cache: 'no-store' });
    if (response.status === 401) {
      $('token-form').hidden = false;
      throw new Error('the API wants a token');
    }
    const body = await response.json();
    if (!response.ok) throw new Error(body.error || `HTTP ${response.status}`);
    return body;
  }

  $('token-form').addEventListener('submit', (event) => {
    event.preventDefault();
    token = $('token').value.trim();
    localStorage.setItem('tidemq-token', token);
    $('token-form').hidden = true;
    refreshAll();
  });

  function setStatus(ok, text) {
    const status = $('status');
    status.textContent = text;
    status.className = `status ${ok ? 'ok' : 'bad'}`;
  }

  // ------------------------------------------------------------ formatting

  function number(n) {
    if (n === null || n === undefined) return '–';
    if (n >= 1e9) return `${(n / 1e9).toFixed(2)}G`;
    if (n >= 1e6) return `${(n / 1e6).toFixed(2)}M`;
    if (n >= 1e4) return `${(n / 1e3).toFixed(1)}k`;
    return `${Math.round(n * 10) / 10}`;
  }

  function bytes(n) {
    if (n === null || n === undefined) return '–';
    const units = ['B', 'KiB', 'MiB', 'GiB'];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) {
      n /= 1024;
      i++;
    }
    return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
  }

  function duration(secs) {
    const s = Math.floor(secs);
    const d = Math.floor(s / 86400);
    const h = Math.floor((s % 86400) / 3600);
    const m = Math.floor((s % 3600) / 60);
    return d ? `${d}d ${h}h` : h ? `${h}h ${m}m` : `${m}m ${s % 60}s`;
  }

  function cell(row, text, className) {
    const td = document.createElement('td');
    td.textContent = text === null || text === undefined ? '–' : String(text);
    if (className) td.className = className;
    row.appendChild(td);
    return td;
  }

  // ------------------------------------------------------------ stats

  async function pollStats() {
    const stats = await api('/api/stats');
    const m = stats.metrics;
    const t = Date.now();
    const last = state.samples[state.samples.length - 1];
    const sample = { t, connections: m.connections_current, received: m.messages_received, sent: m.messages_sent, rateIn: 0, rateOut: 0 };
    if (last) {
      const secs = Math.max((t - last.t) / 1000, 0.001);
      sample.rateIn = Math.max(sample.received - last.received, 0) / secs;
      sample.rateOut = Math.max(sample.sent - last.sent, 0) / secs;
    }
    state.samples.push(sample);
    if (state.samples.length > WINDOW_SAMPLES) state.samples.shift();
    state.stats = stats;
    state.polls++;

    $('version').textContent = `v${stats.version}`;
    $('uptime').textContent = `up ${duration(stats.uptime_secs)}`;
    $('connections').textContent = number(m.connections_current);
    $('rate-in').textContent = number(sample.rateIn);
    $('rate-out').textContent = number(sample.rateOut);
    $('received').textContent = number(m.messages_received);
    $('sessions').textContent = number(m.sessions_current);
    $('subscriptions').textContent = number(m.subscriptions_current);
    $('retained-count').textContent = number(m.retained_messages_current);
    $('memory').textContent = bytes(stats.resident_memory_bytes);
    drawCharts();
  }

  // ------------------------------------------------------------ charts

  /** Draws series of { values, color } on a canvas, newest at the right. */
  function chart(canvas, series, unit) {
    const ratio = window.devicePixelRatio || 1;
    const cssWidth = canvas.clientWidth || canvas.width;
    const cssHeight = canvas.clientHeight || canvas.height;
    if (canvas.width !== Math.round(cssWidth * ratio)) {
      canvas.width = Math.round(cssWidth * ratio);
      canvas.height = Math.round(cssHeight * ratio);
    }
    const g = canvas.getContext('2d');
    g.setTransform(ratio, 0, 0, ratio, 0, 0);
    g.clearRect(0, 0, cssWidth, cssHeight);
    const left = 48;
    const bottom = cssHeight - 18;
    const top = 8;
    const right = cssWidth - 8;
    const max = Math.max(1, ...series.flatMap((s) => s.values));
    const scale = niceCeiling(max);
    g.font = '11px system-ui, sans-serif';
    g.fillStyle = '#8a9aab';
    g.strokeStyle = '#223041';
    g.lineWidth = 1;
    for (let i = 0; i <= 4; i++) {
      const y = bottom - ((bottom - top) * i) / 4;
      g.beginPath();
      g.moveTo(left, y);
      g.lineTo(right, y);
      g.stroke();
      const tick = (scale * i) / 4;
      const label = tick < 10 && tick % 1 ? tick.toFixed(2) : number(tick);
      g.fillText(label + (i === 4 ? unit : ''), 4, y + 4);
    }
    g.fillText('-5 min', left, cssHeight - 4);
    g.fillText('now', right - 22, cssHeight - 4);
    const step = (right - left) / (WINDOW_SAMPLES - 1);
    for (const s of series) {
      const offset = WINDOW_SAMPLES - s.values.length;
      g.strokeStyle = s.color;
      g.lineWidth = 2;
      g.beginPath();
      s.values.forEach((v, i) => {
        const x = left + (offset + i) * step;
        const y = bottom - ((bottom - top) * v) / scale;
        if (i === 0) g.moveTo(x, y);
        else g.lineTo(x, y);
      });
      g.stroke();
    }
  }

  function niceCeiling(n) {
    const power = 10 ** Math.floor(Math.log10(n));
    for (const m of [1, 2, 5, 10]) if (m * power >= n) return m * power;
    return 10 * power;
  }

  function drawCharts() {
    const samples = state.samples;
    chart($('chart-connections'), [{ values: samples.map((s) => s.connections), color: '#5fd38d' }], '');
    chart(
      $('chart-rates'),
      [
        { values: samples.map((s) => s.rateIn), color: '#4fb3ff' },
        { values: samples.map((s) => s.rateOut), color: '#ffb454' },
      ],
      '/s',
    );
  }

  // ------------------------------------------------------------ clients

  async function pollClients() {
    const search = $('search').value;
    const page = await api(`/api/clients?limit=${PAGE}&q=${encodeURIComponent(search)}`);
    if (search !== $('search').value) return; // typed on meanwhile
    state.clients = page.clients;
    $('clients-total').textContent = `(${page.total}${page.total > page.clients.length ? `, first ${page.clients.length}` : ''})`;
    const body = $('clients').querySelector('tbody');
    const rows = page.clients.map((c) => {
      const row = document.createElement('tr');
      row.dataset.clientId = c.client_id;
      cell(row, c.client_id);
      cell(row, c.address);
      cell(row, c.protocol_version);
      cell(row, c.keepalive === null ? null : `${c.keepalive} s`);
      cell(row, c.queued);
      cell(row, c.in_flight);
      cell(row, c.connected_since_ms ? new Date(c.connected_since_ms).toLocaleString() : null);
      const label = !c.online ? 'offline' : c.resting ? 'resting' : 'live';
      cell(row, label, `state-${label}`);
      const actions = cell(row, '');
      if (c.online) {
        const kick = document.createElement('button');
        kick.className = 'kick';
        kick.textContent = 'kick';
        kick.dataset.clientId = c.client_id;
        kick.addEventListener('click', () => kickClient(c.client_id, kick));
        actions.appendChild(kick);
      }
      return row;
    });
    body.replaceChildren(...rows);
  }

  async function kickClient(clientId, button) {
    button.disabled = true;
    try {
      await api(`/api/clients/${encodeURIComponent(clientId)}`, { method: 'DELETE' });
    } catch (error) {
      setStatus(false, `kick failed: ${error.message}`);
    }
    await pollClients().catch(() => {});
  }

  let searchTimer = null;
  $('search').addEventListener('input', () => {
    clearTimeout(searchTimer);
    searchTimer = setTimeout(() => pollClients().catch(failed), 200);
  });

  // ------------------------------------------------------------ retained

  async function pollRetained(more) {
    const after = more && state.retainedAfter ? `&after=${encodeURIComponent(state.retainedAfter)}` : '';
    const page = await api(`/api/retained?limit=${PAGE}${after}`);
    state.retained = more ? state.retained.concat(page.retained) : page.retained;
    state.retainedAfter = page.next_after;
    $('retained-total').textContent = `(${page.total} stored, $SYS topics included)`;
    $('retained-more').hidden = !page.next_after;
    const rows = state.retained.map((m) => {
      const row = document.createElement('tr');
      cell(row, m.topic);
      cell(row, m.qos);
      cell(row, m.bytes);
      cell(row, m.payload + (m.truncated ? '…' : ''));
      return row;
    });
    $('retained').querySelector('tbody').replaceChildren(...rows);
  }

  $('retained-more').addEventListener('click', () => pollRetained(true).catch(failed));

  // ------------------------------------------------------------ loop

  function failed(error) {
    state.errors++;
    setStatus(false, error.message);
  }

  function every(ms, poll) {
    const run = async () => {
      try {
        await poll();
        setStatus(true, 'live');
      } catch (error) {
        failed(error);
      }
      setTimeout(run, ms);
    };
    run();
  }

  function refreshAll() {
    pollStats().catch(failed);
    pollClients().catch(failed);
    pollRetained(false).catch(failed);
  }

  every(STATS_MS, pollStats);
  every(CLIENTS_MS, pollClients);
  every(RETAINED_MS, () => pollRetained(false));
})();
