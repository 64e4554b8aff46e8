from .complexity import count_flops, count_params, sdpa_flop_handle

__all__ = ['count_flops', 'count_params', 'sdpa_flop_handle']
