"""Off the request path: OTLP metrics and traces, and the local views of the same snapshot."""
