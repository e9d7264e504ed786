"""Receiver processes: one per CPU, each the only writer of its shard of the segment."""
