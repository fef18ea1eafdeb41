'use strict';
/*
 * An instrumented "application" for the interop test (tests/interop/test_interop.py): it sends traces, logs
 * or metrics with the real OpenTelemetry JavaScript SDK, configured the way users configure it, through
 * environment variables only:
 *   OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:<gateway port>   (the HTTP exporters append /v1/<signal>; the gRPC
 *     exporters take it as is, and http:// means plaintext h2c)
 *   OTEL_EXPORTER_OTLP_COMPRESSION=gzip|none, OTEL_EXPORTER_OTLP_TIMEOUT (ms, covers the exporter's retries)
 *   OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES, OTEL_BSP_* / OTEL_BLRP_* (batching),
 *   OTEL_METRIC_EXPORT_INTERVAL / OTEL_METRIC_EXPORT_TIMEOUT (ms)
 * The exporters and the BatchSpanProcessor read their variables themselves; the resource detectors, the
 * logs SDK's BatchLogRecordProcessor and the PeriodicExportingMetricReader take options, which this app
 * fills from the variables the way @opentelemetry/sdk-node does (this release's BatchLogRecordProcessor
 * would otherwise keep its defaults: a 2048-record queue that drops silently).
 *
 * usage: node app.js MODE [--traces N] [--out FILE] [--log-out FILE] [--intervals N]
 *   traces-proto  N traces of nested spans, exporter-trace-otlp-proto (application/x-protobuf)
 *   traces-json   the same with exporter-trace-otlp-http (OTLP/JSON)
 *   logs          the same traces (protobuf) plus 1-3 log records inside each span of each trace
 *                 (exporter-logs-otlp-proto), so every record carries its span's trace_id, plus a few
 *                 records outside any span (no trace_id)
 *   metrics       counters, an up-down counter, a histogram and an observable gauge with attributes,
 *                 exported every OTEL_METRIC_EXPORT_INTERVAL for --intervals intervals, then shutdown
 *   traces-grpc, logs-grpc, metrics-grpc  traces-proto, logs and metrics through the OTLP/gRPC exporters
 *                 (exporter-{trace,logs,metrics}-otlp-grpc, @grpc/grpc-js; OTEL_EXPORTER_OTLP_COMPRESSION=gzip is
 *                 grpc-encoding gzip)
 *
 * --out FILE gets "<trace_id hex> <span count>" per trace created (the format of otlp-sink --trace-file),
 * --log-out FILE "<trace_id hex> <record count>" per trace (otlp-sink --log-file). Prints one JSON line to
 * stdout with what was created and what the exporters reported as exported; exits 1 when an exporter
 * reported a failure, the SDK reported an error or dropped something, or created != exported.
 */
const fs = require('fs');
const api = require('@opentelemetry/api');
const { ExportResultCode, setGlobalErrorHandler } = require('@opentelemetry/core');
const { defaultResource, detectResources, envDetector, processDetector } = require('@opentelemetry/resources');
const { NodeTracerProvider } = require('@opentelemetry/sdk-trace-node');
const { BatchSpanProcessor } = require('@opentelemetry/sdk-trace-base');

const t0 = Date.now();
const argv = process.argv.slice(2);
const mode = argv[0];
function opt(name, dflt) {
  const i = argv.indexOf(name);
  return i > 0 && i + 1 < argv.length ? argv[i + 1] : dflt;
}
const MODES = ['traces-proto', 'traces-json', 'logs', 'metrics', 'traces-grpc', 'logs-grpc', 'metrics-grpc'];
if (!MODES.includes(mode)) {
  process.stderr.write(`usage: node app.js ${MODES.join('|')} [--traces N] [--out FILE] [--log-out FILE] [--intervals N]\n`);
  process.exit(2);
}
const nTraces = parseInt(opt('--traces', '2000'), 10);
const outFile = opt('--out', null);
const logOutFile = opt('--log-out', null);
const nIntervals = parseInt(opt('--intervals', '4'), 10);
const grpc = mode.endsWith('-grpc'); // the same scenario through the OTLP/gRPC exporters

