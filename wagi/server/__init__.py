"""The WSGI side of a worker: assembling it, serving requests, staying healthy.

- :mod:`~wagi.server.worker`: one function builds a complete, immutable worker (engine,
  loader, routing table, run sites and wall plan, health, observer);
- :mod:`~wagi.server.gateway`: the WSGI application that serves with it;
  :mod:`~wagi.server.answers`, :mod:`~wagi.server.body` and :mod:`~wagi.server.streaming`:
  ready-made responses, request bodies, a module's stdout on its way to the client;
- :mod:`~wagi.server.app`: the object behind ``wagi.wsgi:app``;
- :mod:`~wagi.server.gunicorn_hooks`: gunicorn's settings and hooks (``wagi.gunicorn_conf``);
- :mod:`~wagi.server.health`, :mod:`~wagi.server.watchdog`: an unfit worker is replaced;
  a 504 for engines that cannot interrupt a module.

Kept free of imports: ``python -m wagi.server.watchdog`` starts from here.
"""
