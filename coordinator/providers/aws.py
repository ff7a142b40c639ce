"""The `aws` provider: one EC2 instance per node (spot or on-demand), through aiobotocore.

Every instance carries tags naming coord, this coordd (an id kept in its state directory, so
two coordds never touch each other's), the job and the node. At start-up coordd lists its
instances by tag: those a live node owns are adopted, the rest are orphans and terminated.
Capacity errors walk the job's fallback list with backoff; an error about one choice (a type
not offered in its zone, a subnet that does not exist) moves on to the next choice; anything
else (a bad AMI, no permission) fails at once with EC2's own words, and the job is not retried
against AWS for `permanent_error_hold_s`. When some of a launch's nodes fail, the rest are kept
and `PartialLaunch` names the failed ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import structlog
from aiobotocore.config import AioConfig
from aiobotocore.session import AioSession
from botocore.exceptions import BotoCoreError, ClientError, NoRegionError
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_exponential_jitter

from contract import events as ev
from contract.errors import CoordError, PartialLaunch, ProviderError
from contract.spec import AwsResources, JobSpec
from contract.states import NodeState
from coordinator.instance import load_or_create_id
from coordinator.providers import ec2
from coordinator.providers.base import AgentAccess, JobEvents, Provider
from coordinator.settings import AwsSettings
from coordinator.store import JobRecord, NodeRecord

log = structlog.get_logger("coordinator.providers.aws")


class AwsProvider(Provider):
    name = "aws"

    def __init__(self, settings: AwsSettings, access: AgentAccess, state_dir: Path,
                 events: JobEvents):
        self.settings, self.access, self.state_dir, self.events = (
            settings, access, state_dir, events)
        self._stack = contextlib.AsyncExitStack()
        self._ec2: Any = None
        self._client_lock = asyncio.Lock()
        self._coordd_id = ""
        self._refused: dict[str, tuple[float, CoordError]] = {}  # job id -> (until, error)
        self._subnets: dict[tuple[str, str], str] = {}  # (configured subnet, zone) -> subnet
        self._tasks: set[asyncio.Task] = set()
        self.join_timeout_s = settings.join_timeout_s  # the registry's wait for a new agent
        self._live_at_start: set[str] | None = None  # node ids with instances, once listed

    # lifecycle -----------------------------------------------------------------------
    async def start(self, known: Mapping[str, NodeRecord]) -> None:
        await self._identity()
        task = asyncio.get_running_loop().create_task(self._reconcile(known))
        self._tasks.add(task)  # in the background: an unreachable AWS must not hold up coordd
        task.add_done_callback(self._tasks.discard)

    async def gone(self, node: NodeRecord) -> bool:
        """From the start-up listing: a node known before the restart whose instance is no
        longer running (a reclaimed spot instance) will not reconnect."""
        return self._live_at_start is not None and node.id not in self._live_at_start

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._stack.aclose()
        self._ec2 = None

    async def _identity(self) -> str:
        if not self._coordd_id:
            self._coordd_id = await asyncio.to_thread(load_or_create_id,
                                                      self.state_dir / "coordd-id")
        return self._coordd_id

    async def _client(self) -> Any:
        async with self._client_lock:
            if self._ec2 is None:
                session = AioSession(profile=self.settings.profile)
                # botocore reads its model and the AWS config files from disk: not on the loop
                await asyncio.to_thread(session.get_component("data_loader").load_service_model,
                                        "ec2", "service-2")  # cached by the loader
                await asyncio.to_thread(session.get_scoped_config)
                config = AioConfig(retries={"mode": "standard", "total_max_attempts": 1},
                                   connect_timeout=5, read_timeout=30)  # we retry: _call
                try:
                    self._ec2 = await self._stack.enter_async_context(session.create_client(
                        "ec2", region_name=self.settings.region,
                        endpoint_url=self.settings.endpoint_url, config=config))
                except NoRegionError:
                    raise ProviderError("aws: coordd has no AWS region: set aws.region in its "
                                        "config (COORDD_AWS__REGION), or AWS_REGION in its "
                                        "environment") from None
        return self._ec2

    async def _call(self, operation: str, **params: Any) -> dict[str, Any]:
        """One EC2 call, tried again on throttling and server errors (never on capacity)."""
        client = await self._client()
        async for attempt in AsyncRetrying(
                retry=retry_if_exception(ec2.is_transient), reraise=True,
                stop=stop_after_attempt(self.settings.api_attempts),
                wait=wait_exponential_jitter(multiplier=0.5, max=10)):
            with attempt:
                return await getattr(client, operation)(**params)
        raise AssertionError("unreachable")  # reraise=True: the loop returns or raises

    # launching -----------------------------------------------------------------------
    async def launch(self, nodes: list[NodeRecord], job: JobRecord, spec: JobSpec) -> None:
        now = time.monotonic()
        self._refused = {k: v for k, v in self._refused.items() if v[0] > now}
        if refused := self._refused.get(job.id):
            raise type(refused[1])(str(refused[1]))  # refused for good just now: not asked again
        template = ec2.launch_template(spec, self.settings.defaults)
        choices = ec2.choices(template)
        await self._warn_if_unreachable(job)
        await self._client()  # coordd's own configuration is checked once, before any node
        await self._identity()
        results = await asyncio.gather(
            *(self._launch_node(node, job, template, choices) for node in nodes),
            return_exceptions=True)
        failed = {node.id: r for node, r in zip(nodes, results) if isinstance(r, BaseException)}
        for failure in failed.values():
            if not isinstance(failure, CoordError):
                raise failure  # a bug, not an AWS answer
            if not failure.retryable:
                self._refused[job.id] = (time.monotonic() + self.settings.permanent_error_hold_s,
                                         failure)
        first = next(iter(failed.values()), None)
        if first is not None and len(failed) == len(nodes):
            raise first
        if first is not None:  # the launched ones are kept: only the failed ones are lost
            raise PartialLaunch(list(failed), f"{len(failed)} of {len(nodes)} node(s) could "
                                f"not be launched ({', '.join(failed)}): {first}")

    async def _warn_if_unreachable(self, job: JobRecord) -> None:
        address = self.access.address()
        if self.settings.endpoint_url or not ec2.unreachable_from_ec2(address):
            return
        message = (f"coordd advertises {address}, which EC2 instances cannot reach: their "
                   f"agents will never join. Set `advertise` in coordd's config to an address "
                   f"they can reach (e.g. this machine's private IP and port)")
        log.warning("aws.unreachable_address", job=job.id, address=address)
        await self.events(job.id, ev.PROVIDER_WARNING, message, ev.Notice())

    async def _launch_node(self, node: NodeRecord, job: JobRecord, template: AwsResources,
                           choices: list[ec2.Choice]) -> None:
        env = {"COORD_ADDR": self.access.address(), "COORD_NODE_ID": node.id,
               **self.access.agent_env()}
        script = ec2.user_data(self.settings, env)
        tags = ec2.instance_tags(template, self._coordd_id, job.id, node.id)
        instance, index, missed = await self._walk(node, job, template, choices, tags, script)
        await self._launched(job, node, instance, choices, index, missed)

    async def _walk(self, node: NodeRecord, job: JobRecord, template: AwsResources,
                    choices: list[ec2.Choice], tags: dict[str, str], script: str
                    ) -> tuple[dict[str, Any], int, list[str]]:
        """The first choice that EC2 grants: the instance, the choice's index, the misses."""
        missed: list[str] = []
        refused: set[int] = set()  # choices EC2 refused for their own sake: not asked again
        attempt, last = 0, None
        for _ in range(self.settings.capacity_rounds):
            for index, choice in enumerate(choices):
                if index in refused:
                    continue
                attempt += 1
                try:
                    request = ec2.run_request(template, await self._place(choice, template),
                                              tags, script, client_token=f"{node.id}-{attempt}")
                    reply = await self._call("run_instances", **request)
                    return reply["Instances"][0], index, missed
                except (ClientError, BotoCoreError, ec2.NoPlace) as exc:
                    if not (ec2.is_capacity(exc) or ec2.is_choice_refusal(exc)):
                        raise ec2.refusal(exc, f"launching node {node.id}") from None
                    last = exc
                    missed.append(f"{choice.describe()}: {ec2.error_code(exc)}")
                    if ec2.is_choice_refusal(exc):
                        refused.add(index)
                    await self._miss_event(job, node, choices, index, refused, exc)
                    if ec2.is_capacity(exc):
                        await asyncio.sleep(self._pause(attempt))
        if last is not None and len(refused) == len(choices):  # no pass over them can help
            raise ec2.refusal(last, f"launching node {node.id}, every choice refused: "
                                    f"{'; '.join(missed)}")
        raise ProviderError(f"aws: no capacity for node {node.id} in any of {len(choices)} "
                            f"choice(s): {'; '.join(missed)}")

    def _pause(self, attempt: int) -> float:
        """Exponential backoff with jitter between tries after a capacity error."""
        first = self.settings.fallback_backoff_s
        return min(self.settings.fallback_backoff_max_s,
                   first * 2 ** (attempt - 1) + random.uniform(0, first))

    async def _place(self, choice: ec2.Choice, template: AwsResources) -> ec2.Choice:
        """A choice that names only a zone, where a subnet is configured, goes to that zone's
        subnet in the configured subnet's VPC: with no subnet EC2 would use the default VPC,
        which the security groups are not in."""
        anchor = template.subnet_id or self.settings.defaults.subnet_id
        if choice.subnet_id or not choice.availability_zone or not anchor:
            return choice
        key = (anchor, choice.availability_zone)
        if key not in self._subnets:
            self._subnets[key] = await self._zone_subnet(anchor, choice.availability_zone)
        return dataclasses.replace(choice, subnet_id=self._subnets[key])

    async def _zone_subnet(self, anchor: str, zone: str) -> str:
        base = (await self._call("describe_subnets", SubnetIds=[anchor]))["Subnets"][0]
        if base["AvailabilityZone"] == zone:
            return anchor
        reply = await self._call("describe_subnets", Filters=[
            {"Name": "vpc-id", "Values": [base["VpcId"]]},
            {"Name": "availability-zone", "Values": [zone]}])
        subnets = sorted(reply["Subnets"], key=lambda s: (-s.get("AvailableIpAddressCount", 0),
                                                          s["SubnetId"]))
        if not subnets:
            raise ec2.NoPlace(f"no subnet of {base['VpcId']} (the VPC of {anchor}) in {zone}: "
                              f"name a subnet_id for that zone")
        return subnets[0]["SubnetId"]

    async def _miss_event(self, job: JobRecord, node: NodeRecord, choices: list[ec2.Choice],
                          index: int, refused: set[int], exc: BaseException) -> None:
        code = ec2.error_code(exc)
        live = [i for i in range(index + 1, index + 1 + len(choices))
                if i % len(choices) not in refused]
        upcoming = choices[live[0] % len(choices)].describe() if live else "none left"
        if ec2.is_capacity(exc):
            kind, what = ev.PROVIDER_CAPACITY, f"not available ({code})"
        else:
            kind, what = ev.PROVIDER_CHOICE_REFUSED, f"refused ({code}: {ec2.message_of(exc)})"
        await self.events(job.id, kind, f"node {node.id}: {choices[index].describe()} {what}; "
                          f"next: {upcoming}", ev.LaunchMissed(node=node.id, choice=index,
                                                               code=code))

    async def _launched(self, job: JobRecord, node: NodeRecord, instance: dict[str, Any],
                        choices: list[ec2.Choice], index: int, missed: list[str]) -> None:
        choice = choices[index]
        data = {"instance_id": instance["InstanceId"], "instance_type": instance["InstanceType"],
                "availability_zone": instance.get("Placement", {}).get("AvailabilityZone", ""),
                "subnet_id": instance.get("SubnetId", ""), "market": "spot" if choice.spot
                else "on-demand", "choice": index}
        node.provider_data = data
        node.host = instance.get("PrivateIpAddress", "") or node.host
        which = "first choice" if index == 0 else f"fallback {index} of {len(choices) - 1}"
        after = f" after {'; '.join(missed)}" if missed else ""
        await self.events(job.id, ev.PROVIDER_LAUNCHED,
                          f"node {node.id}: {data['instance_id']} {data['instance_type']} "
                          f"{data['market']} in {data['availability_zone'] or '?'} "
                          f"({which}{after})", ev.NodeLaunched(node=node.id, **data))
        log.info("node.launched", node=node.id, job=job.id, **data)

    # removing ------------------------------------------------------------------------
    async def terminate(self, node: NodeRecord, *, lost: bool) -> None:
        """Terminate the node's instance. Failures are logged, not raised: an instance left
        behind is found by tag and terminated at the next coordd start."""
        try:
            instance_id = node.provider_data.get("instance_id") or await self._find(node.id)
            if instance_id:
                await self._terminate([instance_id], f"node {node.id} removed")
        except (ClientError, BotoCoreError, CoordError) as exc:
            log.error("node.terminate_failed", node=node.id, error=str(exc),
                      instance=node.provider_data.get("instance_id"))

    async def _terminate(self, instance_ids: list[str], why: str) -> None:
        try:
            await self._call("terminate_instances", InstanceIds=instance_ids)
        except ClientError as exc:
            if ec2.error_code(exc) != "InvalidInstanceID.NotFound":
                raise
        log.info("aws.terminated", instances=instance_ids, why=why)

    async def _find(self, node_id: str) -> str | None:
        """A node whose launch reply was never recorded (coordd died in between)."""
        found = await self._instances({ec2.TAG_NODE: node_id})
        return found[0]["InstanceId"] if found else None

    async def _instances(self, tags: dict[str, str]) -> list[dict[str, Any]]:
        """This coordd's live instances with these tags."""
        filters = [{"Name": f"tag:{key}", "Values": [value]}
                   for key, value in ({ec2.TAG_COORDD: await self._identity()} | tags).items()]
        filters.append({"Name": "instance-state-name", "Values": list(ec2.LIVE_STATES)})
        reply = await self._call("describe_instances", Filters=filters, MaxResults=1000)
        found = [i for r in reply["Reservations"] for i in r["Instances"]]
        while token := reply.get("NextToken"):
            reply = await self._call("describe_instances", Filters=filters, MaxResults=1000,
                                     NextToken=token)
            found += [i for r in reply["Reservations"] for i in r["Instances"]]
        return found

    # start-up ------------------------------------------------------------------------
    async def _reconcile(self, known: Mapping[str, NodeRecord]) -> None:
        try:
            instances = await self._instances({})
        except (ClientError, BotoCoreError, CoordError) as exc:
            log.error("aws.reconcile_failed", error=str(exc))
            return
        orphans, live = [], set()
        for instance in instances:
            tags = {t["Key"]: t["Value"] for t in instance.get("Tags", [])}
            live.add(tags.get(ec2.TAG_NODE, ""))
            node = known.get(tags.get(ec2.TAG_NODE, ""))
            if node is None or node.provider != self.name or node.state in (
                    NodeState.LOST, NodeState.GONE):
                orphans.append(instance["InstanceId"])
                continue
            node.provider_data.setdefault("instance_id", instance["InstanceId"])
            log.info("aws.adopted", node=node.id, instance=instance["InstanceId"],
                     state=str(node.state))
        self._live_at_start = live
        if orphans:
            log.warning("aws.orphans", instances=orphans)
            try:
                await self._terminate(orphans, "orphan: no live node owns it")
            except (ClientError, BotoCoreError, CoordError) as exc:
                log.error("aws.reconcile_failed", error=str(exc), instances=orphans)