// Everything the SDK reports goes to stderr and counts as a problem: failed exports, "Dropped N spans",
// BatchSpanProcessor timeouts (the global error handler).
const problems = [];
api.diag.setLogger({
  error: (...a) => { problems.push('diag error: ' + a.join(' ')); process.stderr.write('otel error: ' + a.join(' ') + '\n'); },
  warn: (...a) => { problems.push('diag warn: ' + a.join(' ')); process.stderr.write('otel warn: ' + a.join(' ') + '\n'); },
  info: () => {}, debug: () => {}, verbose: () => {},
}, api.DiagLogLevel.WARN);
setGlobalErrorHandler((e) => {
  problems.push('error handler: ' + (e && e.message ? e.message : String(e)));
  process.stderr.write('otel global error: ' + (e && e.stack ? e.stack : String(e)) + '\n');
});

// The resource as the SDK builds it from the environment (OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES).
const resource = defaultResource().merge(detectResources({ detectors: [envDetector, processDetector] }));

/* A number from the environment (unset or not a number: undefined). */
function envNumber(name) {
  const v = process.env[name];
  const n = v === undefined || v.trim() === '' ? NaN : Number(v);
  return Number.isFinite(n) ? n : undefined;
}

/* Wraps exporter.export so that every result is seen: count(items) runs for successful exports. */
function watch(exporter, name, count) {
  const st = { name, exports_ok: 0, exports_failed: 0, errors: [] };
  const orig = exporter.export.bind(exporter);
  exporter.export = (items, done) => orig(items, (result) => {
    if (result.code === ExportResultCode.SUCCESS) {
      st.exports_ok++;
      count(items);
    } else {
      st.exports_failed++;
      const msg = result.error ? (result.error.message || String(result.error)) : 'failed';
      st.errors.push(msg);
      process.stderr.write(`${name} export failed: ${msg}\n`);
    }
    done(result);
  });
  return st;
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/* A small deterministic PRNG, so the shape of the traces is the same on every run. */
function prng(seed) {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13; x >>>= 0; x ^= x >>> 17; x ^= x << 5; x >>>= 0;
    return x / 4294967296;
  };
}

function writeCounts(path, counter) {
  if (!path) return;
  fs.writeFileSync(path, [...counter].map(([k, v]) => `${k} ${v}\n`).join(''));
}

function sum(counter) {
  let n = 0;
  for (const v of counter.values()) n += v;
  return n;
}

