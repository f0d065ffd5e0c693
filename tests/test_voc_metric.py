"""The PASCAL VOC AP (detnas.voc_eval) on cases small enough to compute by hand."""

import numpy as np
import pytest

from detnas.data.voc import _box
from detnas.voc_eval import ap_11point, ap_area, iou_xywh, voc_ap


def _gt(image_id, category_id, bbox, difficult=False):
    return {"image_id": image_id, "category_id": category_id, "bbox": list(bbox), "iscrowd": int(difficult)}


def _det(image_id, category_id, bbox, score):
    return {"image_id": image_id, "category_id": category_id, "bbox": list(bbox), "score": score}


CLASSES = {1: "cat", 2: "dog", 3: "bird", 4: "fish", 5: "horse"}


def test_hand_computed_case():
    gt = [
        # cat: 3 positives (the difficult box does not count)
        _gt(1, 1, [0, 0, 10, 10]), _gt(1, 1, [20, 0, 10, 10]), _gt(1, 1, [40, 0, 10, 10], difficult=True),
        _gt(2, 1, [0, 0, 10, 10]),
        _gt(1, 2, [0, 20, 10, 10]),  # dog: found exactly
        _gt(2, 3, [30, 30, 10, 10]),  # bird: no detection at all
        _gt(2, 5, [0, 40, 10, 10], difficult=True),  # horse: only a difficult box
    ]
    dets = [
        _det(1, 1, [0, 0, 10, 10], 0.9),  # cat TP (image 1, first box)
        _det(1, 1, [0, 0, 10, 10], 0.8),  # cat FP: a second detection of the same box
        _det(1, 1, [40, 0, 10, 10], 0.7),  # cat ignored: matched to the difficult box
        _det(2, 1, [0, 0, 10, 10], 0.6),  # cat TP (image 2)
        _det(3, 1, [0, 0, 10, 10], 0.5),  # cat FP: image 3 holds no cat
        _det(1, 2, [0, 20, 10, 10], 0.9),  # dog TP
        _det(1, 4, [0, 0, 10, 10], 0.9),  # fish: a detection, but no fish anywhere
        _det(2, 5, [0, 40, 10, 10], 0.9),  # horse: matched to its difficult box, ignored
    ]
    out = voc_ap(dets, gt, CLASSES)
    pc = out["per_class"]
    # cat, counted detections in score order (the ignored one is no point of the curve), npos = 3:
    #   TP: rec 1/3, prec 1/1;  FP: rec 1/3, prec 1/2;  TP: rec 2/3, prec 2/3;  FP: rec 2/3, prec 2/4
    # 11-point: t = 0, .1, .2, .3 -> max prec at rec >= t = 1 (4 points); t = .4, .5, .6 -> max(2/3, 1/2)
    #   = 2/3 (3 points); t = .7 .. 1 -> no recall that high, 0 (4 points): (4 + 3 * 2/3) / 11 = 6/11
    assert pc["cat"]["ap_voc07"] == pytest.approx(6 / 11)
    # area: envelope 1 on (0, 1/3], 2/3 on (1/3, 2/3]: 1/3 * 1 + 1/3 * 2/3 = 5/9
    assert pc["cat"]["ap_voc12"] == pytest.approx(5 / 9)
    assert pc["cat"]["positives"] == 3 and pc["cat"]["detections"] == 5
    # dog: one TP for its one box: rec 1, prec 1 -> 1 at all 11 points; area 1 * 1
    assert pc["dog"] == {"ap_voc07": 1.0, "ap_voc12": 1.0, "positives": 1, "detections": 1}
    # bird: a box and no detection: AP 0
    assert pc["bird"] == {"ap_voc07": 0.0, "ap_voc12": 0.0, "positives": 1, "detections": 0}
    # fish (no box) and horse (only a difficult box): recall undefined -> None, left out of the mean
    assert pc["fish"] == {"ap_voc07": None, "ap_voc12": None, "positives": 0, "detections": 1}
    assert pc["horse"] == {"ap_voc07": None, "ap_voc12": None, "positives": 0, "detections": 1}
    # means over cat, dog, bird: (6/11 + 1 + 0) / 3 = 17/33 and (5/9 + 1 + 0) / 3 = 14/27
    assert out["mAP50_voc07"] == pytest.approx(17 / 33)
    assert out["mAP50_voc12"] == pytest.approx(14 / 27)


