"""The imbalance guard prefix affinity yields to: one definition for every plugin that uses it.

A pod is loaded out of proportion when its in-flight requests exceed the least loaded pod's by
more than ``max_requests`` *and* are more than ``max_ratio`` x (least + 1): the guard of the
cache-aware routers (vllm-router's and SGLang's ``cache_aware``: 64 and 1.5 there, on their own
counts), on the gateway's exact in-flight counts. ``max_requests`` 0 turns it off.
"""

from __future__ import annotations


def out_of_proportion(load: int, least: int, max_requests: int, max_ratio: float) -> bool:
    return max_requests > 0 and load - least > max_requests and load > max_ratio * (least + 1)
