'use strict';
/*
 * A raw gRPC client for the status battery (tests/interop/test_grpc_battery.py): @grpc/grpc-js's generic client
 * with identity serializers, so any bytes can be sent as the message of any method, with per-call metadata,
 * channel options (compression) and deadlines; and node's own http2 client for requests grpc-js will not make
 * (another content-type, any grpc-encoding, hand-made message prefixes). It prints what came back, one JSON line
 * per call, and a last {"summary": ...} line; the python driver asserts.
 *
 * usage: node grpc_battery.js --target HOST:PORT [options] COMMAND ARGS
 *   call PATH BODY            one unary call
 *   many PATH FILE            one call per line of FILE (hex message bodies), all started at once on one channel
 *   drain PATH FILE           the calls of FILE at once; once the server's GOAWAY arrived ({"event":"goaway"} line),
 *                             one more call (the first body again) on the same channel, then waits for them all
 *   http2 PATH BODY           one request with node's http2 client (no grpc-js): --content-type, --header;
 *                             BODY is sent as is unless --frame (then behind a 5-byte prefix, flag --frame-flag)
 * BODY: hex digits, or @FILE for the raw bytes of FILE ("" = an empty message).
 * options:
 *   --compression identity|deflate|gzip  grpc.default_compression_algorithm (0|1|2) of the channel (default identity)
 *   --metadata 'key: value'   per-call metadata (repeatable)
 *   --deadline-ms N           per-call deadline (default 20000); every wait of the script is bounded
 *   --goaway-wait-ms N        drain: how long to wait for the GOAWAY (default 30000)
 *   --content-type CT         http2: content-type (default application/grpc)
 *   --header 'key: value'     http2: another request header (repeatable)
 *   --frame, --frame-flag N   http2: put BODY behind a gRPC message prefix with compressed-flag N (default 0)
 *
 * A call's line: {"call": i, "code": <grpc status number>, "status": "<name>", "details": grpc-message,
 *   "metadata": {trailers and headers, -bin values base64}, "response_hex": the reply message (OK only),
 *   "status_details": grpc-status-details-bin decoded as google.rpc.Status {code, message, details: [{type_url,
 *   retry_delay_s (RetryInfo) or value_hex}]} or null, "health_status": HealthCheckResponse.status when the path is
 *   grpc.health.v1.Health/Check and the call succeeded}. The summary: calls, per-status counts, the HTTP/2
 *   connections grpc-js opened (http2.connect calls) and the GOAWAYs they received.
 * Exit code: 0 when every call got an answer (whatever its status), 1 on a script error or a wait that ran out, 2 on
 * bad usage.
 */
const fs = require('fs');
const http2 = require('http2');

// Every HTTP/2 connection grpc-js opens goes through http2.connect (transport.js): counted, and its GOAWAYs seen.
// grpc-js removes every listener of the session once the server's SETTINGS arrived, then adds its own: ours goes
// on right after that.
const connections = [];
const goaways = [];
const goawayWaiters = [];
const origConnect = http2.connect;
http2.connect = function connect(...a) {
  const session = origConnect.apply(this, a);
  connections.push(session);
  session.once('remoteSettings', () => process.nextTick(() => session.on('goaway', (errorCode, lastStreamID) => {
    goaways.push({ error_code: errorCode, last_stream_id: lastStreamID, connection: connections.indexOf(session) });
    while (goawayWaiters.length) goawayWaiters.shift()();
  })));
  return session;
};
const grpc = require('@grpc/grpc-js'); // after the hook: it keeps a reference to the http2 module, not to connect

// ---- arguments -----------------------------------------------------------------------------------------------

function usage(msg) {
  process.stderr.write(`grpc_battery: ${msg}\nusage: node grpc_battery.js --target HOST:PORT [--compression ` +
    `identity|deflate|gzip] [--metadata 'k: v']... [--deadline-ms N] [--goaway-wait-ms N] [--content-type CT] ` +
    `[--header 'k: v']... [--frame] [--frame-flag N] call|many|drain|http2 PATH BODY|FILE\n`);
  process.exit(2);
}

