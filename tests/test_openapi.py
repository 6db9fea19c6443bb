"""The OpenAPI document kept in the repository, served at /openapi.json, and Schemathesis run
against the live service from it: no 5xx, and no answer that breaks the document."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from support import Logwriters

pytestmark = pytest.mark.service

TESTS = Path(__file__).resolve().parent
DOCUMENT = TESTS.parent / "service" / "openapi.json"


def test_schemathesis_finds_nothing(start_logwriter: Logwriters):
    service = start_logwriter(
        env={"LOGWRITER_MAX_BODY_BYTES": "64KiB", "LOGWRITER_MAX_LINE_BYTES": "4KiB"}
    )
    served = json.loads(service.request("GET", "/openapi.json").body)
    assert served == json.loads(DOCUMENT.read_text())
    result = subprocess.run(
        [
            str(Path(sys.executable).parent / "schemathesis"),
            "run",
            f"http://127.0.0.1:{service.port}/openapi.json",
            "--checks=all",
            "--max-examples=100",
            "--seed=20261125",
            "--request-timeout=10",
        ],
        env={
            **os.environ,
            "SCHEMATHESIS_HOOKS": "schemathesis_hooks",
            "PYTHONPATH": str(TESTS),
        },
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert "5xx" not in service.log_text() and "Traceback" not in service.log_text()
