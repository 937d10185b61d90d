"""What the tests share, one module per kind of helper.

- :mod:`tests.support.servers`: the repository's paths, the engines that import here, a real
  gunicorn (:func:`~tests.support.servers.start_gunicorn`), the ``wagi`` command, raw HTTP.
- :mod:`tests.support.workers`: gunicorn's worker processes, and waiting for a condition.
- :mod:`tests.support.wat`: WASI modules written as WebAssembly text.
- :mod:`tests.support.certificates`: self-signed certificates for the TLS tests.
- :mod:`tests.support.nginx`: a real nginx running the deploy kit's site.
- :mod:`tests.support.wall_scenario`: engines behind the kernel wall in a fresh process.
"""
