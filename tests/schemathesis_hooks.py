"""Schemathesis hooks (SCHEMATHESIS_HOOKS=schemathesis_hooks): how to send NDJSON bodies.

The document describes one NDJSON line as any JSON value; a generated value is sent as one line.
"""

import json

import schemathesis


@schemathesis.serializer("application/x-ndjson")
def ndjson(context: schemathesis.SerializationContext, value: object) -> bytes:
    return json.dumps(value).encode() + b"\n"
