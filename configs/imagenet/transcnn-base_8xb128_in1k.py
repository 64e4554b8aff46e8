# TransCNN-Base on ImageNet-1k, 8 GPUs x 128 images, 300 epochs (paper §4.1).
# Same recipe as TransCNN-Small (see that file for every setting and where it
# comes from); only the architecture differs (Table 1: depths 3/4/8/3,
# expansion ratios 4/4/6/6).
_base_ = './transcnn-small_8xb128_in1k.py'

model = dict(backbone=dict(arch='base'))
