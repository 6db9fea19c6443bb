"""deploy/kubernetes/ against what it runs: the image the Dockerfile builds, the service's own
settings and routes, Kubernetes' API schemas, and the stop the Docker and Swarm tests prove.

No cluster runs here. The unit tests read the manifests (the files kustomization.yaml lists)
and validate them with kubernetes-validate, in this process, against the oldest Kubernetes they
need and the newest that kubernetes-validate knows. It has no schema for a CRD (its command
only warns, and exits 0, for a kind it does not know): the ServiceMonitor is checked field by
field below, and any other kind without a schema fails. The `tools` test builds the base and
deploy/kubernetes/README.md's overlay with `kubectl kustomize`; the `docker` test runs the
image as the pod spec says: its user and groups, a read-only root, /tmp in memory, a data
volume writable only through fsGroup, Secrets mounted as the kubelet mounts them.
"""

import copy
import json
import re
import shlex
import shutil
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from gunicorn.config import Config
from support import ROOT, docker, docker_here, free_port, wait_until

from service.app import create_app
from service.server import Server
from service.settings import Settings

K8S = ROOT / "deploy" / "kubernetes"
DOCKERFILE = ROOT / "Dockerfile"
# The files whose stop_grace_period the Docker and Swarm tests prove long enough for a stop
# under load (tests/test_docker.py, tests/test_swarm.py).
PROVEN_STOPS = [ROOT / "docker-compose.yml", ROOT / "deploy" / "swarm" / "stack.yml"]

# 1.30: the first release with the preStop `sleep` action on by default (beta; GA in 1.34).
# 1.37: the newest kubernetes-validate==1.37.0 has schemas for.
KUBERNETES_VERSIONS = ("1.30", "1.37")
CRDS = {("monitoring.coreos.com/v1", "ServiceMonitor")}  # checked by test_service_monitor

# A pod's memory: the arbiter, and per worker its idle size plus the bound
# docs/performance.md#memory gives (the figures are there).
ARBITER_MIB = 40
WORKER_IDLE_MIB = 45
MIB = 1 << 20
PROBES = ("startupProbe", "livenessProbe", "readinessProbe")

Resource = dict[str, Any]


def load_all(text: str) -> list[Resource]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


def kustomization() -> Resource:
    return yaml.safe_load((K8S / "kustomization.yaml").read_text())


def manifests() -> list[Resource]:
    """Every resource of the files kustomization.yaml lists, in its order."""
    found = []
    for name in kustomization()["resources"]:
        found += load_all((K8S / name).read_text())
    return found


def one(resources: list[Resource], kind: str, name: str | None = None) -> Resource:
    matches = [
        r
        for r in resources
        if r["kind"] == kind and (name is None or r["metadata"]["name"] == name)
    ]
    assert len(matches) == 1, f"{len(matches)} {kind} {name or ''} in {K8S}"
    return matches[0]


def claim_names(resources: list[Resource]) -> set[str]:
    templates = one(resources, "StatefulSet")["spec"]["volumeClaimTemplates"]
    return {claim["metadata"]["name"] for claim in templates}


def pod_spec(resources: list[Resource]) -> Resource:
    return one(resources, "StatefulSet")["spec"]["template"]["spec"]


def container(resources: list[Resource]) -> Resource:
    containers = pod_spec(resources)["containers"]
    assert len(containers) == 1, containers
    return containers[0]


def selects(selector: Resource, labels: dict[str, str]) -> bool:
    """A label selector (matchLabels, or a Service's plain map) against a pod's labels; an
    empty one, which Kubernetes takes to mean everything, is taken as a mistake here."""
    match = selector.get("matchLabels", selector) if "matchExpressions" not in selector else None
    assert match is not None, "matchExpressions: not handled here"
    return bool(match) and all(labels.get(key) == value for key, value in match.items())


