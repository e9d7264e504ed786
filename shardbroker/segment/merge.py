"""Read several segments as one log: each ``(client_id, batch_seq)`` once.

A cluster publisher (publisher/cluster.py) numbers its batches per client across every broker
and sends a batch again elsewhere when its broker fails before acking it. So the segments of
several brokers -- live ones, or one re-attached with ``run --recover`` beside them -- hold
each batch in exactly one segment, except a batch whose ack was lost, which may be in two.
``MergedReader`` yields every key once: in key order (per client by batch_seq, the order the
publisher sent them), or in segment order (as committed, first segment first).

``first_per_key`` is the pure core (keys in, which to keep out); the reader only maps segments.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from types import TracebackType

from shardbroker.segment.reader import Batch, SegmentReader

Key = tuple[int, int]  # (client_id, batch_seq)
Place = tuple[int, int, int]  # (segment number, shard, pbr index)
ORDERS = ("key", "segment")


def first_per_key(entries: Iterable[tuple[Key, Place]], order: str = "key"
                  ) -> tuple[list[tuple[Key, Place]], int]:
    """Keep the first place of each key (entries come in segment order, so the earliest
    segment given wins). Returns the kept entries, in key order or in the order given, and
    how many were dropped as repeats."""
    if order not in ORDERS:
        raise ValueError(f"order {order!r}: use one of {', '.join(ORDERS)}")
    kept: dict[Key, Place] = {}
    repeats = 0
    for key, place in entries:
        if key in kept:
            repeats += 1
        else:
            kept[key] = place
    items = list(kept.items())  # dicts keep insertion order: segment order
    if order == "key":
        items.sort()
    return items, repeats


@dataclass
class MergeStats:
    segments: list[str]
    batches_read: int = 0  # committed batches seen, repeats included
    yielded: int = 0
    repeats: int = 0  # keys found again in a later segment (or twice in one)
    lapped: list[int] = field(default_factory=list)  # per segment: in the snapshot, then
    # overwritten (a live broker lapped it) before it could be yielded


class MergedReader:
    """``with MergedReader(["seg-a", "seg-b"]) as m: for b in m.batches(): ...``

    Batches are read from a snapshot of what each segment has committed when ``batches()``
    starts; each ``Batch`` is a view into its own segment (``b.segment`` names it), so check
    ``b.still_valid()`` after use when a live broker may lap it."""

    def __init__(self, names: Sequence[str]) -> None:
        if not names:
            raise ValueError("no segment to read")
        self.readers: list[SegmentReader] = []
        try:
            for n in names:
                self.readers.append(SegmentReader(n))
        except BaseException:
            self.close()
            raise
        self.stats = MergeStats(list(names))

    def __enter__(self) -> MergedReader:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        for r in self.readers:
            r.close()

    def keys(self) -> Iterator[tuple[Key, Place]]:
        """Every committed batch's key and place, segment by segment (repeats included)."""
        for n, r in enumerate(self.readers):
            for b in r.batches():
                key, place = (b.client_id, b.batch_seq), (n, b.shard, b.index)
                b.payload.release()  # only the key is needed here
                yield key, place

    def batches(self, order: str = "key", topic: str | None = None) -> Iterator[Batch]:
        """Each key once (see the module doc); ``topic`` keeps one topic's batches."""
        st = self.stats
        listed = list(self.keys())
        # counted from here: slots whose bytes a full ring had already reclaimed before the
        # snapshot were never part of it, so they are not "overwritten before read"
        lapped0 = [r.lapped for r in self.readers]
        st.batches_read = len(listed)
        kept, st.repeats = first_per_key(listed, order)
        try:
            for _key, (n, shard, index) in kept:
                b = self._batch(n, shard, index)
                if b is None or (topic is not None and b.topic != topic):
                    if b is not None:
                        b.payload.release()
                    continue
                st.yielded += 1
                yield b
        finally:  # also when the caller stops early (tail --max-batches)
            st.lapped = [r.lapped - x for r, x in zip(self.readers, lapped0, strict=True)]

    def _batch(self, n: int, shard: int, index: int) -> Batch | None:
        """The batch at ``index`` of ``shard`` in segment ``n``, if still readable."""
        for b in self.readers[n].batches(shard, start=index):
            if b.index == index:
                return b
            b.payload.release()
            break
        return None
