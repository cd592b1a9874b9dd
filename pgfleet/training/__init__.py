"""Long jobs of the training queue: fine-tuning, distillation, quantization, text-to-SQL
training, their data (pairs) and their runs (claimed once, heartbeat, cancel, time limit).

Every job is defined once, as a ``JobSpec`` in :mod:`pgfleet.training.specs`; the Celery
tasks, their routing and the ``pgfleet train`` commands are made from it. The top of the
library: it may import :mod:`pgfleet.embedding`, :mod:`pgfleet.text2sql`,
:mod:`pgfleet.models`, :mod:`pgfleet.db`, the shared modules and :mod:`schema`; never
:mod:`workers`, :mod:`producers`, ``pgfleet.ops`` or ``pgfleet.cli``, nor Celery or click.
Heavy imports (torch, transformers, onnxruntime) happen inside the functions.
"""
