"""The learner (who owns and updates the policy weights), its sharding strategies, micro-batch packing, checkpoints."""

from __future__ import annotations

from sdar.learner.base import Learner, ModelRole, ShardedCheckpoints
from sdar.learner.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from sdar.learner.local import LocalLearner, PolicyLearner, lr_at
from sdar.learner.packing import PackedMicroBatch, bucket_rows, make_micro_batches, pack_rows, padding_ratio
from sdar.learner.sharding import NoSharding, ShardingStrategy

__all__ = [
    "Learner",
    "LocalLearner",
    "ModelRole",
    "NoSharding",
    "PackedMicroBatch",
    "PolicyLearner",
    "ShardedCheckpoints",
    "ShardingStrategy",
    "bucket_rows",
    "latest_checkpoint",
    "load_checkpoint",
    "lr_at",
    "make_micro_batches",
    "pack_rows",
    "padding_ratio",
    "save_checkpoint",
]
