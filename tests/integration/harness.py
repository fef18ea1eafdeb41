"""Shared helpers for integration tests: start the real binaries on 127.0.0.1 with ephemeral ports, talk raw
HTTP/1.1 to them, encode the few protobuf messages the tests need, pools of recording sinks and the accounting
of what was acknowledged against what arrived, and clean up every process.

Each test script calls run_tests(globals()) which runs every function named test_* (ONLY=name[,name...]
picks some; a name that matches no test fails the script), prints one line per test and a final
"N passed, N failed, N skipped" line. Exit code: 1 on any failure, SKIP_RC (77, declared as SKIP_RETURN_CODE in
tests/CMakeLists.txt so ctest shows Skipped) when something called skip() and nothing failed, else 0. With
CI=true in the environment a skip is a failure: CI installs every tool the tests need.

Every Gateway and Sink a test starts is owned by that test (or, with shared=True, by the script): when the
test ends, pass or fail, each still running is stopped with SIGTERM and each must have exited 0 (a crash, a
sanitizer report or a shutdown that hangs fails the test), except a sink the test killed itself (Sink.kill);
a BackgroundLoad still running then is stopped too.
A watchdog alarm (--timeout, which tests/CMakeLists.txt sets just under ctest's TIMEOUT) bounds the whole
script; every process started is killed at exit.

Waits are on events (a log line, a metric value, a sink's counter), each with a generous bound; no test
asserts a rate or a duration."""
import argparse
import atexit
import collections
import gzip
import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
sys.dont_write_bytecode = True  # no __pycache__ next to bench/benchlib.py
sys.path.insert(0, os.path.join(ROOT, "bench"))
from benchlib import free_port  # noqa: E402

ARGS = None
_procs = []
TMP = tempfile.mkdtemp(prefix="otlpgw-test-")
SKIP_RC = 77  # tests/CMakeLists.txt: SKIP_RETURN_CODE
WAIT = 30     # seconds: the default bound of every wait on an event


def args():
    global ARGS
    if ARGS is None:
        p = argparse.ArgumentParser()
        p.add_argument("--gateway", required=True)
        p.add_argument("--sink", required=True)
        p.add_argument("--load", required=True)
        p.add_argument("--timeout", type=int, default=280, help="watchdog for the whole script, seconds")
        ARGS, _ = p.parse_known_args()
    return ARGS


def in_ci():
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


class Skipped(Exception):
    """Raised by skip(); run_tests counts it (a failure under CI=true)."""


def skip(reason):
    """Ends the running test (or the script's setup) as skipped: reason says what is missing and how to get it."""
    raise Skipped(reason)


# Processes by owner: _scopes[0] is the script's, _scopes[-1] the running test's (see run_tests).
_scopes = [[]]


def _cleanup():
    for p in _procs:
        if p.poll() is None:
            p.kill()
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass


atexit.register(_cleanup)


