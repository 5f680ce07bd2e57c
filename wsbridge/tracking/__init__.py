"""Tracking: what is kept and counted, with no threads of its own.

Sequence tracking (`sequence`: duplicates, order, gaps), the send buffer (`outbox`),
the resume request (`resume`) and the store of what was received (`store`: the
interface; `sqlite`: `SQLiteStore`). Pure objects, or I/O on a file only; each is called by the runtime
thread that owns it (the dispatcher for `sequence` and `store`, the sender for
`outbox`). Imports nothing from `wsbridge.runtime`, the facade or the CLI.
"""
