"""The monitor process (`python -m modeltap.monitor`): one per server, started by its first
serving process, doing everything but capture. See `modeltap.monitor.process`."""
