"""Pure decoders from captured bytes to feature columns, outputs and model identity.

A decoder never raises on bad input: it returns what it could read plus counted violation
reasons (see PROTOCOLS.md). `decode_exchange` picks the decoder by path and body shape.
"""

from modeltap.protocols.detect import decode_exchange
from modeltap.protocols.payload import DecodedPayload, ExchangeBytes

__all__ = ["DecodedPayload", "ExchangeBytes", "decode_exchange"]
