"""Capacity planning: a discrete-event simulator of the fleet on the engine's real scheduler.

planner.py         PlanRequest -> a converged fleet plan (the whole of `chatfleet plan`)
search.py          SLO targets, load points, the capacity search
simulator.py       the fleet simulated: arrivals, router, replicas, rate limits
sim_replica.py     one simulated replica on the engine's Scheduler and KVCacheManager
fleet.py           the simulated router on the router's own policies and prefix index
traffic.py         conversation shapes, arrivals, the daily curve
step_model.py      step time from a step's shape: measured (fitted) or constant
step_mix.py        what kinds of steps a run was made of
roofline.py        step time of an accelerator you do not have
hardware.py        accelerator profiles and model shapes
overhead.py        serving time outside engine steps
calibrate.py       fit a step model on timed engine steps; http_calibrate.py through a server
capacity.py        demand, and the fleet and cost that serve it
report.py          the plan as text, JSON and a markdown report with plots
"""
