"""Request-path capture: O(1) work per exchange, one immutable record into a bounded queue."""
