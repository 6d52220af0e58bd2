"""Input text files: one wording for a path that cannot be read, whichever flag named it."""

import pytest

from localai.errors import LocalaiError
from localai.infile import check_input_file, read_text_file


def test_absent_folder_and_unreadable_paths_are_named_with_the_flag(tmp_path):
    with pytest.raises(LocalaiError) as absent:
        check_input_file(tmp_path / "absent.txt", "--text")
    assert absent.value.one_line() == f"cannot read {tmp_path / 'absent.txt'}: no such file. Check the path given to --text"
    with pytest.raises(LocalaiError) as folder:
        read_text_file(tmp_path, "-f")
    assert folder.value.one_line() == f"cannot read {tmp_path}: it is a folder. Give -f a file"


def test_text_keeps_its_line_ends_and_home_is_expanded(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "crlf.txt").write_bytes(b"one\r\ntwo\n")
    assert read_text_file("~/crlf.txt", "--text") == "one\r\ntwo\n"


def test_text_that_is_not_utf8_says_at_which_byte(tmp_path):
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes(b"x" * 10_000 + "café au lait".encode("latin-1"))
    with pytest.raises(LocalaiError) as error:
        read_text_file(latin1, "--prompts")
    assert error.value.message == f"{latin1} is not UTF-8 text (invalid continuation byte at byte 10,003)"
    assert "--prompts" in error.value.hint


def test_a_character_limit_reads_whole_characters_only(tmp_path):
    text = tmp_path / "accents.txt"
    text.write_text("é" * 100, encoding="utf-8")  # two bytes each: a byte limit would cut one in half
    assert read_text_file(text, "--calib", max_chars=7) == "é" * 7
    assert read_text_file(text, "--calib", max_chars=1000) == "é" * 100
