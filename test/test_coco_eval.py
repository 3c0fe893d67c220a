"""A COCO JSON dataset is scored as pycocotools scores it on that JSON (issue 12 section 2).

Each case is a COCO JSON written here with its image files and a list of detections in the file's terms
(image id, category id, x1, y1, x2, y2 in the JSON's pixels, score). The detections enter the evaluation
below the model (``evaluate.evaluate_predictions``, as ``centernet-eval`` feeds them) in model terms (dataset
index, label, pixels of the decoded file); the reference is pycocotools run by hand on the JSON and the
same detections. Metrics must agree to 1e-6, and the evaluator's COCO results (``detections.json``) must
be the case's detections.
"""
from __future__ import annotations

import contextlib
import io
import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from centernet_ros.coco_dataset import CocoDataset
from centernet_ros.evaluate import evaluate_predictions, write_detections
from centernet_ros.coco_eval import CocoJsonEvaluator
from centernet_ros.evaluation import FD_IOU_THRESHOLDS, DetectionEvaluator

CAR = [363.6, 191.7, 276.4, 168.3]  # issue 12: the car (x, y, w, h) and the crowd region
CROWD = [140, 80, 400, 245]
ISSUE_DETS = [(363.6, 191.7, 533.2, 319.3, 0.257), (147.3, 87.6, 533.2, 319.3, 0.207), (363.6, 191.7, 640, 360, 0.19)]


def _ann(i, image_id, cat, bbox, **extra):
    return {"id": i, "image_id": image_id, "category_id": cat, "bbox": bbox,
            "area": extra.pop("area", bbox[2] * bbox[3]), "iscrowd": extra.pop("iscrowd", 0), **extra}


def _issue_case():
    js = {"images": [{"id": 1, "file_name": "cam.png", "width": 640, "height": 360}],
          "categories": [{"id": 1, "name": "car"}],
          "annotations": [_ann(1, 1, 1, CAR), _ann(2, 1, 1, CROWD, iscrowd=1)]}
    return js, {"cam.png": (360, 640)}, [(1, 1, *d) for d in ISSUE_DETS]


def _ids_case():
    """Ids not starting at 1, unsorted categories, images without annotations, class-specific crowds,
    'area' unlike w*h, an 'ignore' flag, a zero-width box, a box past the image edge."""
    js = {
        "images": [{"id": 1000, "file_name": "a.png", "width": 320, "height": 240},
                   {"id": 17, "file_name": "b.png", "width": 320, "height": 240},
                   {"id": 0, "file_name": "empty_with_dets.png", "width": 160, "height": 120},
                   {"id": 5, "file_name": "empty.png", "width": 160, "height": 120}],
        "categories": [{"id": 12, "name": "bus"}, {"id": 3, "name": "car"}, {"id": 7, "name": "truck"}],
        "annotations": [
            _ann(101, 1000, 3, [10, 10, 60, 40]),
            _ann(102, 1000, 3, [100, 100, 30, 30], area=900.0 * 4),  # 30x30 box, 'area' says medium+ (3600)
            _ann(103, 1000, 12, [150, 20, 120, 90]),
            _ann(104, 1000, 3, [140, 10, 150, 110], iscrowd=1),  # a car crowd over the bus
            _ann(105, 17, 7, [20, 30, 100, 80], ignore=1),  # 'ignore' without iscrowd: pycocotools scores it
            _ann(106, 17, 12, [200, 100, 0, 40]),  # zero width: never matched, a missed bus for pycocotools
            _ann(107, 17, 3, [250, 150, 72, 90]),  # reaches 2 px past the right edge (clipped by the dataset)
            _ann(108, 17, 7, [10, 150, 40, 40], area=500.0),  # 40x40 box, 'area' says small
        ],
    }
    dets = [
        (1000, 3, 11, 9, 71, 50, 0.9), (1000, 3, 100, 100, 130, 130, 0.4),
        (1000, 12, 150, 20, 270, 110, 0.8),
        (1000, 12, 160, 30, 280, 100, 0.7),  # a bus detection inside the car crowd: a false positive
        (1000, 3, 145, 15, 280, 110, 0.6),  # a car detection inside the car crowd: ignored
        (17, 7, 20, 30, 120, 110, 0.95), (17, 7, 12, 148, 50, 192, 0.5),
        (17, 3, 248, 150, 320, 240, 0.85), (17, 12, 200, 100, 203, 140, 0.3),
        (0, 3, 10, 10, 50, 50, 0.99),  # an image without annotations: a false positive
    ]
    files = {im["file_name"]: (im["height"], im["width"]) for im in js["images"]}
    return js, files, dets


