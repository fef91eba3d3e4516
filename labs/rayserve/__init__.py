"""labs on Ray Serve: engine replicas behind one API, with prefix-affinity routing (the `ray` extra)."""
