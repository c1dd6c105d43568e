"""More than one machine: gateways, model workers and the feed over NATS JetStream.

A gateway is the single-process engine with its model owner swapped for :class:`~.gateway.RemoteWorker`
(requests to the broker, predictions back) and one more sink (events to the broker); a model worker wraps
:class:`serlive.stream.worker.InferenceWorker`; the feed serves the broker's events through
:class:`serlive.stream.ws.WsServer`. Nothing here is imported by a single-process run.
"""
