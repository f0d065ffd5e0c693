"""Data readers: validation fails early and clearly, the split is seeded and exact, targets are right."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from detnas.data.classification import (
    ClassificationDataset,
    classification_transforms,
    normalize_images,
    scan_image_folder,
    split_classification,
)
from detnas.data.coco import (
    DataError,
    DetectionDataset,
    collate_detection,
    load_coco_json,
    prepare_detection,
    split_detection,
    validate_detection,
    write_json_atomic,
)
from detnas.data.voc import VOC_CLASSES, voc_to_coco

from conftest import run_detnas

# ---------------------------------------------------------------------------------------------
# helpers: a tiny COCO-style dataset on disk


def _png(path: Path, size: tuple[int, int] = (32, 32), color: tuple[int, int, int] = (200, 30, 30)) -> None:
    """A solid image with a white 3-px stripe at the left edge, so a horizontal flip shows."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGB", size, color)
    image.paste((255, 255, 255), (0, 0, 3, size[1]))
    image.save(path)


def _coco(tmp_path: Path, n_images: int = 4) -> tuple[Path, Path, dict]:
    """n 32x32 PNGs (image 1: 40x32) and a COCO file with two categories (ids 3 and 7, a gap)."""
    img_dir = tmp_path / "images"
    images, anns = [], []
    for i in range(1, n_images + 1):
        w, h = (40, 32) if i == 1 else (32, 32)
        _png(img_dir / f"{i:03d}.png", (w, h))
        images.append({"id": i, "file_name": f"{i:03d}.png", "width": w, "height": h})
        anns.append({"id": 10 * i, "image_id": i, "category_id": 3, "bbox": [2, 4, 10, 6], "area": 60, "iscrowd": 0,
                     "segmentation": [[2, 4, 12, 4, 12, 10]]})  # fmt: skip
        anns.append({"id": 10 * i + 1, "image_id": i, "category_id": 7, "bbox": [20, 0, 12, 32], "area": 384,
                     "iscrowd": 0})  # fmt: skip
    anns.append({"id": 99, "image_id": 1, "category_id": 7, "bbox": [0, 0, 5, 5], "area": 25, "iscrowd": 1})
    data = {"images": images, "annotations": anns, "categories": [{"id": 7, "name": "b"}, {"id": 3, "name": "a"}]}
    ann_file = tmp_path / "instances.json"
    ann_file.write_text(json.dumps(data))
    return ann_file, img_dir, data


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _internal(tmp_path: Path, n_images: int = 4) -> Path:
    ann_file, img_dir, _ = _coco(tmp_path, n_images)
    out = tmp_path / "internal.json"
    write_json_atomic(prepare_detection(ann_file, [img_dir]), out)
    return out


# ---------------------------------------------------------------------------------------------
# prepare_detection: the internal format and every bad-data case


def test_prepare_adds_roots_and_drops_segmentation(tmp_path: Path) -> None:
    ann_file, img_dir, data = _coco(tmp_path)
    before = _sha(ann_file)
    out = prepare_detection(ann_file, [img_dir])
    assert out["detnas"]["image_roots"] == [str(img_dir.absolute())]
    assert out["detnas"]["source"] == str(ann_file.absolute())
    assert all("segmentation" not in a for a in out["annotations"])
    assert len(out["annotations"]) == len(data["annotations"])
    assert _sha(ann_file) == before


def _corrupt(tmp_path: Path, edit) -> tuple[Path, Path]:
    ann_file, img_dir, data = _coco(tmp_path)
    edit(data, img_dir)
    ann_file.write_text(json.dumps(data))
    return ann_file, img_dir


def _set_box(box):
    def edit(data, _):
        data["annotations"][0]["bbox"] = box
    return edit


