"""Tests for centernet_ros.losses against straightforward per-element / brute-force references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from centernet_ros.losses import CenterNetLoss, LossConfig, ae_loss, focal_loss, gather_feature, regr_loss, size_loss

from devices import DEVICES  # noqa: E402


# ----------------------------------------------------------------------------- references


def focal_reference(logits: np.ndarray, gt: np.ndarray, alpha: float = 2.0, beta: float = 4.0) -> float:
    """Element-by-element CornerNet focal loss in float64 python."""
    pos_sum = 0.0
    neg_sum = 0.0
    num_pos = 0
    for x, g in zip(logits.ravel().tolist(), gt.ravel().tolist()):
        p = 1.0 / (1.0 + math.exp(-x))
        if g == 1.0:
            num_pos += 1
            pos_sum += (1 - p) ** alpha * math.log(p)
        else:
            neg_sum += (1 - g) ** beta * p**alpha * math.log(1 - p)
    if num_pos == 0:
        return -neg_sum
    return -(pos_sum + neg_sum) / num_pos


def ae_reference(tl_tag, br_tag, tl_inds, br_inds, mask, margin=1.0):
    """Brute-force loops over images, objects and pairs (per-image normalisation, batch mean)."""
    b = tl_tag.shape[0]
    w = tl_tag.shape[3]
    pulls, pushes = [], []
    for i in range(b):
        objs = [k for k in range(mask.shape[1]) if mask[i, k]]
        n = len(objs)
        t = [float(tl_tag[i, 0, tl_inds[i, k] // w, tl_inds[i, k] % w]) for k in objs]
        r = [float(br_tag[i, 0, br_inds[i, k] // w, br_inds[i, k] % w]) for k in objs]
        e = [(a + c) / 2 for a, c in zip(t, r)]
        pull = sum((t[k] - e[k]) ** 2 + (r[k] - e[k]) ** 2 for k in range(n)) / n if n > 0 else 0.0
        push = 0.0
        if n > 1:
            for k in range(n):
                for j in range(n):
                    if k != j:
                        push += max(0.0, margin - abs(e[k] - e[j]))
            push /= n * (n - 1)
        pulls.append(pull)
        pushes.append(push)
    return sum(pulls) / b, sum(pushes) / b


def regr_reference(regr, gt_regr, inds, mask):
    w = regr.shape[3]
    total = 0.0
    n = 0
    for i in range(regr.shape[0]):
        for k in range(mask.shape[1]):
            if not mask[i, k]:
                continue
            n += 1
            y, x = int(inds[i, k]) // w, int(inds[i, k]) % w
            for c in range(2):
                d = abs(float(regr[i, c, y, x]) - float(gt_regr[i, k, c]))
                total += 0.5 * d * d if d < 1 else d - 0.5
    return total / n if n else 0.0


def random_heat_target(gen: torch.Generator, shape, n_pos: int) -> torch.Tensor:
    gt = torch.rand(shape, generator=gen) * 0.95
    gt[torch.rand(shape, generator=gen) < 0.5] = 0.0
    flat = gt.view(-1)
    if n_pos:
        flat[torch.randperm(flat.numel(), generator=gen)[:n_pos]] = 1.0
    return gt


def random_case(gen: torch.Generator, b=3, c=2, h=6, w=7, m=5, counts=(3, 0, 1)):
    mask = torch.zeros(b, m, dtype=torch.bool)
    for i, n in enumerate(counts):
        mask[i, :n] = True
    inds = {k: torch.randint(0, h * w, (b, m), generator=gen) for k in ("tl", "br", "ct")}
    outputs = {}
    targets = {"mask": mask}
    for k in ("tl", "br", "ct"):
        outputs[f"{k}_heat"] = torch.randn(b, c, h, w, generator=gen) * 2
        outputs[f"{k}_regr"] = torch.randn(b, 2, h, w, generator=gen)
        targets[f"{k}_heat"] = random_heat_target(gen, (b, c, h, w), 4)
        targets[f"{k}_inds"] = inds[k]
        targets[f"{k}_regr"] = torch.rand(b, m, 2, generator=gen)
    outputs["tl_tag"] = torch.randn(b, 1, h, w, generator=gen)
    outputs["br_tag"] = torch.randn(b, 1, h, w, generator=gen)
    return outputs, targets


# ----------------------------------------------------------------------------- focal


@pytest.mark.parametrize("n_pos", [0, 1, 7])
def test_focal_matches_reference(n_pos):
    gen = torch.Generator().manual_seed(n_pos)
    logits = torch.randn(2, 3, 5, 6, generator=gen) * 3
    gt = random_heat_target(gen, logits.shape, n_pos)
    got = focal_loss(logits, gt)
    ref = focal_reference(logits.double().numpy(), gt.double().numpy())
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(ref, rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("n_pos", [0, 4])
def test_focal_ignore_regions_drop_negatives_only(n_pos):
    """Cells in an ignore region (crowd, unmapped class) take no negative term on any class; positives
    there still count (reference: the same loss over the cells outside the regions plus all positives)."""
    gen = torch.Generator().manual_seed(10 + n_pos)
    logits = torch.randn(2, 3, 5, 6, generator=gen) * 3
    gt = random_heat_target(gen, logits.shape, n_pos)
    ignore = torch.zeros(2, 5, 6, dtype=torch.bool)
    ignore[0, 1:4, 2:5] = True
    ignore[1, :, 0] = True
    gt[0, 1, 2, 3] = 1.0  # a positive inside a region
    lg, g = logits.double().numpy(), gt.double().numpy()
    keep = ~ignore.numpy()[:, None].repeat(3, axis=1) | (g == 1.0)  # (B, C, H, W)
    ref = focal_reference(lg[keep], g[keep])
    got = focal_loss(logits, gt, ignore=ignore)
    assert got.item() == pytest.approx(ref, rel=1e-5, abs=1e-6)
    assert got.item() != pytest.approx(focal_loss(logits, gt).item(), rel=1e-3)  # the regions matter
    none = focal_loss(logits, gt, ignore=torch.zeros(2, 5, 6, dtype=torch.bool))
    assert none.item() == pytest.approx(focal_loss(logits, gt).item(), rel=1e-7)


def test_focal_alpha_beta_matter():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(1, 2, 4, 4, generator=gen)
    gt = random_heat_target(gen, logits.shape, 2)
    for alpha, beta in [(1.0, 2.0), (3.0, 0.0)]:
        got = focal_loss(logits, gt, alpha=alpha, beta=beta)
        ref = focal_reference(logits.double().numpy(), gt.double().numpy(), alpha, beta)
        assert got.item() == pytest.approx(ref, rel=1e-5, abs=1e-6)


def test_focal_no_positives_is_negative_sum():
    logits = torch.tensor([[[[0.0, 1.0]]]])
    gt = torch.tensor([[[[0.0, 0.5]]]])
    p0, p1 = 0.5, 1 / (1 + math.exp(-1.0))
    expected = -(p0**2 * math.log(1 - p0) + (0.5**4) * p1**2 * math.log(1 - p1))
    assert focal_loss(logits, gt).item() == pytest.approx(expected, rel=1e-6)


def test_focal_extreme_logits_finite():
    logits = torch.tensor([[[[1e4, -1e4, 80.0, -80.0]]]], requires_grad=True)
    gt = torch.tensor([[[[1.0, 1.0, 0.0, 0.0]]]])
    loss = focal_loss(logits, gt)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(logits.grad).all()
    # a positive at -1e4 is maximally wrong: loss ~ 1e4 / 2 positives
    assert loss.item() == pytest.approx(1e4 / 2 + 80.0 / 2, rel=1e-3)


def test_focal_shape_mismatch():
    with pytest.raises(ValueError, match="shapes differ"):
        focal_loss(torch.zeros(1, 2, 3, 3), torch.zeros(1, 1, 3, 3))


# ----------------------------------------------------------------------------- ae / regr


def test_gather_feature():
    feat = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).view(2, 3, 4, 5)
    inds = torch.tensor([[0, 7, 19], [3, 3, 12]])
    got = gather_feature(feat, inds)
    assert got.shape == (2, 3, 3)
    for b in range(2):
        for m in range(3):
            y, x = divmod(int(inds[b, m]), 5)
            assert torch.equal(got[b, m], feat[b, :, y, x])


@pytest.mark.parametrize("counts", [(3, 0, 1), (0, 0, 0), (5, 2, 4), (1, 1, 1)])
def test_ae_matches_bruteforce(counts):
    gen = torch.Generator().manual_seed(sum(counts))
    b, h, w, m = len(counts), 5, 6, 5
    # small tags so that many pairs are within the margin
    tl_tag = torch.randn(b, 1, h, w, generator=gen) * 0.7
    br_tag = torch.randn(b, 1, h, w, generator=gen) * 0.7
    tl_inds = torch.randint(0, h * w, (b, m), generator=gen)
    br_inds = torch.randint(0, h * w, (b, m), generator=gen)
    mask = torch.zeros(b, m, dtype=torch.bool)
    for i, n in enumerate(counts):
        mask[i, :n] = True
    pull, push = ae_loss(tl_tag, br_tag, tl_inds, br_inds, mask)
    ref_pull, ref_push = ae_reference(tl_tag, br_tag, tl_inds, br_inds, mask)
    assert pull.item() == pytest.approx(ref_pull, rel=1e-5, abs=1e-7)
    assert push.item() == pytest.approx(ref_push, rel=1e-5, abs=1e-7)
    if max(counts) < 2:
        assert push.item() == 0.0
    if max(counts) == 0:
        assert pull.item() == 0.0


def test_ae_mask_not_prefix_and_margin():
    gen = torch.Generator().manual_seed(3)
    tl_tag = torch.randn(2, 1, 4, 4, generator=gen)
    br_tag = torch.randn(2, 1, 4, 4, generator=gen)
    tl_inds = torch.randint(0, 16, (2, 6), generator=gen)
    br_inds = torch.randint(0, 16, (2, 6), generator=gen)
    mask = torch.tensor([[True, False, True, False, True, True], [False, True, False, False, True, False]])
    pull, push = ae_loss(tl_tag, br_tag, tl_inds, br_inds, mask, margin=2.5)
    ref_pull, ref_push = ae_reference(tl_tag, br_tag, tl_inds, br_inds, mask, margin=2.5)
    assert pull.item() == pytest.approx(ref_pull, rel=1e-5)
    assert push.item() == pytest.approx(ref_push, rel=1e-5)
    assert push.item() > 0


def test_ae_identical_tags():
    """Both corners with the same tag: pull 0; two objects with the same mean: push = margin."""
    tag = torch.zeros(1, 1, 3, 3)
    inds = torch.tensor([[0, 4]])
    mask = torch.tensor([[True, True]])
    pull, push = ae_loss(tag, tag, inds, inds, mask)
    assert pull.item() == 0.0
    assert push.item() == pytest.approx(1.0)


@pytest.mark.parametrize("counts", [(3, 0, 1), (0, 0, 0)])
def test_regr_matches_manual(counts):
    gen = torch.Generator().manual_seed(5)
    b, h, w, m = len(counts), 4, 5, 4
    regr = torch.randn(b, 2, h, w, generator=gen) * 2  # some |d| > 1 to hit the linear branch
    gt = torch.rand(b, m, 2, generator=gen)
    inds = torch.randint(0, h * w, (b, m), generator=gen)
    mask = torch.zeros(b, m, dtype=torch.bool)
    for i, n in enumerate(counts):
        mask[i, :n] = True
    got = regr_loss(regr, gt, inds, mask)
    assert got.item() == pytest.approx(regr_reference(regr, gt, inds, mask), rel=1e-5, abs=1e-7)


# ----------------------------------------------------------------------------- CenterNetLoss


def test_centernet_loss_combines_terms():
    gen = torch.Generator().manual_seed(11)
    outputs, targets = random_case(gen)
    cfg = LossConfig(pull_weight=0.3, push_weight=0.2, regr_weight=2.0, tl_heat_weight=1.0, br_heat_weight=0.5,
                     ct_heat_weight=2.0)
    total, terms = CenterNetLoss(cfg)(outputs, targets)
    assert set(terms) == {"focal", "pull", "push", "regr", "size", "total"}
    assert terms["size"].item() == 0.0  # no ct_size output
    focal = sum(
        w * focal_reference(outputs[f"{h}_heat"].double().numpy(), targets[f"{h}_heat"].double().numpy())
        for h, w in (("tl", 1.0), ("br", 0.5), ("ct", 2.0))
    )
    pull, push = ae_reference(outputs["tl_tag"], outputs["br_tag"], targets["tl_inds"], targets["br_inds"],
                              targets["mask"])
    regr = sum(
        regr_reference(outputs[f"{h}_regr"], targets[f"{h}_regr"], targets[f"{h}_inds"], targets["mask"])
        for h in ("tl", "br", "ct")
    )
    assert terms["focal"].item() == pytest.approx(focal, rel=1e-5)
    assert terms["pull"].item() == pytest.approx(0.3 * pull, rel=1e-5)
    assert terms["push"].item() == pytest.approx(0.2 * push, rel=1e-5)
    assert terms["regr"].item() == pytest.approx(2.0 * regr, rel=1e-5)
    assert total.item() == pytest.approx(focal + 0.3 * pull + 0.2 * push + 2.0 * regr, rel=1e-5)
    assert terms["total"].item() == pytest.approx(total.item())


def size_reference(size, gt_size, inds, mask):
    """Plain loops: mean over objects of |pred - gt| summed over log width and log height."""
    w = size.shape[3]
    total, n = 0.0, 0
    for i in range(size.shape[0]):
        for k in range(mask.shape[1]):
            if mask[i, k]:
                n += 1
                y, x = int(inds[i, k]) // w, int(inds[i, k]) % w
                total += sum(abs(float(size[i, c, y, x]) - float(gt_size[i, k, c])) for c in range(2))
    return total / n if n else 0.0


@pytest.mark.parametrize("counts", [(3, 0, 1), (0, 0, 0)])
def test_size_loss_matches_reference_and_joins_regr(counts):
    """The centre size head (``ct_size``): an L1 term on log sizes at the centres, weighted into ``regr``."""
    gen = torch.Generator().manual_seed(3)
    outputs, targets = random_case(gen, counts=counts)
    b, m = targets["mask"].shape
    outputs["ct_size"] = torch.randn(b, 2, 6, 7, generator=gen, requires_grad=True)
    targets["ct_size"] = torch.randn(b, m, 2, generator=gen)
    ref = size_reference(outputs["ct_size"].detach(), targets["ct_size"], targets["ct_inds"], targets["mask"])
    assert size_loss(outputs["ct_size"], targets["ct_size"], targets["ct_inds"], targets["mask"]).item() == \
        pytest.approx(ref, rel=1e-5, abs=1e-7)
    without = {k: v for k, v in outputs.items() if k != "ct_size"}
    _, base = CenterNetLoss(LossConfig(size_weight=0.3))(without, targets)
    total, terms = CenterNetLoss(LossConfig(size_weight=0.3))(outputs, targets)
    assert terms["size"].item() == pytest.approx(0.3 * ref, rel=1e-5, abs=1e-7)
    assert terms["regr"].item() == pytest.approx(base["regr"].item() + 0.3 * ref, rel=1e-5, abs=1e-7)
    assert total.item() == pytest.approx(base["total"].item() + 0.3 * ref, rel=1e-5, abs=1e-7)
    total.backward()
    grad = outputs["ct_size"].grad
    assert (grad.abs().sum() > 0) == (sum(counts) > 0)  # only the centres' cells get a gradient


def test_cut_objects_only_pay_for_sizes_below_their_box():
    """``targets['size_cut']`` (the crop cut the box) with ``size_cut_bound``: the target is a lower bound,
    ``max(0, gt - pred)``."""
    gen = torch.Generator().manual_seed(4)
    outputs, targets = random_case(gen, counts=(3, 0, 1))
    b, m = targets["mask"].shape
    outputs["ct_size"] = torch.randn(b, 2, 6, 7, generator=gen)
    targets["ct_size"] = torch.randn(b, m, 2, generator=gen)
    cut = torch.zeros(b, m, dtype=torch.bool)
    cut[0, 1] = True
    targets["size_cut"] = cut
    w = outputs["ct_size"].shape[3]
    total, n = 0.0, 0
    for i in range(b):
        for k in range(m):
            if targets["mask"][i, k]:
                n += 1
                y, x = int(targets["ct_inds"][i, k]) // w, int(targets["ct_inds"][i, k]) % w
                for c in range(2):
                    d = float(targets["ct_size"][i, k, c]) - float(outputs["ct_size"][i, c, y, x])
                    total += max(d, 0.0) if cut[i, k] else abs(d)
    _, terms = CenterNetLoss(LossConfig(size_weight=1.0, size_cut_bound=True))(outputs, targets)
    assert terms["size"].item() == pytest.approx(total / n, rel=1e-5)
    _, plain = CenterNetLoss(LossConfig(size_weight=1.0))(outputs, targets)  # default: plain L1 for every box
    ref = size_reference(outputs["ct_size"], targets["ct_size"], targets["ct_inds"], targets["mask"])
    assert plain["size"].item() == pytest.approx(ref, rel=1e-5)
    # a prediction above a cut box's size costs nothing
    y, x = int(targets["ct_inds"][0, 1]) // w, int(targets["ct_inds"][0, 1]) % w
    outputs["ct_size"][0, :, y, x] = targets["ct_size"][0, 1] + 3.0
    lone = {k: v[:1] for k, v in targets.items()}
    lone["mask"] = torch.zeros_like(lone["mask"])
    lone["mask"][0, 1] = True
    assert size_loss(outputs["ct_size"][:1], lone["ct_size"], lone["ct_inds"], lone["mask"],
                     lower_bound=lone["size_cut"]).item() == 0.0


def test_size_weight_validated():
    with pytest.raises(ValueError, match="size_weight"):
        LossConfig(size_weight=-1.0)
    with pytest.raises(ValueError, match="size_cut_bound"):
        LossConfig(size_cut_bound="yes")


def test_corner_ignore_maps_act_on_their_head_only():
    """``tl_ignore`` / ``br_ignore`` (cut corners) or-ed with the common ``ignore``, each on its own head."""
    gen = torch.Generator().manual_seed(5)
    outputs, targets = random_case(gen)
    b, _, h, w = targets["tl_heat"].shape
    common = torch.zeros(b, h, w, dtype=torch.bool)
    common[:, 0, :] = True
    tl_ign = torch.zeros(b, h, w, dtype=torch.bool)
    tl_ign[:, 1:3, 1:3] = True
    br_ign = torch.zeros(b, h, w, dtype=torch.bool)
    br_ign[:, -2:, -2:] = True
    cfg = LossConfig(pull_weight=0.0, push_weight=0.0, regr_weight=0.0)
    _, terms = CenterNetLoss(cfg)(outputs, {**targets, "ignore": common, "tl_ignore": tl_ign, "br_ignore": br_ign})
    expect = sum(focal_loss(outputs[f"{k}_heat"], targets[f"{k}_heat"], ignore=ign).item()
                 for k, ign in (("tl", common | tl_ign), ("br", common | br_ign), ("ct", common)))
    assert terms["focal"].item() == pytest.approx(expect, rel=1e-6)
    _, only_own = CenterNetLoss(cfg)(outputs, {**targets, "tl_ignore": tl_ign})
    expect = sum(focal_loss(outputs[f"{k}_heat"], targets[f"{k}_heat"], ignore=ign).item()
                 for k, ign in (("tl", tl_ign), ("br", None), ("ct", None)))
    assert only_own["focal"].item() == pytest.approx(expect, rel=1e-6)
    assert only_own["focal"].item() != pytest.approx(CenterNetLoss(cfg)(outputs, targets)[1]["focal"].item())


@pytest.mark.parametrize("device", DEVICES)
def test_zero_objects_finite_and_grad(device):
    gen = torch.Generator().manual_seed(1)
    outputs, targets = random_case(gen, counts=(0, 0, 0))
    for k in ("tl_heat", "br_heat", "ct_heat"):
        targets[k].zero_()
    outputs = {k: v.to(device).requires_grad_() for k, v in outputs.items()}
    total, terms = CenterNetLoss()(outputs, targets)
    assert total.device.type == device
    assert all(torch.isfinite(v) for v in terms.values())
    assert terms["pull"].item() == 0.0 and terms["push"].item() == 0.0 and terms["regr"].item() == 0.0
    total.backward()
    assert outputs["tl_heat"].grad.abs().sum() > 0
    for v in outputs.values():
        assert torch.isfinite(v.grad).all()


@pytest.mark.parametrize("device", DEVICES)
def test_gradients_flow_to_all_heads(device):
    gen = torch.Generator().manual_seed(2)
    outputs, targets = random_case(gen, counts=(3, 2, 1))
    outputs = {k: v.to(device).requires_grad_() for k, v in outputs.items()}
    targets = {k: v.to(device) for k, v in targets.items()}
    total, _ = CenterNetLoss()(outputs, targets)
    total.backward()
    for k, v in outputs.items():
        assert v.grad is not None and torch.isfinite(v.grad).all(), k
        assert v.grad.abs().sum() > 0, k


def test_half_precision_outputs_computed_in_float32():
    gen = torch.Generator().manual_seed(4)
    outputs, targets = random_case(gen)
    ref_total, _ = CenterNetLoss()(outputs, targets)
    half = {k: v.half().requires_grad_() for k, v in outputs.items()}
    total, terms = CenterNetLoss()(half, targets)
    assert total.dtype == torch.float32
    assert total.item() == pytest.approx(ref_total.item(), rel=1e-2)
    total.backward()
    assert half["ct_heat"].grad.dtype == torch.float16


def test_loss_config_validation():
    with pytest.raises(ValueError, match="-0.5"):
        LossConfig(pull_weight=-0.5)
    with pytest.raises(ValueError, match="nan"):
        LossConfig(focal_alpha=float("nan"))
    with pytest.raises(ValueError, match="push_margin"):
        LossConfig(push_margin=0.0)
