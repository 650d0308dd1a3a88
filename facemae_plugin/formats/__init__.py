"""Bytes on disk: MXNet RecordIO, InsightFace shards, verification ``.bin`` sets, image folders, splits."""
