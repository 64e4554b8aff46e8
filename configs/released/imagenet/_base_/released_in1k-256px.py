# The first version's checkpoints (TransCNN.py) were trained and evaluated
# at 256x256: short side int(256 * 256 / 224) = 292, center crop 256.
_base_ = './released_in1k-224px.py'

img_size = 256
test_pipeline = [
    dict(step, scale=int(img_size * 256 / 224)) if step['type'] ==
    'ResizeEdge' else dict(step, crop_size=img_size)
    if step['type'] == 'CenterCrop' else step
    for step in _base_.test_pipeline
]
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader
