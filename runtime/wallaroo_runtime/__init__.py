"""What runs on a VM: the runner, its partition workers, the commit protocol and ownership.
Never imports the CLI; talks to the toolkit only through NATS."""
