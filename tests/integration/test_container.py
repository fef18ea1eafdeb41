"""The container image of deploy/docker/Dockerfile, built and run with podman: the gateway and its collectors (here
otlp-sink, built from the same sources in a second image) in containers, the load from this host through the
published ports.

No registry is reachable, so the base image is made locally: `debootstrap --variant=minbase bookworm` (trimmed of
docs, man pages, locales and apt lists, like debian:bookworm-slim), imported once as localhost/otlpgw-test-base:
bookworm and kept for later runs; the Dockerfile is built with BUILD_IMAGE and RUNTIME_IMAGE pointing at it (the
build stage's apt-get reaches Debian's mirror as `apt-get` on this machine does). podman runs with a private
containers.conf: `default_ulimits = []` (podman's default RLIMIT_NOFILE of 1048576 needs CAP_SYS_RESOURCE, which a
sandboxed root may lack: "setrlimit RLIMIT_NOFILE: Operation not permitted"), and the first OCI runtime of runc,
crun ($OTLPGW_CONTAINER_RUNTIMES) that starts a container (crun refuses cgroups v1 with controllers on the v2
hierarchy: "cgroups in hybrid mode not supported"; runc does not).

What is checked: the image's metadata (numeric non-root user, EXPOSE and HEALTHCHECK as the image's own gateway
defaults say, its size printed); the compose recipe's gateway (deploy/compose/gateway.yaml mounted at the image's
config path, read-only root, its mem_limit, the spool on a volume) in front of three collectors by name: every span
sent over OTLP/HTTP and OTLP/gRPC arrives once with no trace split, the HEALTHCHECK passes, SIGHUP reloads, and the
stop within the compose stop_grace_period exits 0; OTLP_GATEWAY_BACKENDS with no config file; the Kubernetes config
(deploy/kubernetes/gateway.yaml) passes --check-config in the image, non-root on a read-only root with the spool on a
volume.

Needs podman, runc (or a crun that runs here) and debootstrap (apt-get install podman runc debootstrap); without
them, or when no runtime can start a container, the script skips naming what blocked it (a failure under CI=true),
unless OTLPGW_CONTAINER_RUNTIME=blocked says the runtime is known to be blocked on this machine: then it prints the
reason and exits 0."""
import atexit
import json
import os
import re
import shutil
import subprocess
import time

from harness import (TMP, WAIT, args, fresh, http_request, read_traces, run_load, run_tests, settled_delivery, skip,
                     wait_until)

try:
    import yaml
except ImportError:
    yaml = None

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
BLOCKED_ENV = "OTLPGW_CONTAINER_RUNTIME"     # "blocked": exit 0 with the reason instead of skipping
BASE = "localhost/otlpgw-test-base:bookworm"  # kept across runs: debootstrap takes a minute or two
RUN = "otlpgw-test-%d" % os.getpid()          # this run's containers, volumes and image tags
GW_IMAGE = "localhost/otlpgw-test:gw-%d" % os.getpid()
BUILD_IMAGE = "localhost/otlpgw-test:build-%d" % os.getpid()
SINK_IMAGE = "localhost/otlpgw-test:sink-%d" % os.getpid()
BUILD_TIMEOUT = 900  # per step; ctest gives the script 1200 s

STATE = {"env": None, "runtime": None, "containers": [], "volumes": [], "images": []}


def podman(*argv, timeout=WAIT, check=True, input=None):
    r = subprocess.run(["podman"] + list(argv), capture_output=True, text=True, env=STATE["env"], timeout=timeout,
                       input=input)
    if check:
        assert r.returncode == 0, "podman %s: exit %d\n%s%s" % (" ".join(argv)[:300], r.returncode, r.stdout[-2000:],
                                                               r.stderr[-3000:])
    return r


def last_error(r):
    """The line that says why a podman command failed (podman's own systemd-timer warnings left out)."""
    lines = [ln for ln in (r.stderr or "").splitlines() if ln.strip() and "systemd" not in ln]
    return lines[-1] if lines else "exit %d" % r.returncode


