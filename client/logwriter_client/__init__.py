"""logwriter-client: send logs to logwriter from Python apps and from hosts.

- Handler: a logging.Handler that buffers records and sends them in batches from a thread
  of its own, retrying while the service is away; emit() never does I/O.
- Client: the same sending, called directly (send(lines) raises Refused or Undelivered).
- logwriter-ship (logwriter_client.ship): the command for pipes and followed files.

Standard library only, Python 3.9 and newer.
"""

from logwriter_client.client import Client, Refused, Undelivered
from logwriter_client.handler import Handler, JsonFormatter

__all__ = ["Client", "Handler", "JsonFormatter", "Refused", "Undelivered"]
__version__ = "0.1.0"
