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
