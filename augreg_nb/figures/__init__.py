"""The paper's figures and tables, from the shipped paper tables or from a full index.

    from augreg_nb import figures
    fig = figures.plot_fig4(figures.fig4_data())            # the paper's printed numbers
    fig = figures.plot_fig4(figures.fig4_data(index))       # derived from a full index.csv
"""

from augreg_nb.figures.heatmaps import plot_fig4, plot_fig5, plot_fig7
from augreg_nb.figures.plots import plot_fig1, plot_fig3, plot_fig6
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
    "fig1_data", "fig3_data", "fig4_data", "fig5_data", "fig6_data", "fig7_data",
    "plot_fig1", "plot_fig3", "plot_fig4", "plot_fig5", "plot_fig6", "plot_fig7",
    "table3_data", "table5_data",
]
