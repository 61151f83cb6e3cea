"""Progress output: periodic whole lines when not on a terminal, ASCII bars for non-UTF-8 consoles."""

import io

from acestep.core.progress import LineProgress, progress


class _Cp1252(io.StringIO):
    encoding = "cp1252"


def test_log_output_is_whole_lines_with_a_final_count():
    buffer = io.StringIO()
    for _ in progress(range(7), desc="songs", file=buffer, interval=3600):
        pass
    lines = buffer.getvalue().split("\n")
    assert lines[-1] == ""
    assert "\r" not in buffer.getvalue()
    assert lines[0].startswith("songs:   0%")
    assert "7/7" in lines[-2]
    assert len(lines) == 3  # start, end, trailing newline: nothing in between within the interval


def test_interrupted_loop_still_ends_its_line():
    buffer = io.StringIO()
    for index in progress(range(10), desc="x", file=buffer, interval=3600):
        if index == 4:
            break
    assert buffer.getvalue().endswith("\n")
    assert "4/10" in buffer.getvalue().split("\n")[-2]


def test_non_terminal_gets_line_progress_and_ascii_on_cp1252():
    stream = _Cp1252()
    bar = progress(range(3), desc="y", file=stream)
    assert isinstance(bar, LineProgress)
    assert bar.ascii is True
    list(bar)
    stream.getvalue().encode("cp1252")


def test_messages_between_updates_get_lines_of_their_own():
    buffer = io.StringIO()
    bar = progress(range(3), desc="z", file=buffer, interval=3600)
    for index in bar:
        if index == 1:
            bar.write("failed: song.mp3", file=buffer)
    lines = buffer.getvalue().split("\n")
    assert "failed: song.mp3" in lines
    assert "\r" not in buffer.getvalue()
    assert "" not in lines[:-1]  # no blank lines
    assert "3/3" in lines[-2]
