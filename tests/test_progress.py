"""Progress lines for long loops: plain lines (no carriage returns), a rate, the time left."""

from __future__ import annotations

import io

from sightline.progress import Progress, progress


def test_lines_carry_count_rate_and_time_left():
    out = io.StringIO()
    bar = Progress("spam: OCR", 4, "images", every_s=0.0, stream=out)
    for _ in range(4):
        bar.update()
    bar.close()
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    assert lines[0].startswith("spam: OCR: 1/4 images, ") and lines[0].endswith(" left")
    assert lines[3].startswith("spam: OCR: 4/4 images, ") and "/s" in lines[3]
    assert lines[-1].endswith("s") and "done in" in lines[-1]


def test_a_fast_loop_prints_nothing_and_yields_everything(capsys):
    assert list(progress(range(5), "quick", unit="steps")) == [0, 1, 2, 3, 4]
    assert capsys.readouterr().err == ""
