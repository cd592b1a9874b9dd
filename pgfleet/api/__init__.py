"""The HTTP API (``pgfleet serve``): applications search, embed and ask for SQL through the
fleet's model versions, routed and logged as the command line is.

* :mod:`~pgfleet.api.service`: the engines (one per version, loaded once, fed by a batcher
  shared by concurrent callers) and the requests, without HTTP;
* :mod:`~pgfleet.api.app`: the FastAPI application (endpoints, bodies, errors, the page);
* :mod:`~pgfleet.api.keys`: API keys, stored as hashes;
* :mod:`~pgfleet.api.metrics`: the API's Prometheus metrics;
* :mod:`~pgfleet.api.client`: how the command line asks a running API.

It sits between the operations layer (which starts it) and the library it serves; it may
use FastAPI, uvicorn and prometheus_client, never Celery or the command line's packages.
"""