@pytest.mark.parametrize(
    "edit, pattern",
    [
        (lambda d, img_dir: (img_dir / "002.png").unlink(), r"'002\.png' \(id 2\) not found under any root \(tried"),
        (lambda d, img_dir: (img_dir / "003.png").write_bytes(b"not a png at all"), r"003\.png is unreadable"),
        (lambda d, img_dir: d["images"][1].update(width=64), r"002\.png is 32x32 .* JSON says 64x32"),
        (_set_box([30, 4, 12, 6]), r"image \S+: annotation 10 box .* lies outside the 40x\d+ image"),  # image 1 is 40 wide: 42 > 41
        (_set_box([-2, 4, 10, 6]), r"lies outside the"),
        (_set_box([2, 4, 0, 6]), r"annotation 10 box .* has zero or negative size"),
        (_set_box([2, 4, 5, -1]), r"has zero or negative size"),
        (_set_box([2, 4, 5]), r"bbox must be 4 numbers"),
        (lambda d, _: d["annotations"][0].update(category_id=5), r"category_id 5, not declared"),
        (lambda d, _: d["annotations"][0].update(image_id=77), r"image_id 77, which is not an image"),
        (lambda d, _: d.update(images=[]), r"empty dataset \(no images\)"),
        (lambda d, _: d.update(annotations=[]), r"empty dataset \(no annotations\)"),
        (lambda d, _: d["images"].append(dict(d["images"][0])), r"duplicate image id 1"),
        (lambda d, _: d.pop("categories"), r"missing list 'categories'"),
    ],
)
def test_bad_data_fails_early_naming_the_file(tmp_path: Path, edit, pattern: str) -> None:
    ann_file, img_dir = _corrupt(tmp_path, edit)
    before = _sha(ann_file)
    with pytest.raises(DataError, match=pattern) as info:
        prepare_detection(ann_file, [img_dir])
    assert str(ann_file) in str(info.value)
    assert _sha(ann_file) == before  # nothing is written in place of the input


def test_box_tolerance_and_degenerate_drop(tmp_path: Path) -> None:
    ann_file, img_dir = _corrupt(tmp_path, _set_box([30.5, 4, 10.4, 6]))  # ends 0.9 px past the border
    prepare_detection(ann_file, [img_dir])
    ann_file, img_dir = _corrupt(tmp_path, _set_box([2, 4, 5, 0.0]))
    out = prepare_detection(ann_file, [img_dir], bad_boxes="drop")
    assert 10 not in {a["id"] for a in out["annotations"]}


def test_missing_and_invalid_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="nope.json: annotation file not found"):
        load_coco_json(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DataError, match="bad.json: not valid JSON"):
        load_coco_json(tmp_path / "bad.json")
    ann_file, _, _ = _coco(tmp_path)
    with pytest.raises(DataError, match="is not a directory"):
        prepare_detection(ann_file, [tmp_path / "no_such_dir"])


def test_check_images_false_skips_the_file_system_checks(tmp_path: Path) -> None:
    ann_file, img_dir = _corrupt(tmp_path, lambda d, img_dir: (img_dir / "002.png").unlink())
    assert len(prepare_detection(ann_file, [img_dir], check_images=False)["images"]) == 4


def test_multiple_image_roots_resolve_in_order(tmp_path: Path) -> None:
    ann_file, img_dir, _ = _coco(tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    (img_dir / "004.png").rename(other / "004.png")  # like trainval35k: some images in val2014/
    with pytest.raises(DataError, match="004.png"):
        prepare_detection(ann_file, [img_dir])
    out_file = tmp_path / "internal.json"
    write_json_atomic(prepare_detection(ann_file, [img_dir, other]), out_file)
    ds = DetectionDataset(out_file)
    image, target = ds[ds.image_ids.index(4)]
    assert image.shape == (3, 32, 32) and target["image_id"] == 4


def _jpeg(path: Path, size: tuple[int, int] = (64, 48), mode: str = "RGB") -> None:
    """A noise JPEG: the entropy-coded data dominates the file, so cutting it in half cuts the scan."""
    path.parent.mkdir(parents=True, exist_ok=True)
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    Image.fromarray(np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)).save(path, quality=90)


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _image_json(path: Path, names: list[str], size: tuple[int, int] = (64, 48)) -> Path:
    """A COCO file with one box on each named image (all ``size``)."""
    w, h = size
    images = [{"id": i, "file_name": n, "width": w, "height": h} for i, n in enumerate(names, start=1)]
    anns = [{"id": i, "image_id": i, "category_id": 1, "bbox": [2, 2, 10, 10], "area": 100, "iscrowd": 0}
            for i in range(1, len(names) + 1)]
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": [{"id": 1, "name": "a"}]}))
    return path


