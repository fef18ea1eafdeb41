"""The deploy recipes under deploy/ (docker, compose, kubernetes) against the gateway itself: every YAML document
parses, every gateway config under deploy/ and config/examples/ passes `otlp-gateway --check-config`, and the
ports, probe paths, config path, grace periods and memory limits the recipes use agree with the gateway's own
defaults (read from `otlp-gateway --print-config-reference`) and with each other. The image's health-check script
runs against a real gateway. Needs python3-yaml (a skip without it: a failure under CI=true); promtool (already a
test dependency) checks prometheus.yml; `docker-compose config` and `kubectl kustomize` add a schema check and a
real kustomize build when they are installed (a line says when they are not)."""
import glob
import os
import re
import shutil
import subprocess

from harness import TMP, WAIT, Gateway, args, gateway_config, run_tests, skip

try:
    import yaml
except ImportError:  # python3-yaml; every test then skips with the reason
    yaml = None

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
DEPLOY = os.path.join(ROOT, "deploy")
DOCKER = os.path.join(DEPLOY, "docker")
COMPOSE_DIR = os.path.join(DEPLOY, "compose")
K8S = os.path.join(DEPLOY, "kubernetes")
GATEWAY_SECTIONS = {"server", "telemetry", "routing", "backends"}


def need_yaml():
    if yaml is None:
        skip("python3 has no yaml module: apt-get install python3-yaml")


def rel(path):
    return os.path.relpath(path, ROOT)


def load_docs(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f)]


def load_one(path):
    docs = load_docs(path)
    assert len(docs) == 1 and isinstance(docs[0], dict), "%s: expected one YAML mapping" % rel(path)
    return docs[0]


def yaml_files(top):
    out = []
    for d, _, files in os.walk(top):
        out += [os.path.join(d, f) for f in files if f.endswith((".yaml", ".yml"))]
    return sorted(out)


def is_gateway_config(doc):
    """A gateway config: a mapping of only the gateway's top-level sections, with at least one of them."""
    return isinstance(doc, dict) and doc and set(doc) <= GATEWAY_SECTIONS


# ---- the gateway's own defaults ------------------------------------------------------------------------

_REF = None


def reference():
    """key -> (default, help) from `otlp-gateway --print-config-reference` (the markdown table)."""
    global _REF
    if _REF is None:
        r = subprocess.run([args().gateway, "--print-config-reference"], capture_output=True, text=True,
                           timeout=WAIT)
        assert r.returncode == 0, r.stderr
        _REF = {}
        for ln in r.stdout.splitlines():
            cells = [c.strip() for c in re.split(r"(?<!\\)\|", ln)[1:-1]]
            if len(cells) == 4 and cells[0].startswith("`"):
                _REF[cells[0].strip("`")] = (cells[2].strip("`").strip('"'), cells[3])
        assert "server.listen" in _REF, "no server.listen in --print-config-reference:\n" + r.stdout[:500]
    return _REF


def default(key):
    return reference()[key][0]


def port_of(hostport):
    return int(str(hostport).rsplit(":", 1)[1])


def default_ports():
    """{"grpc": 4317, "http": 4318, "telemetry": 8888} as the gateway's defaults say."""
    return {"grpc": port_of(default("server.grpc_listen")), "http": port_of(default("server.listen")),
            "telemetry": port_of(default("telemetry.listen"))}


def probe_paths():
    """The telemetry listener's paths as its help text names them (/metrics, /healthz, /readyz)."""
    paths = re.findall(r"(/[a-z]+)", reference()["telemetry.listen"][1])
    for p in ("/metrics", "/healthz", "/readyz"):
        assert p in paths, "telemetry.listen's help no longer names %s: %r" % (p, reference()["telemetry.listen"])
    return paths


