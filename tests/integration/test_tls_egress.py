"""Egress TLS and path prefixes, against real otlp-sink processes speaking TLS (--tls CERT,KEY) behind the real
gateway, with certificates made at test time by the openssl CLI (certs.py): https:// backends under a /otlp
prefix that demand the Authorization header the gateway injects (backends.headers) get every span once and no
request outside the prefix; a backend whose certificate does not verify (another CA, expired, the wrong name)
is marked down with one log line naming the verify error, gets nothing, and its data goes to the good backend;
a TLS backend that resets mid-handshake is a transport failure the gateway re-routes around; DNS discovery with
backends.dns.scheme https verifies the discovered addresses against backends.dns.hostname. Every gateway is
stopped with SIGTERM and must exit 0."""
import os
import re
import signal
import socket
import threading
import time

import certs
from harness import (TMP, Gateway, Sink, fresh, http_request, read_traces, run_tests, skip, wait_until,
                     write_config)
from scenario import PB, backend_series, spans_request, stop_ok, trace_id, value

CERTS = os.path.join(TMP, "certs")
AUTH = "Basic b3RscDpzM2NyZXQ="  # what backends.headers injects and the sinks demand
HEALTH = '{enabled: true, path: "/", interval: 500ms, timeout: 500ms, rise: 1, fall: 2, eject_after_failures: 3}'
_made = {}


def pki():
    """The test PKI, made once per script: a CA the gateway trusts, certificates it signed (good for 127.0.0.1
    and localhost, expired, for another name, for the DNS name), and a rogue CA with a certificate of its own."""
    if not _made:
        ca = certs.make_ca(CERTS, "egress-ca")
        rogue_ca = certs.make_ca(CERTS, "rogue-ca")
        _made.update(
            ca=ca,
            good=certs.make_cert(CERTS, ca, "good", ["127.0.0.1", "localhost"]),
            rogue=certs.make_cert(CERTS, rogue_ca, "rogue", ["127.0.0.1", "localhost"]),
            expired=certs.make_cert(CERTS, ca, "expired", ["127.0.0.1", "localhost"], expired=True),
            other_name=certs.make_cert(CERTS, ca, "other-name", ["other.example"]),
            dns_name=certs.make_cert(CERTS, ca, "dns-name", ["collectors.test"]),
        )
    return _made


class TlsSink(Sink):
    """An otlp-sink over TLS with pair, OTLP under --prefix (None: none), demanding AUTH, recording its traces."""

    def __init__(self, name, pair, prefix="/otlp", listen="127.0.0.1:0", client_ca=None):
        self.trace_path = fresh(os.path.join(TMP, name + ".traces.txt"))
        super().__init__("--trace-file", self.trace_path, *(["--prefix", prefix] if prefix else []),
                         "--require-header", "Authorization: " + AUTH, listen=listen, tls=(pair.cert, pair.key),
                         client_ca=client_ca)

    def traces(self):
        return read_traces(self.trace_path)


def config(endpoints, extra_tls="", dns=None, health=HEALTH, ca=None):
    lines = ['server:', '  listen: "127.0.0.1:0"', '  workers: 1', '  shutdown_timeout: 10s',
             'telemetry:', '  listen: "127.0.0.1:0"', 'backends:']
    if endpoints:
        lines.append('  static:')
        lines += ['    - {endpoint: "%s"}' % e for e in endpoints]
    if dns:
        lines.append('  dns: {hostname: "%s", port: %d, interval: 200ms, servers: ["%s"], scheme: https}'
                     % (dns["hostname"], dns["port"], dns["server"]))
    lines += ['  headers:', '    Authorization: "%s"' % AUTH,
              '  tls:', '    ca_file: "%s"' % (ca or pki()["ca"].cert)]
    lines += ['    ' + ln for ln in extra_tls.splitlines() if ln.strip()]
    lines += ['  request_timeout: 2s', '  health_check: ' + health,
              '  retry: {initial_interval: 50ms, max_interval: 500ms, max_elapsed: 60s}',
              '  queue: {max_bytes: 64MiB}']
    return "\n".join(lines) + "\n"


def send_traces(g, seed, n, per_request=20):
    """n traces of 2 spans each, per_request traces a request; returns the trace ids."""
    ids = [trace_id(seed, k) for k in range(n)]
    for i in range(0, n, per_request):
        st, _, body = http_request(g.port, "POST", "/v1/traces", spans_request(ids[i:i + per_request], 2), PB)
        assert st == 200, (st, body)
    return ids


