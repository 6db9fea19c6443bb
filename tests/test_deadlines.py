"""The body deadline watchdog on a real socket pair."""

import socket
import time

import pytest

from service.deadlines import ReadDeadlines

pytestmark = pytest.mark.unit


def test_a_read_past_the_deadline_ends_and_is_known_to_have_expired():
    reader, writer = socket.socketpair()
    deadlines = ReadDeadlines(0.3)
    deadlines.start(reader)
    reader.settimeout(5)
    assert reader.recv(10) == b""  # cut off by the watchdog, not by the 5 s timeout
    assert deadlines.expired(reader)
    deadlines.end(reader)
    assert not deadlines.expired(reader)
    reader.close()
    writer.close()


def test_a_socket_is_never_cut_off_after_its_end():
    reader, writer = socket.socketpair()
    deadlines = ReadDeadlines(0.2)
    deadlines.start(reader)
    deadlines.end(reader)
    writer.sendall(b"next request")
    reader.settimeout(1)

    time.sleep(0.6)  # past the deadline it would have had
    assert reader.recv(100) == b"next request"
    reader.close()
    writer.close()
