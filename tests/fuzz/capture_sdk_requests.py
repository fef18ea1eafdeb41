#!/usr/bin/env python3
"""Captures the OpenTelemetry JavaScript SDK's own OTLP/HTTP requests, byte for byte, as seeds for fuzz_http.

Runs tests/interop/app.js (the real SDK, pinned in tests/interop/package-lock.json; `npm ci` there first) against
a tiny capturing server on 127.0.0.1 that records each request exactly as it came off the socket (request line,
headers, body in its own framing: Content-Length, or chunked when the SDK streams gzip) and answers 200 with an
empty Export*ServiceResponse. Writes, into tests/fuzz/corpus/http (or the folder given):
  sdk_<mode>[_gzip]         the first request of the mode's signal, as one connection's byte stream
  sdk_<mode>[_gzip]_twice   the first two requests of one keep-alive connection, back to back (pipelined)
for the modes traces_proto, traces_json (OTLP/JSON), logs and metrics (protobuf), uncompressed and gzip (this SDK
sends every body chunked). Around the SDK's trace bodies it also writes what other clients send: an h2c upgrade
(curl --http2), a gRPC client's HTTP/2 preface, gzip with a Content-Length, Expect: 100-continue with OTLP/JSON
then a chunked request with an extension and a trailer; and the SDK's OTLP/JSON body into ../json/sdk_traces.json.

usage: python3 tests/fuzz/capture_sdk_requests.py [OUT_DIR]   (default tests/fuzz/corpus/http)
"""
import gzip
import os
import socket
import struct
import subprocess
import sys
import threading

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
APP = os.path.join(ROOT, "tests", "interop", "app.js")
MAX_SEED = 32 * 1024  # fuzz_http takes bodies up to 64 KiB; seeds stay small


def read_request(f):
    """One raw request from the buffered socket file f (bytes), or None at EOF."""
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        line = f.readline()
        if not line:
            return None
        head += line
    fields = {}
    for line in head.split(b"\r\n")[1:]:
        if b":" in line:
            k, v = line.split(b":", 1)
            fields[k.strip().lower()] = v.strip()
    raw = head
    if fields.get(b"transfer-encoding", b"").lower() == b"chunked":
        while True:
            size_line = f.readline()
            raw += size_line
            size = int(size_line.split(b";")[0].strip(), 16)
            if size == 0:
                while True:  # trailers, up to the blank line
                    t = f.readline()
                    raw += t
                    if t in (b"\r\n", b""):
                        break
                break
            raw += f.read(size + 2)
    else:
        raw += f.read(int(fields.get(b"content-length", b"0")))
    return raw


