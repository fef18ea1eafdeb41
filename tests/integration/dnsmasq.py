"""A dnsmasq of the test's own for the DNS scenarios (Debian package dnsmasq-base): answers for *.test from a
hosts file on a port of 127.0.0.1, re-reads the file on SIGHUP; and a minimal stub query to see what it
answers. (tests/unit/test_dns.c starts its own from C.)"""
import os
import signal
import socket
import struct
import time

from harness import WAIT, Proc, wait_until

DNSMASQ = "/usr/sbin/dnsmasq"


def free_dns_port(attempts=1000):
    """A port on 127.0.0.1 free for both UDP and TCP right now."""
    for _ in range(attempts):
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        u.bind(("127.0.0.1", 0))
        port = u.getsockname()[1]
        t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            t.bind(("127.0.0.1", port))
            return port
        except OSError:
            continue
        finally:
            t.close()
            u.close()
    raise AssertionError("no port free for both UDP and TCP on 127.0.0.1 in %d attempts" % attempts)


def write_hosts(path, addrs, name="backends.test"):
    """Replaces the hosts file atomically: name resolves to every address of addrs."""
    with open(path + ".tmp", "w") as f:
        f.writelines("%s %s\n" % (a, name) for a in addrs)
    os.replace(path + ".tmp", path)


class Dnsmasq(Proc):
    """dnsmasq answering for *.test from hosts_file; SIGHUP (or reload()) re-reads it. A missing binary fails
    the test: CI and scripts/deps.sh --tests install it."""

    def __init__(self, hosts_file):
        assert os.path.exists(DNSMASQ), DNSMASQ + " missing (Debian package dnsmasq-base)"
        # dnsmasq binds UDP and TCP on its port; an ephemeral port free for UDP can be some connection's TCP
        # port on a busy machine, so pick one free for both and try again if it was taken meanwhile.
        for attempt in range(5):
            self.port = free_dns_port()
            super().__init__([DNSMASQ, "--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv",
                              "--no-hosts", "--addn-hosts=" + hosts_file, "--listen-address=127.0.0.1",
                              "--bind-interfaces", "--port=%d" % self.port, "--local=/test/", "--pid-file=",
                              "--user=root",  # else it drops to nobody, who cannot read the private TMP
                              "--log-facility=-"])
            try:
                self.wait_line(r"read .* names")
                return
            except AssertionError:
                self.stop()
                if attempt == 4 or not any("Address already in use" in ln for ln in self.err):
                    raise

    def reload(self, hosts_file, addrs, name="backends.test", timeout=WAIT):
        """Rewrites the hosts file, SIGHUP, and waits (bounded) until dnsmasq answers with exactly addrs."""
        write_hosts(hosts_file, addrs, name)
        self.signal(signal.SIGHUP)
        wait_until(lambda: dns_a(name, self.port), lambda v: v == sorted(addrs), timeout, "dnsmasq after SIGHUP")


def dns_a(name, port, server="127.0.0.1"):
    """Sorted A records of name from the DNS server at server:port (a minimal stub query); [] on no answer
    within a second."""
    qid = (os.getpid() + int(time.time() * 1000)) & 0xFFFF
    q = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    q += b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0" + struct.pack(">HH", 1, 1)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(1)
    try:
        s.sendto(q, (server, port))
        r = s.recv(4096)
    except socket.timeout:
        return []
    finally:
        s.close()
    _, _, qd, an, _, _ = struct.unpack(">HHHHHH", r[:12])
    i = 12
    for _ in range(qd):
        while r[i]:
            i += r[i] + 1
        i += 5
    out = []
    for _ in range(an):
        i += 2 if r[i] & 0xC0 == 0xC0 else len(r[i:].split(b"\0", 1)[0]) + 1
        typ, _, _, rdlen = struct.unpack(">HHIH", r[i:i + 10])
        i += 10
        if typ == 1 and rdlen == 4:
            out.append(socket.inet_ntoa(r[i:i + 4]))
        i += rdlen
    return sorted(out)