def wait_once(sinks, ids, timeout=30):
    """Waits (bounded) until every trace arrived with its 2 spans; then asserts each is whole at one sink, once."""
    def got():
        have = {}
        for s in sinks:
            for t, n in s.traces().items():
                have.setdefault(t, []).append(n)
        return have
    want = {t.hex() for t in ids}
    have = wait_until(got, lambda h: want <= {t for t, ns in h.items() if sum(ns) >= 2}, timeout,
                      "every trace's 2 spans at the sinks")
    time.sleep(0.3)  # not a timing assertion: late duplicates, if any, get a moment to show up below
    have = got()
    bad = [(t, have.get(t)) for t in sorted(want) if have.get(t) != [2]]
    assert not bad, "traces not delivered exactly once, whole, at one sink: %s" % bad[:5]


def tls_lines(g, endpoint):
    rx = re.compile(r'msg="backend TLS handshake failed" backend=%s ' % re.escape(endpoint))
    return [ln for ln in list(g.err) if rx.search(ln)]


def backend_failures(g, reason):
    return value(g, 'otlp_gateway_tls_handshake_failures_total{side="backend",reason="%s"}' % reason)


# ---- the happy path -------------------------------------------------------------------------------------

def test_https_backends_under_a_prefix_with_the_injected_header():
    """Two https:// backends under /otlp that demand Authorization: every span once, traces whole, 0 requests
    without the header, 0 outside the prefix, no handshake failure; the health checks pass over TLS."""
    p = pki()
    sinks = [TlsSink("egress.ok.%d" % i, p["good"]) for i in range(2)]
    eps = ["%s/otlp" % s.endpoint for s in sinks]
    g = Gateway(config(eps), name="egress-ok.yaml")
    try:
        ids = send_traces(g, 1400, 200)
        wait_once(sinks, ids)
        for s, ep in zip(sinks, eps):
            st = s.stats()
            assert st["traces"]["requests"] > 0, ("every backend gets some traces", ep, st["traces"])
            assert st["unauthorized"] == 0 and st["unknown_paths"] == 0, st
            assert st["tls_handshake_failures"] == 0, st
            assert value(g, backend_series("backend_up", ep)) == 1
        assert sum(s.stats()["traces"]["items"] for s in sinks) == 400
        assert g.metric_sum("otlp_gateway_tls_handshake_failures_total") == 0
        assert not [ln for ln in g.err if "TLS handshake failed" in ln], g.err[-5:]
        print("    spans per sink: %s" % [s.stats()["traces"]["items"] for s in sinks])
    finally:
        stop_ok(g)
        for s in sinks:
            s.stop()


# ---- client certificates and insecure_skip_verify ------------------------------------------------------------

def test_backend_that_requires_a_client_certificate():
    """A backend that demands a client certificate (mTLS): without backends.tls.cert_file the handshake fails and
    the backend is marked down (nothing delivered there, the other backend takes its traces); with the gateway's
    client certificate (signed by the CA the backend trusts) every span arrives."""
    p = pki()
    client = certs.make_cert(CERTS, p["ca"], "gw-client", ["gateway.test"], client=True)
    mtls = TlsSink("egress.mtls", p["good"], client_ca=p["ca"].cert)
    plain = TlsSink("egress.mtls.other", p["good"])
    ep_m, ep_o = "%s/otlp" % mtls.endpoint, "%s/otlp" % plain.endpoint
    g = Gateway(config([ep_m, ep_o]), name="egress-mtls-none.yaml")
    try:
        g.wait_metric(backend_series("backend_up", ep_m), lambda v: v == 0)
        ids = send_traces(g, 1500, 40)
        wait_once([plain], ids)
        assert mtls.stats()["traces"]["requests"] == 0
        assert mtls.stats()["tls_handshake_failures"] > 0
        assert tls_lines(g, ep_m), "no 'backend TLS handshake failed' line for %s: %s" % (
            ep_m, [ln for ln in g.err if ep_m in ln][-6:])
    finally:
        stop_ok(g)
    extra = 'cert_file: "%s"\nkey_file: "%s"' % (client.cert, client.key)
    g = Gateway(config([ep_m], extra_tls=extra), name="egress-mtls.yaml")
    try:
        g.wait_metric(backend_series("backend_up", ep_m), lambda v: v == 1)
        ids = send_traces(g, 1600, 40)
        wait_once([mtls], ids)
    finally:
        stop_ok(g)
        mtls.stop()
        plain.stop()


