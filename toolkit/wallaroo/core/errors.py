"""One root exception, one subclass per condition, each with typed fields and a fix."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any


def f_repr(fn: Callable[..., Any]) -> str:
    """Name a user's function the way error messages show it: `<function 'mod.qual' line N>`."""
    name = f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"
    try:
        line = inspect.getsourcelines(fn)[1]
    except (OSError, TypeError):
        return f"<function {name!r}>"
    return f"<function {name!r} line {line}>"


class WallarooError(Exception):
    """Root of every error this toolkit raises on purpose."""


class WallarooWarning(UserWarning):
    """Root of every warning this toolkit emits."""


class DefinitionError(WallarooError, TypeError):
    """A decorator or pipeline was used wrongly; raised when the app is defined or built."""


class ArityError(DefinitionError):
    def __init__(self, fn: Callable[..., Any], decorator: str, expected: int, got: int) -> None:
        self.fn, self.expected, self.got = fn, expected, got
        super().__init__(
            f"@wallaroo.{decorator} expects a function of {expected} positional argument(s), "
            f"but {f_repr(fn)} takes {got}. Fix the signature, e.g. "
            f"`def {getattr(fn, '__name__', 'f')}({_arg_names(expected)})`."
        )


def _arg_names(n: int) -> str:
    return ", ".join(["data", "state"][:n]) if n <= 2 else ", ".join(f"a{i}" for i in range(n))


class MissingArgumentsError(DefinitionError):
    def __init__(self, decorator: str, example: str) -> None:
        self.decorator = decorator
        super().__init__(
            f"@wallaroo.{decorator} needs its arguments. Did you forget the parentheses? "
            f"Suggestion: `{example}`."
        )


class PipelineError(DefinitionError):
    """The pipeline's shape is wrong (no sink, step after a sink, duplicate names...)."""


class AppLoadError(WallarooError):
    """An app file could not be loaded or does not define an application."""


class VersionMismatchError(WallarooError):
    def __init__(self, app: str, built_with: str, running: str) -> None:
        self.app, self.built_with, self.running = app, built_with, running
        super().__init__(
            f"app {app!r} was deployed from Python {built_with}, but this runner runs Python "
            f"{running}. Pickled code does not cross Python minor versions: run runners on "
            f"Python {built_with}, or deploy again from Python {running}."
        )


class ArtifactError(WallarooError):
    """A deployed artifact is missing, corrupt, or its manifest does not match it."""


class SignatureError(ArtifactError):
    """A deploy is unsigned, signed by a key this runner does not trust, or its signature does
    not verify. `expected`: the fingerprints trusted; `found`: the signer's, when it has one."""

    def __init__(self, what: str, expected: str, found: str | None, problem: str) -> None:
        self.what, self.expected, self.found = what, expected, found
        super().__init__(f"{what} {problem}")


class KeyFileError(WallarooError, ValueError):
    """A key file (deploy key, trusted public key, state key) is missing or not a key."""

    def __init__(self, path: object, problem: str) -> None:
        self.path = path
        super().__init__(f"key file {path}: {problem}")


class FencedError(WallarooError):
    """Another owner appended to a partition changelog: this runner no longer owns it."""

    def __init__(self, subject: str, expected_seq: int) -> None:
        self.subject, self.expected_seq = subject, expected_seq
        super().__init__(
            f"changelog {subject} moved past seq {expected_seq}: another owner committed; "
            "this runner gives the partition up"
        )


class NotDeployedError(WallarooError):
    def __init__(self, app: str, known: list[str]) -> None:
        self.app, self.known = app, known
        listing = ", ".join(known) or "none"
        super().__init__(
            f"no app named {app!r} is deployed (deployed: {listing}). "
            f"Deploy it first: `wallaroo deploy APP.py --nats URL`."
        )


class UnknownNameError(WallarooError):
    def __init__(self, kind: str, name: str, known: list[str]) -> None:
        self.kind, self.name, self.known = kind, name, known
        super().__init__(f"app has no {kind} named {name!r}; its {kind}s are: {', '.join(known)}")


class DeployError(WallarooError):
    """`wallaroo deploy` refuses the app before storing anything (e.g. other partition counts
    than the deployed version's)."""


class RollbackError(WallarooError):
    """`wallaroo rollback` cannot go to the version asked for (none earlier, another partition
    layout, its artifact gone, a deploy in between)."""


class UnknownVersionError(RollbackError):
    def __init__(self, app: str, version: str, known: list[str]) -> None:
        self.app, self.version, self.known = app, version, known
        super().__init__(f"{app} has no deployed version {version!r} (or it is older than the "
                         f"manifest history kept); its versions, newest first: {', '.join(known)}. "
                         f"Pass one of them (or a unique prefix) to --to")


class NatsUnreachableError(WallarooError, ConnectionError):
    def __init__(self, url: str) -> None:
        self.url = url
        super().__init__(
            f"cannot reach NATS at {url}: start a local cluster with `wallaroo dev APP.py`, "
            "or pass --nats URL (or set WALLAROO_NATS) to a running server"
        )


class CredentialsError(WallarooError, PermissionError):
    def __init__(self, url: str, creds: str | None, why: str) -> None:
        self.url, self.creds = url, creds
        used = f"the credentials in {creds}" if creds else "no credentials"
        super().__init__(
            f"NATS at {url} refused {used} ({why}): run the command in the folder of the "
            "`wallaroo dev` that started it (it reads .wallaroo/dev/creds/), or pass --creds FILE "
            "(or set WALLAROO_CREDS) to the nkey seed of a role the server knows"
        )


