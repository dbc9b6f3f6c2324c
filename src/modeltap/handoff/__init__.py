"""The hand-off from the serving processes to their monitor: the wire format (`framing`), the
serving side's shipper (`shipper`), and how the two find each other (`rendezvous`)."""
