"""Generated event ids (requests without Idempotency-Key): unguessable, also across fork."""

from __future__ import annotations

import itertools
import os
import re

from thaw.adapters.http.routing import EventIds

_SHAPE = re.compile(r"~[0-9a-f]{32}\Z")


def _neighbours(known: str) -> set[str]:
    """What one could compute from an id: its tail read as a number, plus or minus a few."""
    head, dot, tail = known.rpartition(".")
    if not dot:
        head, tail = "~", known[1:]
    else:
        head += "."
    value = int(tail, 16)
    steps = [value + step for step in range(1, 17)] + [value - step for step in range(1, 17)]
    return {f"{head}{near:0{len(tail)}x}" for near in steps if near >= 0}


def test_no_id_can_be_computed_from_another() -> None:
    ids = EventIds()
    drawn = [ids() for _ in range(2000)]  # across several refills of the random buffer
    assert len(set(drawn)) == len(drawn)
    assert all(_SHAPE.match(event_id) for event_id in drawn), drawn[:3]
    for known, following in itertools.pairwise(drawn):
        assert following not in _neighbours(known)
    assert set(drawn).isdisjoint(EventIds()() for _ in range(100))  # nor across instances


def test_a_forked_child_never_hands_out_its_parents_ids() -> None:
    ids = EventIds()
    ids()  # the parent has drawn a buffer of ids it has not handed out yet
    reading, writing = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its next ids and leave at once
        try:
            os.write(writing, ",".join(ids() for _ in range(8)).encode())
        finally:
            os._exit(0)
    os.close(writing)
    with os.fdopen(reading, "rb") as pipe:
        child = set(pipe.read().decode().split(","))
    os.waitpid(pid, 0)
    parent = {ids() for _ in range(8)}
    assert len(child) == 8 and child.isdisjoint(parent)