def test_split_fails_naming_every_undecodable_image_and_writes_nothing(tmp_path: Path) -> None:
    img_dir = tmp_path / "images"
    train = [f"{i:03d}.jpg" for i in range(1, 7)] + ["007.png"]
    for name in train[:-1] + ["008.jpg", "009.jpg"]:
        _jpeg(img_dir / name)
    _png(img_dir / "007.png", (64, 48))
    _truncate(img_dir / "002.jpg")  # a header-only check passes this one
    (img_dir / "004.jpg").write_bytes(b"")
    _truncate(img_dir / "007.png")
    sources = {"type": "coco",
               "train": {"annotations": str(_image_json(tmp_path / "train.json", train)), "images": [str(img_dir)]},
               "test": {"annotations": str(_image_json(tmp_path / "test.json", ["008.jpg", "009.jpg"])),
                        "images": [str(img_dir)]}}  # fmt: skip
    settings = {"sources": sources, "split": {"size": 2, "seed": 0}, "check_images": True}
    out_dir = tmp_path / "out"
    proc = run_detnas("split-detection", "--settings", json.dumps(settings), "--out-dir", str(out_dir),
                      "--threads", "2", check=False)  # fmt: skip
    assert proc.returncode != 0
    assert "3 of 7 images cannot be used" in proc.stderr
    for bad in ("002.jpg is unreadable", "004.jpg is unreadable", "007.png is unreadable"):
        assert bad in proc.stderr
    assert "001.jpg" not in proc.stderr
    assert not out_dir.exists() or not any(out_dir.iterdir())


def test_grayscale_jpeg_passes_and_loads_as_rgb(tmp_path: Path) -> None:
    _jpeg(tmp_path / "images" / "gray.jpg", mode="L")
    out = tmp_path / "internal.json"
    write_json_atomic(prepare_detection(_image_json(tmp_path / "in.json", ["gray.jpg"]), [tmp_path / "images"]), out)
    image, _ = DetectionDataset(out)[0]
    assert image.shape == (3, 48, 64)


def test_image_errors_list_twenty_files_and_count_the_rest(tmp_path: Path) -> None:
    names = [f"{i:03d}.jpg" for i in range(1, 24)]
    (tmp_path / "images").mkdir()
    for name in names:
        (tmp_path / "images" / name).write_bytes(b"")
    with pytest.raises(DataError, match=r"23 of 23 images cannot be used") as info:
        prepare_detection(_image_json(tmp_path / "in.json", names), [tmp_path / "images"], threads=2)
    assert "020.jpg" in str(info.value) and "021.jpg" not in str(info.value)
    assert str(info.value).endswith("... and 3 more")


# ---------------------------------------------------------------------------------------------
# split_detection


def _dataset(n: int) -> dict:
    images = [{"id": i, "file_name": f"{i}.png", "width": 8, "height": 8} for i in range(1, n + 1)]
    anns = [{"id": i, "image_id": i, "category_id": 1, "bbox": [0, 0, 4, 4], "iscrowd": 0} for i in range(1, n + 1)]
    return {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "x"}],
            "detnas": {"image_roots": ["/data"], "source": "test"}}  # fmt: skip


def _ids(part: dict) -> set[int]:
    return {img["id"] for img in part["images"]}


def test_split_is_seeded_disjoint_and_complete() -> None:
    data = _dataset(100)
    train, val = split_detection(data, size=20, seed=0)
    assert len(_ids(val)) == 20 and len(_ids(train)) == 80
    assert not _ids(train) & _ids(val)
    assert _ids(train) | _ids(val) == _ids(data)
    for part in (train, val):  # annotations follow their images, categories and roots are carried
        assert {a["image_id"] for a in part["annotations"]} == _ids(part)
        assert part["categories"] == data["categories"]
        assert part["detnas"]["image_roots"] == ["/data"]
    assert _ids(split_detection(data, size=20, seed=0)[1]) == _ids(val)
    assert _ids(split_detection(data, size=20, seed=1)[1]) != _ids(val)
    shuffled = {**data, "images": data["images"][::-1]}  # file order does not matter
    assert _ids(split_detection(shuffled, size=20, seed=0)[1]) == _ids(val)
    assert len(data["images"]) == 100 and "split" not in data["detnas"]  # input untouched


