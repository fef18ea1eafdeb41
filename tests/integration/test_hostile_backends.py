"""Hostile and misconfigured backends: the real gateway in front of real otlp-sink processes, one of them
behind a backend that answers early or refuses the gateway, while otlp-load sends traces.

- Early answers: an "early proxy" in front of a sink answers 413, 429 or 503 (with keep-alive) right after
  the request head, while a multi-MB part is still being written, then stops reading that connection. After
  its hostile phase it forwards whole requests to its sink. Checked: the gateway stays up and exits 0, every
  request head that reaches any backend is well framed (a connection reused before its write finished would
  put body bytes where a head should be), and every acknowledged span reaches a sink (413: or is reported
  rejected in partial_success and counted in dropped_items_total{reason="rejected"}).
- Refusals: one of three sinks answers every POST with 401 (an expired token) or 404 (a wrong path). It is
  ejected, its traffic moves, nothing acknowledged is lost, and the refusal is logged and counted
  (backend_requests_total{outcome="refused"}).
Only 127.0.0.1 is used; every process stops by itself or is killed at exit (harness)."""
import os
import re
import signal
import socket
import threading

from harness import (TMP, WAIT, BackgroundLoad, Gateway, Pool, Sink, fresh, read_traces, resilient_config,
                     run_tests, wait_drained, wait_until, write_config)
from faults import check_accounting, result_line, start_load, up_metric, wait_acked, wait_ring

HEAD_RE = re.compile(rb"^(POST /v1/(traces|logs|metrics)|GET /[^ ]*) HTTP/1\.1\r\n")


class EarlyProxy:
    """Listens on 127.0.0.1; in front of the sink at upstream_port. While hostile, answers every POST with
    `answer` right after its head and never reads that connection again (kept open until stop); afterwards
    forwards each whole request to the sink and relays the answer. GETs (health checks) are always relayed."""

    def __init__(self, upstream_port, status):
        self.upstream_port = upstream_port
        self.answer = ("HTTP/1.1 %d Early\r\nContent-Length: 0\r\nConnection: keep-alive\r\n%s\r\n"
                       % (status, "Retry-After: 0\r\n" if status == 429 else "")).encode()
        self.hostile = True
        self.early = 0
        self.relayed = 0
        self.bad_heads = []
        self.held = []
        self.lock = threading.Lock()
        self.ls = socket.socket()
        self.ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.ls.bind(("127.0.0.1", 0))
        self.ls.listen(128)
        self.port = self.ls.getsockname()[1]
        self.endpoint = "http://127.0.0.1:%d" % self.port
        self.stopping = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.stopping:
            try:
                c, _ = self.ls.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c):
        c.settimeout(30)
        buf = b""
        up = None
        try:
            while not self.stopping:
                while b"\r\n\r\n" not in buf:
                    d = c.recv(65536)
                    if not d:
                        return
                    buf += d
                    if len(buf) > 65536 and b"\r\n\r\n" not in buf:
                        break
                end = buf.find(b"\r\n\r\n")
                head, buf = buf[:end + 4], buf[end + 4:]
                if end < 0 or not HEAD_RE.match(head):
                    with self.lock:
                        self.bad_heads.append(head[:80])
                    return
                m = re.search(rb"\r\ncontent-length: *(\d+)", head, re.I)
                length = int(m.group(1)) if m else 0
                if head.startswith(b"POST") and self.hostile:
                    c.sendall(self.answer)
                    with self.lock:
                        self.early += 1
                        self.held.append(c)  # never read again: the rest of the body stays unsent
                    c = None
                    return
                while len(buf) < length:
                    d = c.recv(1 << 20)
                    if not d:
                        return
                    buf += d
                body, buf = buf[:length], buf[length:]
                if up is None:
                    up = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=30)
                up.sendall(head + body)
                resp = b""
                while b"\r\n\r\n" not in resp:
                    d = up.recv(65536)
                    if not d:
                        return
                    resp += d
                rend = resp.find(b"\r\n\r\n") + 4
                m = re.search(rb"\r\ncontent-length: *(\d+)", resp[:rend], re.I)
                rlen = int(m.group(1)) if m else 0
                while len(resp) < rend + rlen:
                    d = up.recv(65536)
                    if not d:
                        return
                    resp += d
                c.sendall(resp[:rend + rlen])
                with self.lock:
                    self.relayed += 1
        except OSError:
            pass
        finally:
            if up is not None:
                up.close()
            if c is not None:
                c.close()

    def stop(self):
        self.stopping = True
        self.ls.close()
        with self.lock:
            for c in self.held:
                c.close()
            self.held = []


