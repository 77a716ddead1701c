"""The asyncio adapters of anchor_link: sockets, the event loop's clock and tasks around the
sans-I/O cores of the package (the only place of the package that does I/O)."""

__all__: list[str] = []
