"""The README's main job: ``augreg-nb report`` on the shipped offline catalogue."""

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pandas as pd

from augreg_nb.catalogue_page import build_report
from augreg_nb.index_queries import recommended_table
from augreg_nb.names import MODELS

REPO = Path(__file__).resolve().parents[1]


def test_recommended_table_matches_table3_on_the_catalogue():
    from augreg_nb.index import load_index

    rec = recommended_table(load_index("catalogue")).set_index("model")
    assert set(rec.index) == set(MODELS)
    table3 = pd.read_csv(REPO / "data" / "paper" / "table3_imagenet1k_transfer.csv")
    for _, row in table3.iterrows():
        assert round(100 * rec.loc[row["model"], "imagenet_top1"], 2) == row["i21k_300_384"]
    # the mirror column names the timm repo only where timm hosts that very file
    mirror = pd.read_csv(REPO / "data" / "mirror" / "timm_augreg_checkpoints.csv")
    upstream_only = mirror[mirror["adapt_suffix"].isna()]
    hosted = set(upstream_only["upstream_filename"].dropna())
    for model, r in rec.iterrows():
        assert bool(r["hf_repo"]) == (r["filename"] in hosted), model


def test_report_page_shows_provenance_catalogue_and_figures(tmp_path):
    page = build_report(tmp_path / "r").read_text()
    assert "shipped offline catalogue" in page and "incomplete" in page
    for model in MODELS:
        assert f"<td>{model}</td>" in page
    for fig in ("fig3", "fig4", "fig5", "fig6", "fig7"):
        assert (tmp_path / "r" / "figures" / f"{fig}.png").stat().st_size > 10_000
        assert f"figures/{fig}.png" in page
    assert (tmp_path / "r" / "figures" / "index.html").is_file()


def test_readme_main_job_command_runs(tmp_path):
    """Run the README's first command minus the install part (CI's install is the same)."""
    text = (REPO / "README.md").read_text()
    setup = re.findall(r"```bash\n(.*?)```", text, flags=re.S)[0].strip()
    job = shlex.split(setup.split("&&")[-1])
    assert job[0] == ".venv/bin/augreg-nb", job
    exe = Path(sys.executable).with_name("augreg-nb")
    proc = subprocess.run([str(exe), *job[1:]], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "augreg-report" / "index.html").is_file()
    assert "report written" in proc.stdout
