"""Routing over engine replicas: pure policies, health, a streaming proxy, replica management.

policies.py      choose(request, snapshot) -> decision; pure, picked from POLICIES
prefix_index.py  the router's bounded LRU guess of which replica caches which prefix
pool.py          replica state: in-flight, scraped load, health state machine, snapshots
health.py        active probes of /health, /ready and /metrics
proxy.py         Router: route, forward, retry before the first byte, stream through
app.py           the OpenAI-compatible HTTP front
manager.py       ReplicaManager interface; local.py runs `chatfleet serve` subprocesses
autoscale.py     scale decisions (pure) and the loop that applies them
"""
