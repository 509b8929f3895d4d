"""Cleanup passes: shape inference, constant folding, dead-code removal, BN and affine folding, identities,
and `compact` (a small file for deployment)."""

from . import (  # noqa: F401  (importing registers the passes)
    compact,
    constants_to_initializers,
    eliminate_dead_code,
    fold_affine,
    fold_batchnorm,
    fold_constants,
    infer_shapes,
    remove_identity,
    upgrade_opset,
)