def blocked(reason):
    """No container can run here: with OTLPGW_CONTAINER_RUNTIME=blocked print why and exit 0, else skip (a
    failure under CI=true)."""
    if os.environ.get(BLOCKED_ENV, "") == "blocked":
        print("container tests not run (%s=blocked): %s" % (BLOCKED_ENV, reason), flush=True)
        raise SystemExit(0)
    skip(reason + " (set %s=blocked where this is known and accepted)" % BLOCKED_ENV)


def cleanup():
    if STATE["env"] is None:
        return
    for c in STATE["containers"]:
        podman("rm", "-f", "-t", "0", c, check=False, timeout=60)
    for v in STATE["volumes"]:
        podman("volume", "rm", "-f", v, check=False, timeout=60)
    for i in STATE["images"]:
        podman("rmi", "-f", i, check=False, timeout=120)  # the tags of this run; the layer cache stays
    STATE["containers"], STATE["volumes"], STATE["images"] = [], [], []


atexit.register(cleanup)


# ---- setup: tools, base image, runtime, images ---------------------------------------------------------

def make_base():
    """BASE from debootstrap, unless this machine has it from an earlier run."""
    if podman("image", "exists", BASE, check=False).returncode == 0:
        return
    root = os.path.join(TMP, "rootfs")
    mirror = os.environ.get("OTLPGW_DEBIAN_MIRROR", "http://deb.debian.org/debian")
    t0 = time.time()
    r = subprocess.run(["debootstrap", "--variant=minbase", "bookworm", root, mirror], capture_output=True,
                       text=True, timeout=BUILD_TIMEOUT)
    assert r.returncode == 0, "debootstrap --variant=minbase bookworm: exit %d\n%s" % (r.returncode,
                                                                                      (r.stdout + r.stderr)[-3000:])
    # As debian:bookworm-slim: no docs, man pages, locales, package lists or downloaded .debs.
    tar = subprocess.Popen(["tar", "-C", root, "--exclude=./usr/share/doc/*", "--exclude=./usr/share/man/*",
                            "--exclude=./usr/share/locale/*", "--exclude=./usr/share/info/*",
                            "--exclude=./var/lib/apt/lists/*", "--exclude=./var/cache/apt/*", "-c", "."],
                           stdout=subprocess.PIPE)
    imp = subprocess.run(["podman", "import", "-", BASE], stdin=tar.stdout, capture_output=True, text=True,
                         env=STATE["env"], timeout=600)
    tar.stdout.close()
    assert tar.wait() == 0 and imp.returncode == 0, "podman import: %s" % imp.stderr[-2000:]
    shutil.rmtree(root, ignore_errors=True)
    print("    base image %s made in %.0f s" % (BASE, time.time() - t0), flush=True)


def write_conf(runtime):
    conf = os.path.join(TMP, "containers.conf")
    with open(conf, "w") as f:
        f.write("[containers]\ndefault_ulimits = []\n")
        if runtime:
            f.write('[engine]\nruntime = "%s"\n' % runtime)
    STATE["env"] = dict(os.environ, CONTAINERS_CONF=conf)


def pick_runtime():
    """The first OCI runtime that starts a container here (of $OTLPGW_CONTAINER_RUNTIMES, default "runc crun"),
    or blocked() with what each one said."""
    tried = []
    for rt in os.environ.get("OTLPGW_CONTAINER_RUNTIMES", "runc crun").split():
        if not shutil.which(rt):
            tried.append("%s: not installed" % rt)
            continue
        r = podman("--runtime", rt, "run", "--rm", "--network", "none", BASE, "true", check=False, timeout=120)
        if r.returncode == 0:
            write_conf(rt)
            return rt
        tried.append("%s: %s" % (rt, last_error(r)))
    blocked("podman cannot start a container here: " + "; ".join(tried))