def test_split_fraction_and_bad_sizes() -> None:
    data = _dataset(50)
    assert len(split_detection(data, size=0.1, seed=3)[1]["images"]) == 5
    for bad in (0, 50, 51, -1, 0.0, 1.0, 0.001, True, "5"):
        with pytest.raises(ValueError):
            split_detection(data, size=bad, seed=0)


# ---------------------------------------------------------------------------------------------
# DetectionDataset


def test_detection_dataset_targets(tmp_path: Path) -> None:
    ds = DetectionDataset(_internal(tmp_path))
    assert ds.category_ids == [3, 7] and ds.num_classes == 2
    assert ds.image_ids == [1, 2, 3, 4]
    assert "annotations" in ds.coco.dataset and len(ds.coco.getAnnIds()) == 9
    image, target = ds[0]
    assert image.dtype == torch.float32 and image.shape == (3, 32, 40)
    assert 0.0 <= image.min() and image.max() <= 1.0
    assert torch.allclose(image[:, 0, -1], torch.tensor([200, 30, 30]) / 255.0)
    assert torch.equal(image[:, :, 0], torch.ones(3, 32))  # the stripe is on the left
    # xywh [2, 4, 10, 6] -> xyxy [2, 4, 12, 10]; category 3 -> label 1, 7 -> 2; the crowd box is left out
    assert torch.equal(target["boxes"], torch.tensor([[2.0, 4, 12, 10], [20, 0, 32, 32]]))
    assert target["labels"].dtype == torch.int64 and target["labels"].tolist() == [1, 2]
    assert target["image_id"] == 1
    images, targets = collate_detection([ds[0], ds[1]])
    assert len(images) == len(targets) == 2 and images[1].shape == (3, 32, 32)


def test_detection_dataset_train_flip(tmp_path: Path) -> None:
    ann = _internal(tmp_path)
    ds = DetectionDataset(ann, train=True)
    plain_image, plain = DetectionDataset(ann)[0]
    seen = set()
    for seed in range(8):
        torch.manual_seed(seed)
        image, target = ds[0]
        flipped = not torch.equal(target["boxes"], plain["boxes"])
        if flipped:  # x -> W - x, corners swap; image 40 wide
            expected = plain["boxes"][:, [2, 1, 0, 3]] * torch.tensor([-1.0, 1, -1, 1]) + torch.tensor([40.0, 0, 40, 0])
            assert torch.allclose(target["boxes"], expected)
            assert torch.equal(image, plain_image.flip(-1)) and not torch.equal(image, plain_image)
        else:
            assert torch.equal(image, plain_image)
        assert type(target["boxes"]) is torch.Tensor and type(image) is torch.Tensor
        torch.manual_seed(seed)
        assert torch.equal(ds[0][1]["boxes"], target["boxes"])  # reproducible under a seed
        seen.add(flipped)
    assert seen == {True, False}


def test_detection_dataset_skips_empty_and_selects(tmp_path: Path) -> None:
    ann_file, img_dir, data = _coco(tmp_path)
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] != 2 or a["iscrowd"]]
    data["annotations"].append({"id": 500, "image_id": 2, "category_id": 3, "bbox": [1, 1, 3, 3], "iscrowd": 1})
    ann_file.write_text(json.dumps(data))
    out = tmp_path / "internal.json"
    write_json_atomic(prepare_detection(ann_file, [img_dir]), out)
    assert DetectionDataset(out, train=True).image_ids == [1, 3, 4]  # image 2 has only a crowd box
    assert DetectionDataset(out, train=True, skip_empty=False).image_ids == [1, 2, 3, 4]
    ds = DetectionDataset(out)
    assert ds.image_ids == [1, 2, 3, 4]
    _, target = ds[1]
    assert target["boxes"].shape == (0, 4) and target["labels"].shape == (0,)
    assert DetectionDataset(out, image_ids=[4, 2]).image_ids == [4, 2]
    with pytest.raises(DataError, match="requested image ids not in the file: \\[9\\]"):
        DetectionDataset(out, image_ids=[9])


def test_detection_dataset_decode_failure_names_the_file(tmp_path: Path) -> None:
    ann = _internal(tmp_path)
    ds = DetectionDataset(ann)
    (tmp_path / "images" / "002.png").write_bytes(b"\x89PNG garbage")
    with pytest.raises(DataError, match=r"002\.png"):
        ds[1]


