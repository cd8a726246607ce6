"""Routing over engine replicas: pure policies, health, a streaming proxy, replica management.

policies.py                 choose(request, snapshot) -> decision; pure, picked from POLICIES
snapshot.py                 what a policy sees: ReplicaView, RouteRequest, RouteDecision
prefix_index.py             the router's bounded LRU guess of which replica caches which prefix
session.py                  the session key of a request (header or `user`)
pool.py                     replica state: in-flight, scraped load, health state machine
health.py                   active probes of /health, /ready and /metrics
forwarder.py                Router: route, forward, retry before the first byte, stream through
router_metrics.py           the router's Prometheus metrics
router_app.py               the OpenAI-compatible HTTP front
replica_manager.py          ReplicaManager: start, stop, list replicas wherever they run
local_replica_manager.py    `chatfleet serve` subprocesses on this machine, supervised
autoscale.py                scale decisions (pure) and the loop that applies them
"""
