"""Bytes on disk: MXNet RecordIO, its index, InsightFace shards and verification ``.bin`` sets."""
