import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

import detnas.data.synthetic as synthetic
from detnas.data.synthetic import CLS_CLASSES, DET_CLASSES, synthesize_classification, synthesize_detection


@pytest.fixture(scope="module")
def shapes_det(tmp_path_factory) -> Path:
    """A modest detection sample: 60 train + 8 test images of 128 px (about a second)."""
    out = tmp_path_factory.mktemp("det") / "shapes"
    synthesize_detection(out, num_train=60, num_test=8, seed=3)
    return out


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_detection_is_deterministic(tmp_path):
    synthesize_detection(tmp_path / "a", num_train=5, num_test=2, seed=7)
    synthesize_detection(tmp_path / "b", num_train=5, num_test=2, seed=7)
    synthesize_detection(tmp_path / "c", num_train=5, num_test=2, seed=8)
    a, b, c = (_files(tmp_path / name) for name in "abc")
    assert a.keys() == b.keys() and len(a) == 2 + 5 + 2
    assert a == b
    assert a["instances_train.json"] != c["instances_train.json"]


def test_images_do_not_depend_on_how_many_are_made(tmp_path):
    # one generator per image: a longer run starts with the same images
    synthesize_detection(tmp_path / "short", num_train=2, num_test=1)
    synthesize_detection(tmp_path / "long", num_train=4, num_test=1)
    for name in ("train/000000.png", "train/000001.png", "test/000000.png"):
        assert (tmp_path / "short/images" / name).read_bytes() == (tmp_path / "long/images" / name).read_bytes()


def test_coco_json_is_valid(shapes_det):
    for split, count in (("train", 60), ("test", 8)):
        coco = COCO(str(shapes_det / f"instances_{split}.json"))
        assert sorted(coco.getImgIds()) == list(range(1, count + 1))
        assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == list(DET_CLASSES)
        assert all(c["supercategory"] == "shape" for c in coco.dataset["categories"])
        ann_ids = [a["id"] for a in coco.dataset["annotations"]]
        assert len(set(ann_ids)) == len(ann_ids) and min(ann_ids) == 1
        for img in coco.loadImgs(coco.getImgIds()):
            assert img["file_name"].startswith(f"{split}/")
            with Image.open(shapes_det / "images" / img["file_name"]) as im:
                assert im.mode == "RGB" and im.size == (img["width"], img["height"]) == (128, 128)
            anns = coco.loadAnns(coco.getAnnIds(imgIds=img["id"]))
            assert anns, f"image {img['id']} has no annotation"
            for a in anns:
                x, y, w, h = a["bbox"]
                assert all(isinstance(v, float) for v in a["bbox"])
                assert w > 0 and h > 0 and x >= 0 and y >= 0 and x + w <= 128 and y + h <= 128
                assert 0 < a["area"] <= w * h  # visible pixels of the shape, within its box
                assert a["iscrowd"] == 0 and 1 <= a["category_id"] <= len(DET_CLASSES)


def test_all_coco_scales_and_classes_present(shapes_det):
    anns = json.loads((shapes_det / "instances_train.json").read_text())["annotations"]
    areas = np.array([a["area"] for a in anns])
    small, large = (areas < 32**2).mean(), (areas > 96**2).mean()
    medium = 1 - small - large
    # designed for ~40 / 45 / 15 %; loose bounds for a 60-image sample
    assert 0.2 < small < 0.6 and 0.25 < medium < 0.65 and 0.05 < large < 0.3, (small, medium, large)
    assert {a["category_id"] for a in anns} == set(range(1, len(DET_CLASSES) + 1))
    per_image = np.bincount([a["image_id"] for a in anns])
    assert per_image.max() <= 6


def test_progress_line(tmp_path, capsys):
    synthesize_detection(tmp_path / "d", num_train=3, num_test=1)
    out = capsys.readouterr().out
    assert "synthesize: train 3 images" in out and "synthesize: test 1 images" in out
    assert "small" in out and "medium" in out and "large" in out


def test_classification_layout(tmp_path):
    out = tmp_path / "cls"
    synthesize_classification(out, train_per_class=3, val_per_class=2, image_size=32, seed=1)
    for split, count in (("train", 3), ("val", 2)):
        assert sorted(p.name for p in (out / split).iterdir()) == sorted(CLS_CLASSES)
        for name in CLS_CLASSES:
            files = sorted((out / split / name).iterdir())
            assert [f.name for f in files] == [f"{i:05d}.png" for i in range(count)]
            for f in files:
                with Image.open(f) as im:
                    assert im.mode == "RGB" and im.size == (32, 32)
    synthesize_classification(tmp_path / "again", train_per_class=3, val_per_class=2, image_size=32, seed=1)
    assert _files(out) == _files(tmp_path / "again")


def test_classification_images_differ_by_class(tmp_path):
    synthesize_classification(tmp_path / "cls", train_per_class=1, val_per_class=1, image_size=48)
    pixels = {np.asarray(Image.open(p)).tobytes() for p in (tmp_path / "cls/train").rglob("*.png")}
    assert len(pixels) == len(CLS_CLASSES)