class Proc:
    """A started process whose stderr (and optionally stdout) lines are collected by threads. It belongs to the
    running test (shared=True: to the script), which stops it when it ends; exit_checked classes (Gateway,
    Sink) must then have exited 0."""
    exit_checked = False

    def __init__(self, argv, env=None, shared=False, preexec=None):
        """preexec: run in the child before exec (subprocess's preexec_fn), e.g. to set resource limits."""
        self.argv = argv
        self.killed = False
        self.p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  env=env, text=True, preexec_fn=preexec)
        _procs.append(self.p)
        scope = _scopes[0] if shared else _scopes[-1]
        if not any(x is self for x in scope):
            scope.append(self)
        self.out, self.err = [], []
        self._cv = threading.Condition()
        self._threads = []
        for stream, sink in ((self.p.stdout, self.out), (self.p.stderr, self.err)):
            t = threading.Thread(target=self._drain, args=(stream, sink), daemon=True)
            t.start()
            self._threads.append(t)

    def _join_output(self):
        """After exit: waits (bounded) until every line the process wrote has been collected."""
        for t in self._threads:
            t.join(timeout=5)

    def _drain(self, stream, sink):
        for line in stream:
            with self._cv:
                sink.append(line.rstrip("\n"))
                self._cv.notify_all()
        with self._cv:
            self._cv.notify_all()

    def wait_line(self, pattern, stream="err", timeout=WAIT):
        """Waits (bounded) for a line matching the regex; returns the match. Fails at once if the process ended
        without writing one."""
        rx = re.compile(pattern)
        lines = self.err if stream == "err" else self.out
        deadline = time.time() + timeout
        with self._cv:
            while True:
                for ln in lines:
                    m = rx.search(ln)
                    if m:
                        return m
                left = deadline - time.time()
                if left <= 0 or self.p.poll() is not None and not any(t.is_alive() for t in self._threads):
                    raise AssertionError("no line matching %r from %s within %d s; stderr:\n%s\nstdout:\n%s" % (
                        pattern, self.argv[0], timeout, "\n".join(self.err[-20:]), "\n".join(self.out[-20:])))
                self._cv.wait(min(left, 0.1))

    def lines(self, pattern, stream="err"):
        """Every line so far matching the regex."""
        rx = re.compile(pattern)
        with self._cv:
            return [ln for ln in (self.err if stream == "err" else self.out) if rx.search(ln)]

    def signal(self, sig):
        self.p.send_signal(sig)

    def wait(self, timeout=WAIT):
        """Waits (bounded) for the exit; returns the exit code (fails when it did not come)."""
        try:
            rc = self.p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError("%s did not exit within %d s; stderr:\n%s" % (
                self.argv[0], timeout, "\n".join(self.err[-20:])))
        self._join_output()
        return rc

    def stop(self, timeout=WAIT):
        """SIGTERM, then waits (bounded; SIGKILL after timeout s); returns the exit code. Idempotent."""
        if self.p.poll() is None:
            self.p.terminate()
            try:
                self.p.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
                self.err.append("harness: no exit within %d s of SIGTERM, killed" % timeout)
        self._join_output()
        return self.p.returncode

    def describe(self):
        return " ".join(self.argv[1:])[:100]

    def end(self):
        return self.stop()


def _end_procs(scope):
    """Stops what the scope still runs (newest first: a load before the gateway it goes through, a gateway
    before the sinks it was started for) and returns a message for every exit-checked process that did not
    exit 0."""
    bad = []
    for p in reversed(scope):
        rc = p.end()
        if p.exit_checked and not p.killed and rc != 0:
            bad.append("%s (%s) exited %s, expected 0 after SIGTERM (a crash, a sanitizer report, or no exit in "
                       "time); stderr tail:\n      %s" % (os.path.basename(p.argv[0]), p.describe(), rc,
                                                       "\n      ".join(p.err[-15:])))
    return bad


def loopback_grpc(text):
    """A config whose server section does not set server.grpc_listen gets "127.0.0.1:0": the default,
    0.0.0.0:4317, is one fixed port, which tests running side by side (and anything else on the machine) would
    share."""
    if "grpc_listen" in text:
        return text
    if re.search(r"^server:[ \t]*\n", text, re.M):
        return re.sub(r"^server:[ \t]*\n", 'server:\n  grpc_listen: "127.0.0.1:0"\n', text, count=1, flags=re.M)
    if re.search(r"^server:", text, re.M):  # a flow mapping or something unusual: leave it to the test
        return text
    return 'server:\n  grpc_listen: "127.0.0.1:0"\n' + text


def write_config(text, name="gw.yaml"):
    path = os.path.join(TMP, name)
    with open(path, "w") as f:
        f.write(text)
    return path


BASE_CONFIG = """
server:
  listen: "127.0.0.1:0"
  workers: 1
  max_request_bytes: {max_request_bytes}
  max_connections: {max_connections}
  read_timeout: {read_timeout}
  idle_timeout: {idle_timeout}
  shutdown_timeout: 5s
{auth}
telemetry:
  listen: "127.0.0.1:0"
backends:
  static:
{backends}
"""


