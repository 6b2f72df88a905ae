// A minimal receive-side WebSocket client (RFC 6455) for the load client.
//
// The `ws` package costs a few microseconds per message (a Buffer and an
// event per frame); at 300 000 messages a second that made the load client,
// not the server, the bottleneck. This client parses every frame of a TCP
// chunk in place and hands each text frame to the caller as (buffer, start,
// end), allocating nothing per message. It answers pings and close frames (a
// well-behaved client) and never sends data of its own. It does not
// negotiate extensions: scenarios that offer permessage-deflate use `ws`.

'use strict';

const crypto = require('crypto');
const http = require('http');

const GUID = '258EAFA5-E914-47DA-95CA-C5AB0DC85B11';
const OP_TEXT = 0x1;
const OP_CLOSE = 0x8;
const OP_PING = 0x9;

class RawWebSocket {
  // handlers: onOpen(), onText(buf, start, end), onClose(code, reason), onError(err)
  constructor(url, handlers) {
    const u = new URL(url);
    const key = crypto.randomBytes(16).toString('base64');
    this.handlers = handlers;
    this.socket = null;
    this.pending = null; // the start of a frame that the next chunk completes
    this.closed = false;
    const req = http.get({
      host: u.hostname,
      port: u.port,
      path: u.pathname + u.search,
      agent: false,
      headers: {
        Connection: 'Upgrade',
        Upgrade: 'websocket',
        'Sec-WebSocket-Key': key,
        'Sec-WebSocket-Version': '13',
      },
    });
    req.on('upgrade', (res, socket, head) => {
      const expected = crypto.createHash('sha1').update(key + GUID).digest('base64');
      if (res.headers['sec-websocket-accept'] !== expected) {
        socket.destroy();
        handlers.onError(new Error('invalid Sec-WebSocket-Accept'));
        return;
      }
      this.socket = socket;
      socket.setNoDelay(true);
      socket.on('data', (chunk) => this.onData(chunk));
      socket.on('error', () => {}); // 'close' follows and reports it
      socket.on('close', () => this.finish(1006, 'connection ended without a close frame'));
      handlers.onOpen();
      if (head && head.length) this.onData(head);
    });
    req.on('response', (res) => {
      res.resume();
      handlers.onError(new Error(`HTTP ${res.statusCode} instead of a WebSocket upgrade`));
    });
    req.on('error', (err) => handlers.onError(err));
  }

  onData(chunk) {
    let buf = chunk;
    if (this.pending !== null) {
      buf = Buffer.concat([this.pending, chunk]);
      this.pending = null;
    }
    const len = buf.length;
    let pos = 0;
    while (pos + 2 <= len) {
      const b0 = buf[pos];
      const b1 = buf[pos + 1];
      let size = b1 & 0x7f;
      let head = 2;
      if (size === 126) {
        if (pos + 4 > len) break;
        size = buf.readUInt16BE(pos + 2);
        head = 4;
      } else if (size === 127) {
        if (pos + 10 > len) break;
        size = Number(buf.readBigUInt64BE(pos + 2));
        head = 10;
      }
      const start = pos + head;
      const end = start + size;
      if (end > len) break;
      if (b1 & 0x80 || !(b0 & 0x80)) {
        // A masked or fragmented server frame: none of the servers sends one.
        this.close(1002);
        return;
      }
      const opcode = b0 & 0x0f;
      if (opcode === OP_TEXT) {
        this.handlers.onText(buf, start, end);
      } else if (opcode === OP_PING) {
        this.send(0xa, buf.subarray(start, end));
      } else if (opcode === OP_CLOSE) {
        const code = size >= 2 ? buf.readUInt16BE(start) : 1005;
        const reason = size > 2 ? buf.toString('utf8', start + 2, end) : '';
        this.close(code);
        this.finish(code, reason);
        return;
      }
      pos = end;
    }
    if (pos < len) this.pending = Buffer.from(buf.subarray(pos)); // a copy: do not pin the whole chunk
  }

  // One masked frame from client to server (control frames only, <= 125 bytes).
  send(opcode, payload) {
    if (!this.socket || this.socket.destroyed) return;
    const mask = crypto.randomBytes(4);
    const frame = Buffer.alloc(6 + payload.length);
    frame[0] = 0x80 | opcode;
    frame[1] = 0x80 | payload.length;
    mask.copy(frame, 2);
    for (let i = 0; i < payload.length; i++) frame[6 + i] = payload[i] ^ mask[i & 3];
    this.socket.write(frame);
  }

  close(code) {
    const payload = Buffer.alloc(2);
    payload.writeUInt16BE(code === 1005 || code === 1006 ? 1000 : code);
    this.send(OP_CLOSE, payload);
    if (this.socket) this.socket.end();
  }

  finish(code, reason) {
    if (this.closed) return;
    this.closed = true;
    this.handlers.onClose(code, reason);
  }

  pause() {
    if (this.socket) this.socket.pause();
  }

  resume() {
    if (this.socket) this.socket.resume();
  }

  terminate() {
    if (this.socket) this.socket.destroy();
  }
}

module.exports = { RawWebSocket };
