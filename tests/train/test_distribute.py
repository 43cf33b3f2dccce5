"""Training's distribution strategy (edgebn.train.distribute): the default device, the
replicas option's rules, and MirroredStrategy on logical CPU devices, which must be made before
TensorFlow starts its runtime (checked in a fresh interpreter)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from edgebn.errors import EdgebnError
from edgebn.train.distribute import (
    DEFAULT_CPU_REPLICAS,
    SINGLE,
    Distribution,
    Strategy,
    distribution,
)


def test_no_strategy_is_the_single_default_device():
    assert distribution(Strategy.none) is SINGLE
    assert distribution(Strategy.none, 1) is SINGLE
    assert SINGLE.scope is None
    assert SINGLE.to_json() == {"name": "none", "replicas": 1, "devices": []}


@pytest.mark.parametrize("strategy, replicas, message", [
    (Strategy.none, 2, "needs strategy mirrored"),
    (Strategy.mirrored, 0, "must be >= 1. Received: 0"),
    (Strategy.mirrored, -3, "must be >= 1. Received: -3"),
])
def test_replicas_out_of_rule_are_refused_naming_the_option(strategy, replicas, message):
    with pytest.raises(EdgebnError) as refused:
        distribution(strategy, replicas)
    assert str(refused.value) == message and refused.value.option == "replicas"


def test_the_document_names_the_strategy_its_replicas_and_devices():
    d = Distribution(Strategy.mirrored, 2, ("/cpu:0", "/cpu:1"))
    assert d.to_json() == {"name": "mirrored", "replicas": 2, "devices": ["/cpu:0", "/cpu:1"]}
    assert json.loads(json.dumps(d.to_json())) == d.to_json()
    assert Strategy("mirrored") is Strategy.mirrored and DEFAULT_CPU_REPLICAS == 2


_FRESH = textwrap.dedent("""
    import json, os
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    from edgebn.errors import EdgebnError
    from edgebn.train.distribute import Strategy, distribution
    d = distribution(Strategy.mirrored, 3)
    import tensorflow as tf
    with d.scope.scope():
        v = tf.Variable(1.0)
    doc = {"first": d.to_json(), "mirrored": type(v).__name__,
           "default": distribution(Strategy.mirrored).to_json()["replicas"]}
    try:
        distribution(Strategy.mirrored, 4)
    except EdgebnError as exc:
        doc["too_many"] = [str(exc), exc.option]
    print(json.dumps(doc))
""")


def test_mirrored_on_cpu_makes_logical_devices_once_then_keeps_what_the_runtime_has():
    proc = subprocess.run([sys.executable, "-c", _FRESH], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert proc.returncode == 0, proc.stderr[-2000:]
    doc = json.loads(proc.stdout.strip().splitlines()[-1])
    cpus = [f"/device:CPU:{i}" for i in range(3)]
    assert doc["first"] == {"name": "mirrored", "replicas": 3, "devices": cpus}
    assert doc["mirrored"] == "MirroredVariable"
    assert doc["default"] == DEFAULT_CPU_REPLICAS  # 2 of the 3 already made
    assert doc["too_many"] == ["4: TensorFlow was initialized with 3 CPU device(s) before "
                               "training; run training in a fresh process", "replicas"]
