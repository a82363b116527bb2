"""The ``sim.topology`` listener: simulated topologies written by other processes reach the twin's box.

The twin's own components change the simulated topology through
:class:`~opendt.twin.topology.TopologyWriter`, which makes a version current at once and publishes it; those
messages come back here with a version that is not newer and are ignored. A newer version (another process
writing ``sim.topology``) is offered to the box, and the window loop applies it from its next window. Messages
that name another datacenter (header ``datacenter``, :mod:`opendt.models.datacenter`) are another twin's.
"""

from __future__ import annotations

import structlog

from opendt.kafka.client import make_consumer
from opendt.models.datacenter import header_of
from opendt.models.messages import MessageError, SimTopologyMessage, decode, to_ms
from opendt.settings import KafkaSettings
from opendt.twin.status import Counters
from opendt.twin.topology import SimTopology, TopologyBox

log = structlog.get_logger(component="listener")


class TopologyListener:
    def __init__(self, bootstrap: str, settings: KafkaSettings, box: TopologyBox, counters: Counters) -> None:
        self.bootstrap = bootstrap
        self.settings = settings
        self.box = box
        self.counters = counters

    async def run(self) -> None:
        consumer = make_consumer(self.bootstrap, [self.settings.topics.sim_topology], None, self.settings)
        await consumer.start()
        try:
            async for rec in consumer:
                if header_of(rec.headers) != self.settings.datacenter:
                    continue  # another datacenter's twin wrote it
                try:
                    msg = decode("sim_topology", rec.key, rec.value)
                except MessageError as e:
                    self.counters.malformed_messages += 1
                    log.warning(
                        "message_malformed",
                        topic=rec.topic,
                        partition=rec.partition,
                        offset=rec.offset,
                        reason=str(e),
                    )
                    continue
                assert isinstance(msg, SimTopologyMessage)
                sim = SimTopology(msg.version, msg.source, msg.reason, msg.topology, to_ms(msg.timestamp))
                if self.box.offer(sim):
                    log.info("topology_received", version=msg.version, source=msg.source, reason=msg.reason)
        finally:
            await consumer.stop()
