"""Datasets (YOLO txt, COCO json), their error messages, augmentation geometry and colour, Dataset wrapper."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from centernet_ros.data import (
    EIGVAL,
    EIGVEC,
    GRAY_WEIGHTS,
    AugmentConfig,
    CenterNetDataset,
    CocoDataset,
    DatasetError,
    YoloDataset,
    _warp,
    augment,
    collate,
    color_matrix,
    letterbox_sample,
    normalize_images,
    read_image,
)

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "vehicles-openimages"
NO_COLOR = dict(brightness=0.0, contrast=0.0, saturation=0.0, lighting_std=0.0)


def _write_image(path: Path, h: int = 40, w: int = 60, value: int = 128) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = np.full((h, w, 3), value, np.uint8)
    img[..., 1] = np.arange(w, dtype=np.uint8)[None, :] * 3  # distinct channels and a horizontal ramp
    img[..., 2] //= 4
    cv2.imwrite(str(path), img)


def _yolo_root(tmp_path: Path, labels: dict[str, str], *, names=("a", "b"), images=("img0", "img1")) -> Path:
    root = tmp_path / "ds"
    (root / "train" / "labels").mkdir(parents=True)
    for stem in images:
        _write_image(root / "train" / "images" / f"{stem}.png")
    for stem, text in labels.items():
        (root / "train" / "labels" / f"{stem}.txt").write_text(text)
    (root / "data.yaml").write_text(f"names: {list(names)!r}\nnc: {len(names)}\n")
    return root


# ----------------------------------------------------------------------------------------------- YOLO


def test_yolo_dataset_reads_boxes_in_pixels(tmp_path):
    root = _yolo_root(tmp_path, {"img0": "1 0.5 0.5 0.5 0.25\n\n0 0.25 0.75 0.1 0.2\n"})
    ds = YoloDataset(root, "train")
    assert len(ds) == 2 and ds.class_names == ["a", "b"]
    s = ds[0]
    assert s.image.dtype == np.uint8 and s.image.shape == (40, 60, 3)
    assert s.boxes.dtype == np.float32 and s.labels.dtype == np.int64
    # reference: cx, cy, w, h normalised -> x1, y1, x2, y2 in a 60 x 40 image
    expected = np.array([[15, 15, 45, 25], [12, 26, 18, 34]], np.float32)
    np.testing.assert_allclose(s.boxes, expected, atol=1e-4)
    np.testing.assert_array_equal(s.labels, [1, 0])
    assert s.path.endswith("img0.png") and s.image_id == 0
    # no label file -> no objects
    empty = ds[1]
    assert empty.boxes.shape == (0, 4) and empty.labels.shape == (0,)
    assert ds[-1].path == empty.path
    with pytest.raises(IndexError):
        ds[2]


def test_yolo_names_as_mapping_and_split_from_data_yaml(tmp_path):
    root = tmp_path / "ds"
    (root / "valid" / "labels").mkdir(parents=True)
    _write_image(root / "valid" / "images" / "x.jpg")
    (root / "valid" / "labels" / "x.txt").write_text("2 0.5 0.5 1.0 1.0\n")
    (root / "data.yaml").write_text("val: valid/images\nnames: {0: car, 1: bus, 2: truck}\n")
    ds = YoloDataset(root, "val")  # 'val' resolves through data.yaml
    assert ds.class_names == ["car", "bus", "truck"]
    np.testing.assert_allclose(ds[0].boxes, [[0, 0, 60, 40]], atol=1e-4)


@pytest.mark.parametrize(
    "text, needle",
    [
        ("0 0.5 0.5 0.2\n", "expected 5 fields"),
        ("0 0.5 0.5 0.2 0.2 0.1 0.1 0.3 0.3\n", "got 9"),
        ("0 0.5 abc 0.2 0.2\n", "cy is not a number: 'abc'"),
        ("0 0.5 0.5 nan 0.2\n", "not finite"),
        ("2 0.5 0.5 0.2 0.2\n", "class 2 out of range 0..1"),
        ("-1 0.5 0.5 0.2 0.2\n", "class -1 out of range"),
        ("0.5 0.5 0.5 0.2 0.2\n", "class must be an integer"),
        ("0 0.95 0.5 0.2 0.2\n", "reaches outside the image"),
        ("0 0.5 0.5 0.0 0.2\n", "must be > 0"),
    ],
)
def test_yolo_malformed_label_lines_name_file_and_line(tmp_path, text, needle):
    root = _yolo_root(tmp_path, {"img1": "1 0.5 0.5 0.2 0.2\n\n" + text})
    with pytest.raises(DatasetError) as exc:
        YoloDataset(root, "train")
    msg = str(exc.value)
    assert needle in msg
    assert f"{root / 'train' / 'labels' / 'img1.txt'}:3" in msg  # file and line (blank line 2 counted)


def test_yolo_small_overshoot_is_tolerated_and_clipped(tmp_path):
    root = _yolo_root(tmp_path, {"img0": "0 0.502 0.5 1.0 1.0\n"})  # reaches 0.2% past the right edge
    b = YoloDataset(root, "train")[0].boxes
    np.testing.assert_allclose(b, [[0.12, 0, 60, 40]], atol=1e-3)


def test_yolo_label_file_with_utf8_byte_order_mark(tmp_path):
    # Windows tools write a BOM first: the first class must still read as 2, not "'\ufeff2'"
    root = _yolo_root(tmp_path, {}, names=("a", "b", "c"))
    (root / "train" / "labels" / "img0.txt").write_bytes("\ufeff2 0.5 0.5 0.5 0.25\r\n0 0.25 0.75 0.1 0.2\r\n".encode())
    s = YoloDataset(root, "train")[0]
    np.testing.assert_array_equal(s.labels, [2, 0])
    np.testing.assert_allclose(s.boxes, [[15, 15, 45, 25], [12, 26, 18, 34]], atol=1e-4)


def test_yolo_missing_directories_and_names(tmp_path):
    with pytest.raises(DatasetError, match="not a directory"):
        YoloDataset(tmp_path / "nope", "train")
    root = _yolo_root(tmp_path, {})
    with pytest.raises(DatasetError, match="images directory for split 'test' not found"):
        YoloDataset(root, "test")
    (root / "other" / "images").mkdir(parents=True)
    with pytest.raises(DatasetError, match="labels directory .*other.*labels.* not found"):
        YoloDataset(root, "other")
    (root / "data.yaml").unlink()
    with pytest.raises(DatasetError, match="no data.yaml"):
        YoloDataset(root, "train")
    assert YoloDataset(root, "train", class_names=["x", "y"]).class_names == ["x", "y"]


def test_unreadable_image_names_the_file(tmp_path):
    root = _yolo_root(tmp_path, {})
    bad = root / "train" / "images" / "img1.png"
    bad.write_bytes(b"definitely not a png")
    ds = YoloDataset(root, "train")
    ds[0]  # the good one still loads
    with pytest.raises(DatasetError, match="cannot decode image .*img1.png"):
        ds[1]
    with pytest.raises(DatasetError, match="cannot read image"):
        read_image(tmp_path / "missing.jpg")


@pytest.mark.skipif(not SHARED.is_dir(), reason="shared vehicles dataset not available")
def test_shared_vehicles_dataset():
    ds = YoloDataset(SHARED, "train")
    val = YoloDataset(SHARED, "valid")
    assert (len(ds), len(val)) == (439, 125)
    assert ds.class_names == ["Ambulance", "Bus", "Car", "Motorcycle", "Truck"]
    assert sum(len(ds.boxes_for(i, 416, 416)[0]) for i in range(len(ds))) == 838
    s = ds[5]
    # reference: parse the label file by hand
    rows = np.loadtxt(SHARED / "train" / "labels" / (Path(s.path).stem + ".txt"), ndmin=2)
    h, w = s.image.shape[:2]
    ref = np.stack(
        [(rows[:, 1] - rows[:, 3] / 2) * w, (rows[:, 2] - rows[:, 4] / 2) * h,
         (rows[:, 1] + rows[:, 3] / 2) * w, (rows[:, 2] + rows[:, 4] / 2) * h], 1
    ).clip(0, [w, h, w, h])
    np.testing.assert_allclose(s.boxes, ref, atol=1e-3)
    np.testing.assert_array_equal(s.labels, rows[:, 0].astype(np.int64))


# ----------------------------------------------------------------------------------------------- COCO


def _coco(tmp_path: Path, anns: list[dict], *, cats=None, images=None) -> tuple[Path, Path]:
    img_dir = tmp_path / "images"
    _write_image(img_dir / "a.jpg", 50, 100)
    _write_image(img_dir / "b.jpg", 30, 30)
    data = {
        "images": images or [{"id": 7, "file_name": "a.jpg", "width": 100, "height": 50},
                             {"id": 9, "file_name": "b.jpg", "width": 30, "height": 30}],
        "categories": cats or [{"id": 5, "name": "truck"}, {"id": 2, "name": "car"}],
        "annotations": anns,
    }
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(data))
    return img_dir, path


def test_coco_dataset_maps_categories_and_boxes(tmp_path):
    anns = [
        {"id": 1, "image_id": 7, "category_id": 5, "bbox": [10, 5, 20, 30]},
        {"id": 2, "image_id": 7, "category_id": 2, "bbox": [0, 0, 100, 50]},
        {"id": 3, "image_id": 7, "category_id": 2, "bbox": [1, 1, 5, 5], "iscrowd": 1},  # skipped
        {"id": 4, "image_id": 9, "category_id": 2, "bbox": [3, 3, 0, 4]},  # zero width: skipped
    ]
    ds = CocoDataset(*_coco(tmp_path, anns))
    assert ds.class_names == ["car", "truck"] and ds.category_ids == [2, 5]  # sorted by id
    assert ds.image_ids == [7, 9] and ds.num_skipped == 1
    s = ds[0]
    assert s.image.shape == (50, 100, 3) and s.image_id == 7
    np.testing.assert_allclose(s.boxes, [[10, 5, 30, 35], [0, 0, 100, 50]])
    np.testing.assert_array_equal(s.labels, [1, 0])
    assert ds[1].boxes.shape == (0, 4)
    with_crowd = CocoDataset(*_coco(tmp_path, anns), include_crowd=True)
    assert len(with_crowd[0].boxes) == 3


@pytest.mark.parametrize(
    "ann, needle",
    [
        ({"id": 11, "image_id": 3, "category_id": 2, "bbox": [0, 0, 5, 5]}, "annotation 11 .*unknown image_id 3"),
        ({"id": 12, "image_id": 7, "category_id": 4, "bbox": [0, 0, 5, 5]}, "annotation 12 .*unknown category_id 4"),
        ({"id": 13, "image_id": 7, "category_id": 2, "bbox": [0, 0, 5]}, "annotation 13 .*bbox must be"),
        ({"id": 14, "image_id": 7, "category_id": 2, "bbox": [0, 0, -5, 5]}, "annotation 14 .*negative bbox"),
        ({"id": 15, "image_id": 7, "category_id": 2, "bbox": [90, 0, 20, 5]}, "annotation 15 .*outside the 100x50"),
        ({"id": 16, "image_id": 7, "category_id": 2, "bbox": [0, "x", 5, 5]}, "annotation 16 .*not a number"),
        ({"id": 17, "category_id": 2, "bbox": [0, 0, 5, 5]}, "annotation 17 .*image_id"),
    ],
)
def test_coco_errors_name_file_and_annotation(tmp_path, ann, needle):
    img_dir, path = _coco(tmp_path, [ann])
    with pytest.raises(DatasetError, match=needle) as exc:
        CocoDataset(img_dir, path)
    assert str(path) in str(exc.value)


def test_coco_file_errors(tmp_path):
    img_dir, path = _coco(tmp_path, [])
    with pytest.raises(DatasetError, match="not found"):
        CocoDataset(img_dir, tmp_path / "missing.json")
    with pytest.raises(DatasetError, match="images directory"):
        CocoDataset(tmp_path / "nodir", path)
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(DatasetError, match="cannot parse annotation file"):
        CocoDataset(img_dir, tmp_path / "broken.json")
    img_dir, path = _coco(tmp_path, [], images=[{"id": 1, "file_name": "gone.jpg"}])
    ds = CocoDataset(img_dir, path)
    with pytest.raises(DatasetError, match="gone.jpg"):
        ds[0]
    img_dir, path = _coco(tmp_path, [], images=[{"id": 1, "file_name": "a.jpg"}, {"id": 1, "file_name": "b.jpg"}])
    with pytest.raises(DatasetError, match="duplicate image id 1"):
        CocoDataset(img_dir, path)


def _mismatched(tmp_path: Path) -> tuple[Path, Path]:
    """Issue 12 section 3: the JSON says 1280x720, the file is 640x360."""
    _write_image(tmp_path / "img" / "cam.jpg", 360, 640)
    js = {"images": [{"id": 4, "file_name": "cam.jpg", "width": 1280, "height": 720}],
          "categories": [{"id": 1, "name": "car"}],
          "annotations": [{"id": 1, "image_id": 4, "category_id": 1, "bbox": [800, 400, 400, 300]},
                          {"id": 2, "image_id": 4, "category_id": 1, "bbox": [0, 0, 200, 100], "iscrowd": 1}]}
    (tmp_path / "a.json").write_text(json.dumps(js))
    return tmp_path / "img", tmp_path / "a.json"


def test_coco_image_size_disagreeing_with_the_json_is_refused(tmp_path):
    img_dir, js = _mismatched(tmp_path)
    with pytest.raises(DatasetError) as exc:
        CocoDataset(img_dir, js)
    msg = str(exc.value)
    assert str(img_dir / "cam.jpg") in msg and str(js) in msg
    assert "is 640x360 pixels" in msg and "say 1280x720" in msg and "rescale_mismatched" in msg


def test_coco_image_size_mismatch_rescaled_on_request(tmp_path):
    ds = CocoDataset(*_mismatched(tmp_path), rescale_mismatched=True)
    assert ds.num_rescaled == 1 and ds.json_sizes == [(720, 1280)]
    s = ds[0]
    assert s.image.shape[:2] == (360, 640)
    np.testing.assert_allclose(s.boxes, [[400, 200, 600, 350]])  # [800, 400, 400, 300] halved
    np.testing.assert_allclose(s.ignore, [[0, 0, 100, 50]])


def test_coco_size_check_reads_headers_and_needs_the_files(tmp_path):
    img_dir, path = _coco(tmp_path, [])
    (img_dir / "a.jpg").write_bytes((img_dir / "b.jpg").read_bytes())  # a 30x30 file where the json says 100x50
    with pytest.raises(DatasetError, match=r"a\.jpg' is 30x30 pixels .* say 100x50"):
        CocoDataset(img_dir, path)
    (img_dir / "a.jpg").unlink()
    with pytest.raises(DatasetError, match=r"a\.jpg' listed in the annotations not found"):
        CocoDataset(img_dir, path)
    anns = [{"id": 3, "image_id": 9, "category_id": 2, "bbox": [0, 0, 5, 5]},
            {"id": 3, "image_id": 9, "category_id": 2, "bbox": [1, 1, 5, 5]}]
    with pytest.raises(DatasetError, match="annotations\\[1\\]\\): duplicate annotation id 3"):
        CocoDataset(*_coco(tmp_path, anns))


# ----------------------------------------------------------------------------------------------- augmentation


def _scene(h: int, w: int, boxes: np.ndarray) -> np.ndarray:
    """Dark image with each box filled in its own bright colour."""
    img = np.full((h, w, 3), 10, np.uint8)
    colours = [(250, 40, 40), (40, 250, 40), (40, 40, 250)]
    for k, (x1, y1, x2, y2) in enumerate(boxes.astype(int)):
        img[y1:y2, x1:x2] = colours[k % 3]
    return img


@pytest.mark.parametrize("reference", ["letterbox", "pixels"])
@pytest.mark.parametrize("in_hw, out_hw", [((120, 200), (96, 160)), ((300, 180), (128, 128))])
def test_augment_boxes_follow_the_warped_pixels(reference, in_hw, out_hw):
    h, w = in_hw
    boxes = np.array([[10, 12, 70, 60], [w - 60, h - 50, w - 8, h - 6]], np.float32)
    labels = np.array([0, 1], np.int64)
    img = _scene(h, w, boxes)
    cfg = AugmentConfig(output_size=out_hw, scale_reference=reference, min_box_size=3.0, flip_prob=0.5,
                        crop_border=32, **NO_COLOR)
    rng = np.random.default_rng(0)
    seen_kept = seen_dropped = 0
    for _ in range(40):
        out, ob, ol, _ = augment(img, boxes, labels, cfg=cfg, rng=rng)
        assert out.shape == (*out_hw, 3) and out.dtype == np.uint8
        assert ob.dtype == np.float32 and ol.dtype == np.int64 and len(ob) == len(ol)
        assert (ob[:, 0] >= 0).all() and (ob[:, 2] <= out_hw[1]).all() and (ob[:, 3] <= out_hw[0]).all()
        for k, colour_channel in enumerate((0, 1)):
            # pixels of object k: its channel bright, the others dark
            mask = (out[..., colour_channel] > 128) & (out[..., 1 - colour_channel] < 128) & (out[..., 2] < 128)
            kept = np.flatnonzero(ol == k)
            if mask.sum() == 0:
                assert len(kept) == 0
                seen_dropped += 1
                continue
            ys, xs = np.nonzero(mask)
            px_box = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)
            if len(kept) == 0:  # dropped: must be (nearly) smaller than min_box_size
                assert min(px_box[2] - px_box[0], px_box[3] - px_box[1]) <= cfg.min_box_size + 1.5
                seen_dropped += 1
                continue
            seen_kept += 1
            np.testing.assert_allclose(ob[kept[0]], px_box, atol=1.5)
    assert seen_kept > 10


def test_augment_flip_and_scale_exact():
    """scale_range (1, 1), 'pixels', no border: the crop centre is uniform; check the map analytically."""
    img = _scene(64, 64, np.array([[8, 16, 24, 48]], np.float32))
    boxes = np.array([[8, 16, 24, 48]], np.float32)
    cfg = AugmentConfig(output_size=(64, 64), scale_range=(1.0, 1.0), scale_reference="pixels", crop_border=0,
                        flip_prob=1.0, min_box_size=0, **NO_COLOR)
    seen_cut = set()
    for seed in range(40):
        out, ob, _, cut = augment(img, boxes, np.zeros(1, np.int64), cfg=cfg, rng=np.random.default_rng(seed))
        # rebuild the same random draws: scale, cx, cy, flip
        r = np.random.default_rng(seed)
        r.uniform(1.0, 1.0)
        cx, cy = r.uniform(0, 64), r.uniform(0, 64)
        dx, dy = cx - 32, cy - 32  # crop origin
        x1, x2 = 64 - (24 - dx), 64 - (8 - dx)
        y1, y2 = 16 - dy, 48 - dy
        ref = np.clip([x1, y1, x2, y2], 0, 64)
        if len(ob):
            np.testing.assert_allclose(ob[0], ref, atol=1e-4)
            # the crop edge cut the box (flipped: x1 came from the right side) by more than the tolerance
            expect = (x1 < -1 or y1 < -1, x2 > 65 or y2 > 65)
            assert tuple(cut[0]) == expect and cut.dtype == bool
            seen_cut.add(expect)
    assert {(False, False), (True, False), (False, True)} <= seen_cut


def test_augment_empty_boxes_and_config_validation():
    img = np.zeros((50, 70, 3), np.uint8)
    out, ob, ol, cut = augment(img, np.zeros((0, 4), np.float32), np.zeros(0, np.int64), cfg=AugmentConfig(
        output_size=(64, 96)), rng=np.random.default_rng(1))
    assert out.shape == (64, 96, 3) and ob.shape == (0, 4) and ol.shape == (0,) and cut.shape == (0, 2)
    for kwargs, needle in [
        (dict(output_size=(0, 64)), "output_size"),
        (dict(scale_range=(1.2, 0.5)), "(1.2, 0.5)"),
        (dict(scale_reference="foo"), "'foo'"),
        (dict(flip_prob=1.5), "1.5"),
        (dict(brightness=-0.1), "-0.1"),
        (dict(lighting_std=-1.0), "-1.0"),
        (dict(pad_value=(0, 0, 300)), "300"),
    ]:
        with pytest.raises(ValueError, match=needle.replace("(", r"\(").replace(")", r"\)")):
            AugmentConfig(**kwargs)


def test_warp_rgba_detour_equals_plain_warp():
    rng = np.random.default_rng(3)
    img = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    for m in (np.array([[1.3, 0, -4.2], [0, 1.3, 3.1]]), np.array([[-0.7, 0, 40.0], [0, 0.7, -2.0]])):
        mc = m.copy()
        mc[:, 2] += 0.5 * (m[:, 0] + m[:, 1] - 1.0)
        ref = cv2.warpAffine(img, mc, (48, 40), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                             borderValue=(5, 6, 7))
        np.testing.assert_array_equal(_warp(img, m, (40, 48), (5, 6, 7)), ref)


def _sequential_colour(img: np.ndarray, factors: dict, order, lighting) -> np.ndarray:
    """Reference: CornerNet's steps one after another in float."""
    x = img.astype(np.float64)
    for step in order:
        a = factors[step]
        if step == "brightness":
            x = x * a
        elif step == "contrast":
            x = a * x + (1 - a) * (x @ GRAY_WEIGHTS).mean()
        else:
            x = a * x + (1 - a) * (x @ GRAY_WEIGHTS)[..., None]
    x = x + lighting
    return np.clip(np.round(x), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("order", [("brightness", "contrast", "saturation"), ("saturation", "contrast", "brightness"),
                                   ("contrast", "saturation", "brightness")])
def test_color_matrix_equals_sequential_jitter(order):
    rng = np.random.default_rng(4)
    img = rng.integers(0, 256, (24, 31, 3), dtype=np.uint8)
    factors = {"brightness": 1.3, "contrast": 0.7, "saturation": 1.25}
    lighting = 255 * (EIGVEC @ (np.array([0.1, -0.2, 0.05]) * EIGVAL))
    m = color_matrix(img.reshape(-1, 3).mean(0), order=order, lighting=lighting, **factors)
    got = cv2.transform(img, m)
    ref = _sequential_colour(img, factors, order, lighting)
    assert np.abs(got.astype(int) - ref.astype(int)).max() <= 1
    # identity
    np.testing.assert_allclose(color_matrix(np.zeros(3)), np.eye(3, 4))


def test_augment_colour_changes_pixels_but_not_geometry():
    img = _scene(64, 64, np.array([[8, 8, 40, 40]], np.float32))
    boxes = np.array([[8, 8, 40, 40]], np.float32)
    geo = dict(output_size=(64, 64), scale_range=(1.0, 1.0), scale_reference="pixels", crop_border=0)
    plain = augment(img, boxes, np.zeros(1, np.int64), cfg=AugmentConfig(**geo, **NO_COLOR),
                    rng=np.random.default_rng(9))
    coloured = augment(img, boxes, np.zeros(1, np.int64), cfg=AugmentConfig(**geo), rng=np.random.default_rng(9))
    np.testing.assert_allclose(plain[1], coloured[1])  # same random geometry draws come first
    assert np.abs(plain[0].astype(int) - coloured[0].astype(int)).mean() > 1.0


# ----------------------------------------------------------------------------------------------- letterbox + wrapper


def test_letterbox_sample_matches_preprocess():
    from centernet_ros.preprocess import boxes_to_input, letterbox

    rng = np.random.default_rng(5)
    img = cv2.GaussianBlur(rng.integers(0, 256, (90, 150, 3), dtype=np.uint8), (5, 5), 2)
    boxes = np.array([[10, 20, 60, 80], [0, 0, 150, 90]], np.float32)
    out, b, (scale, ox, oy) = letterbox_sample(img, boxes, size=(128, 160))
    ref, params = letterbox([torch.from_numpy(img)], size=(128, 160), bgr=False)
    assert scale == pytest.approx(float(params.scale[0])) and (ox, oy) == tuple(params.offset[0].tolist())
    ref_boxes = boxes_to_input(torch.from_numpy(boxes)[None], params.scale, params.offset)[0]
    np.testing.assert_allclose(b, ref_boxes.numpy(), atol=1e-4)
    mine = normalize_images(torch.from_numpy(out).permute(2, 0, 1)[None])
    assert (mine - ref).abs().max() < 0.05  # cv2 vs torch bilinear rounding only


def test_centernet_dataset_items_and_collate(tmp_path):
    from centernet_ros.targets import TargetConfig, build_image_targets

    root = _yolo_root(tmp_path, {"img0": "1 0.5 0.5 0.5 0.5\n0 0.2 0.3 0.2 0.3\n"}, images=("img0", "img1", "img2"))
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
    root = _yolo_root(tmp_path, {"img0": "1 0.5 0.5 0.5 0.5\n"})
    ds = CenterNetDataset(YoloDataset(root, "train"), input_size=(64, 64), train=True)

    def run():
        torch.manual_seed(123)
        loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=1, collate_fn=collate)
        return [b["image"] for b in loader]

    a, b = run(), run()
    torch.testing.assert_close(a[0], b[0])


def test_warp_uses_continuous_pixel_coordinates():
    """Pixel i covers [i, i+1): a flip about the width is an exact mirror, a 2x zoom equals cv2.resize."""
    rng = np.random.default_rng(6)
    img = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    flipped = _warp(img, np.array([[-1.0, 0, 30], [0, 1, 0]]), (20, 30), (0, 0, 0))
    np.testing.assert_array_equal(flipped, img[:, ::-1])
    zoomed = _warp(img, np.array([[2.0, 0, 0], [0, 2, 0]]), (40, 60), (0, 0, 0))
    ref = cv2.resize(img, (60, 40), interpolation=cv2.INTER_LINEAR)
    assert np.abs(zoomed[1:-1, 1:-1].astype(int) - ref[1:-1, 1:-1].astype(int)).max() <= 1


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
