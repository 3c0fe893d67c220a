"""Hand-made and random decoder outputs, and checks on Detections, shared by the decode tests.

Letters: B batch, C classes, H/W map height/width, D detections per image.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from centernet_ros.decode import Detections

__all__ = ["NEG", "STRIDE", "blank", "logit", "put_point", "put_object", "to", "valid_rows", "check_layout",
           "random_outputs", "assert_matches_reference", "decode_on_every_plan"]

NEG = -1e4  # background logit: sigmoid is exactly 0 (also in fp16)
STRIDE = 4


def blank(B: int = 1, C: int = 3, H: int = 32, W: int = 32) -> dict[str, torch.Tensor]:
    out = {k: torch.full((B, C, H, W), NEG) for k in ("tl_heat", "br_heat", "ct_heat")}
    out.update({k: torch.zeros(B, 1, H, W) for k in ("tl_tag", "br_tag")})
    out.update({k: torch.zeros(B, 2, H, W) for k in ("tl_regr", "br_regr", "ct_regr")})
    return out


def logit(p: float) -> float:
    return math.log(p / (1 - p))


def put_point(out, kind: str, b: int, c: int, x: float, y: float, score: float, tag: float | None = None):
    """Keypoint at input pixel (x, y): integer cell + sub-pixel offset, as the targets encode it."""
    mx, my = x / STRIDE, y / STRIDE
    ix, iy = math.floor(mx), math.floor(my)
    out[f"{kind}_heat"][b, c, iy, ix] = logit(score)
    out[f"{kind}_regr"][b, :, iy, ix] = torch.tensor([mx - ix, my - iy])
    if tag is not None:
        out[f"{kind}_tag"][b, 0, iy, ix] = tag


def put_object(out, b, c, box, *, tag=0.0, scores=(0.9, 0.8, 0.7), center="middle"):
    x1, y1, x2, y2 = box
    put_point(out, "tl", b, c, x1, y1, scores[0], tag)
    put_point(out, "br", b, c, x2, y2, scores[1], tag)
    if center == "middle":
        put_point(out, "ct", b, c, (x1 + x2) / 2, (y1 + y2) / 2, scores[2])
    elif center is not None:
        put_point(out, "ct", b, c, center[0], center[1], scores[2])


def to(out, device, dtype=None):
    return {k: v.to(device=device, dtype=dtype if dtype is not None else v.dtype) for k, v in out.items()}


def valid_rows(det: Detections, b: int = 0):
    n = int(det.num[b])
    return det.boxes[b, :n].cpu(), det.scores[b, :n].cpu(), det.labels[b, :n].cpu()


def check_layout(det: Detections, B: int, D: int):
    assert det.boxes.shape == (B, D, 4) and det.scores.shape == (B, D) and det.labels.shape == (B, D)
    assert det.num.shape == (B,) and det.labels.dtype == torch.long and det.num.dtype == torch.long
    for b in range(B):
        n = int(det.num[b])
        assert (det.labels[b, :n] >= 0).all() and (det.labels[b, n:] == -1).all()
        assert (det.scores[b, :n] > 0).all() and (det.scores[b, n:] == 0).all()
        assert (det.boxes[b, n:] == 0).all()
        assert (det.scores[b, :-1] >= det.scores[b, 1:]).all()


def random_outputs(B=2, C=3, H=24, W=24, seed=0, sparse=False):
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k in ("tl_heat", "br_heat", "ct_heat"):
        if sparse:  # a few peaks only: fewer than top-K
            h = torch.full((B, C * H * W), NEG)
            idx = torch.randint(0, C * H * W, (B, 40), generator=g)
            h.scatter_(1, idx, torch.randn(B, 40, generator=g) * 2)
            out[k] = h.view(B, C, H, W)
        else:
            out[k] = torch.randn(B, C, H, W, generator=g) * 2
    for k in ("tl_tag", "br_tag"):
        out[k] = torch.randn(B, 1, H, W, generator=g) * 0.4
    for k in ("tl_regr", "br_regr", "ct_regr"):
        out[k] = torch.rand(B, 2, H, W, generator=g)
    return out


def assert_matches_reference(det: Detections, ref, atol=1e-3):
    """Same detections as the reference, in the same order up to swaps of rows whose scores differ
    by float rounding only (the two sigmoids may differ in the last bit)."""
    for b, (rb, rs, rl) in enumerate(ref):
        boxes, scores, labels = (t.numpy() for t in valid_rows(det, b))
        assert len(rs) == len(scores), f"image {b}: {len(scores)} detections, reference {len(rs)}"
        np.testing.assert_allclose(scores, rs, atol=1e-5)
        used = np.zeros(len(rs), dtype=bool)
        for i in range(len(scores)):
            cand = np.flatnonzero(
                ~used & (np.abs(rs - scores[i]) <= 1e-5) & (rl == labels[i])
                & (np.abs(rb - boxes[i]).max(axis=1, initial=0.0) <= atol)
            )
            assert len(cand), f"image {b} row {i}: {boxes[i]} {scores[i]} {labels[i]} not in the reference"
            used[cand[np.argmin(np.abs(cand - i))]] = True


def decode_on_every_plan(monkeypatch, out, cfg, context=None) -> Detections:
    """Decode ``out`` with ``cfg`` (host plan), check it against ``reference_decode`` and check that
    ``host_sync=False`` and the plans "copy" and "device" give bit-identical detections; returns them."""
    import dataclasses

    import centernet_ros.decode as decode_module
    from centernet_ros.decode import decode
    from centernet_ros.reference_decode import reference_decode

    host = decode(out, cfg)
    assert_matches_reference(host, reference_decode(out, cfg))
    others = [decode(out, dataclasses.replace(cfg, host_sync=False))]
    for plan in ("copy", "device"):
        with monkeypatch.context() as m:
            m.setitem(decode_module._HOST_SYNC_PLAN, "cpu", plan)
            others.append(decode(out, cfg))
    for other in others:
        assert all(torch.equal(a, b) for a, b in zip(host, other)), context
    return host