# ---------------------------------------------------------------------------------------------
# Pascal VOC


def _voc_xml(name: str, w: int, h: int, objects: list[tuple[str, int, int, int, int, int]]) -> str:
    objs = "".join(
        f"<object><name>{c}</name><pose>Left</pose><truncated>0</truncated><difficult>{d}</difficult>"
        f"<bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>"
        for c, x0, y0, x1, y1, d in objects
    )
    return (f"<annotation><folder>VOC2007</folder><filename>{name}.jpg</filename>"
            f"<size><width>{w}</width><height>{h}</height><depth>3</depth></size>{objs}</annotation>")  # fmt: skip


def _voc_tree(tmp_path: Path) -> Path:
    root = tmp_path / "VOCdevkit"
    voc = root / "VOC2007"
    (voc / "ImageSets" / "Main").mkdir(parents=True)
    (voc / "Annotations").mkdir()
    specs = {
        "000005": (48, 32, [("chair", 1, 1, 48, 32, 0), ("person", 10, 5, 19, 20, 1)]),
        "000007": (32, 40, [("tvmonitor", 3, 4, 30, 40, 0)]),
    }
    for name, (w, h, objs) in specs.items():
        (voc / "JPEGImages").mkdir(exist_ok=True)
        Image.new("RGB", (w, h), (10, 20, 30)).save(voc / "JPEGImages" / f"{name}.jpg")
        (voc / "Annotations" / f"{name}.xml").write_text(_voc_xml(name, w, h, objs))
    (voc / "ImageSets" / "Main" / "trainval.txt").write_text("000005\n000007\n")
    return root


def test_voc_to_coco(tmp_path: Path) -> None:
    root = _voc_tree(tmp_path)
    data = voc_to_coco(root, [("2007", "trainval")])
    assert [c["name"] for c in data["categories"]] == list(VOC_CLASSES)
    assert [c["id"] for c in data["categories"]] == list(range(1, 21))
    assert data["categories"][0]["name"] == "aeroplane" and data["categories"][-1]["name"] == "tvmonitor"
    assert data["detnas"]["image_roots"] == [str(root.absolute())]
    names = [i["file_name"] for i in data["images"]]
    assert names == ["VOC2007/JPEGImages/000005.jpg", "VOC2007/JPEGImages/000007.jpg"]
    assert [(i["id"], i["width"], i["height"]) for i in data["images"]] == [(1, 48, 32), (2, 32, 40)]
    chair, person, tv = data["annotations"]
    assert chair["bbox"] == [0, 0, 48, 32] and chair["category_id"] == 9 and chair["iscrowd"] == 0
    assert person["bbox"] == [9, 4, 10, 16] and person["area"] == 160 and person["iscrowd"] == 1
    assert tv["image_id"] == 2 and tv["category_id"] == 20
    assert len({a["id"] for a in data["annotations"]}) == 3

    # the converted dict passes validation and loads; the difficult person is not a target
    out = tmp_path / "voc.json"
    write_json_atomic(validate_detection(data, source="voc"), out)
    _, target = DetectionDataset(out)[0]
    assert target["labels"].tolist() == [9]


def test_voc_errors(tmp_path: Path) -> None:
    root = _voc_tree(tmp_path)
    with pytest.raises(DataError, match=r"VOC2012 not found"):
        voc_to_coco(root, [("2007", "trainval"), ("2012", "trainval")])
    with pytest.raises(DataError, match=r"test\.txt not found"):
        voc_to_coco(root, [("2007", "test")])
    with pytest.raises(DataError, match="must be the 'VOCdevkit' directory"):
        voc_to_coco(tmp_path, [("2007", "trainval")])
    with pytest.raises(DataError, match="listed in both"):
        voc_to_coco(root, [("2007", "trainval"), ("2007", "trainval")])
    (root / "VOC2007" / "Annotations" / "000007.xml").unlink()
    with pytest.raises(DataError, match=r"000007\.xml not found"):
        voc_to_coco(root, [("2007", "trainval")])
    (root / "VOC2007" / "Annotations" / "000007.xml").write_text(_voc_xml("000007", 32, 40, [("llama", 1, 1, 5, 5, 0)]))
    with pytest.raises(DataError, match=r"000007\.xml: unknown class 'llama' .*'classes: auto'"):
        voc_to_coco(root, [("2007", "trainval")])


