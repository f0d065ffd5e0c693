"""The defects real exports carry, through the split stage: refused with one line naming the file
(or handled, with the result checked), before any training. And no job talks to the network."""

import json
import os
import re
import struct
import subprocess
import sys
import unicodedata
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import as_json, run_detnas
from own_data import _photo, coco_export, voc_export
from PIL import Image, ImageOps

from detnas.data.coco import DataError, DetectionDataset
from detnas.evaluate import DetectionImages
from detnas.stages.split import run_split_classification, run_split_detection

MLFLOW = {"experiment": "data", "run_name": "split", "tags": {"stage": "split"}}
ROOT = Path(__file__).resolve().parents[1]


def _coco_settings(ann, images, test=None, **more):
    return {"entry": "detection_data.mine",
            "sources": {"type": "coco", "train": {"annotations": str(ann), "images": [str(images)]},
                        "test": test or {"holdout": 2, "seed": 0}},
            "split": {"size": 0.25, "seed": 0}, "check_images": True, "bad_boxes": "drop", **more}


def _export(root: Path, files: dict[str, tuple[int, int]], boxes_per_image: int = 2) -> Path:
    """A COCO JSON over ``files`` (name -> annotated (width, height)), all in ``root/images``,
    each image with a few boxes inside it; the image files are the caller's."""
    images, anns = [], []
    for i, (name, (w, h)) in enumerate(sorted(files.items())):
        images.append({"id": 10 + i, "file_name": name, "width": w, "height": h})
        for k in range(boxes_per_image):
            anns.append({"id": len(anns) + 1, "image_id": 10 + i, "category_id": 1,
                         "bbox": [2.0 + 3 * k, 2.0, w / 3, h / 3], "area": w * h / 9, "iscrowd": 0})
    path = root / "annotations.json"
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": [{"id": 1, "name": "thing"}]}))
    return path


def _jpegs(root: Path, n: int, size=(40, 30)) -> dict[str, tuple[int, int]]:
    for i in range(n):
        _photo(root / "images" / f"plain_{i}.jpg", *size, seed=i)
    return {f"plain_{i}.jpg": size for i in range(n)}


def _png16_rgb(path: Path, pixels: np.ndarray) -> None:
    """A 48-bit RGB PNG (PIL cannot write one): IHDR bit depth 16, colour type 2, unfiltered rows."""
    h, w, _ = pixels.shape

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\0" + pixels[y].astype(">u2").tobytes() for y in range(h))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def _expected8(values: np.ndarray) -> np.ndarray:
    return np.round(values.astype(np.float64) * 255 / 65535).astype(np.uint8)


