"""Shared helpers for integration tests: start the real binaries on 127.0.0.1 with ephemeral ports,
talk raw HTTP/1.1 to them, encode the few protobuf messages the tests need, and clean up every process.

Each test script calls run_tests(globals()) which runs every function named test_*, prints one line per
test and a final "N passed, N failed" line, and exits non-zero on any failure. A watchdog alarm bounds the
whole script; every process started is killed at exit."""
import argparse
import atexit
import collections
import gzip
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback

ARGS = None
_procs = []
TMP = tempfile.mkdtemp(prefix="otlpgw-test-")


def args():
    global ARGS
    if ARGS is None:
        p = argparse.ArgumentParser()
        p.add_argument("--gateway", required=True)
        p.add_argument("--sink", required=True)
        p.add_argument("--load", required=True)
        p.add_argument("--timeout", type=int, default=240)
        ARGS, _ = p.parse_known_args()
    return ARGS


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
    """A started process whose stderr (and optionally stdout) lines are collected by threads."""

    def __init__(self, argv, env=None):
        self.argv = argv
        self.p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  env=env, text=True)
        _procs.append(self.p)
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

    def wait_line(self, pattern, stream="err", timeout=10):
        """Waits for a line matching the regex; returns the match."""
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
                if left <= 0 or self.p.poll() is not None and not self._pending(lines):
                    raise AssertionError("no line matching %r from %s; stderr:\n%s\nstdout:\n%s" % (
                        pattern, self.argv[0], "\n".join(self.err[-20:]), "\n".join(self.out[-20:])))
                self._cv.wait(min(left, 0.1))

    def _pending(self, lines):
        return False

    def signal(self, sig):
        self.p.send_signal(sig)

    def wait(self, timeout=15):
        rc = self.p.wait(timeout=timeout)
        self._join_output()
        return rc

    def stop(self):
        if self.p.poll() is None:
            self.p.terminate()
            try:
                self.p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        self._join_output()
        return self.p.returncode


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
    def __init__(self, config_text, name="gw.yaml"):
        self.config_path = write_config(config_text, name)
        super().__init__([args().gateway, "--config", self.config_path])
        self.port = int(self.wait_line(r"msg=listening server=ingest addr=127\.0\.0\.1:(\d+)").group(1))
        self.telemetry_port = int(self.wait_line(r"msg=listening server=telemetry addr=127\.0\.0\.1:(\d+)").group(1))
        if DEAD_BACKEND_HEALTH in config_text:
            self.wait_not_ready()

    def wait_not_ready(self, timeout=5):
        """Waits (bounded) until /readyz says no backend is up."""
        deadline = time.time() + timeout
        while http_request(self.telemetry_port, "GET", "/readyz")[0] != 503:
            assert time.time() < deadline, "the dead backend was not taken out of the ring"
            time.sleep(0.02)

    def metrics(self):
        st, _, body = http_request(self.telemetry_port, "GET", "/metrics")
        assert st == 200, st
        return body.decode()

    def metric(self, name_and_labels):
        for ln in self.metrics().splitlines():
            if ln.startswith(name_and_labels + " "):
                return float(ln.split()[-1])
        return 0.0

    def metric_or_none(self, name_and_labels):
        """The sample's value, or None when /metrics has no such series."""
        for ln in self.metrics().splitlines():
            if ln.startswith(name_and_labels + " "):
                return float(ln.split()[-1])
        return None

    def metric_sum(self, name):
        """Sum of every series of the metric name (all label sets)."""
        total = 0.0
        for ln in self.metrics().splitlines():
            if ln.startswith(name + "{") or ln.startswith(name + " "):
                total += float(ln.split()[-1])
        return total

    def wait_metric(self, name_and_labels, pred, timeout=10, what=None):
        """Polls the sample until pred(value) holds (a missing series reads as None); returns the value."""
        return wait_until(lambda: self.metric_or_none(name_and_labels), pred, timeout,
                          what or name_and_labels)

    def rss_mib(self):
        """Resident set size (VmRSS) of the running gateway in MiB."""
        with open("/proc/%d/status" % self.p.pid) as f:
            for ln in f:
                if ln.startswith("VmRSS:"):
                    return int(ln.split()[1]) / 1024.0
        raise AssertionError("no VmRSS for pid %d" % self.p.pid)


