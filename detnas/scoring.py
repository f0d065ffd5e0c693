"""How the search scores an architecture: a path of a trained supernet, its BN statistics recalibrated
on training images, evaluated on held-out images. DetNAS and random search score detection paths
(mmAP on the search split); ClsNAS scores classification paths (top-1 on held-out training images).

The same scorers serve the ranking-quality stage, so a fitness it computes for an architecture the
search never met is the very number the search would have given it.
"""

from __future__ import annotations

import time
import zlib
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import torch
from torch import Tensor, nn

from .data.classification import ClassificationDataset, classification_transforms, normalize_images, read_split
from .detectors import detector_from_checkpoint
from .engine import recalibrate_bn
from .coco_eval import Evaluator, coco_box_metrics
from .evaluate import DetectionImages, detect_array
from .io import load_checkpoint
from .precision import Precision
from .space import Arch, SearchSpace, get_space
from .supernet import Supernet, set_path

__all__ = ["ClassificationScorer", "DetectionScorer", "ProxyScorer", "Scored", "build_scorer", "classification_scorer",
           "detection_scorer", "proxy_batches", "score_many"]


def _candidate_seed(seed: int, arch: Arch) -> int:
    # recalibration samples proposals at random: seed it by the candidate, not by the order or rank
    return zlib.crc32(f"{seed}:{arch}".encode())


@dataclass
class Scored:
    """One candidate's score: its fitness, the metrics behind it, and the seconds of work it took
    (model work plus evaluation, each counted once even where they overlapped other candidates)."""

    arch: Arch
    fitness: float
    metrics: dict[str, float]
    seconds: float


class DetectionScorer:
    """mmAP (AP@[.5:.95]) of a path of the fine-tuned detection supernet, after BN recalibration;
    every forward pass (recalibration and detection) under ``precision``. ``last_metrics``: the
    candidate's AP, AP50 and AP75 (no per-size figures: a search needs none, and they triple COCOeval's
    time).

    ``evaluator`` (``detnas.coco_eval.Evaluator`` over ``val``'s ground truth, named "val"): where
    given, ``score_many`` evaluates each candidate in that process while this one recalibrates and
    runs the next; the figures are the same as the serial ones.
    """

    def __init__(self, model: nn.Module, val: DetectionImages, recal: DetectionImages, *, batch_size: int,
                 device: torch.device, seed: int, precision: Precision = Precision(),
                 evaluator: Evaluator | None = None) -> None:
        self.model, self.val, self.recal = precision.prepare(model), val, recal
        self.batch_size, self.device, self.seed, self.precision = batch_size, device, seed, precision
        self.space: SearchSpace | None = getattr(model, "space", None)  # set by detection_scorer
        self.evaluator = evaluator
        self.last_metrics: dict[str, float] = {}

    def detections(self, arch: Arch) -> np.ndarray:
        """The model work of a candidate: its path, BN recalibrated, run on the search-validation
        images; their detections as an (N, 7) array (``detnas.coco_eval``)."""
        set_path(self.model, arch)
        torch.manual_seed(_candidate_seed(self.seed, arch))
        with self.precision.autocast():
            recalibrate_bn(self.model, self.recal.batches(self.batch_size, self.device), lambda b: self.model(*b))
            return detect_array(self.model, self.val, batch_size=self.batch_size, device=self.device)

    def __call__(self, arch: Arch) -> float:
        self.last_metrics = coco_box_metrics(self.val.coco, self.detections(arch), self.val.image_ids, by_size=False)
        return self.last_metrics["AP"]

    def score_many(self, archs: Iterable[Arch]) -> Iterator[Scored]:
        """``archs`` scored in order. With an evaluator, candidate k's COCO evaluation runs while
        candidate k + 1's model work does: at most two candidates' detections are held."""
        if self.evaluator is None:
            yield from _serial(self, archs)
            return
        pending: deque[tuple[Arch, Future, float]] = deque()
        for arch in archs:
            t = time.perf_counter()
            dets = self.detections(arch)
            pending.append((arch, self.evaluator.submit("val", dets, self.val.image_ids, by_size=False),
                            time.perf_counter() - t))
            del dets
            if len(pending) > 1:
                yield self._collect(*pending.popleft())
        while pending:
            yield self._collect(*pending.popleft())

    def _collect(self, arch: Arch, future: Future, model_seconds: float) -> Scored:
        metrics, eval_seconds = future.result()
        self.last_metrics = metrics
        return Scored(arch, metrics["AP"], metrics, model_seconds + eval_seconds)

    def close(self, wait: bool = True) -> None:
        """Stop the evaluator process; ``wait=False`` (after an error) drops what is pending."""
        if self.evaluator is not None:
            self.evaluator.close(wait)


def _serial(scorer: Callable[[Arch], float], archs: Iterable[Arch]) -> Iterator[Scored]:
    for arch in archs:
        t = time.perf_counter()
        fitness = scorer(arch)
        yield Scored(arch, fitness, dict(getattr(scorer, "last_metrics", {})), time.perf_counter() - t)


