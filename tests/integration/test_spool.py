"""The crash-safe spool (backends.queue.directory): what the gateway acknowledged survives the gateway itself dying.

Every scenario runs the real gateway in front of three real otlp-sink processes, one of them stalled (a black hole:
GET /control?hang=1, accepts and never answers; or kill -STOP), while otlp-load sends a paced stream of traces and
records every trace it got a 2xx for (--trace-file). The stalled backend stays in the ring (health checks off,
passive ejection out of reach), so its parts wait in its retry queue, and so in the spool, instead of being
re-routed. Then the gateway is killed with SIGKILL under load, the backend restored and the gateway started again
on the same directory: the replay must deliver every acknowledged span. Each scenario prints
   scenario=<name> acknowledged=.. delivered=.. lost=.. duplicates=.. ...
(duplicates: spans of acknowledged traces delivered more than once, at-least-once; unacked: spans of traces the
client was never acknowledged, e.g. requests cut by the crash or refused with 503, whose parts reached a sink).
No trace may be split: every sink holds each acknowledged trace whole, zero or more times.

Also: replay onto a changed backend set, a segment truncated mid-record plus a flipped byte in another record
(the record layout of gateway/spool.h is parsed here to pick them), a disk that fills up (RLIMIT_FSIZE on the
gateway), and a second gateway on a directory that one already holds. Waits are on events (metrics, log lines,
sink files), each bounded; nothing asserts a speed."""
import collections
import glob
import os
import re
import resource
import shutil
import signal
import struct
import subprocess
import time

from harness import (TMP, WAIT, Gateway, Pool, Proc, Sink, args, delivery, http_request, loopback_grpc,
                     in_ci, parse_fields, read_traces, run_tests, skip, trace_request, wait_drained, wait_until, write_config)
from faults import REFUSED, result_line, start_load, wait_acked, wait_ring

PB = {"Content-Type": "application/x-protobuf"}
SPOOL_BYTES = "otlp_gateway_spool_bytes"
SPOOL_SEGMENTS = "otlp_gateway_spool_segments"
REPLAYED = "otlp_gateway_spool_replayed_items_total"
CORRUPT = "otlp_gateway_spool_corrupt_records_total"
WRITE_ERRORS = "otlp_gateway_spool_write_errors_total"
REPLAYED_LINE = r'msg="spool replayed"'


def spool_dir(name):
    """An absolute, empty directory path for a scenario's spool (created by the gateway)."""
    d = os.path.join(TMP, name + ".spool")
    shutil.rmtree(d, ignore_errors=True)
    return d


def spool_config(endpoints, directory, fsync="batch"):
    """Static backends, a spool, and a stalled backend kept in the ring: no health checks, passive ejection at its
    maximum (1000 consecutive failures, more than a scenario makes), so its parts time out (request_timeout) into
    its retry queue and wait there. max_elapsed is far beyond a scenario: nothing expires."""
    lines = ['server:', '  listen: "127.0.0.1:0"', '  workers: 1', '  shutdown_timeout: 10s',
             'telemetry:', '  listen: "127.0.0.1:0"', 'backends:', '  static:']
    lines += ['    - {endpoint: "%s"}' % e for e in endpoints]
    lines += ['  request_timeout: 500ms', '  health_check: {enabled: false, eject_after_failures: 1000}',
              '  retry: {initial_interval: 50ms, max_interval: 500ms, max_elapsed: 300s}',
              '  queue: {max_bytes: 64MiB, directory: "%s", fsync: %s}' % (directory, fsync)]
    return "\n".join(lines) + "\n"


def msum(g, name):
    return g.metric_sum(name)


def segments(directory, worker=0):
    return sorted(glob.glob(os.path.join(directory, "w%d" % worker, "seg-*.log")))


def kill9(g):
    """SIGKILL on purpose: the harness does not check this gateway's exit."""
    g.killed = True
    g.p.kill()
    g.wait()


