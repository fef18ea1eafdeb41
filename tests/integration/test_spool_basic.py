"""The crash-safe spool (backends.queue.directory), a quick end-to-end check: what the gateway acknowledged and
then held for a black-holed backend survives a SIGKILL of the gateway and is delivered by the next start on the
same directory; and the directory's lock keeps a second gateway off it. The full crash suite (kill -STOP, a
changed backend set, corrupt segments, a full disk) is test_spool's.
Only 127.0.0.1; every process stops by itself or is killed at exit (harness)."""
import os
import re
import shutil
import subprocess

from harness import TMP, WAIT, Gateway, Pool, args, resilient_config, run_tests, wait_drained, wait_until
from faults import check_accounting, result_line, start_load, up_metric, wait_acked


def spool_config(endpoints, directory, fsync="batch"):
    return resilient_config(endpoints).replace("  queue: {max_bytes: 64MiB}",
                                               '  queue: {max_bytes: 64MiB, directory: "%s", fsync: %s}'
                                               % (directory, fsync))


def fresh_dir(name):
    d = os.path.join(TMP, name)
    shutil.rmtree(d, ignore_errors=True)
    return d


def test_sigkill_with_a_black_hole_loses_nothing_acknowledged():
    """One sink, black-holed (accepts, never answers) under a little load: the parts it held time out, are
    spooled and acknowledged, and wait while it is down (no other backend to re-route to). SIGKILL the gateway,
    release the sink, start the gateway again on the same directory: every acknowledged span arrives."""
    d = fresh_dir("spool-kill")
    pool = Pool("spool-kill", n=1)
    sink = pool.sinks[0]
    g = Gateway(spool_config(pool.endpoints, d), name="spool-kill.yaml")
    assert g.metric("otlp_gateway_spool_replayed_items_total") == 0
    load = start_load(g, "spool-kill", rate=200)
    wait_acked(g, 20)
    assert sink.control(hang=1)["hang"] == 1
    g.wait_metric(up_metric(sink.endpoint), lambda v: v == 0)
    spooled = g.wait_metric('otlp_gateway_spool_bytes{backend="%s"}' % sink.endpoint, lambda v: v and v > 0,
                            what="bytes spooled for the black hole")
    segments = g.metric("otlp_gateway_spool_segments")
    res = load.stop()  # the load has seen every answer it counts as acknowledged
    g.killed = True
    g.p.kill()
    g.wait()
    print("    load: %s; %d bytes spooled for the black hole in %d segment(s) at the SIGKILL"
          % (result_line(res), spooled, segments))
    assert segments >= 1, segments
    state = sink.control(hang=0)
    assert state["held_total"] > 0, "the black hole never received anything"
    g2 = Gateway(spool_config(pool.endpoints, d), name="spool-kill.yaml")
    m = re.search(r"records=(\d+) items=(\d+) corrupt=(\d+)", g2.wait_line(r'msg="spool replayed"').string)
    records, items, corrupt = int(m.group(1)), int(m.group(2)), int(m.group(3))
    print("    restart: spool replayed records=%d items=%d corrupt=%d" % (records, items, corrupt))
    assert records > 0 and items > 0 and corrupt == 0, (records, items, corrupt)
    assert g2.metric("otlp_gateway_spool_replayed_items_total") == items
    wait_drained(g2)
    a = check_accounting("spool_sigkill_black_hole", [load.acked_file], pool.files, [res])
    print("    duplicates=%d (at-least-once: parts whose delivery raced the crash)" % a["duplicates"])
    # Everything replayed was delivered and retired: a clean stop leaves no live record behind.
    wait_until(lambda: g2.metric_sum("otlp_gateway_spool_bytes"), lambda v: v == 0, WAIT, "spool_bytes after replay")
    g2.stop()
    g3 = Gateway(spool_config(pool.endpoints, d), name="spool-kill.yaml")
    m = re.search(r"records=(\d+)", g3.wait_line(r'msg="spool replayed"').string)
    assert int(m.group(1)) == 0, "records still live after a delivered replay: " + m.group(0)


def test_directory_lock():
    """A second gateway (and --check-config) on a directory a running gateway holds fails, naming the path."""
    d = fresh_dir("spool-lock")
    pool = Pool("spool-lock", n=1)
    g = Gateway(spool_config(pool.endpoints, d), name="spool-lock-a.yaml")
    other = os.path.join(TMP, "spool-lock-b.yaml")
    with open(other, "w") as f:
        f.write(spool_config(pool.endpoints, d))
    for argv in (["--config", other], ["--check-config", "--config", other]):
        r = subprocess.run([args().gateway] + argv, capture_output=True, text=True, timeout=WAIT)
        print("    %s -> %d: %s" % (" ".join(argv[:-1]), r.returncode, r.stderr.strip().splitlines()[-1:]))
        assert r.returncode == 1 and d in r.stderr and "held by another running gateway" in r.stderr, (
            r.returncode, r.stderr)
    assert g.p.poll() is None  # the holder is unaffected
    g.stop()
    r = subprocess.run([args().gateway, "--check-config", "--config", other], capture_output=True, text=True,
                       timeout=WAIT)
    assert r.returncode == 0, r.stderr  # released with the process


if __name__ == "__main__":
    run_tests(globals())
