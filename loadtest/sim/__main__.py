"""``python -m loadtest.sim``: run one simulated vLLM server (see :mod:`loadtest.sim.cli`)."""

from loadtest.sim.cli import main

main()
