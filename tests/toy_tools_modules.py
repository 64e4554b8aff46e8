"""A tiny regression task for the tests of ``tools/``.

Registered in mmengine's root registries so that a config of any scope can
use them: ``ToyRegressor`` (model), ``ToyRegressionDataset`` (data),
``ToyMSE`` (metric) and ``ToyRecordHook``, which writes what a run did
(first/last iteration, per-iteration losses, final weights) to
``<work_dir>/record_rank<RANK>.json`` so tests can compare runs.
"""
import json
import os
import os.path as osp
import signal
import time

import torch
import torch.nn.functional as F
from mmengine.evaluator import BaseMetric
from mmengine.hooks import Hook
from mmengine.model import BaseModel, is_model_wrapper
from mmengine.registry import DATASETS, HOOKS, METRICS, MODELS
from torch import nn
from torch.utils.data import Dataset


def toy_data(size: int, in_dim: int, seed: int):
    """Inputs and targets of a noisy linear problem, fixed by ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    inputs = torch.randn(size, in_dim, generator=gen)
    weight = torch.randn(in_dim, 1, generator=gen)
    target = inputs @ weight + 0.1 * torch.randn(size, 1, generator=gen)
    return inputs, target


@DATASETS.register_module()
class ToyRegressionDataset(Dataset):
    """``size`` samples ``dict(inputs=(in_dim,), target=(1,))``."""

    def __init__(self, size: int = 64, in_dim: int = 8, seed: int = 0):
        self.inputs, self.target = toy_data(size, in_dim, seed)
        self.metainfo = dict()

    def __len__(self):
        return len(self.inputs)

    def __getitem__(self, index):
        return dict(inputs=self.inputs[index], target=self.target[index])


@MODELS.register_module()
class ToyRegressor(BaseModel):
    """A two-layer MLP trained with mean squared error."""

    def __init__(self, in_dim=8, hidden=16, data_preprocessor=None,
                 init_cfg=None):
        super().__init__(data_preprocessor=data_preprocessor,
                         init_cfg=init_cfg)
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden), nn.Tanh(), nn.Linear(hidden, 1))

    def forward(self, inputs, target=None, mode='tensor'):
        pred = self.net(inputs)
        if mode == 'loss':
            return dict(loss=F.mse_loss(pred, target))
        if mode == 'predict':
            return [dict(pred=p, target=t) for p, t in zip(pred, target)]
        return pred


@METRICS.register_module()
class ToyMSE(BaseMetric):
    """Mean squared error of the predictions, reported as ``toy/mse``."""

    default_prefix = 'toy'

    def process(self, data_batch, data_samples):
        for sample in data_samples:
            self.results.append(
                float(((sample['pred'] - sample['target'])**2).sum()))

    def compute_metrics(self, results):
        return dict(mse=sum(results) / len(results))


@HOOKS.register_module()
class ToyRecordHook(Hook):
    """Record a training run to ``record_rank<RANK>.json`` in its work_dir.

    Args:
        sleep (float): Seconds to sleep after every iteration. Defaults to 0.
        kill_at (int, optional): SIGKILL the process right after iteration
            ``kill_at`` (1-based) and its checkpoint, as a crash or a
            preempted job would end it, at a known point. Defaults to None.
    """

    priority = 'LOWEST'  # after the CheckpointHook has saved

    def __init__(self, sleep: float = 0.0, kill_at: int = None):
        self.sleep = sleep
        self.kill_at = kill_at
        self.start_iter = None
        self.losses = []

    def before_train(self, runner):
        # After load_or_resume: a resumed run starts at the saved iteration.
        self.start_iter = runner.iter

    def after_train_iter(self, runner, batch_idx, data_batch=None,
                         outputs=None):
        self.losses.append(float(outputs['loss'].detach()))
        if self.sleep:
            time.sleep(self.sleep)
        if self.kill_at is not None and runner.iter + 1 == self.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    def after_train(self, runner):
        model = runner.model
        if is_model_wrapper(model):
            model = model.module
        record = dict(
            rank=runner.rank,
            world_size=runner.world_size,
            start_iter=self.start_iter,
            end_iter=runner.iter,
            losses=self.losses,
            weights={k: v.tolist() for k, v in model.state_dict().items()})
        path = osp.join(runner.work_dir, f'record_rank{runner.rank}.json')
        with open(path, 'w') as f:
            json.dump(record, f)
