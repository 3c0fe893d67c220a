"""Datasets (YOLO txt, COCO json) and their error messages."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from centernet_ros.coco_dataset import CocoDataset
from centernet_ros.datasets import DatasetError, YoloDataset, read_image
from dataset_files import write_image, yolo_root

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "vehicles-openimages"


# ----------------------------------------------------------------------------------------------- YOLO


def test_yolo_dataset_reads_boxes_in_pixels(tmp_path):
    root = yolo_root(tmp_path, {"img0": "1 0.5 0.5 0.5 0.25\n\n0 0.25 0.75 0.1 0.2\n"})
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
    write_image(root / "valid" / "images" / "x.jpg")
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
    root = yolo_root(tmp_path, {"img1": "1 0.5 0.5 0.2 0.2\n\n" + text})
    with pytest.raises(DatasetError) as exc:
        YoloDataset(root, "train")
    msg = str(exc.value)
    assert needle in msg
    assert f"{root / 'train' / 'labels' / 'img1.txt'}:3" in msg  # file and line (blank line 2 counted)


def test_yolo_small_overshoot_is_tolerated_and_clipped(tmp_path):
    root = yolo_root(tmp_path, {"img0": "0 0.502 0.5 1.0 1.0\n"})  # reaches 0.2% past the right edge
    b = YoloDataset(root, "train")[0].boxes
    np.testing.assert_allclose(b, [[0.12, 0, 60, 40]], atol=1e-3)


def test_yolo_label_file_with_utf8_byte_order_mark(tmp_path):
    # Windows tools write a BOM first: the first class must still read as 2, not "'\ufeff2'"
    root = yolo_root(tmp_path, {}, names=("a", "b", "c"))
    (root / "train" / "labels" / "img0.txt").write_bytes("\ufeff2 0.5 0.5 0.5 0.25\r\n0 0.25 0.75 0.1 0.2\r\n".encode())
    s = YoloDataset(root, "train")[0]
    np.testing.assert_array_equal(s.labels, [2, 0])
    np.testing.assert_allclose(s.boxes, [[15, 15, 45, 25], [12, 26, 18, 34]], atol=1e-4)


def test_yolo_missing_directories_and_names(tmp_path):
    with pytest.raises(DatasetError, match="not a directory"):
        YoloDataset(tmp_path / "nope", "train")
    root = yolo_root(tmp_path, {})
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
    root = yolo_root(tmp_path, {})
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
    write_image(img_dir / "a.jpg", 50, 100)
    write_image(img_dir / "b.jpg", 30, 30)
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
    write_image(tmp_path / "img" / "cam.jpg", 360, 640)
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
