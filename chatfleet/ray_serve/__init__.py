"""chatfleet on Ray Serve: the same engine, policies and OpenAI routes across a cluster.

Only this package imports Ray (`pip install 'chatfleet[ray]'`); nothing else in chatfleet
imports it, so the core install and `make up` stay Ray-free.

    HTTP -> Serve proxy -> Ingress (build_app over RayEngineClient)
                              | handle.options(stream=True).generate.remote(GenerateCall)
                              v  ChatfleetRequestRouter: policies.make_policy(...).choose()
                           EngineReplica x N (one AsyncEngine each; routing stats from it)
"""