def score_many(scorer: Callable[[Arch], float], archs: Iterable[Arch]) -> Iterator[Scored]:
    """``archs`` scored in order by ``scorer`` (its own ``score_many`` where it has one, which may
    overlap candidates; else one call after another)."""
    many = getattr(scorer, "score_many", None)
    return many(archs) if many is not None else _serial(scorer, archs)


class ClassificationScorer:
    """Top-1 of a path of the pre-trained classification supernet on held-out training images,
    after BN recalibration on other training images.

    Images are uint8 (B, 3, H, W), normalized batch by batch: ImageNet's 50,000 held-out images at
    224 px take 7.5 GB this way, 30 GB as float32. Every forward pass runs under ``precision``.
    """

    def __init__(self, model: nn.Module, val: tuple[Tensor, Tensor], recal: Tensor, *, batch_size: int,
                 device: torch.device, precision: Precision = Precision()) -> None:
        self.model, self.batch_size, self.device = precision.prepare(model), batch_size, device
        self.precision = precision
        self.val_x, self.val_y = val
        # split once: every candidate recalibrates on the same batches
        self.recal_batches = [precision.images(normalize_images(recal[i:i + batch_size].to(device)))
                              for i in range(0, len(recal), batch_size)]
        self.last_metrics: dict[str, float] = {}

    def _val_images(self, i: int) -> Tensor:
        """Held-out images i .. i + batch_size - 1, normalized: float32 (B, 3, H, W)."""
        return self.precision.images(normalize_images(self.val_x[i:i + self.batch_size].to(self.device)))

    def __call__(self, arch: Arch) -> float:
        set_path(self.model, arch)
        with self.precision.autocast(), torch.no_grad():
            recalibrate_bn(self.model, self.recal_batches, self.model)
            correct = sum(
                int((self.model(self._val_images(i)).argmax(1).cpu() == self.val_y[i:i + self.batch_size]).sum())
                for i in range(0, len(self.val_x), self.batch_size)
            )
        top1 = correct / len(self.val_x)
        self.last_metrics = {"top1": top1}
        return top1

    def close(self, wait: bool = True) -> None:
        """Nothing to release (the interface of ``DetectionScorer``)."""