DEAD_BACKEND = "http://127.0.0.1:1"  # nothing listens on port 1
# With only DEAD_BACKEND configured, fast health checks take it out of the ring right after start, so every
# request with data gets the deterministic "no backends available" 503 (Gateway waits for that state).
DEAD_BACKEND_HEALTH = "  health_check: {interval: 100ms, timeout: 100ms, rise: 1, fall: 1}\n"


def gateway_config(backends=(DEAD_BACKEND,), max_request_bytes="1MiB", max_connections=1000,
                   read_timeout="30s", idle_timeout="120s", tokens=None, extra=""):
    if tuple(backends) == (DEAD_BACKEND,) and "health_check" not in extra:
        extra = DEAD_BACKEND_HEALTH + extra
    auth = ""
    if tokens:
        auth = "  auth:\n    bearer_tokens: [%s]\n" % ", ".join('"%s"' % t for t in tokens)
    b = "\n".join('    - {endpoint: "%s"}' % e for e in backends)
    return BASE_CONFIG.format(max_request_bytes=max_request_bytes, max_connections=max_connections,
                              read_timeout=read_timeout, idle_timeout=idle_timeout, auth=auth,
                              backends=b) + extra


FAST_HEALTH = '{enabled: true, path: "/", interval: 200ms, timeout: 200ms, rise: 2, fall: 2, eject_after_failures: 3}'
FAST_RETRY = "{initial_interval: 50ms, max_interval: 500ms, max_elapsed: 60s}"


def resilient_config(endpoints=(), dns=None, request_timeout="1s", workers=1):
    """A gateway config with fast health checks and retries (the fault-injection and interop tests): static
    endpoints and/or a backends.dns block (a dict: hostname, port, interval, server)."""
    lines = ['server:', '  listen: "127.0.0.1:0"', '  workers: %d' % workers, '  shutdown_timeout: 10s',
             'telemetry:', '  listen: "127.0.0.1:0"',
             'backends:']
    if endpoints:
        lines.append('  static:')
        lines += ['    - {endpoint: "%s"}' % e for e in endpoints]
    if dns:
        lines.append('  dns: {hostname: "%s", port: %d, interval: %s, servers: ["%s"]}'
                     % (dns["hostname"], dns["port"], dns["interval"], dns["server"]))
    lines += ['  request_timeout: ' + request_timeout, '  health_check: ' + FAST_HEALTH, '  retry: ' + FAST_RETRY,
              '  queue: {max_bytes: 64MiB}']
    return "\n".join(lines) + "\n"


def fresh(path):
    """path, with any file left there by an earlier run removed."""
    if os.path.exists(path):
        os.unlink(path)
    return path