def _split_error(tmp_path: Path, settings: dict) -> str:
    """Run the split through the CLI; it must fail with one line (no traceback) and write nothing."""
    out = tmp_path / "refused"
    proc = run_detnas("split-detection", "--settings", as_json(settings), "--out-dir", str(out),
                      "--mlflow", as_json({**MLFLOW, "results_dir": str(tmp_path / "results")}), check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and not out.exists()
    (line,) = [x for x in proc.stderr.splitlines() if x.startswith("error: ")]
    return line


# -- 2: what a decoded image is -------------------------------------------------------------------

def test_16bit_pngs_reach_the_models_as_their_8bit_pixels(tmp_path):
    rng = np.random.default_rng(0)
    files = _jpegs(tmp_path, 4)
    gray = rng.integers(0, 65536, (30, 40), dtype=np.uint16)
    gray[0, :4] = [0, 65535, 257 * 200, 128]  # the ends, an 8-bit value stored as 16 bits, a rounding case
    Image.fromarray(gray).save(tmp_path / "images" / "gray16.png")
    assert Image.open(tmp_path / "images" / "gray16.png").mode == "I;16"
    rgb = rng.integers(0, 65536, (30, 40, 3), dtype=np.uint16)
    _png16_rgb(tmp_path / "images" / "rgb16.png", rgb)
    files.update({"gray16.png": (40, 30), "rgb16.png": (40, 30)})
    ann = _export(tmp_path, files)
    out = tmp_path / "out"
    run_split_detection(_coco_settings(ann, tmp_path / "images", test={"holdout": 1, "seed": 0}), out_dir=out,
                        mlflow={**MLFLOW, "results_dir": str(tmp_path / "results")})
    expected = {"gray16.png": np.repeat(_expected8(gray)[None], 3, 0), "rgb16.png": _expected8(rgb).transpose(2, 0, 1)}
    assert expected["gray16.png"][0, 0, :4].tolist() == [0, 255, 200, 0]
    seen = set()
    for part in ("train", "test"):
        ds = DetectionDataset(out / f"{part}.json")
        images = DetectionImages.load(out / f"{part}.json")  # the search's and evaluation's decoding
        decoded = images.decoded(0, len(images))
        for i, image_id in enumerate(ds.image_ids):
            name = ds.coco.imgs[image_id]["file_name"]
            image, _ = ds[i]  # training's float image
            assert image.dtype == torch.float32 and image.shape == (3, 30, 40) and image.max() <= 1.0
            assert decoded[images.image_ids.index(image_id)].dtype == torch.uint8
            if name in expected:
                seen.add(name)
                assert torch.equal((image * 255).round().to(torch.uint8), torch.from_numpy(expected[name]))
                assert torch.equal(decoded[images.image_ids.index(image_id)], torch.from_numpy(expected[name]))
    assert seen == set(expected)


def _rotated_jpeg(path: Path, seed: int = 3) -> Image.Image:
    """A JPEG stored 64x48 with EXIF orientation 6 (shown turned 90 degrees clockwise: 48x64)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    stored = Image.fromarray(np.random.default_rng(seed).integers(0, 255, (48, 64, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6
    stored.save(path, quality=95, exif=exif)
    with Image.open(path) as im:
        return ImageOps.exif_transpose(im).convert("RGB")


def test_exif_orientation_is_applied_to_the_pixels_and_to_the_size_check(tmp_path):
    files = _jpegs(tmp_path, 4)
    shown = _rotated_jpeg(tmp_path / "images" / "phone.jpg")
    assert shown.size == (48, 64)
    ann = _export(tmp_path, {**files, "phone.jpg": (48, 64)})  # the size a labelling tool shows
    out = tmp_path / "out"
    run_split_detection(_coco_settings(ann, tmp_path / "images", test={"holdout": 1, "seed": 1}), out_dir=out,
                        mlflow={**MLFLOW, "results_dir": str(tmp_path / "results")})
    found = False
    for part in ("train", "test"):
        ds = DetectionDataset(out / f"{part}.json", uint8=True)
        for i, image_id in enumerate(ds.image_ids):
            if ds.coco.imgs[image_id]["file_name"] == "phone.jpg":
                image, target = ds[i]
                assert image.shape == (3, 64, 48)
                assert torch.equal(image, torch.from_numpy(np.array(shown)).permute(2, 0, 1))
                assert (target["boxes"][:, 2] <= 48).all() and (target["boxes"][:, 3] <= 64).all()
                found = True
    assert found
    # annotated at the size as stored, not as shown: refused, saying why
    ann = _export(tmp_path, {**files, "phone.jpg": (64, 48)})
    line = _split_error(tmp_path, _coco_settings(ann, tmp_path / "images"))
    assert "phone.jpg is 48x64 (WxH) as its EXIF orientation turns it (stored 64x48) but the JSON says 64x48" in line


def test_an_animation_is_refused_naming_the_file(tmp_path):
    files = _jpegs(tmp_path, 4)
    frames = [Image.fromarray(np.full((30, 40, 3), 60 * k, dtype=np.uint8)) for k in range(3)]
    frames[0].save(tmp_path / "images" / "clip.gif", save_all=True, append_images=frames[1:])
    ann = _export(tmp_path, {**files, "clip.gif": (40, 30)})
    line = _split_error(tmp_path, _coco_settings(ann, tmp_path / "images"))
    assert "clip.gif has 3 frames" in line


# -- 3: every number a finite number of the right type --------------------------------------------

def _set(path: list, value):
    def edit(d):
        obj = d
        for key in path[:-1]:
            obj = obj[key]
        obj[path[-1]] = value
    return edit


@pytest.mark.parametrize("edit, expected", [
    (_set(["annotations", 0, "bbox", 2], float("nan")), "annotation 1: bbox[2] (w) is nan, not a finite number"),
    (_set(["annotations", 0, "bbox", 0], float("inf")), "annotation 1: bbox[0] (x) is inf, not a finite number"),
    (_set(["annotations", 0, "bbox", 1], "4"), "annotation 1: bbox[1] (y) must be a number, got '4' (a string)"),
    (_set(["annotations", 0, "area"], float("nan")), "annotation 1: 'area' is nan, not a finite number"),
    (_set(["annotations", 0, "category_id"], True), "annotation 1: 'category_id' must be a number, got True (a boolean)"),
    (_set(["annotations", 0, "iscrowd"], "1"), "annotation 1: 'iscrowd' must be 0 or 1, got '1' (a string)"),
    (_set(["images", 0, "width"], "64"), "image entry 'img_000.jpg' (id 100): 'width' must be a number, got '64' (a string)"),
    (_set(["images", 0, "height"], float("nan")), "image entry 'img_000.jpg' (id 100): 'height' is nan, not a finite number"),
    (_set(["images", 0, "width"], 63.5), "image entry 'img_000.jpg' (id 100): 'width' must be a whole number, got 63.5"),
    (_set(["images", 0, "id"], "100"), "image entry 'img_000.jpg' (id '100'): 'id' must be a number, got '100' (a string)"),
])
def test_a_bad_number_in_an_annotation_is_one_line_naming_file_image_and_field(tmp_path, edit, expected):
    ann = coco_export(tmp_path / "export")
    data = json.loads(ann.read_text())
    edit(data)
    ann.write_text(json.dumps(data))  # NaN and Infinity as Python's json writes (and reads) them
    line = _split_error(tmp_path, _coco_settings(ann, tmp_path / "export" / "images"))
    assert line.startswith(f"error: {ann}: ") and expected in line, line
    if "annotation 1:" in expected:
        assert "image img_000.jpg (id 100)" in line  # annotation 1 is on the first image


def test_a_nan_in_a_voc_box_names_the_xml(tmp_path):
    root = voc_export(tmp_path)
    xml = root / "VOC2007" / "Annotations" / "frame0003.xml"
    text = xml.read_text()
    start = text.index("<xmax>") + len("<xmax>")
    xml.write_text(text[:start] + "nan" + text[text.index("</xmax>"):])
    settings = {"entry": "detection_data.yard", "classes": "auto", "bad_boxes": "drop", "check_images": True,
                "sources": {"type": "voc", "root": str(root), "train": [["2007", "trainval"]],
                            "test": {"holdout": 4, "seed": 0}}, "split": {"size": 0.25, "seed": 0}}
    line = _split_error(tmp_path, settings)
    assert "VOC2007/JPEGImages/frame0003.jpg (VOC2007/Annotations/frame0003.xml)" in line and "is nan" in line


# -- 4: an image is its file ----------------------------------------------------------------------

def test_one_file_under_two_ids_is_refused(tmp_path):
    ann = coco_export(tmp_path / "export")
    data = json.loads(ann.read_text())
    data["images"].append({**data["images"][3], "id": 999, "file_name": "./" + data["images"][3]["file_name"]})
    data["annotations"].append({**data["annotations"][0], "id": 9999, "image_id": 999})
    ann.write_text(json.dumps(data))
    line = _split_error(tmp_path, _coco_settings(ann, tmp_path / "export" / "images"))
    assert "1 image files are listed under more than one image id: id 121 ('img_003.jpg') and id 999 " in line
    assert str((tmp_path / "export" / "images" / "img_003.jpg").resolve()) in line


@pytest.mark.parametrize("spelling", ["dot", "parent", "absolute", "link"])
def test_a_test_image_that_is_a_training_file_is_leakage_however_spelled(tmp_path, spelling):
    ann = coco_export(tmp_path / "export")
    images = tmp_path / "export" / "images"
    data = json.loads(ann.read_text())
    test = tmp_path / "test"
    _photo(test / "own.jpg", 64, 48, seed=77)
    (images / "sub").mkdir()
    name = {"dot": "./img_004.jpg", "parent": "sub/../img_004.jpg", "absolute": str(images / "img_004.jpg"),
            "link": "alias.jpg"}[spelling]
    if spelling == "link":
        (test / "alias.jpg").symlink_to(images / "img_004.jpg")
    entry = next(i for i in data["images"] if i["file_name"] == "img_004.jpg")
    test_json = tmp_path / "test.json"
    test_json.write_text(json.dumps({
        "images": [{**entry, "id": 1, "file_name": name}, {"id": 2, "file_name": "own.jpg", "width": 64, "height": 48}],
        "annotations": [{"id": 1, "image_id": 2, "category_id": 5, "bbox": [1, 1, 20, 20], "area": 400, "iscrowd": 0}],
        "categories": data["categories"]}))
    line = _split_error(tmp_path, _coco_settings(ann, images, test={"annotations": str(test_json),
                                                                  "images": [str(test), str(images)]}))
    assert "1 test images are also training images (the same files" in line
    assert f"test {name!r} is train 'img_004.jpg'" in line


def test_two_exports_numbering_their_files_alike_are_not_leakage(tmp_path):
    train = coco_export(tmp_path / "a")
    test = coco_export(tmp_path / "b", n=8)  # img_000.jpg ... img_007.jpg again, other pictures
    data = json.loads(test.read_text())
    for img in data["images"]:  # other pixels under the same names
        _photo(tmp_path / "b" / "images" / img["file_name"], img["width"], img["height"], seed=500 + img["id"])
    test.write_text(json.dumps(data))
    out = tmp_path / "out"
    run_split_detection(_coco_settings(train, tmp_path / "a" / "images",
                                       test={"annotations": str(test), "images": [str(tmp_path / "b" / "images")]}),
                        out_dir=out, mlflow={**MLFLOW, "results_dir": str(tmp_path / "results")})
    assert len(json.loads((out / "test.json").read_text())["images"]) == 8


def test_test_categories_must_be_the_training_categories(tmp_path):
    train = coco_export(tmp_path / "a")
    test = coco_export(tmp_path / "b", n=8)
    data = json.loads(test.read_text())
    data["categories"][1]["name"] = "pallet"  # id 5 names another class
    test.write_text(json.dumps(data))
    line = _split_error(tmp_path, _coco_settings(train, tmp_path / "a" / "images",
                                                 test={"annotations": str(test), "images": [str(tmp_path / "b" / "images")]}))
    assert "the test file's categories" in line and "(5, 'forklift')" in line and "(5, 'pallet')" in line


def test_a_file_name_leading_outside_the_image_roots_is_named_in_a_note(tmp_path, capsys):
    ann = coco_export(tmp_path / "export")
    data = json.loads(ann.read_text())
    _photo(tmp_path / "elsewhere" / "far.jpg", 48, 64, seed=3)  # the size of image 6 of the export
    data["images"][6]["file_name"] = "../../elsewhere/far.jpg"
    ann.write_text(json.dumps(data))
    run_split_detection(_coco_settings(ann, tmp_path / "export" / "images"), out_dir=tmp_path / "out",
                        mlflow={**MLFLOW, "results_dir": str(tmp_path / "results")})
    err = capsys.readouterr().err
    assert "note: 1 image file names lead outside the image roots" in err and "../../elsewhere/far.jpg" in err


def test_voc_class_names_are_compared_unicode_normalised(tmp_path):
    root = voc_export(tmp_path)
    annotations = sorted((root / "VOC2007" / "Annotations").glob("*.xml"))
    classes = set()
    for k, xml in enumerate(annotations):  # one label typed as composed and as decomposed accents
        form = unicodedata.normalize("NFC" if k % 2 else "NFD", "caf\u00e9")
        text = re.sub(r"<name>[^<]*</name>", f"<name>{form}</name>", xml.read_text())
        classes |= set(re.findall(r"<name>([^<]*)</name>", text))
        xml.write_text(text)
    assert len(classes) == 2  # two spellings in the files
    settings = {"entry": "detection_data.yard", "classes": "auto", "bad_boxes": "drop", "check_images": True,
                "sources": {"type": "voc", "root": str(root), "train": [["2007", "trainval"]],
                            "test": {"holdout": 4, "seed": 0}}, "split": {"size": 0.25, "seed": 0}}
    out = tmp_path / "out"
    run_split_detection(settings, out_dir=out, mlflow={**MLFLOW, "results_dir": str(tmp_path / "results")})
    assert json.loads((out / "split_metrics.json").read_text())["classes"] == [unicodedata.normalize("NFC", "caf\u00e9")]


def _folders(root: Path, classes: list[str], n: int = 4) -> None:
    for c, name in enumerate(classes):
        for i in range(n):
            _photo(root / name / f"{i}.jpg", 24, 24, seed=100 * c + i)


def _cls_settings(tmp_path):
    return {"train": str(tmp_path / "train"), "val": str(tmp_path / "val"), "holdout": {"size": 2, "seed": 0}}


def test_a_classification_val_image_linked_to_a_training_image_is_refused(tmp_path):
    _folders(tmp_path / "train", ["a", "b"])
    _folders(tmp_path / "val", ["a", "b"], n=2)
    (tmp_path / "val" / "b" / "1.jpg").unlink()
    (tmp_path / "val" / "b" / "1.jpg").symlink_to(tmp_path / "train" / "a" / "3.jpg")
    with pytest.raises(DataError, match=r"1 validation images are training images .*'val b/1.jpg is train a/3.jpg'"):
        run_split_classification(_cls_settings(tmp_path), out=tmp_path / "split.json",
                                 mlflow={**MLFLOW, "results_dir": str(tmp_path / "results")})
    assert not (tmp_path / "split.json").exists()


def test_one_classification_file_under_two_class_folders_is_refused(tmp_path):
    _folders(tmp_path / "train", ["a", "b"])
    _folders(tmp_path / "val", ["a", "b"], n=2)
    os.link(tmp_path / "train" / "a" / "0.jpg", tmp_path / "train" / "b" / "9.jpg")  # a hard link
    with pytest.raises(DataError, match=r"1 images are one file under two paths .*\('a/0.jpg', 'b/9.jpg'\)"):
        run_split_classification(_cls_settings(tmp_path), out=tmp_path / "split.json",
                                 mlflow={**MLFLOW, "results_dir": str(tmp_path / "results")})


def test_classification_class_folders_in_two_unicode_forms_are_refused(tmp_path):
    name = "caf\u00e9"
    _folders(tmp_path / "train", [unicodedata.normalize("NFC", name), "tea"])
    _folders(tmp_path / "val", [unicodedata.normalize("NFD", name), "tea"], n=2)
    with pytest.raises(DataError, match="differ from those in .* only in their Unicode form"):
        run_split_classification(_cls_settings(tmp_path), out=tmp_path / "split.json",
                                 mlflow={**MLFLOW, "results_dir": str(tmp_path / "results")})


# -- 1: no data leaves the machine ----------------------------------------------------------------

# Records every name lookup and connection of a Python process (audit hooks see them all).
_RECORDER = '''
import os, sys
def _hook(event, args):
    if event in ("socket.getaddrinfo", "socket.gethostbyname", "socket.connect"):
        with open(os.environ["NET_LOG"], "a") as f:
            f.write(f"{event} {args[:2]!r}\\n")
sys.addaudithook(_hook)
'''


def _bare_env(tmp_path: Path, **more: str) -> dict[str, str]:
    """A minimal environment: none of the CI or test markers (PYTEST_CURRENT_TEST, CI, ...) that
    make MLflow skip telemetry on its own, and the recorder loaded first."""
    hook = tmp_path / "hook"
    hook.mkdir(exist_ok=True)
    (hook / "sitecustomize.py").write_text(_RECORDER)
    return {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "PYTHONPATH": f"{hook}{os.pathsep}{ROOT}",
            "NET_LOG": str(tmp_path / "net.log"), "OMP_NUM_THREADS": "1", **more}


def test_importing_the_tracking_module_disables_mlflow_telemetry(tmp_path):
    check = "import mlflow.telemetry.utils as u; print(u.is_telemetry_disabled())"
    env = _bare_env(tmp_path)
    out = lambda code, **more: subprocess.run([sys.executable, "-c", code], env={**env, **more}, capture_output=True,  # noqa: E731
                                              text=True, check=True).stdout.strip()
    assert out(check) == "False"  # MLflow's default here: on
    assert out("import detnas.tracking; " + check) == "True"
    assert out("import detnas.tracking; " + check, MLFLOW_DISABLE_TELEMETRY="false") == "False"  # the opt-in


def test_a_job_opens_no_network_connection(tmp_path):
    ann = coco_export(tmp_path / "export")
    settings = _coco_settings(ann, tmp_path / "export" / "images")

    def split(out: str, **more: str) -> str:
        log = tmp_path / "net.log"
        log.unlink(missing_ok=True)
        subprocess.run([sys.executable, "-m", "detnas", "split-detection", "--settings", as_json(settings),
                        "--out-dir", str(tmp_path / out), "--mlflow", as_json(MLFLOW)],
                       cwd=tmp_path, env=_bare_env(tmp_path, **more), capture_output=True, check=True, timeout=300)
        return log.read_text() if log.exists() else ""

    assert split("a") == ""
    # the recorder sees what MLflow does when a user opts back in: it looks up its telemetry host
    assert "mlflow-telemetry" in split("b", MLFLOW_DISABLE_TELEMETRY="false")
