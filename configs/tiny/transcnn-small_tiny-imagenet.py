# The TransCNN-Small ImageNet recipe on a tiny synthetic data set, for a CPU
# (CI, a laptop). It inherits the real config (model, optimizer and lr,
# augmentations) and changes the data (root, 6 classes, so a 6-way head),
# the image size (64), the batch (16, 2 workers), the schedule (4 epochs,
# 1 warm-up epoch from 0.01), validation and checkpoints every 2 epochs,
# logging, and the seed (0). Make the data first:
#   python tools/data/make_tiny_imagenet.py data/tiny_imagenet
#   python tools/train.py configs/tiny/transcnn-small_tiny-imagenet.py
_base_ = '../imagenet/transcnn-small_8xb128_in1k.py'

# ----------------------------------------------------------------- data ----
data_root = 'data/tiny_imagenet'
# The default six classes of make_tiny_imagenet.py, in label (sorted) order.
classes = ('blue_hstripes', 'cyan_ring', 'green_square', 'magenta_triangle',
           'orange_cross', 'red_disc')
num_classes = len(classes)
model = dict(head=dict(num_classes=num_classes))
data_preprocessor = dict(num_classes=num_classes)  # for Mixup/CutMix labels

# 64x64 crops (stage maps 16/8/4/2: the grid sizes 8/4/2 still give 2x2
# level-1 maps). Evaluation keeps the 224/256 ratio: short edge 73, crop 64.
img_size = 64
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
train_dataloader = dict(
    batch_size=16,
    num_workers=2,
    dataset=dict(
        data_root=data_root, classes=classes, pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=16,
    num_workers=2,
    dataset=dict(
        data_root=data_root, classes=classes, pipeline=test_pipeline))
test_dataloader = val_dataloader

# ------------------------------------------------------------- schedule ----
# 96 images / 16 = 6 iterations an epoch; one warm-up epoch, then cosine.
param_scheduler = [
    dict(
        type='LinearLR',
        start_factor=1e-2,
        by_epoch=True,
        begin=0,
        end=1,
        convert_to_iter_based=True),
    dict(
        type='CosineAnnealingLR',
        eta_min=1e-5,
        by_epoch=True,
        begin=1,
        convert_to_iter_based=True),
]
train_cfg = dict(max_epochs=4, val_interval=2)
default_hooks = dict(
    logger=dict(interval=2),
    checkpoint=dict(interval=2, max_keep_ckpts=1, save_best=None))
randomness = dict(seed=0)