def seconds(d):
    """A gateway duration (250ms, 30s, 2m, 1h) in seconds."""
    m = re.fullmatch(r"(\d+)(ms|s|m|h)", str(d).strip())
    assert m, "not a duration: %r" % d
    return int(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[m.group(2)]


def gw_bytes(s):
    """A gateway size (65536, 64KiB, 768MiB, 1GiB, 10KB, 1MB) in bytes."""
    m = re.fullmatch(r"(\d+)\s*([KMGT]i?B)?", str(s).strip())
    assert m, "not a size: %r" % s
    unit = m.group(2) or ""
    mult = {"": 1}
    for i, p in enumerate("KMGT"):
        mult[p + "iB"] = 1024 ** (i + 1)
        mult[p + "B"] = 1000 ** (i + 1)
    return int(m.group(1)) * mult[unit]


def k8s_bytes(q):
    """A Kubernetes memory quantity (1Gi, 768Mi, 1G, 512M, 1073741824) in bytes."""
    m = re.fullmatch(r"(\d+)([KMGT]i?)?", str(q).strip())
    assert m, "not a memory quantity: %r" % q
    u = m.group(2) or ""
    return int(m.group(1)) * (1024 ** ("KMGT".index(u[0]) + 1) if u.endswith("i") else
                              1000 ** ("KMGT".index(u[0]) + 1) if u else 1)


def docker_bytes(q):
    """A compose mem_limit (768m, 1g, 512000k, or bytes: 1024-based) in bytes."""
    m = re.fullmatch(r"(\d+)([bkmg]?)", str(q).strip().lower())
    assert m, "not a compose memory size: %r" % q
    return int(m.group(1)) * 1024 ** "bkmg".index(m.group(2) or "b")


def gw_value(cfg, key):
    """cfg's value of a dotted key, else the gateway's default."""
    node = cfg
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return default(key)
        node = node[part]
    return node


def expand_env_defaults(s):
    """${env:NAME:-default} -> default (what the gateway runs with when NAME is unset)."""
    return re.sub(r"\$\{env:[A-Za-z_][A-Za-z0-9_]*:-([^}]*)\}", r"\1", str(s))


# ---- the recipes' own single sources -------------------------------------------------------------------

def config_path():
    """Where the image reads its config file: deploy/docker/entrypoint.sh's CONFIG (the one place it is named)."""
    with open(os.path.join(DOCKER, "entrypoint.sh")) as f:
        m = re.search(r"^CONFIG=(\S+)$", f.read(), re.M)
    assert m, "deploy/docker/entrypoint.sh: no CONFIG=PATH line"
    return m.group(1)


def dockerfile():
    with open(os.path.join(DOCKER, "Dockerfile")) as f:
        text = f.read()
    return re.sub(r"\\\n", " ", text)  # continuation lines joined


def dockerfile_stages():
    """[(from, [instruction lines])] per FROM."""
    stages = []
    for ln in dockerfile().splitlines():
        s = ln.strip()
        if not s or s.startswith("#"):
            continue
        if s.upper().startswith("FROM "):
            stages.append((s.split()[1], []))
        elif stages:
            stages[-1][1].append(s)
    return stages


def apt_packages(lines):
    """Packages of every `apt-get install` in these RUN lines."""
    pkgs = []
    for ln in lines:
        for m in re.finditer(r"apt-get install((?:\s+[-\w.+:]+)+)", ln):
            pkgs += [w for w in m.group(1).split() if not w.startswith("-")]
    return pkgs


def image_uid():
    users = [ln.split()[1] for ln in dockerfile_stages()[-1][1] if ln.upper().startswith("USER ")]
    assert users, "the runtime stage sets no USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, "USER %s: must be numeric (runAsNonRoot) and not root" % users[-1]
    return int(uid)


# ---- every YAML document, every gateway config ---------------------------------------------------------

def test_every_yaml_document_under_deploy_parses():
    need_yaml()
    files = yaml_files(DEPLOY)
    assert len(files) >= 15, "only %d YAML files under deploy/: %s" % (len(files), files)
    n = 0
    for path in files:
        try:
            docs = load_docs(path)
        except yaml.YAMLError as e:
            raise AssertionError("%s does not parse: %s" % (rel(path), e))
        for i, d in enumerate(docs):
            assert isinstance(d, dict), "%s: document %d is %r, not a mapping" % (rel(path), i + 1, type(d))
            n += 1
    multi = [rel(p) for p in files if len(load_docs(p)) > 1]
    assert multi, "no multi-document file found: the walk must load every document of a file"
    print("    %d YAML files, %d documents (multi-document: %s)" % (len(files), n, ", ".join(multi)))


def gateway_configs():
    """Every gateway config under deploy/ and config/examples/."""
    out = []
    for path in yaml_files(DEPLOY) + yaml_files(os.path.join(ROOT, "config", "examples")):
        docs = load_docs(path)
        if len(docs) == 1 and is_gateway_config(docs[0]):
            out.append(path)
    return out


# Values for the ${env:NAME} (without a default) the shipped configs use; any other NAME gets a port (a distinct
# one per name: the demo's three sinks must be three backends) if it ends in PORT, else a token-like value.
ENV_VALUES = {"GRAFANA_CLOUD_OTLP_TOKEN": "aW5zdGFuY2U6dG9rZW4="}


def check_env(path, text):
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTLP_GATEWAY_")}
    for i, name in enumerate(sorted(set(re.findall(r"\$\{env:([A-Za-z_][A-Za-z0-9_]*)\}", text)))):
        env[name] = ENV_VALUES.get(name, str(14318 + i) if name.endswith("PORT") else "test-value")
    # A spool directory the check may create and lock: never the real /var/lib/otlp-gateway of this machine.
    env["OTLP_GATEWAY_SPOOL_DIR"] = os.path.join(TMP, "spool-" + re.sub(r"\W", "_", rel(path)))
    return env


def test_every_gateway_config_passes_check_config():
    need_yaml()
    configs = gateway_configs()
    names = [rel(p) for p in configs]
    for must in ("deploy/compose/gateway.yaml", "deploy/kubernetes/gateway.yaml", "config/examples/gateway.yaml",
                 "config/examples/demo.yaml", "config/examples/grafana-cloud.yaml"):
        assert must in names, "%s not found as a gateway config (found: %s)" % (must, names)
    for path in configs:
        with open(path) as f:
            text = f.read()
        checked = path
        spool = (load_one(path).get("backends") or {}).get("queue", {}).get("directory", "")
        if spool and "${env:" not in spool:
            # A fixed spool directory (the check creates and locks it): a copy with one under TMP is checked.
            checked = os.path.join(TMP, "fixed-spool-" + os.path.basename(path))
            with open(checked, "w") as f:
                f.write(text.replace(spool, os.path.join(TMP, "spool-fixed-" + os.path.basename(path))))
        r = subprocess.run([args().gateway, "--check-config", "--config", checked], capture_output=True, text=True,
                           env=check_env(path, text), timeout=WAIT)
        assert r.returncode == 0 and ": ok (" in r.stdout, "%s: --check-config exit %d\n%s%s" % (
            rel(path), r.returncode, r.stdout, r.stderr)
        print("    %s" % r.stdout.strip())
    # The check really checks: the same walk on a copy with one wrong key fails.
    bad = os.path.join(TMP, "bad-deploy.yaml")
    with open(configs[0]) as f, open(bad, "w") as g:
        g.write(f.read() + "\nserver_typo: 1\n")
    r = subprocess.run([args().gateway, "--check-config", "--config", bad], capture_output=True, text=True,
                       env=check_env(bad, ""), timeout=WAIT)
    assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)


