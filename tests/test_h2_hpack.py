"""The HPACK memo (wire/h2_hpack.py): byte for byte what hpack itself produces, on long random
conversations that add, evict, resize and repeat. No event loop."""

from __future__ import annotations

import random
from typing import Any

import pytest
from hpack import Decoder, Encoder, NeverIndexedHeaderTuple
from hpack.exceptions import HPACKDecodingError, OversizedHeaderListError

from sleipnir.wire.h2_hpack import MEMO_BLOCKS, MemoDecoder, MemoEncoder

NAMES = [b"server", b"content-type", b"date", b"x-trace", b"cache-control", b"set-cookie"]


def random_block(rng: random.Random) -> list[tuple[bytes, bytes]]:
    block = [(b":status", rng.choice([b"200", b"404", b"201"]))]
    for _ in range(rng.randint(0, 5)):
        name = rng.choice(NAMES)
        size = rng.choice([1, 5, 40, 600, 4100])  # 4100: larger than the whole table
        block.append((name, b"v%d-" % rng.randint(0, 3) + b"x" * size))
    return block


@pytest.mark.parametrize("seed", range(4))
def test_memo_codes_like_hpack(seed: int) -> None:
    """Encoder and decoder memos against plain hpack over 300 blocks, mostly repeats, with
    table resizes (SETTINGS_HEADER_TABLE_SIZE) in between."""
    rng = random.Random(seed)
    plain_enc, memo_enc = Encoder(), MemoEncoder()
    plain_dec, memo_dec = Decoder(), MemoDecoder()
    seen: list[list[tuple[bytes, bytes]]] = [random_block(rng) for _ in range(6)]
    hits = 0
    for step in range(300):
        if rng.random() < 0.02:
            size = rng.choice([0, 64, 256, 4096, 1000])
            plain_enc.header_table_size = memo_enc.header_table_size = size
        if rng.random() < 0.05:
            seen[rng.randrange(len(seen))] = random_block(rng)
        block = list(rng.choice(seen))
        expected = plain_enc.encode(block)
        before = len(memo_enc._memo)
        got = memo_enc.encode(block)
        assert got == expected, f"step {step}"
        hits += len(memo_enc._memo) == before
        assert memo_dec.decode(got, raw=True) == plain_dec.decode(expected, raw=True)
        assert memo_dec.header_table.dynamic_entries == plain_dec.header_table.dynamic_entries
    assert hits > 50  # the memo is actually used


def test_repeated_block_is_remembered_and_still_exact() -> None:
    enc = MemoEncoder()
    block = [(b":status", b"200"), (b"server", b"sleipnir"), (b"content-length", b"13")]
    first = enc.encode(list(block))  # adds two fields to the table: not remembered
    assert not enc._memo
    second = enc.encode(list(block))  # indices only, table unchanged: remembered
    assert len(second) < len(first) and len(enc._memo) == 1
    assert enc.encode(list(block)) == second
    enc.encode([(b"x-new", b"1")])  # the table changed: the memo no longer applies
    assert enc.encode(list(block)) == plain_replay([block, block, [(b"x-new", b"1")], block])


def plain_replay(blocks: list[list[tuple[bytes, bytes]]]) -> bytes:
    plain = Encoder()
    out = b""
    for block in blocks:
        out = plain.encode(block)
    return out


def test_never_indexed_fields_bypass_the_memo() -> None:
    enc = MemoEncoder()
    secret: list[Any] = [NeverIndexedHeaderTuple(b"authorization", b"s3cret")]
    for _ in range(3):
        assert enc.encode(list(secret)) == Encoder().encode(list(secret))
    assert not enc._memo


def test_memo_is_bounded() -> None:
    enc = MemoEncoder()
    dec = MemoDecoder()
    for i in range(MEMO_BLOCKS * 3):
        block = [(b":status", b"200"), (b"content-length", b"%d" % i)]
        dec.decode(enc.encode(list(block)), raw=True)
        dec.decode(enc.encode(list(block)), raw=True)
    assert len(enc._memo) <= MEMO_BLOCKS and len(dec._memo) <= MEMO_BLOCKS


def test_decoder_memo_keeps_the_limits() -> None:
    """A remembered block is checked again once the header-list limit shrinks."""
    enc = Encoder()
    dec = MemoDecoder()
    block = [(b"x-a", b"a" * 100)]
    dec.decode(enc.encode(block), raw=True)
    data = enc.encode(block)  # an index now
    assert dec.decode(data, raw=True) == [(b"x-a", b"a" * 100)]
    assert dec._memo
    dec.max_header_list_size = 50
    with pytest.raises(OversizedHeaderListError):
        dec.decode(data, raw=True)


def test_decoder_errors_are_not_remembered() -> None:
    dec = MemoDecoder()
    for _ in range(2):
        with pytest.raises(HPACKDecodingError):
            dec.decode(b"\xff\xff\xff\x0f", raw=True)  # an index far past both tables
    assert not dec._memo


def test_decoder_returns_fresh_lists() -> None:
    enc, dec = Encoder(), MemoDecoder()
    block = [(b":method", b"GET"), (b":path", b"/")]
    data = enc.encode(block)
    first = dec.decode(data, raw=True)
    first.clear()
    assert dec.decode(data, raw=True) == block