const opts = { target: null, compression: 'identity', metadata: [], deadline: 20000, goawayWait: 30000,
  contentType: 'application/grpc', headers: [], frame: false, frameFlag: 0 };
const positional = [];
{
  const argv = process.argv.slice(2);
  const num = (name, v) => {
    if (v === undefined || !/^\d+$/.test(v)) usage(`${name} needs a number`);
    return parseInt(v, 10);
  };
  const pair = (name, v) => {
    const m = v === undefined ? null : /^([^:]+):\s?(.*)$/.exec(v);
    if (!m) usage(`${name} needs 'key: value'`);
    return [m[1].trim().toLowerCase(), m[2]];
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    switch (a) {
      case '--target': opts.target = argv[++i]; if (!opts.target) usage('--target needs HOST:PORT'); break;
      case '--compression':
        opts.compression = argv[++i];
        if (!['identity', 'deflate', 'gzip'].includes(opts.compression)) usage('--compression identity|deflate|gzip');
        break;
      case '--metadata': opts.metadata.push(pair(a, argv[++i])); break;
      case '--deadline-ms': opts.deadline = num(a, argv[++i]); break;
      case '--goaway-wait-ms': opts.goawayWait = num(a, argv[++i]); break;
      case '--content-type': opts.contentType = argv[++i]; if (opts.contentType === undefined) usage(a); break;
      case '--header': opts.headers.push(pair(a, argv[++i])); break;
      case '--frame': opts.frame = true; break;
      case '--frame-flag': opts.frameFlag = num(a, argv[++i]); break;
      default:
        if (a.startsWith('--')) usage(`unknown option ${a}`);
        positional.push(a);
    }
  }
}
const [command, path, bodyArg] = positional;
if (!opts.target || !/^[^:]+:\d+$/.test(opts.target)) usage('--target HOST:PORT is required');
if (!['call', 'many', 'drain', 'http2'].includes(command)) usage(`unknown command ${command}`);
if (!path || !path.startsWith('/')) usage('PATH must start with /');
if (bodyArg === undefined) usage('BODY or FILE missing');
if (positional.length > 3) usage(`unexpected ${positional[3]}`);

function body(arg) {
  if (arg.startsWith('@')) return fs.readFileSync(arg.slice(1));
  if (!/^([0-9a-fA-F]{2})*$/.test(arg)) usage(`not hex: ${arg.slice(0, 40)}`);
  return Buffer.from(arg, 'hex');
}
function bodies(file) {
  const lines = fs.readFileSync(file, 'utf8').split('\n').filter((l) => l.trim() !== '');
  if (!lines.length) usage(`${file} has no bodies`);
  return lines.map((l) => body(l.trim()));
}

// ---- protobuf, just enough: google.rpc.Status, Any, RetryInfo, Duration, HealthCheckResponse ------------------

/* One level of protobuf as {field: [values]}: varints as numbers (below 2^53), length-delimited as Buffers. */
function fields(buf) {
  const out = {};
  let i = 0;
  const varint = () => {
    let n = 0, mul = 1, b;
    do {
      if (i >= buf.length) throw new Error('truncated varint');
      b = buf[i++];
      n += (b & 0x7f) * mul;
      mul *= 128;
    } while (b & 0x80);
    return n;
  };
  while (i < buf.length) {
    const tag = varint();
    const num = Math.floor(tag / 8), wt = tag & 7;
    let v;
    if (wt === 0) v = varint();
    else if (wt === 2) {
      const n = varint();
      if (i + n > buf.length) throw new Error('truncated field');
      v = buf.subarray(i, i + n);
      i += n;
    } else if (wt === 1) { v = buf.subarray(i, i + 8); i += 8; }
    else if (wt === 5) { v = buf.subarray(i, i + 4); i += 4; }
    else throw new Error(`wire type ${wt}`);
    (out[num] = out[num] || []).push(v);
  }
  return out;
}

