"""localai.outfile: the early check of an output path, and files written complete or not at all."""

import io
import os
import stat
import sys
import threading
from pathlib import Path

import pytest
from fake_windows import pipe_whose_reader_left

from localai.errors import LocalaiError
from localai.outfile import OutputFile, check_output_path, write_text


@pytest.mark.parametrize("flag, example", [("--out", "speech.wav"), ("--output", "report.json")])
def test_an_unusable_output_path_is_one_error_naming_the_flag(tmp_path, flag, example):
    with pytest.raises(LocalaiError) as folder:
        check_output_path(tmp_path, flag, example)
    assert folder.value.message == f"cannot write {tmp_path}: it is a folder"
    assert folder.value.hint == f"name a file, e.g. {flag} {tmp_path / example}"
    missing = tmp_path / "missing" / example
    with pytest.raises(LocalaiError) as absent:
        check_output_path(missing, flag, example)
    assert absent.value.message == f"cannot write {missing}: the folder {missing.parent} does not exist"
    assert flag in absent.value.hint
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(LocalaiError, match=f"cannot write {blocker / example}: {blocker} is not a folder"):
        check_output_path(blocker / example, flag, example)


def test_a_folder_or_device_that_cannot_be_written_is_refused(tmp_path, monkeypatch):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    monkeypatch.setattr(os, "access", lambda path, mode: False)  # the tests may run as root, who may write anywhere
    with pytest.raises(LocalaiError, match=f"the folder {tmp_path} is not writable") as folder:
        check_output_path(tmp_path / "r.json", "--output", "report.json")
    assert folder.value.hint == "choose another --output"
    with pytest.raises(LocalaiError, match="cannot write .*pipe: permission denied"):
        check_output_path(fifo, "--out", "speech.wav")


def test_a_link_stands_for_its_target_and_dash_for_stdout(tmp_path):
    target, link = tmp_path / "reports" / "latest-1.json", tmp_path / "latest.json"
    link.symlink_to(target)  # dangling: its folder does not exist yet
    with pytest.raises(LocalaiError, match=f"the folder {target.parent} does not exist"):
        check_output_path(link, "--output", "report.json")
    target.parent.mkdir()
    assert check_output_path(link, "--output", "report.json") == target
    assert str(check_output_path("-", "--out", "speech.wav")) == "-"


def test_write_text_leaves_only_the_finished_file(tmp_path):
    target = tmp_path / "r.json"
    write_text(target, "{}\n", "--output", "report.json")
    assert target.read_text() == "{}\n" and [p.name for p in tmp_path.iterdir()] == ["r.json"]
    (tmp_path / "adir").mkdir()
    with pytest.raises(LocalaiError, match="is a folder"):
        write_text(tmp_path / "adir", "{}", "--output", "report.json")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adir", "r.json"]  # no temporary file left


@pytest.mark.parametrize("failure", [OSError(28, "No space left on device"), KeyboardInterrupt()])
def test_a_failed_write_keeps_the_old_file_and_no_temporary(tmp_path, failure):
    target = tmp_path / "r.json"
    target.write_text("old")
    with pytest.raises(type(failure)):
        with OutputFile(target, "--output", "report.json") as out:
            out.write(b"half of it")
            raise failure
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["r.json"]


def test_write_text_writes_into_a_pipe_and_through_a_link(tmp_path):
    """-o /dev/stdout or a named pipe is written in place: renaming over it replaced the pipe (or, as
    root, /dev/null itself) with a plain file. A link keeps pointing at the file it names."""
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    received = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_text()), daemon=True)
    reader.start()
    write_text(fifo, "{}\n", "--output", "report.json")
    reader.join(timeout=10)
    assert received == ["{}\n"] and fifo.is_fifo()
    target, link = tmp_path / "reports" / "latest-1.json", tmp_path / "latest.json"
    target.parent.mkdir()
    target.write_text("old")
    link.symlink_to(target)
    write_text(link, "new\n", "--output", "report.json")
    assert link.is_symlink() and target.read_text() == "new\n"
    assert sorted(p.name for p in target.parent.iterdir()) == ["latest-1.json"]
    write_text(os.devnull, "nothing\n", "--output", "report.json")  # a device is never renamed over
    assert stat.S_ISCHR(os.stat(os.devnull).st_mode) and not list(Path("/dev").glob(".null.*"))


@pytest.mark.parametrize("buffered", [False, True], ids=["write", "commit"])
@pytest.mark.parametrize("platform, raised", [("win32", BrokenPipeError), ("linux", LocalaiError)])
def test_stdout_whose_reader_left_on_windows_stops_as_a_broken_pipe(monkeypatch, platform, raised, buffered):
    """`speak --out - | more`, then q: Windows fails the write (or the flush at commit) with EINVAL,
    which is the command's quiet stop there; elsewhere EINVAL is a failure like any other."""
    pipe = pipe_whose_reader_left()
    monkeypatch.setattr(sys, "platform", platform)
    monkeypatch.setattr(sys, "stdout", io.TextIOWrapper(io.BufferedWriter(pipe) if buffered else pipe))
    with pytest.raises(raised):
        with OutputFile("-", "--out", "speech.wav") as out:
            out.write(b"RIFF")
    pipe.close()


def test_a_regular_file_that_fails_with_einval_on_windows_is_a_failure(tmp_path, monkeypatch):
    """Only a pipe has a reader to leave: a file's EINVAL is reported, and no temporary is left."""
    monkeypatch.setattr(sys, "platform", "win32")
    out = OutputFile(tmp_path / "speech.wav", "--out", "speech.wav")
    out.stream.close()
    out.stream = pipe_whose_reader_left()  # a file write that fails as a Windows pipe's does
    with pytest.raises(LocalaiError, match="cannot write .*speech.wav: Invalid argument"):
        with out:
            out.write(b"RIFF")
    assert list(tmp_path.iterdir()) == []


def test_stdout_by_another_name_is_known_by_its_file_id_and_never_by_an_absent_one(tmp_path, monkeypatch):
    """/dev/stdout or the file stdout goes to is stdout; on Windows a pipe and the NUL device both have
    file id 0, which says nothing about being one file."""
    from localai.outfile import is_stdout

    redirected, other = tmp_path / "out.txt", tmp_path / "other.txt"
    other.write_text("")
    with open(redirected, "w") as stream:
        monkeypatch.setattr(sys, "stdout", stream)
        assert is_stdout("-") and is_stdout(redirected) and not is_stdout(other)
        assert not is_stdout(tmp_path / "absent.txt")
        no_id = os.stat_result((stat.S_IFIFO, 0, 0, 1, 0, 0, 0, 0, 0, 0))  # mode, ino, dev, ...
        monkeypatch.setattr(os, "fstat", lambda fd: no_id)
        monkeypatch.setattr(os, "stat", lambda path, *args, **kwargs: no_id)
        assert not is_stdout("NUL")