class Gateway(Proc):
    exit_checked = True

    def __init__(self, config_text, name="gw.yaml", shared=False, preexec=None):
        """preexec: as Proc's (test_spool: RLIMIT_FSIZE, a disk that fills up)."""
        config_text = loopback_grpc(config_text)
        self.config_path = write_config(config_text, name)
        super().__init__([args().gateway, "--config", self.config_path], shared=shared, preexec=preexec)
        self.port = int(self.wait_line(r"msg=listening server=ingest addr=127\.0\.0\.1:(\d+)").group(1))
        self.grpc_port = None  # server.grpc_listen's port, when the config serves OTLP/gRPC on loopback
        if not re.search(r'grpc_listen:\s*""', config_text):
            self.grpc_port = int(self.wait_line(r"msg=listening server=grpc addr=127\.0\.0\.1:(\d+)").group(1))
        self.telemetry_port = int(self.wait_line(r"msg=listening server=telemetry addr=127\.0\.0\.1:(\d+)").group(1))
        if DEAD_BACKEND_HEALTH in config_text:
            self.wait_not_ready()

    def describe(self):
        return os.path.basename(self.config_path)

    def wait_not_ready(self, timeout=WAIT):
        """Waits (bounded) until /readyz says no backend is up."""
        wait_until(lambda: http_request(self.telemetry_port, "GET", "/readyz")[0], lambda st: st == 503, timeout,
                   "/readyz status (the dead backend taken out of the ring)")

    def metrics(self):
        st, _, body = http_request(self.telemetry_port, "GET", "/metrics")
        assert st == 200, st
        return body.decode()

    def metric(self, name_and_labels):
        """The sample's value; a series /metrics does not have fails the test (a misspelt or vanished metric
        must not read as 0). metric_or_none is for the checks that a series is gone."""
        v = self.metric_or_none(name_and_labels)
        if v is None:
            raise AssertionError("no series %s in /metrics" % name_and_labels)
        return v

    def metric_or_none(self, name_and_labels):
        """The sample's value, or None when /metrics has no such series."""
        for ln in self.metrics().splitlines():
            if ln.startswith(name_and_labels + " "):
                return float(ln.split()[-1])
        return None

    def metric_sum(self, name):
        """Sum of every series of the metric name (all label sets); a name with no series at all fails."""
        total, found = 0.0, False
        for ln in self.metrics().splitlines():
            if ln.startswith(name + "{") or ln.startswith(name + " "):
                total += float(ln.split()[-1])
                found = True
        if not found:
            raise AssertionError("no series of %s in /metrics" % name)
        return total

    def wait_metric(self, name_and_labels, pred, timeout=WAIT, what=None):
        """Polls the sample until pred(value) holds (a missing series reads as None); returns the value."""
        return wait_until(lambda: self.metric_or_none(name_and_labels), pred, timeout,
                          what or name_and_labels)

    def wait_more(self, name_and_labels, n, timeout=WAIT, what=None):
        """Waits (bounded) until the sample has grown by n from its value now; returns the new value. A series
        not there yet (a status code never answered so far) counts from 0 and must appear."""
        base = self.metric_or_none(name_and_labels) or 0
        return self.wait_metric(name_and_labels, lambda v: v is not None and v >= base + n, timeout,
                                what or "%s (%d, waiting for +%d)" % (name_and_labels, base, n))

    def rss_mib(self):
        """Resident set size (VmRSS) of the running gateway in MiB."""
        with open("/proc/%d/status" % self.p.pid) as f:
            for ln in f:
                if ln.startswith("VmRSS:"):
                    return int(ln.split()[1]) / 1024.0
        raise AssertionError("no VmRSS for pid %d" % self.p.pid)


def wait_drained(g, timeout=WAIT):
    """Waits (bounded) until the gateway has nothing queued for any backend."""
    wait_until(lambda: g.metric_sum("otlp_gateway_backend_queue_bytes"), lambda v: v == 0, timeout,
               "sum of otlp_gateway_backend_queue_bytes")


class Sink(Proc):
    exit_checked = True

    def __init__(self, *extra, listen="127.0.0.1:0", shared=False, tls=None, client_ca=None):
        """tls=(cert, key): the sink's listeners speak TLS (--tls CERT,KEY, endpoint https://...); stats() and
        control() then go to its plaintext --control-listen port (control_port). client_ca: with tls, clients
        must present a certificate that CA signed (--tls CERT,KEY,CLIENT_CA)."""
        self.extra = list(extra) + (["--tls", ",".join([tls[0], tls[1]] + ([client_ca] if client_ca else []))]
                                    if tls else [])
        self.tls = tls
        self.host = listen.rsplit(":", 1)[0]
        self.control_port = 0
        super().__init__([args().sink, "--listen", listen] + self.extra + self._control_flag(), shared=shared)
        self.port = int(self.wait_line(r"listening on %s:(\d+)" % re.escape(self.host), stream="out").group(1))
        self._wait_control()

    def _control_flag(self):
        return ["--control-listen", "%s:%d" % (self.host, self.control_port)] if self.tls else []

    def _wait_control(self):
        if self.tls:
            self.control_port = int(self.wait_line(r"control listening on %s:(\d+)" % re.escape(self.host),
                                                   stream="out").group(1))

    def describe(self):
        return self.endpoint

    @property
    def endpoint(self):
        return "%s://%s:%d" % ("https" if self.tls else "http", self.host, self.port)

    def stats(self):
        st, _, body = http_request(self.control_port or self.port, "GET", "/stats", host=self.host)
        assert st == 200
        return json.loads(body)

    def control(self, **params):
        """GET /control?k=v...: changes status, retry_after or hang while running; returns the new state."""
        q = "&".join("%s=%s" % kv for kv in params.items())
        st, _, body = http_request(self.control_port or self.port, "GET", "/control" + ("?" + q if q else ""),
                                   host=self.host)
        assert st == 200, (st, body)
        return json.loads(body)

    def kill(self):
        """kill -9: no answer, no flush beyond what the sink already wrote (its exit code is not checked)."""
        self.killed = True
        self.p.kill()
        self.p.wait()
        self._join_output()

    def restart(self):
        """Starts the (killed or stopped) sink again on the same address with the same flags, so a
        --trace-file is appended to."""
        assert self.p.poll() is not None, "restart() of a running sink"
        Proc.__init__(self, [args().sink, "--listen", "%s:%d" % (self.host, self.port)] + self.extra +
                      self._control_flag())
        self.wait_line(r"listening on %s:%d" % (re.escape(self.host), self.port), stream="out")
        self._wait_control()


