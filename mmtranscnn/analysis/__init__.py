"""Parameter and FLOP counting with the paper's conventions.

Kept in the package because counting TransCNN needs what the OpenMMLab
stack lacks: mmengine's ``FlopAnalyzer`` has no handle for
``scaled_dot_product_attention`` and would count every attention as zero.
The speed and memory benchmark harness is not here: it lives with the
tools that use it (``tools/analysis_tools/speed_harness.py``).
"""
from .complexity import count_flops, count_params, sdpa_flop_handle

__all__ = ['count_flops', 'count_params', 'sdpa_flop_handle']
