"""Breaker, deadlines, fault injection and the micro-batching dispatcher around the model."""
