"""TransCNN models. Importing this package registers them (see downstream)
and the authors' released classifiers (see pretrain_hub)."""
from .blocks import (ConvStem, InvertedResidual, TransCNNBlock,
                     TwoBranchDownsample)
from .downstream import register_in_downstream_scopes
from .grids import grid_sizes_for_input
from .hmhsa import HMHSA, merge_tokens, parse_grid_sizes
from .pretrain_hub import register_released_classifiers
from .pretrained import (LoadReport, load_backbone_checkpoint,
                         read_checkpoint)
from .released import RELEASED, convert_released
from .released_blocks import RELEASED_VARIANTS, ReleasedHMHSA
from .transcnn import VARIANTS, TransCNN

register_in_downstream_scopes()
register_released_classifiers()

__all__ = [
    'HMHSA', 'TransCNN', 'ConvStem', 'InvertedResidual',
    'TwoBranchDownsample', 'TransCNNBlock', 'merge_tokens',
    'parse_grid_sizes', 'load_backbone_checkpoint', 'LoadReport',
    'read_checkpoint',
    'grid_sizes_for_input', 'RELEASED', 'convert_released', 'VARIANTS',
    'RELEASED_VARIANTS', 'ReleasedHMHSA'
]
