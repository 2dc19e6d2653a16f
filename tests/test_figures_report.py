"""``write_all`` and ``augreg-nb figures``: every figure as PNG and SVG plus an HTML page."""

from __future__ import annotations

import json
import re

import pandas as pd

from augreg_nb import cli, figures
from augreg_nb.figures import synthetic
from augreg_nb.figures.derive import INDEX_COLUMNS
from augreg_nb.resources import data_path


def test_write_all_from_the_shipped_tables(tmp_path):
    written = figures.write_all(tmp_path / "out")
    names = {"fig3", "fig4", "fig5", "fig6", "fig7"}
    assert {f"{n}.{e}" for n in names for e in ("png", "svg")} <= set(written)
    assert "fig1.png" not in written and "comparison.csv" not in written
    for n in names:
        assert (tmp_path / "out" / f"{n}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert "<svg" in (tmp_path / "out" / f"{n}.svg").read_text()[:2000]
    page = (tmp_path / "out" / "index.html").read_text()
    assert sorted(re.findall(r"src='(fig\d)\.png'", page)) == sorted(names)
    for caption in (figures.CAPTIONS[n] for n in names):
        assert caption.split(":")[0] in page
    assert "Figure 1 needs the full index table" in page
    assert "ImageNetV2" in page and "from-scratch runs" in page
    assert "85.49" in (tmp_path / "out" / "table3.html").read_text()
    assert not list((tmp_path / "out").glob("*.tmp"))


def test_figures_command_with_an_index_file(tmp_path, capsys):
    path = tmp_path / "index.csv"
    synthetic.paper_index().to_csv(path, index=False)
    out = tmp_path / "figs"
    code = cli.main(["figures", "--out", str(out), "--index", str(path),
                     "--highlight", "B/16"])
    assert code == 0
    assert "index.html" in capsys.readouterr().out
    assert (out / "fig1.png").is_file() and (out / "fig1.svg").is_file()
    comparison = pd.read_csv(out / "comparison.csv")
    assert len(comparison) == 99 + 405 + 189 + 54
    assert not comparison["differs"].any()
    page = (out / "index.html").read_text()
    assert "src='fig1.png'" in page and "a full index table" in page


def test_figures_command_with_own_results(tmp_path):
    known = pd.read_csv(data_path("index", "index_csv_known_rows_union.csv"))
    own = known[known["adapt_ds"] == "oxford_iiit_pet"].head(3)[list(INDEX_COLUMNS)]
    own.iloc[:2].assign(adapt_final_test=0.9).to_csv(tmp_path / "own.csv", index=False)
    result = {"result_row": own.iloc[2].to_dict(), "final": {}}
    (tmp_path / "result.json").write_text(json.dumps(result))
    out = tmp_path / "figs"
    files = f"{tmp_path / 'own.csv'},{tmp_path / 'result.json'}"
    assert cli.main(["figures", "--out", str(out), "--own", files]) == 0
    assert (out / "finetunes.png").is_file()
    assert "src='finetunes.png'" in (out / "index.html").read_text()


def test_figures_command_explains_a_missing_index(tmp_path, capsys):
    code = cli.main(["figures", "--out", str(tmp_path), "--index", str(tmp_path / "no.csv")])
    assert code == 1
    assert "index table not found" in capsys.readouterr().err
