"""The backup engine: back a home folder up to the authority, list snapshots, restore.

Design and wire format: docs/backup-design.md. Callers import the module they need (engine,
restore, schedule, commands), so `holdfast status` does not load the engine; the layers:

    scanner -> cache -> chunker -> blobs/keys -> packer -> uploader -> engine
    manifest -> restore_fs -> restore; retry wraps each request to the authority
"""
