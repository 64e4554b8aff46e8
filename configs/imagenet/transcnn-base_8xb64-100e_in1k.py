# The ablation schedule of §4.2: TransCNN-Base, 100 epochs, "the batch size
# and learning rate are also reduced by half": 64 images per GPU on 8 GPUs
# (512 in all) and lr 4e-4. Everything else as the 300-epoch recipe; the
# cosine schedule follows max_epochs.
_base_ = './transcnn-base_8xb128_in1k.py'

train_dataloader = dict(batch_size=64)
val_dataloader = dict(batch_size=64)
test_dataloader = val_dataloader

optim_wrapper = dict(optimizer=dict(lr=4e-4))
train_cfg = dict(max_epochs=100)
auto_scale_lr = dict(base_batch_size=512)
