"""wallaroo.api: decorators validate when applied, attach a frozen spec, return the function."""

import dataclasses

import pytest

import wallaroo as wl
from wallaroo.api import DecoderSpec, EncoderSpec, KeyExtractorSpec, StepSpec
from wallaroo.core.errors import ArityError, DefinitionError, MissingArgumentsError


class Counter:
    n = 0


def test_computation_returns_the_same_plain_callable_with_a_spec() -> None:
    def double(x):
        return x * 2

    decorated = wl.computation(name="double")(double)

    assert decorated is double
    assert double(21) == 42
    spec = wl.spec_of(double)
    assert isinstance(spec, StepSpec)
    assert (spec.kind, spec.name, spec.fn, spec.multi, spec.stateful) == (
        "computation", "double", double, False, False)


def test_state_computation_multi_spec_is_stateful_and_multi() -> None:
    @wl.state_computation_multi(name="fan", state=Counter)
    def fan(x, state):
        return [x, x]

    spec = wl.spec_of(fan)
    assert isinstance(spec, StepSpec)
    assert spec.state is Counter
    assert spec.multi and spec.stateful
    assert fan(1, Counter()) == [1, 1]


def test_spec_is_frozen() -> None:
    @wl.computation(name="noop")
    def noop(x):
        return x

    with pytest.raises(dataclasses.FrozenInstanceError):
        wl.spec_of(noop).name = "other"  # type: ignore[union-attr]


def test_spec_of_an_undecorated_function_is_none() -> None:
    def plain(x):
        return x

    assert wl.spec_of(plain) is None


def test_arity_error_names_the_function_its_line_and_the_fix() -> None:
    def two_args(a, b):
        return a

    with pytest.raises(ArityError) as err:
        wl.computation(name="bad")(two_args)

    message = str(err.value)
    assert "test_arity_error_names_the_function_its_line_and_the_fix.<locals>.two_args" in message
    assert "line" in message
    assert "def two_args(data)" in message
    assert (err.value.expected, err.value.got) == (1, 2)


def test_state_computation_needs_data_and_state_arguments() -> None:
    def one_arg(x):
        return x

    with pytest.raises(ArityError, match=r"def one_arg\(data, state\)"):
        wl.state_computation(name="s", state=Counter)(one_arg)


def test_computation_without_parentheses_says_how_to_fix_it() -> None:
    with pytest.raises(MissingArgumentsError, match="Did you forget the parentheses") as err:

        @wl.computation  # type: ignore[arg-type]
        def step(x):
            return x

    assert '@wallaroo.computation(name="my step")' in str(err.value)


def test_decorating_a_non_function_is_refused() -> None:
    with pytest.raises(DefinitionError, match="decorates a function, got 5"):
        wl.computation(name="x")(5)  # type: ignore[type-var]


def test_step_name_must_be_non_empty() -> None:
    with pytest.raises(DefinitionError, match="non-empty name"):
        wl.computation(name="  ")


@pytest.mark.parametrize("state", [None, 5, "Counter"])
def test_state_computation_requires_a_callable_state(state: object) -> None:
    with pytest.raises(DefinitionError, match="needs state="):
        wl.state_computation(name="s", state=state)  # type: ignore[arg-type]


def test_key_extractor_encoder_and_decoder_attach_their_specs() -> None:
    def key(x):
        return str(x)

    def enc(x):
        return b""

    def dec(b):
        return b

    assert wl.key_extractor(key) is key
    assert wl.encoder(enc) is enc
    assert wl.decoder(dec) is dec
    assert wl.spec_of(key) == KeyExtractorSpec(fn=key)
    assert wl.spec_of(enc) == EncoderSpec(fn=enc)
    assert wl.spec_of(dec) == DecoderSpec(fn=dec)


@pytest.mark.parametrize("decorator", [wl.key_extractor, wl.encoder, wl.decoder])
def test_one_argument_decorators_reject_other_arities(decorator) -> None:
    def none():
        return None

    def two(a, b):
        return a

    for fn in (none, two):
        with pytest.raises(ArityError, match=fn.__qualname__):
            decorator(fn)


def test_defaults_and_varargs_satisfy_arity() -> None:
    def extra_default(x, y=1):
        return x

    def star(*args):
        return args

    assert wl.key_extractor(extra_default) is extra_default
    assert wl.computation(name="star")(star) is star


def test_decoder_with_framing_arguments_keeps_them() -> None:
    @wl.decoder(header_length=4, length_fmt=">I")
    def dec(b):
        return b.decode()

    assert dec(b"hi") == "hi"
    assert wl.spec_of(dec) == DecoderSpec(fn=dec, header_length=4, length_fmt=">I")


def test_bare_decoder_has_no_framing() -> None:
    @wl.decoder
    def dec(b):
        return b

    spec = wl.spec_of(dec)
    assert isinstance(spec, DecoderSpec)
    assert (spec.header_length, spec.length_fmt) == (None, None)
