#!/usr/bin/env python3
"""Writes hand-made HTTP/2 + gRPC seeds for fuzz_grpc into tests/fuzz/corpus/grpc (named seeds, kept as they are
by scripts/fuzz.sh --merge). Frames are built by hand: the client preface, SETTINGS, HEADERS with HPACK literal
fields (no Huffman, no indexing), DATA split across frames, RST_STREAM, PING, WINDOW_UPDATE, GOAWAY.
The sdk_js_* seeds beside them are what the OpenTelemetry JS SDK's gRPC exporters (@grpc/grpc-js;
tests/interop/app.js MODE-grpc, plain and gzip) sent to the gateway, one connection each, recorded by a TCP proxy
between the two: a real client's preface, SETTINGS, Huffman-coded HPACK and framing.
Usage: python3 tests/fuzz/make_grpc_seeds.py"""
import gzip
import os
import struct

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus", "grpc")
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, RST, SETTINGS, PING, GOAWAY, WINDOW, CONT = 0, 1, 3, 4, 6, 7, 8, 9
END_STREAM, END_HEADERS, ACK = 1, 4, 1
TRACES = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"


def frame(t, flags, sid, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([t, flags]) + struct.pack(">I", sid) + payload


def hpack_str(s):
    b = s.encode()
    assert len(b) < 127
    return bytes([len(b)]) + b


def headers_block(fields):
    return b"".join(b"\x00" + hpack_str(k) + hpack_str(v) for k, v in fields)


def call_headers(path=TRACES, extra=()):
    return headers_block([(":method", "POST"), (":scheme", "http"), (":path", path), (":authority", "gw"),
                          ("content-type", "application/grpc"), ("te", "trailers")] + list(extra))


def export_traces(n_spans=2):
    spans = b""
    for i in range(n_spans):
        tid = bytes([i + 1] * 16)
        span = b"\x0a\x10" + tid + b"\x12\x08" + bytes([i + 1] * 8) + b"\x2a\x01x"
        spans += b"\x12" + bytes([len(span)]) + span
    scope = spans
    rs = b"\x12" + bytes([len(scope)]) + scope
    return b"\x0a" + bytes([len(rs)]) + rs


def msg(body, compressed=0):
    return bytes([compressed]) + struct.pack(">I", len(body)) + body


def start():
    return PREFACE + frame(SETTINGS, 0, 0) + frame(SETTINGS, ACK, 0)


def write(name, data):
    with open(os.path.join(OUT, name), "wb") as f:
        f.write(data)


def main():
    os.makedirs(OUT, exist_ok=True)
    body = msg(export_traces())
    write("unary_one_frame", start() + frame(HEADERS, END_HEADERS, 1, call_headers()) + frame(DATA, END_STREAM, 1, body))
    split = b"".join(frame(DATA, 0, 1, body[i:i + 3]) for i in range(0, len(body), 3))
    write("unary_split_data", start() + frame(HEADERS, END_HEADERS, 1, call_headers()) + split + frame(DATA, END_STREAM, 1))
    gz = msg(gzip.compress(export_traces()), 1)
    write("unary_gzip", start() + frame(HEADERS, END_HEADERS, 1, call_headers(extra=[("grpc-encoding", "gzip")]))
          + frame(DATA, END_STREAM, 1, gz))
    write("flag_without_encoding", start() + frame(HEADERS, END_HEADERS, 1, call_headers()) + frame(DATA, END_STREAM, 1, gz))
    write("two_messages", start() + frame(HEADERS, END_HEADERS, 1, call_headers()) + frame(DATA, END_STREAM, 1, body + body))
    health = msg(b"")
    write("health_check", start() + frame(HEADERS, END_HEADERS, 1, call_headers("/grpc.health.v1.Health/Check"))
          + frame(DATA, END_STREAM, 1, health))
    write("unknown_method", start() + frame(HEADERS, END_HEADERS | END_STREAM, 1, call_headers("/x.Y/Z")))
    many = start()
    for sid in range(1, 40, 2):
        many += frame(HEADERS, END_HEADERS, sid, call_headers()) + frame(DATA, END_STREAM, sid, body)
    write("many_streams", many)
    rr = start()
    for sid in range(1, 200, 2):
        rr += frame(HEADERS, END_HEADERS, sid, call_headers()) + frame(RST, 0, sid, struct.pack(">I", 8))
    write("rapid_reset", rr)
    write("ping_flood", start() + b"".join(frame(PING, 0, 0, bytes(8)) for _ in range(300)))
    hb = call_headers()
    write("continuation", start() + frame(HEADERS, 0, 1, hb[:20]) + frame(CONT, END_HEADERS, 1, hb[20:])
          + frame(DATA, END_STREAM, 1, body))
    write("window_and_goaway", start() + frame(WINDOW, 0, 0, struct.pack(">I", 1 << 20))
          + frame(HEADERS, END_HEADERS, 1, call_headers()) + frame(DATA, 0, 1, body[:4])
          + frame(GOAWAY, 0, 0, struct.pack(">II", 0, 0)))
    write("auth_metadata", start() + frame(HEADERS, END_HEADERS, 1, call_headers(extra=[("authorization", "Bearer fuzz"),
                                                                                        ("grpc-timeout", "5S")]))
          + frame(DATA, END_STREAM, 1, body))
    write("garbage_after_preface", PREFACE + b"\xff" * 40)
    write("http1_request", b"POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")


if __name__ == "__main__":
    main()
