"""Ingest: the tracker's events from ``POST /api/sync`` to PostgreSQL (SPEC.md §2, §3).

Pure rules (keys, billing, quota, attribution, scoring, intents) live in their own modules
and are tested with tables; ``store.IngestStore`` is the batch writer a ``SitePartition``
actor runs; ``schema`` holds the wire types shared by the gateway and the partition.
"""