def setup():
    missing = [t for t in ("podman", "debootstrap") if not shutil.which(t)]
    if not (shutil.which("runc") or shutil.which("crun")):
        missing.append("runc")
    if missing:
        blocked("not installed: %s (apt-get install podman runc debootstrap)" % " ".join(missing))
    if yaml is None:
        skip("python3 has no yaml module: apt-get install python3-yaml")
    write_conf(None)
    r = podman("info", check=False, timeout=120)
    if r.returncode != 0:
        blocked("podman info: " + last_error(r))
    make_base()
    STATE["runtime"] = pick_runtime()
    t0 = time.time()
    common = ["build", "--format", "docker", "-f", os.path.join(ROOT, "deploy", "docker", "Dockerfile"),
              "--build-arg", "BUILD_IMAGE=" + BASE, "--build-arg", "RUNTIME_IMAGE=" + BASE]
    STATE["images"] += [GW_IMAGE, BUILD_IMAGE, SINK_IMAGE]
    podman(*common, "-t", GW_IMAGE, ROOT, timeout=BUILD_TIMEOUT)
    podman(*common, "--target", "build", "-t", BUILD_IMAGE, ROOT, timeout=BUILD_TIMEOUT)  # cached: the same stage
    ctx = os.path.join(TMP, "sink-image")
    os.makedirs(ctx, exist_ok=True)
    with open(os.path.join(ctx, "Dockerfile"), "w") as f:
        f.write("FROM %s AS build\n"
                "RUN cmake --build /build --target otlp-sink -j\"$(nproc)\" && strip /build/otlp-sink\n"
                "FROM %s\n"
                "COPY --from=build /build/otlp-sink /usr/local/bin/otlp-sink\n"
                'ENTRYPOINT ["/usr/local/bin/otlp-sink"]\n' % (BUILD_IMAGE, GW_IMAGE))
    podman("build", "--format", "docker", "-t", SINK_IMAGE, ctx, timeout=BUILD_TIMEOUT)
    print("    images built in %.0f s with runtime %s" % (time.time() - t0, STATE["runtime"]), flush=True)


# ---- containers ----------------------------------------------------------------------------------------

def inspect(ref, what="image"):
    return json.loads(podman(what, "inspect", ref).stdout)[0]


def image_defaults():
    """The ports of the image's own gateway (--print-config-reference run in the image)."""
    out = podman("run", "--rm", GW_IMAGE, "--print-config-reference").stdout
    ports = {}
    for key, name in (("server.grpc_listen", "grpc"), ("server.listen", "http"), ("telemetry.listen", "telemetry")):
        m = re.search(r"^\| `%s` \| [^|]+ \| `\"[^\"]*:(\d+)\"` \|" % re.escape(key), out, re.M)
        assert m, "no default of %s in the image's --print-config-reference" % key
        ports[name] = int(m.group(1))
    return ports


def config_path():
    with open(os.path.join(ROOT, "deploy", "docker", "entrypoint.sh")) as f:
        return re.search(r"^CONFIG=(\S+)$", f.read(), re.M).group(1)


def start(name, *argv):
    """podman run -d; the container is this run's (removed at the end)."""
    full = "%s-%s" % (RUN, name)
    STATE["containers"].append(full)
    podman("run", "-d", "--name", full, *argv, timeout=120)
    return full


def ip_of(container):
    return inspect(container, "container")["NetworkSettings"]["IPAddress"]


def host_port(container, port):
    out = podman("port", container, "%d/tcp" % port).stdout.split()
    return int(out[0].rsplit(":", 1)[1])


def logs(container):
    r = podman("logs", container, check=False)
    return r.stdout + r.stderr


def wait_log(container, rx, timeout=WAIT):
    return wait_until(lambda: re.search(rx, logs(container)), lambda m: m is not None, timeout,
                      "log line /%s/ of %s" % (rx, container))


def start_collectors(names, out_dir):
    """One otlp-sink container per name, OTLP/HTTP on :4318 writing its trace file into out_dir, and a second
    sink on :13133 answering the gateway's health checks (the collectors' health_check extension port)."""
    ips = {}
    for n in names:
        c = start(n, "--no-healthcheck", "-v", "%s:/out" % out_dir, "--entrypoint", "/bin/bash", SINK_IMAGE, "-c",
                  "otlp-sink --listen 0.0.0.0:13133 --no-decode & "
                  "exec otlp-sink --listen 0.0.0.0:4318 --trace-file /out/%s.traces.txt" % n)
        wait_log(c, r"listening on 0\.0\.0\.0:4318")
        ips[n] = ip_of(c)
    return ips


def sink_items(ip, signal="traces"):
    st, _, body = http_request(4318, "GET", "/stats", host=ip)
    assert st == 200, st
    return json.loads(body)[signal]["items"]


