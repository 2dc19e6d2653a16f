"""ipywidgets views for the notebooks: one module per notebook, pure functions underneath.

    from augreg_nb.widgets import (IndexBrowser, FinetunePanel, FigurePicker, InferencePanel,
                                   AugregPanel, VtabPanel, RankPanel)

Every panel computes what it shows with plain functions of its state (``browse``,
``make_config``, ``render``, ``plot_predictions``, ...), so tests drive them without a
browser: set a control's ``value`` or call ``button.click()`` and read the panel's
attributes. No panel downloads a file or starts a training run before its button is
pressed; errors appear as messages in the panel, not as tracebacks.
"""

from augreg_nb.widgets.augreg_panel import AugregPanel
from augreg_nb.widgets.figure_picker import FigurePicker
from augreg_nb.widgets.finetune_panel import FinetunePanel
from augreg_nb.widgets.index_browser import IndexBrowser
from augreg_nb.widgets.inference_panel import InferencePanel
from augreg_nb.widgets.rank_panel import RankPanel
from augreg_nb.widgets.vtab_panel import VtabPanel

__all__ = ["AugregPanel", "FigurePicker", "FinetunePanel", "IndexBrowser", "InferencePanel",
           "RankPanel", "VtabPanel"]
