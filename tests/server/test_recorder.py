import json

from glider.server.store.recorder import TrajectoryRecorder


def read_all(directory):
    sealed = sorted(directory.glob("*.jsonl"))
    return sealed, [json.loads(line) for f in sealed for line in f.read_text().splitlines()]


def test_records_are_written_rotated_and_sealed(tmp_path):
    rec = TrajectoryRecorder(tmp_path, max_bytes=4096)
    rec.start()
    for i in range(200):
        rec.record({"episode_id": "e", "step": i, "observation": "x" * 50})
        if i % 20 == 19:
            rec.flush()  # batches of 20 records (~2 KiB): a new file every other batch
    sealed, records = read_all(tmp_path)
    assert len(sealed) >= 2  # rotated at 4 KiB
    open_files = list(tmp_path.glob("*.jsonl.open"))
    rec.close()
    sealed, records = read_all(tmp_path)
    assert not list(tmp_path.glob("*.open")) and len(open_files) <= 1
    assert [r["step"] for r in records] == list(range(200))
    assert all(r["v"] == 1 for r in records)


def test_a_full_queue_drops_and_counts_instead_of_blocking(tmp_path):
    dropped = []
    rec = TrajectoryRecorder(tmp_path, queue_size=3, on_drop=lambda: dropped.append(1))
    for i in range(5):  # writer not started: the queue fills
        rec.record({"step": i})
    assert len(dropped) == 2
    rec.start()
    rec.close()
    assert [r["step"] for r in read_all(tmp_path)[1]] == [0, 1, 2]
