"""Outbound HTTP for modules: the host side of WAGI 0.8's ``wasi_experimental_http`` ABI.

Three layers, each importing only the ones before it:

- :mod:`~wagi.outbound.policy`: which origins a route may reach (pure: values and
  functions of ``modules.toml``, which the configuration imports);
- :mod:`~wagi.outbound.client`: the worker's urllib3 client, resolver and reaper thread;
- :mod:`~wagi.outbound.abi`: the five host functions and one run's state
  (:class:`~wagi.outbound.abi.OutboundSession`), which the engines bind.

The rules, decided once at start-up from ``modules.toml``:

- **Deny by default.** ``allowed_hosts`` lists origins, ``scheme://host[:port]``; a
  URL is allowed when its scheme, host and port (the scheme's default when absent)
  equal one entry's. WAGI 0.8 compared the host name only; comparing the whole
  origin means ``https://api.example.com`` does not open ``http://api.example.com:6379``.
  Anything else gets ``DESTINATION_NOT_ALLOWED``.
- **Redirects** are followed (WAGI 0.8 followed them, anywhere), at most
  ``MAX_REDIRECTS`` hops, and only to allowed origins: a redirect elsewhere ends
  the request with ``DESTINATION_NOT_ALLOWED``. Credentials and cookies are dropped
  when a redirect changes origin.
- **SSRF guard.** wagi resolves the host name itself, refuses the addresses that
  are loopback, link-local, unspecified, multicast or a cloud metadata service
  (``is_special_address``) unless the allow-list entry is that IP address itself
  (``http://127.0.0.1:8080``; ``http://localhost:8080`` is not enough), and connects
  to the address it checked, so a DNS answer that changes between check and use
  cannot move the connection.
- **Bounded.** Each request (connect, send, headers, every body read) ends at the
  run's deadline: a per-process reaper thread shuts the socket down when the deadline
  passes, so even a server that drips one byte at a time cannot hold the module past
  it. Response headers are capped at ``max_header_bytes`` and bodies at
  ``max_body_bytes`` (over: ``REQUEST_ERROR``); a run holds at most
  ``http_max_concurrency`` (and never more than ``MAX_HANDLES``) responses open
  at once (over: ``TOO_MANY_SESSIONS``), each holding one connection.
  Everything a run opened is closed when it ends.

The client is urllib3 (a dependency of pip and requests, so already on every
machine that installs wagi): one ``urllib3.PoolManager`` per worker process,
reused across requests (keep-alive), that can be pointed at a checked IP address
while it still verifies TLS against the host name (``server_hostname``,
``assert_hostname``), reads bodies raw and incrementally (``read1``, no
decompression, so the size cap counts the bytes on the wire), never reads proxy
settings from the environment, and leaves redirects to the ABI.
"""
