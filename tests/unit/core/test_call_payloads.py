"""How call arguments and values travel: pickled, or JSON for functions declared
`serializer="json"`, whose runners refuse pickled arguments without unpickling them."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import pytest

import wallaroo
from wallaroo.core import calls
from wallaroo.core.errors import DefinitionError, NotJsonError, PickledArgumentsRefused


class _Planted:
    """Unpickling it writes a file: proof that bytes were unpickled."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.write_text, (self.path, "ran"))


def test_json_arguments_round_trip_with_keywords_in_name_order() -> None:
    data = calls.pack_args((1, "two", [3.5, None]), {"b": True, "a": {"k": 1}}, "json")
    assert data.startswith(calls.JSON_MARK)
    assert data == calls.pack_args((1, "two", [3.5, None]), {"a": {"k": 1}, "b": True}, "json")
    assert calls.unpack_args(data, "json") == ((1, "two", [3.5, None]), {"a": {"k": 1}, "b": True})
    # A function that takes pickles takes JSON too (what `wallaroo call` sends).
    assert calls.unpack_args(data, "pickle") == ((1, "two", [3.5, None]), {"a": {"k": 1}, "b": True})


def test_a_json_function_refuses_pickled_arguments_without_unpickling_them(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    hostile = pickle.dumps(((_Planted(marker),), {}))
    with pytest.raises(PickledArgumentsRefused, match=r"app\.f takes JSON arguments only"):
        calls.unpack_args(hostile, "json", "app.f")
    assert not marker.exists()
    # The same bytes to a function that takes pickles do run: that is what "pickle" means.
    calls.unpack_args(hostile, "pickle")
    assert marker.read_text() == "ran"


@pytest.mark.parametrize("body", [b"[1, 2]", b'{"args": 3}', b'{"args": [], "kwargs": []}', b"{"])
def test_json_arguments_of_the_wrong_shape_are_an_error(body: bytes) -> None:
    with pytest.raises(ValueError):
        calls.unpack_args(calls.JSON_MARK + body, "json")


def test_values_that_are_no_json_are_refused_naming_the_function_and_what() -> None:
    with pytest.raises(NotJsonError, match=r"an argument of app\.f is not JSON.*set"):
        calls.pack_args(({1, 2},), {}, "json", "app.f")
    with pytest.raises(NotJsonError, match="the return value of app.f is not JSON"):
        calls.pack_value(float("nan"), "json", "app.f")


def test_values_round_trip_in_both_serializers() -> None:
    assert calls.unpack_value(calls.pack_value({"a": [1, 2]}, "json")) == {"a": [1, 2]}
    assert calls.unpack_value(calls.pack_value({1, 2})) == {1, 2}


def test_the_serializer_is_declared_per_app_or_per_function() -> None:
    app = wallaroo.App("ser", serializer="json")

    @app.function()
    def inherits(x: int) -> int:
        return x

    @app.function(serializer="pickle")
    def overrides(x: int) -> int:
        return x

    assert inherits.serializer == "json" and app.specs["inherits"].info().serializer == "json"
    assert overrides.serializer == "pickle"
    with pytest.raises(DefinitionError, match="serializer='yaml'"):
        app.function(serializer="yaml")  # type: ignore[arg-type]
    with pytest.raises(DefinitionError, match="serializer='xml'"):
        wallaroo.App("bad", serializer="xml")  # type: ignore[arg-type]
