"""The search keeps its images encoded (file bytes) and decodes them batch by batch: the same
tensors as decoding once, a fraction of the memory."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from detnas.data.coco import prepare_detection
from detnas.evaluate import DetectionImages
from detnas.io import write_json_atomic


def _jpeg_dataset(root, n=6):
    """Natural-looking JPEGs (gradients plus noise), one grayscale, of two sizes, with boxes."""
    rng = np.random.default_rng(0)
    images, anns = [], []
    (root / "images").mkdir(parents=True)
    for i in range(n):
        w, h = (160, 120) if i % 2 else (120, 160)
        y, x = np.mgrid[0:h, 0:w]
        pix = (np.stack([x * 255 / w, y * 255 / h, (x + y) * 127 / (w + h)], -1) + rng.normal(0, 12, (h, w, 3)))
        im = Image.fromarray(pix.clip(0, 255).astype(np.uint8))
        if i == 3:
            im = im.convert("L")
        im.save(root / "images" / f"{i}.jpg", quality=90)
        images.append({"id": 10 + 3 * i, "file_name": f"{i}.jpg", "width": w, "height": h})
        anns.append({"id": i + 1, "image_id": 10 + 3 * i, "category_id": 7, "bbox": [5, 6, 40, 30], "area": 1200,
                     "iscrowd": 0})
    ann = {"images": images, "annotations": anns, "categories": [{"id": 7, "name": "thing"}]}
    (root / "ann.json").write_text(json.dumps(ann))
    data = prepare_detection(root / "ann.json", [root / "images"])
    write_json_atomic(data, root / "split.json")
    return root / "split.json"


def test_encoded_images_decode_to_the_same_batches_in_a_fraction_of_the_memory(tmp_path):
    ann = _jpeg_dataset(tmp_path)
    enc = DetectionImages.load(ann, limit=5, seed=1)
    dec = DetectionImages.load(ann, limit=5, seed=1, decoded=True)
    assert enc.encoded and not dec.encoded and enc.image_ids == dec.image_ids and len(enc) == 5
    assert enc.nbytes() < 0.25 * dec.nbytes()
    for (ims_e, tgs_e), (ims_d, tgs_d) in zip(enc.batches(2, torch.device("cpu")), dec.batches(2, torch.device("cpu")),
                                              strict=True):
        assert len(ims_e) == len(ims_d) and all(torch.equal(a, b) for a, b in zip(ims_e, ims_d))
        assert all(a.shape[0] == 3 and a.dtype == torch.float32 for a in ims_e)  # grayscale made RGB
        for a, b in zip(tgs_e, tgs_d):
            assert a["image_id"] == b["image_id"] and torch.equal(a["boxes"], b["boxes"])
            assert torch.equal(a["labels"], b["labels"])


def test_a_file_that_stops_decoding_is_named(tmp_path):
    ann = _jpeg_dataset(tmp_path)
    data = DetectionImages.load(ann)
    data.images[2] = data.images[2][:50].clone()  # as if the file were cut after the split checked it
    with pytest.raises(ValueError, match=r"image '.*\.jpg' \(id \d+\) of .* is unreadable or corrupt"):
        list(data.batches(2, torch.device("cpu")))
