"""``edgebn build --arch mobilenet-v3-small --weights none`` on the digits as 32 px RGB images
(issue 33)."""

import pytest
from scratch_builds import from_scratch_build

pytestmark = pytest.mark.heavy  # scheduled first (tests/conftest.py)


@pytest.mark.slow
def test_mobilenet_v3_small_from_scratch_learns_in_the_default_epochs(digits_rgb, tmp_path):
    from_scratch_build("mobilenet-v3-small", digits_rgb, tmp_path)
