"""A pipeline whose keyed step calls a serverless function of its own app for every record.

`tag` appends "<call id> <record>" to $STEP_CALLS_LOG each time its body runs (at least once
per call) and returns the call id; the step emits "<record>|<call id>|<count for the key>"."""

from __future__ import annotations

import os

import wallaroo

app = wallaroo.App("step_calls")


@app.function(concurrency=16)
def tag(record: str) -> str:
    call = wallaroo.current_call()
    assert call is not None
    with open(os.environ["STEP_CALLS_LOG"], "a") as f:
        f.write(f"{call.call_id} {record}\n")
    return call.call_id


class Seen:
    def __init__(self) -> None:
        self.count = 0


@wallaroo.key_extractor
def key(record: str) -> str:
    return record.split("-")[0]


@wallaroo.state_computation(name="tag each", state=Seen)
def tag_each(record: str, seen: Seen) -> str:
    seen.count += 1
    return f"{record}|{tag.remote(record)}|{seen.count}"


app.attach(
    wallaroo.source("in", wallaroo.StreamSource(decoder=lambda b: b.decode()))
    .key_by(key).to(tag_each)
    .to_sink(wallaroo.StreamSink("out", encoder=lambda s: s + "\n")),
    partitions=4,
)
