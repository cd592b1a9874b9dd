"""Producers: LISTEN for pending work and publish it as Celery messages.

The listener, the dispatcher (claims pending rows, publishes doc ids), the reconciler (lost
or missing work) and their loop (``python -m producers``); :mod:`producers.broker` is the
one module that reads Redis' queues. It may import :mod:`workers` (the app, queue and task
names), the library and :mod:`schema`; never ``pgfleet.ops`` or ``pgfleet.cli``, which sit
above it and read the broker through :mod:`producers.broker`.
"""
