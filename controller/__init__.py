"""Controller: the CA, the resource store and the gRPC servers that feed the agents."""
