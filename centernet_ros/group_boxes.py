"""Group-box suppression: a detection that encloses two distinct detections of its class is dropped.

Legend: B batch, D detections per image.

Why (ours, not in the paper): a corner-pair decoder can pair one object's top-left corner with another
object's bottom-right corner.  In a queue of cars the resulting "group box" spans two or three cars, and
the paper's centre check passes it whenever some car's centre keypoint lies in its central region
(Duan et al., "CenterNet: Keypoint Triplets for Object Detection", ICCV 2019, section 3.2).
``DecodeConfig.exclusive_centres`` and ``size_ratio`` remove most of them before NMS; what remains is
a box that holds the very cars it was made of, each detected on its own.  This step looks at the
detections after NMS: box ``a`` is a group box when there are two other detections ``j`` and ``k``
such that

- ``j`` and ``k`` have ``a``'s class and score at least ``score_ratio`` times ``a``'s score;
- each lies inside ``a``: at least ``contain`` of its (non-zero) area is inside ``a``;
- all three are distinct objects: IoU(a, j), IoU(a, k) and IoU(j, k) are below ``distinct_iou``
  (0.5, the COCO match threshold), so two copies of one car, or a car and its own slightly larger
  box, do not count.

The score guard matters: on close-up photos a large car's box holds weak boxes of its own parts
(a wheel, a window) at a fraction of its score; measured on the bundled model, a ratio of 0.3 cost
1.3 AP on the Open Images valid split and 0.5 none (models/README.md, "Group-box suppression").

The rule sees the detections NMS returns (at most ``max_per_image``) and does not refill the rows it
drops; the decoder applies the score threshold after it, so detections below the threshold still count
as enclosed (a 0.30 box around two 0.16 cars is dropped at threshold 0.22).  A ratio above 1 asks the
enclosed detections to outscore the box.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .box_ops import box_area, box_intersection

__all__ = ["group_box_mask"]


def group_box_mask(
    boxes: Tensor, scores: Tensor, labels: Tensor, *, score_ratio: float, contain: float = 0.9,
    distinct_iou: float = 0.5,
) -> Tensor:
    """Which detections are group boxes (see the module docstring for the rule).

    Args:
        boxes: ``Tensor[B, D, 4]`` (x1, y1, x2, y2), any consistent unit (pixels); float.
        scores: ``Tensor[B, D]`` detection scores.
        labels: ``Tensor[B, D]`` int class ids; rows with a label < 0 are empty slots: they are never
            group boxes and never count as enclosed detections.
        score_ratio: an enclosed detection counts when its score >= ``score_ratio`` x the box's score;
            >= 0.
        contain: share of an enclosed detection's area that must lie inside the box, in (0, 1].
        distinct_iou: detections with IoU >= this are the same object, in (0, 1].

    Returns:
        ``Tensor[B, D]`` bool, True where the row is a group box; on the inputs' device.  Sync-free
        (no host reads), so it runs inside the ``host_sync=False`` decode.

    Raises:
        ValueError: bad shapes or parameter values (quoted).
    """
    if boxes.dim() != 3 or boxes.shape[-1] != 4:
        raise ValueError(f"boxes must be (B, D, 4), got {tuple(boxes.shape)}")
    if scores.shape != boxes.shape[:2] or labels.shape != boxes.shape[:2]:
        raise ValueError(f"scores {tuple(scores.shape)} and labels {tuple(labels.shape)} must be "
                         f"{tuple(boxes.shape[:2])} for boxes {tuple(boxes.shape)}")
    if isinstance(score_ratio, bool) or not 0.0 <= score_ratio < float("inf"):
        raise ValueError(f"score_ratio must be a finite number >= 0, got {score_ratio!r}")
    for name, v in (("contain", contain), ("distinct_iou", distinct_iou)):
        if isinstance(v, bool) or not 0.0 < v <= 1.0:
            raise ValueError(f"{name} must be in (0, 1], got {v!r}")
    B, D = scores.shape
    if B * D == 0:
        return torch.zeros(B, D, dtype=torch.bool, device=boxes.device)
    boxes = boxes.float()
    scores = scores.float()
    valid = labels >= 0  # (B, D)
    area = box_area(boxes)  # (B, D)
    inter = box_intersection(boxes, boxes)  # (B, D, D): [b, a, j]
    union = area.unsqueeze(2) + area.unsqueeze(1) - inter
    distinct = inter < distinct_iou * union  # (B, D, D): IoU < distinct_iou, written without a division
    # enc[b, a, j]: j is enclosed in a and counts for it
    enc = labels.unsqueeze(2) == labels.unsqueeze(1)  # same class
    enc &= valid.unsqueeze(2) & valid.unsqueeze(1)
    enc &= scores.unsqueeze(1) >= score_ratio * scores.unsqueeze(2)
    enc &= inter >= contain * area.unsqueeze(1)
    enc &= (area > 0).unsqueeze(1)  # so a zero-area a is not enclosed in itself either
    enc &= distinct  # j is not a itself nor a copy of it (IoU(a, a) = 1 for a box with area)
    # a is a group box when two enclosed detections are distinct from each other
    e = enc.float()
    pairs = torch.bmm(e, distinct.float()).mul_(e)  # (B, D, D): [a, k] = #j enclosed in a, distinct from k
    return pairs.amax(2) > 0
