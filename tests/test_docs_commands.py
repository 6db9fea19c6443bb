"""The curl examples of README.md and docs/*.md, run as a user pastes them, against the service.

Every command in a fenced code block that is a `curl`, or pipes into one (`printf ... | curl`,
`gzip ... | curl`), runs with `bash -c` in a folder that holds the input files the examples
name, unchanged but for `localhost:8080`, which becomes the test service's address. `-sS` and
a write-out of the status code come from a curl config file of the test's own (HOME and
CURL_HOME point at that folder), so the command stays as written. Each must exit 0 and get a
2xx. One that posts lines must find them in its stream's file, each a line the example sent
(in the command, an input file, or what the command before `| curl` writes); where the next
line of the block shows the answer (`# {"accepted":2}`), the answer must be exactly that.
"""

import gzip
import json
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from support import Service, wait_until

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
ADDRESS = "localhost:8080"

# The files the examples read, in the folder they run in. A '+' and a '%' in a text line, so
# that a form decoding of the body would show.
INPUTS = {
    "app.log": "GET /search?q=a+b%20c 200 12ms\nuser=alice action=login\n",
    "events.ndjson": '{"level":"info","msg":"started"}\n{"level":"warn","msg":"disk 91% full"}\n',
}
CURLRC = 'silent\nshow-error\nwrite-out = "\\n%{http_code}\\n"\n'

_FENCE = re.compile(r"^\s*```")
_COMMAND = re.compile(r"^(?:curl\s|[^#|]*\|\s*curl\s)")
_SHOWN_ANSWER = re.compile(r"^#\s*(\{[^}]*\})")
_STREAM = re.compile(r"/v1/logs(?:/([A-Za-z0-9][A-Za-z0-9._-]*))?(?=[?'\"\s]|$)")


@dataclass(frozen=True)
class Example:
    where: str  # file:line, the test's id
    command: str  # continuation lines joined, as bash reads them
    answer: str | None  # the answer the block shows after it, if any


def examples(path: Path) -> list[Example]:
    """The curl commands in the fenced code blocks of one markdown file."""
    found: list[Example] = []
    in_block = False
    lines = path.read_text().splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        if _FENCE.match(line):
            in_block = not in_block
            continue
        if not in_block:
            continue
        start = i
        command = line.strip()
        while command.endswith("\\") and i < len(lines):
            command = command[:-1] + " " + lines[i].strip()
            i += 1
        if not _COMMAND.match(command):
            continue
        shown = _SHOWN_ANSWER.match(lines[i].strip()) if i < len(lines) else None
        where = f"{path.relative_to(ROOT)}:{start}"
        found.append(Example(where, command, shown[1] if shown else None))
    return found


EXAMPLES = [example for path in DOCS for example in examples(path)]


@pytest.mark.unit
def test_the_readme_has_curl_examples() -> None:
    # Without this, a change to how the README writes its examples would leave nothing to run.
    readme = [e for e in EXAMPLES if e.where.startswith("README.md:")]
    assert len(readme) >= 4, f"found only {[e.where for e in readme]}"


@pytest.mark.service
@pytest.mark.tools  # curl
@pytest.mark.parametrize("example", EXAMPLES, ids=[e.where for e in EXAMPLES])
def test_example_works_as_written(example: Example, service: Service, tmp_path: Path) -> None:
    assert ADDRESS in example.command, f"{example.where} does not talk to {ADDRESS}"
    folder = tmp_path / "cwd"
    folder.mkdir()
    for name, text in INPUTS.items():
        (folder / name).write_text(text)
    (folder / ".curlrc").write_text(CURLRC)
    stream = _STREAM.search(example.command)
    log_file = service.dir / f"{(stream[1] or 'default') if stream else ''}.log"
    before = _lines(log_file)

    command = example.command.replace(ADDRESS, f"127.0.0.1:{service.port}")
    done = subprocess.run(
        ["bash", "-c", f"set -o pipefail; {command}"],
        cwd=folder,
        env={"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(folder), "CURL_HOME": str(folder)},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, f"exit {done.returncode}: {done.stderr}{done.stdout}"
    answer, _, status = done.stdout.rstrip("\n").rpartition("\n")
    assert status.isdigit(), f"no status code in {done.stdout!r}"
    assert 200 <= int(status) < 300, f"HTTP {status}: {answer}"
    if example.answer is not None:
        assert json.loads(answer) == json.loads(example.answer)
    if stream is None:
        return

    accepted = json.loads(answer)["accepted"]
    assert accepted > 0, "the example posted no line"
    # A 202 is answered before the write: it follows shortly.
    wait_until(
        lambda: len(_lines(log_file)) >= len(before) + accepted,
        5,
        lambda: f"{accepted} accepted lines in {log_file.name}: {_lines(log_file)[len(before) :]}",
    )
    new = _lines(log_file)[len(before) :]
    assert len(new) == accepted, f"{accepted} accepted, {len(new)} in {log_file.name}: {new}"
    sent = example.command + "".join(INPUTS.values()) + _piped_in(example.command, folder)
    for line in new:
        assert line and line in sent, f"{line!r} is not a line the example sent"


def _piped_in(command: str, folder: Path) -> str:
    """What the command before `| curl` writes (printf's escapes applied, gzip undone)."""
    producer, pipe, _ = command.rpartition("| curl")
    if not pipe:
        return ""
    out = subprocess.run(["bash", "-c", producer], cwd=folder, capture_output=True).stdout
    return (gzip.decompress(out) if out[:2] == b"\x1f\x8b" else out).decode(errors="replace")


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []
