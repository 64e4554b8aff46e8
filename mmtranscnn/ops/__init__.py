"""Layers with a kernel of their own for one kind of device, outside the
model files. Each computes what the torch layer it subclasses computes, runs
that layer's own code everywhere else, and has a test that proves the two
equal (``tests/test_ops.py``)."""
from .depthwise_conv import DepthwiseConv2d, depthwise_weight_grad

__all__ = ['DepthwiseConv2d', 'depthwise_weight_grad']
