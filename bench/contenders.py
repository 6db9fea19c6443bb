"""Who is measured: the Contender type and the list of them, and starting and stopping each one's
server (logwriter, the naive app of bench.naive, nginx), and the tools they need."""

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bench.workloads import DURABLE_CONNS, THREADS, Case

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Contender:
    name: str
    server: str  # logwriter | naive | nginx
    ack: str = "queued"
    fsync: bool = False


CONTENDERS = [
    Contender("logwriter", "logwriter"),
    Contender("logwriter-written", "logwriter", ack="written"),
    Contender("logwriter-fsync", "logwriter", ack="fsync"),
    Contender("naive", "naive"),
    Contender("naive-fsync", "naive", fsync=True),
    Contender("nginx", "nginx"),
]
DURABLE = {"logwriter-written", "logwriter-fsync", "naive-fsync"}
RAW_DISK = "raw disk"  # the disk's own append rate, reported beside the contenders


def contenders_for(case: Case) -> list[Contender]:
    if case.iops:
        return [c for c in CONTENDERS if c.name in ("logwriter-fsync", "naive-fsync")]
    return [c for c in CONTENDERS if c.name not in DURABLE or case.conns == DURABLE_CONNS]


def ensure_tools(commands: tuple[str, ...] = ("wrk", "nginx")) -> None:
    """The commands (by default wrk and nginx), installed from Debian if missing by the script
    .ci/run installs with."""
    subprocess.run(["bash", str(ROOT / ".ci" / "install-tools"), *commands], check=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError("server did not listen in time")


NGINX_CONF = """daemon off;
worker_processes {workers};
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_buffer_size 16m;
    client_max_body_size 16m;
    keepalive_requests 1000000;
    log_format body escape=none $request_body;
    server {{
        listen 127.0.0.1:{port};
        # proxy_pass makes nginx read the body, so that $request_body can be logged.
        location /v1/logs/ {{
            access_log {tmp}/logs/nginx.log body;
            proxy_pass http://127.0.0.1:{port}/sink/;
        }}
        location /sink/ {{ access_log off; return 202; }}
        location = /null {{ return 202; }}
    }}
}}
"""


def start(
    contender: Contender,
    workers: int,
    tmp: Path,
    logs: Path | None = None,
    logwriter_env: dict[str, str] | None = None,
    threads: int = THREADS,
    prefix: list[str] | None = None,
    naive_options: dict[str, str] | None = None,
    ready_seconds: float = 30,
) -> tuple[subprocess.Popen[bytes], int]:
    """Start a contender; `prefix` goes before its command (such as disks.write_iops_cap's);
    `naive_options`, Gunicorn options for the naive app, after (and over) its own;
    `ready_seconds`, how long it may take to listen."""
    port = free_port()
    logs = logs or tmp / "logs"
    logs.mkdir(exist_ok=True)
    env = dict(os.environ)
    if contender.server == "logwriter":
        env |= {
            "LOGWRITER_DIR": str(logs),
            "LOGWRITER_BIND": f"127.0.0.1:{port}",
            "LOGWRITER_WORKERS": str(workers),
            "LOGWRITER_THREADS": str(threads),
            **(logwriter_env or {}),
        }
        command = [str(Path(sys.executable).parent / "logwriter")]
    elif contender.server == "naive":
        env |= {"NAIVE_FILE": str(logs / "naive.log"), "NAIVE_FSYNC": str(int(contender.fsync))}
        command = [
            sys.executable,
            "-m",
            "gunicorn",
            "--worker-class",
            "gthread",
            "--workers",
            str(workers),
            "--threads",
            str(threads),
            "--keep-alive",
            "5",
            "--bind",
            f"127.0.0.1:{port}",
            "--no-control-socket",
            *(arg for option in (naive_options or {}).items() for arg in option),
            "bench.naive:app",
        ]
    else:
        conf = tmp / "nginx.conf"
        conf.write_text(NGINX_CONF.format(workers=workers, port=port, tmp=tmp))
        command = ["nginx", "-p", str(tmp), "-c", str(conf)]
    out = (tmp / f"{contender.server}.out").open("wb")
    proc = subprocess.Popen(
        [*(prefix or []), *command], env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT
    )
    try:
        wait_for_port(port, proc, ready_seconds)
    except RuntimeError:
        proc.kill()
        proc.wait()
        raise
    time.sleep(0.5 if contender.server != "nginx" else 0.1)  # every worker up
    return proc, port


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM if "nginx" not in proc.args else signal.SIGQUIT)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
