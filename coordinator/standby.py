"""What a standby coordd serves until it leads: every call, of either service, is answered
UNAVAILABLE with the leader's address (coord.leader), which clients and agents then call."""

from __future__ import annotations

from collections.abc import Callable

import grpc

from contract.errors import ERROR_KEY
from coord.leader import LEADER_KEY, NOT_LEADER


class StandbyHandler(grpc.GenericRpcHandler):
    def __init__(self, leader_address: Callable[[], str]):
        self.leader_address = leader_address

    def service(self, handler_call_details):
        # Every method as a bidirectional stream: the answer goes out before any request is
        # read, whatever the method's shape.
        return grpc.stream_stream_rpc_method_handler(self._refuse)

    async def _refuse(self, requests, context) -> None:
        leader = self.leader_address()
        await context.abort(
            grpc.StatusCode.UNAVAILABLE,
            f"this coordd is a standby; the leader is at {leader or '(none yet: electing)'}",
            ((ERROR_KEY, NOT_LEADER), (LEADER_KEY, leader)))
