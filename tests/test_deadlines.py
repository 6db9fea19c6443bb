"""The body deadline watchdog on a real socket pair."""

import socket
import time

import pytest

from service.deadlines import ReadDeadlines

pytestmark = pytest.mark.unit


def test_a_read_past_the_deadline_ends_and_the_callers_error_comes_through():
    reader, writer = socket.socketpair()
    deadlines = ReadDeadlines(0.3)
    with pytest.raises(LookupError, match="the caller's own"), deadlines.watch(reader):
        reader.settimeout(5)
        assert reader.recv(10) == b""  # cut off by the watchdog, not by the 5 s timeout
        assert deadlines.expired(reader)
        raise LookupError("the caller's own")
    assert not deadlines.expired(reader)
    reader.close()
    writer.close()


def test_a_socket_is_never_cut_off_after_its_block():
    reader, writer = socket.socketpair()
    deadlines = ReadDeadlines(0.2)
    with deadlines.watch(reader):
        pass
    writer.sendall(b"next request")
    reader.settimeout(1)

    time.sleep(0.6)  # past the deadline the block would have had
    assert reader.recv(100) == b"next request"
    reader.close()
    writer.close()
