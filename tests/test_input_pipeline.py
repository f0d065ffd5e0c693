"""The fast classification input pipeline computes what the PIL pipeline did; detection batches are
grouped by aspect ratio, deterministically and resumably."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from detnas.data.classification import (
    IMAGENET_STD,
    ClassificationDataset,
    classification_transforms,
    normalize_images,
    pil_classification_transforms,
    read_rgb,
    train_augmentation,
)
from detnas.data.coco import DataError, prepare_detection
from detnas.data.grouping import GroupedBatchSampler, aspect_ratio_groups
from detnas.distributed import Dist
from detnas.engine import InfiniteSampler, training_batches

# One uint8 level of a normalized output, per channel: 1 / (255 * std)
LEVEL = torch.tensor([1 / (255 * s) for s in IMAGENET_STD]).view(3, 1, 1)


def _photo(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """Natural-looking content: smooth colour blobs over a gradient, plus grain."""
    coarse = Image.fromarray(rng.integers(0, 256, (max(2, height // 12), max(2, width // 12), 3), dtype=np.uint8))
    smooth = np.asarray(coarse.resize((width, height), Image.BICUBIC), dtype=np.float32)
    gradient = np.linspace(0, 255, width, dtype=np.float32)[None, :, None]
    pixels = 0.55 * smooth + 0.3 * gradient + rng.normal(0, 10, (height, width, 3))
    return Image.fromarray(pixels.clip(0, 255).astype(np.uint8))


def _jpegs(root: Path, n: int, size: tuple[int, int] = (160, 120)) -> list[Path]:
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        path = root / "cls" / f"{i}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        _photo(rng, *(size if i % 3 else size[::-1])).save(path, quality=90)  # every third one portrait
        paths.append(path)
    return paths


def _pil(path: Path) -> Image.Image:
    with Image.open(path) as im:
        return im.convert("RGB")


# ---------------------------------------------------------------------------------------------
# decoding


def test_read_rgb_equals_pil_decoding(tmp_path: Path) -> None:
    rgb = _photo(np.random.default_rng(1), 40, 30)
    cases = {
        "a.jpg": (rgb, {"quality": 90}), "gray.jpg": (rgb.convert("L"), {}), "cmyk.jpg": (rgb.convert("CMYK"), {}),
        "prog.jpg": (rgb, {"progressive": True}), "rgba.png": (rgb.convert("RGBA"), {}),
        "palette.png": (rgb.convert("P"), {}), "a.bmp": (rgb, {}),  # BMP: torchvision cannot, PIL decodes it
    }
    for name, (image, kw) in cases.items():
        image.save(tmp_path / name, **kw)
        decoded = read_rgb(tmp_path / name)
        assert decoded.dtype == torch.uint8 and torch.equal(decoded, F.pil_to_tensor(_pil(tmp_path / name))), name
    (tmp_path / "bad.jpg").write_bytes((tmp_path / "a.jpg").read_bytes()[:200])  # truncated
    with pytest.raises(DataError, match=r"bad\.jpg is unreadable or corrupt \(Image is incomplete or truncated\)"):
        read_rgb(tmp_path / "bad.jpg")


def test_tensor_decoding_dataset_gives_the_pil_pixels(tmp_path: Path) -> None:
    _jpegs(tmp_path, 3)
    as_pil = ClassificationDataset(tmp_path, transform=None)
    as_tensor = ClassificationDataset(tmp_path, transform=None, decode="tensor")
    for i in range(3):
        assert torch.equal(as_tensor[i][0], F.pil_to_tensor(as_pil[i][0])) and as_tensor[i][1] == as_pil[i][1]
    (tmp_path / "cls" / "0.jpg").write_bytes(b"garbage")
    with pytest.raises(DataError, match=r"0\.jpg is unreadable or corrupt"):
        as_tensor[0]
    with pytest.raises(DataError, match=r"0\.jpg is unreadable or corrupt"):
        as_pil[0]
    with pytest.raises(ValueError, match="decode must be one of"):
        ClassificationDataset(tmp_path, transform=None, decode="cv2")


# ---------------------------------------------------------------------------------------------
# training augmentation: same random draws, same pixels up to resampling rounding


def test_colour_jitter_is_pil_exact() -> None:
    # identical uint8 input: the batched float jitter equals v2.ColorJitter on PIL images bit for bit,
    # the grey-mean sum in float32 (<= 256x256) and in float64 (larger) alike
    aug = train_augmentation(224)
    jitter = v2.ColorJitter(0.4, 0.4, 0.4)
    rng = np.random.default_rng(0)
    for size in ((37, 29), (300, 260)):
        images = [F.pil_to_tensor(_photo(rng, *size)) for _ in range(12)]
        expected, params = [], []
        for k, image in enumerate(images):
            torch.manual_seed(k)
            expected.append(F.pil_to_tensor(jitter(F.to_pil_image(image))))
            torch.manual_seed(k)
            p = aug.jitter.make_params([image])
            params.append([p["brightness_factor"], p["contrast_factor"], p["saturation_factor"], *p["fn_idx"].tolist()])
        got = aug.finish(torch.stack(images), torch.tensor(params))  # normalized float
        torch.testing.assert_close(got, normalize_images(torch.stack(expected)), rtol=0, atol=0)


@pytest.mark.parametrize("image_size", [64, 24])  # with colour jitter; the demo's small-image recipe without
def test_training_transform_matches_the_pil_pipeline(tmp_path: Path, image_size: int) -> None:
    paths = _jpegs(tmp_path, 6)
    old = pil_classification_transforms(train=True, image_size=image_size)
    new = classification_transforms(train=True, image_size=image_size)
    diffs = []
    for seed in range(48):
        path = paths[seed % len(paths)]
        torch.manual_seed(seed)
        a = old(_pil(path))
        after_old = torch.rand(4)
        torch.manual_seed(seed)
        b = new(read_rgb(path))
        after_new = torch.rand(4)
        # the same random numbers were drawn (so the same crop, flip, factors and order)
        assert torch.equal(after_old, after_new)
        assert a.shape == b.shape == (3, image_size, image_size) and a.dtype == b.dtype == torch.float32
        diffs.append(((b - a) / LEVEL).round())  # in uint8 levels
    d = torch.stack(diffs)
    # uint8 bilinear resampling (PIL vs torch, ~4 % of values off by one level) is the only difference;
    # the jitter (up to 1.4 x 1.4 x 1.4) can widen one level to a few
    assert d.abs().max() <= (6 if image_size >= 64 else 2)
    assert (d == 0).float().mean() > 0.9
    assert d.abs().mean() < 0.1 and abs(d.mean()) < 0.02  # no bias


def test_training_halves_in_a_batch_equal_one_image_at_a_time(tmp_path: Path) -> None:
    paths = _jpegs(tmp_path, 9)
    aug = train_augmentation(64)
    torch.manual_seed(0)
    sampled = [aug.sample(read_rgb(p)) for p in paths]
    crops, params = torch.stack([c for c, _ in sampled]), torch.stack([p for _, p in sampled])
    assert crops.dtype == torch.uint8 and crops.shape == (9, 3, 64, 64) and params.shape == (9, 7)
    batch = aug.finish(crops, params)  # chunks of a few images on a CPU
    for i in range(9):
        torch.testing.assert_close(batch[i], aug.finish(crops[i:i + 1], params[i:i + 1])[0], rtol=0, atol=0)
    torch.manual_seed(0)
    torch.testing.assert_close(aug(read_rgb(paths[0])), batch[0], rtol=0, atol=0)


def test_pixel_statistics_match_over_many_draws(tmp_path: Path) -> None:
    paths = _jpegs(tmp_path, 4)
    old = pil_classification_transforms(train=True, image_size=64)
    new = classification_transforms(train=True, image_size=64)
    torch.manual_seed(0)
    a = torch.stack([old(_pil(paths[i % 4])) for i in range(64)])
    torch.manual_seed(0)
    b = torch.stack([new(read_rgb(paths[i % 4])) for i in range(64)])
    torch.testing.assert_close(b.mean((0, 2, 3)), a.mean((0, 2, 3)), rtol=0, atol=2e-3)
    torch.testing.assert_close(b.std((0, 2, 3)), a.std((0, 2, 3)), rtol=0, atol=2e-3)


def test_evaluation_transform_matches_the_pil_pipeline(tmp_path: Path) -> None:
    paths = _jpegs(tmp_path, 6)
    old = pil_classification_transforms(train=False, image_size=56)
    uint8 = classification_transforms(train=False, image_size=56, normalize=False)
    a = torch.stack([old(_pil(p)) for p in paths])
    b = normalize_images(torch.stack([uint8(read_rgb(p)) for p in paths]))
    d = ((b - a) / LEVEL).round()
    assert d.abs().max() <= 1 and (d == 0).float().mean() > 0.98
    # the per-batch normalization is the per-image one, exactly
    image = uint8(read_rgb(paths[0]))
    expected = v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize((0.485, 0.456, 0.406), IMAGENET_STD)])
    torch.testing.assert_close(normalize_images(image[None])[0], expected(image), rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------
# aspect-ratio grouping


def test_aspect_ratio_groups() -> None:
    assert aspect_ratio_groups([(640, 480), (480, 640), (500, 500), (427, 640)]) == [0, 1, 0, 1]
    with pytest.raises(ValueError, match="0x480"):
        aspect_ratio_groups([(0, 480)])


def test_grouped_batches_are_pure_cover_each_epoch_and_are_deterministic() -> None:
    groups = [0, 1, 1, 0, 0, 1, 0, 0, 1, 1, 0, 0]  # 7 landscape, 5 portrait
    batch = 3

    def take(seed: int, n: int, start: int = 0) -> list[list[int]]:
        it = iter(GroupedBatchSampler(InfiniteSampler(len(groups), seed=seed), groups, batch, start=start))
        return [next(it) for _ in range(n)]

    batches = take(0, 40)
    assert all(len(b) == batch and len({groups[i] for i in b}) == 1 for b in batches)
    assert batches == take(0, 40) and batches != take(1, 40)
    assert take(0, 25, start=15) == batches[15:]  # a resumed run continues with the same batches
    # group sizes that are multiples of the batch: every consecutive epoch's batches cover each index once
    groups = [0, 1, 1, 0, 0, 1, 0, 1, 0, 1, 1, 0]  # 6 and 6
    batches = take(0, 12)
    for e in range(3):
        assert sorted(i for b in batches[4 * e:4 * e + 4] for i in b) == list(range(12))
    # within a group, indices leave in stream order: the sampler only reorders across groups
    stream = [i for e in range(2) for i in np.random.default_rng([0, e]).permutation(12)]
    order = [i for b in batches[:8] for i in b]
    for g in (0, 1):
        assert [i for i in order if groups[i] == g] == [i for i in stream if groups[i] == g]


def test_training_batches_group_and_resume() -> None:
    groups = [0, 1] * 5 + [0] * 4
    dataset = list(range(len(groups)))  # item = its index
    dist = Dist(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))

    def take(start: int, n: int) -> list[list[int]]:
        it = training_batches(dataset, batch_size=4, seed=2, start_step=start, dist=dist, threads=0,
                              collate_fn=list, group_ids=groups)
        return [next(it) for _ in range(n)]

    batches = take(0, 12)
    assert all(len({groups[i] for i in b}) == 1 for b in batches)
    assert take(5, 7) == batches[5:]
    with pytest.raises(ValueError, match="3 group ids for a dataset of 14"):
        training_batches(dataset, batch_size=4, seed=0, start_step=0, dist=dist, threads=0, group_ids=[0, 1, 0])


def test_finetune_stage_groups_its_batches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from detnas.stages import finetune

    rng = np.random.default_rng(0)
    (tmp_path / "images").mkdir()
    images, anns = [], []
    for i in range(8):
        w, h = (48, 32) if i % 3 else (32, 48)
        _photo(rng, w, h).save(tmp_path / "images" / f"{i}.jpg")
        images.append({"id": i, "file_name": f"{i}.jpg", "width": w, "height": h})
        anns.append({"id": i, "image_id": i, "category_id": 1, "bbox": [4, 4, 20, 20], "area": 400, "iscrowd": 0})
    coco = {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "thing"}]}
    (tmp_path / "raw.json").write_text(json.dumps(coco))
    (tmp_path / "train.json").write_text(json.dumps(prepare_detection(tmp_path / "raw.json", [tmp_path / "images"])))

    seen: dict = {}

    class Built(Exception):
        pass

    def spy(dataset, **kw):
        seen.update(kw, batches=training_batches(dataset, **kw))
        raise Built  # the loader is what this test is about; the training loop is tested elsewhere

    monkeypatch.setattr(finetune, "training_batches", spy)
    settings = {
        "space": "tiny", "batch_size": 2, "seed": 0,
        "detector": {"name": "faster_rcnn_fpn", "min_size": 32, "max_size": 48, "fpn_channels": 8,
                     "head_conv_channels": 8, "head_fc_channels": 16},
        "schedule": {"iterations": 2, "lr": 0.01, "policy": "step", "weight_decay": 1e-4},
    }
    with pytest.raises(Built):
        finetune.run_finetune(settings, train_file=tmp_path / "train.json", init=None, arch=None,
                              weights_out=tmp_path / "w.pt", metrics_out=tmp_path / "m.json",
                              curves_out=tmp_path / "c.png", checkpoint_dir=tmp_path / "ckpt", mlflow={}, threads=0)
    assert seen["group_ids"] == [0 if i % 3 else 1 for i in range(8)]
    for _ in range(6):
        batch_images, _ = next(seen["batches"])
        assert len({im.shape[-1] >= im.shape[-2] for im in batch_images}) == 1
