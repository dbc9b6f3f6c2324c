"""The HTTP/1.1 serving modeltap's own ports share: uvicorn's httptools protocol with the client
limits a server facing the network needs (`protocol`), and the codes of modeltap's own answers
(`codes`, sent as `x-modeltap-error`). The sidecar serves its proxy port with them, and the
sidecar's admin port is served with them too, by the sidecar or by its monitor process."""