class Capture:
    """Accepts connections and keeps, per connection, the list of raw requests it carried."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.conns = []
        self.lock = threading.Lock()
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self.serve, args=(c,), daemon=True).start()

    def serve(self, c):
        reqs = []
        with self.lock:
            self.conns.append(reqs)
        f = c.makefile("rb")
        while True:
            raw = read_request(f)
            if raw is None:
                break
            reqs.append(raw)
            json = b"application/json" in raw.split(b"\r\n\r\n", 1)[0].lower()
            body = b"{}" if json else b""
            ctype = b"application/json" if json else b"application/x-protobuf"
            c.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: %s\r\nContent-Length: %d\r\n\r\n%s" % (ctype, len(body), body))
        c.close()


def run_app(mode, compression, port):
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env.update({
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:%d" % port,
        "OTEL_EXPORTER_OTLP_COMPRESSION": compression,
        "OTEL_EXPORTER_OTLP_TIMEOUT": "10000",
        "OTEL_SERVICE_NAME": "fuzz-seed",
        "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=test,service.version=1.0.0",
        "OTEL_BSP_SCHEDULE_DELAY": "100", "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "8",
        "OTEL_BLRP_SCHEDULE_DELAY": "100", "OTEL_BLRP_MAX_EXPORT_BATCH_SIZE": "8",
        "OTEL_METRIC_EXPORT_INTERVAL": "300", "OTEL_METRIC_EXPORT_TIMEOUT": "1000",
    })
    r = subprocess.run(["node", APP, mode, "--traces", "3", "--intervals", "2"], env=env, capture_output=True,
                       timeout=120, cwd=os.path.dirname(APP))
    if r.returncode != 0:
        sys.exit("app.js %s (%s) failed: %s" % (mode, compression, r.stderr.decode(errors="replace")[-2000:]))


def dechunk(raw):
    """The body of a captured chunked request."""
    rest = raw.split(b"\r\n\r\n", 1)[1]
    body = b""
    while True:
        line, rest = rest.split(b"\r\n", 1)
        n = int(line.split(b";")[0], 16)
        if n == 0:
            return body
        body, rest = body + rest[:n], rest[n + 2:]


def frame(ftype, flags, stream, payload):
    """One HTTP/2 frame."""
    return struct.pack(">I", len(payload))[1:] + bytes([ftype, flags]) + struct.pack(">I", stream) + payload


def derived_seeds(out):
    """Requests other clients send, around the SDK's own bodies: (name, bytes)."""
    with open(os.path.join(out, "sdk_traces_proto"), "rb") as f:
        pb = dechunk(f.read())
    with open(os.path.join(out, "sdk_traces_json"), "rb") as f:
        js = dechunk(f.read())
    host = b"Host: 127.0.0.1:4318\r\n"
    gz = gzip.compress(pb, mtime=0)
    half = len(pb) // 2
    settings = frame(4, 0, 0, struct.pack(">HIHIHI", 2, 0, 4, 4194304, 6, 16384))  # as grpc-go sends them
    return [
        # curl --http2 on http:// (an h2c upgrade) posting the SDK's protobuf body, then a request behind it
        ("h2c_upgrade_post", b"POST /v1/traces HTTP/1.1\r\n" + host + b"User-Agent: curl/7.88.1\r\nAccept: */*\r\n"
         b"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n"
         b"Content-Type: application/x-protobuf\r\nContent-Length: %d\r\n\r\n" % len(pb) + pb +
         b"GET /v1/traces HTTP/1.1\r\n" + host + b"\r\n"),
        # a gRPC client with prior knowledge: preface, SETTINGS, WINDOW_UPDATE, SETTINGS ack
        ("h2_preface_grpc", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + settings +
         frame(8, 0, 0, struct.pack(">I", 4128769)) + frame(4, 1, 0, b"")),
        # the protobuf body gzipped, with a Content-Length (curl --data-binary @x.gz -H 'Content-Encoding: gzip')
        ("gzip_content_length_sdk_body", b"POST /v1/traces HTTP/1.1\r\n" + host +
         b"Content-Type: application/x-protobuf\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n" % len(gz)
         + gz),
        # OTLP/JSON with Expect: 100-continue, then the protobuf body chunked with an extension and a trailer
        ("expect_json_then_chunked_trailer", b"POST /v1/traces HTTP/1.1\r\n" + host +
         b"Content-Type: application/json\r\nExpect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(js) + js +
         b"POST /v1/traces HTTP/1.1\r\n" + host +
         b"Content-Type: application/x-protobuf\r\nTransfer-Encoding: chunked\r\n\r\n" +
         b"%x;ext=1\r\n" % half + pb[:half] + b"\r\n" + b"%x\r\n" % (len(pb) - half) + pb[half:] +
         b"\r\n0\r\nX-Trailer: t\r\n\r\n"),
    ], js


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(HERE, "corpus", "http")
    os.makedirs(out, exist_ok=True)
    written = 0
    for mode in ("traces-proto", "traces-json", "logs", "metrics"):
        for compression in ("none", "gzip"):
            cap = Capture()
            run_app(mode, compression, cap.port)
            cap.sock.close()
            kept = set()
            with cap.lock:
                conns = [list(c) for c in cap.conns]
            for reqs in conns:
                for i, raw in enumerate(reqs):
                    if raw.split(b" ", 2)[1].decode() != "/v1/" + mode.split("-")[0]:
                        continue  # logs mode also sends traces: those come from the traces modes
                    base = "sdk_%s%s" % (mode.replace("-", "_"), "_gzip" if compression == "gzip" else "")
                    seeds = [(base, raw)]
                    if i + 1 < len(reqs):
                        seeds.append((base + "_twice", raw + reqs[i + 1]))
                    for name, data in seeds:
                        if name in kept or len(data) > MAX_SEED:
                            continue
                        kept.add(name)
                        with open(os.path.join(out, name), "wb") as f:
                            f.write(data)
                        written += 1
                        print("%-44s %6d bytes  %s" % (name, len(data), data.split(b"\r\n", 1)[0].decode()))
    if not written:
        sys.exit("no request captured")
    derived, js = derived_seeds(out)
    for name, data in derived:
        with open(os.path.join(out, name), "wb") as f:
            f.write(data)
        print("%-44s %6d bytes  %s" % (name, len(data), data.split(b"\r\n", 1)[0].decode()))
    json_dir = os.path.join(os.path.dirname(out), "json")  # the SDK's OTLP/JSON body seeds fuzz_json too
    if os.path.isdir(json_dir):
        with open(os.path.join(json_dir, "sdk_traces.json"), "wb") as f:
            f.write(js)
        print("%-44s %6d bytes" % (os.path.join("..", "json", "sdk_traces.json"), len(js)))


if __name__ == "__main__":
    main()