def test_insecure_skip_verify_sends_to_an_unverified_backend_with_a_warning():
    """backends.tls.insecure_skip_verify: a backend whose certificate the gateway cannot verify (another CA) is
    used all the same, and the start logs one warning saying verification is off."""
    p = pki()
    rogue = TlsSink("egress.insecure", p["rogue"])
    ep = "%s/otlp" % rogue.endpoint
    g = Gateway(config([ep], extra_tls="insecure_skip_verify: true"), name="egress-insecure.yaml")
    try:
        g.wait_line(r"level=warn .*insecure_skip_verify")
        g.wait_metric(backend_series("backend_up", ep), lambda v: v == 1)
        ids = send_traces(g, 1700, 40)
        wait_once([rogue], ids)
        assert backend_failures(g, "certificate") == 0
    finally:
        stop_ok(g)
        rogue.stop()


# ---- certificates that do not verify --------------------------------------------------------------------

def check_bad_backend(name, pair, host, want_error):
    """A good backend and one whose certificate does not verify (want_error: the verify reason): the bad one
    goes down with one line naming the reason and gets nothing; the data all goes to the good one, once; the
    gateway stays up (ready) and exits 0."""
    p = pki()
    good = TlsSink(name + ".good", p["good"])
    bad = TlsSink(name + ".bad", pair)
    good_ep = "%s/otlp" % good.endpoint
    bad_ep = "https://%s:%d/otlp" % (host, bad.port)
    g = Gateway(config([good_ep, bad_ep]), name=name + ".yaml")
    t0 = time.monotonic()
    try:
        # Both are in the ring from the start: what is sent now partly meets the bad one's failing handshakes
        # and must be re-routed; what is sent once it is down goes to the good one directly.
        ids = send_traces(g, 1500 + len(name), 100)
        g.wait_metric(backend_series("backend_up", bad_ep), lambda v: v == 0, what="the bad backend down")
        line = g.wait_line(r'msg="backend TLS handshake failed" backend=%s ' % re.escape(bad_ep))
        assert 'reason=certificate' in line.string and want_error in line.string, line.string
        ids += send_traces(g, 1550 + len(name), 100)
        wait_once([good, bad], ids)
        st = bad.stats()
        assert st["traces"]["requests"] == 0 and st["unauthorized"] == 0 and st["unknown_paths"] == 0, st
        assert st["gets"] == {} and st["gets_other"] == 0, ("not even a health check got through", st)
        assert st["tls_handshake_failures"] >= 1, st  # the sink saw the gateway's alert
        assert value(g, backend_series("backend_up", good_ep)) == 1
        assert http_request(g.telemetry_port, "GET", "/readyz")[0] == 200
        assert backend_failures(g, "certificate") >= 1
        n = len(tls_lines(g, bad_ep))
        bound = 1 + int((time.monotonic() - t0) / 10)  # one line per backend per 10 s while it keeps failing
        assert 1 <= n <= bound, (n, bound, tls_lines(g, bad_ep))
        assert not [ln for ln in g.err if "backend request failed" in ln and bad_ep in ln], "a second kind of line"
        print("    %s: %s" % (name, re.search(r'error="[^"]*"', line.string).group(0)))
    finally:
        stop_ok(g)
        good.stop()
        bad.stop()


def test_unknown_ca_marks_the_backend_down():
    check_bad_backend("egress.rogue", pki()["rogue"], "127.0.0.1",
                      "certificate verify failed: unable to get local issuer certificate")


def test_expired_certificate_marks_the_backend_down():
    check_bad_backend("egress.expired", pki()["expired"], "127.0.0.1",
                      "certificate verify failed: certificate has expired")


def test_server_name_mismatch_marks_the_backend_down():
    check_bad_backend("egress.name", pki()["other_name"], "localhost",
                      "certificate verify failed: hostname mismatch")


def test_reload_with_the_right_ca_brings_the_backend_back():
    """A backend down for an unknown CA (backends.tls.ca_file names the wrong one) comes back after a SIGHUP
    with the right ca_file: the reload's context reaches its checks and its new connections."""
    p = pki()
    good = TlsSink("egress.reload.good", p["good"])
    other = TlsSink("egress.reload.other", p["good"])
    eps = ["%s/otlp" % s.endpoint for s in (good, other)]
    g = Gateway(config(eps, ca=certs.make_ca(CERTS, "unrelated-ca").cert), name="egress-reload.yaml")
    try:
        for ep in eps:
            g.wait_metric(backend_series("backend_up", ep), lambda v: v == 0, what="down: the CA is wrong")
        write_config(config(eps), "egress-reload.yaml")
        g.wait_line(r"msg=started ")
        g.signal(signal.SIGHUP)
        g.wait_line(r'msg="config reloaded"')
        for ep in eps:
            g.wait_metric(backend_series("backend_up", ep), lambda v: v == 1, what="up after the reload")
        ids = send_traces(g, 1650, 100)
        wait_once([good, other], ids)
        assert all(s.stats()["traces"]["requests"] > 0 for s in (good, other))
    finally:
        stop_ok(g)
        good.stop()
        other.stop()


