"""The otlp-gateway command line: --version, --help, --check-config (exit codes and FILE:LINE:COL errors),
OTLP_GATEWAY_CONFIG, OTLP_GATEWAY_BACKENDS, no backends, SIGHUP with a bad config, SIGTERM."""
import os
import re
import signal
import subprocess

from harness import WAIT, Gateway, args, gateway_config, http_request, run_tests, write_config


def gw(*argv, env=None):
    e = {k: v for k, v in os.environ.items() if not k.startswith("OTLP_GATEWAY_")}
    e.update(env or {})
    return subprocess.run([args().gateway] + list(argv), capture_output=True, text=True, env=e, timeout=WAIT)


def test_version_and_help():
    r = gw("--version")
    assert r.returncode == 0 and re.match(r"otlp-gateway \d+\.\d+\.\d+", r.stdout), r.stdout
    r = gw("--help")
    assert r.returncode == 0 and "--check-config" in r.stdout and "OTLP_GATEWAY_BACKENDS" in r.stdout
    r = gw("--bogus")
    assert r.returncode == 2


def test_check_config_ok():
    path = write_config(gateway_config(), "ok.yaml")
    r = gw("--check-config", "--config", path)
    assert r.returncode == 0, r.stderr
    assert "ok" in r.stdout


def test_check_config_errors_have_position():
    cases = {
        "server:\n  listn: \"x\"\n": r":2:3: .*unknown key",
        "server:\n  read_timeout: 3x\n": r":2:17: .*read_timeout",
        "backends:\n  static:\n    - {endpoint: \"ftp://a:1\"}\n": r":3:\d+: .*endpoint",
        "server: [1, 2\n": r":\d+:\d+: ",
    }
    for i, (text, rx) in enumerate(cases.items()):
        path = write_config(text, "bad%d.yaml" % i)
        r = gw("--check-config", "--config", path)
        assert r.returncode == 1, (text, r.returncode)
        line = r.stderr.strip()
        assert "\n" not in line, line
        assert line.startswith(path + ":"), line
        assert re.search(rx, line), (rx, line)


def test_check_config_missing_file_and_no_backends():
    r = gw("--check-config", "--config", "/nonexistent/gw.yaml")
    assert r.returncode == 1 and r.stderr.startswith("/nonexistent/gw.yaml"), r.stderr
    path = write_config("server:\n  listen: \"127.0.0.1:0\"\n", "nobackends.yaml")
    r = gw("--check-config", "--config", path)
    assert r.returncode == 1 and "no backends" in r.stderr, r.stderr


def test_env_config_and_env_backends():
    path = write_config(gateway_config(), "env.yaml")
    r = gw("--check-config", env={"OTLP_GATEWAY_CONFIG": path})
    assert r.returncode == 0 and path in r.stdout, (r.stdout, r.stderr)
    r = gw("--check-config", env={"OTLP_GATEWAY_BACKENDS": "http://c1:4318, http://c2:4318"})
    assert r.returncode == 0 and "2 static backends" in r.stdout, (r.stdout, r.stderr)
    r = gw("--check-config", env={"OTLP_GATEWAY_BACKENDS": "http://c1:4318,https://c2/otlp"})  # https + prefix
    assert r.returncode == 0 and "2 static backends" in r.stdout, (r.stdout, r.stderr)
    r = gw("--check-config", env={"OTLP_GATEWAY_BACKENDS": "http://c1:4318,ftp://c2"})
    assert r.returncode == 1 and "OTLP_GATEWAY_BACKENDS" in r.stderr, r.stderr
    r = gw()  # no config, no env: one line and exit 1
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1 and "no backends" in r.stderr, r.stderr


def test_env_expansion_in_config():
    text = gateway_config(backends=("${env:GW_TEST_BACKEND}",), tokens=["${env:GW_TEST_TOKEN:-fallback}"])
    path = write_config(text, "expand.yaml")
    r = gw("--check-config", "--config", path, env={"GW_TEST_BACKEND": "http://127.0.0.1:4999"})
    assert r.returncode == 0, r.stderr
    r = gw("--check-config", "--config", path)
    assert r.returncode == 1 and "GW_TEST_BACKEND" in r.stderr, r.stderr


def test_check_config_accepts_every_example():
    """Every file in config/examples passes --check-config, given a value for each ${env:NAME} it uses without a
    default (a port for *_PORT); grafana-cloud.yaml without its token names the variable."""
    here = os.path.dirname(os.path.abspath(__file__))
    root = os.path.normpath(os.path.join(here, "..", "..", "config", "examples"))
    files = sorted(f for f in os.listdir(root) if f.endswith((".yaml", ".yml")))
    assert "grafana-cloud.yaml" in files and "gateway.yaml" in files, files
    for f in files:
        path = os.path.join(root, f)
        with open(path) as fh:
            needed = set(re.findall(r"\$\{env:([A-Za-z_][A-Za-z0-9_]*)\}", fh.read()))
        env = {n: str(4901 + i) if n.endswith("_PORT") else "dGVzdDp0ZXN0" for i, n in enumerate(sorted(needed))}
        r = gw("--check-config", "--config", path, env=env)
        print("    %s (env %s): exit %d %s" % (f, ",".join(sorted(needed)) or "-", r.returncode,
                                                (r.stdout + r.stderr).strip()[:200]), flush=True)
        assert r.returncode == 0 and "ok" in r.stdout, (f, r.stdout, r.stderr)
    r = gw("--check-config", "--config", os.path.join(root, "grafana-cloud.yaml"))
    assert r.returncode == 1 and "GRAFANA_CLOUD_OTLP_TOKEN" in r.stderr, r.stderr