def _rescaled_case():
    """Issue 12 section 3 seen by the evaluation: the JSON says 1280x720, the file is 640x360."""
    js = {"images": [{"id": 4, "file_name": "cam.jpg", "width": 1280, "height": 720}],
          "categories": [{"id": 1, "name": "car"}],
          "annotations": [_ann(1, 4, 1, [800, 400, 400, 300]), _ann(2, 4, 1, [10, 10, 100, 80])]}
    dets = [(4, 1, 810, 390, 1200, 700, 0.9), (4, 1, 500, 500, 600, 600, 0.8), (4, 1, 10, 12, 108, 92, 0.7)]
    return js, {"cam.jpg": (360, 640)}, dets


CASES = {"issue_crowd": _issue_case, "ids_areas_crowds_empty": _ids_case, "rescaled": _rescaled_case}


def _write(tmp_path: Path, js: dict, files: dict) -> tuple[Path, Path]:
    for name, (h, w) in files.items():
        cv2.imwrite(str(tmp_path / name), np.full((h, w, 3), 90, np.uint8))
    path = tmp_path / "annotations.json"
    path.write_text(json.dumps(js))
    return tmp_path, path


def _by_hand(json_path, results, iou_thrs=None) -> COCOeval:
    """pycocotools as its README runs it, on the JSON and a results list (or results file)."""
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(json_path))
        ev = COCOeval(gt, gt.loadRes(results), "bbox")
        if iou_thrs is not None:
            ev.params.iouThrs = iou_thrs
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev


def _expected(json_path, results) -> dict:
    ev, fd = _by_hand(json_path, results), _by_hand(json_path, results, FD_IOU_THRESHOLDS)
    undef = lambda v: math.nan if v == -1 else float(v)  # noqa: E731 - pycocotools marks undefined as -1
    keys = ("ap", "ap50", "ap75", "ap_small", "ap_medium", "ap_large")
    out = {k: undef(v) for k, v in zip(keys, ev.stats[:6])}
    out.update({k: 1 - undef(v) for k, v in zip(("fd", "fd_small", "fd_medium", "fd_large"), fd.stats[[0, 3, 4, 5]])})
    prec = ev.eval["precision"][:, :, :, 0, -1]  # (T, R, K)
    names = {c["id"]: c["name"] for c in ev.cocoGt.dataset["categories"]}
    for k, cid in enumerate(ev.params.catIds):
        p = prec[:, :, k]
        out[names[cid]] = float(p[p > -1].mean()) if (p > -1).any() else math.nan
    return out


def _assert_agrees(result, expected: dict) -> None:
    got = {k: getattr(result, k) for k in expected if hasattr(result, k)}
    got.update(result.per_class_ap)
    assert set(got) == set(expected)
    for k, v in expected.items():
        assert (math.isnan(v) and math.isnan(got[k])) or abs(got[k] - v) <= 1e-6, (k, got[k], v)