const RETRY_INFO = 'type.googleapis.com/google.rpc.RetryInfo';

/* grpc-status-details-bin (raw bytes) -> google.rpc.Status {code, message, details}; {error} when malformed. */
function decodeStatus(bytes) {
  try {
    const f = fields(bytes);
    const details = (f[3] || []).map((any) => {
      const a = fields(any);
      const typeUrl = a[1] ? a[1][0].toString() : '';
      const value = a[2] ? a[2][0] : Buffer.alloc(0);
      const d = { type_url: typeUrl, value_hex: value.toString('hex') };
      if (typeUrl === RETRY_INFO) {
        const ri = fields(value);
        const dur = ri[1] ? fields(ri[1][0]) : {};
        d.retry_delay_s = (dur[1] ? dur[1][0] : 0) + (dur[2] ? dur[2][0] : 0) / 1e9;
      }
      return d;
    });
    return { code: f[1] ? f[1][0] : 0, message: f[2] ? f[2][0].toString() : '', details };
  } catch (e) {
    return { error: e.message, hex: bytes.toString('hex') };
  }
}

function metadataObject(md) {
  const out = {};
  if (!md) return out;
  for (const [k, v] of Object.entries(md.getMap())) out[k] = Buffer.isBuffer(v) ? v.toString('base64') : v;
  return out;
}

const HEALTH_CHECK = '/grpc.health.v1.Health/Check';
const statusName = Object.fromEntries(Object.entries(grpc.status).map(([k, v]) => [v, k]));

// ---- grpc-js calls -------------------------------------------------------------------------------------------

const identity = (b) => b;
const COMPRESSION = { identity: 0, deflate: 1, gzip: 2 };

function newClient() {
  const Client = grpc.makeGenericClientConstructor({}, 'battery');
  return new Client(opts.target, grpc.credentials.createInsecure(), {
    'grpc.default_compression_algorithm': COMPRESSION[opts.compression],
    'grpc.max_receive_message_length': 64 * 1024 * 1024,
    'grpc.enable_retries': 0, // what the server answers, not what a retry policy made of it
    'grpc.enable_http_proxy': 0, // 127.0.0.1 directly, whatever http_proxy / grpc_proxy say
  });
}

function metadata() {
  const md = new grpc.Metadata();
  for (const [k, v] of opts.metadata) md.add(k, v);
  return md;
}

/* One unary call; resolves with its result line (never rejects). grpc-js runs the callback, then emits 'status'
 * (with the trailers, for OK too): the line is made there. */
function unary(client, i, msg, extra = {}) {
  const t0 = Date.now();
  return new Promise((resolve) => {
    let headers = null, err = null, response = null;
    const call = client.makeUnaryRequest(path, identity, identity, msg, metadata(),
      { deadline: Date.now() + opts.deadline }, (e, r) => { err = e; response = r; });
    call.on('metadata', (md) => { headers = md; });
    call.on('status', (st) => {
      const res = Object.assign({ call: i }, extra);
      if (err) st = err; // OK without a reply message is an error too (INTERNAL), as the callback saw it
      res.code = st.code;
      res.status = statusName[st.code] || String(st.code);
      res.details = st.details || '';
      res.metadata = Object.assign(metadataObject(headers), metadataObject(st.metadata));
      const bin = st.metadata ? st.metadata.get('grpc-status-details-bin')[0] : undefined;
      res.status_details = Buffer.isBuffer(bin) ? decodeStatus(bin) : null;
      if (!err && response) {
        res.response_hex = response.toString('hex');
        if (path === HEALTH_CHECK) {
          try {
            const f = fields(response);
            res.health_status = f[1] ? f[1][0] : 0;
          } catch (e) {
            res.health_status = `malformed: ${e.message}`;
          }
        }
      }
      res.ms = Date.now() - t0;
      resolve(res);
    });
  });
}

