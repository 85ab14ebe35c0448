"""What the checkpointer tests share: the one NATS call a checkpointer makes on its own."""

from __future__ import annotations


class Trims:
    """Stands in for Nats: records each trim of the changelog (below which sequence)."""

    def __init__(self) -> None:
        self.below: list[int] = []

    async def purge_subject_below(self, stream: str, subject: str, seq: int) -> None:
        self.below.append(seq)
