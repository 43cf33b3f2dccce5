"""The build's result and report (edgebn.pipeline.report): rows, warnings, Markdown."""

import numpy as np


def test_at_chance_hand_worked():
    from edgebn.pipeline.report import at_chance

    labels = np.array([0] * 50 + [1] * 30 + [2] * 20)  # the majority class is 0.5 of them
    assert "at chance (0.5000: the majority class" in at_chance(0.55, labels, 3)
    assert at_chance(0.56 + 3 * np.sqrt(0.25 / 100), labels, 3) is None  # 3 standard errors
    balanced = np.repeat(np.arange(10), 100)
    assert "1 of 10 classes" in at_chance(0.149, balanced, 10)
    assert at_chance(0.151, balanced, 10) is None  # margin 0.05 > 3 standard errors (0.028)
