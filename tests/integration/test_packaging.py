"""The systemd unit (deploy/systemd/otlp-gateway.service), `cmake --install` and the .deb (cmake/Packaging.cmake).

- The unit: the settings the gateway needs (ExecStart, ExecReload = SIGHUP, Restart, a stop timeout above the
  gateway's own shutdown_timeout default, no capabilities for its unprivileged default ports, the sandbox),
  `systemd-analyze verify` without a word about it (shown able to catch a typo), and `systemd-analyze security
  --offline` under a threshold.
- A fresh configure installs into /usr with the unit exactly as shipped; another prefix gets its paths written in.
- `cmake --install` of the test's build directory into a DESTDIR: exactly the expected files; `--component bench`
  adds only otlp-load and otlp-sink.
- `cpack -G DEB` of that build directory: control fields, Depends from dpkg-shlibdeps covering every shared library
  the binary loads (no -dev package), the file list, the conffile, maintainer scripts that never enable or start.
- As root only (CI runs as root; elsewhere skipped): `dpkg -i`, the installed binary's --version and --check-config
  on the installed config, the unit installed and not enabled, an edited conffile kept by a reinstall and by
  `dpkg -r`, which removes everything else; `dpkg -P` leaves nothing. A finally (and the watchdog) purges even on
  failure. Runs that share the machine are serialised by a lock file (and dpkg's own lock is waited for).
Every subprocess is bounded by a timeout."""
import fcntl
import glob
import os
import re
import shutil
import signal
import subprocess
import time

from harness import TMP, args, run_tests, skip

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
UNIT_SRC = os.path.join(ROOT, "deploy", "systemd", "otlp-gateway.service")
EXAMPLE = os.path.join(ROOT, "config", "examples", "gateway.yaml")
PKG = "otlp-gateway"
T = 120  # seconds: the bound of every subprocess (cpack may run make's preinstall check of the build directory)
LOCK = "/tmp/otlpgw-test-packaging.lock"


def run(argv, check=True, timeout=T, env=None, cwd=None):
    r = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=timeout, env=env,
                       cwd=cwd)
    if check and r.returncode != 0:
        raise AssertionError("%s exited %d\nstdout:\n%s\nstderr:\n%s" % (" ".join(argv), r.returncode,
                                                                         r.stdout[-3000:], r.stderr[-3000:]))
    return r


def need(tool, package):
    path = shutil.which(tool)
    if not path:
        skip("%s not found: apt-get install %s" % (tool, package))
    return path


def build_dir():
    d = os.path.dirname(os.path.realpath(args().gateway))
    for f in ("CMakeCache.txt", "CPackConfig.cmake", "cmake_install.cmake"):
        assert os.path.exists(os.path.join(d, f)), "%s: no %s (the gateway is expected at the top of its build " \
            "directory)" % (d, f)
    return d


def cache(build, key):
    with open(os.path.join(build, "CMakeCache.txt")) as f:
        for ln in f:
            m = re.match(r"%s:[A-Z]+=(.*)$" % re.escape(key), ln.rstrip("\n"))
            if m:
                return m.group(1)
    raise AssertionError("%s not in %s/CMakeCache.txt" % (key, build))


def unit_settings(text):
    """[Service] etc. as {key: [values in order]} (comments and blank lines ignored)."""
    out = {}
    for ln in text.splitlines():
        ln = ln.strip()
        if not ln or ln[0] in "#;[":
            continue
        k, _, v = ln.partition("=")
        out.setdefault(k.strip(), []).append(v.strip())
    return out


def seconds(s):
    m = re.fullmatch(r"(\d+)(ms|s|min|m|h)?", s)
    assert m, s
    return int(m.group(1)) * {"ms": 0.001, "s": 1, None: 1, "min": 60, "m": 60, "h": 3600}[m.group(2)]