async function runTraces(withLogs) {
  const json = mode === 'traces-json';
  const { OTLPTraceExporter } = grpc ? require('@opentelemetry/exporter-trace-otlp-grpc')
    : json ? require('@opentelemetry/exporter-trace-otlp-http') : require('@opentelemetry/exporter-trace-otlp-proto');
  const spanExporter = new OTLPTraceExporter(); // endpoint, compression, timeout: environment
  const exported = new Map();
  const spanStats = watch(spanExporter, 'traces', (spans) => {
    for (const s of spans) {
      const id = s.spanContext().traceId;
      exported.set(id, (exported.get(id) || 0) + 1);
    }
  });
  const created = new Map();
  const counting = { // counts every span that ended (what the application created)
    onStart() {},
    onEnd(span) {
      const id = span.spanContext().traceId;
      created.set(id, (created.get(id) || 0) + 1);
    },
    forceFlush: () => Promise.resolve(),
    shutdown: () => Promise.resolve(),
  };
  const provider = new NodeTracerProvider({ resource,
    spanProcessors: [counting, new BatchSpanProcessor(spanExporter)] }); // OTEL_BSP_*: read by the processor
  provider.register();
  const tracer = api.trace.getTracer('otlp-gateway-interop', '1.0.0');

  let logger = null, loggerProvider = null, logStats = null;
  const logsCreated = new Map(), logsExported = new Map();
  let recordsNoTrace = 0, recordsNoTraceExported = 0;
  if (withLogs) {
    const { LoggerProvider, BatchLogRecordProcessor } = require('@opentelemetry/sdk-logs');
    const { OTLPLogExporter } = grpc ? require('@opentelemetry/exporter-logs-otlp-grpc')
      : require('@opentelemetry/exporter-logs-otlp-proto');
    const { SeverityNumber } = require('@opentelemetry/api-logs');
    const logExporter = new OTLPLogExporter();
    logStats = watch(logExporter, 'logs', (records) => {
      for (const r of records) {
        const sc = r.spanContext;
        if (sc && sc.traceId && api.isValidTraceId(sc.traceId)) {
          logsExported.set(sc.traceId, (logsExported.get(sc.traceId) || 0) + 1);
        } else {
          recordsNoTraceExported++;
        }
      }
    });
    const blrp = { exporter: logExporter };
    for (const [key, env] of [['maxQueueSize', 'OTEL_BLRP_MAX_QUEUE_SIZE'], ['scheduledDelayMillis', 'OTEL_BLRP_SCHEDULE_DELAY'],
      ['maxExportBatchSize', 'OTEL_BLRP_MAX_EXPORT_BATCH_SIZE'], ['exportTimeoutMillis', 'OTEL_BLRP_EXPORT_TIMEOUT']]) {
      if (envNumber(env) !== undefined) blrp[key] = envNumber(env);
    }
    loggerProvider = new LoggerProvider({ resource, processors: [new BatchLogRecordProcessor(blrp)] });
    const l = loggerProvider.getLogger('otlp-gateway-interop', '1.0.0');
    logger = {
      emit(body, attrs) { // inside the active span: the SDK takes trace_id and span_id from the context
        const sc = api.trace.getSpanContext(api.context.active());
        l.emit({ severityNumber: SeverityNumber.INFO, severityText: 'INFO', body, attributes: attrs });
        if (sc) logsCreated.set(sc.traceId, (logsCreated.get(sc.traceId) || 0) + 1);
        else recordsNoTrace++;
      },
    };
  }
  const logSome = (rnd, what) => {
    if (!logger) return;
    const n = 1 + Math.floor(rnd() * 3);
    for (let i = 0; i < n; i++) logger.emit(`${what}: step ${i}`, { 'app.step': i });
  };

  // a root span (SERVER) with 3-5 children, some with 1-2 grandchildren
  for (let t = 0; t < nTraces; t++) {
    const rnd = prng(t + 1); // the shape of the trace
    const lrnd = prng(t + 1000003); // its log records: the same traces with and without logs
    tracer.startActiveSpan(`GET /api/item/${t % 50}`, { kind: api.SpanKind.SERVER,
      attributes: { 'http.method': 'GET', 'http.route': '/api/item/:id', 'app.trace_index': t } }, (root) => {
      logSome(lrnd, 'request');
      const children = 3 + Math.floor(rnd() * 3);
      for (let c = 0; c < children; c++) {
        tracer.startActiveSpan(`child-${c}`, { attributes: { 'app.child': c } }, (child) => {
          logSome(lrnd, `child ${c}`);
          const grandchildren = rnd() < 0.4 ? 1 + Math.floor(rnd() * 2) : 0;
          for (let g = 0; g < grandchildren; g++) {
            tracer.startActiveSpan(`db-query-${g}`, { kind: api.SpanKind.CLIENT,
              attributes: { 'db.system': 'postgresql', 'db.statement': 'SELECT 1' } }, (gc) => {
              logSome(lrnd, `query ${g}`);
              if (rnd() < 0.1) gc.setStatus({ code: api.SpanStatusCode.ERROR, message: 'timeout' });
              gc.end();
            });
          }
          child.end();
        });
      }
      root.end();
    });
    if (logger && t % 100 === 0) logger.emit('outside any span', { 'app.batch': t }); // no trace_id
    if (t % 50 === 49) await sleep(1); // let the batch processors export while traces are being made
  }
  // A failed export rejects these promises; it was counted by watch() already, and the rest still runs.
  const settle = (what, p) => p.catch((e) => problems.push(`${what}: ${e && e.message ? e.message : e}`));
  await settle('span flush', provider.forceFlush());
  if (loggerProvider) await settle('log flush', loggerProvider.forceFlush());
  await settle('span shutdown', provider.shutdown());
  if (loggerProvider) await settle('log shutdown', loggerProvider.shutdown());

  writeCounts(outFile, created);
  writeCounts(logOutFile, logsCreated);
  const res = { mode, traces: created.size, spans_created: sum(created), spans_exported: sum(exported),
    exports_ok: spanStats.exports_ok, exports_failed: spanStats.exports_failed };
  let ok = spanStats.exports_failed === 0 && res.spans_created === res.spans_exported && exported.size === created.size;
  for (const [id, n] of created) if (exported.get(id) !== n) ok = false;
  if (withLogs) {
    Object.assign(res, { log_traces: logsCreated.size, records_created: sum(logsCreated) + recordsNoTrace,
      records_with_trace: sum(logsCreated), records_without_trace: recordsNoTrace,
      records_exported: sum(logsExported) + recordsNoTraceExported, log_exports_ok: logStats.exports_ok,
      log_exports_failed: logStats.exports_failed });
    ok = ok && logStats.exports_failed === 0 && res.records_created === res.records_exported;
    for (const [id, n] of logsCreated) if (logsExported.get(id) !== n) ok = false;
  }
  return { res, ok, errors: spanStats.errors.concat(logStats ? logStats.errors : []) };
}

