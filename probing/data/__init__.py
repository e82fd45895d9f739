"""Datasets in COCO format: the pycocotools loader and the synthetic generator."""

from probing.data.coco import CocoDataset, DatasetError
from probing.data.synthetic_coco import ensure_synthetic_coco, generate_synthetic_coco

__all__ = ["CocoDataset", "DatasetError", "ensure_synthetic_coco", "generate_synthetic_coco"]