def config_default(key):
    """The default of a key from the binary's own reference table (`--print-config-reference`)."""
    r = run([args().gateway, "--print-config-reference"])
    for ln in r.stdout.splitlines():
        cells = [c.strip() for c in ln.split("|")]
        if len(cells) > 4 and cells[1] == "`%s`" % key:
            return cells[3].strip("`").strip('"')
    raise AssertionError("%s not in --print-config-reference" % key)


class Layout:
    """Where the build directory installs things: paths from its generated unit (which names the binary and the
    config) and its cache."""

    def __init__(self, build):
        self.build = build
        self.prefix = cache(build, "CMAKE_INSTALL_PREFIX")
        self.unit_built = os.path.join(build, "systemd", "otlp-gateway.service")
        with open(self.unit_built) as f:
            self.unit_text = f.read()
        m = re.search(r"^ExecStart=(\S+) --config (\S+)$", self.unit_text, re.M)
        assert m, self.unit_text
        self.binary, self.config = m.group(1), m.group(2)
        self.unit = os.path.join(cache(build, "OTLPGW_SYSTEMD_UNITDIR"), "otlp-gateway.service")
        self.docdir = os.path.join(self.prefix, cache(build, "CMAKE_INSTALL_DOCDIR"))
        docs = ["README.md"] + sorted(os.path.basename(p) for p in glob.glob(os.path.join(ROOT, "docs", "*.md")))
        self.files = {self.binary, self.config, self.unit,
                      os.path.join(self.prefix, "share", "otlp-gateway", "grafana", "otlp-gateway.json")}
        self.files |= {os.path.join(self.docdir, d) for d in docs}
        self.docs = docs
        assert self.binary == os.path.join(self.prefix, "bin", "otlp-gateway"), (self.binary, self.prefix)
        if self.prefix == "/usr":
            assert (self.binary, self.config) == ("/usr/bin/otlp-gateway", "/etc/otlp-gateway/gateway.yaml")
            assert self.unit_text == read(UNIT_SRC), "with prefix /usr the unit is installed as shipped"


def read(path):
    with open(path) as f:
        return f.read()


def files_under(root):
    out = set()
    for d, _, names in os.walk(root):
        for n in names:
            out.add("/" + os.path.relpath(os.path.join(d, n), root))
    return out


# ---- the unit ---------------------------------------------------------------------------------------------------

def test_unit_settings():
    s = unit_settings(read(UNIT_SRC))
    one = {k: v[-1] for k, v in s.items()}
    assert s["ExecStart"] == ["/usr/bin/otlp-gateway --config /etc/otlp-gateway/gateway.yaml"], s["ExecStart"]
    assert s["ExecReload"] == ["/bin/kill -HUP $MAINPID"], s["ExecReload"]
    binary = read_bytes(args().gateway)
    if one["Type"] == "notify":
        assert b"NOTIFY_SOCKET" in binary, "Type=notify but the gateway does not speak sd_notify"
    assert one["Type"] in ("exec", "simple", "notify"), one["Type"]
    want = {"Restart": "on-failure", "KillSignal": "SIGTERM", "DynamicUser": "yes", "ProtectSystem": "strict",
            "StateDirectory": "otlp-gateway", "NoNewPrivileges": "yes", "CapabilityBoundingSet": "",
            "AmbientCapabilities": "", "PrivateTmp": "yes", "ProtectHome": "yes", "ProtectKernelTunables": "yes",
            "ProtectKernelModules": "yes", "ProtectControlGroups": "yes", "SystemCallArchitectures": "native",
            "WantedBy": "multi-user.target"}
    for k, v in want.items():
        assert one.get(k) == v, "%s=%r, want %r" % (k, one.get(k), v)
    assert set(one["RestrictAddressFamilies"].split()) == {"AF_INET", "AF_INET6", "AF_UNIX"}
    assert int(one["LimitNOFILE"]) >= 65536, one["LimitNOFILE"]
    # systemd's stop timeout above the gateway's drain deadline (its default), with a margin for the exit itself.
    drain = seconds(config_default("server.shutdown_timeout"))
    assert seconds(one["TimeoutStopSec"]) >= drain + 10, (one["TimeoutStopSec"], drain)
    # No capability: every default port (and every port the example config listens on) is unprivileged.
    ports = [config_default(k).rsplit(":", 1)[1] for k in ("server.listen", "server.grpc_listen", "telemetry.listen")]
    ports += re.findall(r'listen: "[^"]*:(\d+)"', read(EXAMPLE))
    assert len(ports) >= 6 and all(int(p) >= 1024 for p in ports), ports