def replayed_line(g):
    """The counts of the "spool replayed" line of a (re)started gateway, as a dict."""
    m = g.wait_line(REPLAYED_LINE + r".*")
    kv = dict((k, int(v)) for k, v in re.findall(r"\b(records|items|corrupt)=(\d+)", m.group(0)))
    assert set(kv) == {"records", "items", "corrupt"}, ("counts missing from the replay line", m.group(0))
    return kv


def wait_spool_empty(g, timeout=WAIT):
    """Queues drained and no spooled byte left for any backend."""
    wait_drained(g, timeout)
    wait_until(lambda: msum(g, SPOOL_BYTES), lambda v: v == 0, timeout, "sum of %s after the drain" % SPOOL_BYTES)


def account(name, acked, files, expect_lost=None, settle=WAIT, extra=""):
    """Acknowledged (Counter trace -> spans) against the sinks' trace files, read again (bounded) until the lost
    spans are down to what is expected (0, or the spans of expect_lost: Counter trace -> spans). Prints the
    scenario line; asserts nothing else was lost and no trace split. Returns the figures."""
    target = sum(expect_lost.values()) if expect_lost else 0
    deadline = time.time() + settle
    while True:
        per = [read_traces(f) for f in files]
        d = delivery(acked, per)
        if d["lost"] <= target or time.time() >= deadline:
            break
        time.sleep(0.1)
    delivered = collections.Counter()
    for c in per:
        delivered.update(c)
    dups = sum(max(0, delivered[t] - n) for t, n in acked.items())
    unacked = sum(n for t, n in delivered.items() if t not in acked)
    # whole: a sink holds an acknowledged trace 0, 1, 2... times over, never a piece of it
    split = [t for t, n in acked.items() if any(c.get(t, 0) % n for c in per)]
    multi = sum(1 for t in acked if sum(1 for c in per if c.get(t)) > 1)
    lost_traces = collections.Counter({t: n - delivered.get(t, 0) for t, n in acked.items()
                                       if delivered.get(t, 0) < n})
    print("    scenario=%s acknowledged=%d delivered=%d lost=%d duplicates=%d unacked=%d split=%d "
          "traces_on_two_sinks=%d per_sink=%s%s" % (name, d["acked_spans"], d["delivered_spans"], d["lost"], dups,
                                                    unacked, len(split), multi, d["per_sink"], extra), flush=True)
    assert d["acked_spans"] > 0, "nothing was acknowledged: the scenario tested nothing"
    assert not split, ("%s: %d traces split across sinks, e.g. %s" % (name, len(split), split[0]),
                       [c.get(split[0], 0) for c in per], acked[split[0]])
    if expect_lost:
        assert lost_traces == expect_lost, ("%s: lost %d spans of %d traces, expected exactly the %d spans of the %d "
                                            "traces in the corrupted records" % (
                                                name, sum(lost_traces.values()), len(lost_traces), target,
                                                len(expect_lost)),
                                            sorted(set(lost_traces) ^ set(expect_lost))[:5])
    else:
        assert d["lost"] == 0, "%s: %d acknowledged spans never reached a sink (%d traces)" % (
            name, d["lost"], len(lost_traces))
    return {"acked": d["acked_spans"], "delivered": d["delivered_spans"], "lost": d["lost"], "duplicates": dups,
            "per": per}


def stall_hang(sink):
    assert sink.control(hang=1)["hang"] == 1


def resume_hang(sink):
    sink.control(hang=0)  # the held requests are answered 503: the gateway retries them


def stall_stop(sink):
    os.kill(sink.p.pid, signal.SIGSTOP)


def resume_stop(sink):
    os.kill(sink.p.pid, signal.SIGCONT)


