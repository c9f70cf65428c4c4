"""Cluster mode: what instances share, in Redis (or Valkey).

Without ``cluster.redis_url`` (or ``cluster.sentinels``) there is no cluster: one process,
its SQLite outbox, its own calls and feeds; nothing here runs. With it, every instance is a
member (``member.ClusterMember``): it announces itself with a heartbeat that expires, and
every shared part goes through its Redis client. The call core does not know which backend
answers: the web layer hands it a registry and an event sink.

Redis trouble never stops a call: each part catches the client's errors, tells the member
(one log line when Redis goes away, one when it is back) and carries on locally.
"""
