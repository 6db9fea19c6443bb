"""logwriter-ship: send the lines of a pipe, or of files followed like `tail -F`, to logwriter.

    some-app 2>&1 | logwriter-ship http://127.0.0.1:8080 --stream app
    logwriter-ship http://logs:8080 --stream web --state /var/lib/logwriter-ship/web.json \\
        /var/log/nginx/access.log /var/log/nginx/error.log

stdin: lines are batched through a Sender that waits for room when its buffer is full (so the
pipe waits, and nothing is dropped); after EOF it exits 0 once every line is acknowledged, or
1 with a message if that does not happen within --timeout.

Files: one loop reads the next batch from the files (follow.Files), posts it, retrying until
the service acknowledges it, and only then moves the checkpoint past it. The files are the
buffer: nothing is held in memory but the batch in flight, and after a crash at most that
batch is sent twice.

SIGTERM or SIGINT: the batch in flight is finished (for up to --timeout), the checkpoint
saved, and it exits 0; a second signal ends it at once.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading

from logwriter_client.client import ACKS, TEXT, Client, Refused, Undelivered
from logwriter_client.follow import Checkpoint, Files, valid_utf8
from logwriter_client.sender import Sender

_READ_BYTES = 1 << 16


def _join_or_stop(thread: threading.Thread) -> bool:
    """Wait for `thread` to end; True if a SIGTERM or SIGINT came first. Any signal after that
    ends the process at once."""
    signals: list[int] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: signals.append(signum))
    try:
        # A handler only notes the signal: one that raised would interrupt Thread.join(), which
        # then takes the thread for ended while it still runs.
        while thread.is_alive() and not signals:
            thread.join(0.1)
        return bool(signals)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, signal.SIG_DFL)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_intermixed_args(argv)
    token = os.environ.get("LOGWRITER_TOKEN")
    if args.token_file:
        with open(args.token_file, encoding="utf-8") as file:
            token = file.read().strip()
    try:
        client = Client(args.url, args.stream, token=token)
    except ValueError as exc:
        _say(str(exc))
        return 2
    if args.files:
        if not args.state:
            _say("--state PATH is needed with files: without it, a restart sends them again")
            return 2
        return _ship_files(client, args)
    return _ship_stdin(client, args)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="logwriter-ship",
        description="Send the lines of stdin, or of files followed through rotation, to logwriter.",
    )
    parser.add_argument("url", help="the service's base URL, such as http://127.0.0.1:8080")
    parser.add_argument("--stream", default="default", help="the stream (default: default)")
    parser.add_argument("files", nargs="*", metavar="FILE", help="files to follow (else stdin)")
    parser.add_argument(
        "--state", help="the checkpoint file (needed with files): per file, what was acknowledged"
    )
    parser.add_argument(
        "--from-end",
        action="store_true",
        help="start a file the checkpoint does not know at its end, not its start",
    )
    parser.add_argument(
        "--ack", choices=ACKS, default="written", help="what the service must do before it answers"
    )
    parser.add_argument(
        "--token-file", help="a file holding the bearer token (else $LOGWRITER_TOKEN, if set)"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=30.0,
        help="seconds to deliver what is left after EOF or a stop signal (default 30)",
    )
    parser.add_argument(
        "--batch-bytes",
        type=_size,
        default=1 << 20,
        help="most bytes per request, and the longest line (longer ones go in pieces); at most "
        "the service's LOGWRITER_MAX_LINE_BYTES (default 1MiB)",
    )
    parser.add_argument(
        "--batch-seconds",
        type=float,
        default=0.2,
        help="how long lines wait for a batch to fill, and how often files are looked at "
        "(default 0.2)",
    )
    parser.add_argument(
        "--buffer-bytes",
        type=_size,
        default=16 << 20,
        help="stdin: bytes held while the service is away; then the pipe waits (default 16MiB)",
    )
    parser.add_argument(
        "--rotate-wait",
        type=float,
        default=5.0,
        help="seconds a rotated file must stay the same size before it is closed (default 5)",
    )
    return parser


def _size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    text = text.strip().upper().removesuffix("IB").removesuffix("B")
    multiplier = units.get(text[-1:], 1)
    value = int(text[:-1] if text[-1:] in units else text)
    if value * multiplier <= 0:
        raise argparse.ArgumentTypeError("must be more than 0")
    return value * multiplier


def _ship_stdin(client: Client, args: argparse.Namespace) -> int:
    sender = Sender(
        client,
        ack=args.ack,
        content_type=TEXT,
        buffer_bytes=args.buffer_bytes,
        batch_bytes=args.batch_bytes,
        batch_seconds=args.batch_seconds,
        drop_when_full=False,
    )
    reader = _StdinReader(sender, sys.stdin.fileno(), args.batch_bytes)
    reader.start()
    _join_or_stop(reader)  # after a signal, what was read is still delivered
    sender.close(args.timeout)
    if reader.error is not None:
        _say(f"reading stdin failed: {reader.error}")
    if sender.delivered != reader.lines:
        missing = reader.lines - sender.delivered
        _say(f"{missing} of {reader.lines} lines were not delivered: {sender.problem}")
        return 1
    return 0 if reader.error is None else 1


class _StdinReader(threading.Thread):
    """Reads stdin into the sender, whole lines at a time; a line longer than a batch goes in
    pieces (as follow.Files cuts them), and a last line without a newline gets one."""

    def __init__(self, sender: Sender, fd: int, batch_bytes: int) -> None:
        super().__init__(name="logwriter-ship-stdin", daemon=True)  # a stop leaves it blocked
        self._sender = sender
        self._fd = fd
        self._longest = batch_bytes
        self.lines = 0  # read so far, as the service counts them
        self.error: OSError | None = None

    def run(self) -> None:
        rest = b""
        try:
            while True:
                # Reads no longer than a line may be: only the first line can be too long.
                chunk = os.read(self._fd, min(_READ_BYTES, self._longest))
                if not chunk:
                    break
                data = rest + chunk
                while len(data) > self._longest and data.find(b"\n", 0, self._longest + 1) < 0:
                    self._put(data[: self._longest] + b"\n")
                    data = data[self._longest :]
                end = data.rfind(b"\n") + 1
                if end:
                    self._put(data[:end])
                rest = data[end:]
        except OSError as exc:
            self.error = exc
        if rest:
            self._put(rest + b"\n")

    def _put(self, lines: bytes) -> None:
        self.lines += lines.count(b"\n")
        self._sender.put(valid_utf8(lines))


def _ship_files(client: Client, args: argparse.Namespace) -> int:
    checkpoint = Checkpoint(args.state)
    try:
        entries = checkpoint.load()
    except (ValueError, KeyError, TypeError) as exc:
        _say(f"{args.state} is not a checkpoint ({exc!r}): move it away to start afresh")
        return 2
    files = Files(
        args.files,
        entries,
        from_end=args.from_end,
        rotate_wait=args.rotate_wait,
        batch_bytes=args.batch_bytes,
    )
    stop = threading.Event()
    outcome: list[int] = []
    shipper = threading.Thread(
        target=_follow,
        args=(client, files, checkpoint, stop, args, outcome),
        name="logwriter-ship-files",
    )
    shipper.start()
    if _join_or_stop(shipper):
        stop.set()
        client.stop_retrying(after=args.timeout)
        shipper.join()
    files.close()
    return outcome[0] if outcome else 1


def _follow(
    client: Client,
    files: Files,
    checkpoint: Checkpoint,
    stop: threading.Event,
    args: argparse.Namespace,
    outcome: list[int],
) -> None:
    """Read, post, acknowledge, save the checkpoint; until `stop`. Appends the exit status."""
    saved = None
    while not stop.is_set():
        chunks = files.read()
        if chunks:
            try:
                client.post(b"".join(chunk.data for chunk in chunks), ack=args.ack)
            except Undelivered as exc:  # only once stopping
                _say(f"the last batch is sent again at the next start: {exc}")
                break
            except Refused as exc:
                _say(f"the service refused a batch: {exc}; stopping, the checkpoint before it")
                outcome.append(1)
                return
            files.acknowledge(chunks)
        entries = files.entries()
        if entries != saved:
            checkpoint.save(entries)
            saved = entries
        if not chunks:
            stop.wait(args.batch_seconds)
    outcome.append(0)


def _say(message: str) -> None:
    print(f"logwriter-ship: {message}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
