"""Helpers for bench/compare: starting and stopping the sinks and the three proxies (otlp-gateway, HAProxy,
nginx; for the OTLP/gRPC rows the gateway's gRPC listener and HAProxy with `proto h2`; for the TLS rows the
gateway with server.tls and HAProxy with `bind ... ssl crt`, from an ECDSA P-256 certificate made by make_cert) on
127.0.0.1, reading their CPU time and peak RSS from /proc and the gateway's counters from its /metrics, the wrk
client (a Lua script POSTing otlp-load's own body, caught by capture_request), and the idle-connection client of
scenario S5 (run as `python3 bench/compare_lib.py idle PORT N`).

Every process is started in its own process group (start_new_session) and registered with a Procs object;
Procs.stop_all() signals each group (SIGTERM, then SIGKILL after a grace period), so nginx's workers go with
their master and nothing outlives the benchmark, also on Ctrl-C or an exception.
"""
import os
import re
import resource
import selectors
import signal
import socket
import subprocess
import sys
import time

from benchlib import cpu_seconds, free_port, parse_result  # noqa: F401  (re-exported for bench/compare)


def raise_nofile():
    """Soft RLIMIT_NOFILE up to the hard limit (children inherit it); returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def parse_duration(d):
    d = d.strip()
    for suf, mul in (("ms", 0.001), ("s", 1.0), ("m", 60.0), ("h", 3600.0)):
        if d.endswith(suf):
            return float(d[: -len(suf)]) * mul
    return float(d)


def fmt_duration(sec):
    return "%dms" % round(sec * 1000)


def children(pid):
    """Direct children of pid, from /proc (no pgrep needed)."""
    out = []
    try:
        with open("/proc/%d/task/%d/children" % (pid, pid)) as f:
            out = [int(x) for x in f.read().split()]
    except OSError:
        pass
    return out


def vm_hwm_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for ln in f:
            if ln.startswith("VmHWM:"):
                return int(ln.split()[1])
    return 0


class Procs:
    """Registry of everything we started; stop_all() is called from a finally block."""

    def __init__(self):
        self.live = []

    def spawn(self, args, **kw):
        p = subprocess.Popen(args, start_new_session=True, **kw)
        self.live.append(p)
        return p

    def stop(self, p, grace=5.0):
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                p.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait()
        else:
            # the leader is gone; its group (e.g. orphaned workers) may still exist
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        for f in (p.stdin, p.stdout, p.stderr):
            if f:
                try:
                    f.close()
                except OSError:
                    pass
        if p in self.live:
            self.live.remove(p)

    def stop_all(self):
        for p in list(reversed(self.live)):
            self.stop(p, grace=3.0)


def wait_port(port, proc=None, timeout=15.0, what="server"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError("%s exited with %s before listening" % (what, proc.returncode))
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.03)
    raise RuntimeError("%s on port %d did not come up" % (what, port))


def wait_log(path, needle, proc, timeout=15.0, what="server"):
    """Polls a log file for a line containing needle; returns the port of the first HOST:PORT after it."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with open(path) as f:
                for ln in f:
                    m = re.search(re.escape(needle) + r".*?:(\d+)\b", ln)
                    if m:
                        return int(m.group(1))
        except OSError:
            pass
        if proc.poll() is not None:
            break
        time.sleep(0.02)
    tail = ""
    try:
        with open(path) as f:
            tail = f.read()[-2000:]
    except OSError:
        pass
    raise RuntimeError("%s did not report its port (%s):\n%s" % (what, path, tail))


class Proxy:
    """One running proxy: pids for CPU (all processes), rss_pids for VmHWM (the ones serving traffic)."""

    def __init__(self, name, proc, port, pids, rss_pids):
        self.name, self.proc, self.port, self.pids, self.rss_pids = name, proc, port, pids, rss_pids

    def cpu(self):
        return cpu_seconds(self.pids)

    def rss_mib(self):
        return sum(vm_hwm_kib(p) for p in self.rss_pids) / 1024.0


def make_cert(tmp):
    """A self-signed ECDSA P-256 certificate for CN/SAN IP 127.0.0.1, made with the openssl CLI into tmp (the
    same one for every TLS server of the run). Returns dict(cert=, key=, pem=cert+key concatenated (HAProxy's
    `crt`), desc=)."""
    cert, key, pem = (os.path.join(tmp, n) for n in ("tls-cert.pem", "tls-key.pem", "tls-combined.pem"))
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", key, "-out", cert, "-days", "2", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    with open(pem, "w") as out:
        for src in (cert, key):
            with open(src) as f:
                out.write(f.read())
    return {"cert": cert, "key": key, "pem": pem, "desc": "self-signed ECDSA P-256 (prime256v1), CN and SAN IP "
            "127.0.0.1, made with `openssl req -x509 -newkey ec` at start"}


