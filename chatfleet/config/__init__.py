"""Every frozen configuration dataclass, and the one table that turns their fields into
command-line flags, YAML keys and argv (flags.py).

engine_config.py   the engine: model, KV cache, scheduler
server_config.py   the OpenAI server, and ServeConfig (engine + server: one replica)
router_config.py   routing policy, prefix index, health, proxy, autoscaling, local replicas
gateway_config.py  the gateway: upstream, limits, conversations
deploy_config.py   a fleet on Ray Serve (deploy.yaml)
"""
