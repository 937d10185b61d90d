"""CGI/1.1 (RFC 3875) both ways, as pure functions of their input.

- :mod:`wagi.cgi.request`: an HTTP request (a WSGI environ) -> a module's argv and
  environment (docs/cgi.md);
- :mod:`wagi.cgi.response`: a module's stdout -> status, headers and body, also while it
  streams.

Nothing here imports another part of wagi (an import contract in pyproject.toml says so).
"""
