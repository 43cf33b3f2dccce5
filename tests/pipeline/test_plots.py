"""The build's plots (edgebn.pipeline.plots): what each draws, told by its labels."""



def test_the_training_plot_marks_where_each_curve_reaches_the_target(tmp_path):
    from edgebn.pipeline.plots import Curve, training

    plot = training([Curve("BN", (0.5, 0.9, 0.95), 10), Curve("BN-free baseline", (0.4, 0.7, 0.9),
                                                             10)], 0.9, tmp_path / "t.png")
    assert plot.shows == ("BN", "BN-free baseline", "target")
    assert plot.path.read_bytes()[:4] == b"\x89PNG"
