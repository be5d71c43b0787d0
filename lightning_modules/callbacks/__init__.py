from .throughput import ThroughputMeter

__all__ = ["ThroughputMeter"]
