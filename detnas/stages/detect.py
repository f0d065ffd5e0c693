"""The ``detect`` command: a retrained detector on a user's own image files -> COCO results, the image
id mapping, and each image with its detections drawn.

The forwards are the evaluate stage's (``detnas.evaluate.detect_array``: the same batching, eval
mode, precision and COCO conversion), so detections of the test images written here score, with
COCOeval against the test annotations, exactly the AP that ``evaluate`` reports.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Sequence

from ..coco_eval import results_dicts
from ..data.coco import load_coco_json
from ..data.image_files import ImageFiles, annotation_ids, list_image_files
from ..detectors import DetectorSettings, detector_from_checkpoint
from ..distributed import init_distributed, set_threads
from ..evaluate import detect_array, inference_precision
from ..io import write_json_atomic

__all__ = ["annotated_names", "run_detect"]


def annotated_names(files: Sequence[Path]) -> list[str]:
    """``<stem>.jpg`` for each file; a stem met again gets ``<stem>-2.jpg``, ``-3``... in order (two
    folders' ``0001.png``, or ``a.png`` beside ``a.jpg``; compared ignoring case, as some file
    systems do)."""
    taken: set[str] = set()
    names = []
    for f in files:
        name, n = f"{f.stem}.jpg", 1
        while name.lower() in taken:
            n += 1
            name = f"{f.stem}-{n}.jpg"
        taken.add(name.lower())
        names.append(name)
    return names


def _classes(meta: dict[str, Any], classes_from: Path | None, checkpoint: Path) -> dict[int, str]:
    """Category id -> class name: from ``classes_from`` when given (its categories must be the ones
    the detector was trained on), else the checkpoint's own (``run_finetune`` saves them), else
    the ids."""
    ids = list(meta["category_ids"])
    if classes_from is not None:
        cats = {c["id"]: str(c.get("name", c["id"])) for c in load_coco_json(classes_from)["categories"]
                if isinstance(c, dict) and "id" in c}
        if sorted(cats) != sorted(ids):
            raise ValueError(f"{classes_from}: category ids {sorted(cats)} differ from those {checkpoint} was "
                             f"trained on ({sorted(ids)}); give the annotations of the detector's dataset")
        return {c: cats[c] for c in ids}
    names = meta.get("category_names") or [str(c) for c in ids]
    return dict(zip(ids, names))


def run_detect(
    *,
    checkpoint: Path,
    images: Sequence[Path],
    out: Path,
    score_threshold: float = 0.3,
    classes_from: Path | None = None,
    batch_size: int = 8,
    device: str = "auto",
    threads: int = 0,
    amp: str | bool | None = None,
    channels_last: bool | str | None = None,
) -> dict[str, Any]:
    """Run the detector of ``checkpoint`` (a retrained one: one architecture) on ``images`` (files
    and folders: ``detnas.data.image_files.list_image_files``) and write to ``out``:

    - ``detections.json``: every detection the detector reports (its own ``score_threshold``
      setting, not ``score_threshold``), as COCO results: image_id, category_id (the dataset's),
      bbox [x, y, w, h] in the image's pixels, score;
    - ``images.json``: {"images": COCO image entries (id, file_name, width, height, plus ``path``,
      the file as found, and ``annotated``, its drawing), "categories": [{id, name}], "detect": how
      it was run};
    - ``<stem>.jpg`` per image: the detections scoring at least ``score_threshold`` drawn with their
      class names (``annotated_names``).

    ``classes_from``: an annotation file (COCO JSON) of the detector's classes; an image that is
    one of its images gets that image's id (``annotation_ids``), so ``detections.json`` evaluates
    against that file as it is. ``amp``, ``channels_last``: as ``evaluate``'s
    (``detnas.evaluate.inference_precision``). Every file is written atomically, the JSON files
    last; an image that does not decode stops the run before anything is written (a DataError
    naming it). Returns images.json's content.
    """
    if not 0.0 <= score_threshold <= 1.0:
        raise ValueError(f"score threshold must be in [0, 1], got {score_threshold}")
    files = list_image_files(images)
    if classes_from is not None:
        ids, entries = annotation_ids(files, classes_from)
    else:
        ids, entries = list(range(1, len(files) + 1)), [None] * len(files)
    dist = init_distributed(device)
    set_threads(threads, 1)
    model, meta = detector_from_checkpoint(checkpoint, dist.device)
    settings = DetectorSettings.from_dict(meta["detector"])
    if not meta["arch"]:
        raise ValueError(f"{checkpoint}: a supernet checkpoint; detect runs a retrained detector (one architecture)")
    classes = _classes(meta, classes_from, checkpoint)
    precision = inference_precision(meta, dist.device, amp=amp, channels_last=channels_last)
    precision.prepare(model)
    source = ImageFiles(files, ids, list(meta["category_ids"]), expected=entries)
    t = time.perf_counter()
    results = results_dicts(detect_array(model, source, batch_size=batch_size, device=dist.device,
                                         precision=precision))
    seconds = time.perf_counter() - t

    from ..plots.boxes import annotated_image, save_jpeg  # PIL drawing; matplotlib not needed

    by_image: dict[int, list[dict[str, Any]]] = {i: [] for i in ids}
    for r in results:
        by_image[r["image_id"]].append(r)
    names = annotated_names(files)
    for i, (image_id, name) in enumerate(zip(ids, names)):
        image = source.decoded(i, i + 1)[0].permute(1, 2, 0).numpy()  # (H, W, 3) uint8, decoded again
        save_jpeg(annotated_image(image, by_image[image_id], classes, score_threshold=score_threshold), out / name)
    entries_out = []
    for i, (path, image_id, entry, name) in enumerate(zip(files, ids, entries, names)):
        width, height = source.sizes[i]
        entries_out.append({"id": image_id, "file_name": entry["file_name"] if entry is not None else path.name,
                            "width": width, "height": height, "path": str(path), "annotated": name})
    shown = sum(r["score"] >= score_threshold for r in results)
    mapping = {
        "images": entries_out,
        "categories": [{"id": c, "name": n} for c, n in classes.items()],
        "detect": {
            "checkpoint": str(checkpoint),
            "arch": meta["arch"],
            "space": meta["space"],
            "detector": settings.name,
            "detector_score_threshold": settings.score_threshold,
            "drawn_score_threshold": score_threshold,
            "classes_from": None if classes_from is None else str(classes_from),
            "matched_images": sum(e is not None for e in entries),
            "detections": len(results),
            "drawn_detections": int(shown),
            "precision": precision.describe(),
            "device": str(dist.device),
            "seconds": seconds,
        },
    }
    write_json_atomic(mapping, out / "images.json")
    write_json_atomic(results, out / "detections.json", indent=None)
    matched = f", {mapping['detect']['matched_images']} of them images of {classes_from}" if classes_from else ""
    print(f"{len(files)} images{matched}: {len(results)} detections, {shown} scoring >= {score_threshold:g} drawn "
          f"in {out}/ ({seconds:.1f} s, amp {precision.amp}, {dist.device})", flush=True)
    return mapping
