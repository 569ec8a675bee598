"""What the gateway needs from its environment, injected at construction.

Production builds the defaults; tests pass a fake clock, a seeded RNG, a stub tokenizer.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp

from config import UpstreamConfig
from gateway.backends.control_session import ControlSessionConfig, make_control_session
from gateway.backends.kube_access import KubeApi
from gateway.proxy import make_session
from gateway.tokenizer import Tokenizer
from gateway.training_worker import TrainingWorker
from scheduler.framework.plugins import RequestObserver
from scheduler.framework.registry import PluginRegistry


@dataclass(frozen=True, slots=True, kw_only=True)
class Dependencies:
    clock: Callable[[], float] = time.monotonic
    rng: random.Random = field(default_factory=random.Random)
    tokenizer: Tokenizer | None = None
    """``None``: built from ``config.tokenizer``."""
    plugin_registry: PluginRegistry | None = None
    """``None``: the built-in plugins."""
    session_factory: Callable[[UpstreamConfig], aiohttp.ClientSession] = make_session
    """The relay's session to the endpoints (inference requests)."""
    control_session_factory: Callable[[ControlSessionConfig], aiohttp.ClientSession] = (
        make_control_session
    )
    """The scraper's and model discovery's session (decompresses, small pool)."""
    observers: tuple[RequestObserver, ...] = ()
    """Extra consumers of finished-request records (e.g. a test recorder)."""
    training_worker: TrainingWorker | None = None
    """``None``: a worker process running ``train_generation``."""
    kube_api: KubeApi | None = None
    """With ``pool.kubernetes``: the API server to watch; ``None``: the pod's service account,
    else a kubeconfig (:func:`gateway.backends.kube_access.load_api`)."""