def _inject(ds: CocoDataset, dets) -> list:
    """The case's detections as the model would hand them over: per dataset image, labels, file pixels."""
    preds = []
    for i in range(len(ds)):
        s = ds[i]
        jh, jw = ds.json_sizes[i]
        fh, fw = s.image.shape[:2]
        mine = [d for d in dets if d[0] == s.image_id]
        boxes = torch.tensor([d[2:6] for d in mine], dtype=torch.float32).reshape(-1, 4)
        boxes *= torch.tensor([fw / jw, fh / jh] * 2)
        labels = torch.tensor([ds.category_ids.index(d[1]) for d in mine], dtype=torch.long)
        scores = torch.tensor([d[6] for d in mine], dtype=torch.float32)
        pad = torch.zeros(2, 4), torch.zeros(2), torch.full((2,), -1)  # decode's padding rows
        preds.append((s, {"triplet": (torch.cat([boxes, pad[0]]), torch.cat([scores, pad[1]]),
                                      torch.cat([labels, pad[2]]))}))
    return preds


@pytest.mark.parametrize("case", list(CASES))
def test_coco_json_metrics_equal_pycocotools_on_the_json(tmp_path, case):
    js, files, dets = CASES[case]()
    img_dir, json_path = _write(tmp_path, js, files)
    ds = CocoDataset(img_dir, json_path, rescale_mismatched=case == "rescaled")
    evs = evaluate_predictions(ds, _inject(ds, dets), class_names=ds.class_names, names=["triplet"])
    ev = evs["triplet"]
    assert isinstance(ev, CocoJsonEvaluator)
    result = ev.compute()
    # the reference: pycocotools on the JSON and the case's own detections (float32 like the model's)
    f32 = lambda v: float(np.float32(v))  # noqa: E731
    reference = [{"image_id": d[0], "category_id": d[1], "score": f32(d[6]),
                  "bbox": [f32(d[2]), f32(d[3]), f32(d[4]) - f32(d[2]), f32(d[5]) - f32(d[3])]} for d in dets]
    expected = _expected(json_path, reference)
    _assert_agrees(result, expected)
    assert result.num_images == len(js["images"]) and result.num_dets == len(dets)
    assert result.num_gt == sum(1 for a in js["annotations"] if not a["iscrowd"])
    # detections.json: the case's detections, in the file's ids and pixels; pycocotools on it agrees too
    info = write_detections(tmp_path, evs)
    assert info == {"detections": {"triplet": "detections.json"}, "ground_truth": str(json_path),
                    "category_ids": dict(zip(ds.class_names, ds.category_ids))}
    written = json.loads((tmp_path / "detections.json").read_text())
    ids = lambda rows: [(r["image_id"], r["category_id"]) for r in rows]  # noqa: E731
    assert ids(written) == ids(reference)
    np.testing.assert_allclose([r["bbox"] for r in written], [r["bbox"] for r in reference], atol=1e-3)
    _assert_agrees(result, _expected(json_path, str(tmp_path / "detections.json")))
    if case == "issue_crowd":
        assert result.ap == pytest.approx(1.0, abs=1e-6)  # the crowd region is ignored, not a missed car


def test_the_cases_need_the_files_own_annotations(tmp_path):
    """Ground truth rebuilt from the samples (crowds of every class, area = w * h, clipped boxes, no
    zero-width boxes) scores the tricky case differently: the test above can fail."""
    js, files, dets = _ids_case()
    ds = CocoDataset(*_write(tmp_path, js, files))
    rebuilt = DetectionEvaluator(ds.class_names)
    for s, d in _inject(ds, dets):
        rebuilt.add_sample(s, *d["triplet"])
    evs = evaluate_predictions(ds, _inject(ds, dets), class_names=ds.class_names, names=["triplet"])
    faithful = evs["triplet"].compute()
    r = rebuilt.compute()
    assert abs(r.per_class_ap["bus"] - faithful.per_class_ap["bus"]) > 0.1
    assert abs(r.ap_small - faithful.ap_small) > 0.1


