"""Every save is one commit: killed or failing at any write, rename or removal, a store or index file
is the old version or the new one, whole; damaged sidecars and manifests are named errors; two
writers never lose an update silently; leftovers are cleaned."""

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import fastret
from fastret import cli
from fastret.storage.store import StoreError
from fastret.storage.writer_lock import ConcurrentWriteError, WriterBusyError, lock_path, writer_lock

from conftest import make_store, unit_rows

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from fuzz_store import DIM, base_store, change, fields_of, fingerprint, fuzz  # noqa: E402


class Events:
    """Counts the file system steps of a save (renames, syncs, removals, directory creations) and
    makes step `fail_at` raise an OSError (a full disk) or kill the process."""

    STEPS = ("replace", "rename", "fsync", "unlink", "rmdir", "mkdir")

    def __init__(self, monkeypatch, fail_at=None, kill=False):
        self.count = 0
        self.fail_at = fail_at
        self.kill = kill
        for name in self.STEPS:
            monkeypatch.setattr(os, name, self._wrapped(getattr(os, name)))

    def _wrapped(self, real):
        def step(*args, **kwargs):
            self.count += 1
            if self.count == self.fail_at:
                if self.kill:
                    os.kill(os.getpid(), signal.SIGKILL)
                raise OSError(errno.ENOSPC, "No space left on device (injected)")
            return real(*args, **kwargs)
        return step


def visible_files(directory):
    return sorted(p.name for p in directory.iterdir() if not p.name.startswith("."))


@pytest.fixture(scope="module")
def versions(tmp_path_factory):
    """(old store, its fingerprint, new store, its fingerprint, steps of the save between them)."""
    root = tmp_path_factory.mktemp("versions")
    rng = np.random.default_rng(5)
    base_store(root / "old", rng)
    shutil.copytree(root / "old", root / "new")
    index = fastret.Index.load(root / "new")
    change(index, np.random.default_rng(6))
    with pytest.MonkeyPatch.context() as patch:
        events = Events(patch)
        index.save(root / "new")
    assert fingerprint(root / "old") != fingerprint(root / "new")
    return root / "old", fingerprint(root / "old"), root / "new", fingerprint(root / "new"), events.count


@pytest.fixture(scope="module")
def file_versions(versions, tmp_path_factory):
    """(folder of the old index file, its fingerprint, folder of the new one, its fingerprint): the
    stores of `versions` saved as one file each (`index.frt`, with float16 copies and fields)."""
    root = tmp_path_factory.mktemp("file-versions")
    (root / "old").mkdir()
    fastret.Index.load(versions[0]).save(root / "old" / "index.frt")
    shutil.copytree(root / "old", root / "new")
    index = fastret.Index.load(root / "new" / "index.frt")
    change(index, np.random.default_rng(6))
    index.save(root / "new" / "index.frt")
    return (root / "old", fingerprint(root / "old" / "index.frt"), root / "new",
            fingerprint(root / "new" / "index.frt"))


def test_a_store_save_failing_at_any_step_leaves_the_old_or_the_new_store(versions, tmp_path, monkeypatch):
    old, old_print, new, new_print, steps = versions
    assert steps >= 15
    outcomes = []
    for step in range(1, steps + 1):
        target = tmp_path / f"at-{step}"
        shutil.copytree(old, target)
        index = fastret.Index.load(target)
        change(index, np.random.default_rng(6))
        with monkeypatch.context() as patch:
            Events(patch, fail_at=step)
            try:
                index.save(target)
                outcomes.append("done")
            except OSError as error:
                assert "injected" in str(error)
                outcomes.append("failed")
        got = fingerprint(target)
        assert got in (old_print, new_print), f"failed at step {step} of {steps}: neither version"
        assert cli.main(["clean", str(target)]) == 0
        assert fingerprint(target) == got
        assert visible_files(target) == visible_files(old if got == old_print else new), step
    assert "failed" in outcomes


