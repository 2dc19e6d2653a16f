"""The round trip of tests/test_timm_export.py for the base-sized, large and hybrid models.

Apart from the fast cases so that a parallel run (``--dist loadfile``) gives these minutes of
export, reading back and first forward passes a worker of their own.
"""

from __future__ import annotations

import pytest

from tests.test_timm_export import ROUND_TRIPS, SLOW, round_trip

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("model,resolution,classes", [c for c in ROUND_TRIPS if c[0] in SLOW],
                         ids=[c[0] for c in ROUND_TRIPS if c[0] in SLOW])
def test_every_large_model_round_trips_to_the_same_logits(tmp_path, model, resolution,
                                                          classes):
    round_trip(tmp_path, model, resolution, classes)