def _own_voc_tree(tmp_path: Path) -> Path:
    """A labelling tool's VOC export: its own classes, a difficult object, a zero-width box, a box
    past the border."""
    root = tmp_path / "VOCdevkit"
    voc = root / "VOC2007"
    for d in ("ImageSets/Main", "Annotations", "JPEGImages"):
        (voc / d).mkdir(parents=True)
    specs = {
        "a": (48, 32, [("pallet", 1, 1, 20, 30, 0), ("Worker", 10, 5, 19, 20, 1)]),
        "b": (32, 40, [("forklift", 3, 4, 30, 40, 0), ("pallet", 7, 7, 7, 20, 0)]),  # xmin == xmax
        "c": (40, 40, [("forklift", 5, 5, 60, 30, 0)]),  # 20 px past the right border: c keeps no box
    }
    for name, (w, h, objs) in specs.items():
        Image.new("L", (w, h), 90).save(voc / "JPEGImages" / f"{name}.jpg")  # grayscale
        (voc / "Annotations" / f"{name}.xml").write_text(_voc_xml(name, w, h, objs))
    (voc / "ImageSets" / "Main" / "trainval.txt").write_text("a\nb\nc\n")
    return root


def test_voc_with_its_own_classes(tmp_path: Path) -> None:
    root = _own_voc_tree(tmp_path)
    auto = voc_to_coco(root, [("2007", "trainval")], classes="auto")
    assert [(c["id"], c["name"]) for c in auto["categories"]] == [(1, "Worker"), (2, "forklift"), (3, "pallet")]
    assert [a["category_id"] for a in auto["annotations"]] == [3, 1, 2, 3, 2]
    assert auto["images"][0]["annotation_file"] == "VOC2007/Annotations/a.xml"
    given = voc_to_coco(root, [("2007", "trainval")], classes=["pallet", "forklift", "Worker"])
    assert [a["category_id"] for a in given["annotations"]] == [1, 3, 2, 1, 2]
    with pytest.raises(DataError, match=r"b\.xml: unknown class 'forklift'"):
        voc_to_coco(root, [("2007", "trainval")], classes=["pallet", "Worker"])
    with pytest.raises(DataError, match=r"unknown class 'pallet'"):
        voc_to_coco(root, [("2007", "trainval")])  # the 20 Pascal classes by default


def test_bad_boxes_dropped_with_a_note_per_file_or_refused(tmp_path: Path, capsys) -> None:
    root = _own_voc_tree(tmp_path)
    data = voc_to_coco(root, [("2007", "trainval")], classes="auto")
    kept = validate_detection(data, source="voc", bad_boxes="drop")
    assert len(kept["annotations"]) == 3 and kept["detnas"]["dropped_boxes"] == 2
    notes = capsys.readouterr().err
    assert "image VOC2007/JPEGImages/b.jpg (VOC2007/Annotations/b.xml): dropped 1 bad box(es): [6.0, 6.0, 0.0, 14.0] has zero or negative size" in notes
    assert "c.jpg (VOC2007/Annotations/c.xml): dropped 1 bad box(es): [4.0, 4.0, 56.0, 26.0] lies outside the 40x40 image" in notes
    with pytest.raises(DataError, match=r"image VOC2007/JPEGImages/b\.jpg \(VOC2007/Annotations/b\.xml\): annotation 4 box .* has zero or negative size"):
        validate_detection(data, source="voc", bad_boxes="error")


# ---------------------------------------------------------------------------------------------
# classification


def _folder(tmp_path: Path) -> Path:
    root = tmp_path / "train"
    for c, n in (("cat", 6), ("dog", 4)):
        for i in range(n):
            _png(root / c / f"{i}.png", (20, 16), (i * 20, 0, 0))
    (root / "dog" / "notes.txt").write_text("not an image")
    return root


