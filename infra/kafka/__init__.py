"""Kafka clients configured for Tributary: a fast producer and an assign-based reader."""
