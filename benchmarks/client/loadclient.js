#!/usr/bin/env node
// The benchmark load client: many WebSocket (or Socket.IO) connections in one
// Node.js process, started by benchmarks/run.py.
//
//   node loadclient.js '<config JSON>'
//
// config: {kind: "ws" | "socketio", url, clients, paused (0 or 1), deflate
// (offer permessage-deflate as browsers do), resume (coda_ws: reconnect a
// closed client with ?since=&epoch=), event (the Socket.IO event name),
// connect_concurrency, hold (the paused client reads again only on "resume"
// or after pause_max_s: run.py runs it in a process of its own, which cannot
// see when the healthy clients have everything), library ("ws": read with
// the ws package even without deflate, the baseline of the deflate scenario)}
//
// It connects every client, prints {"event": "ready", ...} and then obeys JSON
// lines on stdin:
//
//   {"cmd": "start", "n": N, "timeout_s": T, "pause_max_s": P}
//       expect events i = 0..N-1 on every client; the paused client (the
//       last one, when paused is 1) stops reading now and reads again once
//       every healthy client has everything (or after P seconds). Prints
//       {"event": "started"} at once and {"event": "result", ...} when every
//       client has its last event, or at the timeout.
//   {"cmd": "start", "n": N, "open": true, ...}
//       the same, but N is only a cap: the server decides how many events it
//       emits (the pipeline scenario emits for as long as its work runs), and
//       the round ends once "expect" has said how many and every client has
//       the last one (or at the timeout).
//   {"cmd": "expect", "n": N}
//       the number of events of an open round (events 0..N-1).
//   {"cmd": "resume"}
//       the paused client reads again now (run.py sends it once coda_ws has
//       closed that client for being too slow).
//   {"cmd": "quit"}
//
// WebSocket peers are read with RawWebSocket (rawws.js: no allocation per
// message), or with the ws package when the scenario offers
// permessage-deflate; Socket.IO peers with socket.io-client.
//
// Latency is receive time minus the event's metadata.emit_ns, both
// CLOCK_MONOTONIC in nanoseconds (process.hrtime and Python's
// time.monotonic_ns read the same clock). Events are recognised without a
// full JSON parse (a frame starting with {"version" is an event; its numbers
// are read straight from the bytes), so the client stays cheap per message.

'use strict';

const readline = require('readline');
const WebSocket = require('ws');
const { RawWebSocket } = require('./rawws');

const cfg = JSON.parse(process.argv[2]);
const EMIT_KEY = Buffer.from('"emit_ns":');
const I_KEY = Buffer.from('"i":');
const SEQ_KEY = Buffer.from('"seq":');
const CHAR_V = 0x76; // the "v" of {"version"

function nowNs() {
  return Number(process.hrtime.bigint());
}

function print(obj) {
  process.stdout.write(JSON.stringify(obj) + '\n');
}

// The non-negative integer that follows `key` in buf[start:end] (-1 when absent).
function numberAfter(buf, key, start = 0, end = buf.length) {
  const at = buf.indexOf(key, start);
  if (at < 0 || at >= end) return -1;
  let n = 0;
  for (let p = at + key.length; p < end; p++) {
    const c = buf[p];
    if (c < 48 || c > 57) break;
    n = n * 10 + (c - 48);
  }
  return n;
}

let round = null; // the current measurement (set by "start")

class Client {
  constructor(index, paused) {
    this.index = index;
    this.paused = paused;
    this.ws = null; // kind "ws" with deflate offered: the ws package
    this.raw = null; // kind "ws" otherwise: RawWebSocket
    this.sio = null; // kind "socketio"
    this.open = false;
    this.reconnecting = false; // closed by the server, resuming with ?since=
    this.epoch = null;
    this.lastSeq = 0;
    this.deflate = false;
    this.resetRound();
  }

  resetRound() {
    this.received = 0;
    this.lastI = -1;
    this.outOfOrder = 0;
    this.done = false;
    this.closeCode = null;
    this.closeReason = null;
    this.closes = []; // close codes received while measuring (a resumed client may have several)
    this.resumes = [];
    this.lastRecv = 0;
  }

