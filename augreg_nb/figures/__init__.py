"""The paper's figures and tables, from the shipped paper tables or from a full index.

Each figure has a tidy-data builder (``fig4_data``) and one plot function (``plot_fig4``)
that returns a matplotlib Figure. Builders read the numbers printed in the paper (shipped
with the package) by default, or derive them from a full index table::

    from augreg_nb import figures
    figures.plot_fig4(figures.fig4_data())                    # the paper's numbers
    from augreg_nb.index import load_index
    index = load_index("index.csv")                            # your copy of the full table
    figures.plot_fig1(figures.fig1_data(index))                # needs the full index
    figures.compare_with_paper(index).query("differs")         # index vs paper
    figures.plot_fig6(figures.fig6_data(), overlay=own_rows)   # own ImageNet fine-tunes
    figures.write_all("augreg-figures")                        # PNG, SVG and an HTML page

Figures 2 and 5 (right) cannot be reproduced from public data; ``NOT_REPRODUCIBLE`` says
why. The same page is written by ``augreg-nb figures --out DIR [--index PATH]``.
"""

from augreg_nb.figures.compare import compare_with_paper, style_comparison
from augreg_nb.figures.heatmaps import plot_fig4, plot_fig5, plot_fig7
from augreg_nb.figures.page import (
    CAPTIONS,
    NOT_REPRODUCIBLE,
    figures_for,
    read_own_results,
    write_all,
)
from augreg_nb.figures.plots import plot_fig1, plot_fig3, plot_fig6
from augreg_nb.figures.tables import (
    compare_finetunes,
    plot_finetunes,
    result_rows_view,
    style_table3,
    style_table5,
    style_table5_groups,
)
from augreg_nb.figures.tidy import (
    fig1_data,
    fig3_data,
    fig4_data,
    fig5_data,
    fig6_data,
    fig7_data,
    table3_data,
    table5_data,
)

__all__ = [
    "CAPTIONS", "NOT_REPRODUCIBLE",
    "compare_finetunes", "compare_with_paper",
    "fig1_data", "fig3_data", "fig4_data", "fig5_data", "fig6_data", "fig7_data",
    "figures_for",
    "plot_fig1", "plot_fig3", "plot_fig4", "plot_fig5", "plot_fig6", "plot_fig7",
    "plot_finetunes", "read_own_results", "style_comparison", "style_table3", "style_table5",
    "style_table5_groups", "result_rows_view",
    "table3_data", "table5_data", "write_all",
]