def test_listen_failure_is_reported():
    g = Gateway(gateway_config())
    text = gateway_config().replace('listen: "127.0.0.1:0"\n  workers', 'listen: "127.0.0.1:%d"\n  workers' % g.port, 1)
    assert ":%d" % g.port in text
    path = write_config(text, "busy.yaml")
    r = gw("--config", path)
    assert r.returncode == 1 and "cannot listen" in r.stderr, r.stderr
    assert g.stop() == 0


def test_sighup_bad_config_keeps_running_and_sigterm_exits_zero():
    g = Gateway(gateway_config())
    with open(g.config_path, "w") as f:
        f.write("server:\n  bogus: 1\n")
    g.signal(signal.SIGHUP)
    g.wait_line(r"config reload failed.*unknown key")
    assert http_request(g.port, "POST", "/v1/traces", b"", {"Content-Type": "application/x-protobuf"})[0] == 200
    with open(g.config_path, "w") as f:
        f.write(gateway_config())
    g.signal(signal.SIGHUP)
    g.wait_line(r"msg=\"config reloaded\"")
    g.signal(signal.SIGTERM)
    assert g.wait() == 0
    # it stopped on the signal, through the orderly shutdown (not at its deadline)
    assert g.lines(r'msg="shutting down" signal=SIGTERM') and g.lines(r"msg=stopped"), g.err[-5:]
    assert not g.lines(r"shutdown deadline reached"), g.err[-5:]


def test_queue_directory_must_be_absolute_writable_and_free():
    # A relative path is a config error at its position (--check-config, start and SIGHUP reload alike).
    text = gateway_config(extra="  queue:\n    directory: spool/otlp-gateway\n")
    line_no = text.splitlines().index("    directory: spool/otlp-gateway") + 1
    path = write_config(text, "spool-relative.yaml")
    want = "%s:%d:16: backends.queue.directory: must be an absolute path" % (path, line_no)
    r = gw("--check-config", "--config", path)
    assert r.returncode == 1 and r.stderr.strip() == want, (r.returncode, r.stderr)
    r = gw("--config", path)  # start: refused before listening, the same one line
    assert r.returncode == 1 and r.stderr.strip() == want, (r.returncode, r.stderr)
    g = Gateway(gateway_config())
    with open(g.config_path, "w") as f:
        f.write(text)
    g.signal(signal.SIGHUP)
    g.wait_line(r"config reload failed.*must be an absolute path")
    assert http_request(g.port, "POST", "/v1/traces", b"", {"Content-Type": "application/x-protobuf"})[0] == 200
    g.signal(signal.SIGTERM)
    assert g.wait() == 0
    # A directory that cannot be created or written (here: under a regular file, which even root cannot make a
    # directory in) is a start-up and --check-config error naming the path.
    blocker = write_config("not a directory\n", "spool-blocker")
    bad_dir = os.path.join(blocker, "spool")
    path = write_config(gateway_config(extra="  queue:\n    directory: %s\n" % bad_dir), "spool-unwritable.yaml")
    for argv in (("--check-config", "--config", path), ("--config", path)):
        r = gw(*argv)
        assert r.returncode == 1 and bad_dir in r.stderr, (argv, r.returncode, r.stderr)
    # A directory another running gateway holds (its lock): both refused, naming it; free again once it stopped.
    held_dir = os.path.join(os.path.dirname(blocker), "spool-held")
    text = gateway_config(extra="  queue:\n    directory: %s\n" % held_dir)
    holder = Gateway(text, name="spool-holder.yaml")
    path = write_config(text, "spool-second.yaml")
    for argv in (("--check-config", "--config", path), ("--config", path)):
        r = gw(*argv)
        assert r.returncode == 1 and held_dir in r.stderr and "held by another running gateway" in r.stderr, (
            argv, r.returncode, r.stderr)
    holder.signal(signal.SIGTERM)
    assert holder.wait() == 0
    r = gw("--check-config", "--config", path)
    assert r.returncode == 0, r.stderr


def test_docs_config_reference_matches_code():
    r = gw("--print-config-reference")
    assert r.returncode == 0 and r.stdout.startswith("| key |")
    doc = open(os.path.join(os.path.dirname(__file__), "..", "..", "docs", "config.md")).read()
    table = doc[doc.index("| key |"):]
    assert table == r.stdout, "docs/config.md is stale: regenerate it with otlp-gateway --print-config-reference"


run_tests(globals())
