"""Glue between mmtranscnn and mmengine's Runner: the tools' options, the
config's codebase, CPU-only distributed runs, bf16 ``--amp`` on the CPU,
freed memory kept for reuse, and checkpoints that
``torch.load(weights_only=True)`` reads."""
from .amp import CPUBF16AmpOptimWrapper
from .cli import (add_run_options, build_runner, enable_test_visualization,
                  merge_test_args, merge_train_args, parse_run_args,
                  prepare_prediction_dump)
from .cpu_memory import keep_freed_memory, keep_freed_memory_for_cpu_run
from .dist import (LAUNCHERS, CPUDistributedDataParallel, check_launcher,
                   cpu_model_wrapper_cfg, init_cpu_dist,
                   setup_cpu_distributed, teardown_distributed)
from .scope import setup_codebase
from .weights_only import WeightsOnlyCheckpointHook

__all__ = [
    'CPUBF16AmpOptimWrapper', 'CPUDistributedDataParallel',
    'LAUNCHERS', 'WeightsOnlyCheckpointHook',
    'add_run_options', 'build_runner', 'check_launcher',
    'cpu_model_wrapper_cfg', 'enable_test_visualization', 'init_cpu_dist',
    'keep_freed_memory', 'keep_freed_memory_for_cpu_run', 'merge_test_args',
    'merge_train_args', 'parse_run_args', 'prepare_prediction_dump',
    'setup_codebase', 'setup_cpu_distributed',
    'teardown_distributed'
]