def crash_under_load(name, pool, g, stall, resume, more=40):
    """Load through g; once it flows to every sink, stall the last sink, wait until `more` requests were
    acknowledged while it is stalled (their parts for it spooled), SIGKILL the gateway mid-load, end the load, and
    restore the sink. Returns (acked Counter, RESULT, spooled bytes just before the kill)."""
    hole = pool.sinks[2]
    load = start_load(g, name, rate=300)
    wait_acked(g, 30)
    wait_until(lambda: [pool.distinct(i) for i in range(3)], all, WAIT, "distinct traces per sink before the stall")
    stall(hole)
    try:
        wait_until(lambda: msum(g, SPOOL_BYTES), lambda v: v > 0, WAIT, "%s while a backend is stalled" % SPOOL_BYTES)
        wait_acked(g, more, what="trace requests acknowledged while a backend is stalled")
        spooled = msum(g, SPOOL_BYTES)
        assert load.running(), "the load ended before the crash"
        kill9(g)
        res = load.stop()
    finally:
        resume(hole)
    acked = read_traces(load.acked_file, strict=True)
    assert sum(acked.values()) == res["spans_acked"], (sum(acked.values()), result_line(res))
    print("    crash: %s; %d bytes spooled for the stalled backend at the SIGKILL" % (result_line(res), spooled))
    return acked, res, spooled


def check_segments_deleted(g, directory):
    """Every record replayed and delivered: the segments of the old run go (at most one, being written, stays)."""
    n = wait_until(lambda: len(segments(directory)), lambda v: v <= 1, WAIT, "segment files in %s/w0" % directory)
    return n, msum(g, SPOOL_SEGMENTS)


def crash_and_replay(name, stall, resume, fsync):
    pool = Pool(name)
    d = spool_dir(name)
    cfg = spool_config(pool.endpoints, d, fsync)
    g = Gateway(cfg, name=name + ".yaml")
    wait_ring(g, 3)
    acked, _, spooled = crash_under_load(name, pool, g, stall, resume)
    assert segments(d), "no segment file under %s/w0 after the crash" % d
    g2 = Gateway(cfg, name=name + ".yaml")
    rp = replayed_line(g2)
    print("    restart: spool replayed records=%d items=%d corrupt=%d (fsync %s)"
          % (rp["records"], rp["items"], rp["corrupt"], fsync))
    assert rp["records"] > 0 and rp["items"] > 0 and rp["corrupt"] == 0, rp
    assert msum(g2, REPLAYED) == rp["items"], (msum(g2, REPLAYED), rp)
    wait_spool_empty(g2)
    acc = account(name, acked, pool.files, extra=" spooled_at_crash=%d replayed_items=%d" % (spooled, rp["items"]))
    n, metric = check_segments_deleted(g2, d)
    assert msum(g2, CORRUPT) == 0
    print("    after the drain: %d segment file(s), spool_segments %d" % (n, metric))
    return acc


# ---- SIGKILL under load ------------------------------------------------------------------------------------

def test_sigkill_black_hole():
    """A black-holed backend (accepts, never answers), fsync batch."""
    crash_and_replay("crash_hole", stall_hang, resume_hang, "batch")


def test_sigkill_stopped_backend():
    """A backend stopped with SIGSTOP (the kernel still accepts its connections and buffers requests; after
    SIGCONT it may record requests of the dead gateway's connections: duplicates, allowed), fsync always."""
    crash_and_replay("crash_stop", stall_stop, resume_stop, "always")


def test_replay_onto_changed_backend_set():
    """Crash with C black-holed (fsync never: page cache only, which a process crash keeps); restart with C removed
    from the config: C's records are re-split onto A and B, none lost, no trace split, C gets nothing more."""
    name = "changed"
    pool = Pool(name)
    d = spool_dir(name)
    g = Gateway(spool_config(pool.endpoints, d, "never"), name=name + ".yaml")
    wait_ring(g, 3)
    hole = pool.sinks[2]
    acked, _, spooled = crash_under_load(name, pool, g, stall_hang, lambda s: None)
    try:
        before = [set(c) for c in pool.traces()]
        c_lines = len(read_traces(pool.files[2]))
        g2 = Gateway(spool_config(pool.endpoints[:2], d, "never"), name=name + "2.yaml")
        wait_ring(g2, 2)
        rp = replayed_line(g2)
        print("    restart without C: spool replayed records=%d items=%d corrupt=%d"
              % (rp["records"], rp["items"], rp["corrupt"]))
        assert rp["records"] > 0 and rp["corrupt"] == 0, rp
        wait_spool_empty(g2)
        acc = account(name, acked, pool.files, extra=" spooled_at_crash=%d replayed_items=%d" % (spooled, rp["items"]))
        # the acknowledged traces that were at no sink before the restart: C's spooled parts, now on A and B
        replayed = set(acked) - before[0] - before[1] - before[2]
        got = [len(replayed & set(acc["per"][i])) for i in range(3)]
        print("    %d acknowledged traces were only in the spool; after the replay at A, B, C: %s"
              % (len(replayed), got))
        assert len(replayed) >= 10, "too few traces waited in the spool to say anything"
        assert got[2] == 0 and len(read_traces(pool.files[2])) == c_lines, "the removed backend got data"
        assert got[0] > 0 and got[1] > 0, ("the replay did not re-split onto the current ring", got)
    finally:
        hole.control(hang=0)