def test_difficult_match_is_neither_tp_nor_fp():
    gt = [_gt(1, 1, [0, 0, 10, 10]), _gt(1, 1, [50, 0, 10, 10], difficult=True)]
    # the top detection hits the difficult box, the next one the other box. Ignored: npos = 1, one
    # TP at rec 1, prec 1 -> AP 1 in both variants. Counted as an FP, the TP would sit at prec 1/2
    # (AP 1/2); counted as a positive, npos = 2 and recall would stop at 1/2 (11-point 6/11).
    dets = [_det(1, 1, [50, 0, 10, 10], 0.9), _det(1, 1, [0, 0, 10, 10], 0.8)]
    out = voc_ap(dets, gt, {1: "cat"})
    assert out["mAP50_voc07"] == 1.0 and out["mAP50_voc12"] == 1.0
    assert out["per_class"]["cat"]["positives"] == 1
    # a second detection of the difficult box is ignored too (not a duplicate FP)
    out = voc_ap(dets + [_det(1, 1, [50, 0, 10, 10], 0.95)], gt, {1: "cat"})
    assert out["mAP50_voc07"] == 1.0


def test_greedy_match_to_the_max_iou_box():
    # two boxes of one image, A = [0, 10] x [0, 10] and B = [2, 12] x [0, 10]
    gt = [_gt(1, 1, [0, 0, 10, 10]), _gt(1, 1, [2, 0, 10, 10])]
    dets = [
        _det(1, 1, [0, 0, 10, 10], 0.9),  # A exactly: TP
        # [0.5, 10.5]: IoU with A 95/105 = 0.90, with B 85/115 = 0.74; its best box A is taken, so it
        # is an FP although B, also above 0.5, is free (the devkit does not fall back to B)
        _det(1, 1, [0.5, 0, 10, 10], 0.8),
    ]
    # npos 2: TP (rec 1/2, prec 1), FP (rec 1/2, prec 1/2)
    # 11-point: t = 0 .. .5 -> 1 (6 points), t = .6 .. 1 -> 0: 6/11; area: 1/2 * 1 = 1/2
    out = voc_ap(dets, gt, {1: "cat"})
    assert out["mAP50_voc07"] == pytest.approx(6 / 11)
    assert out["mAP50_voc12"] == pytest.approx(1 / 2)


def test_iou_of_exactly_half_matches():
    # [0, 10] x [0, 5] inside [0, 10] x [0, 10]: IoU 50 / 100 = 0.5; the devkit's test is >= 0.5
    out = voc_ap([_det(1, 1, [0, 0, 10, 5], 0.9)], [_gt(1, 1, [0, 0, 10, 10])], {1: "cat"})
    assert out["mAP50_voc07"] == 1.0
    # just below: an FP, and the only box is missed
    out = voc_ap([_det(1, 1, [0, 0, 10, 4.99], 0.9)], [_gt(1, 1, [0, 0, 10, 10])], {1: "cat"})
    assert out["mAP50_voc07"] == 0.0


def test_perfect_detections_score_one():
    rng = np.random.default_rng(0)
    gt, dets = [], []
    for image_id in range(1, 6):
        for k in range(4):
            box = [float(v) for v in rng.uniform(0, 100, 2)] + [float(v) for v in rng.uniform(5, 40, 2)]
            category = int(rng.integers(1, 4))
            gt.append(_gt(image_id, category, box, difficult=k == 3))
            dets.append(_det(image_id, category, box, float(rng.uniform())))
    out = voc_ap(dets, gt, {1: "a", 2: "b", 3: "c"})
    assert out["mAP50_voc07"] == pytest.approx(1.0) and out["mAP50_voc12"] == pytest.approx(1.0)


def test_11point_and_area_differ():
    # 2 boxes, one found: TP (rec 1/2, prec 1), then an FP (rec 1/2, prec 1/2)
    # 11-point: t = 0, .1, .2, .3, .4, .5 -> 1; t = .6 .. 1 -> 0: 6/11 = 0.545; area: 1/2 * 1 = 0.5
    gt = [_gt(1, 1, [0, 0, 10, 10]), _gt(2, 1, [0, 0, 10, 10])]
    dets = [_det(1, 1, [0, 0, 10, 10], 0.9), _det(1, 1, [50, 50, 10, 10], 0.8)]
    out = voc_ap(dets, gt, {1: "cat"})
    assert out["mAP50_voc07"] == pytest.approx(6 / 11)
    assert out["mAP50_voc12"] == pytest.approx(1 / 2)


