"""Whether a model runs traced: one test for the model files and the
layers of :mod:`mmtranscnn.ops`."""
import torch


def is_traced() -> bool:
    """Whether the model is traced, exported or compiled: sizes may be
    symbolic (no Python branch may depend on them), a traced graph (FLOP
    counting, TorchScript, ONNX, torch.export) holds no autograd Function,
    and torch.compile chooses what to recompute itself."""
    return (torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()
            or torch.compiler.is_compiling())


__all__ = ['is_traced']
