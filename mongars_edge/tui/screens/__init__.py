"""One screen per mode of the TUI."""
