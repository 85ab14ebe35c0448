"""The laptop cluster: the nats-server launcher, the runner pool and `wallaroo dev`."""
