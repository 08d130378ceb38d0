"""Checkpoints, savepoints, restore and maintenance of Bytewax recovery partitions.

Modules: store (file:// and s3:// object stores), partitions (find, create,
copy and seal SQLite partitions), manifest, checkpoint, delta (incremental),
savepoint, restore, compact, inspect, migrate, positions. No dataflow code.
"""