def listen_ports(cfg):
    """The ports a gateway config listens on (its values, else the defaults)."""
    return {"grpc": port_of(gw_value(cfg, "server.grpc_listen")), "http": port_of(gw_value(cfg, "server.listen")),
            "telemetry": port_of(gw_value(cfg, "telemetry.listen"))}


# ---- the image -----------------------------------------------------------------------------------------

def test_dockerfile_exposes_and_probes_the_defaults():
    stages = dockerfile_stages()
    assert len(stages) >= 2, "not a multi-stage Dockerfile: %s" % [s[0] for s in stages]
    runtime = stages[-1][1]
    expose = sorted(int(p.split("/")[0]) for ln in runtime if ln.upper().startswith("EXPOSE ") for p in ln.split()[1:])
    assert expose == sorted(default_ports().values()), "EXPOSE %s, defaults %s" % (expose, default_ports())
    hc = [ln for ln in runtime if ln.upper().startswith("HEALTHCHECK ")]
    assert len(hc) == 1, hc
    assert "otlp-gateway-probe" in hc[0] and '"/healthz"' in hc[0] and "/healthz" in probe_paths(), hc[0]
    with open(os.path.join(DOCKER, "probe.sh")) as f:
        m = re.search(r"OTLP_GATEWAY_PROBE_ADDR:-([\d.]+:\d+)", f.read())
    assert m and port_of(m.group(1)) == default_ports()["telemetry"], "probe.sh's default address %s" % m
    image_uid()
    copies = " ".join(ln for ln in runtime if ln.upper().startswith("COPY "))
    for script in ("entrypoint.sh", "probe.sh"):
        assert "deploy/docker/" + script in copies, "the runtime stage does not COPY deploy/docker/%s" % script
        assert os.access(os.path.join(DOCKER, script), os.X_OK), "deploy/docker/%s is not executable" % script
    assert any(ln.startswith("ENTRYPOINT") and "otlp-gateway-entrypoint" in ln for ln in runtime)
    with open(os.path.join(ROOT, ".dockerignore")) as f:
        ignored = f.read().split()
    assert ".git" in ignored and any(p.startswith("/build") for p in ignored), ".dockerignore: %s" % ignored


def ldd_packages(binary):
    """The Debian packages of the shared libraries the binary links (dpkg -S), without libc6 and sanitizer or
    compiler runtimes (an ASan build links libasan; the image's Release build does not)."""
    r = subprocess.run(["ldd", binary], capture_output=True, text=True, timeout=WAIT)
    assert r.returncode == 0, r.stderr
    pkgs = set()
    for m in re.finditer(r"=>\s+(/\S+)", r.stdout):
        lib = os.path.realpath(m.group(1))
        q = subprocess.run(["dpkg", "-S", lib], capture_output=True, text=True, timeout=WAIT)
        if q.returncode != 0:  # merged /usr: dpkg may know the library under /lib only
            q = subprocess.run(["dpkg", "-S", lib.replace("/usr/lib/", "/lib/", 1)], capture_output=True,
                               text=True, timeout=WAIT)
        assert q.returncode == 0, "dpkg -S %s: %s" % (lib, q.stderr)
        pkgs.add(q.stdout.split(":")[0])
    return {p for p in pkgs if p not in ("libc6", "libgcc-s1", "libstdc++6") and not re.match(r"lib(a|ub|l|t)san\d", p)}


