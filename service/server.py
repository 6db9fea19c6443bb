"""logwriter under Gunicorn: its configuration, and the hooks that run the writer in each worker.

How a worker stops -- the one place this order is written down:

  1. Request threads finish: gthread stops accepting and waits (up to graceful_timeout) for
     its connections, then returns from its run loop; kept-alive connections and those that
     have sent nothing yet are closed within 2 s. SIGTERM does this; so do SIGINT and
     SIGQUIT here (see post_worker_init).
  2. worker_exit calls Writer.stop(): no more puts, and the pill goes on the queue. A request
     that still reaches the writer after this (one that outlived graceful_timeout) is refused
     with a 503: never acknowledged and then dropped.
  3. The writer thread writes everything before the pill, fsyncs and closes the files.
  4. The process exits, and the arbiter's child_exit retires its live gauges.
"""

import logging
import os
import signal
from typing import Any

from gunicorn.app.base import BaseApplication
from prometheus_client import multiprocess

from service import metrics
from service.app import create_app, runtime
from service.settings import Settings, SettingsError

log = logging.getLogger("logwriter")


class Server(BaseApplication):  # type: ignore[misc]
    """Gunicorn's arbiter serving create_app(settings) with service.worker's gthread workers."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        super().__init__(prog="logwriter")

    def load_config(self) -> None:
        for key, value in gunicorn_options(self.settings).items():
            self.cfg.set(key, value)
        # GUNICORN_CMD_ARGS last, as in Gunicorn's own CLI, so operators can tune its settings.
        env_args = self.cfg.parser().parse_args(self.cfg.get_cmd_args_from_env())
        for key, value in vars(env_args).items():
            if value is not None and key != "args":
                self.cfg.set(key.lower(), value)
        # Gunicorn's control socket defaults to one path per user, which two logwriters on one
        # host would take from each other: open it only where the operator names a path.
        self.cfg.set("control_socket_disable", env_args.control_socket is None)

    def reload(self) -> None:
        # SIGHUP: read the settings again, so that the new workers take, say, a new tokens
        # file; a bad one keeps the old settings, as a bad Gunicorn config keeps the old.
        try:
            self.settings = Settings.from_env()
        except SettingsError as exc:
            logging.getLogger("gunicorn.error").error("settings not reloaded: %s", exc)
        super().reload()

    def load(self) -> Any:
        return create_app(self.settings)


def gunicorn_options(settings: Settings) -> dict[str, Any]:
    tls = {"certfile": str(settings.tls_cert), "keyfile": str(settings.tls_key)}
    return {
        **(tls if settings.tls_cert else {}),
        "bind": [settings.bind],
        "workers": settings.workers,
        "threads": settings.threads,
        "worker_class": "service.worker.Worker",  # gthread, with silent connections parked
        "worker_connections": settings.max_connections,
        "proc_name": "logwriter",
        "errorlog": "-",
        "keepalive": 5,  # log shippers post again and again on the same connection
        "post_worker_init": post_worker_init,
        "worker_exit": worker_exit,
        "child_exit": child_exit,
    }


def post_worker_init(worker: Any) -> None:
    # Our log lines go where Gunicorn's go, in its format.
    error_log = worker.log.error_log
    log.handlers = error_log.handlers
    log.setLevel(error_log.level)
    log.propagate = False
    # gthread's own SIGINT/SIGQUIT handler shuts its thread pool down from inside the signal
    # handler: it can deadlock with a submit on the main thread, or exit while requests still
    # run. So here these signals take the SIGTERM path: stop accepting, finish, then drain.
    signal.signal(signal.SIGINT, worker.handle_exit)
    signal.signal(signal.SIGQUIT, worker.handle_exit)
    metrics.workers.set(1)
    runtime(worker.wsgi).writer.start()


def worker_exit(server: Any, worker: Any) -> None:
    if worker.pid != os.getpid() or getattr(worker, "wsgi", None) is None:
        return  # called in the arbiter for a worker that is already gone, or never loaded
    runtime(worker.wsgi).writer.stop()


def child_exit(server: Any, worker: Any) -> None:
    multiprocess.mark_process_dead(worker.pid)
