"""What a worker tells about itself: request ids, logs, metrics, module stderr.

- :mod:`~wagi.observability.observe`: each request's id, route and ending;
- :mod:`~wagi.observability.logformat`: JSON log lines (``--log-format json``);
- :mod:`~wagi.observability.metrics`: Prometheus metrics (``--metrics-bind``);
- :mod:`~wagi.observability.module_log`: where modules' stderr goes.

Kept free of imports: ``python -m wagi.observability.metrics`` starts from here.
"""