def test_recall_of_exactly_three_tenths_reaches_the_0_3_point():
    # 10 boxes, 3 found with precision 1: rec 3/10 -> the 11-point AP takes t = 0, .1, .2, .3: 4/11.
    # Thresholds from np.arange(0, 1.1, 0.1) hold 0.30000000000000004 > 3/10 and would give 3/11.
    recall, precision = np.array([0.1, 0.2, 0.3]), np.ones(3)
    assert ap_11point(recall, precision) == pytest.approx(4 / 11)
    assert ap_area(recall, precision) == pytest.approx(0.3)
    gt = [_gt(i, 1, [0, 0, 10, 10]) for i in range(1, 11)]
    dets = [_det(i, 1, [0, 0, 10, 10], 1.0 - i / 10) for i in range(1, 4)]
    assert voc_ap(dets, gt, {1: "cat"})["mAP50_voc07"] == pytest.approx(4 / 11)


def test_image_ids_restrict_both_sides():
    gt = [_gt(1, 1, [0, 0, 10, 10]), _gt(2, 1, [0, 0, 10, 10])]
    dets = [_det(1, 1, [0, 0, 10, 10], 0.9), _det(2, 1, [50, 50, 5, 5], 0.8)]
    # image 2 left out: its box and its FP are not scored; image 1 is perfect
    assert voc_ap(dets, gt, {1: "cat"}, image_ids=[1])["mAP50_voc07"] == 1.0


def test_unknown_category_is_an_error():
    with pytest.raises(ValueError, match="category_id 9"):
        voc_ap([_det(1, 9, [0, 0, 1, 1], 0.5)], [_gt(1, 1, [0, 0, 1, 1])], {1: "cat"})


def _devkit_iou(a, b):
    """VOCevaldet.m's overlap of two boxes given as 1-based inclusive corners (xmin, ymin, xmax, ymax)."""
    iw = min(a[2], b[2]) - max(a[0], b[0]) + 1
    ih = min(a[3], b[3]) - max(a[1], b[1]) + 1
    if iw <= 0 or ih <= 0:
        return 0.0
    ua = (a[2] - a[0] + 1) * (a[3] - a[1] + 1) + (b[2] - b[0] + 1) * (b[3] - b[1] + 1) - iw * ih
    return iw * ih / ua


def _xml_object(corners):
    return {"name": "cat", "bndbox": dict(zip(("xmin", "ymin", "xmax", "ymax"), map(str, corners)))}


def test_continuous_iou_equals_the_devkit_plus_one_iou():
    # our boxes come from the VOC corners through detnas.data.voc._box (x = xmin - 1, w = xmax - xmin
    # + 1): the plain IoU of two of them is the devkit's "+1" IoU of the corners, overlap or not
    rng = np.random.default_rng(0)
    for _ in range(300):
        corners = []
        for _ in range(2):  # xmin < xmax, ymin < ymax: a box of at least 2 pixels a side
            (x0, x1), (y0, y1) = sorted(rng.integers(1, 40, 2)), sorted(rng.integers(1, 40, 2))
            corners.append([int(x0), int(y0), int(x1) + 1, int(y1) + 1])
        a, b = corners
        ours = iou_xywh(np.array(_box(_xml_object(a), "x.xml")), np.array([_box(_xml_object(b), "x.xml")]))[0]
        assert ours == pytest.approx(_devkit_iou(a, b)), (a, b)
    # one by hand: corners (1, 1, 10, 10) and (6, 1, 15, 10): devkit 5 * 10 / (100 + 100 - 50) = 1/3
    assert _devkit_iou((1, 1, 10, 10), (6, 1, 15, 10)) == pytest.approx(1 / 3)
    assert iou_xywh(np.array([0.0, 0, 10, 10]), np.array([[5.0, 0, 10, 10]]))[0] == pytest.approx(1 / 3)