def test_dockerfile_packages_match_the_build_and_the_binary():
    if not shutil.which("dpkg"):
        skip("no dpkg: the runtime packages are checked against dpkg -S of the binary's libraries")
    stages = dockerfile_stages()
    runtime = set(apt_packages(stages[-1][1]))
    need = ldd_packages(args().gateway)
    assert need - runtime == set(), "the runtime stage lacks %s (libraries of the binary)" % sorted(need - runtime)
    assert runtime - need == {"ca-certificates"}, "the runtime stage installs more than the binary's libraries " \
        "and ca-certificates: %s" % sorted(runtime - need)
    # The build stage: every build dependency scripts/deps.sh installs (python3 is only for the tests).
    with open(os.path.join(ROOT, "scripts", "deps.sh")) as f:
        m = re.search(r"^pkgs=\(([^)]*)\)", f.read(), re.M)
    assert m, "scripts/deps.sh: no pkgs=(...) list"
    build_deps = set(m.group(1).split()) - {"python3"}
    build = set(apt_packages([ln for s in stages[:-1] for ln in s[1]]))
    assert build_deps <= build, "the build stage lacks %s (scripts/deps.sh)" % sorted(build_deps - build)
    print("    runtime: %s" % " ".join(sorted(runtime)))


def test_probe_script_against_a_real_gateway():
    """deploy/docker/probe.sh (the image's HEALTHCHECK) with bash's /dev/tcp: 0 on /healthz, 1 on a 503 /readyz
    (the only backend is dead) and 1 when nothing listens."""
    if not shutil.which("bash"):
        skip("no bash")
    g = Gateway(gateway_config(), name="probe.yaml")
    probe = os.path.join(DOCKER, "probe.sh")

    def run(path, port):
        env = dict(os.environ, OTLP_GATEWAY_PROBE_ADDR="127.0.0.1:%d" % port)
        return subprocess.run(["bash", probe, path], capture_output=True, text=True, env=env, timeout=WAIT)

    r = run("/healthz", g.telemetry_port)
    assert r.returncode == 0, (r.returncode, r.stderr)
    r = run("/readyz", g.telemetry_port)
    assert r.returncode == 1 and "503" in r.stderr, (r.returncode, r.stderr)
    port = g.telemetry_port
    g.stop()
    r = run("/healthz", port)
    assert r.returncode == 1, (r.returncode, r.stderr)


# ---- compose -------------------------------------------------------------------------------------------

def compose():
    return load_one(os.path.join(COMPOSE_DIR, "docker-compose.yaml"))


def bind_mounts(service):
    """[(host path, container path, options)] of a compose service's bind mounts (short syntax)."""
    out = []
    for v in service.get("volumes", []):
        parts = v.split(":")
        if parts[0].startswith((".", "/")):
            out.append((os.path.normpath(os.path.join(COMPOSE_DIR, parts[0])), parts[1], parts[2:]))
    return out


def container_ports(service):
    return sorted(int(str(p).split(":")[-1].split("/")[0]) for p in service.get("ports", []))


def collector_config_checks(path, gw_cfg, where):
    """A collector config the gateway forwards to: an otlp receiver on the port the gateway sends to, the
    health_check extension on the gateway's health_check.port, tail_sampling in the traces pipeline (a short
    decision_wait, a status_code and a probabilistic policy), the debug exporter, its own telemetry on :8888."""
    c = load_one(path)
    otlp = c["receivers"]["otlp"]["protocols"]
    assert port_of(otlp["http"]["endpoint"]) == 4318 and port_of(otlp["grpc"]["endpoint"]) == 4317, where
    hc_port = int(gw_value(gw_cfg, "backends.health_check.port"))
    assert port_of(c["extensions"]["health_check"]["endpoint"]) == hc_port, where
    assert "health_check" in c["service"]["extensions"], where
    traces = c["service"]["pipelines"]["traces"]
    assert "tail_sampling" in traces["processors"] and "debug" in traces["exporters"], (where, traces)
    ts = c["processors"]["tail_sampling"]
    assert seconds(ts["decision_wait"]) <= 30, ts
    types = {p["type"] for p in ts["policies"]}
    assert {"status_code", "probabilistic"} <= types, types
    reader = c["service"]["telemetry"]["metrics"]["readers"][0]["pull"]["exporter"]["prometheus"]
    assert reader["port"] == 8888 and reader["host"] == "0.0.0.0", (where, reader)
    return c