def quantity_bytes(text: str) -> int:
    units = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30}
    number, unit = re.fullmatch(r"(\d+)(Ki|Mi|Gi)?", str(text)).groups()
    return int(number) * units.get(unit or "", 1)


def seconds(text: str) -> float:
    number, unit = re.fullmatch(r"(\d+)(s|m)", text).groups()
    return int(number) * (60 if unit == "m" else 1)


@dataclass(frozen=True)
class Image:
    """What the Dockerfile's last stage says the container runs as."""

    user: str
    uid: int
    env: dict[str, str]
    expose: set[int]
    cmd: list[str]


def image() -> Image:
    runtime = DOCKERFILE.read_text().split("\nFROM ")[-1]
    text = re.sub(r"\\\n\s*", " ", runtime)  # continuation lines joined, as Docker reads them
    useradd = shlex.split(re.search(r"useradd ([^&\n]*)", text)[1])
    env = {}
    for line in re.findall(r"^ENV (.*)$", text, re.MULTILINE):
        env.update(pair.split("=", 1) for pair in shlex.split(line))
    (user,) = re.findall(r"^USER (\S+)$", text, re.MULTILINE)
    (cmd,) = re.findall(r"^CMD (.*)$", text, re.MULTILINE)
    exposed = re.findall(r"^EXPOSE (.*)$", text, re.MULTILINE)
    expose = {int(port) for line in exposed for port in line.split()}
    assert useradd[-1] == user, f"USER {user} is not the user useradd makes: {useradd}"
    return Image(user, int(useradd[useradd.index("--uid") + 1]), env, expose, json.loads(cmd))


def container_env(spec: Resource) -> dict[str, str]:
    """The environment the service sees: the image's ENV, then the container's own."""
    env = dict(image().env)
    for variable in spec.get("env", []):
        assert "value" in variable, f"{variable['name']}: only plain values are read here"
        env[variable["name"]] = variable["value"]
    return env


