"""A real Prometheus (Debian's package, no Docker) scraping a local logwriter with 2 workers,
and promtool on the operator files in deploy/."""

import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from support import Logwriters, free_port, wait_until
from traffic import Load, check_files

pytestmark = pytest.mark.tools

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"


@pytest.mark.parametrize(
    "args",
    [
        ["check", "config", "prometheus.yml"],
        ["check", "rules", "alerts.yml"],
        ["test", "rules", "alerts_test.yml"],  # each alert fires when, and only when, it should
        ["check", "rules", "swarm/fleet-alerts.yml"],
        ["test", "rules", "swarm/fleet-alerts_test.yml"],
    ],
    ids=lambda args: " ".join(args),
)
def test_deploy_files_pass_promtool(args: list[str]):
    result = subprocess.run(["promtool", *args], cwd=DEPLOY, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def query(port: int, expr: str) -> list[dict]:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=5) as answer:
        return json.load(answer)["data"]["result"]


def scalar(port: int, expr: str) -> float | None:
    result = query(port, expr)
    return float(result[0]["value"][1]) if result else None


@pytest.mark.service
def test_prometheus_counts_every_line_on_disk(tmp_path: Path, start_logwriter: Logwriters):
    service = start_logwriter(workers=2)
    # The operator's own config and rules, pointed at this service and scraping faster.
    config = (DEPLOY / "prometheus.yml").read_text()
    config = config.replace("logwriter:8080", f"127.0.0.1:{service.port}")
    config = config.replace("5s", "1s")
    (tmp_path / "prometheus.yml").write_text(config)
    shutil.copy(DEPLOY / "alerts.yml", tmp_path / "alerts.yml")
    port = free_port()
    with (tmp_path / "prometheus.out").open("wb") as out:
        prometheus = subprocess.Popen(
            [
                "prometheus",
                f"--config.file={tmp_path / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        load = Load(service.port, clients=4).start()
        time.sleep(2)
        load.stop()
        # A 202 answers lines that are queued, not yet written: read the files once written.
        wait_until(lambda: service.metric("logwriter_queue_depth") == 0, 30, "an empty queue")
        on_disk = check_files(service.dir.glob("*.log"), load.acked)
        assert on_disk > 0

        said: dict[str, float | None] = {}

        def counted_all() -> bool:
            said["written"] = scalar(port, "sum(logwriter_lines_written_total)")
            said["depth"] = scalar(port, "sum(logwriter_queue_depth)")
            return (said["written"], said["depth"]) == (on_disk, 0)

        wait_until(
            counted_all,
            60,
            lambda: (
                f"Prometheus to say written={on_disk} depth=0; it says {said}:\n"
                + (tmp_path / "prometheus.out").read_text()[-3000:]
            ),
            interval=0.5,
        )
        assert scalar(port, 'up{job="logwriter"}') == 1
        assert scalar(port, "sum(logwriter_workers)") == 2
        assert scalar(port, "sum(logwriter_writer_ready)") == 2
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/rules", timeout=5) as answer:
            groups = json.load(answer)["data"]["groups"]
        rules = {rule["name"]: rule["health"] for group in groups for rule in group["rules"]}
        assert set(rules) == {
            "LogwriterDown",
            "LogwriterQueueNearlyFull",
            "LogwriterWriterErrors",
            "LogwriterNotReady",
        }
    finally:
        prometheus.terminate()
        prometheus.wait(30)
