"""Many nodes on one PostgreSQL database: each orchestrator is a node (membership: its name and
heartbeat), acts only on the models whose lease it holds (leases), places starts by the nodes'
published GPUs (placement), reads the other nodes' models from a view of the shared tables
(view), takes over the models of nodes that stopped heartbeating (failover), and stops engines
it no longer owns (stale). Alone on SQLite the same rules hold with one node. docs/cluster.md.
"""
