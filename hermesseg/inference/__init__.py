"""Inference: preprocessing, grouped queries, sliding window, resampling back, outputs."""

from .pipeline import InferenceOptions, ModelSpacePrediction, predict
from .query_plan import GroupQuery, plan_queries

__all__ = ["InferenceOptions", "ModelSpacePrediction", "predict", "GroupQuery", "plan_queries"]
