"""The runtime: the threads of a client and their hand-offs.

The supervisor thread (`supervisor`, deciding with the pure `policy` and `backoff`)
runs one connection after another, runs each one's handshake (`session`: the connect
hooks, then the recorded `subscriptions`) and owns the lifecycle `state`; the reader thread's
half (`intake`) decodes frames and queues them to the dispatcher thread (`dispatch`),
which tracks, stores and delivers each batch (`delivery`) to the subscribers
(`signals`) and the pull buffer (`pull`); `sender` owns the send buffer's lock and the
flush after a connect, with `outcomes` (what became of each send, the ack rule);
`reporting` puts errors on the error signal and in the log;
`stats` is the counters' snapshot; `registry` holds every started client of the
process. Builds on `wire`, `codecs` and `tracking`; the facade (`wsbridge.client`)
wires the parts together.
"""
