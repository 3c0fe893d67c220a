"""End-to-end sanity check: targets + losses + model + decode overfit two synthetic images.

A small triplet CenterNet (head_width 32) is trained from scratch with Adam on two 128x128 noise
images holding 1-3 solid rectangles of two colours (= two classes). The loss must collapse and
``decode`` in triplet mode must return exactly those boxes, with the right classes, as the
top-scoring detections.
"""

from __future__ import annotations

import pytest
import torch

from centernet_ros.box_ops import box_iou
from centernet_ros.decode import DecodeConfig, decode
from centernet_ros.losses import CenterNetLoss, LossConfig
from centernet_ros.model import centernet_resnet18
from centernet_ros.targets import TargetConfig, build_targets

from devices import DEVICES  # noqa: E402

SIZE = 128
STEPS = 200
COLOURS = torch.tensor([[1.0, 0.15, 0.1], [0.1, 0.3, 1.0]])  # class 0 red, class 1 blue
SCENES = [  # (boxes x1, y1, x2, y2 in pixels, labels); rectangles do not overlap
    ([[12, 16, 70, 60], [64, 72, 120, 120], [84, 8, 124, 44]], [0, 1, 1]),
    ([[20, 28, 100, 96]], [1]),
]


def synthetic_batch(gen: torch.Generator) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    images = torch.rand(len(SCENES), 3, SIZE, SIZE, generator=gen) * 0.35  # (B, 3, H, W) noise
    boxes, labels = [], []
    for i, (bx, lb) in enumerate(SCENES):
        for (x1, y1, x2, y2), c in zip(bx, lb):
            images[i, :, y1:y2, x1:x2] = COLOURS[c].view(3, 1, 1)
        boxes.append(torch.tensor(bx, dtype=torch.float32))
        labels.append(torch.tensor(lb, dtype=torch.long))
    return (images - 0.45) / 0.25, boxes, labels


@pytest.mark.parametrize("device", DEVICES)
def test_overfit_two_images(device):
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    x, boxes, labels = synthetic_batch(gen)
    targets = build_targets(
        boxes, labels, output_size=(SIZE // 4, SIZE // 4), cfg=TargetConfig(num_classes=2, max_objects=8)
    )
    x = x.to(device)
    targets = {k: v.to(device) for k, v in targets.items()}
    model = centernet_resnet18(num_classes=2, head_width=32, pool_width=16).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    criterion = CenterNetLoss(LossConfig())

    model.train()
    history = []
    for _ in range(STEPS):
        total, terms = criterion(model(x), targets)
        opt.zero_grad(set_to_none=True)
        total.backward()
        opt.step()
        assert all(torch.isfinite(v) for v in terms.values())
        history.append(total.item())
    assert min(history[-10:]) < 0.05 * history[0], history[::10]

    model.eval()
    with torch.no_grad():
        dets = decode(model(x), DecodeConfig(mode="triplet", topk=20))
    for i, (gt_boxes, gt_labels) in enumerate(zip(boxes, labels)):
        n = len(gt_boxes)
        assert int(dets.num[i]) >= n
        top_boxes = dets.boxes[i, :n].cpu()  # (n, 4), rows sorted by score
        top_labels = dets.labels[i, :n].cpu()
        iou = box_iou(top_boxes, gt_boxes)  # (n, n)
        best_iou, match = iou.max(dim=1)
        assert sorted(match.tolist()) == list(range(n)), (top_boxes, gt_boxes)  # one detection per object
        assert (best_iou > 0.7).all(), (top_boxes, gt_boxes)
        assert torch.equal(top_labels, gt_labels[match])
        assert (dets.scores[i, :n] > 0.3).all()
