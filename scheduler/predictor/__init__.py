"""Latency prediction: per-candidate features, boosted-tree models, their training and swap."""
