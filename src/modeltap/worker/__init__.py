"""The worker: what turns captured exchanges into statistics, spans and exports.

`tap` is the composition root in the serving process (capture, sampling, the hand-off);
`pipeline` decodes and groups a micro-batch for the statistics; `sampling` decides which
exchanges and payloads are taken while the worker is behind or over its CPU budget (`budget`).
"""
