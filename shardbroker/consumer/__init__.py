"""Local consumers: named positions in the segment, follow mode, retention.

``registry`` owns the consumer table in the segment header (register, heartbeat, expire);
``segment/waiting.py`` is how a caught-up reader waits without spinning a core; ``consumer``
ties them to ``SegmentReader.follow`` for a resumable, exactly-once-in-order reader. The command
line (``shardbroker tail``, ``shardbroker consumers``) is ``shardbroker/cli_consumers.py``; the
benchmark is ``shardbroker/bench/consumers.py``.
"""
