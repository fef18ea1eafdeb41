"""Test certificates made at test time with the openssl CLI (no fixed key material in the repository).

    ca = make_ca(dir, "test-ca")                       # a self-signed CA: ca.cert, ca.key
    srv = make_cert(dir, ca, "gw", ["127.0.0.1", "localhost"])  # a server certificate signed by ca
    cli = make_cert(dir, ca, "app", [], client=True)   # a client certificate (mTLS)
    old = make_cert(dir, ca, "old", ["127.0.0.1"], expired=True)

Both return a Pair: a (cert, key) tuple of PEM file paths (so it can be passed where "CERT,KEY" or (cert, key)
is expected, e.g. harness.Sink(tls=srv)), with .cert, .key and .name. Every key is EC P-256 (fast to make).
Files go to dir/NAME.crt and dir/NAME.key (an existing pair of that name is overwritten: give each its own name,
or call again with the same name to rotate a certificate in place). Each certificate has a fresh random serial
(compare serials to tell two certificates of the same name apart). sans: IP literals become IP SANs, anything
else DNS SANs; the subject CN is name. A server certificate has extendedKeyUsage serverAuth, a client one
clientAuth; expired=True makes one that expired years ago (valid 2020-01-01 .. 2020-02-01).
"""
import collections
import ipaddress
import os
import secrets
import subprocess

Pair = collections.namedtuple("Pair", "cert key name")
Pair.__new__.__defaults__ = ("",)


def _run(*argv, cwd=None):
    p = subprocess.run(["openssl"] + list(argv), cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       universal_newlines=True)
    assert p.returncode == 0, "openssl %s failed: %s" % (" ".join(argv), p.stderr.strip())
    return p.stdout


def _key(path):
    _run("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", path)


def make_ca(dir, name):
    """A self-signed CA certificate (10 years) and its key in dir: Pair(cert, key, name)."""
    os.makedirs(dir, exist_ok=True)
    cert, key = os.path.join(dir, name + ".crt"), os.path.join(dir, name + ".key")
    _key(key)
    _run("req", "-x509", "-new", "-key", key, "-out", cert, "-days", "3650", "-subj", "/CN=" + name,
         "-set_serial", "0x" + secrets.token_hex(8),
         "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    return Pair(cert, key, name)


def _san(sans):
    out = []
    for s in sans:
        try:
            ipaddress.ip_address(s)
            out.append("IP:" + s)
        except ValueError:
            out.append("DNS:" + s)
    return ",".join(out)


def make_cert(dir, ca, name, sans, days=30, expired=False, client=False):
    """A certificate for name signed by ca (a make_ca result), valid for days (or long expired), with sans
    (e.g. ["127.0.0.1", "localhost"]): Pair(cert, key, name) in dir."""
    os.makedirs(dir, exist_ok=True)
    cert, key = os.path.join(dir, name + ".crt"), os.path.join(dir, name + ".key")
    csr, ext = os.path.join(dir, name + ".csr"), os.path.join(dir, name + ".ext")
    _key(key)
    _run("req", "-new", "-key", key, "-out", csr, "-subj", "/CN=" + name)
    lines = ["basicConstraints=critical,CA:FALSE", "keyUsage=critical,digitalSignature,keyEncipherment",
             "extendedKeyUsage=" + ("clientAuth" if client else "serverAuth")]
    if sans:
        lines.append("subjectAltName=" + _san(sans))
    serial = "0x" + secrets.token_hex(8)
    if not expired:
        with open(ext, "w") as f:
            f.write("\n".join(lines) + "\n")
        _run("x509", "-req", "-in", csr, "-CA", ca.cert, "-CAkey", ca.key, "-set_serial", serial, "-days",
             str(days), "-sha256", "-extfile", ext, "-out", cert)
    else:
        # x509 -req cannot back-date (OpenSSL 3.0); openssl ca can, with a throw-away database.
        db = os.path.join(dir, name + ".db")
        os.makedirs(db, exist_ok=True)
        open(os.path.join(db, "index.txt"), "w").close()
        with open(os.path.join(db, "serial"), "w") as f:
            f.write(serial[2:] + "\n")
        conf = os.path.join(db, "ca.cnf")
        with open(conf, "w") as f:
            f.write("[ca]\ndefault_ca = d\n[d]\ndatabase = %s/index.txt\nserial = %s/serial\nnew_certs_dir = %s\n"
                    "default_md = sha256\npolicy = p\nunique_subject = no\ncopy_extensions = none\n"
                    "[p]\ncommonName = supplied\n[x]\n%s\n" % (db, db, db, "\n".join(lines)))
        _run("ca", "-batch", "-config", conf, "-extensions", "x", "-cert", ca.cert, "-keyfile", ca.key, "-in", csr,
             "-out", cert, "-notext", "-startdate", "20200101000000Z", "-enddate", "20200201000000Z")
    return Pair(cert, key, name)


def serial_of(cert_pem_or_der):
    """The serial (an int) of a certificate given as PEM text or DER bytes (ssl's getpeercert(True))."""
    if isinstance(cert_pem_or_der, bytes):
        p = subprocess.run(["openssl", "x509", "-inform", "DER", "-noout", "-serial"], input=cert_pem_or_der,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out = p.stdout.decode()
    else:
        p = subprocess.run(["openssl", "x509", "-noout", "-serial"], input=cert_pem_or_der.encode(),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out = p.stdout.decode()
    assert p.returncode == 0 and out.startswith("serial="), out
    return int(out.strip().split("=", 1)[1], 16)


def serial_of_file(path):
    """The serial (an int) of the PEM certificate at path."""
    with open(path) as f:
        return serial_of(f.read())