class Sink(Proc):
    def __init__(self, *extra, listen="127.0.0.1:0"):
        self.extra = list(extra)
        self.host = listen.rsplit(":", 1)[0]
        super().__init__([args().sink, "--listen", listen] + self.extra)
        self.port = int(self.wait_line(r"listening on %s:(\d+)" % re.escape(self.host), stream="out").group(1))

    @property
    def endpoint(self):
        return "http://%s:%d" % (self.host, self.port)

    def stats(self):
        st, _, body = http_request(self.port, "GET", "/stats", host=self.host)
        assert st == 200
        return json.loads(body)

    def control(self, **params):
        """GET /control?k=v...: changes status, retry_after or hang while running; returns the new state."""
        q = "&".join("%s=%s" % kv for kv in params.items())
        st, _, body = http_request(self.port, "GET", "/control" + ("?" + q if q else ""), host=self.host)
        assert st == 200, (st, body)
        return json.loads(body)

    def kill(self):
        """kill -9: no answer, no flush beyond what the sink already wrote."""
        self.p.kill()
        self.p.wait()
        self._join_output()

    def restart(self):
        """Starts the (killed or stopped) sink again on the same address with the same flags, so a
        --trace-file is appended to."""
        assert self.p.poll() is not None, "restart() of a running sink"
        Proc.__init__(self, [args().sink, "--listen", "%s:%d" % (self.host, self.port)] + self.extra)
        self.wait_line(r"listening on %s:%d" % (re.escape(self.host), self.port), stream="out")


def run_load(url, *extra, timeout=120):
    """Runs otlp-load to completion; returns (RESULT dict, full stdout)."""
    cp = subprocess.run([args().load, "--url", url, "--quiet"] + list(extra), capture_output=True, text=True,
                        timeout=timeout)
    assert cp.returncode == 0, "otlp-load failed (%d): %s %s" % (cp.returncode, cp.stdout, cp.stderr)
    for ln in cp.stdout.splitlines():
        if ln.startswith("RESULT "):
            res = {}
            for kv in ln[7:].split():
                k, v = kv.split("=", 1)
                res[k] = float(v) if re.match(r"^-?[\d.]+(e[-+]?\d+)?$", v) else v
            return res, cp.stdout
    raise AssertionError("no RESULT line from otlp-load: " + cp.stdout + cp.stderr)


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
    """otlp-load running while the test does other things. t0 is its start; at(t) sleeps until t0 + t;
    result() waits for the end and returns the RESULT dict."""

    def __init__(self, url, *extra):
        self.argv = [args().load, "--url", url, "--quiet"] + list(extra)
        self.p = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
        _procs.append(self.p)
        self.t0 = time.time()

    def at(self, t):
        left = self.t0 + t - time.time()
        if left > 0:
            time.sleep(left)

    def result(self, timeout=60):
        out, err = self.p.communicate(timeout=timeout)
        assert self.p.returncode == 0, "otlp-load failed (%d): %s %s" % (self.p.returncode, out, err)
        res = parse_result(out)
        assert res is not None, "no RESULT line from otlp-load: " + out + err
        return res


def read_traces(path):
    """Counter trace_id -> spans from a trace file of otlp-sink or otlp-load ("<hex> <count>" lines)."""
    c = collections.Counter()
    if os.path.exists(path):
        with open(path) as f:
            for ln in f:
                parts = ln.split()
                if len(parts) == 2:  # a line being written by a live process may be incomplete
                    c[parts[0]] += int(parts[1])
    return c


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


# ---- raw HTTP/1.1 -------------------------------------------------------------------------------------

class Conn:
    """A raw client connection that can send arbitrary bytes and read responses one by one."""

    def __init__(self, port, timeout=5, host="127.0.0.1"):
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

    def closed_by_peer(self, timeout=5):
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


def trace_request(n_spans=3, n_traces=1, service="svc"):
    """An ExportTraceServiceRequest: one resource, one scope, n_spans spans over n_traces traces."""
    spans = b""
    for i in range(n_spans):
        tid = bytes([1 + i % n_traces]) * 16
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

def run_tests(namespace):
    a = args()

    def on_alarm(*_):
        print("watchdog: test script exceeded %d s" % a.timeout, flush=True)
        _cleanup()
        os._exit(3)

    signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(a.timeout)
    only = os.environ.get("ONLY")
    passed = failed = 0
    for name, fn in list(namespace.items()):
        if not name.startswith("test_") or not callable(fn) or (only and only != name):
            continue
        t0 = time.time()
        try:
            fn()
            passed += 1
            print("ok   %s (%.2fs)" % (name, time.time() - t0), flush=True)
        except Exception:
            failed += 1
            print("FAIL %s" % name, flush=True)
            traceback.print_exc()
            sys.stdout.flush()
    _cleanup()
    print("%d passed, %d failed" % (passed, failed))
    sys.exit(1 if failed else 0)
