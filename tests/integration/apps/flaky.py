"""Test app: parses ints; "bad" records fail to decode, the poison number makes the user step
raise, and every call of the step is logged to $FLAKY_CALLS so a test can see whether user
code re-ran. flaky_fixed.py deploys the same app without the poison."""

import os

import wallaroo as wl


@wl.decoder
def parse(data: bytes) -> int:
    return int(data)


@wl.key_extractor
def parity(n: int) -> str:
    return "even" if n % 2 == 0 else "odd"


class Sum:
    def __init__(self) -> None:
        self.total = 0


def build(poison: int | None) -> wl.Application:
    @wl.state_computation(name="running sum", state=Sum)
    def running_sum(n: int, acc: Sum) -> str:
        with open(os.environ["FLAKY_CALLS"], "a") as log:
            log.write(f"{n}\n")
        if n == poison:
            msg = f"{n} is unlucky"
            raise ValueError(msg)
        acc.total += n
        return f"{parity(n)} {n} {acc.total}"

    pipeline = (wl.source("numbers", wl.StreamSource(decoder=parse)).key_by(parity)
                .to(running_sum).to_sink(wl.StreamSink("sums")))
    return wl.build_application("flaky", pipeline, partitions=2)


app = build(poison=13)