class Pool:
    """n otlp-sinks (or one per listen address), each recording the traces it receives into its own file
    (--trace-file) and, with logs=True, the trace IDs of its log records (--log-file); extra flags go to every
    sink."""

    def __init__(self, name, n=3, listens=None, logs=False, extra=()):
        listens = listens or ["127.0.0.1:0"] * n
        self.files = [fresh(os.path.join(TMP, "%s.sink%d.traces.txt" % (name, i))) for i in range(len(listens))]
        self.log_files = [fresh(os.path.join(TMP, "%s.sink%d.logs.txt" % (name, i))) for i in range(len(listens))]
        self.sinks = [Sink("--trace-file", f, *(("--log-file", lf) if logs else ()), *extra, listen=a)
                      for f, lf, a in zip(self.files, self.log_files, listens)]

    @property
    def endpoints(self):
        return [s.endpoint for s in self.sinks]

    def traces(self):
        """Counter trace -> spans, per sink."""
        return [read_traces(f) for f in self.files]

    def distinct(self, i):
        """Distinct traces sink i has received so far."""
        return len(read_traces(self.files[i]))

    def items(self, signal):
        """Items (spans, log records, data points) of the signal each sink counted."""
        return [s.stats()[signal]["items"] for s in self.sinks]

    def stop(self):
        for s in self.sinks:
            s.stop()


