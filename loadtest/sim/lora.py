"""LoRA adapters on a sim: which adapters have requests running or waiting, as vLLM reports it.

vLLM (started with ``--enable-lora``) exposes one gauge, ``vllm:lora_requests_info``, whose
*labels* carry the state and whose *value* is the time of the update (``set_to_current_time``):

- ``max_lora``: how many adapters may share a batch, as a string;
- ``running_lora_adapters``: comma-separated names of adapters with a running request;
- ``waiting_lora_adapters``: the same for adapters with a waiting request.

Every label combination ever set stays in the exposition with the timestamp of its last
update, so a scraper (llm-d's endpoint picker) reads the series with the *newest* value. The
sim keeps that wart. vLLM updates the gauge on every engine iteration; the sim updates it
whenever a request enters or leaves the engine, and when ``/metrics`` is scraped while the
engine has work (a waiting adapter request may have started running since). No series exists
before the first request, and the family is only exposed when adapters are configured.

The sim does not limit how many adapters share a batch, so ``max_lora`` is the number of
configured adapters.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Sequence

from prometheus_client.core import GaugeMetricFamily

from loadtest.sim.request import RequestState, SimRequest

LORA_INFO_LABELS = ("max_lora", "waiting_lora_adapters", "running_lora_adapters")
# Label combinations kept in the exposition (vLLM keeps all of them; a long benchmark with
# many adapters would grow the scrape without bound).
MAX_LORA_SERIES = 256

_RUNNING = RequestState.RUNNING
_WAITING = RequestState.WAITING


class LoraTracker:
    """The in-flight requests of each adapter, and the ``vllm:lora_requests_info`` series.

    ``wall_clock`` gives the gauge's value (seconds since the epoch, as vLLM's
    ``set_to_current_time``); it is a timestamp, never used for durations.
    """

    def __init__(
        self,
        adapters: Sequence[str],
        *,
        wall_clock: Callable[[], float] = time.time,
        max_series: int = MAX_LORA_SERIES,
    ) -> None:
        self.adapters = tuple(adapters)
        self._in_flight: dict[str, set[SimRequest]] = {name: set() for name in self.adapters}
        self._wall_clock = wall_clock
        self._max_series = max_series
        self._max_lora = str(len(self.adapters))
        # (waiting, running) -> time of its last update, oldest update first.
        self._series: OrderedDict[tuple[str, str], float] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return bool(self.adapters)

    def started(self, adapter: str | None, request: SimRequest) -> None:
        """``request`` was just queued in the engine, for ``adapter`` (None: the base model)."""
        if not self.adapters:
            return
        if adapter is not None:
            self._in_flight[adapter].add(request)
        self._record()

    def ended(self, adapter: str | None, request: SimRequest) -> None:
        """``request`` left the engine (finished, aborted or failed)."""
        if not self.adapters:
            return
        if adapter is not None:
            self._in_flight[adapter].discard(request)
        self._record()

    def adapters_in(self, state: RequestState) -> list[str]:
        """Adapters with at least one request in ``state``, in configuration order."""
        return [
            name
            for name, requests in self._in_flight.items()
            if any(request.state is state for request in requests)
        ]

    def collect(self, *, engine_busy: bool) -> GaugeMetricFamily:
        """The gauge family as of now; ``engine_busy`` is whether the engine has any request
        (vLLM records the gauge on every engine iteration, so only while it steps)."""
        if engine_busy:
            self._record()
        family = GaugeMetricFamily(
            "vllm:lora_requests_info", "Running stats on lora requests.", labels=LORA_INFO_LABELS
        )
        for (waiting, running), updated_s in self._series.items():
            family.add_metric([self._max_lora, waiting, running], updated_s)
        return family

    def _record(self) -> None:
        """Stamp the current (waiting, running) combination with the current time."""
        current = (",".join(self.adapters_in(_WAITING)), ",".join(self.adapters_in(_RUNNING)))
        series = self._series
        series[current] = self._wall_clock()
        series.move_to_end(current)
        while len(series) > self._max_series:
            series.popitem(last=False)
