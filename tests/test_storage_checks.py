"""An unwritable teacher cache is one line before anything trains; a full disk says so, and where
(issue 15, item 9)."""
from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from kdbench.cli import cli
from kdbench.core.diskspace import DiskFullError, explain_write_error
from kdbench.core.host import reset_host

SUITE = """
name: cachecheck
version: 1
methods: [kd]
pairs: [tiny]
datasets: ["glyphs(num_train=32,num_test=16)"]
seeds: [0]
hardware: []
recipe: {epochs: 1, batch_size: 16, eval_batch_size: 16}
"""


def run(*args: str):
    reset_host()
    return CliRunner().invoke(cli, ["run", *args])


def test_an_unwritable_teacher_cache_is_one_line_before_anything_runs(kdbench_env, monkeypatch):
    suite = kdbench_env / "s.yaml"
    suite.write_text(SUITE)
    blocker = kdbench_env / "not-a-folder"
    blocker.write_text("a file where the cache folder should be")
    monkeypatch.setenv("KDBENCH_CACHE_DIR", str(blocker / "cache"))
    result = run(str(suite))
    assert result.exit_code == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"Error: teacher cache {blocker / 'cache' / 'teachers'} is not writable (")
    assert "1 teacher(s) must be trained into it; set KDBENCH_CACHE_DIR to a writable directory" in line
    assert "Traceback" not in result.output and not (kdbench_env / "mlflow.db").exists()  # nothing recorded


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_cache_is_refused_unless_it_holds_every_teacher(kdbench_env, monkeypatch):
    suite = kdbench_env / "s.yaml"
    suite.write_text(SUITE)
    teachers = kdbench_env / "cache" / "teachers"
    teachers.mkdir(parents=True)
    teachers.chmod(0o555)
    try:
        result = run(str(suite))
        assert result.exit_code == 2 and "is not writable (PermissionError" in result.stderr
        teachers.chmod(0o755)
        assert run(str(suite)).exit_code == 0  # trains the teacher into the cache
        teachers.chmod(0o555)
        assert run(str(suite), "--force").exit_code == 0  # read-only, but it holds the teacher
    finally:
        teachers.chmod(0o755)


def test_a_write_error_from_a_full_disk_names_the_file(tmp_path):
    with pytest.raises(OSError) as caught:
        with open("/dev/full", "wb") as fh:  # the kernel's always-full device: a real ENOSPC
            fh.write(b"x" * 65536)
            fh.flush()
    assert caught.value.errno == errno.ENOSPC
    explained = explain_write_error(caught.value, tmp_path / "teacher.pt")
    assert isinstance(explained, DiskFullError)
    assert str(explained).startswith(f"disk full: could not write {tmp_path / 'teacher.pt'} (")
    assert explain_write_error(ValueError("something else"), tmp_path / "x") is None


@pytest.fixture
def tiny_filesystem(tmp_path):
    """A 256 KiB tmpfs (root only): a disk that really fills up."""
    mount = tmp_path / "small"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)],
                                           capture_output=True).returncode != 0:
        pytest.skip("needs to mount a small tmpfs (root)")
    yield mount
    subprocess.run(["umount", str(mount)], check=False)


def test_torch_save_on_a_full_disk_is_said_to_be_a_full_disk(tiny_filesystem):
    import torch

    from kdbench.running.teachers import _atomic_write

    target = tiny_filesystem / "teacher.pt"
    with pytest.raises(DiskFullError, match=rf"disk full: could not write {target} \(0\.\d MiB free on the "
                                            rf"filesystem of {tiny_filesystem}\)"):
        _atomic_write(target, lambda tmp: torch.save({"w": torch.zeros(1 << 17)}, tmp))
    assert list(Path(tiny_filesystem).iterdir()) == []  # the partial file is gone
