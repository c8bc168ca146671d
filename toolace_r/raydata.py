"""Ray Data the same way every time: fixed batches and ordered output, so probing and evaluation give the same rows
for the same config and seed whatever the cluster size, the number of actors or the load of the machine.

Why it matters: which rows share a batch changes their answers. A probe batch draws its k samples from one RNG
stream seeded by the batch's first id (rows share the stream, so a row's draws depend on its neighbours), and a
batch pads its prompts to a common length — different padding, different float sums, now and then a different
argmax even in greedy evaluation. Left to Ray Data, a batch is whatever its bundler assembles from the input
blocks, and `from_items` cuts max(200, 2 × cluster CPUs) blocks: the batches follow the cluster's size and Ray
Data's internals, and the output order follows task completion.

So the driver cuts the rows into fixed batches itself — consecutive rows, `batch_size` each, the last one shorter —
hands Ray Data one block per batch, and maps with `batch_size=None` (one block = one call). Each row carries its
batch number and the batch's size, so the actor can process the batches of a call one by one (`split_batches`)
and notice a batch that did not arrive whole. Which rows share a batch then depends only on the input order and
the configured batch size. `preserve_order` keeps the output in input order.
"""
from __future__ import annotations

import logging
from typing import Any, Sequence

import pyarrow as pa

log = logging.getLogger(__name__)

BATCH_COLUMN = "_batch"  # the fixed batch a row belongs to
BATCH_ROWS_COLUMN = "_batch_rows"  # how many rows that batch has
_warned: set[int] = set()


def fixed_batches(rows: Sequence[dict[str, Any]], batch_size: int) -> list[pa.Table]:
    """`rows` cut into consecutive batches of `batch_size` (the last one shorter), each an Arrow table with the
    BATCH_COLUMN and BATCH_ROWS_COLUMN bookkeeping columns."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    tables = []
    for index, start in enumerate(range(0, len(rows), batch_size)):
        chunk = list(rows[start:start + batch_size])
        table = pa.Table.from_pylist(chunk)
        table = table.append_column(BATCH_COLUMN, pa.array([index] * len(chunk), pa.int64()))
        table = table.append_column(BATCH_ROWS_COLUMN, pa.array([len(chunk)] * len(chunk), pa.int64()))
        tables.append(table)
    return tables


def batched_dataset(rows: Sequence[dict[str, Any]], batch_size: int, done_ids: frozenset | set = frozenset()):
    """A Dataset with one block per fixed batch of `rows`, ordered execution. Map it with `batch_size=None`.

    `done_ids` (a resumed probe: the ids whose results were already written) leaves out the batches whose rows are
    all done; the others keep the rows, and so the answers, they have in a run from the start. None when nothing
    is left."""
    import ray.data

    if not rows:
        raise ValueError("batched_dataset: no rows")
    tables = fixed_batches(rows, batch_size)
    schema = pa.unify_schemas([t.schema for t in tables])  # a column that is all-null in one batch only
    if done_ids:
        tables = [t for t in tables if not set(t.column("id").to_pylist()) <= done_ids]
        if not tables:
            return None
    return preserve_order(ray.data.from_arrow([t.cast(schema) for t in tables]))


def preserve_order(dataset: Any) -> Any:
    """Execute `dataset` (and what is derived from it) with outputs in input order."""
    dataset.context.execution_options.preserve_order = True
    return dataset


def split_batches(table: pa.Table) -> list[pa.Table]:
    """Actor side: the rows of one map_batches call → its fixed batches in order, without the bookkeeping columns.
    A table without them (a Dataset the caller built) is one batch as it is. A batch with fewer rows than it was
    cut with means Ray Data split a block — its answers may then differ from another run's: logged once."""
    if BATCH_COLUMN not in table.column_names:
        return [table]
    index = table.column(BATCH_COLUMN).to_pylist()
    sizes = table.column(BATCH_ROWS_COLUMN).to_pylist()
    plain = table.drop_columns([BATCH_COLUMN, BATCH_ROWS_COLUMN])
    out, start = [], 0
    for i in range(1, len(index) + 1):
        if i == len(index) or index[i] != index[start]:
            if i - start != sizes[start] and index[start] not in _warned:
                _warned.add(index[start])
                log.warning("fixed batch %d arrived with %d of its %d rows: its results may differ between runs",
                            index[start], i - start, sizes[start])
            out.append(plain.slice(start, i - start))
            start = i
    return out
