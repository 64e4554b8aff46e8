"""Glue between mmtranscnn and mmengine's Runner.

- :mod:`.model_wrapper`: a DDP wrapper that also works for CPU processes.
- :mod:`.amp`: bfloat16 mixed precision (``--amp``) on CPU-only machines.
- :mod:`.dist`: gloo start-up for distributed runs without an accelerator.
- :mod:`.scope`: set up the codebase (mmdet/mmseg/mmpretrain) of a config.
- :mod:`.cli`: the options of ``tools/train.py`` and ``tools/test.py``.
- :mod:`.cpu_speedups`: CPU speed-ups applied to a built model (the tools'
  runner and test hook).
- :mod:`.cpu_memory`: freed memory kept for reuse in CPU runs (no page
  faults for recycled tensors).
- :mod:`.weights_only`: checkpoints that ``torch.load(weights_only=True)``
  reads as they are (the shipped configs' ``WeightsOnlyCheckpointHook``).
"""
from .cli import (add_run_options, build_runner, enable_test_visualization,
                  merge_test_args, merge_train_args, parse_run_args,
                  prepare_prediction_dump)
from .dist import (LAUNCHERS, check_launcher, cpu_model_wrapper_cfg,
                   init_cpu_dist, setup_cpu_distributed, teardown_distributed)
from .amp import CPUBF16AmpOptimWrapper
from .cpu_speedups import CPUTrainingRunner, speed_up_cpu_training
from .cpu_memory import keep_freed_memory, keep_freed_memory_for_cpu_run
from .model_wrapper import CPUDistributedDataParallel
from .scope import setup_codebase
from .weights_only import WeightsOnlyCheckpointHook

__all__ = [
    'CPUBF16AmpOptimWrapper', 'CPUDistributedDataParallel',
    'CPUTrainingRunner', 'LAUNCHERS', 'WeightsOnlyCheckpointHook',
    'speed_up_cpu_training',
    'add_run_options', 'build_runner',
    'check_launcher', 'cpu_model_wrapper_cfg', 'enable_test_visualization',
    'init_cpu_dist', 'keep_freed_memory', 'keep_freed_memory_for_cpu_run',
    'merge_test_args', 'merge_train_args', 'parse_run_args',
    'prepare_prediction_dump', 'setup_codebase', 'setup_cpu_distributed',
    'teardown_distributed'
]