def proxy_batches(ann_file: Path, *, batches: int, batch_size: int, input_size: int, seed: int) -> list[Tensor]:
    """``batches`` batches of ``batch_size`` detection training images (drawn with ``seed``), each
    resized to ``input_size`` x ``input_size`` and normalized as the networks see them: the input of
    the data-dependent proxies (``detnas.proxies``). Fewer images than asked: as many batches as fit."""
    images = DetectionImages.load(ann_file, limit=batches * batch_size, seed=seed)
    n = (len(images) // batch_size) * batch_size
    if n == 0:
        raise ValueError(f"{ann_file}: {len(images)} images, fewer than one proxy batch of {batch_size}")
    out = []
    for lo in range(0, n, batch_size):
        resized = [torch.nn.functional.interpolate(im[None].float(), size=(input_size, input_size), mode="bilinear",
                                                   align_corners=False).round().clamp(0, 255).to(torch.uint8)
                   for im in images.decoded(lo, lo + batch_size)]
        out.append(normalize_images(torch.cat(resized)))
    return out


class ProxyScorer:
    """A training-free fitness: proxy ``name`` (``detnas.proxies.PROXIES``) of an architecture's
    randomly initialized standalone backbone at ``input_size`` (seeded by ``seed``), on ``batches``
    where the proxy needs data. No supernet; the same number for the same architecture every time."""

    def __init__(self, name: str, space: SearchSpace, *, input_size: int, seed: int,
                 batches: list[Tensor] | None, device: torch.device) -> None:
        from .proxies import PROXIES  # torch-heavy definitions: only where a proxy scores

        if name not in PROXIES:
            raise ValueError(f"unknown proxy {name!r}; known: {', '.join(PROXIES)}")
        self.name, self.space, self.input_size, self.seed, self.device = name, space, input_size, seed, device
        self.batches = batches if PROXIES[name].needs_data else None
        self.last_metrics: dict[str, float] = {}

    def __call__(self, arch: Arch) -> float:
        from .proxies import score

        value = score(self.name, self.space, arch, input_size=self.input_size, seed=self.seed, batches=self.batches,
                      device=self.device)
        self.last_metrics = {self.name: value}
        return value

    def close(self, wait: bool = True) -> None:
        """Nothing to release (the interface of ``DetectionScorer``)."""


def proxy_scorer(name: str, space: str | SearchSpace, data_file: Path | None, *, input_size: int, batches: int,
                 batch_size: int, seed: int, device: torch.device) -> ProxyScorer:
    """``ProxyScorer`` of ``name`` on ``space``; a data-dependent proxy draws its batches from
    ``data_file`` (detection training annotations, ``proxy_batches``)."""
    from .proxies import PROXIES

    if name not in PROXIES:
        raise ValueError(f"unknown proxy {name!r}; known: {', '.join(PROXIES)}")
    space = get_space(space) if isinstance(space, str) else space
    data = None
    if PROXIES[name].needs_data:
        if data_file is None:
            raise ValueError(f"proxy {name} needs training images: give the detection training annotations")
        data = proxy_batches(data_file, batches=batches, batch_size=batch_size, input_size=input_size, seed=seed)
        if len(data) < batches:
            raise ValueError(f"{data_file}: {len(data)} batch(es) of {batch_size} images for proxy {name}, which asks for "
                             f"{batches} (training_free.batches x training_free.batch_size is more than the images)")
    return ProxyScorer(name, space, input_size=input_size, seed=seed, batches=data, device=device)


def _stack(dataset: ClassificationDataset, limit: int | None, seed: int) -> tuple[Tensor, Tensor]:
    idx = np.arange(len(dataset))
    if limit is not None and limit < len(idx):
        idx = np.sort(np.random.default_rng(seed).choice(idx, size=limit, replace=False))
    items = [dataset[int(i)] for i in idx]
    return torch.stack([x for x, _ in items]), torch.tensor([y for _, y in items])


def classification_scorer(supernet_file: Path, split_file: Path, *, eval_images: int | None, recalibration_images: int,
                          batch_size: int, seed: int, device: torch.device,
                          precision: Precision = Precision()) -> ClassificationScorer:
    """The scorer of ClsNAS: ``supernet_file`` the pre-trained classification supernet, ``split_file``
    its split.json (held-out images to score on, training images to recalibrate on)."""
    ckpt = load_checkpoint(supernet_file, map_location=device)
    space = get_space(ckpt["space"])
    model = Supernet(space, num_classes=len(ckpt["classes"]), dropout=ckpt.get("dropout", 0.1)).to(device)
    model.load_state_dict(ckpt["state_dict"])
    split = read_split(split_file)
    transform = classification_transforms(train=False, image_size=int(ckpt["image_size"]), normalize=False)
    holdout = set(split["holdout"])
    val = _stack(ClassificationDataset(Path(split["root"]), transform=transform, include=holdout), eval_images, seed)
    recal_x, _ = _stack(ClassificationDataset(Path(split["root"]), transform=transform, exclude=holdout),
                        recalibration_images, seed)
    return ClassificationScorer(model, val, recal_x, batch_size=max(batch_size, 32), device=device, precision=precision)


def detection_scorer(supernet_file: Path, val_file: Path, recal_file: Path, *, eval_images: int | None,
                     recalibration_images: int, batch_size: int, seed: int, device: torch.device,
                     precision: Precision = Precision(), overlap: bool = False) -> DetectionScorer:
    """The scorer of DetNAS and random search: ``supernet_file`` a fine-tuned detection supernet,
    ``val_file`` the search-validation annotations, ``recal_file`` the supernet's training annotations.
    ``overlap``: evaluate in another process, overlapping the next candidate's model work."""
    val = DetectionImages.load(val_file, limit=eval_images, seed=seed)
    # the evaluator process starts (and indexes the ground truth) while the supernet loads
    evaluator = Evaluator({"val": val.coco.dataset}, in_flight=2) if overlap else None
    model, meta = detector_from_checkpoint(supernet_file, device)
    recal = DetectionImages.load(recal_file, limit=recalibration_images, seed=seed, with_objects=True)
    scorer = DetectionScorer(model, val, recal, batch_size=batch_size, device=device, seed=seed, precision=precision,
                             evaluator=evaluator)
    scorer.space = get_space(meta["space"])
    return scorer


def build_scorer(kind: str, supernet_file: Path, val_file: Path, recal_file: Path | None, *, eval_images: int | None,
                 recalibration_images: int, batch_size: int, seed: int, device: torch.device,
                 precision: Precision = Precision(),
                 overlap: bool = False) -> tuple["DetectionScorer | ClassificationScorer", SearchSpace]:
    """``kind`` "detection" or "classification": the scorer and the supernet's space. ``precision``:
    how its forward passes compute (default float32, contiguous). ``overlap``: a detection scorer's
    COCO evaluation in another process (``DetectionScorer.score_many``)."""
    common = dict(eval_images=eval_images, recalibration_images=recalibration_images, batch_size=batch_size,
                  seed=seed, device=device, precision=precision)
    if kind == "classification":
        scorer: DetectionScorer | ClassificationScorer = classification_scorer(supernet_file, val_file, **common)
        return scorer, scorer.model.space
    if kind != "detection":
        raise ValueError(f"scorer kind must be 'detection' or 'classification', got {kind!r}")
    if recal_file is None:
        raise ValueError("a detection scorer needs the supernet's training annotations to recalibrate BN on (--recal)")
    det = detection_scorer(supernet_file, val_file, recal_file, **common, overlap=overlap)
    return det, det.space
