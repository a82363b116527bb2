"""The input side of the twin: the replay producer (the datacenter stand-in), pure windowing, the
window-accumulating Kafka consumer, and the topology listener."""
