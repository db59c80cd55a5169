"""Worker output: the markers a worker writes, how a reader splits them back, the driver's prefix."""

from __future__ import annotations

import io
import threading
from pathlib import Path

from aioray._private.common.worker_logs import LogReader, TaggedStream, Whose, log_file_names, prefix


def test_markers_go_before_the_first_line_of_each_writer(tmp_path: Path) -> None:
    path = tmp_path / "worker.out"
    current = [Whose("0a", "f")]
    with open(path, "w") as f:
        stream = TaggedStream(f, lambda: current[0])
        stream.write("one\ntwo")  # "two" is not finished yet
        stream.write(" halves\n")
        current[0] = Whose("0a", "", "Counter")
        print("from the actor", file=stream)
        current[0] = Whose("0b", "g")
        stream.write("unfinished")
        stream.flush()  # out as it is: the rest of the line follows it, not markers
        current[0] = Whose("0c", "h")
        stream.write(" and finished\n")
    assert path.read_text().splitlines() == [
        ":job_id:0a",
        ":task_name:f",
        "one",
        "two halves",
        ":actor_name:Counter",
        "from the actor",
        ":job_id:0b",
        ":task_name:g",
        "unfinished and finished",
    ]
    lines = LogReader(str(path)).read()
    assert [(line.whose, line.text) for line in lines] == [
        (Whose("0a", "f"), "one"),
        (Whose("0a", "f"), "two halves"),
        (Whose("0a", "", "Counter"), "from the actor"),
        (Whose("0b", "g"), "unfinished and finished"),
    ]


def test_threads_writing_at_once_keep_whole_lines(tmp_path: Path) -> None:
    path = tmp_path / "worker.out"
    with open(path, "w") as f:
        stream = TaggedStream(f, lambda: Whose("01", threading.current_thread().name))

        def talk() -> None:
            for i in range(200):
                stream.write(f"line {i} of {threading.current_thread().name}\n")

        threads = [threading.Thread(target=talk, name=f"t{k}") for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    lines = LogReader(str(path)).read()
    assert len(lines) == 800
    assert all(line.text.endswith(f"of {line.whose.task_name}") for line in lines)


def test_the_reader_keeps_an_unfinished_line_until_it_ends_or_the_writer_is_gone(tmp_path: Path) -> None:
    path = tmp_path / "w.err"
    path.write_bytes(b"first\nsec")
    reader = LogReader(str(path))
    assert [line.text for line in reader.read()] == ["first"]
    assert reader.read() == []
    with open(path, "ab") as f:
        f.write(b"ond\nthi")
    assert reader.has_more()
    assert [line.text for line in reader.read()] == ["second"]
    assert [line.text for line in reader.read(final=True)] == ["thi"]
    assert not reader.has_more()
    reader.close()


def test_a_missing_file_reads_as_nothing(tmp_path: Path) -> None:
    assert LogReader(str(tmp_path / "gone.out")).read() == []


def test_bad_bytes_and_long_lines_do_not_stop_the_reader(tmp_path: Path) -> None:
    path = tmp_path / "w.out"
    path.write_bytes(b"\xff\xfe ok\n" + b"x" * (70 << 10))
    reader = LogReader(str(path))
    lines = reader.read()
    assert lines[0].text == "\ufffd\ufffd ok"
    assert len(lines) == 2 and len(lines[1].text) == 70 << 10  # cut off rather than held for ever


def test_prefix_and_file_names() -> None:
    assert prefix("talk", "", 12, None) == "(talk pid=12)"
    assert prefix("", "Counter", 12, "10.0.0.2") == "(Counter pid=12, ip=10.0.0.2)"
    assert prefix("", "", 7, None) == "(pid=7)"
    assert log_file_names(bytes.fromhex("ab01"), 99) == ("worker-ab01-99.out", "worker-ab01-99.err")


def test_the_stream_is_a_text_stream() -> None:
    stream = TaggedStream(io.StringIO(), lambda: Whose())
    assert stream.writable() and not stream.isatty()
