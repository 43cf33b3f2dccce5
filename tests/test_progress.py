"""What a long run tells its user, and the seconds of each stage (edgebn.progress)."""

import time

from edgebn.progress import SILENT, Progress, Stages, timed


class Told:
    """A Progress that writes down what it is told."""

    def __init__(self) -> None:
        self.said: list[tuple] = []

    def start(self, stage: str, detail: str) -> None:
        self.said.append(("start", stage, detail))

    def done(self, stage: str, seconds: float) -> None:
        self.said.append(("done", stage, round(seconds, 1)))

    def epoch(self, epoch: int, epochs: int, metrics: dict[str, float]) -> None:
        self.said.append(("epoch", epoch, epochs))

    def note(self, message: str) -> None:
        self.said.append(("note", message))


def test_a_stage_is_timed_once_and_told_as_it_starts_and_ends():
    told: Progress = Told()
    stages = Stages(told)
    with stages.stage("train", "cnn on digits"):
        time.sleep(0.05)
    with stages.stage("train", "again"):  # the same stage twice: its seconds add up
        time.sleep(0.05)
    assert 0.1 <= stages.seconds["train"] < 1.0
    assert [s[:2] for s in told.said] == [("start", "train"), ("done", "train"),
                                          ("start", "train"), ("done", "train")]
    assert told.said[0][2] == "cnn on digits"


def test_timed_holds_the_wall_time_of_its_block_even_when_it_raises():
    with timed() as t:
        time.sleep(0.02)
    assert 0.02 <= t.seconds < 1.0
    try:
        with timed() as failed:
            raise ValueError
    except ValueError:
        pass
    assert 0 <= failed.seconds < 1.0


def test_the_silent_progress_says_nothing():
    assert SILENT.start("a", "b") is None and SILENT.note("x") is None
    assert Stages().progress.done("a", 1.0) is None