def wait_ready(container, port):
    def status():
        try:
            return http_request(port, "GET", "/readyz")[0]
        except OSError:
            return None
    wait_until(status, lambda s: s == 200, 60, "/readyz of %s" % container)


def stop(container, grace):
    """podman stop (SIGTERM, then SIGKILL after grace): the gateway must have exited 0 by itself."""
    podman("stop", "-t", str(grace), container, timeout=grace + 60)
    st = inspect(container, "container")["State"]
    assert st["ExitCode"] == 0, "%s exited %s after SIGTERM:\n%s" % (container, st["ExitCode"], logs(container)[-3000:])
    assert "msg=stopped" in logs(container), logs(container)[-2000:]


def compose_gateway():
    with open(os.path.join(ROOT, "deploy", "compose", "docker-compose.yaml")) as f:
        return yaml.safe_load(f)["services"]["gateway"]


def seconds(d):
    m = re.fullmatch(r"(\d+)(ms|s|m|h)", str(d))
    return int(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[m.group(2)]


# ---- tests ---------------------------------------------------------------------------------------------

def test_image_metadata_and_size():
    img = inspect(GW_IMAGE)
    cfg = img["Config"]
    user = cfg.get("User", "")
    assert re.fullmatch(r"[1-9]\d*(:\d+)?", user), "image user %r: not numeric non-root" % user
    ports = image_defaults()
    assert sorted(cfg["ExposedPorts"]) == sorted("%d/tcp" % p for p in ports.values()), (cfg["ExposedPorts"], ports)
    hc = (img.get("Healthcheck") or cfg.get("Healthcheck") or {}).get("Test", [])  # podman: at the top level
    assert "/healthz" in hc and any("otlp-gateway-probe" in t for t in hc), hc
    r = podman("run", "--rm", GW_IMAGE, "id", "-u")
    assert r.stdout.strip() == user.split(":")[0], r.stdout
    r = podman("run", "--rm", GW_IMAGE, "--version")
    host = subprocess.run([args().gateway, "--version"], capture_output=True, text=True, timeout=WAIT).stdout
    assert r.stdout == host, (r.stdout, host)
    size, base = inspect(GW_IMAGE)["Size"], inspect(BASE)["Size"]
    print("    image %.1f MB (base %.1f MB + %.1f MB of gateway and libraries)" % (
        size / 1e6, base / 1e6, (size - base) / 1e6))


def test_compose_gateway_in_front_of_three_collectors():
    svc = compose_gateway()
    grace = int(seconds(svc["stop_grace_period"]))
    cfg_file = [v.split(":")[0] for v in svc["volumes"] if v.split(":")[1] == config_path()][0]
    cfg_file = os.path.normpath(os.path.join(ROOT, "deploy", "compose", cfg_file))
    with open(cfg_file) as f:
        cfg = yaml.safe_load(f)
    names = [re.match(r"http://([^:]+):", b["endpoint"]).group(1) for b in cfg["backends"]["static"]]
    out = os.path.join(TMP, "compose-out")
    os.makedirs(out, exist_ok=True)
    os.chmod(out, 0o777)  # the sinks run as the image's user
    for n in names:
        fresh(os.path.join(out, "%s.traces.txt" % n))
    ips = start_collectors(names, out)
    vol = "%s-spool" % RUN
    STATE["volumes"].append(vol)
    ports = image_defaults()
    argv = ["--health-interval", "disable", "--memory", str(svc["mem_limit"]), "-v", "%s:%s:ro" % (cfg_file,
            config_path()), "-v", "%s:/var/lib/otlp-gateway" % vol]
    if svc.get("read_only"):
        argv.append("--read-only")
    for n, ip in ips.items():
        argv += ["--add-host", "%s:%s" % (n, ip)]
    for p in ports.values():
        argv += ["-p", "127.0.0.1::%d" % p]
    gw = start("gateway", *argv, GW_IMAGE)
    wait_log(gw, r"msg=started .*config=%s" % re.escape(config_path()))
    http, grpc, tele = (host_port(gw, ports[k]) for k in ("http", "grpc", "telemetry"))
    wait_ready(gw, tele)
    acked = fresh(os.path.join(TMP, "compose.acked.txt"))
    res, o = run_load("http://127.0.0.1:%d" % http, "--connections", "4", "--requests", "200", "--spans", "20",
                      "--traces", "5", "--trace-file", acked)
    assert res["ok"] == 200, o
    res, o = run_load("http://127.0.0.1:%d" % grpc, "--grpc", "--connections", "2", "--streams", "4",
                      "--requests", "100", "--spans", "20", "--traces", "5", "--trace-file", acked)
    assert res["ok"] == 100, o
    d = settled_delivery(read_traces(acked, strict=True), [os.path.join(out, "%s.traces.txt" % n) for n in names])
    assert d["lost"] == 0 and d["duplicates"] == 0 and d["split"] == 0 and d["unknown_traces"] == 0, \
        {k: v for k, v in d.items() if k != "where"}
    assert d["acked_spans"] == 300 * 20 and min(d["per_sink"]) > 0, d["per_sink"]
    assert sum(sink_items(ip) for ip in ips.values()) == 300 * 20
    st, _, body = http_request(tele, "GET", "/metrics")
    for n in names:
        assert 'otlp_gateway_backend_up{backend="http://%s:4318"} 1' % n in body.decode(), n
    r = podman("healthcheck", "run", gw, check=False)
    assert r.returncode == 0, "HEALTHCHECK: %s %s" % (r.stdout, r.stderr)
    r = podman("exec", gw, "otlp-gateway-probe", "/readyz", check=False)
    assert r.returncode == 0, r.stderr
    spool = podman("exec", gw, "ls", "/var/lib/otlp-gateway/spool").stdout.split()
    assert "lock" in spool, spool
    podman("kill", "--signal", "HUP", gw)
    wait_log(gw, r"msg=\"config reloaded\"")
    stop(gw, grace)


def test_backends_from_the_environment_without_a_file():
    out = os.path.join(TMP, "env-out")
    os.makedirs(out, exist_ok=True)
    os.chmod(out, 0o777)
    ips = start_collectors(["envsink"], out)
    ports = image_defaults()
    gw = start("env-gateway", "--health-interval", "disable", "--read-only", "-e",
               "OTLP_GATEWAY_BACKENDS=http://%s:4318" % ips["envsink"], "-p", "127.0.0.1::%d" % ports["http"],
               "-p", "127.0.0.1::%d" % ports["telemetry"], GW_IMAGE)
    wait_log(gw, r"msg=started .*config=\(defaults\)")
    wait_ready(gw, host_port(gw, ports["telemetry"]))
    res, o = run_load("http://127.0.0.1:%d" % host_port(gw, ports["http"]), "--connections", "1", "--requests",
                      "10", "--spans", "10")
    assert res["ok"] == 10, o
    wait_until(lambda: sink_items(ips["envsink"]), lambda n: n == 100, WAIT, "spans at the sink")
    stop(gw, 40)


def test_kubernetes_config_checks_in_the_image():
    """deploy/kubernetes/gateway.yaml as the Deployment runs it: mounted at the config path, read-only root, the
    spool directory on a volume (the Deployment's emptyDir), the image's non-root user."""
    vol = "%s-k8s-spool" % RUN
    STATE["volumes"].append(vol)
    cfg = os.path.join(ROOT, "deploy", "kubernetes", "gateway.yaml")
    r = podman("run", "--rm", "--no-healthcheck", "--read-only", "-v", "%s:%s:ro" % (cfg, config_path()), "-v",
               "%s:/var/lib/otlp-gateway" % vol, GW_IMAGE, "--check-config", check=False)
    assert r.returncode == 0 and "%s: ok" % config_path() in r.stdout, (r.returncode, r.stdout, r.stderr)
    # Without the volume the read-only root has nowhere for the spool: the check says so.
    r = podman("run", "--rm", "--no-healthcheck", "--read-only", "-v", "%s:%s:ro" % (cfg, config_path()), GW_IMAGE,
               "--check-config", check=False)
    assert r.returncode == 1 and "/var/lib/otlp-gateway/spool" in r.stderr, (r.returncode, r.stdout, r.stderr)


run_tests(globals(), setup=setup)
