"""The fair queue: deficit round robin (DRR) over members, in memory and pure.

A job's cost is `GenerationRequest.cost` (width × height × steps × count), so a 4-image 50-step
request costs what it really costs the GPU. `bot/queue/scheduler.py` wraps it with the database
(the durable truth) and the worker.
"""

from __future__ import annotations

import dataclasses
import heapq
import time
from collections import deque
from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any

from inference.request import GenerationRequest


@dataclass(eq=False)
class QueueEntry:
    """One waiting job in memory. `request` carries the source image of vary/upscale jobs."""

    gen_id: int
    user_id: int
    request: GenerationRequest
    cost: int
    batch_key: tuple[Any, ...]
    enqueued_at: float = field(default_factory=time.monotonic)

    @classmethod
    def of(cls, gen_id: int, user_id: int, request: GenerationRequest) -> QueueEntry:
        request = dataclasses.replace(request, job_id=str(gen_id))
        return cls(gen_id, user_id, request, int(request.cost), request.batch_key())


class _User:
    """A backlogged user of the DRR ring: its place in the ring, its credit, its FIFO of jobs.

    The deficit at the user's visit in round r is `r * quantum - base`; serving a job adds its
    cost to `base`. Users are visited in `seq` order every round.
    """

    __slots__ = ("base", "jobs", "seq", "user_id")

    def __init__(self, user_id: int, seq: int, base: int):
        self.user_id = user_id
        self.seq = seq
        self.base = base
        self.jobs: deque[QueueEntry] = deque()


