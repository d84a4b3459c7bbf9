"""The fair queue (pure): deficit round robin by cost, fairness bounds, batching, restore."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from bot.queue import FairQueue, QueueEntry
from tests.bot.queue.fakes import drain, entry, req


def test_round_robin_with_equal_costs():
    """Equal jobs from three users alternate; each user's own jobs stay in order."""
    queue = FairQueue()
    ids = iter(range(100))
    for user, n in ((1, 3), (2, 2), (3, 1)):
        for _ in range(n):
            queue.push(entry(next(ids), user))
    order = [e.gen_id for e in queue.order()]
    assert order == [0, 3, 5, 1, 4, 2]
    assert [b[0] for b in drain(queue)] == order


def test_expensive_jobs_wait_proportionally():
    """A job costing 4 units waits while a user with 1-unit jobs runs about four of them."""
    queue = FairQueue()
    for i in range(8):
        queue.push(entry(i, user_id=1, cost=100))
    queue.push(entry(100, user_id=2, cost=400))
    served = [b[0] for b in drain(queue)]
    assert 3 <= served.index(100) <= 5


@settings(max_examples=60, deadline=None)
@given(
    costs=st.lists(st.lists(st.integers(1, 50), min_size=30, max_size=30), min_size=2, max_size=6),
    quantum=st.sampled_from([1, 1, 7, 50]),
)
def test_backlogged_users_get_an_equal_share_within_one_job(costs, quantum):
    """With N users backlogged, each one's served cost stays within one job's cost (plus the
    quantum, which defaults to 1) of an equal share, after every single job."""
    queue = FairQueue(quantum)
    gen_id = 0
    for user, user_costs in enumerate(costs):
        for cost in user_costs:
            queue.push(entry(gen_id, user, cost))
            gen_id += 1
    max_cost = max(max(c) for c in costs)
    n = len(costs)
    while all(queue.waiting_for(user) for user in range(n)):
        queue.pop_batch(1)
        total = sum(queue.served.values())
        for user in range(n):
            assert abs(queue.served.get(user, 0) - total / n) <= max_cost + quantum - 1


@settings(max_examples=40, deadline=None)
@given(
    heavy_cost=st.integers(1, 1000),
    already_served=st.integers(0, 19),
    batch=st.integers(1, 4),
    compatible=st.booleans(),
)
def test_newcomer_with_one_job_starts_within_one_batch_slot(
    heavy_cost, already_served, batch, compatible
):
    """A member sending one job while another has 20 waiting starts within one batch slot:
    in the next batch if the other has already started, else right after the other's first."""
    queue = FairQueue()
    for i in range(20 + already_served):
        queue.push(entry(i, user_id=1, cost=heavy_cost, key="heavy"))
    for _ in range(already_served):
        queue.pop_batch(1)  # the heavy user has been running for a while
    queue.push(entry(999, user_id=2, cost=heavy_cost, key="heavy" if compatible else "light"))
    assert queue.position(999) == (0 if already_served else 1)
    batches = [[e.gen_id for e in queue.pop_batch(batch)] for _ in range(2)]
    slot = next(n for n, ids in enumerate(batches) if 999 in ids)
    if already_served:
        assert slot == 0 and batches[0][0] == 999
    else:
        assert slot <= 1


@settings(max_examples=60, deadline=None)
@given(
    ops=st.lists(
        st.one_of(
            st.tuples(st.just("push"), st.integers(0, 4), st.integers(1, 30), st.integers(0, 2)),
            st.tuples(st.just("remove"), st.integers(0, 200)),
            st.tuples(st.just("pop"), st.integers(1, 4)),
        ),
        max_size=80,
    )
)
def test_fair_order_predicts_dispatch_and_keeps_each_users_order(ops):
    """`order()` is exactly what single pops return; batches start with the head, hold only
    compatible jobs, never reorder a user's jobs, and nothing is lost or served twice."""
    queue = FairQueue()
    next_id = 0
    pushed: dict[int, QueueEntry] = {}
    popped: list[int] = []
    removed: list[int] = []
    for op in ops:
        if op[0] == "push":
            e = entry(next_id, op[1], op[2], key=op[3])
            queue.push(e)
            pushed[next_id] = e
            next_id += 1
        elif op[0] == "remove":
            if queue.remove(op[1]) is not None:
                removed.append(op[1])
        else:
            expected_head = queue.order()[0].gen_id if queue else None
            batch = queue.pop_batch(op[1])
            if expected_head is None:
                assert batch == []
                continue
            assert batch[0].gen_id == expected_head
            assert len(batch) <= op[1]
            assert len({e.batch_key for e in batch}) == 1
            popped += [e.gen_id for e in batch]
        assert len(queue) == len(queue.order())
    # Single pops follow the predicted order exactly.
    predicted = [e.gen_id for e in queue.order()]
    positions = [queue.position(i) for i in predicted]
    assert positions == list(range(len(predicted)))
    rest = [b[0] for b in drain(queue, 1)]
    assert rest == predicted
    served = popped + rest
    assert sorted(served + removed) == sorted(pushed)
    assert len(set(served)) == len(served)
    for user in {e.user_id for e in pushed.values()}:
        mine = [i for i in served if pushed[i].user_id == user]
        assert mine == sorted(mine)


