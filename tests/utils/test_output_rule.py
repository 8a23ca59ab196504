"""The output rule (utils/outputs.py, utils/atomic.py): an output never replaces an input, a rerun keeps the user's
files, one writer per output, SIGTERM cleans up like Ctrl-C, stale temporaries go, environment errors are one line."""

from __future__ import annotations

import errno
import os
import stat
import subprocess
import sys
import textwrap

import pytest

from spafoundation.cli import EXIT_BAD_INPUT, EXIT_ENVIRONMENT, EXIT_TERMINATED, main
from spafoundation.utils import atomic
from spafoundation.utils.atomic import OUTPUT_MARKER, atomic_dir, atomic_path
from spafoundation.utils.outputs import OutputLock
from tests.io.layouts import write_visium


def _one_line(capsys, *expected):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("spafoundation: error:"), err
    for e in expected:
        assert e in err[0], err
    return err[0]


def _tree(root):
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


def test_output_that_is_the_input_file_is_refused(tmp_path, capsys):
    data = tmp_path / "data.h5ad"
    data.write_bytes(b"the user's raw counts")
    assert main(["predict-expression", str(tmp_path / "model"), str(data), "--out", str(data)]) == EXIT_BAD_INPUT
    _one_line(capsys, "data.h5ad", "--out", "never replaces an input")
    assert data.read_bytes() == b"the user's raw counts"


def test_output_inside_a_dataset_folder_is_refused(c2_small, tmp_path, capsys):
    sample = write_visium(tmp_path / "sample", c2_small)
    before = _tree(sample)
    # the figure beside pred.h5ad made the folder unreadable ("2 candidate full-resolution images")
    assert main(["predict-expression", str(tmp_path / "model"), str(sample), "--out",
                 str(sample / "pred.h5ad")]) == EXIT_BAD_INPUT
    _one_line(capsys, "pred.h5ad", "inside the dataset folder")
    assert main(["cluster", str(sample / "outs"), "--out", str(tmp_path)]) == EXIT_BAD_INPUT
    _one_line(capsys, "holds the input")
    assert _tree(sample) == before


def test_rerun_keeps_the_users_files_and_drops_its_own_old_ones(tmp_path):
    out = tmp_path / "c1"
    with atomic_dir(out) as tmp:
        (tmp / "spots.h5ad").write_text("first")
        (tmp / "grid.h5ad").write_text("first")
    (out / "my_notes.txt").write_text("notes")
    (out / "mine").mkdir()
    (out / "mine" / "a.txt").write_text("a")
    inode = (out / "my_notes.txt").stat().st_ino
    with atomic_dir(out) as tmp:
        (tmp / "spots.h5ad").write_text("second")
    assert (out / "my_notes.txt").stat().st_ino == inode  # the user's files are never moved, only ours
    assert sorted(p.name for p in out.iterdir()) == [OUTPUT_MARKER, "mine", "my_notes.txt", "spots.h5ad"]
    assert (out / "spots.h5ad").read_text() == "second" and (out / "my_notes.txt").read_text() == "notes"
    assert (out / "mine" / "a.txt").read_text() == "a"
    # a user's file where the new output would go: refused, nothing replaced
    (out / "extra.csv").write_text("user's")
    with pytest.raises(Exception, match="did not write"), atomic_dir(out) as tmp:
        (tmp / "extra.csv").write_text("ours")
    assert (out / "extra.csv").read_text() == "user's" and (out / "my_notes.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c1"]


def test_rerun_of_an_unlisted_marker_keeps_what_it_does_not_rewrite(tmp_path):
    out = tmp_path / "old"
    out.mkdir()
    (out / OUTPUT_MARKER).write_text("written by spafoundation\n")  # a marker of an earlier version
    (out / "spots.h5ad").write_text("old")
    (out / "my_notes.txt").write_text("notes")
    with atomic_dir(out) as tmp:
        (tmp / "spots.h5ad").write_text("new")
    assert (out / "spots.h5ad").read_text() == "new" and (out / "my_notes.txt").read_text() == "notes"


def test_a_second_writer_of_one_output_is_refused(tmp_path, capsys):
    out = tmp_path / "out"
    with OutputLock(out):
        assert main(["cluster", str(tmp_path / "nowhere"), "--out", str(out)]) == EXIT_ENVIRONMENT
        _one_line(capsys, "out", "another spafoundation command", str(os.getpid()))
        with pytest.raises(Exception, match="another spafoundation command"), OutputLock(out):
            pass
    assert not out.exists() and not list(tmp_path.iterdir())  # the lock file goes with the lock
    with OutputLock(out):  # and can be taken again
        pass


