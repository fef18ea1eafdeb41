#!/usr/bin/env python3
"""Writes seeds for fuzz_spool into tests/fuzz/corpus/spool (named seeds, kept as they are by scripts/fuzz.sh
--merge): segments in gateway/spool.h's record format (magic "OTLS" | length u32 | CRC32C u32 of type..payload |
type u8 | payload, little-endian): DATA records (signal u8 | items u64 | bytes) and RETIRE records (segment u64 |
offset u32), a segment cut mid-record (torn tail), one with a flipped payload byte (CRC mismatch), garbage
between records, and a length field past the end.
Usage: python3 tests/fuzz/make_spool_seeds.py"""
import os
import struct

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus", "spool")


def _table():
    t = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        t.append(c)
    return t


TABLE = _table()


def crc32c(data, crc=0):
    crc ^= 0xFFFFFFFF
    for b in data:
        crc = (crc >> 8) ^ TABLE[(crc ^ b) & 0xFF]
    return crc ^ 0xFFFFFFFF


assert crc32c(b"123456789") == 0xE3069283


def record(rtype, payload):
    body = bytes([rtype]) + payload
    return b"OTLS" + struct.pack("<II", len(payload), crc32c(body)) + body


def data(signal, items, part):
    return record(1, bytes([signal]) + struct.pack("<Q", items) + part)


def retire(seg, offset):
    return record(2, struct.pack("<QI", seg, offset))


def main():
    os.makedirs(OUT, exist_ok=True)
    recs = [data(0, 3, b"\x0a\x10" + b"span" * 8), data(1, 1, b"log record"), data(2, 7, bytes(range(200)))]
    valid = b"".join(recs)
    valid_retire = valid + retire(1, 0) + retire(1 << 48 | 2, len(recs[0]))
    flipped = bytearray(valid)
    flipped[len(recs[0]) + 20] ^= 0x40
    bad_len = bytearray(valid)
    struct.pack_into("<I", bad_len, len(recs[0]) + 4, 0xFFFFFF00)
    seeds = {
        "valid_three": valid,
        "valid_with_retire": valid_retire,
        "torn_tail": valid[: len(valid) - 50],
        "torn_header": valid + b"OTLS\x05",
        "flipped_byte": bytes(flipped),
        "garbage_between": recs[0] + b"\x00garbage OTL" + recs[1] + b"\xff" * 7 + recs[2],
        "length_past_end": bytes(bad_len),
        "empty_payload": data(0, 0, b"") + record(1, b"") + record(9, b"?"),
    }
    for name, blob in seeds.items():
        with open(os.path.join(OUT, name), "wb") as f:
            f.write(blob)
    print(f"wrote {len(seeds)} seeds to {OUT}")


if __name__ == "__main__":
    main()