def tls_probe(port):
    """What `openssl s_client` negotiates with the server on port (protocol, cipher suite, key exchange group,
    session tickets sent): a line for the report, or why not."""
    p = None
    try:
        p = subprocess.Popen(["openssl", "s_client", "-connect", "127.0.0.1:%d" % port, "-servername", "127.0.0.1",
                              "-alpn", "http/1.1"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
        time.sleep(0.3)  # the TLS 1.3 tickets come after the handshake; closing stdin at once would miss them
        out = p.communicate(input="", timeout=10)[0]
    except (OSError, subprocess.SubprocessError) as e:
        return "probe failed: %s" % e
    finally:
        if p is not None and p.poll() is None:
            p.kill()
            p.wait()
    proto = re.search(r"(TLSv[\d.]+), Cipher is (\S+)", out)
    group = re.search(r"^(?:Server Temp Key|Negotiated TLS1.3 group): (.+)$", out, re.M)
    alpn = re.search(r"^(ALPN protocol: .+|No ALPN negotiated)$", out, re.M)
    return "%s %s, key exchange %s, %s, %d session ticket(s) sent" % (
        proto.group(1) if proto else "?", proto.group(2) if proto else "?", group.group(1).strip() if group else "?",
        alpn.group(1) if alpn else "ALPN ?", out.count("Post-Handshake New Session Ticket arrived"))


def start_sinks(procs, build, tmp, n, grpc=False, tls=None):
    """n `otlp-sink --no-decode`: [(proc, http_port)], or with grpc=True (each also serves OTLP/gRPC, --grpc)
    [(proc, http_port, grpc_port)]. tls: make_cert's dict, the sinks then speak TLS (otlp-sink --tls)."""
    ps = []
    for i in range(n):
        log = os.path.join(tmp, "sink%d%s.out" % (i, "-tls" if tls else ""))
        out = open(log, "w")
        p = procs.spawn([os.path.join(build, "otlp-sink"), "--no-decode", "--listen", "127.0.0.1:0"] +
                        (["--grpc"] if grpc else []) + (["--tls", "%s,%s" % (tls["cert"], tls["key"])] if tls else []),
                        stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        out.close()
        ps.append((p, log))
    if grpc:
        return [(p, wait_log(log, "listening on", p, what="otlp-sink"),
                 wait_log(log, "grpc listening on", p, what="otlp-sink --grpc")) for p, log in ps]
    return [(p, wait_log(log, "listening on", p, what="otlp-sink")) for p, log in ps]


def gateway_config(path, sink_ports, workers, grpc=False, tls=None, backends_extra=""):
    """Writes the gateway's YAML config: trace-ID routing to the sinks; backends_extra: more lines under backends
    (e.g. "  batch: {max_parts: 1}\n")."""
    tls_cfg = ', tls: {cert_file: "%s", key_file: "%s"}' % (tls["cert"], tls["key"]) if tls else ""
    with open(path, "w") as f:
        f.write('server: {listen: "127.0.0.1:0", grpc_listen: "%s", workers: %d, max_connections: 20000, '
                'idle_timeout: 600s, read_timeout: 600s%s}\n'
                'telemetry: {listen: "127.0.0.1:0"}\n'
                'backends:\n%s  static:\n' % ("127.0.0.1:0" if grpc else "", workers, tls_cfg, backends_extra) +
                "".join('    - {endpoint: "http://127.0.0.1:%d"}\n' % p for p in sink_ports))


def check_gateway_config(build, tmp, backends_extra, tag="check"):
    """Whether this otlp-gateway accepts a config with backends_extra (otlp-gateway --check-config): (True, "") or
    (False, its message)."""
    cfg = os.path.join(tmp, "gw-%s.yaml" % tag)
    gateway_config(cfg, [9], 1, backends_extra=backends_extra)
    cp = subprocess.run([os.path.join(build, "otlp-gateway"), "--config", cfg, "--check-config"], capture_output=True,
                        text=True, timeout=30, stdin=subprocess.DEVNULL)
    return cp.returncode == 0, (cp.stderr + cp.stdout).strip().replace(cfg, "config")


def start_gateway(procs, build, tmp, sink_ports, workers, tag, grpc=False, tls=None, backends_extra=""):
    """The gateway with trace-ID routing to the sinks (over HTTP/1.1); grpc=True also opens its OTLP/gRPC listener
    (server.grpc_listen, else off), whose port is the Proxy's gport. tls: make_cert's dict, the ingest listener then
    speaks TLS (server.tls.cert_file / key_file); the sinks stay plain. backends_extra: gateway_config's. The
    Proxy's tport is its telemetry listener (/metrics)."""
    cfg = os.path.join(tmp, "gw-%s.yaml" % tag)
    gateway_config(cfg, sink_ports, workers, grpc=grpc, tls=tls, backends_extra=backends_extra)
    log = os.path.join(tmp, "gw-%s.err" % tag)
    err = open(log, "w")
    p = procs.spawn([os.path.join(build, "otlp-gateway"), "--config", cfg], stdout=subprocess.DEVNULL, stderr=err,
                    stdin=subprocess.DEVNULL)
    err.close()
    port = wait_log(log, "server=ingest", p, what="otlp-gateway")
    px = Proxy("gateway", p, port, [p.pid], [p.pid])
    px.tport = wait_log(log, "server=telemetry", p, what="otlp-gateway telemetry listener")
    if grpc:
        px.gport = wait_log(log, "server=grpc", p, what="otlp-gateway gRPC listener")
    return px


def start_haproxy(procs, tmp, sink_ports, workers, tag, maxconn=10100, bufsize=0, h2=False, tls=None):
    """HAProxy, mode http, round robin to the sinks; h2=True: HTTP/2 cleartext on the bind and to the servers
    (`proto h2` on both), for OTLP/gRPC, whose trailers HAProxy passes through end to end. tls: make_cert's dict,
    the bind gets `ssl crt <cert+key pem>` (HAProxy's defaults otherwise); the servers stay plain."""
    port = free_port()
    proto = " proto h2" if h2 else ""
    ssl = " ssl crt %s" % tls["pem"] if tls else ""
    cfg = os.path.join(tmp, "haproxy-%s.cfg" % tag)
    # maxconn: 10,000 idle clients + load; with http-reuse always an idle client holds no server connection,
    # so ~maxconn fds suffice. HAProxy wants 2*maxconn fds and by default refuses to start below that
    # (strict-limits); with a hard limit of 20000 (this machine) `no strict-limits` lets it warn and run.
    with open(cfg, "w") as f:
        f.write("""global
  nbthread %d
  maxconn %d
  no strict-limits
%sdefaults
  mode http
  option http-keep-alive
  timeout connect 5s
  timeout client 600s
  timeout server 600s
  timeout http-request 600s
  timeout http-keep-alive 600s
  timeout queue 30s
frontend fe
  bind 127.0.0.1:%d backlog 1024%s%s
  maxconn %d
  default_backend sinks
backend sinks
  balance roundrobin
  http-reuse always
%s""" % (workers, maxconn, "  tune.bufsize %d\n" % bufsize if bufsize else "", port, ssl, proto, maxconn,
         "".join("  server s%d 127.0.0.1:%d%s\n" % (i, p, proto) for i, p in enumerate(sink_ports))))
    log = os.path.join(tmp, "haproxy-%s.err" % tag)
    err = open(log, "w")
    p = procs.spawn(["haproxy", "-db", "-f", cfg], stdout=err, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    err.close()
    wait_port(port, p, what="haproxy")
    pids = [p.pid] + children(p.pid)
    return Proxy("HAProxy", p, port, pids, pids)


def start_nginx(procs, tmp, sink_ports, workers, tag):
    port = free_port()
    d = os.path.join(tmp, "nginx-%s" % tag)
    os.makedirs(d, exist_ok=True)
    conf = os.path.join(d, "nginx.conf")
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    user = "user root;\n" if os.geteuid() == 0 else ""
    with open(conf, "w") as f:
        f.write("""%sworker_processes %d; daemon off; master_process on; pid %s/nginx.pid; error_log %s/error.log;
worker_rlimit_nofile %d;
events { worker_connections %d; }
http {
  access_log off;
  client_body_temp_path %s/body; proxy_temp_path %s/proxy;
  keepalive_requests 100000000; keepalive_timeout 600s;
  client_header_timeout 600s; client_body_timeout 600s; send_timeout 600s;
  client_max_body_size 64m; client_body_buffer_size 1m;
  upstream sinks {
%s    keepalive 32; keepalive_requests 100000000; keepalive_timeout 600s;
  }
  server {
    listen 127.0.0.1:%d backlog=1024;
    location / {
      proxy_pass http://sinks;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_read_timeout 600s; proxy_send_timeout 600s;
    }
  }
}
""" % (user, workers, d, d, nofile, nofile - 100, d, d,
       "".join("    server 127.0.0.1:%d;\n" % p for p in sink_ports), port))
    log = os.path.join(d, "stderr.log")
    err = open(log, "w")
    p = procs.spawn(["nginx", "-c", conf, "-p", d + "/", "-e", os.path.join(d, "error.log")], stdout=err,
                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    err.close()
    wait_port(port, p, what="nginx")
    deadline = time.time() + 5
    while len(children(p.pid)) < workers and time.time() < deadline:
        time.sleep(0.02)
    kids = children(p.pid)
    return Proxy("nginx", p, port, [p.pid] + kids, kids)


def run_load(procs, build, url, duration, connections, spans, traces, resources=None, gzip=False, rate=0,
             timeout=None, grpc_streams=0, ca=None, headers=()):
    """Runs otlp-load to completion; returns the RESULT line as a dict of floats (plus 'raw'). grpc_streams > 0:
    OTLP/gRPC (otlp-load --grpc) with that many calls in flight per connection. An https:// url is TLS, verified
    against ca (a PEM file); headers: extra 'Name: value' request headers (e.g. 'Connection: close')."""
    args = [os.path.join(build, "otlp-load"), "--url", url, "--quiet", "--duration", duration,
            "--connections", str(connections), "--spans", str(spans), "--traces", str(traces)]
    if ca:
        args += ["--ca", ca]
    for h in headers:
        args += ["--header", h]
    if grpc_streams:
        args += ["--grpc", "--streams", str(grpc_streams)]
    if resources:
        args += ["--resources", str(resources)]
    if gzip:
        args += ["--gzip-level", "1"]
    if rate:
        args += ["--rate", str(int(rate))]
    p = procs.spawn(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    try:
        out, err = p.communicate(timeout=timeout or parse_duration(duration) + 60)
    finally:
        procs.stop(p)
    try:
        r = parse_result(out)
    except IndexError:
        raise RuntimeError("otlp-load printed no RESULT line (exit %s): %s" % (p.returncode, err[-1000:]))
    res = {}
    for k, v in r.items():
        try:
            res[k] = float(v)
        except ValueError:
            pass
    res["raw"] = " ".join("%s=%s" % kv for kv in r.items())
    return res


def scrape_metrics(port, timeout=10.0):
    """The text of GET /metrics on 127.0.0.1:port."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise RuntimeError("GET /metrics: %s" % head.split(b"\r\n")[0].decode(errors="replace"))
    return body.decode(errors="replace")


def metric_series(text, name):
    """[(labels, value)] of every sample of the metric called exactly name (labels: the text inside {} or "")."""
    out = []
    for ln in text.splitlines():
        if not ln.startswith(name) or ln.startswith("#"):
            continue
        rest = ln[len(name):]
        if rest[:1] == "{":
            labels, _, val = rest[1:].partition("} ")
        elif rest[:1] == " ":
            labels, val = "", rest[1:]
        else:
            continue  # a longer name with this one as prefix
        try:
            out.append((labels, float(val.split()[0])))
        except (ValueError, IndexError):
            pass
    return out


def gateway_counters(port):
    """The gateway's counters that bench/compare takes deltas of: client requests answered (requests_total; and
    those not 200 / OK), backend requests (backend_requests_total over backends and outcomes), and
    backend_batch_parts' _sum / _count (None when this gateway has no such histogram)."""
    text = scrape_metrics(port)
    req = metric_series(text, "otlp_gateway_requests_total")
    bp_sum = metric_series(text, "otlp_gateway_backend_batch_parts_sum")
    bp_count = metric_series(text, "otlp_gateway_backend_batch_parts_count")
    return {"req": sum(v for _, v in req),
            "req_not_ok": sum(v for lb, v in req if 'code="200"' not in lb and 'code="OK"' not in lb),
            "be_req": sum(v for _, v in metric_series(text, "otlp_gateway_backend_requests_total")),
            "bp_sum": sum(v for _, v in bp_sum) if bp_sum else None,
            "bp_count": sum(v for _, v in bp_count) if bp_count else None}


def counters_delta(c0, c1):
    """What happened between two gateway_counters: be_per_req (backend requests per client request), batch_parts
    (mean parts per backend request, None without the histogram), gw_req, gw_be_req, req_not_ok (client requests,
    backend requests, client requests answered other than 200 / OK)."""
    req, be = c1["req"] - c0["req"], c1["be_req"] - c0["be_req"]
    parts = None
    if c0["bp_count"] is not None and c1["bp_count"] is not None and c1["bp_count"] > c0["bp_count"]:
        parts = (c1["bp_sum"] - c0["bp_sum"]) / (c1["bp_count"] - c0["bp_count"])
    return {"gw_req": req, "gw_be_req": be, "be_per_req": be / req if req else float("nan"), "batch_parts": parts,
            "req_not_ok": c1["req_not_ok"] - c0["req_not_ok"]}


def capture_request(procs, build, spans, traces, resources=None, gzip=False, timeout=30.0):
    """(body, Content-Encoding or None, Content-Type) of the first request otlp-load sends with these options, caught
    by a one-shot listener here: the payload of the otlp-load rows (same generator, options and seed: only the
    timestamps differ from run to run), for a client that sends one fixed body (wrk)."""
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("127.0.0.1", 0))
    ls.listen(1)
    ls.settimeout(timeout)
    port = ls.getsockname()[1]
    args = [os.path.join(build, "otlp-load"), "--url", "http://127.0.0.1:%d" % port, "--quiet", "--requests", "1",
            "--connections", "1", "--spans", str(spans), "--traces", str(traces)]
    if resources:
        args += ["--resources", str(resources)]
    if gzip:
        args += ["--gzip-level", "1"]
    p = procs.spawn(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    try:
        c, _ = ls.accept()
        c.settimeout(timeout)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = c.recv(65536)
            if not chunk:
                raise RuntimeError("otlp-load closed before sending a request head")
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        hdrs = {}
        for ln in head.split(b"\r\n")[1:]:
            k, _, v = ln.partition(b":")
            hdrs[k.strip().lower().decode()] = v.strip().decode()
        clen = int(hdrs["content-length"])
        while len(body) < clen:
            chunk = c.recv(65536)
            if not chunk:
                raise RuntimeError("otlp-load closed in the middle of its body")
            body += chunk
        c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        c.close()
    finally:
        ls.close()
        procs.stop(p)
    return body[:clen], hdrs.get("content-encoding"), hdrs.get("content-type", "application/x-protobuf")


WRK_SCRIPT = """-- bench/compare: POST /v1/traces with one fixed OTLP body (keep-alive: wrk's HTTP/1.1 default)
local f = assert(io.open("%(body)s", "rb"))
wrk.method = "POST"
wrk.path = "/v1/traces"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "%(ctype)s"
%(encoding)s
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("WRKRESULT requests=%%.0f duration_us=%%.0f bytes=%%.0f status=%%.0f connect=%%.0f "
    .. "read=%%.0f write=%%.0f timeout=%%.0f p50_us=%%.0f p99_us=%%.0f\\n", summary.requests, summary.duration,
    summary.bytes, e.status, e.connect, e.read, e.write, e.timeout, latency:percentile(50), latency:percentile(99)))
end
"""


def write_wrk_script(tmp, tag, body, encoding=None, ctype="application/x-protobuf"):
    """Writes body to a file and a wrk Lua script that POSTs it to /v1/traces; returns the script's path."""
    bpath = os.path.join(tmp, "wrk-body-%s.bin" % tag)
    with open(bpath, "wb") as f:
        f.write(body)
    spath = os.path.join(tmp, "wrk-%s.lua" % tag)
    with open(spath, "w") as f:
        f.write(WRK_SCRIPT % {"body": bpath, "ctype": ctype, "encoding": 'wrk.headers["Content-Encoding"] = "%s"'
                              % encoding if encoding else ""})
    return spath


def run_wrk(procs, script, port, duration_s, connections, threads, spans):
    """One wrk run (keep-alive, --connections spread over threads); returns a dict shaped like run_load's: rps and
    spans_per_s of the requests answered < 400 (wrk counts status >= 400 as errors.status), ok, requests, errors
    (transport: connect/read/write/timeout), spans_acked, elapsed_s, p50_ms / p99_ms, raw."""
    secs = max(1, int(round(duration_s)))  # wrk's -d takes whole s/m/h
    args = ["wrk", "-t", str(max(1, min(threads, connections))), "-c", str(connections), "-d", "%ds" % secs,
            "--timeout", "10s", "-s", script, "http://127.0.0.1:%d/v1/traces" % port]
    p = procs.spawn(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    try:
        out, err = p.communicate(timeout=secs + 60)
    finally:
        procs.stop(p)
    line = [ln for ln in out.splitlines() if ln.startswith("WRKRESULT ")]
    if not line:
        raise RuntimeError("wrk printed no WRKRESULT line (exit %s): %s %s" % (p.returncode, out[-1000:],
                                                                               err[-1000:]))
    kv = {k: float(v) for k, v in (x.split("=", 1) for x in line[0].split()[1:])}
    elapsed = kv["duration_us"] / 1e6
    ok = kv["requests"] - kv["status"]
    errors = kv["connect"] + kv["read"] + kv["write"] + kv["timeout"]
    return {"requests": kv["requests"], "ok": ok, "errors": errors, "non2xx": kv["status"],
            "rps": ok / elapsed if elapsed else 0.0, "spans_per_s": ok * spans / elapsed if elapsed else 0.0,
            "spans_acked": ok * spans, "elapsed_s": elapsed, "p50_ms": kv["p50_us"] / 1000.0,
            "p99_ms": kv["p99_us"] / 1000.0, "raw": line[0][10:]}


class IdleClients:
    """S5: a child process holding N idle keep-alive connections (each after one empty OTLP request)."""

    def __init__(self, procs, port, n):
        self.procs = procs
        self.p = procs.spawn([sys.executable, os.path.abspath(__file__), "idle", str(port), str(n)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.p.stdout.readline()
        if not line.startswith("READY"):
            err = self.p.stderr.read() if self.p.poll() is not None else ""
            raise RuntimeError("idle client failed: %r %s" % (line, err[-1000:]))
        kv = dict(x.split("=") for x in line.split()[1:])
        self.ok, self.failed, self.secs = int(kv["ok"]), int(kv["failed"]), float(kv["secs"])

    def still_open(self):
        self.p.stdin.write("check\n")
        self.p.stdin.flush()
        line = self.p.stdout.readline()
        return int(line.split("=")[1]) if line.startswith("OPEN") else -1

    def close(self):
        self.procs.stop(self.p)


def _idle_main(port, n, concurrency=256, timeout=120.0):
    raise_nofile()
    req = (b"POST /v1/traces HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Type: application/x-protobuf\r\n"
           b"Content-Length: 0\r\n\r\n" % port)
    sel = selectors.DefaultSelector()
    pending, done = {}, []
    opened = failed = 0
    t0 = time.time()
    while (opened < n or pending) and time.time() - t0 < timeout:
        while opened < n and len(pending) < concurrency:
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", port))
            sel.register(s, selectors.EVENT_WRITE)
            pending[s] = [False, b""]
            opened += 1
        for key, _ in sel.select(timeout=1.0):
            s = key.fileobj
            st = pending[s]
            try:
                if not st[0]:
                    if s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                        raise OSError("connect")
                    s.send(req)
                    st[0] = True
                    sel.modify(s, selectors.EVENT_READ)
                    continue
                data = s.recv(65536)
                if not data:
                    raise OSError("closed")
                st[1] += data
                head, sep, body = st[1].partition(b"\r\n\r\n")
                if not sep:
                    continue
                clen = 0
                for ln in head.split(b"\r\n")[1:]:
                    k, _, v = ln.partition(b":")
                    if k.strip().lower() == b"content-length":
                        clen = int(v)
                if len(body) < clen:
                    continue
                if not head.startswith(b"HTTP/1.1 2"):
                    raise OSError("status " + head.split(b"\r\n")[0].decode(errors="replace"))
                sel.unregister(s)
                del pending[s]
                done.append(s)
            except OSError:
                sel.unregister(s)
                del pending[s]
                s.close()
                failed += 1
    failed += len(pending)
    print("READY ok=%d failed=%d secs=%.2f" % (len(done), failed, time.time() - t0), flush=True)
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    for line in sys.stdin:
        if line.strip() == "check":
            alive = 0
            for s in done:
                try:
                    alive += s.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) != b""
                except BlockingIOError:
                    alive += 1
                except OSError:
                    pass
            print("OPEN n=%d" % alive, flush=True)
    os._exit(0)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "idle":
        _idle_main(int(sys.argv[2]), int(sys.argv[3]))
    else:
        raise SystemExit("usage: compare_lib.py idle PORT N")