def test_server_name_setting_fixes_the_mismatch():
    """backends.tls.server_name: the name verified (and sent as SNI) instead of the endpoint's host."""
    sink = TlsSink("egress.sni", pki()["other_name"])
    ep = "%s/otlp" % sink.endpoint
    g = Gateway(config([ep], extra_tls='server_name: "other.example"'), name="egress-sni.yaml")
    try:
        ids = send_traces(g, 1600, 40)
        wait_once([sink], ids)
        assert g.metric_sum("otlp_gateway_tls_handshake_failures_total") == 0
    finally:
        stop_ok(g)
        sink.stop()


# ---- a backend that resets mid-handshake ----------------------------------------------------------------

class ResettingServer:
    """Accepts, reads a few bytes of the ClientHello, and resets the connection (SO_LINGER 0)."""

    def __init__(self):
        self.s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.s.bind(("127.0.0.1", 0))
        self.s.listen(64)
        self.s.settimeout(0.2)
        self.port = self.s.getsockname()[1]
        self.accepted = 0
        self.stopping = False
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()

    def _run(self):
        while not self.stopping:
            try:
                c, _ = self.s.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            self.accepted += 1
            try:
                c.settimeout(2)
                c.recv(5)
                c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            except OSError:
                pass
            c.close()

    def stop(self):
        self.stopping = True
        self.t.join(timeout=5)
        self.s.close()


def test_backend_resetting_mid_handshake_is_routed_around():
    """A TLS backend that resets during the handshake: counted as reason="reset", taken down by its failing
    checks and sends, and the data goes to the good backend once; the gateway stays up."""
    good = TlsSink("egress.reset.good", pki()["good"])
    rs = ResettingServer()
    good_ep, bad_ep = "%s/otlp" % good.endpoint, "https://127.0.0.1:%d/otlp" % rs.port
    g = Gateway(config([good_ep, bad_ep]), name="egress-reset.yaml")
    try:
        g.wait_metric(backend_series("backend_up", bad_ep), lambda v: v == 0, what="the resetting backend down")
        wait_until(lambda: backend_failures(g, "reset"), lambda v: v >= 1, 30, "reset handshake failures")
        ids = send_traces(g, 1700, 100)
        wait_once([good], ids)
        assert rs.accepted >= 1
        assert value(g, backend_series("backend_up", good_ep)) == 1
        assert http_request(g.telemetry_port, "GET", "/readyz")[0] == 200
        assert backend_failures(g, "certificate") == 0
    finally:
        stop_ok(g)
        good.stop()
        rs.stop()


# ---- DNS discovery over https ---------------------------------------------------------------------------

def test_dns_scheme_https_verifies_the_discovered_name():
    """backends.dns.scheme https: the address collectors.test resolves to is reached over TLS, its certificate
    verified against collectors.test (not the IP), and gets the data (no prefix for DNS backends)."""
    from dnsmasq import DNSMASQ, Dnsmasq, write_hosts
    if not os.path.exists(DNSMASQ):
        skip(DNSMASQ + " missing (Debian package dnsmasq-base)")
    hosts = os.path.join(TMP, "egress-dns.hosts")
    write_hosts(hosts, ["127.0.0.1"], "collectors.test")
    dns = Dnsmasq(hosts)
    sink = TlsSink("egress.dns", pki()["dns_name"], prefix=None)
    ep = "https://127.0.0.1:%d" % sink.port
    g = Gateway(config([], dns={"hostname": "collectors.test", "port": sink.port,
                                "server": "127.0.0.1:%d" % dns.port}), name="egress-dns.yaml")
    try:
        g.wait_metric(backend_series("backend_up", ep), lambda v: v == 1, what="the DNS backend, up")
        ids = send_traces(g, 1800, 40)
        wait_once([sink], ids)
        assert g.metric_sum("otlp_gateway_tls_handshake_failures_total") == 0
    finally:
        stop_ok(g)
        sink.stop()
        dns.stop()


if __name__ == "__main__":
    run_tests(globals())