def test_compose_stack_agrees_with_the_gateway():
    need_yaml()
    c = compose()
    svc = c["services"]
    for name in ("gateway", "collector-1", "collector-2", "collector-3", "prometheus", "grafana"):
        assert name in svc, "no service %s in docker-compose.yaml" % name
    gw = svc["gateway"]
    assert os.path.normpath(os.path.join(COMPOSE_DIR, gw["build"]["context"], gw["build"]["dockerfile"])) == \
        os.path.join(DOCKER, "Dockerfile"), gw["build"]
    mounts = {dst: src for src, dst, _ in bind_mounts(gw)}
    assert config_path() in mounts, "the gateway service mounts nothing at %s: %s" % (config_path(), mounts)
    cfg_file = mounts[config_path()]
    assert cfg_file in gateway_configs(), "%s is not a gateway config under deploy/" % rel(cfg_file)
    cfg = load_one(cfg_file)
    assert listen_ports(cfg) == default_ports(), (listen_ports(cfg), default_ports())
    assert container_ports(gw) == sorted(default_ports().values()), gw.get("ports")
    grace = seconds(gw["stop_grace_period"])
    assert grace >= seconds(gw_value(cfg, "server.shutdown_timeout")), "stop_grace_period %ss" % grace
    mem = docker_bytes(gw["mem_limit"])
    limit = gw_bytes(gw_value(cfg, "server.memory_limit"))
    assert limit < mem, "server.memory_limit %d >= mem_limit %d" % (limit, mem)
    spool = expand_env_defaults(gw_value(cfg, "backends.queue.directory"))
    if spool:
        vols = [v.split(":")[1] for v in gw.get("volumes", []) if not v.startswith((".", "/"))]
        assert any(spool == v or spool.startswith(v.rstrip("/") + "/") for v in vols), \
            "spool %s is on no named volume of the read-only gateway: %s" % (spool, vols)
    for src, dst, _ in [m for s in svc.values() for m in bind_mounts(s)]:
        assert os.path.exists(src), "compose mounts %s (at %s), which does not exist" % (rel(src), dst)
    # The backends are the collector services, on the port their receivers listen on.
    collectors = sorted(n for n in svc if n.startswith("collector-"))
    endpoints = [b["endpoint"] for b in cfg["backends"]["static"]]
    assert sorted(re.match(r"http://([^:/]+):4318$", e).group(1) for e in endpoints) == collectors, endpoints
    for n in collectors:
        s = svc[n]
        assert s["image"].startswith("otel/opentelemetry-collector-contrib:"), s["image"]
        conf = [src for src, dst, _ in bind_mounts(s) if dst.endswith(".yaml")]
        assert len(conf) == 1, bind_mounts(s)
        collector_config_checks(conf[0], cfg, n)
    # Prometheus scrapes the gateway's /metrics and every collector's own telemetry.
    prom_file = [src for src, dst, _ in bind_mounts(svc["prometheus"]) if dst.endswith("prometheus.yml")][0]
    prom = load_one(prom_file)
    jobs = {j["job_name"]: j for j in prom["scrape_configs"]}
    gwjob = jobs["otlp-gateway"]
    assert gwjob.get("metrics_path", "/metrics") == "/metrics" and "/metrics" in probe_paths()
    assert [t for sc in gwjob["static_configs"] for t in sc["targets"]] == \
        ["gateway:%d" % default_ports()["telemetry"]], gwjob
    targets = [t for j in jobs.values() for sc in j["static_configs"] for t in sc["targets"]]
    for n in collectors:
        assert "%s:8888" % n in targets, "prometheus.yml does not scrape %s:8888" % n
    # Grafana: the Prometheus data source and the dashboard file where the dashboard provider looks.
    gm = {dst: src for src, dst, _ in bind_mounts(svc["grafana"])}
    ds_dir = gm["/etc/grafana/provisioning/datasources"]
    ds = [d for f in yaml_files(ds_dir) for d in load_one(f)["datasources"]]
    assert any(d["type"] == "prometheus" and d["url"] == "http://prometheus:9090" and d.get("isDefault")
               for d in ds), ds
    assert container_ports(svc["prometheus"]) == [9090]
    providers = [p for f in yaml_files(gm["/etc/grafana/provisioning/dashboards"]) for p in load_one(f)["providers"]]
    dash_dirs = [p["options"]["path"] for p in providers]
    dash = [(src, dst) for dst, src in gm.items() if dst.endswith(".json")]
    assert dash and all(os.path.dirname(dst) in dash_dirs for _, dst in dash), (dash, dash_dirs)
    assert os.path.join(DEPLOY, "grafana", "otlp-gateway.json") in [s for s, _ in dash]
    docker_compose_config()
    if not shutil.which("promtool"):
        skip("no promtool (Debian: prometheus) to check deploy/compose/prometheus.yml")
    r = subprocess.run(["promtool", "check", "config", prom_file], capture_output=True, text=True, timeout=WAIT)
    assert r.returncode == 0, r.stdout + r.stderr


