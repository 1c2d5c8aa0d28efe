"""Evaluation: FID Inception features, FID / KID / precision-recall / IS, reference stats."""

from .inception import IS_UNAVAILABLE_REASON, InceptionFeatures, InceptionScoreUnavailable, batched
from .metrics import (
    frechet_distance,
    frechet_distance_from_feats,
    inception_score,
    kid,
    precision_recall,
    stats,
)
from .reference import ReferenceStats, load_images_source, load_reference, save_reference

__all__ = [
    "IS_UNAVAILABLE_REASON",
    "InceptionFeatures",
    "InceptionScoreUnavailable",
    "ReferenceStats",
    "batched",
    "frechet_distance",
    "frechet_distance_from_feats",
    "inception_score",
    "kid",
    "load_images_source",
    "load_reference",
    "precision_recall",
    "save_reference",
    "stats",
]
