"""Shared by the bench/ scripts: process CPU time from /proc and otlp-load's RESULT line."""
import os
import socket

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids):
    """utime + stime, in seconds, summed over the given process ids."""
    total = 0
    for pid in pids:
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / TICK


def parse_result(stdout):
    """otlp-load's "RESULT k=v ..." line as a dict of strings (raises if absent)."""
    line = [ln for ln in stdout.splitlines() if ln.startswith("RESULT ")][0]
    return dict(kv.split("=", 1) for kv in line[7:].split())


def free_port(host="127.0.0.1"):
    """A TCP port on host (a loopback address) that was free a moment ago."""
    s = socket.socket()
    s.bind((host, 0))
    p = s.getsockname()[1]
    s.close()
    return p