def test_missing_fields_get_pycocotools_defaults_and_empty_results(tmp_path):
    js = {"images": [{"id": 3, "file_name": "a.png", "width": 64, "height": 48}],
          "categories": [{"id": 2, "name": "car"}],
          "annotations": [{"image_id": 3, "category_id": 2, "bbox": [4, 4, 20, 20]},  # no id, area, iscrowd
                          {"id": 9, "image_id": 3, "category_id": 2, "bbox": [30, 4, 20, 20]}]}
    img_dir, json_path = _write(tmp_path, js, {"a.png": (48, 64)})
    ds = CocoDataset(img_dir, json_path)
    ev = CocoJsonEvaluator(json_path, ds.class_names)
    s = ds[0]
    ev.add_sample(s, torch.tensor([[4.0, 4, 24, 24]]), torch.tensor([0.9]), torch.tensor([0]))
    r = ev.compute()
    # the annotation without id/area/iscrowd is an ordinary car: one of two cars found at rank 1,
    # precision 1 up to recall 0.5 -> AP = 51/101 at every threshold
    assert r.num_gt == 2 and r.ap == pytest.approx(51 / 101)
    ann = ev.gt.anns[10]  # numbered on after the largest id (9)
    assert ann["bbox"] == [4, 4, 20, 20] and ann["area"] == 400.0 and ann["iscrowd"] == 0
    with pytest.raises(ValueError, match="added twice"):
        ev.add_sample(s, torch.zeros(0, 4), torch.zeros(0), torch.zeros(0))
    with pytest.raises(ValueError, match="image id 4 is not in the annotation file"):
        ev.add(4, torch.zeros(0, 4), torch.zeros(0), torch.zeros(0))
    empty = CocoJsonEvaluator(json_path, ds.class_names)
    empty.add_sample(s, torch.zeros(0, 4), torch.zeros(0), torch.zeros(0))  # no detections at all
    r = empty.compute()
    assert r.ap == 0.0 and r.fd == 1.0 and r.num_dets == 0 and empty.results() == []
    _, two_cats = _write(tmp_path, {**js, "categories": js["categories"] + [{"id": 5, "name": "bus"}]}, {})
    with pytest.raises(ValueError, match=r"1 class names \['car'\] for 2 categories \[2, 5\]"):
        CocoJsonEvaluator(two_cats, ["car"])


def test_yolo_style_ground_truth_and_detections_reproduce_the_metrics(tmp_path):
    """Without an annotation file, ground_truth.json + detections.json scored by pycocotools reproduce the
    evaluator's metrics (label k -> category id k + 1, image i -> id i + 1, ignore regions as crowds)."""
    ev = DetectionEvaluator(["car", "bus"])
    ev.add(np.array([[10, 10, 60, 50], [100, 100, 180, 160]]), np.array([0, 1]),
           np.array([[12, 10, 60, 52], [100, 90, 170, 160], [300, 10, 350, 60]]), np.array([0.9, 0.6, 0.5]),
           np.array([0, 1, 0]), gt_ignore=np.array([[290, 0, 400, 80]]), image_info={"file_name": "a.jpg"})
    ev.add(np.array([[0, 0, 30, 30]]), np.array([0]), np.array([[0, 0, 28, 31]]), np.array([0.7]), np.array([1]))
    result = ev.compute()
    info = write_detections(tmp_path, {"triplet": ev, "pairs": ev})
    assert info["ground_truth"] == "ground_truth.json" and info["category_ids"] == {"car": 1, "bus": 2}
    assert info["detections"] == {"triplet": "detections.json", "pairs": "detections_pairs.json"}
    gt = json.loads((tmp_path / "ground_truth.json").read_text())
    assert gt["images"][0] == {"id": 1, "file_name": "a.jpg"}
    assert sum(a["iscrowd"] for a in gt["annotations"]) == 2  # the ignore region, once per class
    _assert_agrees(result, _expected(tmp_path / "ground_truth.json", str(tmp_path / "detections.json")))