def test_sigterm_is_handled_like_ctrl_c(tmp_path):
    """A command killed with SIGTERM while writing an output folder says so in one line, exits 143 and leaves no
    temporary folder."""
    out = tmp_path / "out"
    script = textwrap.dedent(f"""
        import sys, time
        from spafoundation import cli
        from spafoundation.utils.atomic import atomic_dir

        def slow(args):
            with atomic_dir({str(out)!r}) as tmp:
                (tmp / "part.txt").write_text("half")
                print("writing", flush=True)
                time.sleep(60)

        parser = cli.build_parser
        def build():
            p = parser()
            p._subparsers._group_actions[0].choices["info"].set_defaults(func=slow)
            return p
        cli.build_parser = build
        sys.exit(cli.main(["info", "x"]))
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert proc.stdout.readline().strip() == "writing"
    proc.terminate()
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == EXIT_TERMINATED
    assert err.strip().splitlines() == ["spafoundation: terminated"]
    assert not list(tmp_path.iterdir())


def test_stale_temporaries_are_removed_by_the_next_write(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid, host = int(dead.stdout), atomic._HOST
    stale_dir = tmp_path / f".superres.{pid}h{host}-abcd.tmp"
    stale_dir.mkdir()
    (stale_dir / "big.h5ad").write_text("x")
    stale_file = tmp_path / f".pred.h5ad.{pid}h{host}-efgh.tmp"
    stale_file.write_text("x")
    live = tmp_path / f".superres.{os.getpid()}h{host}-live.tmp"  # a writer still running (this one)
    live.mkdir()
    elsewhere = tmp_path / f".superres.{pid}h000000-abcd.tmp"  # another machine's: its process cannot be asked
    elsewhere.mkdir()
    with atomic_dir(tmp_path / "superres") as tmp:
        (tmp / "a").write_text("a")
    with atomic_path(tmp_path / "pred.h5ad") as tmp:
        tmp.write_text("p")
    assert not stale_dir.exists() and not stale_file.exists() and live.exists() and elsewhere.exists()
    from spafoundation.utils.atomic import remove_stale_temporaries_under

    deep = tmp_path / "run" / "cache" / "abc"
    deep.mkdir(parents=True)
    (deep / f".chunk_0.npz.{pid}h{host}-zz.tmp").write_text("x")
    (deep / f".chunk_1.npz.{os.getpid()}h{host}-zz.tmp").write_text("x")
    assert [p.name for p in remove_stale_temporaries_under(tmp_path / "run")] == [f".chunk_0.npz.{pid}h{host}-zz.tmp"]
    old = tmp_path / "run" / ".superres.k3j_9xq2.tmp"  # an earlier version's name: no process to ask about
    old.mkdir()
    assert remove_stale_temporaries_under(tmp_path / "run") == [] and old.exists()
    assert remove_stale_temporaries_under(tmp_path / "run", unnamed=True) == [old] and not old.exists()
    assert (deep / f".chunk_1.npz.{os.getpid()}h{host}-zz.tmp").exists()


def test_outputs_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        with atomic_path(tmp_path / "f.txt") as tmp:
            tmp.write_text("x")
        with atomic_dir(tmp_path / "d") as tmp:
            (tmp / "a").write_text("a")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "f.txt").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "d").stat().st_mode) == 0o755


def test_read_only_out_is_one_line_before_the_work(tmp_path, capsys, monkeypatch):
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if str(p) == str(tmp_path) else real_access(p, mode))
    assert main(["cluster", str(tmp_path / "nowhere"), "--out", str(tmp_path / "out")]) == EXIT_ENVIRONMENT
    _one_line(capsys, str(tmp_path), "read-only or permission denied")


def test_disk_full_is_one_line(tmp_path, capsys, monkeypatch):
    import spafoundation.commands.info as info

    def full(args):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "out.h5ad"))

    monkeypatch.setattr(info, "run", full)
    assert main(["info", str(tmp_path)]) == EXIT_ENVIRONMENT
    _one_line(capsys, "out.h5ad", "No space left on device")
