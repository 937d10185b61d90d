"""Where and how module runs happen, once the configuration has been read.

- :mod:`~wagi.execution.engine_choice`: which engine serves a configuration, and what it
  must refuse, in ``modules.toml`` terms (capabilities below, policy here);
- :mod:`~wagi.execution.handlers`: each route's :class:`~wagi.execution.handlers.Handler`
  (environment, volumes, limits fixed at start-up) and the routing table of them;
- :mod:`~wagi.execution.loader`: compiled modules, and reloads of changed module files;
- :mod:`~wagi.execution.wall`, :mod:`~wagi.execution.landlock`: the kernel wall, planned
  once per worker, and Landlock itself;
- :mod:`~wagi.execution.sites`: the run sites, the threads runs happen on behind that
  wall (:mod:`~wagi.execution.runners`: pools of such threads);
- :mod:`~wagi.execution.scratch`: the transient folder and per-request scratch
  directories.

Nothing here knows HTTP: the server (:mod:`wagi.server`) sits above.
"""