def test_a_file_save_failing_at_any_step_leaves_the_old_or_the_new_file(tmp_path, monkeypatch, rng):
    path, spare = tmp_path / "index.frt", tmp_path / "spare" / "index.frt"
    spare.parent.mkdir()
    index = fastret.Index(DIM, store_float16=True)
    index.add(unit_rows(rng, 30, DIM), documents=[f"d{i}" for i in range(30)], fields=fields_of(range(30)))
    index.save(spare)
    added = unit_rows(rng, 3, DIM)

    def newer():
        loaded = fastret.Index.load(path)
        loaded.delete([4, 5])
        loaded.add(added, documents=["a", "b", "c"], fields=fields_of(range(50, 53)))
        return loaded

    fastret.Index.load(spare).save(path)
    old_print = fingerprint(path)
    with monkeypatch.context() as patch:
        events = Events(patch)
        newer().save(tmp_path / "probe.frt")
    new_print = fingerprint(tmp_path / "probe.frt")
    assert events.count >= 6 and new_print != old_print
    for step in range(1, events.count + 1):
        fastret.Index.load(spare).save(path)  # the old version again
        changed = newer()
        with monkeypatch.context() as patch:
            Events(patch, fail_at=step)
            try:
                changed.save(path)
            except OSError as error:
                assert "injected" in str(error)
        got = fingerprint(path)
        assert got in (old_print, new_print), f"failed at step {step}: neither version"
        assert cli.main(["clean", str(path)]) == 0
        assert fingerprint(path) == got
        assert len(list(tmp_path.glob("index.frt.*"))) == 3  # its bits, fields and field index, no other version's


KILLED_SAVE = textwrap.dedent("""
    import os, shutil, signal, sys
    from pathlib import Path
    import numpy as np
    sys.path.insert(0, sys.argv[3])
    import pytest
    import test_crash_safety as t
    from fuzz_store import change
    import fastret
    target, step = Path(sys.argv[1]), int(sys.argv[2])
    index = fastret.Index.load(target)
    change(index, np.random.default_rng(6))
    with pytest.MonkeyPatch.context() as patch:
        t.Events(patch, fail_at=step, kill=True)
        index.save(target)
""")


@pytest.mark.parametrize("kind", ["store", "file"])
def test_a_save_killed_at_every_rename_leaves_the_old_or_the_new_version(versions, file_versions, tmp_path, kind):
    old, old_print, new, new_print = versions[:4] if kind == "store" else file_versions
    name = "" if kind == "store" else "index.frt"  # the store is the folder; else the file in it
    renames = []  # the steps that are renames (the commit points of each file)
    with pytest.MonkeyPatch.context() as patch:
        target = tmp_path / "probe"
        shutil.copytree(old, target)
        index = fastret.Index.load(target / name)
        change(index, np.random.default_rng(6))
        real_replace = os.replace
        events = Events(patch)

        def noted(*args):
            renames.append(events.count)
            return real_replace(*args)
        patch.setattr(os, "replace", events._wrapped(noted))
        index.save(target / name)
    # a store: a new shard, its bits and fields, a deletion file, the manifest; a file: bits, fields, the file
    assert len(renames) >= (5 if kind == "store" else 3)
    tests = os.path.dirname(__file__)
    for step in renames + [events.count]:  # every rename, and the last step (after the commit)
        target = tmp_path / f"killed-{step}"
        shutil.copytree(old, target)
        killed = subprocess.run([sys.executable, "-c", KILLED_SAVE, str(target / name), str(step), tests],
                                capture_output=True, text=True, timeout=120)
        assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
        got = fingerprint(target / name)
        assert got in (old_print, new_print), f"killed at step {step}: neither version"
        assert cli.main(["clean", str(target / name)]) == 0
        assert fingerprint(target / name) == got
        assert visible_files(target) == visible_files(old if got == old_print else new)
        assert not list(target.glob(".*.tmp"))


CRASHER = textwrap.dedent("""
    import sys
    from pathlib import Path
    import fastret
    target, kind, first, second = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4])
    print("ready", flush=True)
    for turn in range(100_000):
        if kind == "store" and turn % 2:  # deletions in the shards mapped from the target
            index = fastret.Index.load(target)
            index.delete([1, 2, 41, 60])
        else:  # new shards (or a new file) that replace the target's
            index = fastret.Index.load(second if kind == "file" and turn % 2 else first)
        index.save(target)
""")


