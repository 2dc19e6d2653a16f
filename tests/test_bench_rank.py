"""The rank section of the bench on tiny settings: it measures what it says."""

from __future__ import annotations

from bench import __main__ as bench_main
from bench import rank_speed


def test_rank_section_is_registered():
    args = bench_main.parse_args(["--only", "rank", "--rank-models", "testing",
                                  "--rank-images", "8"])
    assert args.only == ["rank"] and args.rank_models == ["testing"]
    assert "rank" in bench_main.SECTIONS and "rank" not in bench_main.OPT_IN_SECTIONS


def test_extraction_rows_relate_extraction_to_the_forward_pass(tmp_path):
    (row,) = rank_speed.extraction_rows(["testing"], batch=4, resolution=32, repeats=1,
                                        images=8, root=tmp_path)
    assert row.section == "rank" and row.unit == "img/s" and row.value > 0
    assert row.extra["images"] == 8
    assert row.extra["ratio"] == row.extra["forward_img_s"] / row.value
    assert "forward / extraction" in row.note
