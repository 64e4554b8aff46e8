# COCO fine-tuning schedule of TransCNN (paper §4.4), which follows PVT's
# protocol: mmdet's 1x schedule (12 epochs; lr x0.1 after epochs 8 and 11;
# linear warm-up over the first 500 iterations from 0.001 x lr) with AdamW at
# lr 1e-4 for 16 images per iteration (8 GPUs x 2 images).
# Weight decay 1e-4: the paper gives only the lr; 1e-4 is the value of PVT's
# released RetinaNet / Mask R-CNN configs (and of mmdet's configs/pvt), which
# the paper says it follows. It applies to all parameters, as there.
_base_ = 'mmdet::_base_/schedules/schedule_1x.py'

optim_wrapper = dict(
    optimizer=dict(_delete_=True, type='AdamW', lr=1e-4, weight_decay=1e-4))

# With --auto-scale-lr the lr is scaled linearly from 16 images per
# iteration to the real total batch (GPUs x train_dataloader.batch_size).
auto_scale_lr = dict(enable=False, base_batch_size=16)
