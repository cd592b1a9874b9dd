"""pgfleet: a Celery worker fleet over PostgreSQL and pgvector; the library, then operations
and the command line on top of it.

The library is ``db``, ``models``, ``embedding``, ``text2sql``, ``training`` and the shared
modules (``settings``, ``state``, ``records``, ``corpus``, ``errors``, ``testing``). Of the
project's packages it imports only :mod:`schema`, and it never imports Celery, kombu, Redis,
click, rich, Flower or prometheus_client. :mod:`workers` and :mod:`producers` sit on the
library; ``pgfleet.ops`` sits on them and ``pgfleet.cli`` on everything. Nothing imports a
layer above its own (the ``[tool.importlinter]`` contracts in pyproject.toml, ``make lint``).
"""
