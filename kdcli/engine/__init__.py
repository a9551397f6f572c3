"""The one training engine behind every stage.

The whole data set sits on the training device as tensors (uint8 images), or stays memory-mapped
(DeviceData); a batch is cut by index, augmented as a whole on the device (kdcli.augment), normalized,
and handed to an objective `(model, batch, train) -> (outputs, terms)`. Early stopping watches a
validation metric (--monitor: the objective's loss by default, or accuracy, or the KL term) and
restores the weights of the best epoch by that metric (seed 000). Resumable checkpoints are written by
time (`CheckpointSchedule`): a killed run restarts from its last written epoch, an interrupted one
(Ctrl-C, SIGTERM) from its last completed epoch, with the same result as an uninterrupted run.

One job per module: `batches` (data on the device, batches), `devices` (threads, precision, model
placement), `optim` (optimizer, schedules), `checkpoints` (resumable state), `evaluate` (metrics,
validation, `predict`), `loop` (`fit`). The names below are the engine's interface to the stages.
"""

from kdcli.engine.batches import Batch, DeviceData, Objective, Prepare
from kdcli.engine.checkpoints import Checkpoint
from kdcli.engine.devices import apply_default_threads, autocast, prepare_model, rng_devices, unwrap
from kdcli.engine.evaluate import (
    IGNORE,
    agreement,
    eval_batch,
    evaluate_test,
    predict,
    test_metrics,
    token_metrics,
)
from kdcli.engine.loop import FitResult, fit
from kdcli.engine.optim import (
    make_optimizer,
    make_scheduler,
    objective_parameters,
    steps_per_batch,
    warmup_cosine,
)

__all__ = [
    "IGNORE", "Batch", "Checkpoint", "DeviceData", "FitResult", "Objective", "Prepare", "agreement",
    "apply_default_threads", "autocast", "eval_batch", "evaluate_test", "fit", "make_optimizer", "make_scheduler",
    "objective_parameters", "predict", "prepare_model", "rng_devices", "steps_per_batch", "test_metrics",
    "token_metrics", "unwrap", "warmup_cosine",
]