def read_bytes(path):
    with open(path, "rb") as f:
        return f.read()


def verify_lines(unit_path):
    """systemd-analyze verify on a unit: (exit code, the output lines that are about this unit)."""
    r = run([need("systemd-analyze", "systemd"), "verify", unit_path], check=False, timeout=60)
    name = os.path.basename(unit_path)
    mine = [ln for ln in (r.stdout + r.stderr).splitlines() if name in ln or unit_path in ln]
    return r.returncode, mine, r.stdout + r.stderr


def test_systemd_analyze_verify():
    # verify checks that ExecStart's binary exists: a copy of the unit runs the built one.
    d = os.path.join(TMP, "verify")
    os.makedirs(d)
    copy = os.path.join(d, "otlp-gateway.service")
    text = read(UNIT_SRC).replace("/usr/bin/otlp-gateway", os.path.realpath(args().gateway))
    with open(copy, "w") as f:
        f.write(text)
    rc, mine, out = verify_lines(copy)
    assert rc == 0 and not mine, "systemd-analyze verify: rc %d:\n%s" % (rc, out)
    # The check can fail: a misspelt key is only a warning (exit 0), the line about the unit is what catches it.
    bad = os.path.join(TMP, "verify-bad")
    os.makedirs(bad)
    with open(os.path.join(bad, "otlp-gateway.service"), "w") as f:
        f.write(text.replace("ProtectHome=yes\n", "ProtectHome=yes\nProtectHomme=yes\n"))
    _, mine_bad, out = verify_lines(os.path.join(bad, "otlp-gateway.service"))
    assert any("ProtectHomme" in ln for ln in mine_bad), out
    # The sandbox as systemd rates it, a regression guard: 1.2 "OK" when written (0 best, 10 no sandbox);
    # --threshold counts tenths, 20 = 2.0.
    r = run(["systemd-analyze", "security", "--offline=true", "--threshold=20", "--no-pager", copy],
            check=False, timeout=60)
    assert r.returncode == 0, "exposure above 2.0:\n%s%s" % (r.stdout[-1500:], r.stderr[-1500:])
    assert re.search(r"Overall exposure level for otlp-gateway.service: \d", r.stdout), r.stdout[-500:]


# ---- cmake --install ----------------------------------------------------------------------------------------------

def test_fresh_configure_prefix():
    """Without a prefix, /usr and the unit as shipped; with one, the unit names that prefix's binary and config."""
    for prefix, binary, config in ((None, "/usr/bin/otlp-gateway", "/etc/otlp-gateway/gateway.yaml"),
                                   ("/opt/og", "/opt/og/bin/otlp-gateway", "/etc/opt/og/otlp-gateway/gateway.yaml")):
        b = os.path.join(TMP, "configure-%s" % (prefix or "default").strip("/").replace("/", "_"))
        argv = ["cmake", "-S", ROOT, "-B", b, "-DCMAKE_BUILD_TYPE=Release", "-DOTLPGW_TESTS=OFF"]
        run(argv + (["-DCMAKE_INSTALL_PREFIX=" + prefix] if prefix else []))
        assert cache(b, "CMAKE_INSTALL_PREFIX") == (prefix or "/usr")
        unit = read(os.path.join(b, "systemd", "otlp-gateway.service"))
        assert "ExecStart=%s --config %s\n" % (binary, config) in unit, unit
        assert read(os.path.join(b, "debian", "conffiles")) == config + "\n"
        if not prefix:
            assert unit == read(UNIT_SRC)
        shutil.rmtree(b)