  connect(url) {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('connect timeout')), 30000);
      if (cfg.kind === 'socketio') {
        const { io } = require('socket.io-client');
        const sio = io(url, {
          transports: ['websocket'],
          forceNew: true,
          reconnection: false,
          perMessageDeflate: cfg.deflate ? { threshold: 1024 } : false,
        });
        this.sio = sio;
        sio.on('connect', () => {
          clearTimeout(timer);
          this.open = true;
          const ws = sio.io.engine.transport.ws;
          this.deflate = Boolean(ws && ws.extensions && ws.extensions.includes('permessage-deflate'));
          resolve();
        });
        sio.on('connect_error', (err) => {
          clearTimeout(timer);
          reject(err);
        });
        sio.on(cfg.event, (ev) => this.onEvent(ev.metadata.i, ev.metadata.emit_ns, ev.seq));
        sio.on('disconnect', (reason) => {
          this.open = false;
          this.closeReason = String(reason);
          if (round) round.check();
        });
        return;
      }
      if (!cfg.deflate && cfg.library !== 'ws') {
        this.raw = new RawWebSocket(url, {
          onOpen: () => {
            clearTimeout(timer);
            this.open = true;
            resolve();
          },
          onError: (err) => {
            clearTimeout(timer);
            reject(err);
          },
          onText: (buf, start, end) => {
            if (buf[start + 2] === CHAR_V) {
              this.onEvent(
                numberAfter(buf, I_KEY, start, end),
                numberAfter(buf, EMIT_KEY, start, end),
                numberAfter(buf, SEQ_KEY, start, end),
              );
            } else {
              this.onControl(buf.toString('utf8', start, end));
            }
          },
          onClose: (code, reason) => this.onClose(code, reason),
        });
        return;
      }
      const ws = new WebSocket(url, { perMessageDeflate: Boolean(cfg.deflate) });
      this.ws = ws;
      ws.on('open', () => {
        clearTimeout(timer);
        this.open = true;
        this.deflate = ws.extensions.includes('permessage-deflate');
        resolve();
      });
      ws.on('error', (err) => {
        clearTimeout(timer);
        reject(err);
      });
      ws.on('message', (data) => {
        if (data[2] === CHAR_V) {
          this.onEvent(numberAfter(data, I_KEY), numberAfter(data, EMIT_KEY), numberAfter(data, SEQ_KEY));
        } else {
          this.onControl(data);
        }
      });
      ws.on('close', (code, reason) => this.onClose(code, String(reason)));
    });
  }

  onControl(data) {
    let msg;
    try {
      msg = JSON.parse(data);
    } catch (err) {
      return;
    }
    if (msg.type === 'hello') {
      this.epoch = msg.epoch;
    } else if (msg.type === 'resume') {
      this.resumes.push(msg);
    }
  }

  onEvent(i, emitNs, seq) {
    const t = nowNs();
    if (seq > 0) this.lastSeq = seq;
    if (!round) return; // not measuring
    if (i <= this.lastI) {
      this.outOfOrder++; // a duplicate or a reordering: never expected
      return;
    }
    this.lastI = i;
    this.received++;
    this.lastRecv = t;
    if (!this.paused) round.record(t, t - emitNs);
    if (i === round.n - 1) {
      this.done = true;
      round.check();
    }
  }

  onClose(code, reason) {
    this.open = false;
    this.closeCode = code;
    this.closeReason = reason;
    if (round && !round.finished) this.closes.push(code);
    if (round && !this.done && cfg.resume && this.epoch !== null && !round.finished) {
      // coda_ws closed us (4008: too slow): resume where we stopped.
      this.resumes.push({ reconnect: true, since: this.lastSeq, after_close: code });
      this.reconnecting = true;
      const sep = cfg.url.includes('?') ? '&' : '?';
      const url = `${cfg.url}${sep}since=${this.lastSeq}&epoch=${encodeURIComponent(this.epoch)}`;
      this.connect(url)
        .catch((err) => this.resumes.push({ error: String(err) }))
        .finally(() => {
          this.reconnecting = false;
          if (round) round.check();
        });
      return;
    }
    if (round) round.check();
  }

  pause() {
    const ws = this.raw || this.ws || (this.sio && this.sio.io.engine.transport.ws);
    if (ws) ws.pause();
  }

  resume() {
    const ws = this.raw || this.ws || (this.sio && this.sio.io.engine.transport.ws);
    if (ws) ws.resume();
  }

  close() {
    if (this.raw) this.raw.terminate();
    if (this.ws) this.ws.terminate();
    if (this.sio) this.sio.disconnect();
  }
}

class Round {
  constructor(n, timeoutS, pauseMaxS, clients, open = false) {
    this.n = open ? Infinity : n; // an open round learns its n from "expect"
    this.clients = clients;
    this.healthy = clients.filter((c) => !c.paused);
    this.pausedClient = clients.find((c) => c.paused) || null;
    this.finished = false;
    const capacity = Math.min(this.healthy.length * n, 8000000);
    this.lat = new Float64Array(Math.max(capacity, 1));
    this.latCount = 0;
    this.firstRecv = 0;
    this.lastRecv = 0;
    this.healthyDoneAt = 0;
    this.resumedAt = 0;
    this.cpu0 = process.cpuUsage();
    this.t0 = nowNs();
    for (const c of clients) c.resetRound();
    if (this.pausedClient) {
      this.pausedClient.pause();
      this.pauseTimer = setTimeout(() => this.resumePaused(), pauseMaxS * 1000);
    }
    this.timer = setTimeout(() => this.finish(true), timeoutS * 1000);
  }

  expect(n) {
    this.n = n;
    for (const c of this.clients) if (c.lastI >= n - 1) c.done = true;
    this.check();
  }