def docker_compose_config():
    """`docker-compose config` (Debian's docker-compose, v1: it validates against the compose schema offline)
    when installed. v1 does not know the top-level `name` (compose v2), so a copy without it is checked."""
    dc = shutil.which("docker-compose")
    if not dc:
        print("    docker-compose not installed: the compose schema is not checked")
        return
    c = compose()
    c.pop("name", None)
    tmp = os.path.join(TMP, "docker-compose.yaml")
    with open(tmp, "w") as f:
        yaml.safe_dump(c, f)
    r = subprocess.run([dc, "--project-directory", COMPOSE_DIR, "-f", tmp, "config", "-q"], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, "docker-compose config: " + r.stdout + r.stderr
    print("    docker-compose config: valid")


# ---- kubernetes ----------------------------------------------------------------------------------------

def kustomization(d):
    return load_one(os.path.join(d, "kustomization.yaml"))


def optional_components():
    """The component directories under deploy/kubernetes/optional, and the ones kustomization.yaml names
    (uncommented, or in its commented `# components:` list)."""
    dirs = sorted(os.path.dirname(p) for p in glob.glob(os.path.join(K8S, "optional", "*", "kustomization.yaml")))
    with open(os.path.join(K8S, "kustomization.yaml")) as f:
        named = re.findall(r"^#?\s*-\s*(optional/[\w-]+)\s*$", f.read(), re.M)
    return dirs, [os.path.join(K8S, n) for n in named]


def k8s_objects():
    """(kind, name) -> object of every resource of deploy/kubernetes and of its optional components."""
    objs = {}
    dirs, _ = optional_components()
    for d in [K8S] + dirs:
        for r in kustomization(d).get("resources", []):
            for o in load_docs(os.path.join(d, r)):
                objs[(o["kind"], o["metadata"]["name"])] = o
    return objs


def pod_spec(objs, name):
    return objs[("Deployment", name)]["spec"]["template"]["spec"]


def matches(selector, labels):
    return all(labels.get(k) == v for k, v in selector.items())


def named_port(container, port):
    """A probe's or Service's targetPort (a name or a number) as the container's port number."""
    if isinstance(port, int):
        return port
    for p in container["ports"]:
        if p["name"] == port:
            return p["containerPort"]
    raise AssertionError("container %s has no port named %s" % (container["name"], port))


def test_kustomization_lists_what_exists():
    need_yaml()
    k = kustomization(K8S)
    assert k["kind"] == "Kustomization"
    listed = set()
    for r in k["resources"]:
        p = os.path.join(K8S, r)
        assert os.path.isfile(p), "kustomization.yaml lists %s, which does not exist" % r
        listed.add(p)
    for g in k["configMapGenerator"]:
        for f in g["files"]:
            p = os.path.join(K8S, f.split("=")[-1])
            assert os.path.isfile(p), "configMapGenerator %s: no file %s" % (g["name"], f)
            listed.add(p)
    dirs, named = optional_components()
    assert dirs and sorted(named) == dirs, "optional components %s, kustomization.yaml names %s" % (dirs, named)
    for d in dirs:
        c = kustomization(d)
        assert c["kind"] == "Component" and c["apiVersion"] == "kustomize.config.k8s.io/v1alpha1", d
        for r in c["resources"]:
            assert os.path.isfile(os.path.join(d, r)), "%s lists %s, which does not exist" % (rel(d), r)
            listed.add(os.path.join(d, r))
        listed.add(os.path.join(d, "kustomization.yaml"))
    orphans = [rel(p) for p in yaml_files(K8S) if p not in listed and os.path.basename(p) != "kustomization.yaml"]
    assert not orphans, "files under deploy/kubernetes no kustomization uses: %s" % orphans
    kustomize_build(dirs)


def kustomize_build(components):
    """`kubectl kustomize` of deploy/kubernetes, and of an overlay with every optional component, when kubectl
    is installed: both build, and the HPA component takes spec.replicas off the gateway Deployment."""
    kubectl = shutil.which("kubectl")
    if not kubectl or subprocess.run([kubectl, "kustomize", "--help"], capture_output=True,
                                     timeout=WAIT).returncode != 0:
        print("    kubectl (with kustomize) not installed: the manifests are not built")
        return
    r = subprocess.run([kubectl, "kustomize", K8S], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, "kubectl kustomize deploy/kubernetes: " + r.stderr
    plain = list(yaml.safe_load_all(r.stdout))
    overlay = os.path.join(TMP, "k8s-overlay")
    os.makedirs(overlay, exist_ok=True)
    with open(os.path.join(overlay, "kustomization.yaml"), "w") as f:
        yaml.safe_dump({"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
                        "resources": [os.path.relpath(K8S, overlay)],
                        "components": [os.path.relpath(c, overlay) for c in components]}, f)
    r = subprocess.run([kubectl, "kustomize", overlay], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, "kubectl kustomize with every optional component: " + r.stderr
    full = list(yaml.safe_load_all(r.stdout))
    kinds = sorted(o["kind"] for o in full)
    assert "HorizontalPodAutoscaler" in kinds and "ServiceMonitor" in kinds, kinds
    gw = [o for o in full if o["kind"] == "Deployment" and o["metadata"]["name"] == "otlp-gateway"][0]
    assert "replicas" not in gw["spec"], "the HPA component leaves spec.replicas on the gateway Deployment"
    # The generated ConfigMap's hashed name is what the Deployment mounts.
    for objs in (plain, full):
        cms = {o["metadata"]["name"] for o in objs if o["kind"] == "ConfigMap"}
        vols = [v["configMap"]["name"] for o in objs if o["kind"] == "Deployment"
                for v in o["spec"]["template"]["spec"]["volumes"] if "configMap" in v]
        assert vols and set(vols) <= cms, (vols, cms)
    print("    kubectl kustomize: %d objects, %d with the optional components" % (len(plain), len(full)))


def test_kubernetes_gateway_agrees_with_the_gateway():
    need_yaml()
    objs = k8s_objects()
    k = kustomization(K8S)
    dep = objs[("Deployment", "otlp-gateway")]
    spec = pod_spec(objs, "otlp-gateway")
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    assert matches(dep["spec"]["selector"]["matchLabels"], pod_labels)
    (ctr,) = spec["containers"]
    ports = {p["containerPort"] for p in ctr["ports"]}
    assert ports == set(default_ports().values()), (ports, default_ports())
    tele = default_ports()["telemetry"]
    ready, live = ctr["readinessProbe"]["httpGet"], ctr["livenessProbe"]["httpGet"]
    assert ready["path"] == "/readyz" and live["path"] == "/healthz", (ready, live)
    assert {"/readyz", "/healthz"} <= set(probe_paths())
    assert named_port(ctr, ready["port"]) == tele and named_port(ctr, live["port"]) == tele
    # The config: the generated ConfigMap mounted so that its file is the image's config path.
    cfg_dir, cfg_name = os.path.split(config_path())
    mounts = {m["name"]: m for m in ctr["volumeMounts"]}
    vols = {v["name"]: v for v in spec["volumes"]}
    cfg_mount = [m for m in mounts.values() if m["mountPath"] == cfg_dir]
    assert len(cfg_mount) == 1, "nothing mounted at %s: %s" % (cfg_dir, list(mounts.values()))
    cm = vols[cfg_mount[0]["name"]]["configMap"]["name"]
    gens = {g["name"]: g["files"] for g in k["configMapGenerator"]}
    assert cm in gens and cfg_name in gens[cm], "ConfigMap %s (generated: %s) has no key %s" % (cm, gens, cfg_name)
    if "args" in ctr:
        i = ctr["args"].index("--config")
        assert ctr["args"][i + 1] == config_path(), ctr["args"]
    cfg_file = os.path.join(K8S, cfg_name)
    assert cfg_file in gateway_configs()
    cfg = load_one(cfg_file)
    assert listen_ports(cfg) == default_ports(), (listen_ports(cfg), default_ports())
    # Termination: the grace period covers the preStop sleep and the gateway's whole drain.
    shutdown = seconds(gw_value(cfg, "server.shutdown_timeout"))
    pre = 0
    cmd = ctr.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
    if cmd and os.path.basename(cmd[0]) == "sleep":
        pre = int(cmd[1])
    pre = ctr.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", pre)
    grace = spec["terminationGracePeriodSeconds"]
    assert grace >= shutdown + pre, "terminationGracePeriodSeconds %d < shutdown_timeout %ds + preStop %ds" % (
        grace, shutdown, pre)
    # Memory: server.memory_limit below the container's limit.
    mem = k8s_bytes(ctr["resources"]["limits"]["memory"])
    limit = gw_bytes(gw_value(cfg, "server.memory_limit"))
    assert limit < mem, "server.memory_limit %d >= the container's memory limit %d" % (limit, mem)
    print("    server.memory_limit is %.0f%% of the container's memory limit; grace %ds >= %ds + %ds" % (
        100.0 * limit / mem, grace, shutdown, pre))
    workers = int(gw_value(cfg, "server.workers"))
    assert workers > 0, "server.workers 0 in a container = one loop per core of the node"
    assert str(ctr["resources"]["limits"]["cpu"]) == str(workers), (ctr["resources"], workers)
    # Non-root, read-only root file system: the spool (if any) is on a writable volume.
    psc, csc = spec.get("securityContext", {}), ctr.get("securityContext", {})
    assert psc.get("runAsNonRoot") is True and psc.get("runAsUser") == image_uid(), psc
    assert csc.get("readOnlyRootFilesystem") is True and csc.get("allowPrivilegeEscalation") is False, csc
    spool = expand_env_defaults(gw_value(cfg, "backends.queue.directory"))
    if spool:
        on = [m for m in mounts.values() if spool == m["mountPath"] or spool.startswith(m["mountPath"] + "/")]
        assert on and not on[0].get("readOnly"), "spool %s is on no writable volume: %s" % (spool, mounts)
        assert {"emptyDir", "persistentVolumeClaim", "ephemeral"} & set(vols[on[0]["name"]]), vols[on[0]["name"]]
    # The Service carries the three ports to the named container ports; the PDB selects these pods.
    svc = objs[("Service", "otlp-gateway")]
    assert matches(svc["spec"]["selector"], pod_labels) and svc["spec"].get("clusterIP") != "None"
    sports = {p["port"]: named_port(ctr, p["targetPort"]) for p in svc["spec"]["ports"]}
    assert sports == {p: p for p in default_ports().values()}, sports
    pdb = objs[("PodDisruptionBudget", "otlp-gateway")]
    assert matches(pdb["spec"]["selector"]["matchLabels"], pod_labels)
    assert pdb["spec"].get("minAvailable", 0) < dep["spec"]["replicas"], "the PDB blocks every voluntary eviction"
    hpa = objs[("HorizontalPodAutoscaler", "otlp-gateway")]
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "otlp-gateway"}
    assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"]
    assert "cpu" in ctr["resources"]["requests"], "an HPA on CPU utilization needs a CPU request"


def test_kubernetes_collectors_behind_the_headless_service_the_gateway_follows():
    need_yaml()
    objs = k8s_objects()
    cfg = load_one(os.path.join(K8S, os.path.basename(config_path())))
    dns = cfg["backends"]["dns"]
    host = dns["hostname"].split(".")[0]
    assert ("Service", host) in objs, "backends.dns.hostname %s: no Service %s" % (dns["hostname"], host)
    hs = objs[("Service", host)]
    assert hs["spec"].get("clusterIP") == "None", "Service %s is not headless" % host
    dns_port = int(gw_value(cfg, "backends.dns.port"))
    assert dns_port in [p["port"] for p in hs["spec"]["ports"]], hs["spec"]["ports"]
    deps = [o for (kind, _), o in objs.items() if kind in ("Deployment", "StatefulSet")
            and matches(hs["spec"]["selector"], o["spec"]["template"]["metadata"]["labels"])]
    assert len(deps) == 1, "the headless Service selects %d workloads" % len(deps)
    (ctr,) = deps[0]["spec"]["template"]["spec"]["containers"]
    by_port = {p["port"]: named_port(ctr, p["targetPort"]) for p in hs["spec"]["ports"]}
    assert by_port[dns_port] == 4318 and by_port.get(int(gw_value(cfg, "backends.health_check.port"))), by_port
    assert ctr["readinessProbe"], "collectors without a readiness probe are in the DNS answer while starting"
    # Its config: the generated collector ConfigMap, with tail_sampling.
    vols = {v["name"]: v for v in deps[0]["spec"]["template"]["spec"]["volumes"]}
    cms = [v["configMap"]["name"] for v in vols.values() if "configMap" in v]
    gens = {g["name"]: g["files"] for g in kustomization(K8S)["configMapGenerator"]}
    assert len(cms) == 1 and cms[0] in gens, (cms, gens)
    (f,) = gens[cms[0]]
    collector_config_checks(os.path.join(K8S, f), cfg, "deploy/kubernetes/" + f)
    mount = [m for m in ctr["volumeMounts"] if vols[m["name"]].get("configMap")][0]["mountPath"]
    assert any(a.endswith("=" + mount + "/" + f) or a == mount + "/" + f for a in ctr["args"]), (ctr["args"], mount)
    # ServiceMonitors: each selects a Service and scrapes a port that Service has, at /metrics.
    sms = [o for (kind, _), o in objs.items() if kind == "ServiceMonitor"]
    assert {o["metadata"]["name"] for o in sms} == {"otlp-gateway", "otel-collector"}, sms
    for sm in sms:
        assert sm["apiVersion"] == "monitoring.coreos.com/v1"
        svcs = [o for (kind, _), o in objs.items() if kind == "Service"
                and matches(sm["spec"]["selector"]["matchLabels"], o["metadata"].get("labels", {}))]
        assert len(svcs) == 1, "ServiceMonitor %s selects %d Services" % (sm["metadata"]["name"], len(svcs))
        for e in sm["spec"]["endpoints"]:
            assert e["port"] in [p["name"] for p in svcs[0]["spec"]["ports"]], (e, svcs[0]["spec"]["ports"])
            assert e.get("path", "/metrics") == "/metrics"


def test_config_path_is_the_same_everywhere():
    """The image's config path is the one compose and Kubernetes mount (checked above) and the systemd unit runs
    with (when deploy/systemd ships one)."""
    path = config_path()
    assert path == "/etc/otlp-gateway/gateway.yaml" or path.startswith("/etc/"), path
    assert "install -d -m 0755 %s" % os.path.dirname(path) in dockerfile(), "the image does not create %s" % (
        os.path.dirname(path))
    unit = os.path.join(DEPLOY, "systemd", "otlp-gateway.service")
    if os.path.exists(unit):
        with open(unit) as f:
            m = re.search(r"^ExecStart=.*--config\s+(\S+)", f.read(), re.M)
        assert m and m.group(1) == path, "the systemd unit runs with %s" % (m and m.group(1))


run_tests(globals())
