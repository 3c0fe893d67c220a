"""The Dataset wrapper (network inputs and targets), collate and normalisation of uint8 batches."""
from __future__ import annotations

import pytest
import torch

from centernet_ros.augment import letterbox_sample
from centernet_ros.data import CenterNetDataset, collate, normalize_images
from centernet_ros.datasets import YoloDataset
from dataset_files import yolo_root


def test_centernet_dataset_items_and_collate(tmp_path):
    from centernet_ros.targets import TargetConfig, build_image_targets

    root = yolo_root(tmp_path, {"img0": "1 0.5 0.5 0.5 0.5\n0 0.2 0.3 0.2 0.3\n"}, images=("img0", "img1", "img2"))
    base = YoloDataset(root, "train")
    tc = TargetConfig(num_classes=2, max_objects=8)
    ev = CenterNetDataset(base, input_size=(64, 96), train=False, target_cfg=tc)
    it = ev[0]
    assert it["image"].shape == (3, 64, 96) and it["image"].dtype == torch.float32
    ref = build_image_targets(it["boxes"], it["labels"], output_size=(16, 24), cfg=tc)
    for k, v in ref.items():
        torch.testing.assert_close(it["targets"][k], v)
    raw = CenterNetDataset(base, input_size=(64, 96), train=False, normalize=False)[0]
    assert raw["image"].dtype == torch.uint8 and "targets" not in raw
    lb_img = letterbox_sample(base[0].image, base[0].boxes, size=(64, 96))[0]
    torch.testing.assert_close(raw["image"], torch.from_numpy(lb_img).permute(2, 0, 1))  # RGB planes, CHW
    torch.testing.assert_close(normalize_images(raw["image"][None])[0], it["image"])
    # letterbox numbers: 60x40 -> scale 1.6, offset (0, 0)
    assert float(it["scale"]) == pytest.approx(1.6) and it["orig_size"].tolist() == [40, 60]

    tr = CenterNetDataset(base, input_size=(64, 64), train=True, target_cfg=tc, indices=[0, 2])
    assert len(tr) == 2 and tr.augment.output_size == (64, 64)
    batch = collate([tr[0], tr[1]])
    assert batch["image"].shape == (2, 3, 64, 64)
    assert batch["targets"]["tl_heat"].shape == (2, 2, 16, 16) and batch["targets"]["mask"].shape == (2, 8)
    assert len(batch["boxes"]) == 2 and batch["boxes"][1].shape == (0, 4)  # img2 has no labels
    assert batch["offset"].shape == (2, 2)
    with pytest.raises(ValueError, match="num_classes=3"):
        CenterNetDataset(base, train=True, target_cfg=TargetConfig(num_classes=3))
    with pytest.raises(ValueError, match="100"):
        CenterNetDataset(base, input_size=(100, 64), train=True)


def test_training_items_are_repeatable_with_a_seed(tmp_path):
    root = yolo_root(tmp_path, {"img0": "1 0.5 0.5 0.5 0.5\n"})
    ds = CenterNetDataset(YoloDataset(root, "train"), input_size=(64, 64), train=True)

    def run():
        torch.manual_seed(123)
        loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=1, collate_fn=collate)
        return [b["image"] for b in loader]

    a, b = run(), run()
    torch.testing.assert_close(a[0], b[0])


def test_mosaic_items_draw_partners_from_their_own_dataset(tmp_path):
    """mosaic_prob 1: every item is a mosaic whose other cells come from the same dataset of a
    MixedDataset (dataset A holds only class-0 boxes, B only class-1 boxes); mosaic_prob 0 draws nothing
    extra, so its items equal plain augment() with the same seed."""
    import numpy as np

    from centernet_ros.augment import AugmentConfig, augment
    from centernet_ros.mixing import MixedDataset

    a = YoloDataset(yolo_root(tmp_path / "a", {f"img{i}": "0 0.5 0.5 0.9 0.9\n" for i in range(3)},
                              images=("img0", "img1", "img2")), "train")
    b = YoloDataset(yolo_root(tmp_path / "b", {"img0": "1 0.5 0.5 0.9 0.9\n", "img1": "1 0.4 0.5 0.6 0.8\n"}), "train")
    mixed = MixedDataset([a, b], names=["a", "b"])
    cfg = AugmentConfig(mosaic_prob=1.0, scale_range=(0.8, 1.0), min_box_size=1.0)
    ds = CenterNetDataset(mixed, input_size=(64, 64), train=True, augment=cfg, cache_images=True)
    assert ds._mosaic_pool(1).tolist() == [0, 1, 2] and ds._mosaic_pool(4).tolist() == [3, 4]
    counts = {0: 0, 1: 0}
    for pos in range(len(mixed)):
        for seed in range(8):
            it = ds[(pos, seed)]
            assert it["image"].shape == (3, 64, 64)
            labels = set(it["labels"].tolist())
            assert labels <= {0 if pos < 3 else 1}
            counts[0 if pos < 3 else 1] += len(it["labels"])
    assert counts[0] > 24 and counts[1] > 16  # several cells' boxes per item
    plain = CenterNetDataset(mixed, input_size=(64, 64), train=True, augment=AugmentConfig(scale_range=(0.8, 1.0)),
                             normalize=False)
    it = plain[(4, 11)]
    s = mixed[4]
    ref = augment(s.image, s.boxes, s.labels, cfg=plain.augment, rng=np.random.default_rng(11))
    torch.testing.assert_close(it["image"], torch.from_numpy(ref[0]).permute(2, 0, 1))
    torch.testing.assert_close(it["boxes"], torch.from_numpy(ref[1]))


@pytest.mark.parametrize(
    "device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA"))]
)
def test_normalize_images_on_device(device):
    from centernet_ros.preprocess import MEAN, STD

    x = torch.randint(0, 256, (2, 3, 5, 7), dtype=torch.uint8, device=device)
    got = normalize_images(x, dtype=torch.float16)
    assert got.device.type == device and got.dtype == torch.float16
    ref = (x.cpu().double() / 255 - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    torch.testing.assert_close(got.cpu().double(), ref, atol=2e-3, rtol=2e-3)
    assert normalize_images(torch.zeros(0, 3, 4, 4, dtype=torch.uint8, device=device)).shape == (0, 3, 4, 4)
