# Fine-tune a 224-trained TransCNN-Base at 384x384 (8 GPUs x 64 images).
#
# Grid sizes are settings, not weights (merging is parameter-free), so the
# 224 checkpoint loads strictly. Against the 224 config this changes the
# pipeline (384 crops), the grid sizes, the batch (64 per GPU), lr and weight
# decay, the schedule, and the head, which starts from the checkpoint too.
_base_ = './transcnn-base_8xb128_in1k.py'

# The 224 checkpoint (from transcnn-base_8xb128_in1k.py, or its published
# file from tools/model_converters/publish_model.py). Override both uses
# from the command line, e.g.
#   --cfg-options model.backbone.init_cfg.checkpoint=CKPT \
#                 model.head.init_cfg.checkpoint=CKPT
checkpoint_224 = 'work_dirs/transcnn-base_8xb128_in1k/epoch_300.pth'

img_size = 384
model = dict(
    backbone=dict(
        # 384 gives 96/48/24/12 token maps in stages 2-5. Growing G0 with
        # the image (12/6/3 instead of 8/4/2) keeps what the network saw at
        # 224: each level-0 grid covers about the same share of the image
        # (1/8 instead of 1/7 of its side) and the level-1 map stays small
        # (8x8 instead of 7x7). The stage-5 map (12x12) keeps plain attention.
        grid_sizes=(12, 6, 3, 0),
        # Strict: a missing or mis-shaped backbone tensor stops the run.
        init_cfg=dict(
            type='Pretrained', checkpoint=checkpoint_224, prefix='backbone.')),
    # The classifier carries over as well (same 1000 classes), as in DeiT's
    # fine-tuning.
    # (_delete_: replace the TruncNormal init of the 224 recipe.)
    head=dict(
        init_cfg=dict(
            _delete_=True,
            type='Pretrained',
            checkpoint=checkpoint_224,
            prefix='head.')))

# Same augmentations at 384. Evaluation keeps DeiT's 224/256 ratio:
# short edge int(384 * 256 / 224) = 438, center crop 384.
train_pipeline = [
    dict(step, scale=img_size) if step['type'] == 'RandomResizedCrop' else
    step for step in _base_.train_pipeline
]
test_pipeline = [
    dict(step, scale=int(img_size * 256 / 224)) if step['type'] ==
    'ResizeEdge' else dict(step, crop_size=img_size)
    if step['type'] == 'CenterCrop' else step
    for step in _base_.test_pipeline
]
train_dataloader = dict(batch_size=64, dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(batch_size=64, dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader

# DeiT's 384 fine-tuning recipe (paper silent): 30 epochs, lr 5e-6 for a
# batch of 512, weight decay 1e-8, 5 warm-up epochs from 1e-6 and then a
# constant lr (DeiT sets min-lr = lr = 5e-6).
optim_wrapper = dict(optimizer=dict(lr=5e-6, weight_decay=1e-8))
param_scheduler = [
    dict(
        type='LinearLR',
        start_factor=0.2,
        by_epoch=True,
        begin=0,
        end=5,
        convert_to_iter_based=True),
]
train_cfg = dict(max_epochs=30)
auto_scale_lr = dict(base_batch_size=512)
