"""One image's outputs of ONNX Runtime against PyTorch's, by output name.

Detections (``dets`` (B, N, 5), ``labels`` (B, N) and, with Mask R-CNN,
``masks`` (B, N, h, w)) are compared as one group: each PyTorch detection
is paired with a backend detection of the same label whose score agrees
within the tolerance, the one with the closest box, in order of decreasing
score (detections of equal score may come in either order, so pairing by
position would be wrong). A detection of either side without a partner is
a mismatch; boxes, scores and masks of the pairs give the relative error.
Any other output is compared elementwise: a float output (class scores) by
its relative error, an integer output (class labels) must be equal.

The relative error is the largest absolute difference divided by the
largest magnitude of PyTorch's output.
"""
from typing import Dict, List, NamedTuple

import numpy as np

DETECTIONS = ('dets', 'labels', 'masks')


class Result(NamedTuple):
    """How far one output (or the detections) of the backend is from
    PyTorch's.

    Attributes:
        name: the output's name; ``dets+labels`` (``+masks``) for the
            detections.
        rel_error: the relative error (see the module's notes).
        mismatches: integer values that differ, or detections without a
            partner.
        note: what was compared, in words.
    """
    name: str
    rel_error: float
    mismatches: int
    note: str

    def passed(self, rtol: float) -> bool:
        """Within ``rtol``, with nothing missing or mislabelled."""
        return self.mismatches == 0 and self.rel_error <= rtol


def relative_error(ref: np.ndarray, out: np.ndarray) -> float:
    """Largest ``|ref - out|`` over largest ``|ref|`` (the difference
    itself where ``ref`` is all zeros; 0 when empty)."""
    ref = np.asarray(ref, np.float64)
    if ref.size == 0:
        return 0.
    diff = float(np.abs(ref - np.asarray(out, np.float64)).max())
    scale = float(np.abs(ref).max())
    return diff / scale if scale > 0 else diff


def pair_detections(ref_dets: np.ndarray, ref_labels: np.ndarray,
                    out_dets: np.ndarray, out_labels: np.ndarray,
                    score_tol: float) -> List[tuple]:
    """Pairs (i, j) of a PyTorch and a backend detection of one image.

    Args:
        ref_dets, out_dets: (N, 5) boxes and scores.
        ref_labels, out_labels: (N, ) class labels.
        score_tol: how far the scores of a pair may be apart.
    """
    pairs, free = [], list(range(len(out_dets)))
    for i in np.argsort(-ref_dets[:, 4], kind='stable'):
        candidates = [
            j for j in free if out_labels[j] == ref_labels[i]
            and abs(out_dets[j, 4] - ref_dets[i, 4]) <= score_tol
        ]
        if candidates:
            j = min(candidates, key=lambda j: np.abs(
                out_dets[j, :4] - ref_dets[i, :4]).max())
            free.remove(j)
            pairs.append((int(i), j))
    return pairs


def compare_detections(ref: Dict[str, np.ndarray],
                       out: Dict[str, np.ndarray], rtol: float) -> Result:
    """The detections of every image of the batch (module's notes).

    Args:
        ref, out: PyTorch's and the backend's outputs by name.
        rtol: the relative error accepted; scores of a pair agree within
            it (relative to the image's highest score).
    """
    worst, unpaired, count = 0., 0, 0
    for b in range(len(ref['dets'])):
        rd, od = ref['dets'][b], out['dets'][b]
        top_score = float(np.abs(rd[:, 4]).max()) if len(rd) else 1.
        pairs = pair_detections(rd, ref['labels'][b], od, out['labels'][b],
                                rtol * top_score)
        unpaired += len(rd) + len(od) - 2 * len(pairs)
        count += len(rd)
        if not pairs:
            continue
        i, j = (list(side) for side in zip(*pairs))
        errors = [relative_error(rd[i, :4], od[j, :4]),
                  relative_error(rd[i, 4], od[j, 4])]
        if 'masks' in ref:
            errors.append(relative_error(ref['masks'][b][i],
                                         out['masks'][b][j]))
        worst = max([worst] + errors)
    name = '+'.join(k for k in DETECTIONS if k in ref)
    return Result(name, worst, unpaired,
                  f'{count} detections, {unpaired} without a partner of '
                  'the same label and score')


def compare_array(name: str, ref: np.ndarray, out: np.ndarray) -> Result:
    """One output elementwise: floats by relative error, integers equal."""
    if ref.shape != out.shape:
        return Result(name, float('inf'), max(ref.size, out.size),
                      f'shape {out.shape} against {ref.shape}')
    if ref.dtype.kind in 'biu':
        wrong = int((ref != out).sum())
        return Result(name, 0., wrong, f'{wrong} of {ref.size} values differ')
    return Result(name, relative_error(ref, out), 0, f'{ref.size} values')


def compare_outputs(ref: Dict[str, np.ndarray], out: Dict[str, np.ndarray],
                    rtol: float) -> List[Result]:
    """Every output of the backend against PyTorch's.

    Args:
        ref: PyTorch's outputs by name.
        out: the backend's outputs by name.
        rtol: the relative error accepted (detections are paired with it).

    Returns:
        list[Result]: one for the detections, if any, and one for each
        other output.
    """
    if set(ref) != set(out):
        raise KeyError(f'the backend returned {sorted(out)}, PyTorch '
                       f'{sorted(ref)}')
    grouped = {'dets', 'labels'} <= set(ref)
    results = [compare_detections(ref, out, rtol)] if grouped else []
    return results + [compare_array(name, ref[name], out[name])
                      for name in ref
                      if not (grouped and name in DETECTIONS)]
