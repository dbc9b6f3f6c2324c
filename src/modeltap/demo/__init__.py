"""`modeltap demo`: a small real model behind modeltap, fed in-distribution then drifted traffic."""
