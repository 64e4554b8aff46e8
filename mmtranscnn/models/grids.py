"""Choosing grid sizes for an input size (§3.2: more levels for larger inputs).

With a fixed G0, the last level attends over (H0/G0) x (W0/G0) merged tokens
from every query, so its cost grows with the square of the pixel count.
Adding levels with the same grid keeps that last map small, so every level
costs O(N * G^2) and the whole block grows linearly with the pixels.
"""
import math
from typing import Sequence, Tuple

STAGE_STRIDES = (4, 8, 16, 32)


def grid_sizes_for_input(height: int,
                         width: int,
                         base: Sequence = (16, 8, 4, 0),
                         max_last_side: int = 16) -> Tuple:
    """Per-stage grid sizes for a ``height`` x ``width`` input.

    Each hierarchical stage keeps its base grid ``G`` at every level and
    adds levels ``(G, G, ...)`` until the merged map of the last level has
    at most ``max_last_side`` tokens along each side; stages whose base is
    0 stay plain.

    Args:
        height, width: input image size.
        base: one grid size per stage (ints; 0 for plain). Default: the
            paper's COCO setting (16, 8, 4, 0).
        max_last_side: the largest side of the last level's token map.

    Returns:
        tuple: one entry per stage, a tuple of grid sizes or 0.
    """
    if len(base) != len(STAGE_STRIDES):
        raise ValueError(f'base must have {len(STAGE_STRIDES)} entries, got '
                         f'{base!r}')
    if max_last_side < 1:
        raise ValueError(f'max_last_side must be >= 1, got {max_last_side}')
    result = []
    for g, stride in zip(base, STAGE_STRIDES):
        if not g:
            result.append(0)
            continue
        side = max(math.ceil(height / stride), math.ceil(width / stride))
        levels = [g]
        side = math.ceil(side / g)
        while side > max_last_side and g > 1:
            levels.append(g)
            side = math.ceil(side / g)
        result.append(tuple(levels))
    return tuple(result)
