"""A .tflite over a whole split against the model it came from (edgebn.runtime.accuracy)."""



def test_verify_limits_hand_worked():
    from edgebn.runtime.accuracy import VerifyLimits

    limits = VerifyLimits.of("none")
    assert (limits.min_agreement, limits.max_prob_diff) == (0.99, 1e-4)
    ok, diff = limits.judge(1.0, 9e-5)
    assert ok.passed and diff.passed
    ok, diff = limits.judge(0.985, 2e-4)
    assert not ok.passed and not diff.passed
    assert diff.describe() == "max |Δp| 0.0002, the limit <= 0.0001"
    loose = VerifyLimits.of("none", max_prob_diff=1e-3)
    assert loose.judge(1.0, 2e-4)[1].passed and loose.min_agreement == 0.99
    assert VerifyLimits.of("int8").min_agreement < VerifyLimits.of("float16").min_agreement