class TlsError(WallarooError, ConnectionError):
    """The server's certificate did not verify (or a TLS server was asked in plain text)."""

    def __init__(self, url: str, ca: str | None, why: str) -> None:
        self.url, self.ca = url, ca
        used = f"the CA in {ca}" if ca else "the system's CAs"
        fix = ("connect to its tls:// URL" if url.startswith("nats://") else
               "run the command in the folder of the `wallaroo dev --tls` that started it (it "
               "reads .wallaroo/dev/tls/ca.pem), or pass --tls-ca FILE (or set WALLAROO_TLS_CA) "
               "to the CA that signed the server's certificate")
        super().__init__(f"NATS at {url}: TLS failed with {used} ({why}): {fix}")


class RecordTooLargeError(WallarooError, ValueError):
    def __init__(self, index: int, size: int, limit: int) -> None:
        self.index, self.size, self.limit = index, size, limit
        super().__init__(
            f"record {index} (counting from 0) is {size} bytes, but the NATS server takes "
            f"messages of at most {limit} bytes: split it, or raise the server's max_payload"
        )


class BacklogStalledError(WallarooError):
    """A sender held back by its backlog bound saw the app take none of it for too long."""

    def __init__(self, source: str, waiting: int, seconds: float, sent: int, producer: str,
                 window: float) -> None:
        self.source, self.waiting, self.seconds = source, waiting, seconds
        self.sent, self.producer = sent, producer
        super().__init__(
            f"none of the {waiting} message(s) waiting in source {source!r} was processed in "
            f"{seconds:g} s, so the send stopped after {sent:,} record(s): is a runner taking "
            f"them (`wallaroo status`)? A record sent again with producer id {producer} is "
            f"dropped as a repeat only within {window / 60:g} minutes (the source's duplicate "
            f"window) of its first send"
        )


class Reject(WallarooError):  # noqa: N818 - users raise it by this name, as in "reject the record"
    """Raised by user code to dead-letter the record at once, without retries: for records
    that are wrong, not unlucky (validation failures, records too late for their window)."""


class WireError(WallarooError, ValueError):
    """Bytes read from NATS are not the message they should be (corrupt, truncated, from an
    incompatible version, or not ours): the reader refuses them whole."""

    def __init__(self, what: str, why: str) -> None:
        self.what, self.why = what, why
        super().__init__(f"malformed {what}: {why}")


class FunctionError(WallarooError):
    """Root of the errors a serverless function call raises on the caller's side. They
    travel from runner to caller pickled: each rebuilds from its constructor's arguments."""

    _args: tuple[object, ...] = ()

    def __reduce__(self) -> tuple[type, tuple[object, ...]]:
        return type(self), self._args


class RemoteError(FunctionError):
    """A remote call failed with an exception whose type cannot be rebuilt here (its class is
    not importable in this process, or it does not pickle): its type name, message and the
    remote traceback, as text."""

    def __init__(self, type_name: str, message: str, remote_traceback: str) -> None:
        self.type_name, self.message, self.remote_traceback = type_name, message, remote_traceback
        self._args = (type_name, message, remote_traceback)
        super().__init__(f"{type_name}: {message}\n\nremote traceback:\n{remote_traceback}")


class FunctionTimeout(FunctionError):
    """An attempt ran past the function's `timeout=`; retried per its `retries=` policy.
    Not a TimeoutError: that is what `get(timeout=)` raises while the call goes on."""

    def __init__(self, function: str, timeout: float) -> None:
        self.function, self.timeout = function, timeout
        self._args = (function, timeout)
        super().__init__(f"{function} ran past its timeout of {timeout:g}s; raise timeout= on "
                         "@app.function, or make the call shorter")


class RunnerLost(FunctionError):  # noqa: N818 - the condition's name, as users catch it
    """The call was delivered to runners `deliveries` times without ever finishing: runners
    died (or lost NATS) while running it. Not retried further."""

    def __init__(self, call_id: str, deliveries: int) -> None:
        self.call_id, self.deliveries = call_id, deliveries
        self._args = (call_id, deliveries)
        super().__init__(f"call {call_id} was started {deliveries} times and no runner finished "
                         "it (runners crashed or lost NATS while running it); check runner logs")


class CallCancelled(FunctionError):  # noqa: N818 - the condition's name, as users catch it
    def __init__(self, call_id: str) -> None:
        self.call_id = call_id
        self._args = (call_id,)
        super().__init__(f"call {call_id} was cancelled")


class IdempotencyConflict(FunctionError, ValueError):  # noqa: N818 - the name users catch
    """An idempotency key was used again with different arguments."""

    def __init__(self, function: str, key: str, call_id: str) -> None:
        self.function, self.key, self.call_id = function, key, call_id
        self._args = (function, key, call_id)
        super().__init__(f"idempotency key {key!r} of {function} already names call {call_id}, "
                         "made with other arguments; use a new key for new arguments")


class PickledArgumentsRefused(FunctionError, TypeError):  # noqa: N818 - the name users catch
    """A function declared `serializer="json"` was sent pickled arguments. They are refused
    unread: unpickling them would run whatever code the caller put in them."""

    def __init__(self, function: str) -> None:
        self.function = function
        self._args = (function,)
        super().__init__(f"{function} takes JSON arguments only (serializer='json'), and this "
                         "call's arguments were pickled; they were not unpickled. Call it through "
                         "its Function handle (`.remote`), `wallaroo call`, or send JSON arguments")


class NotJsonError(FunctionError, TypeError):
    """A value of a `serializer="json"` function (an argument or its result) is no JSON value."""

    def __init__(self, function: str, what: str, problem: str) -> None:
        self.function, self.what, self.problem = function, what, problem
        self._args = (function, what, problem)
        super().__init__(f"{what} of {function} is not JSON ({problem}); a serializer='json' "
                         "function takes and returns only JSON values: dict, list, str, int, "
                         "float, bool, None")
