"""Business plugin kinds, one folder each (``file``, ``service``, ``job``, ``function``).

Each kind exposes ``setup(artifact, env) -> Plugin``; ``packer.plugin`` finds it by kind
name and knows nothing else about it."""
