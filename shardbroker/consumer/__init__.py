"""Local consumers: named positions in the segment, follow mode, retention.

``registry`` owns the consumer table in the segment header (register, heartbeat, expire);
``waiting`` is how a caught-up reader waits without spinning a core; ``consumer`` ties them to
``SegmentReader.follow`` for a resumable, exactly-once-in-order reader; ``cli`` is
``shardbroker tail`` and ``shardbroker consumers``.
"""
