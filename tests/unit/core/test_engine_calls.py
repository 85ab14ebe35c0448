"""Steps of a pipeline that calls functions run inside a StepScope naming their input record:
the call ids they derive are the same on every run of a batch and unique across records and
across the values a fan-out made from one record."""

from __future__ import annotations

import dataclasses

import wallaroo as wl
from wallaroo.core import calls
from wallaroo.core.engine import Batch, StageEngine


@wl.computation_multi(name="split")
def split(line: str) -> list[str]:
    return line.split()


@wl.computation(name="call per word")
def call_per_word(word: str) -> str:
    scope = calls.step_scope.get()
    assert scope is not None
    return f"{word}:{scope.next_call_id()}"


def engine() -> StageEngine:
    pipeline = (wl.source("in", wl.StreamSource()).to(split).to(call_per_word)
                .to_sink(wl.StreamSink("out")))
    app = dataclasses.replace(wl.build_application("calls", pipeline), calls=True)
    return StageEngine(app, app.stages[0], partition=3)


def outputs(eng: StageEngine, lines: list[bytes]) -> list[str]:
    batch = Batch()
    batch.add(41, [None] * len(lines), list(lines))
    result = eng.attempt(batch, {}, {})
    return [o.decode() if isinstance(o, bytes) else o for o in result.sink_out[0]]


def test_every_value_of_a_fan_out_gets_its_own_call_id_and_reruns_get_the_same() -> None:
    first = outputs(engine(), [b"apple banana apple", b"cherry"])
    again = outputs(engine(), [b"apple banana apple", b"cherry"])
    ids = [o.split(":")[1] for o in first]
    assert first == again
    assert len(set(ids)) == 4, first  # apple, banana, apple again, cherry: four calls


def test_outside_a_scoped_app_steps_have_no_scope() -> None:
    assert calls.step_scope.get() is None
