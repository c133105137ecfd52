"""The on-disk spool, on real files: order, durability across reopen, the bound, damage."""

from __future__ import annotations

import pytest

from collectors.spool import Record, Spool, SpoolError


def rec(i: int, key: str = "rk1", size: int = 200) -> Record:
    return Record(
        "telemetry.gpu",
        key.encode(),
        [("dctwin-batch-id", f"b{i}".encode())],
        (f"{i:06d}" * (size // 6 + 1))[:size].encode(),
        n_samples=i % 7 + 1,
    )


def drain(spool: Spool, max_records: int = 1000, distinct_keys: bool = False) -> list[Record]:
    out = []
    while True:
        records, end, _bad = spool.peek(max_records, distinct_keys)
        if not records:
            return out
        spool.commit(end, len(records), sum(r.n_samples for r in records))
        out += records


@pytest.mark.parametrize("compress", [True, False])
def test_records_come_back_in_order_and_unchanged_across_reopen(tmp_path, compress):
    sent = [rec(i, key=f"rk{i % 3}") for i in range(50)]
    sp = Spool(tmp_path / "s", max_bytes=1 << 20, segment_bytes=2048, compress=compress)
    sp.append(sent[:30])
    sp.append(sent[30:])
    assert len(sp) == 50 and sp.samples == sum(r.n_samples for r in sent)
    records, end, _ = sp.peek(3, distinct_keys=False)  # mid-segment
    sp.commit(end, len(records), sum(r.n_samples for r in records))
    sp.close()  # a restart in the middle of a replay

    sp = Spool(tmp_path / "s", max_bytes=1 << 20, segment_bytes=2048, compress=compress)
    assert len(records) == 3 and len(sp) == 47
    rest = drain(sp, max_records=7)
    assert records + rest == sent
    assert sp.empty and sp.records == 0 and sp.bytes == 0
    sp.close()
    assert not (tmp_path / "s").exists()  # an empty spool leaves nothing behind


def test_peek_never_holds_two_batches_of_one_key(tmp_path):
    sp = Spool(tmp_path / "s", max_bytes=1 << 20)
    sp.append([rec(0, "a"), rec(1, "b"), rec(2, "a"), rec(3, "c")])
    records, end, _ = sp.peek(100)
    assert [r.key for r in records] == [b"a", b"b"]
    sp.commit(end, 2, sum(r.n_samples for r in records))
    records, _, _ = sp.peek(100)
    assert [r.key for r in records] == [b"a", b"c"]
    sp.close()


def test_bound_drops_oldest_counts_it_and_keeps_newest(tmp_path):
    sent = [rec(i, key=f"rk{i % 4}", size=1000) for i in range(100)]
    sp = Spool(tmp_path / "s", max_bytes=20_000, compress=False)
    dropped_records = dropped_samples = 0
    for i in range(0, 100, 4):
        d = sp.append(sent[i : i + 4])
        dropped_records += d.records
        dropped_samples += d.samples
        assert sp.bytes <= 20_000
        if d:
            assert d.reasons == {"spool_full"}
    kept = drain(sp)
    assert dropped_records > 0
    assert dropped_records + len(kept) == len(sent)
    assert kept == sent[dropped_records:]  # the newest survive, in order
    assert dropped_samples == sum(r.n_samples for r in sent[:dropped_records])
    sp.close()


def test_record_larger_than_the_bound_is_dropped_and_counted(tmp_path):
    sp = Spool(tmp_path / "s", max_bytes=4096, compress=False)
    d = sp.append([rec(1, size=10_000)])
    assert d.records == 1 and d.reasons == {"record_too_large"}
    assert sp.empty
    sp.close()


def test_torn_tail_is_cut_and_reported_and_the_rest_kept(tmp_path):
    sp = Spool(tmp_path / "s", max_bytes=1 << 20, compress=False)
    sent = [rec(i) for i in range(5)]
    sp.append(sent)
    sp.close()
    seg = sorted((tmp_path / "s").glob("*.seg"))[-1]
    whole = seg.read_bytes()
    seg.write_bytes(whole + whole[:100])  # a crash in the middle of the next append
    sp = Spool(tmp_path / "s", max_bytes=1 << 20, compress=False)
    assert sp.open_dropped.bytes == 100 and sp.open_dropped.reasons == {"torn_tail"}
    assert drain(sp) == sent
    sp.close()


def test_checksum_mismatch_skips_only_that_record(tmp_path):
    sp = Spool(tmp_path / "s", max_bytes=1 << 20, compress=False)
    sent = [rec(i) for i in range(3)]
    sp.append(sent)
    sp.close()
    seg = sorted((tmp_path / "s").glob("*.seg"))[0]
    data = bytearray(seg.read_bytes())
    one = len(data) // 3
    data[one + one // 2] ^= 0xFF  # inside the second record's payload
    seg.write_bytes(bytes(data))
    sp = Spool(tmp_path / "s", max_bytes=1 << 20, compress=False)
    got, bad = [], []
    while True:
        records, end, b = sp.peek(10, distinct_keys=False)
        if b:
            bad.append(b)
        if not records:
            break
        sp.commit(end, len(records), sum(r.n_samples for r in records))
        got += records
    assert got == [sent[0], sent[2]]
    assert len(bad) == 1 and bad[0].records == 1 and bad[0].reasons == {"corrupt"}
    assert bad[0].samples == sent[1].n_samples
    sp.close()


def test_one_spool_per_process(tmp_path):
    sp = Spool(tmp_path / "s", max_bytes=1 << 20)
    sp.append([rec(1)])
    with pytest.raises(SpoolError, match="in use"):
        Spool(tmp_path / "s", max_bytes=1 << 20)
    sp.close()
