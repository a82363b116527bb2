"""Domain types: the OpenDC topology (``topology``), workload records (``records``) and the Kafka messages of
DESIGN §4 (``messages``). Import the submodule you need: nothing is imported eagerly here, so the engine
subprocess does not pay for the message models."""