def run_load(url, *extra, timeout=120):
    """Runs otlp-load to completion; returns (RESULT dict, full stdout)."""
    try:
        cp = subprocess.run([args().load, "--url", url, "--quiet"] + list(extra), capture_output=True, text=True,
                            timeout=timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError("otlp-load %s did not finish within %d s" % (" ".join(extra), timeout))
    assert cp.returncode == 0, "otlp-load failed (%d): %s %s" % (cp.returncode, cp.stdout, cp.stderr)
    res = parse_result(cp.stdout)
    assert res is not None, "no RESULT line from otlp-load: " + cp.stdout + cp.stderr
    return res, cp.stdout


def parse_result(stdout):
    """The RESULT line of otlp-load as a dict (numbers as float), or None."""
    for ln in stdout.splitlines():
        if ln.startswith("RESULT "):
            res = {}
            for kv in ln[7:].split():
                k, v = kv.split("=", 1)
                res[k] = float(v) if re.match(r"^-?[\d.]+(e[-+]?\d+)?$", v) else v
            return res
    return None


class BackgroundLoad:
    """otlp-load running while the test does other things: until its --requests/--duration budget is spent
    (result() waits for that) or until the test has seen the events it needed (stop(): SIGTERM, which
    otlp-load answers with its RESULT line; requests in flight then are aborted, neither ok nor errors)."""

    exit_checked = False

    def __init__(self, url, *extra):
        self.argv = [args().load, "--url", url, "--quiet"] + list(extra)
        self.p = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
        _procs.append(self.p)
        _scopes[-1].append(self)  # a test that fails half-way does not leave its load running

    def end(self):
        """At the end of the owning test: SIGTERM (then SIGKILL) if still running; nothing asserted."""
        if self.p.poll() is None:
            self.p.terminate()
            try:
                self.p.communicate(timeout=WAIT)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.communicate()
        return self.p.returncode

    def running(self):
        return self.p.poll() is None

    def result(self, timeout=120):
        try:
            out, err = self.p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError("otlp-load did not finish within %d s: %s" % (timeout, " ".join(self.argv[1:])))
        assert self.p.returncode == 0, "otlp-load failed (%d): %s %s" % (self.p.returncode, out, err)
        res = parse_result(out)
        assert res is not None, "no RESULT line from otlp-load: " + out + err
        return res

    def stop(self, timeout=WAIT):
        """Ends the load now; returns its RESULT dict."""
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
        return self.result(timeout)


def read_traces(path, strict=False):
    """Counter trace_id -> spans from a trace file of otlp-sink, otlp-load or the interop app ("<hex> <count>"
    lines). A line being written by a live process may be incomplete and is skipped; strict=True (a file whose
    writer has exited) asserts every line is a 32-hex-digit nonzero trace ID and a count."""
    c = collections.Counter()
    if os.path.exists(path):
        with open(path) as f:
            for ln in f:
                parts = ln.split()
                if strict:
                    assert len(parts) == 2 and re.fullmatch(r"[0-9a-f]{32}", parts[0]) and int(parts[0], 16), ln
                if len(parts) == 2:
                    c[parts[0]] += int(parts[1])
    return c


def delivery(acked, per_sink):
    """What was acknowledged (or created: Counter trace -> spans) against what each sink got (a list of such
    Counters): spans both ways, lost (acknowledged spans missing), duplicates (spans beyond the acknowledged),
    unknown traces (at a sink, never acknowledged), split traces (on more than one sink), spans per sink and
    where each trace is (trace -> set of sink indexes)."""
    delivered, where = collections.Counter(), collections.defaultdict(set)
    for i, c in enumerate(per_sink):
        delivered.update(c)
        for t in c:
            where[t].add(i)
    return {
        "acked_spans": sum(acked.values()), "acked_traces": len(acked), "delivered_spans": sum(delivered.values()),
        "lost": sum(max(0, n - delivered.get(t, 0)) for t, n in acked.items()),
        "duplicates": sum(max(0, n - acked.get(t, 0)) for t, n in delivered.items()),
        "unknown_traces": len(set(delivered) - set(acked)),
        "split": sum(1 for s in where.values() if len(s) > 1),
        "per_sink": [sum(c.values()) for c in per_sink], "where": where,
    }


def settled_delivery(acked, sink_files, timeout=WAIT):
    """delivery() of acked against the sinks' trace files, read again (bounded) while spans are missing: a
    request may still be on its way to a sink when the gateway's queue metric reads 0. The caller asserts."""
    deadline = time.time() + timeout
    while True:
        d = delivery(acked, [read_traces(f) for f in sink_files])
        if d["lost"] == 0 or time.time() >= deadline:
            return d
        time.sleep(0.1)


def wait_until(get, pred, timeout, what):
    """Polls get() until pred(value) holds; returns the value, or fails naming what and the last value."""
    deadline = time.time() + timeout
    while True:
        v = get()
        if pred(v):
            return v
        if time.time() >= deadline:
            raise AssertionError("%s: still %r after %.1f s" % (what, v, timeout))
        time.sleep(0.05)


def free_ports(n, host="127.0.0.1"):
    """n distinct TCP ports on host that were free a moment ago."""
    out = []
    for _ in range(100 * n):
        p = free_port(host)
        if p not in out:
            out.append(p)
        if len(out) == n:
            return out
    raise AssertionError("no %d distinct free ports on %s" % (n, host))


# ---- raw HTTP/1.1 -------------------------------------------------------------------------------------

class Conn:
    """A raw client connection that can send arbitrary bytes and read responses one by one."""

    def __init__(self, port, timeout=WAIT, host="127.0.0.1"):
        self.s = socket.create_connection((host, port), timeout=timeout)
        self.buf = b""

    def send(self, data):
        if isinstance(data, str):
            data = data.encode()
        self.s.sendall(data)

    def _fill(self):
        chunk = self.s.recv(65536)
        if not chunk:
            raise EOFError("connection closed by server")
        self.buf += chunk

    def read_response(self):
        """Returns (status, headers dict lowercased, body bytes)."""
        while b"\r\n\r\n" not in self.buf:
            self._fill()
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for ln in lines[1:]:
            k, v = ln.split(":", 1)
            headers[k.strip().lower()] = v.strip()
        n = int(headers.get("content-length", "0"))
        while len(self.buf) < n:
            self._fill()
        body, self.buf = self.buf[:n], self.buf[n:]
        return status, headers, body

    def answered(self):
        """True when the server has sent something (or closed) by now: a look that neither waits nor consumes."""
        return bool(self.buf) or bool(select.select([self.s], [], [], 0)[0])

    def closed_by_peer(self, timeout=WAIT):
        """True when the server closes the connection within timeout (EOF or reset)."""
        self.s.settimeout(timeout)
        try:
            while True:
                data = self.s.recv(65536)
                if not data:
                    return True
                self.buf += data  # kept, so a caller can check nothing else was sent
        except ConnectionResetError:
            return True
        except socket.timeout:
            return False

    def close(self):
        self.s.close()


def build_request(method, path, body=b"", headers=None, chunked=False):
    h = {"Host": "127.0.0.1"}
    h.update(headers or {})
    out = "%s %s HTTP/1.1\r\n" % (method, path)
    if chunked:
        h["Transfer-Encoding"] = "chunked"
    elif body is not None and "Content-Length" not in h:
        h["Content-Length"] = str(len(body))
    out += "".join("%s: %s\r\n" % kv for kv in h.items()) + "\r\n"
    data = out.encode()
    if chunked:
        for i in range(0, len(body), 100):
            part = body[i:i + 100]
            data += b"%x\r\n" % len(part) + part + b"\r\n"
        data += b"0\r\n\r\n"
    elif body:
        data += body
    return data


def http_request(port, method, path, body=b"", headers=None, chunked=False, host="127.0.0.1"):
    c = Conn(port, host=host)
    try:
        c.send(build_request(method, path, body, headers, chunked))
        return c.read_response()
    finally:
        c.close()


# ---- protobuf, just enough ------------------------------------------------------------------------------

def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def field(num, wt, payload):
    if wt == 0:
        return varint(num << 3) + varint(payload)
    if wt == 2:
        return varint(num << 3 | 2) + varint(len(payload)) + payload
    if wt == 1:
        return varint(num << 3 | 1) + payload
    if wt == 5:
        return varint(num << 3 | 5) + payload
    raise ValueError(wt)


def kv_string(key, value):
    return field(1, 2, key.encode()) + field(2, 2, field(1, 2, value.encode()))


def trace_request(n_spans=3, n_traces=1, service="svc", first_trace=1):
    """An ExportTraceServiceRequest: one resource, one scope, n_spans spans over n_traces traces (trace IDs: 16
    times the byte first_trace, first_trace + 1, ...)."""
    spans = b""
    for i in range(n_spans):
        tid = bytes([first_trace + i % n_traces]) * 16
        span = field(1, 2, tid) + field(2, 2, bytes([i + 1]) * 8) + field(5, 2, b"op")
        spans += field(2, 2, span)
    scope = field(1, 2, field(1, 2, b"scope"))
    rs = field(1, 2, field(1, 2, kv_string("service.name", service))) + field(2, 2, scope + spans)
    return field(1, 2, rs)


def parse_fields(buf):
    """Decodes one level of protobuf into {field: [values]} (varints as int, length-delimited as bytes)."""
    out, i = {}, 0
    while i < len(buf):
        tag, i = _read_varint(buf, i)
        num, wt = tag >> 3, tag & 7
        if wt == 0:
            v, i = _read_varint(buf, i)
        elif wt == 2:
            n, i = _read_varint(buf, i)
            v, i = buf[i:i + n], i + n
        elif wt == 1:
            v, i = buf[i:i + 8], i + 8
        elif wt == 5:
            v, i = buf[i:i + 4], i + 4
        else:
            raise ValueError("wire type %d" % wt)
        out.setdefault(num, []).append(v)
    return out


def _read_varint(buf, i):
    shift = n = 0
    while True:
        b = buf[i]
        i += 1
        n |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return n, i


def parse_status(content_type, body):
    """google.rpc.Status as (code, message) from a protobuf or JSON body."""
    if content_type.startswith("application/json"):
        d = json.loads(body)
        return d.get("code", 0), d.get("message", "")
    f = parse_fields(body)
    return f.get(1, [0])[0], f.get(2, [b""])[0].decode()


def gz(data):
    return gzip.compress(data)


# ---- runner -------------------------------------------------------------------------------------------

def _run_one(name, fn):
    """Runs fn as the test name, owning the processes it starts; returns "ok", "fail" or "skip"."""
    t0 = time.time()
    _scopes.append([])
    outcome, detail = "ok", ""
    try:
        fn()
    except Skipped as e:
        outcome, detail = "skip", str(e)
    except Exception:
        outcome, detail = "fail", traceback.format_exc()
    finally:
        bad = _end_procs(_scopes.pop())
    if bad:
        outcome = "fail"
        detail += "".join("  %s\n" % b for b in bad)
    if outcome == "skip" and in_ci():
        outcome, detail = "fail", "skipped, and under CI=true a skip is a failure: %s\n" % detail
    if outcome == "ok":
        print("ok   %s (%.2fs)" % (name, time.time() - t0), flush=True)
    elif outcome == "skip":
        print("SKIP %s: %s" % (name, detail), flush=True)
    else:
        print("FAIL %s\n%s" % (name, detail.rstrip("\n")), flush=True)
    return outcome


def run_tests(namespace, setup=None):
    """Runs the script's test_* functions (after setup(), when given: a skip or failure there ends the script)
    and exits: 1 if anything failed, SKIP_RC if something was skipped, else 0."""
    a = args()

    def on_alarm(*_):
        print("watchdog: test script exceeded %d s (--timeout)" % a.timeout, flush=True)
        _cleanup()
        os._exit(3)

    signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(a.timeout)
    tests = [(n, fn) for n, fn in namespace.items() if n.startswith("test_") and callable(fn)]
    only = [n.strip() for n in os.environ.get("ONLY", "").split(",") if n.strip()]
    if only:
        unknown = [n for n in only if n not in dict(tests)]
        if unknown:
            print("ONLY=%s: no test named %s in %s (tests: %s)" % (os.environ["ONLY"], ", ".join(unknown),
                  os.path.basename(sys.argv[0]), ", ".join(n for n, _ in tests)), flush=True)
            _cleanup()
            sys.exit(1)
        tests = [(n, fn) for n, fn in tests if n in only]
    if not tests:
        print("no test_* function in %s" % os.path.basename(sys.argv[0]), flush=True)
        sys.exit(1)
    counts = collections.Counter()
    if setup is not None:
        outcome = _run_one("setup", setup)
        if outcome != "ok":
            counts[outcome] += 1
            tests = []
    for name, fn in tests:
        counts[_run_one(name, fn)] += 1
    bad = _end_procs(_scopes[0])  # shared processes
    if bad:
        counts["fail"] += 1
        print("FAIL processes shared by the tests\n%s" % "".join("  %s\n" % b for b in bad).rstrip("\n"), flush=True)
    _cleanup()
    print("%d passed, %d failed, %d skipped" % (counts["ok"], counts["fail"], counts["skip"]), flush=True)
    sys.exit(1 if counts["fail"] else SKIP_RC if counts["skip"] else 0)