class _TwoBoxModel(torch.nn.Module):
    """Stands in for a trained network: per image one triplet of peaks per class (decoded to one box each)."""

    PEAKS = {0: ((2, 4), (12, 12), (7, 8)), 1: ((1, 3), (6, 9), (3, 6))}  # class: tl, br, ct cells (x, y)

    def forward(self, x):
        b, _, h, w = x.shape
        out = {k: torch.full((b, 2, h // 4, w // 4), -10.0) for k in ("tl_heat", "br_heat", "ct_heat")}
        for c, cells in self.PEAKS.items():
            for k, (cx, cy) in zip(("tl_heat", "br_heat", "ct_heat"), cells):
                out[k][:, c, cy, cx] = 3.0 - c
        out.update({k: torch.zeros(b, 1, h // 4, w // 4) for k in ("tl_tag", "br_tag")})
        out.update({k: torch.zeros(b, 2, h // 4, w // 4) for k in ("tl_regr", "br_regr", "ct_regr")})
        return out


def test_centernet_eval_on_a_coco_json_writes_detections_pycocotools_reproduces(tmp_path, capsys, monkeypatch):
    from centernet_ros import evaluate as eval_cli
    from centernet_ros import weights
    from centernet_ros.model import ModelConfig

    meta = weights.ModelMeta(ModelConfig(num_classes=2), ["car", "bus"], (64, 64))
    monkeypatch.setattr(weights, "load_model", lambda path, device="cpu": (_TwoBoxModel(), meta))
    js = {"images": [{"id": 30, "file_name": "a.png", "width": 128, "height": 96},  # the file is 64x48
                     {"id": 20, "file_name": "b.png", "width": 64, "height": 48},
                     {"id": 10, "file_name": "c.png", "width": 64, "height": 48}],
          "categories": [{"id": 9, "name": "bus"}, {"id": 4, "name": "car"}],
          "annotations": [_ann(1, 30, 4, [16, 16, 80, 64]), _ann(2, 20, 9, [4, 4, 20, 24]),
                          _ann(3, 20, 4, [0, 0, 64, 48], iscrowd=1)]}
    img_dir, json_path = _write(tmp_path, js, {n: (48, 64) for n in ("a.png", "b.png", "c.png")})
    args = ["--weights", "unused.safetensors", "--coco-images", str(img_dir), "--coco-json", str(json_path),
            "--device", "cpu", "--workers", "0", "--no-progress", "--out", str(tmp_path / "out"),
            "--score-threshold", "0.6"]  # the peaks only (a peak paired with a background cell: ~0.47)
    assert eval_cli.main(args) == 2
    err = capsys.readouterr().err
    assert "a.png' is 64x48 pixels" in err and "say 128x96" in err and str(json_path) in err
    assert eval_cli.main(args + ["--rescale-mismatched"]) == 0
    report = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert report["ground_truth"] == str(json_path) and report["category_ids"] == {"car": 4, "bus": 9}
    for mode, fname in (("triplet", "detections.json"), ("pairs", "detections_pairs.json")):
        assert report["detections"][mode] == fname
        rows = json.loads((tmp_path / "out" / fname).read_text())
        assert sorted((r["image_id"], r["category_id"]) for r in rows) == [(i, c) for i in (10, 20, 30) for c in (4, 9)]
        car_a = next(r["bbox"] for r in rows if r["image_id"] == 30 and r["category_id"] == 4)
        car_b = next(r["bbox"] for r in rows if r["image_id"] == 20 and r["category_id"] == 4)
        np.testing.assert_allclose(car_a, np.array(car_b) * 2)  # image 30 is 128x96 in the JSON: twice the file
        expected = _expected(json_path, str(tmp_path / "out" / fname))
        got = report["results"][mode]
        for k, v in expected.items():
            g = got["per_class_ap"][k] if k in ("car", "bus") else got[k]
            assert (math.isnan(v) and g is None) or abs(g - v) <= 1e-6, (mode, k, g, v)