def test_scan_and_split_classification(tmp_path: Path) -> None:
    root = _folder(tmp_path)
    classes, samples = scan_image_folder(root)
    assert classes == ["cat", "dog"]
    assert len(samples) == 10 and samples[0] == ("cat/0.png", 0) and samples[-1] == ("dog/3.png", 1)
    split = split_classification(root, holdout=3, seed=0)
    assert split["root"] == str(root.absolute()) and split["classes"] == classes
    assert len(split["holdout"]) == 3 and set(split["holdout"]) <= {p for p, _ in samples}
    assert split == split_classification(root, holdout=3, seed=0)
    assert any(split_classification(root, holdout=3, seed=s)["holdout"] != split["holdout"] for s in (1, 2, 3))
    assert len(split_classification(root, holdout=0.5, seed=0)["holdout"]) == 5
    json.dumps(split)
    for bad in (0, 10, 1.0, 0.0, -2, 0.01):
        with pytest.raises(ValueError):
            split_classification(root, holdout=bad, seed=0)


def test_classification_dataset_selection_and_errors(tmp_path: Path) -> None:
    root = _folder(tmp_path)
    holdout = set(split_classification(root, holdout=3, seed=0)["holdout"])
    train = ClassificationDataset(root, transform=None, exclude=holdout)
    val = ClassificationDataset(root, transform=None, include=holdout)
    assert len(train) == 7 and len(val) == 3 and train.classes == ["cat", "dog"]
    assert not {p for p, _ in train.samples} & {p for p, _ in val.samples}
    image, label = val[0]
    assert image.size == (20, 16) and image.mode == "RGB" and label in (0, 1)
    with pytest.raises(DataError, match="not images here"):
        ClassificationDataset(root, transform=None, include={"cat/missing.png"})
    with pytest.raises(DataError, match="no images selected"):
        ClassificationDataset(root, transform=None, exclude={p for p, _ in scan_image_folder(root)[1]})
    with pytest.raises(ValueError, match="not both"):
        ClassificationDataset(root, transform=None, include=holdout, exclude=holdout)
    with pytest.raises(DataError, match="image folder not found"):
        scan_image_folder(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"empty: not a usable ImageFolder layout"):
        scan_image_folder(tmp_path / "empty")
    (tmp_path / "empty" / "cls").mkdir()  # a class folder without images
    with pytest.raises(DataError, match=r"empty: not a usable ImageFolder layout"):
        scan_image_folder(tmp_path / "empty")
    (root / "cat" / "1.png").write_bytes(b"garbage")
    ds = ClassificationDataset(root, transform=None)
    with pytest.raises(DataError, match=r"cat/1\.png is unreadable or corrupt"):
        ds[1]


@pytest.mark.parametrize("train", [True, False])
def test_classification_transforms(tmp_path: Path, train: bool) -> None:
    root = _folder(tmp_path)
    ds = ClassificationDataset(root, transform=classification_transforms(train=train, image_size=24))
    image, _ = ds[0]
    assert image.dtype == torch.float32 and image.shape == (3, 24, 24)


def test_uint8_evaluation_images_normalize_to_the_float_transform(tmp_path: Path) -> None:
    # ClsNAS keeps its held-out images as uint8 and normalizes each batch: same input as float32
    root = _folder(tmp_path)
    as_float = ClassificationDataset(root, transform=classification_transforms(train=False, image_size=24))
    as_uint8 = ClassificationDataset(root, transform=classification_transforms(train=False, image_size=24, normalize=False))
    image, _ = as_uint8[0]
    assert image.dtype == torch.uint8 and image.shape == (3, 24, 24)
    torch.testing.assert_close(normalize_images(image[None])[0], as_float[0][0])
    with pytest.raises(ValueError, match="training transforms always normalize"):
        classification_transforms(train=True, image_size=24, normalize=False)


def test_holdout_that_empties_a_class_fails_naming_it(tmp_path: Path) -> None:
    root = _folder(tmp_path)
    _png(root / "rare" / "0.png", (20, 16), (0, 0, 200))
    # 10 of 11 images held out: one training image is left, so at least two classes lose all of theirs
    with pytest.raises(DataError, match=r"takes every training image of [23] classes: .*\(\d images\)") as e:
        split_classification(root, holdout=10, seed=0)
    assert "holdout.size" in str(e.value)
    assert split_classification(root, holdout=2, seed=0)  # a holdout that leaves every class some images
