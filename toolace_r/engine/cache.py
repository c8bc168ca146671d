"""The engine's KV cache: rows that come and go, each with its own token sequence, in one shared cache.

Layout. Every layer keeps keys and values in one buffer [rows, heads, columns, head_dim]. A forward pass appends
columns; a row's tokens sit in the columns its own feeds wrote (`slots[row]`), and the 2-D attention mask marks every
other column of that row a hole. Explicit `position_ids` count only a row's real tokens, so under full attention a row
sees exactly its own sequence wherever its tokens sit (holes cost compute, never correctness). This is what lets a
row join while others decode, drop the tail of its sequence (a refinement round's new prompt, rejected draft tokens),
or be copied k times after one prefill.

Row subsets. A pass may run on some rows only (`feed(rows=...)`): the layers write the new columns for those rows,
zero them for the rest, and hand attention just the rows it computes. A prefill of new prompts therefore costs what
the new prompts cost, not `all rows x prompt length`.

Compaction. Holes accumulate (columns other rows' prefills wrote, released rows). `compact()` drops released rows
and packs every row's tokens to the left in one gather; the engine calls it when the waste is worth one copy.

Models whose cache has layers other than full attention (a sliding window attends to its last W columns, holes
included) cannot use any of this: `holes_are_free` tells, and the engine then decodes one sequence at a time.
"""
from __future__ import annotations

import inspect
from typing import Any

import torch

try:
    from transformers.cache_utils import DynamicLayer as _DynamicLayer
except ImportError:  # pragma: no cover - transformers < 4.56 has no per-layer caches; the engine needs them
    _DynamicLayer = object


class RowSelection:
    """Which rows the running forward pass computes (None: all; a slice: a contiguous range, read as a view; an index
    tensor: gathered) and how many rows the cache holds; shared by every layer of one cache, set by `RowCache.feed`."""

    def __init__(self) -> None:
        self.rows: slice | torch.Tensor | None = None
        self.total = 0
        self.columns_hint = 0  # columns the rows may reach soon (the engine's estimate): growing goes there at once


