"""singe-dist: distributed structured pruning with SInGE (integrated-gradient channel relevance).

The package mirrors the data flow of a pruning run:

``data`` (samples) -> ``relevance`` (scores per channel) -> ``plan`` (which channels go, and what
that saves) -> schedule and run -> tracking.
"""

from singe_dist.errors import SingeError

__all__ = ["SingeError"]
__version__ = "0.1.0"