def test_classification_shapes_take_their_class_hues(tmp_path):
    # each class's shapes are painted in hues around k / 8 (an ImageNet-like colour cue), while the
    # detection data keeps uniformly random colours
    from matplotlib.colors import rgb_to_hsv

    synthesize_classification(tmp_path / "cls", train_per_class=6, val_per_class=1, image_size=48)
    for k, name in enumerate(CLS_CLASSES):
        distances = []
        for path in sorted((tmp_path / "cls/train" / name).glob("*.png")):
            hsv = rgb_to_hsv(np.asarray(Image.open(path), dtype=np.float64) / 255).reshape(-1, 3)
            shape = hsv[(hsv[:, 1] > 0.55) & (hsv[:, 2] > 0.6)]  # the vivid shape, not the muted texture
            angle = np.angle(np.exp(2j * np.pi * shape[:, 0]).mean()) / (2 * np.pi)
            distances.append(abs((angle - k / len(CLS_CLASSES) + 0.5) % 1.0 - 0.5))
        near = sum(d < 1 / len(CLS_CLASSES) for d in distances)
        assert near >= 5 and max(distances) < 0.2, f"{name}: hue distances {distances} from {k}/{len(CLS_CLASSES)}"


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(num_train=0, num_test=1), "num_train"),
        (dict(num_train=1, num_test=0), "num_test"),
        (dict(num_train=1, num_test=1, image_size=16), "image_size"),
        (dict(num_train=1, num_test=1, seed=-1), "seed"),
        (dict(num_train=1, num_test=1, max_objects=0), "max_objects"),
        (dict(num_train=2.5, num_test=1), "num_train"),
    ],
)
def test_detection_rejects_bad_arguments(tmp_path, kwargs, name):
    with pytest.raises(ValueError, match=name):
        synthesize_detection(tmp_path / "d", **kwargs)
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(train_per_class=0, val_per_class=1), "train_per_class"),
        (dict(train_per_class=1, val_per_class=0), "val_per_class"),
        (dict(train_per_class=1, val_per_class=1, image_size=8), "image_size"),
    ],
)
def test_classification_rejects_bad_arguments(tmp_path, kwargs, name):
    with pytest.raises(ValueError, match=name):
        synthesize_classification(tmp_path / "c", **kwargs)


def test_out_dir_is_replaced_atomically(tmp_path):
    out = tmp_path / "shapes"
    out.mkdir()
    (out / "junk.txt").write_text("stale output")
    synthesize_detection(out, num_train=2, num_test=1)
    assert not (out / "junk.txt").exists()
    assert (out / "instances_train.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shapes"]  # no .tmp-* / .old-* left


def test_failed_run_keeps_previous_output(tmp_path, monkeypatch):
    out = tmp_path / "cls"
    synthesize_classification(out, train_per_class=1, val_per_class=1)
    before = _files(out)

    def boom(*args, **kwargs):
        raise RuntimeError("killed mid-run")

    monkeypatch.setattr(synthetic, "_classification_image", boom)
    with pytest.raises(RuntimeError):
        synthesize_classification(out, train_per_class=1, val_per_class=1)
    assert _files(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cls"]


def test_easy_detection_is_plain_apart_and_in_class_hues(tmp_path):
    """The demo's variant: a flat background, shapes that do not overlap, 20-45% of the image side,
    boxes exactly around the drawn pixels; deterministic; the hard default is another image."""
    synthesize_detection(tmp_path / "easy", num_train=12, num_test=2, image_size=96, max_objects=3, seed=0,
                         difficulty="easy")
    synthesize_detection(tmp_path / "again", num_train=12, num_test=2, image_size=96, max_objects=3, seed=0,
                         difficulty="easy")
    assert _files(tmp_path / "easy") == _files(tmp_path / "again")
    coco = COCO(str(tmp_path / "easy/instances_train.json"))
    assert {c["name"] for c in coco.dataset["categories"]} == set(DET_CLASSES)
    for img in coco.dataset["images"]:
        pixels = np.asarray(Image.open(tmp_path / "easy/images" / img["file_name"])).astype(float)
        anns = coco.imgToAnns[img["id"]]
        assert 1 <= len(anns) <= 3
        inside = np.zeros(pixels.shape[:2], dtype=bool)
        for a in anns:
            x, y, w, h = (int(v) for v in a["bbox"])
            assert 0.2 * 96 - 2 <= max(w, h) <= 0.45 * 96 * 1.31 + 2  # a square turned 22.5 deg: 1.31x wider
            assert not inside[y:y + h, x:x + w].any()  # apart from the others
            inside[y:y + h, x:x + w] = True
        background = pixels[~inside]
        assert background.std(axis=0).max() < 6  # one colour and mild noise, no texture
    hard = synthesize_detection(tmp_path / "hard", num_train=12, num_test=2, image_size=96, max_objects=3, seed=0)
    assert hard is None and _files(tmp_path / "hard") != _files(tmp_path / "easy")
    with pytest.raises(ValueError, match="difficulty must be one of hard, easy, got 'medium'"):
        synthesize_detection(tmp_path / "x", num_train=1, num_test=1, difficulty="medium")
