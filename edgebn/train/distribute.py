"""Training on more than one device: ``tf.distribute.MirroredStrategy``.

Mirrored training copies the model onto every local GPU, or, on a machine without one,
onto N logical CPU devices carved out of the one physical CPU (what the tests use: it
runs the real strategy, all-reduce included). Logical devices can only be made before
TensorFlow initializes its runtime, so the strategy is made first thing in training.

Several machines are out of reach: Keras 3's ``model.fit`` does not run under
``MultiWorkerMirroredStrategy`` (keras-team/keras issue 20585).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING

from edgebn.documents import JsonDict
from edgebn.errors import EdgebnError

if TYPE_CHECKING:  # named in annotations only: importing TensorFlow takes seconds (edgebn.cli.app)
    import tensorflow as tf

DEFAULT_CPU_REPLICAS = 2


class Strategy(str, Enum):
    none = "none"  # the default device
    mirrored = "mirrored"  # every local GPU, or N logical CPU devices without one


@dataclass(frozen=True)
class Distribution:
    """How a training run was spread: the strategy, its replicas and their devices."""

    strategy: Strategy
    replicas: int
    devices: tuple[str, ...]
    scope: tf.distribute.Strategy | None = None  # None: the default device

    def to_json(self) -> JsonDict:
        return {"name": self.strategy.value, "replicas": self.replicas,
                "devices": list(self.devices)}


SINGLE = Distribution(Strategy.none, 1, ())


def _cpu_devices(replicas: int) -> list[str]:
    import tensorflow as tf  # lazy: TensorFlow takes seconds to import

    cpus = tf.config.list_physical_devices("CPU")
    try:
        tf.config.set_logical_device_configuration(
            cpus[0], [tf.config.LogicalDeviceConfiguration() for _ in range(replicas)])
    except RuntimeError:  # the runtime is up already: use what it has, if it is enough
        pass
    logical = tf.config.list_logical_devices("CPU")
    if len(logical) < replicas:
        raise EdgebnError(f"{replicas}: TensorFlow was initialized with {len(logical)} CPU "
                          "device(s) before training; run training in a fresh process",
                          option="replicas")
    return [d.name for d in logical[:replicas]]


def distribution(strategy: Strategy, replicas: int | None = None) -> Distribution:
    """Make the strategy; call it before anything else touches TensorFlow."""
    if strategy is Strategy.none:
        if replicas not in (None, 1):
            raise EdgebnError("needs strategy mirrored", option="replicas")
        return SINGLE
    if replicas is not None and replicas < 1:
        raise EdgebnError(f"must be >= 1. Received: {replicas}", option="replicas")
    import tensorflow as tf  # lazy: TensorFlow takes seconds to import

    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        if replicas is not None and replicas > len(gpus):
            raise EdgebnError(f"{replicas}: this machine has {len(gpus)} GPU(s)",
                              option="replicas")
        devices = [f"/gpu:{i}" for i in range(replicas or len(gpus))]
    else:
        devices = _cpu_devices(replicas or DEFAULT_CPU_REPLICAS)
    scope = tf.distribute.MirroredStrategy(devices=devices)
    return Distribution(strategy, int(scope.num_replicas_in_sync), tuple(devices), scope)