async function runMetrics() {
  const { MeterProvider, PeriodicExportingMetricReader } = require('@opentelemetry/sdk-metrics');
  const { OTLPMetricExporter } = grpc ? require('@opentelemetry/exporter-metrics-otlp-grpc')
    : require('@opentelemetry/exporter-metrics-otlp-proto');
  const exporter = new OTLPMetricExporter();
  let points = 0, nonEmpty = 0;
  const st = watch(exporter, 'metrics', (rm) => {
    let n = 0;
    for (const sm of rm.scopeMetrics) for (const m of sm.metrics) n += m.dataPoints.length;
    points += n;
    if (n) nonEmpty++;
  });
  // PeriodicExportingMetricReader takes the interval as an option; sdk-node reads
  // OTEL_METRIC_EXPORT_INTERVAL / OTEL_METRIC_EXPORT_TIMEOUT like this.
  const interval = envNumber('OTEL_METRIC_EXPORT_INTERVAL') ?? 60000;
  const timeout = Math.min(interval, envNumber('OTEL_METRIC_EXPORT_TIMEOUT') ?? 30000);
  const reader = new PeriodicExportingMetricReader({ exporter, exportIntervalMillis: interval, exportTimeoutMillis: timeout });
  const provider = new MeterProvider({ resource, readers: [reader] });
  const meter = provider.getMeter('otlp-gateway-interop', '1.0.0');
  const requests = meter.createCounter('app.requests', { description: 'requests handled', unit: '{request}' });
  const latency = meter.createHistogram('app.latency', { description: 'request latency', unit: 'ms' });
  const inflight = meter.createUpDownCounter('app.inflight', { unit: '{request}' });
  const queue = meter.createObservableGauge('app.queue_depth', { unit: '{item}' });
  let depth = 0;
  queue.addCallback((r) => { r.observe(depth, { queue: 'a' }); r.observe(depth * 2, { queue: 'b' }); });
  const routes = ['/api/item', '/api/cart', '/api/user', '/health'];
  const rnd = prng(42);
  let recorded = 0;
  const until = Date.now() + interval * nIntervals + interval / 2;
  while (Date.now() < until) {
    for (let i = 0; i < 50; i++) {
      const route = routes[Math.floor(rnd() * routes.length)];
      const status = rnd() < 0.9 ? '200' : '500';
      requests.add(1, { 'http.route': route, 'http.status_code': status });
      latency.record(rnd() * 250, { 'http.route': route });
      inflight.add(rnd() < 0.5 ? 1 : -1, { 'http.route': route });
      recorded += 3;
    }
    depth = Math.floor(rnd() * 100);
    await sleep(20);
  }
  await provider.shutdown().catch((e) => problems.push(`shutdown: ${e && e.message ? e.message : e}`)); // a last export
  const res = { mode, interval_ms: interval, measurements: recorded, points_exported: points,
    exports_ok: st.exports_ok, exports_nonempty: nonEmpty, exports_failed: st.exports_failed };
  return { res, ok: st.exports_failed === 0 && points > 0, errors: st.errors };
}

(async () => {
  const r = mode.startsWith('metrics') ? await runMetrics() : await runTraces(mode.startsWith('logs'));
  r.res.problems = problems.length;
  r.res.ms = Date.now() - t0;
  const ok = r.ok && problems.length === 0;
  if (!ok) { // distinct messages with their counts
    const seen = new Map();
    for (const e of r.errors.concat(problems)) seen.set(e, (seen.get(e) || 0) + 1);
    r.res.errors = [...seen].slice(0, 10).map(([e, n]) => (n > 1 ? `${n}x ${e}` : e));
  }
  process.stdout.write(JSON.stringify(r.res) + '\n');
  process.exitCode = ok ? 0 : 1;
})().catch((e) => {
  process.stderr.write('app failed: ' + (e && e.stack ? e.stack : String(e)) + '\n');
  process.exitCode = 1;
});
