"""Data readers: COCO-style detection (``coco``), Pascal VOC conversion (``voc``), ImageFolder
classification (``classification``) and the embedded synthetic data (``synthetic``).

Import from the submodules, e.g. ``from detnas.data.coco import DetectionDataset``; this package
imports nothing itself so that ``import detnas.data.voc`` stays cheap.
"""