class GrowingLayer(_DynamicLayer):
    """A full-attention cache layer whose buffers have spare columns (a quarter more when full) and follow a RowSelection:
    appending a token writes it in place (DynamicLayer concatenates the whole cache at every step, a copy that was
    ~2/3 of decoding time on CPU), and a pass over a subset of rows reads and writes only those rows."""

    def __init__(self, selection: RowSelection | None = None):
        super().__init__()
        self.selection = selection if selection is not None else RowSelection()

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.dtype, self.device = key_states.dtype, key_states.device
        rows = max(self.selection.total, key_states.shape[0])
        self._rows = rows
        self._k = key_states.new_zeros((rows, key_states.shape[1], 0, key_states.shape[3]))
        self._v = value_states.new_zeros((rows, value_states.shape[1], 0, value_states.shape[3]))
        self._len = 0
        self._refresh()
        self.is_initialized = True

    def _refresh(self) -> None:
        self.keys, self.values = self._k[:self._rows, :, :self._len], self._v[:self._rows, :, :self._len]

    def reserve_rows(self, capacity: int) -> None:
        """Room for `capacity` rows without taking them (one copy now instead of several as rows are added)."""
        if self.is_initialized and capacity > self._k.shape[0]:
            extra = capacity - self._k.shape[0]
            self._k = torch.cat([self._k, self._k.new_empty((extra, *self._k.shape[1:]))])
            self._v = torch.cat([self._v, self._v.new_empty((extra, *self._v.shape[1:]))])
            self._refresh()

    def ensure_rows(self, total: int) -> None:
        """`total` rows in use (the buffer keeps spare rows: a quarter more when it grows). Rows past the ones in use
        are zeroed when taken: holes must be finite under the mask, which uninitialised or stale memory need not be."""
        if not self.is_initialized or total == self._rows:
            return
        if total > self._k.shape[0]:
            capacity = max(total, self._k.shape[0] * 5 // 4)
            self._k = torch.cat([self._k, self._k.new_empty((capacity - self._k.shape[0], *self._k.shape[1:]))])
            self._v = torch.cat([self._v, self._v.new_empty((capacity - self._v.shape[0], *self._v.shape[1:]))])
        if total > self._rows:
            self._k[self._rows:total], self._v[self._rows:total] = 0, 0
        self._rows = total
        self._refresh()

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        rows = self.selection.rows
        self.ensure_rows(self.selection.total or key_states.shape[0])  # no RowCache around it: the batch's rows
        need = self._len + key_states.shape[-2]
        if need > self._k.shape[-2]:
            # a quarter more, not double (the engine's budget counts rows x length; the copy while growing is
            # transient), or at once to the columns the engine expects the rows to reach (its hint, at most 2x)
            capacity = max(need, self._k.shape[-2] * 5 // 4, min(self.selection.columns_hint, 2 * need), 64)
            self._k, self._v = self._grown(self._k, capacity), self._grown(self._v, capacity)
        if rows is None:
            self._k[:self._rows, :, self._len:need] = key_states
            self._v[:self._rows, :, self._len:need] = value_states
        else:
            self._k[:self._rows, :, self._len:need] = 0
            self._v[:self._rows, :, self._len:need] = 0
            self._k[rows, :, self._len:need] = key_states
            self._v[rows, :, self._len:need] = value_states
        self._len = need
        self._refresh()
        if rows is None:
            return self.keys, self.values
        return self._k[rows, :, :need], self._v[rows, :, :need]  # a slice: a view; an index tensor: a gathered copy

    def _grown(self, buffer: torch.Tensor, capacity: int) -> torch.Tensor:
        # empty, not zeros: columns past _len are written (or zeroed, for rows a pass does not compute) before any
        # attention reads them
        bigger = buffer.new_empty((*buffer.shape[:2], capacity, buffer.shape[3]))
        bigger[:, :, :self._len] = buffer[:, :, :self._len]
        return bigger

    def get_seq_length(self) -> int:
        return self._len if self.is_initialized else 0

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove > 0:
            raise ValueError("crop takes a negative number of tokens to remove")
        if self.is_initialized and tokens_to_remove:
            self._len = max(0, self._len + tokens_to_remove)
            self._refresh()

    def move_row(self, src: int, dst: int) -> None:
        if self.is_initialized:
            n = self._len
            self._k[dst, :, :n], self._v[dst, :, :n] = self._k[src, :, :n].clone(), self._v[src, :, :n].clone()

    def adopt(self, other: "GrowingLayer", start: int) -> None:
        """Rows start.. take `other`'s rows (all of them), their columns at 0..; columns are added when `other` is
        wider. The rows must be in use already (ensure_rows) and empty."""
        if not other.is_initialized:
            return
        n, width = other._rows, other._len
        self._make_room(other, start + n, width)
        self._k[start:start + n, :, :width] = other._k[:n, :, :width]
        self._v[start:start + n, :, :width] = other._v[:n, :, :width]
        self._refresh()

    def _make_room(self, like: "GrowingLayer", rows: int, width: int) -> None:
        """At least `rows` rows and `width` columns in use (initialised like `like` if this layer is not yet), before
        another layer's rows are copied in; columns added are zeroed in every row (holes must be finite)."""
        if not self.is_initialized:
            self.lazy_initialization(like._k[:0, :, :0], like._v[:0, :, :0])
        self.ensure_rows(max(self.selection.total, rows))
        if width > self._k.shape[-2]:
            capacity = max(width * 5 // 4, 64)
            self._k, self._v = self._grown(self._k, capacity), self._grown(self._v, capacity)
        if width > self._len:
            self._k[:, :, self._len:width], self._v[:, :, self._len:width] = 0, 0
            self._len = width

    def take(self, row: int, other: "GrowingLayer", src: int, columns: torch.Tensor) -> None:
        """Row `row` gets `other`'s row `src` at its columns `columns`, packed at columns 0..; columns are added
        (zeroed for the other rows) when this layer is narrower."""
        if not other.is_initialized:
            return
        width = columns.numel()
        self._make_room(other, row + 1, width)
        self._k[row, :, :width] = other._k[src].index_select(1, columns)
        self._v[row, :, :width] = other._v[src].index_select(1, columns)
        self._refresh()

    def copy_rows(self, src: int, dsts: list[int]) -> None:
        if self.is_initialized:
            index = torch.tensor(dsts, dtype=torch.long, device=self._k.device)
            n = self._len
            self._k[index, :, :n], self._v[index, :, :n] = self._k[src, :, :n].clone(), self._v[src, :, :n].clone()

    def pack(self, columns: torch.Tensor) -> None:
        """Row i keeps its columns `columns[i]`, packed to the left (one gather into a new buffer)."""
        if not self.is_initialized:
            return
        width, rows = columns.shape[1], self._rows
        index = columns[:, None, :, None].expand(-1, self._k.shape[1], -1, self._k.shape[3])
        # the columns the rows will soon reach (the engine's hint), within what the buffer held: no growth right after
        capacity = max(width * 5 // 4, 64, min(self._k.shape[-2], self.selection.columns_hint))
        k = self._k.new_empty((self._k.shape[0], self._k.shape[1], capacity, self._k.shape[3]))
        v = self._v.new_empty((self._v.shape[0], self._v.shape[1], capacity, self._v.shape[3]))
        k[:rows, :, :width] = torch.gather(self._k[:rows, :, :self._len], 2, index)
        v[:rows, :, :width] = torch.gather(self._v[:rows, :, :self._len], 2, index)
        self._k, self._v, self._len = k, v, width
        self._refresh()

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self.is_initialized:
            self._k, self._v = self._k[indices], self._v[indices]
            self._rows = self._k.shape[0]
            self._refresh()


def holes_are_free(model: Any) -> bool:
    """Whether masked columns in the middle of a row leave its answers as decoding it alone would: true for
    full-attention caches. A sliding-window layer attends to its last W columns, holes included."""
    from transformers import DynamicCache

    layers = getattr(DynamicCache(config=model.config), "layers", None)
    return layers is not None and all(type(layer) is _DynamicLayer for layer in layers)


class RowCache:
    """Rows sharing one KV cache, each with its own logical token sequence (see the module docstring).

    `seqs[r]` is the sequence row r's next token is conditioned on; `slots[r][i]` is the column its i-th token sits in.
    Rows in use are always 0..rows-1: `add_rows` appends, `release` moves the last row into the freed one. So a pass
    over every row, or over rows that joined together, reads its rows as a view of the buffers, never a copy."""

    def __init__(self, model: Any, pad_id: int):
        from transformers import DynamicCache

        self.model = model
        self.device = next(model.parameters()).device
        self.pad_id = pad_id
        self.selection = RowSelection()
        self.cache = DynamicCache(config=model.config)
        self.cache.layers = [GrowingLayer(self.selection) for _ in self.cache.layers]
        self.mask = torch.zeros((0, 0), dtype=torch.long, device=self.device)
        self.seqs: list[list[int]] = []
        self.slots: list[list[int]] = []
        self.forward_calls = 0
        params = inspect.signature(model.forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"

    # --- rows ---------------------------------------------------------------------------------------------------
    @property
    def rows(self) -> int:
        return len(self.seqs)

    @property
    def width(self) -> int:
        return self.mask.shape[1]

    def _resize(self) -> None:
        self.selection.total = self.rows
        for layer in self.cache.layers:
            layer.ensure_rows(self.rows)

    def add_rows(self, n: int) -> list[int]:
        """n empty rows at the end."""
        new = list(range(self.rows, self.rows + n))
        self.seqs.extend([] for _ in new)
        self.slots.extend([] for _ in new)
        self.mask = torch.cat([self.mask, self.mask.new_zeros((n, self.width))])
        self._resize()
        return new

    def reserve_rows(self, capacity: int) -> None:
        for layer in self.cache.layers:
            layer.reserve_rows(capacity)

    def adopt(self, other: "RowCache") -> dict[int, int]:
        """Take every row of `other` (prefilled apart, see Engine._prefill), their tokens at columns 0.. of rows
        appended here. Returns other's row → its row here."""
        start = self.rows
        new = self.add_rows(other.rows)
        if other.width > self.width:
            self.mask = torch.cat([self.mask, self.mask.new_zeros((self.rows, other.width - self.width))], dim=1)
        self.mask[start:, :other.width] = other.mask
        for layer, theirs in zip(self.cache.layers, other.cache.layers):
            layer.adopt(theirs, start)
        for i, row in enumerate(new):
            self.seqs[row], self.slots[row] = other.seqs[i], other.slots[i]
        return dict(zip(range(other.rows), new))

    def take_row(self, row: int, other: "RowCache", src: int) -> None:
        """Row `row` (added, empty) takes row `src` of `other`: its sequence, its tokens packed at columns 0.. (a
        follow-up round prefilled apart, see Engine._prefill). `other` keeps its row until it is released."""
        slots = other.slots[src]
        if len(slots) > self.width:
            self.mask = torch.cat([self.mask, self.mask.new_zeros((self.rows, len(slots) - self.width))], dim=1)
        columns = torch.tensor(slots, dtype=torch.long, device=self.device)
        while len(self.cache.layers) < len(other.cache.layers):  # layers a model appended to its cache
            self.cache.layers.append(GrowingLayer(self.selection))
        for layer, theirs in zip(self.cache.layers, other.cache.layers):
            layer.take(row, theirs, src, columns)
        self.mask[row, :len(slots)] = 1  # an added row's mask is all zeros
        self.seqs[row], self.slots[row] = list(other.seqs[src]), list(range(len(slots)))

    def release(self, row: int) -> int | None:
        """Give row r back: the last row moves into it (one row's copy). Returns the row that moved there (its old
        number), or None when r was the last row."""
        last = self.rows - 1
        moved = None
        if row != last:
            for layer in self.cache.layers:
                layer.move_row(last, row)
            self.mask[row] = self.mask[last]
            self.seqs[row], self.slots[row] = self.seqs[last], self.slots[last]
            moved = last
        self.seqs.pop()
        self.slots.pop()
        self.mask = self.mask[:last]
        self._resize()
        return moved

    def copy_row(self, src: int, dsts: list[int]) -> None:
        """Rows `dsts` become copies of row `src` (k continuations of one prefilled prompt)."""
        if not dsts:
            return
        for layer in self.cache.layers:
            layer.copy_rows(src, dsts)
        self.mask[dsts] = self.mask[src].clone()
        for d in dsts:
            self.seqs[d], self.slots[d] = list(self.seqs[src]), list(self.slots[src])

    def crop(self, row: int, length: int) -> None:
        """Keep only the first `length` tokens of row r's sequence (the rest become holes)."""
        dropped = self.slots[row][length:]
        if dropped:
            self.mask[row, torch.tensor(dropped, device=self.device)] = 0
            del self.seqs[row][length:], self.slots[row][length:]

    # --- forward passes -----------------------------------------------------------------------------------------
    def feed(self, rows: list[int], segments: list[list[int]], keep: int = 1, right_aligned: bool = False
             ) -> torch.Tensor:
        """Append segments[i] to row rows[i] in one forward pass over those rows only; the logits of the last `keep`
        positions, [len(rows), keep, vocab]. Segments are left-padded so every row's last token sits at -1;
        `right_aligned` pads on the right instead (row tokens at 0..len-1: ask for keep = the widest segment), so the
        holes that rejected draft tokens leave gather at the end, where `trim` removes them."""
        width = max(len(s) for s in segments)
        if width == 0 or any(not s for s in segments):
            raise ValueError("feed() needs at least one token per row")
        keep = min(keep, width)
        start = self.width
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        new_mask = torch.zeros((len(rows), width), dtype=torch.long)
        positions = torch.zeros((len(rows), width), dtype=torch.long)
        for i, (row, seg) in enumerate(zip(rows, segments)):
            n = len(self.seqs[row])
            off = 0 if right_aligned else width - len(seg)
            ids[i, off:off + len(seg)] = torch.tensor(seg, dtype=torch.long)
            new_mask[i, off:off + len(seg)] = 1
            positions[i, :] = n  # pads: any position, they are masked
            positions[i, off:off + len(seg)] = torch.arange(n, n + len(seg))
            self.slots[row].extend(range(start + off, start + off + len(seg)))
            self.seqs[row].extend(seg)
        select = _as_slice(rows)
        if select is not None and select.start == 0 and select.stop == self.rows:
            select = None  # every row: no selection at all
        elif select is None:
            select = torch.tensor(rows, dtype=torch.long, device=self.device)
        grown = self.mask.new_zeros((self.rows, width))
        grown[slice(None) if select is None else select] = new_mask.to(self.device)
        self.mask = torch.cat([self.mask, grown], dim=1)
        self.selection.total = self.rows
        self.selection.rows = select
        try:
            out = self.model(input_ids=ids.to(self.device),
                             attention_mask=self.mask if select is None else self.mask[select],
                             position_ids=positions.to(self.device), use_cache=True, logits_to_keep=keep,
                             **{self._cache_kw: self.cache})
        finally:
            self.selection.rows = None
        self.forward_calls += 1
        return out.logits[:, -keep:, :]

    def trim(self) -> None:
        """Drop trailing columns that are holes in every row (rejected draft tokens, right padding): cheap, no copy."""
        used = self.mask.any(dim=0).nonzero()
        end = int(used[-1]) + 1 if used.numel() else 0
        extra = self.width - end
        if extra > 0 and self.cache.get_seq_length() == self.width:
            self.cache.crop(-extra)
            self.mask = self.mask[:, :end]

    def excess(self) -> float:
        """Share of the columns that compaction would remove: 1 − longest row / columns."""
        return 1.0 - max((len(s) for s in self.slots), default=0) / self.width if self.width else 0.0

    def compact(self) -> None:
        """Pack every row's tokens to the left (one gather per layer): the columns become the longest row's."""
        width = max((len(s) for s in self.slots), default=0)
        columns = torch.zeros((self.rows, width), dtype=torch.long, device=self.device)
        for r, slots in enumerate(self.slots):
            if slots:
                columns[r, :len(slots)] = torch.tensor(slots, device=self.device)
        for layer in self.cache.layers:
            layer.pack(columns)
        lengths = torch.tensor([len(s) for s in self.slots], device=self.device)
        self.mask = (torch.arange(width, device=self.device)[None, :] < lengths[:, None]).long()
        self.slots = [list(range(len(s))) for s in self.seqs]


def _as_slice(rows: list[int]) -> slice | None:
    """rows as a slice when they are consecutive and ascending, else None."""
    if rows and rows == list(range(rows[0], rows[0] + len(rows))):
        return slice(rows[0], rows[0] + len(rows))
    return None
