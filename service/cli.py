"""The `logwriter` command: settings from the environment, then Gunicorn in this process."""

import os
import shutil
import sys
import tempfile

from service.memory import tune_malloc


def main() -> None:
    # A fresh, private metrics folder each start: files left by an earlier run (and container
    # PIDs repeat) would otherwise resume its counters. prometheus-client reads this variable
    # when it is first imported, so it is set before anything of the service is imported.
    metrics_dir = tempfile.mkdtemp(prefix="logwriter-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    arbiter_pid = os.getpid()
    try:
        _serve()
    finally:
        # Workers leave through here too (Gunicorn forks inside run()); only the arbiter cleans.
        if os.getpid() == arbiter_pid:
            shutil.rmtree(metrics_dir, ignore_errors=True)


def _serve() -> None:
    tune_malloc()  # first, and before Gunicorn forks the workers, which inherit it
    from service.server import Server  # imported only now: see main()
    from service.settings import Settings, SettingsError
    from service.worker import ensure_open_files

    try:
        settings = Settings.from_env()
        settings.dir.mkdir(parents=True, exist_ok=True)
    except SettingsError as exc:
        sys.exit(f"logwriter: {exc}")
    except OSError as exc:
        sys.exit(f"logwriter: cannot create LOGWRITER_DIR {settings.dir}: {exc.strerror}")
    # Else every worker would start, be ready and take lines it can never write. A full disk
    # is not checked here: that passes, and the writer retries meanwhile.
    if not os.access(settings.dir, os.W_OK | os.X_OK, effective_ids=True):
        sys.exit(
            f"logwriter: cannot write in LOGWRITER_DIR {settings.dir}: read-only, or its "
            f"permissions do not let this user (uid {os.geteuid()}) create files there"
        )
    server = Server(settings)
    try:  # with GUNICORN_CMD_ARGS applied, before any socket is bound or worker forked
        ensure_open_files(server.cfg.worker_connections, settings.max_open_files)
    except RuntimeError as exc:
        sys.exit(f"logwriter: {exc}")
    server.run()
