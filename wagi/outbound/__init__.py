"""Outbound HTTP for modules: the host side of WAGI 0.8's ``wasi_experimental_http``."""
