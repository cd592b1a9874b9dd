"""A model that fails on validated input is the server's fault: the API says 500 with the
reason, not the 422 a bare ValueError from numpy would have become."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest

from pgfleet.api.service import encode
from pgfleet.embedding.batcher import BatcherClosed
from pgfleet.errors import InferenceFailed, ModelLoadError


class Failing:
    def __init__(self, exc: BaseException):
        self.exc = exc

    def encode(self, texts: list[str]) -> np.ndarray:
        raise self.exc


def test_an_engine_error_becomes_inference_failed_and_keeps_its_cause():
    cause = ValueError("setting an array element with a sequence.")
    with pytest.raises(InferenceFailed, match="ValueError: setting an array") as caught:
        encode(Failing(cause), ["a query"])  # type: ignore[arg-type]
    assert caught.value.__cause__ is cause


@pytest.mark.parametrize("exc", [BatcherClosed("shutting down"), ModelLoadError("no file")])
def test_a_closing_batcher_and_a_model_that_cannot_load_keep_their_errors(exc):
    with pytest.raises(type(exc)):
        encode(Failing(exc), ["a query"])  # type: ignore[arg-type]


def test_the_api_answers_inference_failed_with_500():
    from pgfleet.api.app import create_app
    from pgfleet.settings import Settings

    app = create_app(Settings.from_env({}), warm=False)
    handler = app.exception_handlers[InferenceFailed]
    response = asyncio.run(handler(None, InferenceFailed("the model failed")))
    body = json.loads(response.body)
    assert response.status_code == 500
    assert body["error"]["code"] == "inference_failed"