def test_cmake_install_destdir():
    lay = Layout(build_dir())
    dest = os.path.join(TMP, "destdir")
    run(["cmake", "--install", lay.build], env=dict(os.environ, DESTDIR=dest))
    got = files_under(dest)
    assert got == lay.files, "missing %s, unexpected %s" % (sorted(lay.files - got), sorted(got - lay.files))
    binary = dest + lay.binary
    assert os.access(binary, os.X_OK)
    assert read(dest + lay.config) == read(EXAMPLE)
    assert read(dest + lay.unit) == lay.unit_text
    for d in lay.docs:
        src = os.path.join(ROOT, d) if d == "README.md" else os.path.join(ROOT, "docs", d)
        assert read(os.path.join(dest + lay.docdir, d)) == read(src), d
    r = run([binary, "--check-config", "--config", dest + lay.config])
    assert "ok" in r.stdout, r.stdout
    # The bench tools only on request, and nothing else with them.
    bench = os.path.join(TMP, "destdir-bench")
    run(["cmake", "--install", lay.build, "--component", "bench"], env=dict(os.environ, DESTDIR=bench))
    bindir = os.path.dirname(lay.binary)
    assert files_under(bench) == {bindir + "/otlp-load", bindir + "/otlp-sink"}, files_under(bench)


# ---- the .deb -------------------------------------------------------------------------------------------------------

_deb = {}


def build_deb():
    """cpack -G DEB of the test's build directory, into TMP (once per script): (deb path, Layout)."""
    if "path" not in _deb:
        need("dpkg-deb", "dpkg")
        need("dpkg-shlibdeps", "dpkg-dev")
        need("file", "file")  # CPackDeb finds the ELF files to hand to dpkg-shlibdeps with it
        lay = Layout(build_dir())
        out = os.path.join(TMP, "cpack")
        r = run(["cpack", "--config", os.path.join(lay.build, "CPackConfig.cmake"), "-G", "DEB", "-B", out],
                cwd=lay.build, timeout=240)
        debs = glob.glob(os.path.join(out, "*.deb"))
        assert len(debs) == 1, (debs, r.stdout)
        _deb["path"], _deb["layout"] = debs[0], lay
    return _deb["path"], _deb["layout"]


def deb_field(deb, name):
    return run(["dpkg-deb", "-f", deb, name]).stdout.strip()


def depends(deb):
    """{package name: constraint} of Depends (alternatives flattened)."""
    out = {}
    for dep in re.split(r"\s*[,|]\s*", deb_field(deb, "Depends")):
        m = re.match(r"([a-z0-9][a-z0-9+.-]+)(?::\w+)?\s*(\(.*\))?$", dep)
        assert m, dep
        out[m.group(1)] = m.group(2) or ""
    return out


def owning_package(path):
    """The package that ships a library path (dpkg -S knows it under /lib or /usr/lib: merged /usr)."""
    cands = [path, os.path.realpath(path)]
    for p in list(cands):
        cands.append(p[4:] if p.startswith("/usr/") else "/usr" + p)
    for p in cands:
        r = run(["dpkg", "-S", p], check=False, timeout=60)
        if r.returncode == 0:
            return r.stdout.split(":", 1)[0].split(",")[0].strip()
    raise AssertionError("no package ships %s" % path)


