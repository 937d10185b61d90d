"""hello.py: the Python CGI hello of bench/compare.py, one script in three forms.

A plain CGI script: it reads the request body from stdin and prints a header block
and a JSON body. compare.py serves it

- as classic CGI: ``python3`` started per request by nginx + fcgiwrap;
- on wagi, built by componentize-py into a ``wasi:cli/run`` component
  (``bench/components/app_cli.py`` calls :func:`main`);
- on ``wasmtime serve``, built into a ``wasi:http/proxy`` component
  (``bench/components/app_http.py`` calls :func:`answer` with the request's method and body).

Every form answers ``GET`` with exactly the same Content-Type and body.
"""

import json
import os
import sys


def answer(method: str, body: bytes) -> tuple[str, bytes]:
    """The Content-Type and body of the answer to a request."""
    data = {"hello": "world", "method": method, "bytes": len(body)}
    return "application/json", json.dumps(data).encode() + b"\n"


def main() -> None:
    content_type, data = answer(os.environ.get("REQUEST_METHOD", ""), sys.stdin.buffer.read())
    sys.stdout.buffer.write(b"Content-Type: " + content_type.encode() + b"\n\n" + data)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