  record(t, latencyNs) {
    if (this.firstRecv === 0) this.firstRecv = t;
    this.lastRecv = t;
    if (this.latCount < this.lat.length) this.lat[this.latCount++] = latencyNs / 1000;
  }

  resumePaused() {
    if (this.resumedAt) return;
    this.resumedAt = nowNs();
    clearTimeout(this.pauseTimer);
    this.pausedClient.resume();
  }

  // A client is finished when it has the last event, or is closed and not
  // resuming. Healthy clients first; then the paused one reads again.
  check() {
    if (this.finished || this.n === Infinity) return;
    const finished = (c) => c.done || (!c.open && !c.reconnecting);
    if (!this.healthy.every(finished)) return;
    if (!this.healthyDoneAt) this.healthyDoneAt = nowNs();
    const p = this.pausedClient;
    if (p) {
      if (!cfg.hold) this.resumePaused();
      if (!this.resumedAt || !finished(p)) return;
    }
    this.finish(false);
  }

  finish(timedOut) {
    if (this.finished) return;
    this.finished = true;
    clearTimeout(this.timer);
    clearTimeout(this.pauseTimer);
    const cpu = process.cpuUsage(this.cpu0);
    const wall = (nowNs() - this.t0) / 1e9;
    const lat = this.lat.subarray(0, this.latCount).sort();
    const pct = (q) => (lat.length ? lat[Math.min(lat.length - 1, Math.floor(lat.length * q))] : null);
    const p = this.pausedClient;
    print({
      event: 'result',
      timed_out: timedOut,
      n: Number.isFinite(this.n) ? this.n : null,
      healthy: this.healthy.length,
      delivered: this.healthy.reduce((s, c) => s + c.received, 0),
      expected: Number.isFinite(this.n) ? this.healthy.length * this.n : null,
      complete_clients: this.healthy.filter((c) => c.done).length,
      out_of_order: this.clients.reduce((s, c) => s + c.outOfOrder, 0),
      // Healthy clients the server closed (coda_ws clients then resume, so
      // they may still be open at the end), and the codes it used.
      unexpected_closes: this.healthy.filter((c) => c.closes.length || !c.open).length,
      close_codes: [].concat(...this.healthy.map((c) => (c.closes.length ? c.closes : c.open ? [] : [c.closeReason]))),
      healthy_resumes: [].concat(...this.healthy.map((c) => c.resumes.filter((r) => r.type === 'resume'))),
      first_recv_ns: this.firstRecv,
      last_recv_ns: this.lastRecv,
      healthy_done_ns: this.healthyDoneAt,
      lat_us: { p50: pct(0.5), p99: pct(0.99), max: lat.length ? lat[lat.length - 1] : null, count: lat.length },
      client_cpu_s: (cpu.user + cpu.system) / 1e6,
      wall_s: wall,
      deflate_negotiated: this.clients.filter((c) => c.deflate).length,
      paused: p
        ? {
            received: p.received,
            done: p.done,
            last_recv_ns: p.lastRecv,
            resumed_reading_ns: this.resumedAt,
            close_code: p.closeCode,
            close_reason: p.closeReason,
            resumes: p.resumes,
            open: p.open,
          }
        : null,
    });
    round = null;
  }
}

async function main() {
  const clients = [];
  for (let k = 0; k < cfg.clients; k++) clients.push(new Client(k, cfg.paused && k === cfg.clients - 1));
  let next = 0;
  let failed = 0;
  const errors = [];
  const worker = async () => {
    while (next < clients.length) {
      const c = clients[next++];
      try {
        await c.connect(cfg.url);
      } catch (err) {
        failed++;
        if (errors.length < 3) errors.push(String(err && err.message ? err.message : err));
      }
    }
  };
  const workers = [];
  for (let w = 0; w < (cfg.connect_concurrency || 50); w++) workers.push(worker());
  await Promise.all(workers);
  print({ event: 'ready', connected: clients.filter((c) => c.open).length, failed, errors });

  const rl = readline.createInterface({ input: process.stdin });
  rl.on('line', (line) => {
    if (!line.trim()) return;
    const order = JSON.parse(line);
    if (order.cmd === 'start') {
      round = new Round(order.n, order.timeout_s, order.pause_max_s || 5, clients, Boolean(order.open));
      print({ event: 'started' });
    } else if (order.cmd === 'expect') {
      if (round) round.expect(order.n);
    } else if (order.cmd === 'resume') {
      if (round && round.pausedClient) round.resumePaused();
    } else if (order.cmd === 'quit') {
      for (const c of clients) c.close();
      setTimeout(() => process.exit(0), 50);
    }
  });
  rl.on('close', () => {
    for (const c of clients) c.close();
    setTimeout(() => process.exit(0), 50);
  });
}

main().catch((err) => {
  print({ event: 'fatal', error: String(err && err.stack ? err.stack : err) });
  process.exit(1);
});
