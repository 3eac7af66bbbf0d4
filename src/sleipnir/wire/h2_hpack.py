"""HPACK with memory: hpack's encoder and decoder, remembering blocks that left the table as is.

Most header blocks on a busy connection repeat: a client sends the same request fields, every
response carries the same ``server``, ``content-type`` and ``date`` (new once a second). Once
such a block's fields are in the dynamic table it is coded with indices only, and coding it
changes nothing: the same input gives the same output for as long as the table stays as it
was. hpack redoes the work each time (a table search and a log call per field, about a fifth
of an HTTP/2 request's CPU time here). These subclasses keep the result of such a block,
keyed by its input and valid while the table is unchanged, and hand back the stored result.

"Unchanged" is checked by identity: the newest table entry (hpack prepends each addition) is
kept in the memo, so it cannot be freed and its address reused; with the entry count, the
size and the limits it tells any addition, eviction or resize. A block that changes the table
(it adds a field, or resizes) is never remembered; its repetition, coded from the table it
left, is. The result is exactly what hpack would produce: only repeated work is skipped.

h2 takes these as drop-in replacements: ``H2Connection.encoder`` and ``.decoder`` are public
attributes that it calls with ``encode(headers)`` and ``decode(data, raw=True)``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from hpack import Decoder, Encoder, HeaderTuple

# Per connection and direction; a block is one request's or response's fields, and a few
# distinct ones (per route, per status) repeat. On overflow the memo starts over. Only short
# blocks (indices, mostly) are kept: at most about 16 x 256 bytes per direction.
MEMO_BLOCKS = 16
MEMO_BLOCK_BYTES = 256


def _table_key(table: Any) -> tuple[object, int, int, int]:
    entries = table.dynamic_entries
    return (entries[0] if entries else None, len(entries), table._current_size, table._maxsize)


class MemoEncoder(Encoder):
    """hpack's ``Encoder`` remembering blocks coded without changing the dynamic table."""

    def __init__(self) -> None:
        super().__init__()
        self._memo: dict[tuple[Any, ...], tuple[tuple[object, int, int, int], bytes]] = {}

    def encode(self, headers: Iterable[Any], huffman: bool = True) -> bytes:
        # Only plain (bytes, bytes) lists are remembered: a HeaderTuple subclass carries its
        # "never index" flag outside tuple equality, and a dict is ordered by hpack.
        table = self.header_table
        if type(headers) is not list or table.resized or not huffman:
            return super().encode(headers, huffman)
        key = tuple(headers)
        before = _table_key(table)
        hit = self._memo.get(key)
        if hit is not None and hit[0] == before:
            return hit[1]
        for field in key:
            if type(field) is not tuple or len(field) != 2:
                return super().encode(headers, huffman)
        block = super().encode(headers, huffman)
        if len(block) <= MEMO_BLOCK_BYTES and _table_key(table) == before:
            memo = self._memo
            if len(memo) >= MEMO_BLOCKS:
                memo.clear()
            memo[key] = (before, block)
        return block


class MemoDecoder(Decoder):
    """hpack's ``Decoder`` remembering blocks decoded without changing the dynamic table."""

    def __init__(self, max_header_list_size: int = 65536) -> None:
        super().__init__(max_header_list_size)
        self._memo: dict[bytes, tuple[tuple[object, ...], list[HeaderTuple]]] = {}

    def decode(self, data: bytes, raw: bool = False) -> list[HeaderTuple]:
        if not raw or type(data) is not bytes or len(data) > MEMO_BLOCK_BYTES:
            return list(super().decode(data, raw))
        before = (
            *_table_key(self.header_table),
            self.max_header_list_size,
            self.max_allowed_table_size,
        )
        hit = self._memo.get(data)
        if hit is not None and hit[0] == before:
            return list(hit[1])
        headers = list(super().decode(data, raw))
        if _table_key(self.header_table) == before[:4]:
            memo = self._memo
            if len(memo) >= MEMO_BLOCKS:
                memo.clear()
            memo[data] = (before, headers)
            return list(headers)
        return headers
