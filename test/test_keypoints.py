"""Heatmap peaks and top-k keypoints: the max filter, the peak test and the exact top-k selection
(tensor and numpy) against plain max-pooling and a stable sort."""

from __future__ import annotations

import pytest
import torch

from centernet_ros.keypoints import _max_filter, _peak_topk, _peak_topk_numpy, _peak_values

from devices import DEVICES  # noqa: E402


@pytest.mark.parametrize("kernel", [1, 3, 5])
def test_separable_max_filter_equals_max_pool(kernel):
    g = torch.Generator().manual_seed(10)
    x = torch.randn(2, 3, 9, 7, generator=g)
    x[0, 0, 2:5, 2:5] = 1.5  # plateau
    pooled = torch.nn.functional.max_pool2d(x, kernel, stride=1, padding=(kernel - 1) // 2)
    assert torch.equal(_max_filter(x, kernel, separable=True), pooled)
    assert torch.equal(_max_filter(x, kernel, separable=False), pooled)


@pytest.mark.parametrize("shape", [(1, 1, 1, 6), (1, 2, 6, 1), (2, 1, 2, 2), (1, 3, 4, 130), (2, 3, 2, 3), (1, 2, 5, 2)])
@pytest.mark.parametrize("kernel", [3, 5, 7])
def test_separable_max_filter_small_maps(shape, kernel):
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(11))
    pooled = torch.nn.functional.max_pool2d(x, kernel, stride=1, padding=(kernel - 1) // 2)
    assert torch.equal(_max_filter(x, kernel, separable=True), pooled)


@pytest.mark.parametrize("device", DEVICES)
def test_peak_values_and_topk_match_a_stable_sort(device):
    g = torch.Generator().manual_seed(12)
    prob = torch.sigmoid((torch.randn(3, 4, 16, 20, generator=g) * 2).round())  # plateaus and ties
    prob[1] = 0.0  # a map without any positive peak: only fillers
    hmax = torch.nn.functional.max_pool2d(prob, 3, stride=1, padding=1)
    is_peak = hmax == prob
    pv = _peak_values(prob.clone().to(device), 3).cpu()
    assert torch.equal(pv[is_peak], prob[is_peak]) and bool((pv[~is_peak] <= 0).all())
    for k in (1, 7, 70, 4 * 16 * 20):
        scores, inds = (t.cpu() for t in _peak_topk(pv.to(device), k))
        if device == "cpu":  # the numpy selection of the CPU path: the same peaks in the same order
            s_np, i_np = _peak_topk_numpy(pv, k)
            m = (scores > 0).sum(1, keepdim=True)
            real = torch.arange(k) < m  # (3, k) the positive peaks; fillers may differ
            assert torch.equal(torch.from_numpy(s_np), scores)
            assert torch.equal(torch.from_numpy(i_np)[real], inds[real])
        assert scores.shape == inds.shape == (3, k)
        for n in range(3):
            flat = torch.where(is_peak[n], prob[n], -1.0).flatten()
            order = torch.sort(flat, descending=True, stable=True).indices[:k]  # score desc, index asc
            m = int((flat[order] > 0).sum())  # positive peaks; the rest are fillers
            assert torch.equal(inds[n, :m], order[:m]) and torch.equal(scores[n, :m], flat[order[:m]])
            assert bool((scores[n, m:] == 0).all())
            assert len(set(inds[n].tolist())) == k  # distinct positions
