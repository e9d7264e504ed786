"""shardbroker: the publish-receive path of a pub/sub broker node.

Public API: ``SegmentReader`` (read committed batches from a segment) and ``Publisher``
(publish to a broker with Embarcadero's publish protocol).
"""

from shardbroker.publisher.client import Publisher
from shardbroker.segment.reader import Batch, SegmentReader

__all__ = ["Batch", "Publisher", "SegmentReader"]
__version__ = "0.1.0"
