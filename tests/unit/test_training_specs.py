"""The registry of training jobs: each rule holds the same way for the library, ``celery
call`` (both through the spec's check) and the command (which checks at parse time)."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from pgfleet.cli import main
from pgfleet.errors import PgfleetError
from pgfleet.training.specs import SPECS
from workers.queues import TRAINING_TASKS


def test_the_training_queue_routes_every_job_by_its_task_name():
    assert TRAINING_TASKS == ("quantize", "train_embeddings", "distill_embeddings",
                              "train_text2sql", "distill_text2sql")
    assert all(SPECS[name].function() for name in TRAINING_TASKS)


@pytest.mark.parametrize(("task", "given", "message"), [
    ("distill_embeddings", {"max_texts": 9}, "max_texts must be at least 10, not 9"),
    ("train_text2sql", {"beams": 17}, "beams must be at most 16, not 17"),
    ("distill_text2sql", {"from_version": "v1", "beams": 17}, "beams must be at most 16"),
    ("quantize", {"sample": 19}, "sample must be at least 20, not 19"),
    ("quantize", {"sample": "many"}, "option sample must be int, not str ('many')"),
    ("quantize", {"samples": 30}, "unknown option(s) ['samples']"),
    ("train_embeddings", {"pairs": "all"}, "pairs must be one of ['auto', 'table', 'mined']"),
    ("train_text2sql", {"base_model": "t5-small", "tokenizer": "bpe"},
     "tokenizer applies to a model built from scratch"),
])
def test_the_library_applies_every_rule(task, given, message):
    with pytest.raises(PgfleetError, match=f"^{task}: ") as info:
        SPECS[task].validate(given)
    assert message in str(info.value)


def test_a_version_id_may_be_an_int_where_the_job_says_so():
    assert SPECS["quantize"].validate({"from_version": 3}) == {"from_version": "3",
                                                                "sample": 200}
    with pytest.raises(PgfleetError, match="from_version must be str, not int"):
        SPECS["distill_text2sql"].validate({"from_version": 3})


@pytest.mark.parametrize(("argv", "message"), [
    (["embeddings", "--learning-rate", "3"], "learning_rate must be between 0 and 1"),
    (["embeddings", "--eval-fraction", "1"], "eval_fraction must be between 0 and 1"),
    (["distill", "--max-texts", "9"], "9 is not in the range x>=10"),
    (["quantize", "--sample", "10"], "sample must be at least 20, not 10"),
    (["text2sql", "--d-model", "20"], "d_model must be a multiple of 8, not 20"),
    (["text2sql", "--beams", "17"], "17 is not in the range 1<=x<=16"),
    (["distill-text2sql", "--from", " "], "from_version is required"),
])
def test_the_command_refuses_what_the_library_refuses_before_queueing(argv, message):
    result = CliRunner().invoke(main, ["train", *argv], prog_name="pgfleet")
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_the_command_leaves_out_what_was_not_given():
    spec = SPECS["train_text2sql"]
    parsed = {"base_model": "", "tokenizer": None, "d_model": 0, "layers": 0, "name": "x"}
    assert spec.command_options(parsed) == {"base_model": "", "name": "x"}
    assert spec.command_options({"tokenizer": "bytes", "d_model": 64}) == {
        "tokenizer": "bytes", "d_model": 64}


def test_every_job_has_its_command_made_from_its_spec():
    from pgfleet.cli.train import train

    commands = {spec.command: spec for spec in SPECS.values()}
    assert sorted(commands) == ["distill", "distill-text2sql", "embeddings", "quantize",
                                "text2sql"]
    for name, spec in commands.items():
        command = train.commands[name]
        assert command.help == spec.help and spec.help
        flags = {opt for param in command.params for opt in param.opts}
        for option_name, option in spec.options.items():
            if option.cli:
                assert (option.flag or "--" + option_name.replace("_", "-")) in flags
        assert {"--local", "--wait", "--timeout", "--json"} <= flags