def test_deb_control():
    deb, lay = build_deb()
    assert os.path.basename(deb) == "otlp-gateway_%s_%s.deb" % (
        deb_field(deb, "Version"), deb_field(deb, "Architecture")), deb
    version = re.match(r"otlp-gateway (\S+)", run([args().gateway, "--version"]).stdout).group(1)
    assert deb_field(deb, "Package") == PKG
    assert deb_field(deb, "Version") == version
    assert deb_field(deb, "Architecture") == run(["dpkg", "--print-architecture"]).stdout.strip()
    assert deb_field(deb, "Section") == "net"
    assert re.match(r".+ <[^@ ]+@[^> ]+>$", deb_field(deb, "Maintainer")), deb_field(deb, "Maintainer")
    desc = deb_field(deb, "Description").splitlines()
    assert len(desc) >= 2 and len(desc[0]) < 80 and all(len(ln) <= 80 for ln in desc), desc
    deps = depends(deb)
    assert not [d for d in deps if d.endswith("-dev")], deps
    for want in ("libc6", "libuv1", "libssl3", "libyaml-0-2", "libprotobuf-c1", "libnghttp2-14", "libc-ares2"):
        assert want in deps, (want, deps)
    # Every shared library the binary links (NEEDED; ldd resolves it) comes from a package in Depends: what
    # shlibdeps is for.
    needed = re.findall(r"\(NEEDED\)\s+Shared library: \[(.+?)\]", run([need("readelf", "binutils"), "-d",
                                                                          args().gateway]).stdout)
    resolved = dict(re.findall(r"^\s*(\S+) => (/\S+)", run(["ldd", args().gateway]).stdout, re.M))
    assert "libuv.so.1" in needed, needed
    for lib in needed:
        if lib.startswith("ld-linux"):
            continue
        assert lib in resolved, (lib, resolved)
        pkg = owning_package(resolved[lib])
        assert pkg in deps, "%s (%s) is from %s, not in Depends: %s" % (lib, resolved[lib], pkg, deps)


def test_deb_contents_and_scripts():
    deb, lay = build_deb()
    listing = run(["dpkg-deb", "-c", deb]).stdout.splitlines()
    files, modes = set(), {}
    for ln in listing:
        f = ln.split()
        assert f[1] == "root/root", ln
        path = f[5][1:]  # "./usr/bin/x" -> "/usr/bin/x"
        if not f[0].startswith("d"):
            files.add(path)
            modes[path] = f[0]
    assert files == lay.files, "missing %s, unexpected %s" % (sorted(lay.files - files), sorted(files - lay.files))
    assert modes[lay.binary] == "-rwxr-xr-x" and modes[lay.config] == "-rw-r--r--", modes
    ctl = os.path.join(TMP, "control")
    run(["dpkg-deb", "-e", deb, ctl])
    assert read(os.path.join(ctl, "conffiles")).split() == [lay.config]
    unpacked = os.path.join(TMP, "unpacked")
    run(["dpkg-deb", "-x", deb, unpacked])
    assert read(unpacked + lay.unit) == lay.unit_text
    assert read(unpacked + lay.config) == read(EXAMPLE)
    starts = re.compile(r"systemctl\s+(--\S+\s+)*(enable|start|restart|try-restart|reload-or-restart|reenable|preset|"
                        r"unmask)|deb-systemd-(helper|invoke)|invoke-rc\.d|update-rc\.d")
    for s in ("postinst", "prerm", "postrm"):
        p = os.path.join(ctl, s)
        assert os.access(p, os.X_OK), s
        run(["sh", "-n", p])
        code = "\n".join(ln for ln in read(p).splitlines() if not ln.lstrip().startswith("#"))
        assert not starts.search(code), "%s enables or starts the service:\n%s" % (s, code)
    assert not os.path.exists(os.path.join(ctl, "preinst"))


# ---- dpkg -i / -r / -P (root) -------------------------------------------------------------------------------------

def dpkg(*argv):
    """dpkg with a bounded wait for its lock (another apt or dpkg on the machine)."""
    deadline = time.time() + T
    while True:
        r = run(["dpkg"] + list(argv), check=False)
        locked = r.returncode != 0 and re.search(r"lock", r.stderr) and re.search(r"locked|another process", r.stderr)
        if not locked or time.time() > deadline:
            break
        time.sleep(1)
    if r.returncode != 0:
        raise AssertionError("dpkg %s exited %d\n%s%s" % (" ".join(argv), r.returncode, r.stdout, r.stderr))
    return r


def status():
    """dpkg's status of the package ("" when dpkg knows nothing of it)."""
    r = run(["dpkg-query", "-W", "-f=${Status}", PKG], check=False, timeout=60)
    return r.stdout.strip() if r.returncode == 0 and "not-installed" not in r.stdout else ""


