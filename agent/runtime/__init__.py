"""The node agent process: bootstrap, the config loop, and the listeners wired together."""
