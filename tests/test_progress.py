"""Progress output: a bar on a terminal, a few plain lines (no carriage returns) in a log (issue 12, item 15)."""

from __future__ import annotations

import io

from tqdm.auto import tqdm

from m3bert.core.progress import LogProgress, progress


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_log_output_is_plain_lines_at_an_interval(monkeypatch):
    log = io.StringIO()
    monkeypatch.setenv("M3BERT_PROGRESS_INTERVAL", "0")
    items = list(progress(range(5), desc="embed", unit="file", file=log))
    assert items == [0, 1, 2, 3, 4]
    text = log.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert lines[0].startswith("embed: 1/5 file (20 %)") and lines[-1].startswith("embed: done, 5 file in")
    # the default interval keeps a long job to a handful of lines
    monkeypatch.setenv("M3BERT_PROGRESS_INTERVAL", "3600")
    log = io.StringIO()
    bar = progress(total=10_000, desc="features", unit="clip", file=log)
    for _ in range(10_000):
        bar.update(1)
    bar.set_postfix(loss="0.12")
    bar.close()
    assert log.getvalue().splitlines() == [log.getvalue().splitlines()[-1]]
    assert "10000 clip" in log.getvalue() and "loss=0.12" in log.getvalue()


def test_terminal_gets_a_bar_and_disable_is_silent():
    assert isinstance(progress(total=3, desc="x", file=_Tty()), tqdm)
    log = io.StringIO()
    with progress(total=3, desc="x", disable=True, file=log) as bar:
        bar.update(3)
    assert isinstance(bar, LogProgress) and log.getvalue() == ""


def test_inner_bars_print_no_closing_line(monkeypatch):
    log = io.StringIO()
    monkeypatch.setenv("M3BERT_PROGRESS_INTERVAL", "3600")
    with progress(total=3, desc="probe grid", file=log, leave=False) as bar:
        bar.update(3)
    assert log.getvalue() == ""