def take_lock():
    """Serialises the install tests of runs sharing the machine (bounded)."""
    fd = os.open(LOCK, os.O_CREAT | os.O_RDWR, 0o644)
    deadline = time.time() + T
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.time() > deadline:
                os.close(fd)
                raise AssertionError("%s held by another run for %d s" % (LOCK, T))
            time.sleep(0.5)


def purge():
    if status():
        run(["dpkg", "-P", PKG], check=False)


def enabled_links(name):
    """Every entry named after the unit under /etc/systemd (an enabled unit has a symlink in some *.wants/)."""
    out = []
    for d, dirs, files in os.walk("/etc/systemd"):
        out += [os.path.join(d, n) for n in dirs + files if n == name]
    return out


def test_dpkg_install_remove_purge():
    if os.geteuid() != 0:
        skip("not root: dpkg -i needs root (CI runs as root)")
    deb, lay = build_deb()
    fd = take_lock()
    prev = signal.getsignal(signal.SIGALRM)
    ours = []  # set once this test installs: a package found installed before is never purged

    def on_alarm(*a):  # the watchdog ends the script with os._exit: purge first
        if ours:
            purge()
        if callable(prev):
            prev(*a)

    try:
        assert status() == "", "%s is already known to dpkg (%s): this test installs and purges its own; " \
            "remove it first (dpkg -P %s)" % (PKG, status(), PKG)
        for p in (lay.binary, lay.config, lay.unit):
            assert not os.path.exists(p), "%s exists before the package is installed" % p
        signal.signal(signal.SIGALRM, on_alarm)
        ours.append(True)
        dpkg("-i", deb)
        assert status() == "install ok installed", status()
        r = run([lay.binary, "--version"])
        assert r.stdout.strip() == "otlp-gateway " + deb_field(deb, "Version"), r.stdout
        env = {k: v for k, v in os.environ.items() if not k.startswith("OTLP_GATEWAY_")}
        r = run([lay.binary, "--check-config", "--config", lay.config], env=env)
        assert "ok" in r.stdout, r.stdout
        assert read(lay.unit) == lay.unit_text
        rc, mine, out = verify_lines(lay.unit)  # the real paths exist now
        assert rc == 0 and not mine, "systemd-analyze verify %s: rc %d\n%s" % (lay.unit, rc, out)
        # Installed, not enabled (and so not started): no link under /etc/systemd, and systemctl agrees.
        assert enabled_links("otlp-gateway.service") == [], enabled_links("otlp-gateway.service")
        if shutil.which("systemctl"):
            r = run(["systemctl", "is-enabled", "otlp-gateway.service"], check=False, timeout=60)
            assert r.stdout.strip() == "disabled", (r.returncode, r.stdout, r.stderr)
            if os.path.isdir("/run/systemd/system"):  # systemd runs: the service must not be active either
                r = run(["systemctl", "is-active", "otlp-gateway.service"], check=False, timeout=60)
                assert r.stdout.strip() == "inactive", (r.stdout, r.stderr)
        # The config is a conffile: an edit survives a reinstall of the package, and its removal.
        conffiles = run(["dpkg-query", "-W", "-f=${Conffiles}", PKG]).stdout
        assert lay.config in conffiles, conffiles
        with open(lay.config, "a") as f:
            f.write("# edited by test_packaging\n")
        dpkg("-i", deb)
        assert read(lay.config).endswith("# edited by test_packaging\n"), "the reinstall overwrote the edited config"
        dpkg("-r", PKG)
        assert status() == "deinstall ok config-files", status()
        left = [p for p in lay.files if os.path.exists(p)]
        assert left == [lay.config], "after dpkg -r: %s" % left
        assert not os.path.exists(lay.docdir)
        dpkg("-P", PKG)
        assert status() == "", status()
        left = [p for p in lay.files | {os.path.dirname(lay.config), lay.docdir} if os.path.exists(p)]
        assert left == [], "after dpkg -P: %s" % left
    finally:
        if ours:
            purge()
        signal.signal(signal.SIGALRM, prev)
        os.close(fd)  # releases the lock


run_tests(globals())
