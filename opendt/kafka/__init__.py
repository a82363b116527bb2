"""Kafka plumbing: the embedded Tansu broker, topic creation, and thin aiokafka helpers."""
