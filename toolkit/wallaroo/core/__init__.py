"""The shared kernel of both sides: the stage engine and the partition commit loop, wire
formats, names, codec, errors and packaging. Imports only authoring modules and wallaroo.nats."""
