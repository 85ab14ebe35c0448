"""`wallaroo call` and `wallaroo calls`: call a deployed function with JSON arguments, show or
cancel a call by id."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from wallaroo.control import apps
from wallaroo.core import calls
from wallaroo.core.errors import WallarooError
from wallaroo.core.wire import CallResult
from wallaroo.nats import Nats


def parse_args(values: list[str]) -> list[Any]:
    """Each command-line argument as JSON; a bare word that is not JSON is taken as a string
    (so `wallaroo call app greet Ada` works), anything else that fails names the argument."""
    parsed = []
    for i, text in enumerate(values):
        try:
            parsed.append(json.loads(text))
        except json.JSONDecodeError as err:
            if text.isidentifier():
                parsed.append(text)
                continue
            msg = f"argument {i + 1} ({text!r}) is not JSON: {err.msg}; quote strings as '\"text\"'"
            raise ValueError(msg) from None
    return parsed


def shown(value: Any) -> str:
    """A result as JSON, or its repr when it is no JSON value."""
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)


class RemoteFailure(WallarooError):
    """The called function failed (its exception, as one line) or was cancelled."""

    def __init__(self, call_id: str, result: CallResult) -> None:
        self.call_id = call_id
        text = f"{result.error_type.rsplit('.', 1)[-1]}: {result.error_message}"
        super().__init__(text.splitlines()[0] if result.status == "error" else "cancelled")


async def call(nats: Nats, app: str, function: str, args: list[Any], spawn: bool,
               timeout: float | None) -> str:
    """Call `function` of the deployed `app`; the call id if `spawn`, else its result shown.
    RemoteFailure if the function failed; TimeoutError if it ran past `timeout`."""
    manifest = await apps.manifest_of(nats, app)
    manifest.require_function(function)
    client = calls.CallClient(nats)
    await client.setup()
    # Always JSON: the runner decodes it without unpickling, whatever the function's serializer.
    payload = calls.pack_args(tuple(args), {}, "json", function)
    call_id = await client.submit(manifest.slug, function, payload)
    if spawn:
        return call_id
    result = await client.wait(call_id, timeout)
    if result.status != "ok":
        raise RemoteFailure(call_id, result)
    return shown(await client.value(result))


@dataclass(frozen=True)
class CallView:
    call_id: str
    result: CallResult | None
    value: str = ""

    def lines(self) -> list[str]:
        r = self.result
        if r is None:
            return [f"call {self.call_id}: no result yet (pending or running)"]
        head = [f"call {r.call_id}: {r.status}",
                f"runner {r.runner or '-'}, attempts {r.attempts}, deliveries {r.deliveries}, "
                f"took {max(0.0, r.finished - r.started):.3f}s"]
        if r.status == "ok":
            return [*head, f"value: {self.value}"]
        if r.status == "error":
            return [*head, f"error: {r.error_type}: {r.error_message}", r.traceback.rstrip()]
        return head


async def show(nats: Nats, call_id: str) -> CallView:
    client = calls.CallClient(nats)
    result = await client.stored(call_id)
    if result is None or result.status != "ok":
        return CallView(call_id, result)
    try:
        value = shown(await client.value(result))
    except (WallarooError, ImportError, AttributeError) as err:  # a class this CLI lacks
        value = f"<cannot show here: {err}>"
    return CallView(call_id, result, value)


async def cancel(nats: Nats, call_id: str, terminate: bool = False) -> CallResult:
    """Cancel the call; THE result of the call (a cancel, or what it had finished with)."""
    client = calls.CallClient(nats)
    await client.setup()
    return await client.cancel(call_id, terminate)
