# What every mmtranscnn deploy config shares: ONNX Runtime as the backend,
# an ONNX graph exported with dynamic batch, height and width.
#
# opset 17: H-MHSA's attention is F.scaled_dot_product_attention, which the
# TorchScript exporter writes from opset 14 on; 17 adds LayerNormalization,
# and every ONNX Runtime release of the `deploy` extra runs it.
# optimize=False: mmdeploy's graph optimizer is a compiled extension that
# its PyPI wheel does not ship.
onnx_config = dict(
    type='onnx',
    export_params=True,
    keep_initializers_as_inputs=False,
    opset_version=17,
    save_file='end2end.onnx',
    input_names=['input'],
    input_shape=None,  # no fixed size: the model's test pipeline decides
    optimize=False)
backend_config = dict(type='onnxruntime')
