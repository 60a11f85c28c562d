import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import fastret
from fastret.storage import atomic
from fastret import cli


def test_failed_write_leaves_the_target_and_no_temporary(tmp_path):
    target = tmp_path / "file.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic.atomic_write(target) as f:
            f.write(b"new")
            raise RuntimeError("boom")
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["file.bin"]


def test_write_bytes_replaces_the_file(tmp_path):
    target = tmp_path / "manifest.json"
    atomic.write_bytes(target, b"one")
    atomic.write_bytes(target, b"two")
    assert target.read_bytes() == b"two" and os.listdir(tmp_path) == ["manifest.json"]


def test_a_directory_is_replaced_whole_or_not_at_all(tmp_path):
    target = tmp_path / "out" / "model"
    with atomic.atomic_directory(target) as tmp:
        (tmp / "a").write_text("1")
    with pytest.raises(RuntimeError):
        with atomic.atomic_directory(target) as tmp:
            (tmp / "b").write_text("2")
            raise RuntimeError("boom")
    assert os.listdir(target) == ["a"] and os.listdir(target.parent) == ["model"]
    (target.parent / ".model.tmp").mkdir()  # what a killed writer leaves
    with atomic.atomic_directory(target) as tmp:
        (tmp / "c").write_text("3")
    assert os.listdir(target) == ["c"] and os.listdir(target.parent) == ["model"]


def dead_pid():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def leftover(directory, name, pid, host=None):
    path = directory / f".{name}.{host or atomic._host()}.{pid}.abc123.tmp"
    path.write_bytes(b"x" * 1000)
    return path


def test_next_write_removes_only_stale_temporaries_of_its_target(tmp_path):
    stale = leftover(tmp_path, "a.frt", dead_pid())
    live = leftover(tmp_path, "a.frt", os.getppid())
    other_host = leftover(tmp_path, "a.frt", dead_pid(), host="elsewhere")
    other_target = leftover(tmp_path, "b.frt", dead_pid())
    with atomic.atomic_write(tmp_path / "a.frt") as f:
        f.write(b"data")
    assert not stale.exists()
    assert live.exists() and other_host.exists() and other_target.exists()
    assert atomic.remove_temporaries_in(tmp_path, dry_run=True) == {other_target: 1000}
    assert atomic.remove_temporaries_in(tmp_path) == {other_target: 1000}
    assert sorted(atomic.temporaries(tmp_path)) == sorted([live, other_host])


def test_clean_command_removes_stale_temporaries(tmp_path, capsys):
    stale = leftover(tmp_path, "shard-00000.frt", dead_pid())
    live = leftover(tmp_path, "manifest.json", os.getppid())
    assert cli.main(["clean", str(tmp_path), "--dry-run"]) == 0
    assert stale.exists() and "would remove 1 file(s) or folder(s)" in capsys.readouterr().out
    assert cli.main(["clean", str(tmp_path)]) == 0
    assert not stale.exists() and live.exists()
    assert cli.main(["clean", str(tmp_path / "index.frt"), "--all", "--json"]) == 0  # a file: its directory
    assert not live.exists()
    assert cli.main(["clean", str(tmp_path / "absent" / "x.frt")]) == 2


SAVER = textwrap.dedent("""
    import sys
    import numpy as np
    import fastret
    rng = np.random.default_rng(int(sys.argv[2]))
    index = fastret.Index(256, store_float16=True)
    index.add(rng.standard_normal((60_000, 256)).astype(np.float32))
    print("ready", flush=True)
    while True:
        index.save(sys.argv[1])
""")


@pytest.mark.parametrize("round_", range(3))
def test_a_save_killed_mid_write_leaves_the_old_or_new_index_and_no_debris_after_the_next(tmp_path, round_):
    target = tmp_path / "index.frt"
    child = subprocess.Popen([sys.executable, "-c", SAVER, str(target), str(round_)], stdout=subprocess.PIPE)
    try:
        assert child.stdout.readline().strip() == b"ready"
        deadline = time.monotonic() + 60
        while not atomic.temporaries(tmp_path) and time.monotonic() < deadline:
            time.sleep(0.005)
        time.sleep(0.01 * round_)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert atomic.temporaries(tmp_path), "the kill should have caught a write in progress"
    if target.exists():  # an earlier save finished: it is whole (its bits may be the kill's victim)
        assert len(fastret.Index.load(target)) == 60_000
    fastret.Index(4).save(target)  # the next write to the same place removes the debris
    assert sorted(os.listdir(tmp_path)) == [".index.frt.lock", "index.frt", "index.frt.00000000.bits"]