function print(obj) {
  process.stdout.write(JSON.stringify(obj) + '\n');
}

function summary(results) {
  const by = {};
  for (const r of results) by[r.status] = (by[r.status] || 0) + 1;
  print({ summary: { calls: results.length, by_status: by, connections: connections.length, goaways } });
}

/* Resolves when a GOAWAY arrived (at once if one has), rejects after ms. */
function goawayArrived(ms) {
  return new Promise((resolve, reject) => {
    if (goaways.length) { resolve(); return; }
    const t = setTimeout(() => reject(new Error(`no GOAWAY within ${ms} ms`)), ms);
    goawayWaiters.push(() => { clearTimeout(t); resolve(); });
  });
}

async function runGrpc() {
  const client = newClient();
  const msgs = command === 'call' ? [body(bodyArg)] : bodies(bodyArg);
  const pending = msgs.map((m, i) => unary(client, i, m).then((r) => { print(r); return r; }));
  if (command === 'drain') {
    print({ event: 'started', calls: msgs.length });
    await goawayArrived(opts.goawayWait);
    print({ event: 'goaway', goaways });
    pending.push(unary(client, msgs.length, msgs[0], { after_goaway: true }).then((r) => { print(r); return r; }));
  }
  const results = await Promise.all(pending);
  client.close();
  summary(results);
}

// ---- node's http2 client -------------------------------------------------------------------------------------

function runHttp2() {
  let data = body(bodyArg);
  if (opts.frame) {
    const prefix = Buffer.alloc(5);
    prefix[0] = opts.frameFlag;
    prefix.writeUInt32BE(data.length, 1);
    data = Buffer.concat([prefix, data]);
  }
  const t0 = Date.now();
  return new Promise((resolve, reject) => {
    const session = origConnect(`http://${opts.target}`);
    const timer = setTimeout(() => { session.destroy(); reject(new Error(`no answer within ${opts.deadline} ms`)); },
      opts.deadline);
    session.on('error', (e) => { clearTimeout(timer); reject(e); });
    const h = { ':method': 'POST', ':path': path, 'content-type': opts.contentType, te: 'trailers' };
    for (const [k, v] of opts.headers) h[k] = v;
    for (const [k, v] of opts.metadata) h[k] = v;
    const req = session.request(h);
    const res = { call: 0, http2: true };
    const chunks = [];
    req.on('response', (headers) => {
      res.http_status = headers[':status'];
      res.headers = Object.fromEntries(Object.entries(headers).filter(([k]) => k !== ':status'));
    });
    req.on('trailers', (t) => { res.trailers = Object.assign({}, t); });
    req.on('data', (c) => chunks.push(c));
    req.on('error', (e) => { res.stream_error = e.code || e.message; });
    req.on('close', () => {
      clearTimeout(timer);
      res.rst_code = req.rstCode;
      const b = Buffer.concat(chunks);
      res.body_hex = b.toString('hex');
      const st = (res.trailers && res.trailers['grpc-status']) || (res.headers && res.headers['grpc-status']);
      if (st !== undefined) {
        res.code = Number(st);
        res.status = statusName[res.code] || st;
        const msg = (res.trailers && res.trailers['grpc-message']) || (res.headers && res.headers['grpc-message']);
        res.details = msg === undefined ? '' : decodeURIComponent(msg);
      }
      res.ms = Date.now() - t0;
      session.close();
      print(res);
      print({ summary: { calls: 1, by_status: { [res.status || `http ${res.http_status}`]: 1 }, connections: 1,
        goaways: [] } });
      resolve();
    });
    req.end(data);
  });
}

(command === 'http2' ? runHttp2() : runGrpc()).catch((e) => {
  process.stderr.write(`grpc_battery: ${e && e.stack ? e.stack : e}\n`);
  summary([]);
  process.exitCode = 1;
});
