"""Operations: the embedded PostgreSQL and Redis and their credentials, the supervisor,
``pgfleet up``, ``pgfleet status``, the Prometheus collector and the benchmarks.

Between :mod:`producers` and ``pgfleet.cli``: it may import :mod:`producers` (what is read
from Redis, the producer loop), :mod:`workers` (the app, queue names), the library and
:mod:`schema`, and the servers' packages (redis, prometheus_client); never ``pgfleet.cli``
nor click: the commands parse and print, this folder does the work. The fleet's state file
is :mod:`pgfleet.state`, below the library, so that every command can read it.
"""
