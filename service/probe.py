"""`python -m service.probe`: exit 0 if this host's logwriter answers /healthz with 200.

For container health checks: it needs nothing a slim Python image lacks (no curl), and finds
the port in LOGWRITER_BIND like the service does.
"""

import ssl
import sys
import urllib.request

from service.settings import Settings

_ANY_ADDRESS = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "[::]": "[::1]"}


def main() -> int:
    settings = Settings.from_env()
    bind = settings.bind
    if bind.startswith(("unix:", "fd://")):
        print(f"logwriter probe: cannot probe LOGWRITER_BIND={bind}", file=sys.stderr)
        return 1
    host, _, port = bind.rpartition(":")
    scheme, context = "http", None
    if settings.tls_cert is not None:
        # Its own certificate, trusted as such: the name in it is the one senders use.
        scheme, context = "https", ssl.create_default_context(cafile=str(settings.tls_cert))
        context.check_hostname = False
    url = f"{scheme}://{_ANY_ADDRESS.get(host, host)}:{port}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=2, context=context):
            return 0
    except OSError as exc:  # refused, timed out, or an HTTP error status such as 503
        print(f"logwriter probe: {url}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
