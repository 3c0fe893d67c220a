"""Sample geometry for the network input: CornerNet/CenterNet-style training augmentation and the
evaluation letterbox, on numpy images and their boxes.

Letters: N objects, H/W image height/width (Ho/Wo: of the output).

Training augmentation (:func:`augment`, Law & Deng, CornerNet, ECCV 2018, used unchanged by Duan et al.,
CenterNet: Keypoint Triplets, ICCV 2019): a random crop of ``output_size * s`` (``s`` uniform in
``scale_range``) centred on a random point that keeps ``crop_border`` pixels from the image border, resized
to ``output_size``, a horizontal flip, colour jitter (brightness / contrast / saturation in random order)
and PCA lighting noise. The whole geometry is one ``cv2.warpAffine`` and the whole colour change one
``cv2.transform`` (the jitter steps are affine maps of RGB, so they compose into one 3x4 matrix).

Mosaic (:func:`mosaic`, Bochkovskiy et al., YOLOv4, 2020, section 3.3; off unless
``AugmentConfig.mosaic_prob`` > 0): four images, each augmented as above into one cell of a 2x2 grid
split at a random point, so objects keep the scale ``scale_range`` gives them and a cell edge cuts boxes as
a crop edge does.

Evaluation preprocessing (:func:`letterbox_sample`) resizes with the same scale and offset as
``preprocess.letterbox_params`` so that detections map back to the original image with the shared formula
``orig = (input_px - offset) / scale``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np

__all__ = [
    "AugmentConfig",
    "augment",
    "mosaic",
    "letterbox_sample",
    "color_matrix",
    "EIGVAL",
    "EIGVEC",
]

# PCA of ImageNet RGB pixel values in [0, 1] (Krizhevsky et al., AlexNet, 2012): eigenvalues and the
# matching eigenvectors (columns), RGB order.
EIGVAL = np.array([0.2175, 0.0188, 0.0045], dtype=np.float64)
EIGVEC = np.array(
    [
        [-0.5675, 0.7192, 0.4009],
        [-0.5808, -0.0045, -0.8140],
        [-0.5836, -0.6948, 0.4203],
    ],
    dtype=np.float64,
)
# ITU-R BT.601 luma weights (what cv2's RGB2GRAY uses), RGB order.
GRAY_WEIGHTS = np.array([0.299, 0.587, 0.114], dtype=np.float64)


@dataclass
class AugmentConfig:
    """Training augmentation (CornerNet ``random_crop`` + flip + colour jitter + PCA lighting)."""

    output_size: tuple[int, int] = (512, 512)  # (H, W) of the network input
    scale_range: tuple[float, float] = (0.6, 1.3)  # crop = output_size * s / ref_scale, s ~ U(scale_range)
    # "letterbox": s = 1 shows the image at the scale evaluation letterboxes it to (any image resolution);
    # "pixels": s = 1 keeps the original pixel size (CornerNet exactly; ref_scale = 1).
    scale_reference: str = "letterbox"
    # (H, W) whose letterbox scale is s = 1 under "letterbox" (None: output_size). Training on crops smaller
    # than the evaluation input (e.g. 256x256 crops for a 384x640 model) sets it to the evaluation size so
    # that objects keep the size they have at test time.
    reference_size: tuple[int, int] | None = None
    crop_border: float = 128.0  # crop centres keep this many output pixels from the image border (halved
    #                             until it fits, as in CornerNet)
    flip_prob: float = 0.5  # probability of a horizontal flip
    brightness: float = 0.4  # brightness factor 1 + U(-v, v)
    contrast: float = 0.4  # contrast factor 1 + U(-v, v) (blend with the mean grey level)
    saturation: float = 0.4  # saturation factor 1 + U(-v, v) (blend with the grey image)
    lighting_std: float = 0.1  # std of the AlexNet PCA lighting coefficients (0 disables)
    min_box_size: float = 2.0  # objects narrower or shorter than this (output pixels, after clipping) are dropped
    pad_value: tuple[int, int, int] = (0, 0, 0)  # RGB of the area outside the image
    # Boxes that touch the source image's own edge (within IMAGE_EDGE_TOLERANCE source pixels) count as cut
    # on that side, like boxes the crop cuts: the photo cut the object, so that corner is the photo's, not
    # the object's (targets.TargetConfig.cut_corners decides what a cut corner trains). False: CornerNet.
    image_edge_cuts: bool = False
    # Probability that a training image is a 2x2 mosaic of it and three images drawn at random (with
    # replacement) from its dataset (YOLOv4); 0: never (CornerNet). The grid splits at a point uniform in
    # the middle half of each axis.
    mosaic_prob: float = 0.0

    def __post_init__(self) -> None:
        size = tuple(self.output_size) if isinstance(self.output_size, (list, tuple)) else (self.output_size,) * 2
        if len(size) != 2 or any(not isinstance(v, int) or isinstance(v, bool) or v < 1 for v in size):
            raise ValueError(f"output_size must be (H, W) positive ints, got {self.output_size!r}")
        self.output_size = size
        lo_hi = tuple(self.scale_range)
        if len(lo_hi) != 2 or not 0 < lo_hi[0] <= lo_hi[1]:
            raise ValueError(f"scale_range must be (lo, hi) with 0 < lo <= hi, got {self.scale_range!r}")
        self.scale_range = (float(lo_hi[0]), float(lo_hi[1]))
        if self.reference_size is not None:
            r = tuple(self.reference_size)
            if len(r) != 2 or any(not isinstance(v, int) or isinstance(v, bool) or v < 1 for v in r):
                raise ValueError(f"reference_size must be (H, W) positive ints or null, got {self.reference_size!r}")
            self.reference_size = (int(r[0]), int(r[1]))
        if self.scale_reference not in ("letterbox", "pixels"):
            raise ValueError(f"scale_reference must be 'letterbox' or 'pixels', got {self.scale_reference!r}")
        if not self.crop_border >= 0:
            raise ValueError(f"crop_border must be >= 0, got {self.crop_border!r}")
        if not 0 <= self.flip_prob <= 1:
            raise ValueError(f"flip_prob must be in [0, 1], got {self.flip_prob!r}")
        for name in ("brightness", "contrast", "saturation"):
            v = getattr(self, name)
            if not 0 <= v < 1:
                raise ValueError(f"{name} must be in [0, 1), got {v!r}")
        if not self.lighting_std >= 0:
            raise ValueError(f"lighting_std must be >= 0, got {self.lighting_std!r}")
        if not self.min_box_size >= 0:
            raise ValueError(f"min_box_size must be >= 0, got {self.min_box_size!r}")
        pad = tuple(self.pad_value)
        if len(pad) != 3 or any(not 0 <= int(v) <= 255 for v in pad):
            raise ValueError(f"pad_value must be 3 values in 0..255, got {self.pad_value!r}")
        self.pad_value = tuple(int(v) for v in pad)
        if not isinstance(self.image_edge_cuts, bool):
            raise ValueError(f"image_edge_cuts must be a bool, got {self.image_edge_cuts!r}")
        if not isinstance(self.mosaic_prob, (int, float)) or isinstance(self.mosaic_prob, bool) \
                or not 0 <= self.mosaic_prob <= 1:
            raise ValueError(f"mosaic_prob must be in [0, 1], got {self.mosaic_prob!r}")


def _crop_border(border: float, size: float) -> float:
    """Halve ``border`` until a centre range ``[border, size - border]`` is non-empty."""
    while border > 0 and size <= 2 * border:
        border /= 2
        if border < 1:
            return 0.0
    return border


def _warp(image: np.ndarray, m: np.ndarray, out_hw: tuple[int, int], pad: tuple[int, int, int]) -> np.ndarray:
    """``cv2.warpAffine`` for a map ``m`` (2x3) in continuous coordinates (pixel ``i`` covers ``[i, i+1)``)."""
    mc = m.copy()
    # cv2 addresses pixel centres by integer index: u_i + 0.5 = A (x_i + 0.5) + t, so
    # t_cv = t + A @ (0.5, 0.5) - 0.5 (rows of A: m[:, :2])
    mc[:, 2] += 0.5 * (m[:, 0] + m[:, 1] - 1.0)
    # OpenCV's vectorised bilinear warp is about twice as fast on 4-channel images as on 3-channel ones,
    # so the RGB image takes a detour through RGBA (same pixels, verified in the tests).
    out = cv2.warpAffine(
        cv2.cvtColor(image, cv2.COLOR_RGB2RGBA),
        mc,
        (out_hw[1], out_hw[0]),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=(*pad, 255),
    )
    return cv2.cvtColor(out, cv2.COLOR_RGBA2RGB)


def _warp_boxes(boxes: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Apply an axis-aligned (scale / translate / flip) 2x3 map to ``(N, 4)`` boxes."""
    xs = boxes[:, 0::2] * m[0, 0] + m[0, 2]  # (N, 2)
    ys = boxes[:, 1::2] * m[1, 1] + m[1, 2]  # (N, 2)
    return np.stack([xs.min(1), ys.min(1), xs.max(1), ys.max(1)], axis=1).astype(np.float32)  # (N, 4)


