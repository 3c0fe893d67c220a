"""Several datasets in one run: class maps, ignore regions, weighted resumable sampling."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from centernet_ros.augment import AugmentConfig
from centernet_ros.coco_dataset import CocoDataset
from centernet_ros.data import CenterNetDataset
from centernet_ros.datasets import DetectionDataset, Sample
from centernet_ros.mixing import (ClassMappedDataset, DatasetSpec, EpochSampler, MixedDataset, load_spec_dataset,
                                  resolve_class_map)
from centernet_ros.targets import TargetConfig

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
TRAFFIC = SHARED / "traffic-cctv"
MODEL = ["Ambulance", "Bus", "Car", "Motorcycle", "Truck"]


class Toy(DetectionDataset):
    """In-memory dataset: image i is 64x64 grey with boxes[i]."""

    def __init__(self, names, boxes, labels):
        self.class_names = list(names)
        self._b, self._l = boxes, labels
        self.image_paths = [Path(f"img{i}.png") for i in range(len(boxes))]
        self.image_ids = list(range(len(boxes)))

    def __getitem__(self, i):
        img = np.full((64, 64, 3), 100 + i, np.uint8)
        return Sample(img, np.asarray(self._b[i], np.float32).reshape(-1, 4), np.asarray(self._l[i], np.int64),
                      i, str(self.image_paths[i]))


def test_resolve_class_map_and_its_errors():
    lut = resolve_class_map(["car", "van", "big bus"], MODEL, {"car": "Car", "van": None, "big bus": "Bus"})
    assert lut.tolist() == [2, -1, 1]
    assert resolve_class_map(MODEL, MODEL, None).tolist() == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match=r"does not say what to do with dataset classes \['van'\]"):
        resolve_class_map(["car", "van"], MODEL, {"car": "Car"})
    with pytest.raises(ValueError, match=r"class_map keys \['lorry'\] are not classes of the dataset"):
        resolve_class_map(["car"], MODEL, {"car": "Car", "lorry": "Truck"})
    with pytest.raises(ValueError, match=r"class_map values \['Tram'\] are not model classes"):
        resolve_class_map(["car"], MODEL, {"car": "Tram"})
    with pytest.raises(ValueError, match="give a class_map"):
        resolve_class_map(["car"], MODEL, None)
    with pytest.raises(ValueError, match="weight must be a number > 0, got 0"):
        DatasetSpec(path="x", weight=0)
    with pytest.raises(ValueError, match="format must be 'yolo' or 'coco', got 'voc'"):
        DatasetSpec(path="x", format="voc")


def test_unmapped_classes_become_ignore_regions_not_background():
    base = Toy(["car", "van"], [[[0, 0, 10, 10], [20, 20, 40, 40], [5, 5, 8, 8]]], [[0, 1, 0]])
    ds = ClassMappedDataset(base, MODEL, {"car": "Car", "van": None})
    s = ds[0]
    assert s.labels.tolist() == [2, 2]
    np.testing.assert_array_equal(s.boxes, [[0, 0, 10, 10], [5, 5, 8, 8]])
    np.testing.assert_array_equal(s.ignore, [[20, 20, 40, 40]])
    # through the training pipeline: no heatmap loss there (targets' ignore map), no object either
    tc = TargetConfig(num_classes=5)
    item = CenterNetDataset(ds, input_size=(64, 64), train=False, target_cfg=tc)[0]
    ign = item["targets"]["ignore"]  # (16, 16)
    assert ign[5:10, 5:10].all() and ign.sum() == 25
    assert int(item["targets"]["mask"].sum()) == 2
    assert item["targets"]["ct_heat"][:, 7, 7].max() < 1.0  # the van's centre is no positive


def test_coco_crowd_regions_are_ignore_regions(tmp_path):
    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((360, 640, 3), np.uint8))
    js = {"images": [{"id": 7, "file_name": "a.png", "width": 640, "height": 360}],
          "categories": [{"id": 3, "name": "car"}],
          "annotations": [{"id": 1, "image_id": 7, "category_id": 3, "bbox": [363.6, 191.7, 276.4, 168.3],
                           "iscrowd": 0, "area": 1.0},
                          {"id": 2, "image_id": 7, "category_id": 3, "bbox": [140, 80, 400, 245], "iscrowd": 1,
                           "area": 1.0}]}
    (tmp_path / "a.json").write_text(json.dumps(js))
    s = CocoDataset(tmp_path, tmp_path / "a.json")[0]
    assert s.labels.tolist() == [0]
    np.testing.assert_allclose(s.ignore, [[140, 80, 540, 325]])
    s2 = CocoDataset(tmp_path, tmp_path / "a.json", include_crowd=True)[0]
    assert s2.labels.tolist() == [0, 0] and s2.ignore is None


def test_epoch_sampler_weights_determinism_and_resume():
    sam = EpochSampler([10, 90], [1.0, 1.0], 40, seed=3)
    order = sam.order(0)
    assert order.shape == (40, 2)
    assert (order[:, 0] < 10).sum() == 20  # 1:1 weights -> 20 draws from each dataset
    first = order[order[:, 0] < 10, 0]
    assert np.bincount(first, minlength=10).tolist() == [2] * 10  # whole passes: each image twice
    second = order[order[:, 0] >= 10, 0]
    assert len(set(second.tolist())) == 20  # 20 of 90: no image twice
    assert np.array_equal(order, EpochSampler([10, 90], [1.0, 1.0], 40, seed=3).order(0))
    assert not np.array_equal(order, sam.order(1))
    assert not np.array_equal(order, EpochSampler([10, 90], [1.0, 1.0], 40, seed=4).order(0))
    sam.set_position(0, 16)
    assert list(sam) == [tuple(r) for r in order[16:].tolist()] and len(sam) == 24
    # DDP: ranks split the remaining draws without overlap
    r0 = EpochSampler([10, 90], [1.0, 1.0], 40, seed=3, rank=0, world=2)
    r1 = EpochSampler([10, 90], [1.0, 1.0], 40, seed=3, rank=1, world=2)
    assert sorted(list(r0) + list(r1)) == sorted(tuple(r) for r in order.tolist())
    assert EpochSampler([5, 5], [3.0, 1.0], 8).counts() == [6, 2]
    with pytest.raises(ValueError, match="at least one image"):
        EpochSampler([0, 5], [1.0, 1.0], 8)


def test_seeded_augmentation_does_not_depend_on_workers_or_order():
    base = Toy(MODEL, [[[4, 4, 40, 30]], [[10, 10, 60, 60]]], [[1], [2]])
    ds = CenterNetDataset(base, input_size=(64, 64), train=True, augment=AugmentConfig(), normalize=False)
    a, b = ds[(0, 123)], ds[(1, 5)]
    a2 = ds[(0, 123)]
    assert torch.equal(a["image"], a2["image"]) and torch.equal(a["boxes"], a2["boxes"])
    assert not torch.equal(ds[(0, 124)]["image"], a["image"])
    loader = torch.utils.data.DataLoader(ds, batch_size=None, sampler=[(0, 123), (1, 5)], num_workers=1)
    got = list(loader)
    assert torch.equal(got[0]["image"], a["image"]) and torch.equal(got[1]["image"], b["image"])


def test_mixed_dataset_locates_images():
    a = Toy(MODEL, [[[0, 0, 5, 5]]] * 3, [[0]] * 3)
    b = Toy(MODEL, [[[0, 0, 6, 6]]] * 2, [[1]] * 2)
    m = MixedDataset([a, b], names=["a", "b"])
    assert len(m) == 5 and m.locate(3) == (1, 0) and m[4].labels.tolist() == [1]
    with pytest.raises(IndexError):
        m[5]
    with pytest.raises(ValueError, match="has classes"):
        MixedDataset([a, Toy(["x"], [[]], [[]])])


@pytest.mark.skipif(not TRAFFIC.is_dir(), reason=f"{TRAFFIC} not found")
def test_traffic_cctv_with_the_shipped_class_map():
    import yaml

    repo = Path(__file__).resolve().parents[1]
    cfg = yaml.safe_load((repo / "config" / "train_vehicles_cpu.yaml").read_text())
    spec = DatasetSpec(path=str(TRAFFIC), split="valid", class_map=str(repo / cfg["data"]["val"][1]["class_map"]),
                       limit_images=20)
    ds = load_spec_dataset(spec, MODEL)
    assert len(ds) == 20 and ds.class_names == MODEL
    labels = np.concatenate([ds[i].labels for i in range(20)])
    assert set(labels.tolist()) <= {1, 2, 4} and (labels == 2).sum() > 0  # Bus, Car, Truck only


def test_image_cache_gives_the_same_items():
    base = Toy(MODEL, [[[4, 4, 40, 30]], [[10, 10, 60, 60]]], [[1], [2]])
    plain = CenterNetDataset(base, input_size=(64, 64), train=True, normalize=False)
    cached = CenterNetDataset(base, input_size=(64, 64), train=True, normalize=False, cache_images=True)
    assert cached.caches_images and not plain.caches_images
    cached.fill_cache()
    for key in [(0, 1), (1, 2), (0, 3)]:
        a, b = plain[key], cached[key]
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["boxes"], b["boxes"])
    with pytest.raises(ValueError, match="cache_images=True"):
        plain.fill_cache()
