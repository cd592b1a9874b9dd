"""Queue and task names, in one place. Keep them stable: deployments and tools name them."""

from __future__ import annotations

from pgfleet.training.specs import SPECS

#: torch engine; fp16 on CUDA, fp32 on CPU where no GPU exists
QUEUE_GPU = "embed.gpu"
#: ONNX Runtime INT8 engine on CPU
QUEUE_CPU = "embed.cpu"
#: long jobs: training, distillation, quantization
QUEUE_TRAINING = "training"

ALL_QUEUES = (QUEUE_GPU, QUEUE_CPU, QUEUE_TRAINING)
#: tasks routed to the training queue (also when sent by name, as ``celery call`` does):
#: the training jobs (pgfleet/training/specs.py)
TRAINING_TASKS = tuple(SPECS)

TASK_EMBED = "pgfleet.embed_docs"
#: a source's rows (pgfleet.sources): ``embed_source(source_id, version_id, row_keys)``
TASK_EMBED_SOURCE = "pgfleet.embed_source"
#: SQL for a question (interactive; on QUEUE_CPU, see workers/tasks/text2sql.py)
TASK_GENERATE_SQL = "generate_sql"

#: inference cache maintenance, sent by Celery beat (on QUEUE_CPU: a few short deletes)
TASK_PRUNE_CACHE = "pgfleet.prune_cache"
#: Celery beat's schedule file, under PGFLEET_HOME
BEAT_SCHEDULE_FILE = "celerybeat-schedule"

#: the channel the docs triggers NOTIFY on
NOTIFY_CHANNEL = "pgfleet_pending"

_QUEUE_BY_FORMAT = {
    "torch": QUEUE_GPU,
    "onnx": QUEUE_CPU,
    "onnx-int8": QUEUE_CPU,
}


def queue_for_format(model_format: str) -> str:
    """The queue whose workers serve a model version of this format."""
    try:
        return _QUEUE_BY_FORMAT[model_format]
    except KeyError:
        raise ValueError(
            f"no queue serves model format {model_format!r}; known: {sorted(_QUEUE_BY_FORMAT)}"
        ) from None
