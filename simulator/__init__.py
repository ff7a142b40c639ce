"""`coord simulate`: a whole job on a simulated clock, driven by coordd's real `decide`.

Only the clock, the cloud and the agents are simulated (engine, cloud, workers); the coord
policies ask the reconciler's pure `decide` what to do, exactly as coordd does. Baselines
(static torchrun, whole-cluster relaunch, on-demand only) are simulated policies of their own.
"""