def settings_of(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> tuple[Settings, Config]:
    """The service's settings and Gunicorn's configuration, as the `logwriter` command makes
    them from this environment (GUNICORN_CMD_ARGS included)."""
    monkeypatch.delenv("GUNICORN_CMD_ARGS", raising=False)
    if "GUNICORN_CMD_ARGS" in env:
        monkeypatch.setenv("GUNICORN_CMD_ARGS", env["GUNICORN_CMD_ARGS"])
    settings = Settings.from_env(env)
    return settings, Server(settings).cfg


def bind_port(settings: Settings) -> int:
    host, _, port = settings.bind.rpartition(":")
    assert host in ("0.0.0.0", "[::]", ""), f"LOGWRITER_BIND={settings.bind}: not the pod's IP"
    return int(port)


def port_number(port: int | str, spec: Resource) -> int:
    """A numeric port, or a container port's name, as the number it names."""
    if isinstance(port, int):
        return port
    (number,) = [p["containerPort"] for p in spec["ports"] if p.get("name") == port]
    return number


def prestop_seconds(spec: Resource) -> int:
    pre_stop = spec["lifecycle"]["preStop"]
    # The kubelet's own sleep: an exec hook would need its binary in the image.
    assert list(pre_stop) == ["sleep"], pre_stop
    return pre_stop["sleep"]["seconds"]


# --- the manifests as files -----------------------------------------------------------------


@pytest.mark.unit
def test_kustomization_lists_every_manifest_and_names_the_image():
    listed = kustomization()["resources"]
    on_disk = sorted(p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
    assert sorted(listed) == on_disk
    assert not list(K8S.glob("*.yml")), "name manifests .yaml, as the others"
    (entry,) = kustomization()["images"]
    assert container(manifests())["image"].split(":")[0] == entry["name"]


@pytest.mark.unit
@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_manifest_validates_against_kubernetes(version: str):
    checked = []
    for resource in manifests():
        if (resource["apiVersion"], resource["kind"]) in CRDS:
            continue
        # SchemaNotFoundError is a failure here: an unknown kind or a misspelt apiVersion,
        # which the kubernetes-validate command only warns about.
        assert kubernetes_validate.validate(resource, version, strict=True) == version
        checked.append(resource["kind"])
    kinds = {"StatefulSet", "Service", "PodDisruptionBudget", "NetworkPolicy"}
    assert set(checked) == kinds, checked


@pytest.mark.unit
def test_strict_validation_refuses_a_misspelt_field_and_a_field_too_new():
    statefulset = copy.deepcopy(one(manifests(), "StatefulSet"))
    kubernetes_validate.validate(statefulset, KUBERNETES_VERSIONS[0], strict=True)
    with pytest.raises(kubernetes_validate.ValidationError, match="sleep"):
        kubernetes_validate.validate(statefulset, "1.28", strict=True)  # no sleep action yet
    statefulset["spec"]["template"]["spec"]["securityContext"]["runAsUsr"] = 1
    with pytest.raises(kubernetes_validate.ValidationError, match="runAsUsr"):
        kubernetes_validate.validate(statefulset, KUBERNETES_VERSIONS[0], strict=True)


# --- the pods against the image -------------------------------------------------------------


@pytest.mark.unit
def test_pods_run_as_the_images_user_with_a_read_only_root():
    resources = manifests()
    pod, spec, built = pod_spec(resources), container(resources), image()
    security = pod["securityContext"]
    # runAsNonRoot cannot check the image's USER by name: the uid must be given, and be its.
    assert (security["runAsNonRoot"], security["runAsUser"]) == (True, built.uid)
    assert security["fsGroup"] == security["runAsGroup"], "the volume's group is the pod's"
    assert "command" not in spec and "args" not in spec, f"the image's CMD {built.cmd} is kept"
    assert built.cmd == ["logwriter"]

    own = spec["securityContext"]
    assert own["readOnlyRootFilesystem"] is True
    assert own["allowPrivilegeEscalation"] is False
    assert own["capabilities"] == {"drop": ["ALL"]}
    assert built.env["PYTHONDONTWRITEBYTECODE"] == "1", "a read-only root needs no .pyc written"

    mounts = {m["mountPath"]: m["name"] for m in spec["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    claims = claim_names(resources)
    # The metrics folder and Gunicorn's worker files: tempfile's default folder.
    assert "emptyDir" in volumes[mounts["/tmp"]]
    settings = Settings.from_env(container_env(spec))
    assert mounts[str(settings.dir)] in claims, f"LOGWRITER_DIR={settings.dir} is not a claim"
    assert set(mounts) == {"/tmp", str(settings.dir)}, "anything else on a read-only root?"
    assert pod["enableServiceLinks"] is False, "LOGWRITER_PORT & co. from the Service"
    assert pod["automountServiceAccountToken"] is False


@pytest.mark.unit
def test_ports_and_probes_agree_with_the_image_and_the_app(monkeypatch: pytest.MonkeyPatch):
    resources = manifests()
    spec = container(resources)
    settings, _ = settings_of(container_env(spec), monkeypatch)
    port = bind_port(settings)
    assert {p["containerPort"] for p in spec["ports"]} == {port} == image().expose

    routes = create_app(settings).url_map.bind("pod")
    probes = {kind: spec[kind]["httpGet"] for kind in PROBES}
    assert {kind: probe["path"] for kind, probe in probes.items()} == {
        "startupProbe": "/healthz",
        "livenessProbe": "/healthz",
        "readinessProbe": "/readyz",
    }
    for probe in probes.values():
        assert port_number(probe["port"], spec) == port
        assert probe.get("scheme", "HTTP") == ("HTTPS" if settings.tls_cert else "HTTP")
        routes.match(probe["path"], method="GET")  # NotFound if the app has no such route

    annotations = one(resources, "StatefulSet")["spec"]["template"]["metadata"]["annotations"]
    assert int(annotations["prometheus.io/port"]) == port
    routes.match(annotations["prometheus.io/path"], method="GET")
    for service in (r for r in resources if r["kind"] == "Service"):
        for service_port in service["spec"]["ports"]:
            assert port_number(service_port["targetPort"], spec) == port, service_port


@pytest.mark.unit
def test_the_stop_fits_the_grace_period(monkeypatch: pytest.MonkeyPatch):
    resources = manifests()
    pod, spec = pod_spec(resources), container(resources)
    _, gunicorn = settings_of(container_env(spec), monkeypatch)
    pause, grace = prestop_seconds(spec), pod["terminationGracePeriodSeconds"]
    # The pause comes out of the grace period; then SIGTERM, and Gunicorn's graceful stop.
    assert grace > pause + gunicorn.graceful_timeout, (grace, pause, gunicorn.graceful_timeout)
    # After the pause, no less time than the stacks whose tests stop the service under load.
    for stack in PROVEN_STOPS:
        if not stack.exists():
            continue
        services = yaml.safe_load(stack.read_text())["services"]
        assert grace - pause >= seconds(services["logwriter"]["stop_grace_period"]), stack
    assert 0 < pause <= 15, "endpoints drop a pod within seconds; longer only delays the stop"


@pytest.mark.unit
def test_memory_limit_covers_the_pods_bound():
    resources = manifests()
    pod, spec = pod_spec(resources), container(resources)
    settings = Settings.from_env(container_env(spec))
    per_worker = (
        WORKER_IDLE_MIB * MIB
        + settings.queue_bytes
        + settings.threads * 3 * settings.max_body_bytes
    )
    in_memory = sum(
        quantity_bytes(v["emptyDir"]["sizeLimit"])
        for v in pod["volumes"]
        if v.get("emptyDir", {}).get("medium") == "Memory"
    )
    bound = ARBITER_MIB * MIB + settings.workers * per_worker + in_memory
    limits, requests = spec["resources"]["limits"], spec["resources"]["requests"]
    assert quantity_bytes(limits["memory"]) >= bound, f"bound {bound / MIB:.0f} MiB"
    assert quantity_bytes(requests["memory"]) <= quantity_bytes(limits["memory"])
    assert {"cpu", "memory"} <= set(requests) and {"cpu", "memory"} <= set(limits)


# --- the resources around the pods ----------------------------------------------------------


@pytest.mark.unit
def test_services_budget_and_policy_select_the_pods():
    resources = manifests()
    statefulset = one(resources, "StatefulSet")
    labels = statefulset["spec"]["template"]["metadata"]["labels"]
    assert selects(statefulset["spec"]["selector"], labels)

    headless = one(resources, "Service", statefulset["spec"]["serviceName"])
    assert headless["spec"]["clusterIP"] == "None"
    services = [r for r in resources if r["kind"] == "Service"]
    assert len(services) == 2
    for service in services:
        assert selects(service["spec"]["selector"], labels), service["metadata"]["name"]
    senders = next(s for s in services if s is not headless)
    assert senders["spec"].get("type", "ClusterIP") == "ClusterIP"

    assert selects(one(resources, "PodDisruptionBudget")["spec"]["selector"], labels)

    spec = container(resources)
    policy = one(resources, "NetworkPolicy")["spec"]
    assert selects(policy["podSelector"], labels)
    assert policy["policyTypes"] == ["Ingress"]
    assert len(policy["ingress"]) == 2, "senders, and Prometheus"
    for rule in policy["ingress"]:
        assert rule["from"], "an empty `from` would admit everyone"
        ports = {port_number(p["port"], spec) for p in rule["ports"]}
        assert ports == {p["containerPort"] for p in spec["ports"]}, rule


@pytest.mark.unit
def test_service_monitor():
    resources = manifests()
    monitor = one(resources, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(monitor["spec"]) == {"selector", "endpoints"}
    services = [r for r in resources if r["kind"] == "Service"]
    selector = monitor["spec"]["selector"]
    matched = [s for s in services if selects(selector, s["metadata"]["labels"])]
    # Only the senders' Service: both would scrape every pod twice.
    assert [s["spec"].get("clusterIP") for s in matched] == [None], matched
    (endpoint,) = monitor["spec"]["endpoints"]
    assert set(endpoint) <= {"port", "path", "interval", "scheme", "tlsConfig", "authorization"}
    assert endpoint["port"] in {p["name"] for p in matched[0]["spec"]["ports"]}
    assert endpoint["path"] == "/metrics"
    assert re.fullmatch(r"\d+s", endpoint["interval"])


# --- kustomize, and the README's overlay ----------------------------------------------------


def readme_overlay(dest: Path) -> Path:
    """deploy/kubernetes/README.md's my-logwriter/ files, beside a deploy/kubernetes that is
    the real one, with stand-ins for the tokens file and the certificate."""
    (dest / "deploy").mkdir(parents=True)
    (dest / "deploy" / "kubernetes").symlink_to(K8S)
    overlay = dest / "my-logwriter"
    overlay.mkdir()
    text = (K8S / "README.md").read_text()
    for block in re.findall(r"```yaml\n(.*?)```", text, re.DOTALL):
        named = re.fullmatch(r"# my-logwriter/(\S+)", block.splitlines()[0])
        if named:
            (overlay / named[1]).write_text(block)
    assert sorted(p.name for p in overlay.iterdir()) == ["kustomization.yaml", "secure.yaml"]
    for name in ("tokens.txt", "logwriter.crt", "logwriter.key"):
        (overlay / name).write_text(f"stand-in {name}\n")
    return overlay


def kustomize(folder: Path) -> list[Resource]:
    if shutil.which("kubectl") is None:
        pytest.skip("no kubectl on this machine: `kubectl kustomize` cannot run")
    built = subprocess.run(
        ["kubectl", "kustomize", str(folder)], capture_output=True, text=True, timeout=60
    )
    assert built.returncode == 0, built.stderr
    return load_all(built.stdout)


def secure_patch() -> list[Resource]:
    text = (K8S / "README.md").read_text()
    (block,) = re.findall(r"```yaml\n(# my-logwriter/secure.yaml\n.*?)```", text, re.DOTALL)
    return load_all(block)


@pytest.mark.tools
def test_kustomize_builds_the_base_and_the_readme_overlay(tmp_path: Path):
    base = kustomize(K8S)
    # What kubectl apply -k sends is the files as they are (their image is already the one
    # kustomization.yaml names).
    assert sorted(json.dumps(r, sort_keys=True) for r in base) == sorted(
        json.dumps(r, sort_keys=True) for r in manifests()
    )
    entry = kustomization()["images"][0]
    assert container(base)["image"] == f"{entry['newName']}:{entry['newTag']}"

    secure = kustomize(readme_overlay(tmp_path))
    for resource in secure:
        if (resource["apiVersion"], resource["kind"]) not in CRDS:
            for version in KUBERNETES_VERSIONS:
                kubernetes_validate.validate(resource, version, strict=True)
    pod, spec = pod_spec(secure), container(secure)
    env = {v["name"]: v["value"] for v in spec["env"]}
    assert {"LOGWRITER_TOKENS_FILE", "LOGWRITER_TLS_CERT", "LOGWRITER_TLS_KEY"} <= set(env)
    # Each file the settings name is a key of a Secret kustomize generated and the pod mounts.
    secrets = {r["metadata"]["name"]: r for r in secure if r["kind"] == "Secret"}
    volumes = {v["name"]: v for v in pod["volumes"]}
    for name in ("LOGWRITER_TOKENS_FILE", "LOGWRITER_TLS_CERT", "LOGWRITER_TLS_KEY"):
        folder, key = env[name].rsplit("/", 1)
        (mount,) = [m for m in spec["volumeMounts"] if m["mountPath"] == folder]
        assert mount["readOnly"] is True
        secret = volumes[mount["name"]]["secret"]
        assert key in secrets[secret["secretName"]]["data"], (name, secret)
        assert secret["defaultMode"] & 0o040, "the pod's group (fsGroup) must read it"
    for kind in PROBES:
        assert spec[kind]["httpGet"]["scheme"] == "HTTPS", kind
    assert one(secure, "ServiceMonitor")["spec"]["endpoints"][0]["scheme"] == "https"
    template = one(secure, "StatefulSet")["spec"]["template"]["metadata"]
    assert template["annotations"]["prometheus.io/scheme"] == "https"
    assert pod["terminationGracePeriodSeconds"] == pod_spec(base)["terminationGracePeriodSeconds"]


# --- the image, run as the pod spec says ----------------------------------------------------


@pytest.fixture(scope="module")
def built_image() -> Any:
    docker_here()
    tag = f"logwriter:k8s-test-{time.monotonic_ns()}"
    docker("build", "-q", "-t", tag, str(ROOT), timeout=600)
    try:
        yield tag
    finally:
        subprocess.run(["docker", "rmi", "-f", tag], capture_output=True, timeout=60)


def fresh_volume(path: Path, gid: int, mode: int) -> Path:
    """A folder as the kubelet leaves a volume for a pod with fsGroup: root's, in the pod's
    group (setgid on folders), group-writable or -readable as `mode` says."""
    path.mkdir()
    shutil.chown(path, 0, gid)
    path.chmod(mode)
    return path


def https_context(cert: Path | None) -> ssl.SSLContext | None:
    return ssl.create_default_context(cafile=str(cert)) if cert else None


def request(
    url: str, *, data: bytes | None = None, token: str | None = None, cert: Path | None = None
) -> tuple[int, bytes]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    req = urllib.request.Request(url, data=data, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10, context=https_context(cert)) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def make_certificate(folder: Path) -> tuple[bytes, bytes]:
    key, cert = folder / "key.pem", folder / "cert.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1"),
            *("-addext", "subjectAltName=IP:127.0.0.1"),
        ],
        check=True,
        capture_output=True,
    )
    return cert.read_bytes(), key.read_bytes()


@pytest.mark.docker
@pytest.mark.tools  # openssl, for the overlay's certificate
@pytest.mark.parametrize("overlay", ["base", "tokens-and-tls"])
def test_the_image_runs_as_the_pod_spec_says(
    built_image: str, overlay: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    resources = manifests()
    pod, spec = copy.deepcopy(pod_spec(resources)), copy.deepcopy(container(resources))
    security, own = pod["securityContext"], spec["securityContext"]
    uid, gid, fs_group = security["runAsUser"], security["runAsGroup"], security["fsGroup"]
    token, cert = None, None
    secret_files: dict[str, dict[str, bytes]] = {}
    if overlay != "base":
        # The README's patch, merged as kustomize merges it (lists by name and by mountPath).
        patch = one(secure_patch(), "StatefulSet")["spec"]["template"]["spec"]
        (extra,) = patch["containers"]
        spec["env"] = extra["env"] + spec["env"]
        spec["volumeMounts"] = extra["volumeMounts"] + spec["volumeMounts"]
        pod["volumes"] = patch["volumes"] + pod["volumes"]
        for kind in PROBES:
            spec[kind]["httpGet"].update(extra[kind]["httpGet"])
        token = "k8s-t0ken"
        cert_pem, key_pem = make_certificate(tmp_path)
        secret_files = {
            "logwriter-tokens": {"tokens": f"# ops\n{token}\n".encode()},
            "logwriter-tls": {"tls.crt": cert_pem, "tls.key": key_pem},
        }
        cert = tmp_path / "cert.pem"

    port = free_port()
    args = [
        *("--user", f"{uid}:{gid}", "--group-add", str(fs_group)),
        *("--memory", spec["resources"]["limits"]["memory"].replace("Mi", "m")),
        *("--cpus", str(spec["resources"]["limits"]["cpu"])),
        *("-p", f"127.0.0.1:{port}:{spec['ports'][0]['containerPort']}"),
    ]
    if own["readOnlyRootFilesystem"]:
        args.append("--read-only")
    if own["allowPrivilegeEscalation"] is False:
        args += ["--security-opt", "no-new-privileges"]
    args += [f"--cap-drop={cap}" for cap in own["capabilities"]["drop"]]
    for variable in spec.get("env", []):
        args += ["-e", f"{variable['name']}={variable['value']}"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    claims = claim_names(resources)
    data = None
    for mount in spec["volumeMounts"]:
        path, volume = mount["mountPath"], volumes.get(mount["name"], {})
        if mount["name"] in claims:
            data = fresh_volume(tmp_path / "data", fs_group, 0o2775)
            args += ["-v", f"{data}:{path}"]
        elif "emptyDir" in volume:
            size = volume["emptyDir"]["sizeLimit"].replace("Mi", "m")
            assert volume["emptyDir"].get("medium") == "Memory"
            args += ["--tmpfs", f"{path}:rw,size={size},mode=1777"]
        else:
            secret = volume["secret"]
            folder = fresh_volume(tmp_path / mount["name"], fs_group, 0o2755)
            for key, content in secret_files[secret["secretName"]].items():
                (folder / key).write_bytes(content)
                shutil.chown(folder / key, 0, fs_group)
                (folder / key).chmod(secret["defaultMode"])
            args += ["-v", f"{folder}:{path}:ro"]
    assert data is not None

    name = f"logwriter-k8s-{overlay}-{time.monotonic_ns()}"
    docker("run", "-d", "--name", name, *args, built_image)
    try:
        scheme = "https" if cert else "http"
        base = f"{scheme}://127.0.0.1:{port}"

        def probe(kind: str) -> int:
            get = spec[kind]["httpGet"]
            assert get.get("scheme", "HTTP").lower() == scheme
            # The kubelet does not check the certificate; this client does, with the test's CA.
            return request(f"{base}{get['path']}", cert=cert)[0]

        wait_until(
            lambda: probe("readinessProbe") == 200,
            60,
            lambda: f"readiness of {name}: {docker('logs', name)[-3000:]}",
            interval=0.5,
        )
        assert probe("livenessProbe") == probe("startupProbe") == 200
        body = b"".join(b"k8s line %d\n" % i for i in range(500))
        url = f"{base}/v1/logs/k8s?ack=fsync"
        if token:
            assert request(url, data=body, cert=cert)[0] == 401
        status, answer = request(url, data=body, token=token, cert=cert)
        assert (status, json.loads(answer)) == (200, {"accepted": 500})
        assert request(f"{base}/metrics", cert=cert)[0] == 200

        grace = pod["terminationGracePeriodSeconds"] - prestop_seconds(spec)
        stopping = time.monotonic()
        docker("stop", "-t", str(grace), name, timeout=grace + 30)
        stopped = time.monotonic() - stopping
        state = json.loads(docker("inspect", "-f", "{{json .State}}", name))
        logs = subprocess.run(["docker", "logs", name], capture_output=True, text=True).stderr
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True, timeout=60)

    assert (state["ExitCode"], state["OOMKilled"]) == (0, False), logs
    _, gunicorn = settings_of(container_env(container(resources)), monkeypatch)
    assert stopped < gunicorn.graceful_timeout, f"the stop took {stopped:.0f}s"
    assert "drained" in logs, logs
    for bad in ("ERROR", "Traceback", "CRITICAL", "Read-only file system"):
        assert bad not in logs, logs
    written = data / "k8s.log"
    assert written.read_bytes() == body
    assert (written.stat().st_uid, written.stat().st_gid) == (uid, fs_group)
