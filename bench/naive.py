"""The app a user would write instead of logwriter: Flask appending each body under a lock.

Run by the benchmark under the same Gunicorn settings as logwriter. NAIVE_FILE names the file;
NAIVE_FSYNC=1 fsyncs after every request (the fsync-per-request variant).
"""

import os
import threading

from flask import Flask, request

app = Flask(__name__)
_lock = threading.Lock()
_file = open(os.environ["NAIVE_FILE"], "ab")  # noqa: SIM115 -- open for the process's life
_fsync = os.environ.get("NAIVE_FSYNC") == "1"


@app.post("/v1/logs/<stream>")
def append(stream: str) -> tuple[dict[str, int], int]:
    body = request.get_data()
    with _lock:
        _file.write(body)
        _file.flush()
        if _fsync:
            os.fsync(_file.fileno())
    return {"accepted": body.count(b"\n")}, 202
