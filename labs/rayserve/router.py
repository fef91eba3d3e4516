"""Ray Serve request router for labs replicas: a conversation's turns go where its prefix is cached.

Ray Serve calls `choose_replicas` for each request sent to the replica deployment through a
handle and tries the returned ranks in order; within a rank it takes the replica with the fewest
ongoing requests that still has room (below max_ongoing_requests), probing their queues.

For a request with a conversation key (set by the ingress, see labs.rayserve.affinity):

1. the replica this router last sent that conversation to, if it is still alive; else
2. the replica rendezvous hashing prefers for the key (the same on every router, so several
   ingress replicas agree without sharing state);

unless that replica has `max_imbalance` more requests in flight than the least loaded one: then
the least loaded takes it (and later turns follow it there, step 1). If the preferred replica is
full, the next rank holds all the others, least loaded first. A request without a key (no
messages or prompt: embeddings lists, models, files) goes to the least loaded replica.
"""

from __future__ import annotations

import random
from collections import OrderedDict
from typing import Any

from ray.serve.request_router import PendingRequest, ReplicaID, ReplicaResult, RequestRouter, RunningReplica

from labs.rayserve.affinity import rendezvous_order, too_busy
from labs.rayserve.asgi import WireRequest

MAX_REMEMBERED = 100_000  # conversations whose replica this router remembers (least recently used leave)
MAX_PROBED = 4  # keyless requests: past this many replicas, compare two random ones (power of two choices)


def affinity_key_of(pending_request: PendingRequest | None) -> str | None:
    if pending_request is None:
        return None
    for arg in pending_request.args:
        if isinstance(arg, WireRequest):
            return arg.affinity_key
    return None


class PrefixAffinityRouter(RequestRouter):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._max_imbalance = 8
        self._served_by: OrderedDict[str, ReplicaID] = OrderedDict()

    def initialize_state(self, max_imbalance: int = 8, **_: Any) -> None:
        """Called by Ray Serve with RequestRouterConfig.request_router_kwargs."""
        self._max_imbalance = max_imbalance

    async def choose_replicas(self, candidate_replicas: list[RunningReplica],
                              pending_request: PendingRequest | None = None) -> list[list[RunningReplica]]:
        if pending_request is not None:
            pending_request.routing_context.should_backoff = True  # one pass tries every replica
        if not candidate_replicas:
            return []
        key = affinity_key_of(pending_request)
        if key is None:
            return [_least_loaded_candidates(candidate_replicas)]
        preferred = self._preferred(key, candidate_replicas)
        others = [replica for replica in candidate_replicas if replica is not preferred]
        if self._too_busy(preferred, candidate_replicas):
            return [others or [preferred]]
        return [[preferred], others] if others else [[preferred]]

    def _preferred(self, key: str, candidates: list[RunningReplica]) -> RunningReplica:
        remembered = self._served_by.get(key)
        for replica in candidates:
            if replica.replica_id == remembered:
                return replica
        by_id = {replica.replica_id.unique_id: replica for replica in candidates}
        return by_id[rendezvous_order(key, by_id)[0]]

    def _too_busy(self, preferred: RunningReplica, candidates: list[RunningReplica]) -> bool:
        cache = self.replica_queue_len_cache
        loads = [cache.get(replica.replica_id) for replica in candidates]
        return too_busy(cache.get(preferred.replica_id), loads, self._max_imbalance)

    def on_request_routed(self, pending_request: PendingRequest, replica_id: ReplicaID, result: ReplicaResult) -> None:
        key = affinity_key_of(pending_request)
        if key is None:
            return
        self._served_by[key] = replica_id
        self._served_by.move_to_end(key)
        while len(self._served_by) > MAX_REMEMBERED:
            self._served_by.popitem(last=False)


def _least_loaded_candidates(candidates: list[RunningReplica]) -> list[RunningReplica]:
    """All replicas when there are few (Serve picks the least loaded); else two at random."""
    if len(candidates) <= MAX_PROBED:
        return list(candidates)
    return random.sample(candidates, 2)