def early_answer_scenario(status):
    name = "early%d" % status
    pool = Pool(name)
    proxy = EarlyProxy(pool.sinks[0].port, status)
    endpoints = [proxy.endpoint] + pool.endpoints[1:]
    # sinks decoding multi-MB requests are slow to answer a health check: give checks time
    config = resilient_config(endpoints, request_timeout="10s").replace(
        "interval: 200ms, timeout: 200ms", "interval: 3s, timeout: 3s")
    g = Gateway(config.replace("max_bytes: 64MiB", "max_bytes: 256MiB"), name=name + ".yaml")
    try:
        wait_ring(g, 3)
        # ~4 MB requests of 40 traces: each backend's part is more than a socket buffer takes at once
        acked = fresh(os.path.join(TMP, name + ".acked.txt"))
        load = BackgroundLoad("http://127.0.0.1:%d" % g.port, "--rate", "3", "--spans", "40000", "--traces", "40",
                              "--connections", "3", "--duration", "240s", "--timeout", "30s", "--trace-file", acked,
                              "--seed", str(status))
        # hostile until it has answered 12 parts early (503: 6, as a passive ejection after 3 keeps it out of
        # the ring until its health checks pass again), then polite
        want = 6 if status == 503 else 12
        early = wait_until(lambda: proxy.early, lambda v: v >= want, 2 * WAIT, "parts the proxy answered early")
        proxy.hostile = False
        wait_acked(g, 10, timeout=2 * WAIT, what="trace requests acknowledged once the proxy is polite")
        res = load.stop()
        print("    early answers=%d, relayed afterwards=%d; load: %s" % (early, proxy.relayed, result_line(res)))
        assert g.p.poll() is None, "the gateway died"
        wait_drained(g, timeout=2 * WAIT)
        assert not proxy.bad_heads, ("a backend got a corrupted request", proxy.bad_heads[:3])
        if status == 413:
            rejected = g.metric('otlp_gateway_dropped_items_total{signal="traces",reason="rejected"}')
            print("    spans dropped as rejected by the backend: %d" % rejected)
            assert rejected > 0, "413 parts were not counted as rejected"
        else:
            check_accounting(name, [acked], pool.files, [res])
    finally:
        proxy.stop()


def test_early_503_multi_mb_parts():
    early_answer_scenario(503)


def test_early_429_multi_mb_parts():
    early_answer_scenario(429)


def test_early_413_multi_mb_parts():
    early_answer_scenario(413)


def refusal_scenario(status):
    name = "refuse%d" % status
    pool = Pool(name)
    victim = pool.sinks[0]
    victim.control(status=status)
    g = Gateway(resilient_config(pool.endpoints), name=name + ".yaml")
    wait_ring(g, 3)
    load = start_load(g, name, requests=1500)
    g.wait_metric(up_metric(victim.endpoint), lambda v: v == 0, what="the refusing backend ejected")
    res = load.result()
    print("    load: " + result_line(res))
    assert res["ok"] == res["requests"], ("clients were refused", res)
    wait_drained(g)
    refused = g.metric('otlp_gateway_backend_requests_total{backend="%s",outcome="refused"}' % victim.endpoint)
    rejected = g.metric('otlp_gateway_dropped_items_total{signal="traces",reason="rejected"}')
    print("    refused requests counted: %d, spans dropped as rejected: %d" % (refused, rejected))
    assert refused >= 3, refused
    assert rejected == 0, "refused parts were dropped as if the data were bad"
    g.wait_line(r'msg="backend refuses the gateway" backend=%s status=%d' % (re.escape(victim.endpoint), status))
    g.wait_line(r'msg="backend down" backend=%s reason="passive ejection: the backend refuses the gateway"'
                % re.escape(victim.endpoint))
    assert len(read_traces(pool.files[0])) == 0, "the refusing sink recorded traces"
    a = check_accounting(name, [load.acked_file], pool.files, [res])
    assert a["delivered_spans"] >= a["acked_spans"]


def test_refusal_401_is_rerouted():
    refusal_scenario(401)


def test_refusal_404_is_rerouted():
    refusal_scenario(404)


def test_renewed_credential_by_sighup_delivers_what_was_refused():
    """The only backend wants a header the gateway does not send (an expired token): its answers are 401, the
    parts stay queued (their clients got 200), the backend is ejected (later clients get 503: no backend). A
    SIGHUP with the header renews the credential of the existing backend: everything acknowledged arrives."""
    name = "renew"
    files = [fresh(os.path.join(TMP, "renew.sink.txt"))]
    sink = Sink("--trace-file", files[0], "--require-header", "Authorization: Basic new-token")
    base = resilient_config([sink.endpoint])
    g = Gateway(base, name=name + ".yaml")
    rc = None
    try:
        wait_ring(g, 1)
        load = start_load(g, name, rate=100, requests=100)
        res = load.result()
        # acknowledged until it was ejected; then, with no backend left in the ring, 503 "no backends available"
        assert res["ok"] > 0 and res["ok"] + res.get("status_503", 0) == res["requests"], res
        g.wait_metric(up_metric(sink.endpoint), lambda v: v == 0, timeout=10, what="the refusing backend ejected")
        assert g.metric_sum("otlp_gateway_backend_queue_bytes") > 0, "nothing was kept for the refusing backend"
        assert len(read_traces(files[0])) == 0
        write_config(base + '  headers:\n    Authorization: "Basic new-token"\n', name + ".yaml")
        g.signal(signal.SIGHUP)
        g.wait_line(r'msg="config reloaded"')
        wait_drained(g, timeout=60)
        check_accounting(name, [load.acked_file], files, [res])
    finally:
        rc = g.stop()
        sink.stop()
    assert rc == 0, "gateway exit code %s (a sanitizer report?)" % rc


if __name__ == "__main__":
    run_tests(globals())
