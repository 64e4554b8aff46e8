"""Layers and functions with a kernel of their own for one kind of device,
outside the model files. Each computes what the torch layer or function it
stands for computes, runs that one everywhere else, and has a test that
proves the two equal (``tests/test_ops.py``)."""
from .attention import MATMUL_MAX_KEYS, attention, matmul_attention
from .depthwise_conv import DepthwiseConv2d, depthwise_weight_grad

__all__ = ['DepthwiseConv2d', 'MATMUL_MAX_KEYS', 'attention',
           'depthwise_weight_grad', 'matmul_attention']
