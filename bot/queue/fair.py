"""The fair queue: deficit round robin (DRR) over members, in memory and pure.

A job's cost is `GenerationRequest.cost` (width × height × steps × count), so a 4-image 50-step
request costs what it really costs the GPU. `bot/queue/scheduler.py` wraps it with the database
(the durable truth) and the worker.
"""

from __future__ import annotations

import bisect
import dataclasses
import time
from collections import Counter, deque
from collections.abc import Iterator
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


# A job's place in the fair order: (round it runs in, its user's ring position, arrival serial).
Key = tuple[int, int, int]


class _User:
    """A backlogged user of the DRR ring: its place in the ring, its credit, its FIFO of jobs.

    The deficit at the user's visit in round r is `r * quantum - base`; serving a job adds its
    cost to `base`. Users are visited in `seq` order every round. `waiting` is the total cost
    of the jobs in the FIFO.
    """

    __slots__ = ("base", "jobs", "seq", "user_id", "waiting")

    def __init__(self, user_id: int, seq: int, base: int):
        self.user_id = user_id
        self.seq = seq
        self.base = base
        self.waiting = 0
        self.jobs: deque[QueueEntry] = deque()


def _ceil_div(a: int, b: int) -> int:
    return -((-a) // b)


class _SortedCosts:
    """Keys in order, in blocks of at most 2 × BLOCK with each block's cost total, so a key's
    rank and the cost of the keys before it take O(n / BLOCK + BLOCK), not a rebuild."""

    BLOCK = 128

    def __init__(self) -> None:
        self._blocks: list[list[Key]] = []
        self._maxes: list[Key] = []
        self._costs: list[int] = []
        self._cost_of: dict[Key, int] = {}

    def __len__(self) -> int:
        return len(self._cost_of)

    def __iter__(self) -> Iterator[Key]:
        for block in self._blocks:
            yield from block

    def first(self) -> Key | None:
        return self._blocks[0][0] if self._blocks else None

    def add(self, key: Key, cost: int) -> None:
        self._cost_of[key] = cost
        if not self._blocks:
            self._blocks, self._maxes, self._costs = [[key]], [key], [cost]
            return
        i = min(bisect.bisect_left(self._maxes, key), len(self._blocks) - 1)
        block = self._blocks[i]
        bisect.insort(block, key)
        self._maxes[i] = block[-1]
        self._costs[i] += cost
        if len(block) > 2 * self.BLOCK:
            upper = block[self.BLOCK :]
            del block[self.BLOCK :]
            self._blocks.insert(i + 1, upper)
            self._maxes[i] = block[-1]
            self._maxes.insert(i + 1, upper[-1])
            upper_cost = sum(self._cost_of[k] for k in upper)
            self._costs[i] -= upper_cost
            self._costs.insert(i + 1, upper_cost)

    def remove(self, key: Key) -> None:
        cost = self._cost_of.pop(key)
        i = bisect.bisect_left(self._maxes, key)
        block = self._blocks[i]
        del block[bisect.bisect_left(block, key)]
        if block:
            self._maxes[i] = block[-1]
            self._costs[i] -= cost
        else:
            del self._blocks[i], self._maxes[i], self._costs[i]

    def rank(self, key: Key) -> tuple[int, int]:
        """(how many keys come before `key`, their total cost)."""
        i = bisect.bisect_left(self._maxes, key)
        block = self._blocks[i]
        j = bisect.bisect_left(block, key)
        before = sum(len(b) for b in self._blocks[:i]) + j
        cost = sum(self._costs[:i]) + sum(self._cost_of[k] for k in block[:j])
        return before, cost


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

    The order is kept, not recomputed: a job's key (the round DRR serves it in, its user's ring
    position, its arrival) depends only on its own user's credit and earlier jobs, and serving
    the head of the order changes no other job's key. So `push`, `position` and `cost_ahead`
    cost O(√n)-ish at worst, not a simulation of the whole queue; only cancelling a job
    re-keys that user's later jobs.
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
        self._serial = 0
        self._keys: dict[int, Key] = {}
        self._by_key: dict[Key, QueueEntry] = {}
        self._order = _SortedCosts()
        self._by_batch_key: Counter[tuple[Any, ...]] = Counter()
        # (round, cursor, ids) before the last pop: `restore` of that batch undoes it.
        self._before_pop: tuple[int, int, set[int]] | None = None
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

    def compatible(self, batch_key: tuple[Any, ...]) -> int:
        """How many waiting jobs have this batch key."""
        return self._by_batch_key[batch_key]

    # -- keys ----------------------------------------------------------------------------------

    def _new_user(self, user_id: int) -> _User:
        # First visit in the current round, with one quantum of credit.
        user = _User(user_id, self._next_seq, (self._round - 1) * self.quantum)
        self._next_seq += 1
        self._users[user_id] = user
        return user

    def _key(self, user: _User, served_through: int, serial: int) -> Key:
        """The key of a job that runs once its user's credit covers `served_through`."""
        visit = self._round if user.seq >= self._cursor else self._round + 1
        return (max(visit, _ceil_div(served_through, self.quantum)), user.seq, serial)

    def _place(self, entry: QueueEntry, key: Key) -> None:
        self._keys[entry.gen_id] = key
        self._by_key[key] = entry
        self._order.add(key, entry.cost)

    def _unplace(self, gen_id: int) -> None:
        key = self._keys.pop(gen_id)
        del self._by_key[key]
        self._order.remove(key)

    def _rekey(self, user: _User) -> None:
        """Compute the keys of a user's jobs again (after a change in the middle of its FIFO)."""
        through = user.base
        for entry in user.jobs:
            if entry.gen_id in self._keys:
                self._unplace(entry.gen_id)
            through += entry.cost
            self._place(entry, self._key(user, through, self._next()))

    def _next(self) -> int:
        self._serial += 1
        return self._serial

    # -- changes -------------------------------------------------------------------------------

    def push(self, entry: QueueEntry) -> None:
        """Add a job at the end of its user's FIFO; a user new to the ring joins at its end."""
        if entry.gen_id in self._entries:
            raise ValueError(f"job {entry.gen_id} is already queued")
        if entry.cost < 1:
            raise ValueError("a job must cost at least 1")
        user = self._users.get(entry.user_id) or self._new_user(entry.user_id)
        user.jobs.append(entry)
        user.waiting += entry.cost
        self._entries[entry.gen_id] = entry
        self._by_batch_key[entry.batch_key] += 1
        self._place(entry, self._key(user, user.base + user.waiting, self._next()))

    def remove(self, gen_id: int) -> QueueEntry | None:
        """Take a waiting job out (cancel); None if it is not waiting."""
        entry = self._entries.pop(gen_id, None)
        if entry is None:
            return None
        self._forget(entry)
        user = self._users[entry.user_id]
        for i, candidate in enumerate(user.jobs):
            if candidate is entry:
                del user.jobs[i]
                break
        user.waiting -= entry.cost
        if not user.jobs:
            del self._users[entry.user_id]
        else:
            self._rekey(user)  # the later jobs need less credit now
        return entry

    def _forget(self, entry: QueueEntry) -> None:
        self._unplace(entry.gen_id)
        self._by_batch_key[entry.batch_key] -= 1
        if not self._by_batch_key[entry.batch_key]:
            del self._by_batch_key[entry.batch_key]

    def restore(self, entries: list[QueueEntry]) -> None:
        """Put popped jobs back at the front of their users' queues, as if never taken (used
        when a batch could not be started or recorded). Restoring the last batch taken also
        undoes its step of the round robin."""
        before = self._before_pop
        if before is not None and {e.gen_id for e in entries} <= before[2]:
            self._round, self._cursor = before[0], before[1]
            self._before_pop = None
        for entry in reversed(entries):
            if entry.gen_id in self._entries:
                continue
            user = self._users.get(entry.user_id)
            if user is None:
                user = self._new_user(entry.user_id)
            else:
                user.base -= entry.cost
            user.jobs.appendleft(entry)
            user.waiting += entry.cost
            self._entries[entry.gen_id] = entry
            self._by_batch_key[entry.batch_key] += 1
            self.served[entry.user_id] = self.served.get(entry.user_id, 0) - entry.cost
        # Rare: every key again, from the restored state.
        self._keys.clear()
        self._by_key.clear()
        self._order = _SortedCosts()
        for user in self._users.values():
            self._rekey(user)

    def clear(self) -> list[QueueEntry]:
        entries = list(self._entries.values())
        self._users.clear()
        self._entries.clear()
        self._keys.clear()
        self._by_key.clear()
        self._order = _SortedCosts()
        self._by_batch_key.clear()
        return entries

    # -- the fair order ------------------------------------------------------------------------

    def _in_order(self) -> Iterator[QueueEntry]:
        for key in self._order:
            yield self._by_key[key]

    def order(self) -> list[QueueEntry]:
        """Every waiting job in the order it will start."""
        return list(self._in_order())

    def position(self, gen_id: int) -> int | None:
        """0 = starts next; None if not waiting."""
        key = self._keys.get(gen_id)
        return None if key is None else self._order.rank(key)[0]

    def cost_ahead(self, gen_id: int) -> int | None:
        """Total cost of the jobs that start before this one (not counting itself)."""
        key = self._keys.get(gen_id)
        return None if key is None else self._order.rank(key)[1]

    def peek(self) -> QueueEntry | None:
        key = self._order.first()
        return None if key is None else self._by_key[key]

    def pop_batch(self, max_size: int = 1, *, lookahead: int | None = None) -> list[QueueEntry]:
        """Take the next batch: the head of the fair order first, then compatible jobs (equal
        `batch_key`) in fair order, up to `max_size`, looking at most `lookahead` jobs ahead.

        A user's jobs never overtake each other. Jobs taken ahead of their turn are charged to
        their users' credit, so batching does not change anyone's long-run share.
        """
        head_key = self._order.first()
        if head_key is None:
            return []
        max_size = max(1, int(max_size))
        if lookahead is None:
            lookahead = max(32, 8 * max_size)
        head = self._by_key[head_key]
        batch = [head]
        if max_size > 1:
            seen = {head.user_id: 1}
            taken = {head.user_id: 1}
            order = self._in_order()
            next(order)
            for scanned, entry in enumerate(order):
                if len(batch) >= max_size or scanned >= lookahead:
                    break
                uid = entry.user_id
                if entry.batch_key == head.batch_key and seen.get(uid, 0) == taken.get(uid, 0):
                    batch.append(entry)
                    taken[uid] = taken.get(uid, 0) + 1
                seen[uid] = seen.get(uid, 0) + 1
        # The head's visit is now in progress (`restore` can undo this batch). No other job's
        # key changes: each was at least the head's, so the new visit round never exceeds it.
        self._before_pop = (self._round, self._cursor, {e.gen_id for e in batch})
        self._round = head_key[0]
        self._cursor = self._users[head.user_id].seq
        for entry in batch:
            user = self._users[entry.user_id]
            first = user.jobs.popleft()
            assert first is entry, "batch broke a user's FIFO order"
            user.base += entry.cost
            user.waiting -= entry.cost
            self.served[entry.user_id] = self.served.get(entry.user_id, 0) + entry.cost
            del self._entries[entry.gen_id]
            self._forget(entry)
            if not user.jobs:
                del self._users[entry.user_id]
        return batch