def _ceil_div(a: int, b: int) -> int:
    return -((-a) // b)


class FairQueue:
    """Deficit round robin over users with cost-weighted jobs, batching compatible jobs.

    Each round visits every backlogged user once, in the order they became backlogged, and
    gives it `quantum` cost units of credit; a user runs its next job when its credit covers the
    job's cost. Rounds in which nobody could run are skipped arithmetically, so the quantum can
    be as small as one cost unit (the default): that is DRR's finest setting, where over any
    stretch in which N users stay backlogged each one's served cost stays within one job's cost
    of an equal share, and a newcomer whose job is no bigger than the others' next jobs runs in
    the very next batch slot. A larger quantum lets a user run several small jobs in a row.

    Each user's jobs run in the order they were sent (FIFO per user).
    """

    def __init__(self, quantum: int = 1):
        if quantum < 1:
            raise ValueError("quantum must be at least 1 cost unit")
        self.quantum = int(quantum)
        self._users: dict[int, _User] = {}
        self._entries: dict[int, QueueEntry] = {}
        self._round = 0
        self._cursor = -1  # ring position (seq) of the user whose visit is in progress
        self._next_seq = 0
        self._before_pop: tuple[int, int] | None = None
        self._version = 0
        self._cache_version = -1
        self._order: list[QueueEntry] = []
        self._index: dict[int, int] = {}
        self._prefix: list[int] = []
        # Cost dispatched per user since this queue was made (for tests and benchmarks).
        self.served: dict[int, int] = {}

    # -- contents ------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, gen_id: object) -> bool:
        return gen_id in self._entries

    def get(self, gen_id: int) -> QueueEntry | None:
        return self._entries.get(gen_id)

    def ids(self) -> set[int]:
        return set(self._entries)

    def users(self) -> list[int]:
        """Users with waiting jobs, in ring order."""
        return [u.user_id for u in sorted(self._users.values(), key=lambda u: u.seq)]

    def waiting_for(self, user_id: int) -> int:
        user = self._users.get(user_id)
        return 0 if user is None else len(user.jobs)

    def entries_of(self, user_id: int) -> list[QueueEntry]:
        user = self._users.get(user_id)
        return [] if user is None else list(user.jobs)

    # -- changes -------------------------------------------------------------------------------

    def push(self, entry: QueueEntry) -> None:
        """Add a job at the end of its user's FIFO; a user new to the ring joins at its end."""
        if entry.gen_id in self._entries:
            raise ValueError(f"job {entry.gen_id} is already queued")
        if entry.cost < 1:
            raise ValueError("a job must cost at least 1")
        user = self._users.get(entry.user_id)
        if user is None:
            # First visit in the current round, with one quantum of credit.
            user = _User(entry.user_id, self._next_seq, (self._round - 1) * self.quantum)
            self._next_seq += 1
            self._users[entry.user_id] = user
        user.jobs.append(entry)
        self._entries[entry.gen_id] = entry
        self._version += 1

    def remove(self, gen_id: int) -> QueueEntry | None:
        """Take a waiting job out (cancel); None if it is not waiting."""
        entry = self._entries.pop(gen_id, None)
        if entry is None:
            return None
        user = self._users[entry.user_id]
        for i, candidate in enumerate(user.jobs):
            if candidate is entry:
                del user.jobs[i]
                break
        if not user.jobs:
            del self._users[entry.user_id]
        self._version += 1
        return entry

    def restore(self, entries: list[QueueEntry]) -> None:
        """Put popped jobs back at the front of their users' queues, as if never taken (used
        when a batch could not be started or recorded)."""
        if self._before_pop is not None:
            self._round, self._cursor = self._before_pop
            self._before_pop = None
        for entry in reversed(entries):
            if entry.gen_id in self._entries:
                continue
            user = self._users.get(entry.user_id)
            if user is None:
                user = _User(entry.user_id, self._next_seq, (self._round - 1) * self.quantum)
                self._next_seq += 1
                self._users[entry.user_id] = user
            else:
                user.base -= entry.cost
            user.jobs.appendleft(entry)
            self._entries[entry.gen_id] = entry
            self.served[entry.user_id] = self.served.get(entry.user_id, 0) - entry.cost
        self._version += 1

    def clear(self) -> list[QueueEntry]:
        entries = list(self._entries.values())
        self._users.clear()
        self._entries.clear()
        self._version += 1
        return entries

    # -- the fair order ------------------------------------------------------------------------

    def _simulate(self) -> Generator[tuple[QueueEntry, int], None, None]:
        """Yield (entry, round) in the order DRR would serve them, without changing anything."""
        q = self.quantum
        heap: list[tuple[int, int, int, int, _User]] = []
        for user in self._users.values():
            visit = self._round if user.seq >= self._cursor else self._round + 1
            ready = _ceil_div(user.base + user.jobs[0].cost, q)
            heap.append((max(visit, ready), user.seq, 0, user.base, user))
        heapq.heapify(heap)
        while heap:
            rnd, seq, idx, base, user = heapq.heappop(heap)
            entry = user.jobs[idx]
            yield entry, rnd
            base += entry.cost
            idx += 1
            if idx < len(user.jobs):
                # The same visit goes on while the credit lasts, else a later round.
                ready = _ceil_div(base + user.jobs[idx].cost, q)
                heapq.heappush(heap, (max(rnd, ready), seq, idx, base, user))

    def _refresh(self) -> None:
        if self._cache_version == self._version:
            return
        self._order = [entry for entry, _ in self._simulate()]
        self._index = {entry.gen_id: i for i, entry in enumerate(self._order)}
        prefix = [0]
        for entry in self._order:
            prefix.append(prefix[-1] + entry.cost)
        self._prefix = prefix
        self._cache_version = self._version

    def order(self) -> list[QueueEntry]:
        """Every waiting job in the order it will start (cached until the queue changes)."""
        self._refresh()
        return list(self._order)

    def position(self, gen_id: int) -> int | None:
        """0 = starts next; None if not waiting."""
        if gen_id not in self._entries:
            return None
        self._refresh()
        return self._index[gen_id]

    def cost_ahead(self, gen_id: int) -> int | None:
        """Total cost of the jobs that start before this one (not counting itself)."""
        position = self.position(gen_id)
        return None if position is None else self._prefix[position]

    def peek(self) -> QueueEntry | None:
        for entry, _ in self._simulate():
            return entry
        return None

    def pop_batch(self, max_size: int = 1, *, lookahead: int | None = None) -> list[QueueEntry]:
        """Take the next batch: the head of the fair order first, then compatible jobs (equal
        `batch_key`) in fair order, up to `max_size`, looking at most `lookahead` jobs ahead.

        A user's jobs never overtake each other. Jobs taken ahead of their turn are charged to
        their users' credit, so batching does not change anyone's long-run share.
        """
        if not self._entries:
            return []
        max_size = max(1, int(max_size))
        if lookahead is None:
            lookahead = max(32, 8 * max_size)
        order = self._simulate()
        head, head_round = next(order)
        batch = [head]
        if max_size > 1:
            seen = {head.user_id: 1}
            taken = {head.user_id: 1}
            for scanned, (entry, _) in enumerate(order):
                if len(batch) >= max_size or scanned >= lookahead:
                    break
                uid = entry.user_id
                if entry.batch_key == head.batch_key and seen.get(uid, 0) == taken.get(uid, 0):
                    batch.append(entry)
                    taken[uid] = taken.get(uid, 0) + 1
                seen[uid] = seen.get(uid, 0) + 1
        order.close()
        # The head's visit is now in progress (`restore` can undo this batch).
        self._before_pop = (self._round, self._cursor)
        self._round = head_round
        self._cursor = self._users[head.user_id].seq
        for entry in batch:
            user = self._users[entry.user_id]
            first = user.jobs.popleft()
            assert first is entry, "batch broke a user's FIFO order"
            user.base += entry.cost
            self.served[entry.user_id] = self.served.get(entry.user_id, 0) + entry.cost
            del self._entries[entry.gen_id]
            if not user.jobs:
                del self._users[entry.user_id]
        self._version += 1
        return batch
