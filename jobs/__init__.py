"""Top layer: the `cdc` command line and (Ray) jobs that distribute pipeline work."""