# ---- corruption ----------------------------------------------------------------------------------------------

def _crc32c_table():
    t = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        t.append(c)
    return t


CRC_TABLE = _crc32c_table()


def crc32c(data):
    crc = 0xFFFFFFFF
    t = CRC_TABLE
    for b in data:
        crc = t[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


assert crc32c(b"123456789") == 0xE3069283  # the Castagnoli check value

MAGICS = (b"OTLS", b"SLTO")  # "OTLS" as bytes, or the u32 'OTLS' stored little-endian
HDR = 12                      # magic | length | CRC32C; then type u8 | payload (length bytes)
DATA, RETIRE = 1, 2

Rec = collections.namedtuple("Rec", "path seg off end type payload")


def scan_segment(path):
    """Records of one segment file as gateway/spool.h lays them out; asserts every complete one has a valid
    CRC32C (a mismatch here means the writer and the header disagree). Returns (records, torn tail bytes)."""
    seg = int(re.search(r"seg-([0-9a-f]{16})\.log$", path).group(1), 16)
    with open(path, "rb") as f:
        buf = f.read()
    recs, off = [], 0
    while off + HDR + 1 <= len(buf):
        assert buf[off:off + 4] in MAGICS, "%s: no record magic at offset %d: %r" % (path, off, buf[off:off + 16])
        length, crc = struct.unpack_from("<II", buf, off + 4)
        end = off + HDR + 1 + length
        if end > len(buf):
            break
        assert crc32c(buf[off + HDR:end]) == crc, "%s: CRC32C of type..payload of the record at %d does not match " \
            "(layout of gateway/spool.h?)" % (path, off)
        recs.append(Rec(path, seg, off, end, buf[off + HDR], buf[off + HDR + 1:end]))
        off = end
    return recs, len(buf) - off


def spans_by_trace(pb):
    """Counter trace ID (hex) -> spans of an ExportTraceServiceRequest."""
    c = collections.Counter()
    for rs in parse_fields(pb).get(1, []):
        for ss in parse_fields(rs).get(2, []):
            for span in parse_fields(ss).get(2, []):
                c[parse_fields(span)[1][0].hex()] += 1
    return c


def live_records(directory):
    """The DATA records of worker 0 no RETIRE record retires, in file order, each with its spans per trace; the
    number of records; the segment files that end in a torn record (the crash's)."""
    recs, torn = [], set()
    for p in segments(directory):
        r, t = scan_segment(p)
        recs += r
        if t:
            torn.add(p)
    retired = set()
    for r in recs:
        if r.type == RETIRE:
            assert len(r.payload) == 12, ("RETIRE payload of %d bytes" % len(r.payload), r.path, r.off)
            retired.add(struct.unpack_from("<QI", r.payload))
    live = []
    for r in recs:
        if r.type == DATA and (r.seg, r.off) not in retired:
            items = struct.unpack_from("<Q", r.payload, 1)[0]
            traces = spans_by_trace(r.payload[9:])
            assert sum(traces.values()) == items, ("DATA record items %d, its protobuf holds %d spans"
                                                   % (items, sum(traces.values())), r.path, r.off)
            live.append((r, traces))
    return live, len(recs), torn


def test_corrupt_segment():
    """After a crash: the last record of the last segment cut in half, one byte of another record's protobuf
    flipped. The restart skips and counts exactly those 2, replays the rest, and what is lost is exactly the
    acknowledged spans of those two records."""
    name = "corrupt"
    pool = Pool(name)
    d = spool_dir(name)
    cfg = spool_config(pool.endpoints, d)
    g = Gateway(cfg, name=name + ".yaml")
    wait_ring(g, 3)
    acked, _, spooled = crash_under_load(name, pool, g, stall_hang, resume_hang)
    live, n_recs, torn = live_records(d)
    assert len(live) >= 3, ("too few live records to corrupt two", len(live), n_recs)
    # truncate: the last live DATA record of the last segment holding one, cut mid-record (the records after it in
    # that file, if any, are RETIREs of delivered records: they only bring duplicates back)
    last_seg = live[-1][0].path
    cut, cut_traces = live[-1]
    with open(cut.path, "r+b") as f:
        f.truncate(cut.off + (cut.end - cut.off) // 2)
    # flip: a byte in the middle of the protobuf bytes of a record in the middle
    flip, flip_traces = live[len(live) // 2]
    at = flip.off + HDR + 1 + 9 + (len(flip.payload) - 9) // 2
    with open(flip.path, "r+b") as f:
        f.seek(at)
        b = f.read(1)
        f.seek(at)
        f.write(bytes([b[0] ^ 0xFF]))
    torn = len(torn - {cut.path})  # a torn tail after the cut went with it
    expect = collections.Counter()
    for traces in (cut_traces, flip_traces):
        for t, n in traces.items():
            if t in acked:  # a record not acknowledged yet when the crash came (its sync or answer pending) loses
                expect[t] += n  # nothing anyone was promised
    rest_items = sum(sum(tr.values()) for r, tr in live if r not in (cut, flip))
    print("    %d records in %d segment(s) (%d torn by the crash), %d live; cut the one at %s:%d, flipped byte %d of "
          "the one at %d; their acknowledged spans: %d of %d traces" % (
              n_recs, len(segments(d)), torn, len(live), os.path.basename(last_seg), cut.off, at, flip.off,
              sum(expect.values()), len(expect)))
    assert expect, "neither corrupted record held an acknowledged span: the scenario tests nothing"
    g2 = Gateway(cfg, name=name + ".yaml")
    rp = replayed_line(g2)
    print("    restart: spool replayed records=%d items=%d corrupt=%d" % (rp["records"], rp["items"], rp["corrupt"]))
    assert rp["corrupt"] == torn + 2, ("corrupt records counted at replay", rp, torn)
    assert rp["records"] == len(live) - 2 and rp["items"] == rest_items, (rp, len(live) - 2, rest_items)
    wait_spool_empty(g2)
    assert msum(g2, CORRUPT) == torn + 2, msum(g2, CORRUPT)
    account(name, acked, pool.files, expect_lost=expect,
            extra=" spooled_at_crash=%d replayed_items=%d corrupt=%d" % (spooled, rp["items"], rp["corrupt"]))


# ---- a disk that fills up -------------------------------------------------------------------------------------

FSIZE_LIMIT = 256 * 1024
DISK_BYTES = 1024 * 1024


def small_files():
    """preexec of the gateway: no file may grow past FSIZE_LIMIT. The gateway ignores SIGXFSZ itself (left at its
    default, the signal would kill it at the first write past the limit), so such a write fails with EFBIG."""
    resource.setrlimit(resource.RLIMIT_FSIZE, (FSIZE_LIMIT, FSIZE_LIMIT))


class SmallDisk:
    """A real file system of DISK_BYTES (tmpfs, mounted by the test: CI runs as root) that the spool fills up, so
    every write fails with ENOSPC, in whatever segment, until records are retired and files deleted."""

    def __init__(self, name):
        self.path = os.path.join(TMP, name + ".disk")
        os.makedirs(self.path, exist_ok=True)
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=%d,mode=0700" % DISK_BYTES, "tmpfs", self.path],
                           capture_output=True, text=True)
        self.error = None if r.returncode == 0 else (r.stderr.strip() or "mount exited %d" % r.returncode)

    def umount(self):
        if self.error is None:
            subprocess.run(["umount", "-l", self.path], capture_output=True)


def test_disk_full():
    """The spool's file system (1 MiB) fills up while a backend is black-holed: once nothing fits, requests with a
    part for that backend get 503 (write errors counted, a log line), nothing acknowledged is lost; when the
    backend answers again and its queue drains, the segments that filled up go, and with the backend black-holed
    again new requests are acknowledged (spooled) again."""
    name = "full"
    disk = SmallDisk(name)
    if disk.error:
        if os.geteuid() == 0 or in_ci():
            raise AssertionError("cannot mount a small tmpfs for the disk-full scenario: %s" % disk.error)
        skip("a small file system needs mount (root): %s" % disk.error)
    try:
        disk_full_scenario(name, os.path.join(disk.path, "spool"))
    finally:
        disk.umount()


def disk_full_scenario(name, d):
    pool = Pool(name)
    g = Gateway(spool_config(pool.endpoints, d), name=name + ".yaml")
    wait_ring(g, 3)
    hole = pool.sinks[2]
    stall_hang(hole)
    load = start_load(g, name, rate=100)
    peak = [0]

    def refused():
        peak[0] = max(peak[0], msum(g, SPOOL_BYTES))
        return g.metric_or_none(REFUSED) or 0

    try:
        wait_until(refused, lambda v: v >= 5, 2 * WAIT, "trace requests answered 503 once the spool is full")
        errors = wait_until(lambda: msum(g, WRITE_ERRORS), lambda v: v > 0, WAIT, WRITE_ERRORS)
        res = load.stop()
        sizes = [os.path.getsize(p) for p in segments(d)]
        print("    spool full: %s; spool_bytes peak %d, write errors %d, segment sizes %s"
              % (result_line(res), peak[0], errors, sizes))
        assert res.get("status_503", 0) > 0 and res["ok"] > 0, result_line(res)
        assert peak[0] > 0, "nothing was ever spooled: the spool failed from the start, not when it was full"
        g.wait_line(r"spool write failed")
    finally:
        resume_hang(hole)
    # the segments that hold records (a failed write into a full one moved its batch to a new, empty segment,
    # which the full disk refused too): they go once their records are retired
    full = [p for p in segments(d) if os.path.getsize(p) > DISK_BYTES // 4]
    assert full, ("no segment filled up", [(os.path.basename(p), os.path.getsize(p)) for p in segments(d)])
    # recovery: the backend answers and its queue drains
    wait_spool_empty(g)
    wait_until(lambda: [p for p in full if os.path.exists(p)], lambda v: not v, WAIT,
               "the segment files that were full")
    # then new requests that need the spool are acknowledged again (the backend black-holed once more)
    stall_hang(hole)
    try:
        e0 = msum(g, WRITE_ERRORS)
        again = start_load(g, name + ".again", seed=3, requests=6)
        res2 = again.result()
        print("    backend black-holed again after the drain: %s; spool_bytes %d, write errors %d -> %d; segments %s"
              % (result_line(res2), msum(g, SPOOL_BYTES), e0, msum(g, WRITE_ERRORS),
                 [(os.path.basename(p), os.path.getsize(p)) for p in segments(d)]))
        assert res2["ok"] == res2["requests"] == 6, ("requests refused after the spool drained", result_line(res2),
                                                     g.lines(r"spool")[-5:])
        assert msum(g, SPOOL_BYTES) > 0 and msum(g, WRITE_ERRORS) == e0
    finally:
        resume_hang(hole)
    wait_spool_empty(g)
    acked = read_traces(load.acked_file, strict=True)
    acked.update(read_traces(again.acked_file, strict=True))
    account(name, acked, pool.files)
    g.stop()


def test_file_size_limit_moves_to_a_new_segment():
    """No file may grow past 256 KiB (RLIMIT_FSIZE, as a quota on file size would): a batch that finds no room at
    the end of the segment being written goes to a new segment at once, so no client is refused for where a file
    ended: 0 write errors, 0 answers 503, several segments none past the limit, nothing acknowledged lost."""
    name = "fsize"
    pool = Pool(name)
    d = spool_dir(name)
    g = Gateway(spool_config(pool.endpoints, d), name=name + ".yaml", preexec=small_files)
    wait_ring(g, 3)
    hole = pool.sinks[2]
    stall_hang(hole)
    try:
        load = start_load(g, name, rate=100)
        # several files' worth spooled
        wait_until(lambda: msum(g, SPOOL_BYTES), lambda v: v > 3 * FSIZE_LIMIT, 2 * WAIT, SPOOL_BYTES)
        res = load.stop()
        sizes = [os.path.getsize(p) for p in segments(d)]
        print("    %s; spool_bytes %d, write errors %d, segment sizes %s"
              % (result_line(res), msum(g, SPOOL_BYTES), msum(g, WRITE_ERRORS), sizes))
        assert res["ok"] == res["requests"] and res.get("status_503", 0) == 0, result_line(res)
        assert msum(g, WRITE_ERRORS) == 0 and not g.lines(r"spool write failed")
        assert len(sizes) >= 3 and max(sizes) <= FSIZE_LIMIT, sizes
    finally:
        resume_hang(hole)
    wait_spool_empty(g)
    account(name, read_traces(load.acked_file, strict=True), pool.files)
    g.stop()


# ---- one gateway per directory ------------------------------------------------------------------------------

def test_directory_held_by_another_gateway():
    """A second gateway on a directory the first holds refuses to start, naming it; the first keeps serving; once
    it has stopped, the directory can be used again. A path that cannot be a directory is a start-up error naming
    it, and --check-config says so too."""
    d = spool_dir("lock")
    sink = Sink()
    cfg = spool_config([sink.endpoint], d)
    g = Gateway(cfg, name="lock1.yaml")
    second = Proc([args().gateway, "--config", write_config(loopback_grpc(cfg), "lock2.yaml")])
    rc = second.wait()
    naming = second.lines(re.escape(d))
    print("    second gateway: exit %d: %s" % (rc, naming[:1]))
    assert rc != 0 and naming, (rc, second.err[-5:])
    assert not second.lines(r"msg=listening server=ingest"), "the second gateway served before refusing"
    assert http_request(g.port, "POST", "/v1/traces", trace_request(3, 1), PB)[0] == 200
    assert g.stop() == 0
    g3 = Gateway(cfg, name="lock3.yaml")  # the lock went with the first one
    assert http_request(g3.port, "POST", "/v1/traces", trace_request(3, 1), PB)[0] == 200
    # a path under a regular file
    blocker = os.path.join(TMP, "lock.file")
    open(blocker, "w").close()
    bad = os.path.join(blocker, "spool")
    bad_cfg = write_config(loopback_grpc(spool_config([sink.endpoint], bad)), "lock_bad.yaml")
    p = Proc([args().gateway, "--config", bad_cfg])
    rc = p.wait()
    assert rc != 0 and p.lines(re.escape(bad)), (rc, p.err[-5:])
    cp = subprocess.run([args().gateway, "--check-config", "--config", bad_cfg], capture_output=True, text=True,
                        timeout=WAIT)
    assert cp.returncode != 0 and bad in cp.stdout + cp.stderr, (cp.returncode, cp.stdout, cp.stderr)
    good_cfg = write_config(loopback_grpc(spool_config([sink.endpoint], spool_dir("lock_check"))), "lock_ok.yaml")
    cp = subprocess.run([args().gateway, "--check-config", "--config", good_cfg], capture_output=True, text=True,
                        timeout=WAIT)
    assert cp.returncode == 0, (cp.returncode, cp.stdout, cp.stderr)


run_tests(globals())
