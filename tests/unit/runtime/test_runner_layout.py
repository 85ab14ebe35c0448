"""A runner's version of an app runs only the partitions its own manifest lays out: while a
leader that loaded a newer version with other partition counts already assigns the new
layout's partitions (wallaroo.core.repartition), the older version must not run them."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any, cast

import wallaroo as wl
from wallaroo.core.packaging import _stage_info
from wallaroo.core.wire import Manifest, Retirement
from wallaroo.core.worker import WorkerConfig
from wallaroo.functions import App
from wallaroo_runtime.checkpoint import CheckpointConfig
from wallaroo_runtime.cluster import ClusterConfig, assignment
from wallaroo_runtime.executor import ExecutorConfig
from wallaroo_runtime.runner import AppHost, Runner


@wl.key_extractor
def word(w: str) -> str:
    return w


@wl.computation(name="same")
def same(s: str) -> str:
    return s


def app(partitions: int) -> wl.Application:
    return wl.build_application("laid", wl.source("in", wl.StreamSource()).key_by(word).to(same)
                                .to_sink(wl.StreamSink("out")), partitions=partitions)


def manifest(built: wl.Application, base: int = 0, prev: list[int] | None = None) -> Manifest:
    stages = [_stage_info(built, s.index) for s in built.stages]
    stages[1] = dataclasses.replace(stages[1], base=base, prev=prev)
    return Manifest(name="laid", slug="laid", version="v", python="3.11", cloudpickle="3",
                    partitions=built.partitions, stages=stages, sinks=["out"],
                    by_value_modules=[], created=0.0)


def host(built: wl.Application, m: Manifest) -> AppHost:
    return AppHost(cast(Any, None), m, App.of(built), "r0", WorkerConfig(), CheckpointConfig(),
                   ClusterConfig(), ExecutorConfig(), lambda _: None)


def test_an_older_version_runs_none_of_a_newer_layouts_partitions() -> None:
    two, five = app(2), app(5)
    old = host(two, manifest(two))
    newer = manifest(five, base=2, prev=[0, 2])
    everything = assignment(["r0"], newer)  # the leader has the newer manifest

    async def reconcile() -> set[tuple[int, int]]:
        old.reconcile(everything)
        for task in old.tasks.values():
            task.cancel()
        await asyncio.gather(*old.tasks.values(), return_exceptions=True)
        return old.owned

    assert set(everything.owners) == {(0, 0)} | {(1, p) for p in range(7)}
    assert asyncio.run(reconcile()) == {(0, 0), (1, 0), (1, 1)}
    laid = host(five, newer).laid_out
    assert (laid.stages[1].base, laid.stages[1].prev, list(laid.stages[1].parts)) == \
        (2, (0, 2), [2, 3, 4, 5, 6])
    assert host(five, newer).runnable == set(everything.owners)


def test_the_same_version_laid_out_anew_is_switched_to_a_settled_layout_adopted() -> None:
    five = app(5)
    runner = Runner("nats://127.0.0.1:1")
    running = host(five, manifest(five, base=2, prev=[0, 2]))
    runner.hosts["laid"] = running
    assert (1, 0) in running.runnable

    assert not runner._same_version(manifest(five, base=7, prev=[2, 5]))  # noqa: SLF001
    assert runner._same_version(manifest(five, base=2))  # noqa: SLF001 - drained: adopted
    assert running.runnable == {(0, 0)} | {(1, p) for p in range(2, 7)}


def test_a_retired_layout_is_neither_assigned_nor_run_nor_sent_markers() -> None:
    five = app(5)
    m = manifest(five, base=2, prev=[0, 2])
    running = host(five, m)
    assert running.laid_out.stages[1].prev == (0, 2)
    record = Retirement({1: 2})

    running.retire(record)
    assert running.laid_out.stages[1].prev is None  # its senders end no layout there
    assert running.runnable == {(0, 0)} | {(1, p) for p in range(2, 7)}
    assert set(assignment(["r0"], m, retired=record).owners) == running.runnable