@pytest.mark.parametrize("kind", ["store", "file"])
def test_saves_killed_at_random_moments_leave_one_version_whole(tmp_path, kind):
    rng = np.random.default_rng(99)
    base_store(tmp_path / "a", rng)
    versions = tmp_path / "versions"
    versions.mkdir()
    if kind == "store":
        first, second = tmp_path / "a", tmp_path / "b"
        shutil.copytree(first, second)
        index = fastret.Index.load(second)
        index.delete([1, 2, 41, 60])
        index.save(second)
    else:
        first, second = versions / "a.frt", versions / "b.frt"
        fastret.Index.load(tmp_path / "a").save(first)
        index = fastret.Index.load(tmp_path / "a")
        change(index, rng)
        index.save(second)
    expected = {fingerprint(first): "first", fingerprint(second): "second"}
    assert len(expected) == 2
    seen = []
    for round_ in range(3):
        target = tmp_path / f"target-{round_}" / ("" if kind == "store" else "index.frt")
        if kind == "store":
            shutil.copytree(first, target)
        else:
            target.parent.mkdir()
            fastret.Index.load(first).save(target)
        crasher = subprocess.Popen([sys.executable, "-c", CRASHER, str(target), kind, str(first), str(second)],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            assert crasher.stdout.readline().strip() == b"ready", crasher.stderr.read().decode()[-2000:]
            time.sleep(0.3 + rng.uniform(0, 1.0))
        finally:
            crasher.kill()
            crasher.wait()
        got = fingerprint(target)
        assert got in expected, f"killed at a random moment (round {round_}): neither version"
        seen.append(expected[got])
        assert cli.main(["clean", str(target)]) == 0
        assert fingerprint(target) == got
        assert not list(target.parent.glob("**/.*.tmp"))
    assert len(seen) == 3


# ---------------------------------------------------------------------------------------- fuzz


def test_damaged_sidecars_and_manifests_are_named_errors_or_change_nothing(tmp_path):
    """A short run of benchmarks/fuzz_store.py (the long one runs 20,000 cases)."""
    counts = fuzz(320, seed=2026, workdir=tmp_path)
    assert sum(counts.values()) == 320
    for kind in (".bits", ".deleted", ".fields.arrow", ".fields.index", "manifest.json"):  # each kind of damage is caught
        assert sum(n for outcome, n in counts.items() if outcome.startswith(kind) and "unchanged" not in outcome) > 20


@pytest.mark.parametrize("edit, field", [
    (lambda m: m.update(shards=None), '"shards" must be a list'),
    (lambda m: m["shards"].append(dict(m["shards"][0])), r'"shards"\[\d\]\["name"\] must be a shard not listed before'),
    (lambda m: m["shards"][0].update(name="../x"), r'"shards"\[0\]\["name"\] must be a shard name'),
    (lambda m: m["shards"][0].update(count="5"), r'"shards"\[0\]\["count"\] must be an int'),
    (lambda m: m["shards"][1].update(deleted="/etc/passwd"), r'"shards"\[1\]\["deleted"\] must be a deletion file'),
    (lambda m: m.update(generation=-1), '"generation" must be an int >= 0'),
    (lambda m: m.update(count=m["count"] + 1), '"count" must be the sum of the shards'),
    (lambda m: m.update(dim=True), '"dim" must be an int'),
    (lambda m: m.update(lexical="../../home"), '"lexical" must be a folder name'),
    (lambda m: m.update(complete="yes"), '"complete" must be true or false'),
])
def test_a_manifest_of_the_wrong_shape_names_the_field(versions, tmp_path, edit, field):
    target = tmp_path / "s"
    shutil.copytree(versions[2], target)
    manifest = json.loads((target / "manifest.json").read_text())
    edit(manifest)
    (target / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(StoreError, match=r"manifest.json: " + field):
        fastret.Index.load(target)


def test_a_manifest_that_is_not_utf8_names_the_file(versions, tmp_path):
    target = tmp_path / "s"
    shutil.copytree(versions[2], target)
    (target / "manifest.json").write_bytes(b'{"format": "\xff"}')
    with pytest.raises(StoreError, match=r"manifest.json: not UTF-8"):
        fastret.Index.load(target)


# ---------------------------------------------------------------------------------------- writers


WRITER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    import numpy as np
    import fastret
    from fastret.storage.writer_lock import ConcurrentWriteError, WriterBusyError, writer_lock
    target, first, rounds, start, mode = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), sys.argv[5]
    rng = np.random.default_rng(first)
    for round_ in range(rounds):
        while time.time() < start + round_ * 0.6:
            time.sleep(0.001)
        ids = np.arange(first + 10 * round_, first + 10 * round_ + 10)
        try:
            if mode == "locked":  # waits for the other writer around load, change and save
                with writer_lock(target):
                    index = fastret.Index.load(target)
                    index.add(rng.standard_normal((10, 8)).astype(np.float32), ids=ids)
                    index.delete([int(first // 1000)])
                    index.save(target)
            else:
                index = fastret.Index.load(target)
                index.add(rng.standard_normal((10, 8)).astype(np.float32), ids=ids)
                index.delete([int(first // 1000)])
                time.sleep(0.05)  # both have loaded before either saves
                index.save(target, lock_timeout=5)
            print("saved", *ids.tolist(), flush=True)
        except (ConcurrentWriteError, WriterBusyError) as error:
            print("refused", type(error).__name__, flush=True)
""")


def race(target, mode, rounds=3):
    start = time.time() + 4  # both processes have imported fastret by then
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, str(target), str(first), str(rounds), str(start), mode],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for first in (1000, 2000)]
    outputs = [w.communicate(timeout=120) for w in writers]
    for writer, (_, err) in zip(writers, outputs):
        assert writer.returncode == 0, err[-2000:]
    lines = [line.split() for out, _ in outputs for line in out.splitlines()]
    saved = [int(i) for line in lines if line[0] == "saved" for i in line[1:]]
    refused = [line for line in lines if line[0] == "refused"]
    return saved, refused


@pytest.mark.parametrize("kind", ["store", "file"])
def test_two_writers_never_lose_an_update_silently(tmp_path, rng, kind):
    target = tmp_path / ("s" if kind == "store" else "index.frt")
    index = fastret.Index(8)
    index.add(unit_rows(rng, 5, 8), ids=[0, 1, 2, 3, 4])
    if kind == "store":
        target.mkdir()
    index.save(target)
    saved, refused = race(target, "optimistic")
    assert saved and refused  # they raced: one of each pair was refused, naming why
    assert all(r[1] == "ConcurrentWriteError" for r in refused)
    final = fastret.Index.load(target)
    assert final.contains(saved).all()  # every save that reported success is there
    deleted = {i // 1000 for i in saved}  # writer 1000 deletes id 1, writer 2000 id 2
    assert len(final) == 5 + len(saved) - len(deleted) and not final.contains(sorted(deleted)).any()


def test_writers_that_hold_the_lock_around_load_change_and_save_both_land(tmp_path, rng):
    target = tmp_path / "s"
    target.mkdir()
    index = fastret.Index(8)
    index.add(unit_rows(rng, 5, 8), ids=[0, 1, 2, 3, 4])
    index.save(target)
    saved, refused = race(target, "locked", rounds=2)
    assert not refused and len(saved) == 40
    assert fastret.Index.load(target).contains(saved).all()


HOLDER = textwrap.dedent("""
    import sys, time
    from fastret.storage.writer_lock import writer_lock
    with writer_lock(sys.argv[1]):
        print("holding", flush=True)
        time.sleep(60)
""")


def test_a_busy_store_names_the_writer_and_readers_never_wait(tmp_path, rng):
    make_store(tmp_path / "s", rng)
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path / "s")], stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline().strip() == b"holding"
        started = time.monotonic()
        index = fastret.Index.load(tmp_path / "s")  # a reader takes no lock
        assert time.monotonic() - started < 5
        with pytest.raises(WriterBusyError, match=rf"is being written by PID {holder.pid} on .*waited 0.2 s"):
            index.save(tmp_path / "s", lock_timeout=0.2)
        assert cli.main(["clean", str(tmp_path / "s")]) == 2  # clean is a writer too
    finally:
        holder.kill()
        holder.wait()
    index.save(tmp_path / "s", lock_timeout=5)  # a killed holder's lock is free at once
    assert lock_path(tmp_path / "s").read_bytes() == b""


def test_the_lock_is_reentrant_within_a_thread_and_excludes_other_threads(tmp_path):
    import threading

    target = tmp_path / "x.frt"
    with writer_lock(target):
        with writer_lock(target, timeout=0):  # the same thread again: no deadlock
            pass
        failures = []
        other = threading.Thread(target=lambda: failures.append(pytest.raises(WriterBusyError, _try, target)))
        other.start()
        other.join()
        assert failures
    with pytest.raises(ValueError, match="timeout must be a number of seconds >= 0"):
        with writer_lock(target, timeout=-1):
            pass


def _try(target):
    with writer_lock(target, timeout=0.1):
        pass


def test_saving_over_a_store_changed_since_load_is_refused(tmp_path, rng):
    make_store(tmp_path / "s", rng)
    first, second = fastret.Index.load(tmp_path / "s"), fastret.Index.load(tmp_path / "s")
    first.delete([0])
    first.save(tmp_path / "s")
    second.delete([1])
    with pytest.raises(ConcurrentWriteError, match="changed by another writer since this index was loaded"):
        second.save(tmp_path / "s")
    first.delete([2])
    first.save(tmp_path / "s")  # the last writer's own index may save again
    assert fastret.Index.load(tmp_path / "s").contains([0, 1, 2]).tolist() == [False, True, False]


# ---------------------------------------------------------------------------------------- leftovers


def test_clean_removes_what_killed_writers_left(versions, tmp_path):
    target = tmp_path / "s"
    shutil.copytree(versions[2], target)
    before = visible_files(target)
    orphans = [target / "lexical-0123abcd", target / "shard-00099.frt", target / "shard-00000.frt.g77.deleted",
               target / "shard-00001.frt.deadbeef.bits", target / "shard-00098.frt.0badf00d.fields.arrow"]
    orphans[0].mkdir()
    (orphans[0] / "vocab.json").write_text("{}")
    for orphan in orphans[1:]:
        orphan.write_bytes(b"x")
    assert cli.main(["clean", str(target), "--dry-run"]) == 0
    assert all(p.exists() for p in orphans)
    assert cli.main(["clean", str(target)]) == 0
    assert visible_files(target) == before
    assert fingerprint(target) == versions[3]


def test_clean_beside_an_index_file_removes_other_versions_sidecars(tmp_path, rng):
    index = fastret.Index(DIM)
    index.add(unit_rows(rng, 5, DIM), fields=fields_of(range(5)))
    index.save(tmp_path / "a.frt")
    keep = visible_files(tmp_path)
    for orphan in ("a.frt.00c0ffee.bits", "a.frt.00c0ffee.fields.arrow", "gone.frt.12345678.bits"):
        (tmp_path / orphan).write_bytes(b"x")
    assert cli.main(["clean", str(tmp_path / "a.frt")]) == 0
    assert visible_files(tmp_path) == keep


def test_saved_files_honour_the_umask(tmp_path, rng):
    index = fastret.Index(DIM)
    index.add(unit_rows(rng, 5, DIM), fields=fields_of(range(5)))
    previous = os.umask(0o022)
    try:
        index.save(tmp_path / "a.frt")
        (tmp_path / "s").mkdir()
        index.save(tmp_path / "s")
        os.umask(0o077)
        index.save(tmp_path / "b.frt")
    finally:
        os.umask(previous)
    modes = {p.name: p.stat().st_mode & 0o777 for p in [*tmp_path.iterdir(), *(tmp_path / "s").iterdir()]
             if p.is_file() and not p.name.startswith(".")}
    assert {mode for name, mode in modes.items() if not name.startswith("b.frt")} == {0o644}
    assert {mode for name, mode in modes.items() if name.startswith("b.frt")} == {0o600}


def test_a_failed_save_names_the_file(tmp_path, rng, monkeypatch):
    index = fastret.Index(DIM)
    index.add(unit_rows(rng, 5, DIM))
    real_fsync = os.fsync

    def full(fd):
        if os.path.basename(os.readlink(f"/proc/self/fd/{fd}")).startswith(".a.frt."):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_fsync(fd)

    if not os.path.isdir("/proc/self/fd"):
        pytest.skip("needs /proc/self/fd to tell which file is synced")
    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError, match=r"No space left on device: '.*a.frt"):
        index.save(tmp_path / "a.frt")
    monkeypatch.undo()
    assert visible_files(tmp_path) == []


def test_a_version_2_store_with_old_sidecar_names_loads_and_saves_as_version_3(tmp_path, rng):
    base_store(tmp_path / "s", rng)
    expected = fingerprint(tmp_path / "s")
    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
    for entry in manifest["shards"]:  # as fastret wrote it before sidecars were named by checksum
        shard = tmp_path / "s" / f"{entry['name']}.frt"
        for sidecar in tmp_path.glob(f"s/{shard.name}.*"):
            if sidecar.name.endswith(".fields.index"):  # field indexes came later
                sidecar.unlink()
                continue
            kind = "deleted" if sidecar.name.endswith(".deleted") else sidecar.name.split(".", 3)[-1]
            sidecar.rename(shard.with_name(f"{shard.name}.{kind}"))
        entry.pop("deleted", None)
    del manifest["generation"]
    (tmp_path / "s" / "manifest.json").write_text(json.dumps({**manifest, "version": 2}))
    assert sorted(p.name for p in (tmp_path / "s").glob("shard-00000.frt.*")) == [
        "shard-00000.frt.bits", "shard-00000.frt.deleted", "shard-00000.frt.fields.arrow"]
    assert fingerprint(tmp_path / "s") == expected
    index = fastret.Index.load(tmp_path / "s")
    index.delete([0])
    index.save(tmp_path / "s")
    saved = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert (saved["version"], saved["generation"], saved["shards"][0]["deleted"]) == (3, 1, "shard-00000.frt.g1.deleted")
    assert not list((tmp_path / "s").glob("*.frt.deleted"))  # replaced by the named one; the old-named
    assert len(list((tmp_path / "s").glob("*.frt.bits"))) == 3  # bits and fields are still these shards' own
    index = fastret.Index.load(tmp_path / "s")
    assert len(index) == json.loads(expected)[0] - 1 and not index.contains([0]).any()
    assert index.fields([5]) == fields_of([5])
