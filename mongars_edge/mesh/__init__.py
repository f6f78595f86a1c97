"""The peer mesh: identity, pairing, encrypted channels, discovery, load sharing, adapter sharing.

Pure parts (codec, channel, members) import nothing that does I/O; the service (`service.py`)
ties them to sockets and is opened by the Runtime when the `mesh` setting is on.
"""
