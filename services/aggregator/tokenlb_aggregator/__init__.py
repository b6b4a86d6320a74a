"""tokenlb's aggregator: turns the proxies' usage events into rollups, logs and traces.

Run one or several next to the proxy replicas (``tokenlb aggregator --redis-url ...``);
any of them may be killed at any moment without losing or double-counting an event.
"""

from tokenlb_aggregator.settings import AggregatorSettings
from tokenlb_aggregator.worker import Aggregator

__all__ = ["Aggregator", "AggregatorSettings"]
