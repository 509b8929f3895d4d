"""Pruning: channel dependency groups, importance criteria, channel removal, sparsity."""

from . import prune_channels, sparsify  # noqa: F401  (importing registers the passes)
from .dependency import ChannelGroups, channel_groups

__all__ = ["ChannelGroups", "channel_groups"]
