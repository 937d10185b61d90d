"""wagi: the WebAssembly Gateway Interface, CGI for WASI modules, served by gunicorn."""

__version__ = "0.1.0"