CUT_TOLERANCE = 1.0  # output pixels a box must reach past the crop edge to count as cut there
IMAGE_EDGE_TOLERANCE = 1.0  # source pixels from the image's edge within which a box side is on the edge


def _on_image_edge(boxes: np.ndarray, image_hw: tuple[int, int], flipped: bool) -> np.ndarray:
    """``(N, 4)`` boxes in source pixels -> bool ``(N, 2)``: the box touches the source image's edge on its
    left or top side / right or bottom side, in the output's orientation (a flip swaps left and right)."""
    h, w = image_hw
    t = IMAGE_EDGE_TOLERANCE
    left, right = boxes[:, 0] <= t, boxes[:, 2] >= w - t
    top, bottom = boxes[:, 1] <= t, boxes[:, 3] >= h - t
    if flipped:
        left, right = right, left
    return np.stack([left | top, right | bottom], axis=1)  # (N, 2)


def _clip_and_filter(
    boxes: np.ndarray, labels: np.ndarray, out_hw: tuple[int, int], min_size: float, cut: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Clip ``(N, 4)`` boxes to the output, drop those under ``min_size``; also say which were cut.

    Returns ``(boxes, labels, cut)`` of the kept boxes, ``cut`` bool ``(N', 2)``: the crop edge cut the box
    on its left or top side (its top-left corner is the crop's, not the object's) / right or bottom side,
    or ``cut`` (bool ``(N, 2)``, optional) already said so.
    """
    h, w = out_hw
    b = boxes.copy()
    t = CUT_TOLERANCE
    crop_cut = np.stack([(b[:, 0] < -t) | (b[:, 1] < -t), (b[:, 2] > w + t) | (b[:, 3] > h + t)], axis=1)  # (N, 2)
    cut = crop_cut if cut is None else crop_cut | cut
    b[:, 0::2] = b[:, 0::2].clip(0, w)
    b[:, 1::2] = b[:, 1::2].clip(0, h)
    keep = (b[:, 2] - b[:, 0] >= max(min_size, 1e-6)) & (b[:, 3] - b[:, 1] >= max(min_size, 1e-6))
    return b[keep], labels[keep], cut[keep]


def color_matrix(
    mean_rgb: np.ndarray,
    *,
    brightness: float = 1.0,
    contrast: float = 1.0,
    saturation: float = 1.0,
    order: Sequence[str] = ("brightness", "contrast", "saturation"),
    lighting: np.ndarray | None = None,
) -> np.ndarray:
    """Affine 3x4 map of RGB values (0..255) equal to applying the jitter steps one after another.

    Steps (CornerNet ``color_jittering_``, then ``lighting_``), each a blend ``a x + (1 - a) ref``:
    brightness ``ref = 0``; contrast ``ref`` = mean grey level of the current image; saturation ``ref`` =
    grey value of the pixel. ``lighting``: RGB shift (0..255 scale) added last. ``mean_rgb``: mean RGB
    of the input image (the contrast reference follows from it because every step is affine).
    """
    a = np.eye(3)
    t = np.zeros(3)
    mean = np.asarray(mean_rgb, dtype=np.float64).reshape(3)
    for step in order:
        if step == "brightness":
            a, t = brightness * a, brightness * t
        elif step == "contrast":
            grey_mean = GRAY_WEIGHTS @ (a @ mean + t)
            a, t = contrast * a, contrast * t + (1 - contrast) * grey_mean
        elif step == "saturation":
            s = saturation * np.eye(3) + (1 - saturation) * np.outer(np.ones(3), GRAY_WEIGHTS)
            a, t = s @ a, s @ t
        else:
            raise ValueError(f"unknown colour step {step!r}")
    if lighting is not None:
        t = t + np.asarray(lighting, dtype=np.float64).reshape(3)
    return np.concatenate([a, t[:, None]], axis=1)  # (3, 4)


def _random_color(image: np.ndarray, cfg: AugmentConfig, rng: np.random.Generator) -> np.ndarray:
    factors = {k: 1.0 + rng.uniform(-v, v) if v > 0 else 1.0 for k, v in (
        ("brightness", cfg.brightness), ("contrast", cfg.contrast), ("saturation", cfg.saturation))}
    order = [("brightness", "contrast", "saturation")[i] for i in rng.permutation(3)]
    lighting = None
    if cfg.lighting_std > 0:
        alpha = rng.normal(0.0, cfg.lighting_std, size=3)
        lighting = 255.0 * (EIGVEC @ (alpha * EIGVAL))
    if lighting is None and all(f == 1.0 for f in factors.values()):
        return image
    mean = np.asarray(cv2.mean(image)[:3])  # over the whole warped image, padding included (as CornerNet)
    m = color_matrix(mean, order=order, lighting=lighting, **factors)
    return cv2.transform(image, m)  # uint8 in, uint8 out (rounded and saturated)


def augment(
    image: np.ndarray,
    boxes: np.ndarray,
    labels: np.ndarray,
    *,
    cfg: AugmentConfig,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Random scale + crop + flip + colour of one training image.

    Args:
        image: ``uint8 (H, W, 3)`` RGB.
        boxes: ``float32 (N, 4)`` x1, y1, x2, y2 pixels of ``image``.
        labels: ``int64 (N,)``.
    Returns:
        ``(image uint8 (Ho, Wo, 3), boxes float32 (N', 4) in output pixels, labels int64 (N',),
        cut bool (N', 2))`` with ``(Ho, Wo) = cfg.output_size``; boxes are clipped to the output and objects
        smaller than ``cfg.min_box_size`` are dropped; ``cut`` says whether the crop edge cut a box on its
        left/top (top-left corner) and right/bottom (bottom-right corner) side, more than ``CUT_TOLERANCE``
        output pixels, or (``cfg.image_edge_cuts``) the box touches the source image's edge on that side
        (``targets.TargetConfig.cut_corners``).
    """
    return _augment_to(image, boxes, labels, cfg=cfg, rng=rng, out_hw=cfg.output_size)


def _augment_to(
    image: np.ndarray, boxes: np.ndarray, labels: np.ndarray, *, cfg: AugmentConfig, rng: np.random.Generator,
    out_hw: tuple[int, int],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """:func:`augment` into an output of ``out_hw`` (H, W) instead of ``cfg.output_size`` (a mosaic cell);
    the object scale still follows ``cfg.reference_size`` (or ``cfg.output_size``)."""
    ih, iw = image.shape[:2]
    oh, ow = out_hw
    rh, rw = cfg.reference_size or cfg.output_size
    ref = min(rh / ih, rw / iw) if cfg.scale_reference == "letterbox" else 1.0
    s = rng.uniform(*cfg.scale_range)
    zoom = ref / s  # output pixels per image pixel
    crop_w, crop_h = ow / zoom, oh / zoom  # crop size in image pixels
    bx = _crop_border(cfg.crop_border / ref, iw)
    by = _crop_border(cfg.crop_border / ref, ih)
    cx = rng.uniform(bx, iw - bx)
    cy = rng.uniform(by, ih - by)
    m = np.array([[zoom, 0.0, -(cx - crop_w / 2) * zoom], [0.0, zoom, -(cy - crop_h / 2) * zoom]])
    flipped = rng.random() < cfg.flip_prob
    if flipped:
        m[0] = [-zoom, 0.0, ow - m[0, 2]]
    out = _warp(image, m, (oh, ow), cfg.pad_value)
    out = _random_color(out, cfg, rng)
    src = np.asarray(boxes, np.float32).reshape(-1, 4)
    edge = _on_image_edge(src, (ih, iw), flipped) if cfg.image_edge_cuts else None
    b, lab, cut = _clip_and_filter(_warp_boxes(src, m), labels, (oh, ow), cfg.min_box_size, edge)
    return out, b, np.asarray(lab, dtype=np.int64), cut


def mosaic(
    images: Sequence[np.ndarray],
    boxes: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    *,
    cfg: AugmentConfig,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """2x2 mosaic of four training images (YOLOv4, Bochkovskiy et al., 2020, section 3.3).

    The output (``cfg.output_size`` = (Ho, Wo)) is split at ``(yc, xc)``, uniform in the middle half of
    each axis (whole pixels); image ``k`` fills cell ``k`` (top-left, top-right, bottom-left,
    bottom-right), augmented by :func:`augment`'s steps into that cell's size (its own scale, crop centre,
    flip and colour), so objects keep the scale they get without the mosaic.

    Args:
        images: four ``uint8 (H_k, W_k, 3)`` RGB images; boxes: four ``float32 (N_k, 4)`` x1, y1, x2, y2 in
            their image's pixels; labels: four ``int64 (N_k,)``.
    Returns:
        As :func:`augment`: ``(image uint8 (Ho, Wo, 3), boxes float32 (N', 4) in output pixels,
        labels int64 (N',), cut bool (N', 2))``; a box cut by a cell edge counts as cut on that side.
    Raises:
        ValueError: not exactly four images, boxes and labels.
    """
    if not len(images) == len(boxes) == len(labels) == 4:
        raise ValueError(f"mosaic needs 4 images, boxes and labels, got {len(images)}, {len(boxes)}, {len(labels)}")
    oh, ow = cfg.output_size
    yc = min(max(int(round(rng.uniform(0.25, 0.75) * oh)), 1), oh - 1) if oh > 1 else oh
    xc = min(max(int(round(rng.uniform(0.25, 0.75) * ow)), 1), ow - 1) if ow > 1 else ow
    cells = [(0, 0, yc, xc), (0, xc, yc, ow), (yc, 0, oh, xc), (yc, xc, oh, ow)]  # (y0, x0, y1, x1)
    out = np.empty((oh, ow, 3), np.uint8)
    out[:] = np.asarray(cfg.pad_value, dtype=np.uint8)
    all_b, all_l, all_c = [], [], []
    for (y0, x0, y1, x1), img, b, lab in zip(cells, images, boxes, labels):
        if y1 <= y0 or x1 <= x0:
            continue
        im, cb, cl, cc = _augment_to(img, b, lab, cfg=cfg, rng=rng, out_hw=(y1 - y0, x1 - x0))
        out[y0:y1, x0:x1] = im
        cb[:, 0::2] += x0
        cb[:, 1::2] += y0
        all_b.append(cb)
        all_l.append(cl)
        all_c.append(cc)
    return (out, np.concatenate(all_b).astype(np.float32).reshape(-1, 4),
            np.concatenate(all_l).astype(np.int64).reshape(-1), np.concatenate(all_c).astype(bool).reshape(-1, 2))


def letterbox_sample(
    image: np.ndarray,
    boxes: np.ndarray,
    *,
    size: tuple[int, int],
    pad_value: tuple[int, int, int] = (0, 0, 0),
) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """Letterbox one image and its boxes to ``size`` = (H, W), with the numbers of ``preprocess.letterbox``.

    Returns ``(image uint8 (H, W, 3), boxes float32 (N, 4) in input pixels, (scale, offset_x, offset_y))``;
    ``input_px = orig_px * scale + offset`` (so ``decode`` maps detections back with the same parameters).
    """
    from .preprocess import letterbox_params

    ih, iw = image.shape[:2]
    p = letterbox_params([(ih, iw)], size)
    scale = float(p.scale[0])
    ox, oy = (float(v) for v in p.offset[0])
    h, w = size
    nh, nw = min(h, max(1, int(ih * scale + 0.5))), min(w, max(1, int(iw * scale + 0.5)))
    out = np.empty((h, w, 3), dtype=np.uint8)
    out[:] = np.asarray(pad_value, dtype=np.uint8)
    resized = image if (nh, nw) == (ih, iw) else cv2.resize(image, (nw, nh), interpolation=cv2.INTER_LINEAR)
    out[int(oy) : int(oy) + nh, int(ox) : int(ox) + nw] = resized
    b = np.asarray(boxes, dtype=np.float32).reshape(-1, 4) * scale  # (N, 4)
    b[:, 0::2] += ox
    b[:, 1::2] += oy
    return out, b.astype(np.float32), (scale, ox, oy)
