"""HTTP refusals: a request the service turns away, with the status, reason and message it gets."""


class Rejected(Exception):
    """A request the service refuses, having written none of it.

    `status` and `message` become the HTTP answer; `reason` is the short label that
    logwriter_rejected_requests_total counts it under.
    """

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message