def test_batch_takes_compatible_jobs_in_fair_order():
    """The head goes first, then compatible jobs of other users in their fair order."""
    queue = FairQueue()
    queue.push(entry(1, user_id=1, key="a"))
    queue.push(entry(2, user_id=2, key="b"))
    queue.push(entry(3, user_id=3, key="a"))
    queue.push(entry(4, user_id=1, key="a"))
    queue.push(entry(5, user_id=2, key="a"))  # behind user 2's "b" job: must not overtake it
    assert [e.gen_id for e in queue.pop_batch(4)] == [1, 3, 4]
    assert [e.gen_id for e in queue.pop_batch(4)] == [2]
    assert [e.gen_id for e in queue.pop_batch(4)] == [5]


def test_img2img_jobs_are_never_batched_together():
    """Jobs with a source image each get their own pipeline call."""
    queue = FairQueue()
    for i in range(3):
        request = req(mode="img2img", init_image=b"x", job_id=str(i))
        queue.push(QueueEntry.of(i, user_id=i, request=request))
    assert [len(queue.pop_batch(4)) for _ in range(3)] == [1, 1, 1]


def test_restore_puts_a_batch_back_where_it_was():
    """Jobs put back after a failed start keep their place and their users' credit."""
    for popped_first in range(6):
        queue = FairQueue()
        for i in range(24):
            queue.push(entry(i, user_id=i % 4, cost=10 + 7 * (i % 5), key=i % 2))
        for _ in range(popped_first):
            queue.pop_batch(1)
        served = dict(queue.served)
        before = [e.gen_id for e in queue.order()]
        batch = queue.pop_batch(3)
        queue.restore(batch)
        assert [e.gen_id for e in queue.order()] == before
        assert {u: c for u, c in queue.served.items() if c} == served


def reference_order(queue: FairQueue) -> list[int]:
    """The fair order by simulating DRR from the queue's state (how it was computed before
    the order was kept incrementally): the definition the kept order must match."""
    import heapq

    q = queue.quantum
    heap = []
    for user in queue._users.values():
        visit = queue._round if user.seq >= queue._cursor else queue._round + 1
        ready = -((-(user.base + user.jobs[0].cost)) // q)
        heap.append((max(visit, ready), user.seq, 0, user.base, user))
    heapq.heapify(heap)
    order = []
    while heap:
        rnd, seq, idx, base, user = heapq.heappop(heap)
        entry = user.jobs[idx]
        order.append(entry.gen_id)
        base += entry.cost
        if idx + 1 < len(user.jobs):
            ready = -((-(base + user.jobs[idx + 1].cost)) // q)
            heapq.heappush(heap, (max(rnd, ready), seq, idx + 1, base, user))
    return order


@settings(max_examples=150, deadline=None)
@given(
    ops=st.lists(
        st.tuples(
            st.sampled_from(["push", "push", "push", "pop", "remove", "restore"]),
            st.integers(0, 5),
            st.integers(1, 60),
            st.integers(1, 4),
        ),
        max_size=80,
    ),
    quantum=st.sampled_from([1, 1, 10, 100]),
)
def test_kept_order_equals_a_full_simulation(ops, quantum):
    """After any mix of pushes, batches, cancels and restores, positions and costs ahead are
    the ones a full DRR simulation of the queue gives."""
    queue = FairQueue(quantum)
    next_id = 0
    last_batch: list = []
    for op, user, cost, size in ops:
        if op == "push":
            queue.push(entry(next_id, user, cost, key=cost % 2))
            next_id += 1
        elif op == "pop":
            last_batch = queue.pop_batch(size)
        elif op == "remove" and queue.ids():
            queue.remove(sorted(queue.ids())[cost % len(queue.ids())])
        elif op == "restore" and last_batch:
            queue.restore(last_batch)
            last_batch = []
        expected = reference_order(queue)
        assert [e.gen_id for e in queue.order()] == expected
        ahead = 0
        for position, gen_id in enumerate(expected):
            assert queue.position(gen_id) == position
            assert queue.cost_ahead(gen_id) == ahead
            ahead += queue.get(gen_id).cost
        assert sum(queue.compatible((k,)) for k in (0, 1)) == len(queue)


def test_order_is_kept_across_many_blocks():
    """With thousands waiting (many internal blocks), positions still follow the fair order."""
    queue = FairQueue()
    for i in range(3000):
        queue.push(entry(i, user_id=i % 7, cost=1 + (i * 37) % 500))
    for _ in range(50):
        queue.pop_batch(4)
    queue.remove(1234)
    expected = reference_order(queue)
    assert [e.gen_id for e in queue.order()] == expected
    assert [queue.position(g) for g in expected[::97]] == list(range(0, len(expected), 97))
