"""The aws provider against a stand-in EC2 (moto on loopback, a fault proxy, agents booted
from each instance's user-data): jobs run on its instances, capacity errors walk the fallback
list, bad input fails once and clearly, a restarted coordd adopts its instances and terminates
its orphans, and every instance coord launched ends terminated."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import textwrap
import tomllib
from pathlib import Path

import boto3
import pytest
from botocore.exceptions import ClientError

from contract import events as ev
from contract.errors import InvalidSpec, PartialLaunch, PermissionDenied, ProviderError
from contract.spec import AwsResources, parse_spec
from contract.states import JobState, NodeState
from coordinator.providers import ec2
from coordinator.providers.aws import AwsProvider
from coordinator.providers.base import AgentAccess
from coordinator.settings import AwsSettings
from coordinator.store import JobRecord, NodeRecord
from tests.integration.harness import ROOT, wait_for
from tests.providers.ec2_cloud import REGION, agent_env_of, heredoc, tags_of

DONE = JobState.SUCCEEDED


def job_file(tmp_path: Path, aws: str, run: str = "echo hello from $COORD_NODE_ID",
             count: int = 2) -> Path:
    path = tmp_path / "job" / "job.toml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(textwrap.dedent(f"""
        name = "on-aws"
        run = "{run}"
        [nodes]
        count = {count}
        [resources]
        provider = "aws"
        [resources.aws]
    """) + textwrap.dedent(aws))
    return path


def events(client, job_id: str, kind: str) -> list:
    return [e for e in client.watch(job_id, follow=False) if e.kind == kind]


@pytest.mark.timeout(90)
def test_a_job_runs_on_tagged_spot_instances_that_end_terminated(aws_coordd, cloud, tmp_path):
    coordd = aws_coordd()
    with coordd.client() as client:
        job = client.submit(job_file(tmp_path, """
            instance_type = "c5.large"
            spot = true
            tags = { project = "imagenet" }
        """))
        final = client.wait(job.id, timeout=60)
        assert final.state == DONE, final.reason
        printed = {line.text for line in client.logs(job.id)}
        assert printed == {f"hello from {node}" for node in final.node_ids}
        launched = events(client, job.id, "provider.launched")
    instances = cloud.instances(**{ec2.TAG_JOB: job.id})
    assert len(instances) == 2 == len(launched)
    coordd_id = (coordd.state_dir / "coordd-id").read_text().strip()
    for instance in instances:
        tags = tags_of(instance)
        assert tags[ec2.TAG_COORDD] == coordd_id and tags[ec2.TAG_NODE] in final.node_ids
        assert tags["project"] == "imagenet" and tags["team"] == "ml"  # job's and coordd's
        assert instance["InstanceType"] == "c5.large"
        assert instance["InstanceLifecycle"] == "spot"
    assert all("first choice" in e.message for e in launched)
    cloud.assert_all_terminated()  # the job ended: its instances went with it


@pytest.mark.timeout(90)
def test_a_capacity_error_on_the_first_choice_uses_the_fallback(aws_coordd, cloud, tmp_path):
    cloud.proxy.faults["c5.large"] = "InsufficientInstanceCapacity"
    coordd = aws_coordd()
    with coordd.client() as client:
        job = client.submit(job_file(tmp_path, """
            instance_type = "c5.large"
            spot = true
            availability_zone = "us-east-1a"
            fallbacks = [{ instance_type = "c5.xlarge", availability_zone = "us-east-1b" },
                         { spot = false }]
        """))
        final = client.wait(job.id, timeout=60)
        assert final.state == DONE, final.reason
        misses = events(client, job.id, "provider.capacity")
        launched = events(client, job.id, "provider.launched")
    assert len(misses) == 2 and all("c5.large spot in us-east-1a not available "
                                    "(InsufficientInstanceCapacity); next: c5.xlarge spot in "
                                    "us-east-1b" in e.message for e in misses)
    assert len(launched) == 2
    for event in launched:  # the user reads which choice was used, and why
        assert "fallback 1 of 2 after c5.large spot in us-east-1a: InsufficientInstance" \
               "Capacity" in event.message, event.message
        data = event.data
        assert (data["instance_type"], data["availability_zone"], data["market"]) == (
            "c5.xlarge", "us-east-1b", "spot")
    assert cloud.proxy.calls("c5.large") == 2  # once per node: no retry storm on one choice
    assert {i["InstanceType"] for i in cloud.instances()} == {"c5.xlarge"}
    cloud.assert_all_terminated()


@pytest.mark.timeout(60)
def test_a_bad_ami_fails_clearly_and_is_not_retried_against_aws(aws_coordd, cloud, tmp_path):
    cloud.proxy.faults["ami-0badbadbadbad0000"] = "InvalidAMIID.NotFound"
    coordd = aws_coordd()
    with coordd.client() as client:
        job = client.submit(job_file(tmp_path, 'ami = "ami-0badbadbadbad0000"\n'
                                                  'instance_type = "c5.large"\n', count=1))
        wait_for(lambda: len(events(client, job.id, "provider.error")) >= 3, 30,
                 what="the reconciler to ask again")
        errors = events(client, job.id, "provider.error")
        assert all("InvalidAMIID.NotFound" in e.message for e in errors), errors[0].message
        assert cloud.proxy.calls("ami-0badbadbadbad0000") == 1  # asked AWS once, not per retry
        client.cancel(job.id)
        assert client.wait(job.id, timeout=30).state == JobState.CANCELLED
    assert coordd.process.poll() is None  # coordd is fine
    assert cloud.instances() == []


@pytest.mark.timeout(120)
def test_a_restarted_coordd_adopts_its_instances_and_terminates_orphans(aws_coordd, cloud,
                                                                         tmp_path):
    coordd = aws_coordd()
    with coordd.client() as client:
        job = client.submit(job_file(tmp_path, 'instance_type = "m5.large"\n',
                                     run="sleep 600"))
        wait_for(lambda: client.get(job.id).state == JobState.RUNNING, 60,
                 what="the job to run")
    ours = {i["InstanceId"] for i in cloud.instances(**{ec2.TAG_JOB: job.id})}
    coordd_id = (coordd.state_dir / "coordd-id").read_text().strip()
    orphan = launch_tagged(cloud, coordd_id, node="ghost-node")  # no such node in the store
    foreign = launch_tagged(cloud, "another-coordd", node="theirs")  # not this coordd's
    coordd.process.send_signal(signal.SIGKILL)
    coordd.process.wait()

    coordd = aws_coordd()
    wait_for(lambda: state(cloud, orphan) == "terminated", 30, what="the orphan to go")
    with coordd.client() as client:
        wait_for(lambda: all(n.state == NodeState.ASSIGNED
                             for n in client.nodes(job.id)), 30, what="the agents to return")
        final = client.get(job.id)
        assert final.state == JobState.RUNNING and final.generation == 1
        assert {state(cloud, i) for i in ours} == {"running"}  # adopted, not relaunched
        assert {i["InstanceId"] for i in cloud.instances(**{ec2.TAG_COORDD: coordd_id})
                } == ours | {orphan}  # nothing new launched: none leaked
        client.cancel(job.id)
        assert client.wait(job.id, timeout=30).state == JobState.CANCELLED
    assert state(cloud, foreign) == "running"  # another coordd's instance is left alone
    cloud.client.terminate_instances(InstanceIds=[foreign])
    cloud.assert_all_terminated()
    adopted = [json.loads(line) for line in coordd.log_path.read_text().splitlines()
               if '"aws.adopted"' in line]
    assert {entry["instance"] for entry in adopted} >= ours


def launch_tagged(cloud, coordd_id: str, node: str) -> str:
    tags = {ec2.TAG_MANAGED: "true", ec2.TAG_COORDD: coordd_id, ec2.TAG_NODE: node,
            ec2.TAG_JOB: "gone-job"}
    reply = cloud.client.run_instances(
        ImageId=cloud.ami, InstanceType="t3.micro", MinCount=1, MaxCount=1,
        UserData="#!/bin/bash\n",  # never boots an agent: the hypervisor finds no COORD env
        TagSpecifications=[{"ResourceType": "instance",
                            "Tags": [{"Key": k, "Value": v} for k, v in tags.items()]}])
    return reply["Instances"][0]["InstanceId"]


def state(cloud, instance_id: str) -> str:
    reply = cloud.client.describe_instances(InstanceIds=[instance_id])
    return reply["Reservations"][0]["Instances"][0]["State"]["Name"]


# the request and the boot script, as plain data ---------------------------------------------
def aws_spec(aws: dict, **resources):
    return parse_spec({"name": "j", "run": "x", "resources": {
        "provider": "aws", "aws": aws, **resources}}, "job.toml")


def test_fallbacks_change_only_what_they_set_and_the_request_says_so():
    spec = aws_spec({"subnet_id": "subnet-0123456789abcdef0", "placement_group": "pg",
                     "iam_instance_profile": "arn:aws:iam::1:instance-profile/p",
                     "fallbacks": [{"availability_zone": "eu-west-1b"},
                                   {"instance_type": "p4d.24xlarge", "spot": False}]},
                    instance_type="p5.48xlarge", spot=True)
    template = ec2.launch_template(spec, AwsResources(ami="ami-0123456789abcdef0",
                                                      security_group_ids=["sg-01234567"]))
    first, other_zone, on_demand = ec2.choices(template)
    assert first == ec2.Choice("p5.48xlarge", True, "subnet-0123456789abcdef0")
    assert other_zone == ec2.Choice("p5.48xlarge", True, None, "eu-west-1b")
    assert on_demand == ec2.Choice("p4d.24xlarge", False, "subnet-0123456789abcdef0")
    request = ec2.run_request(template, other_zone, {"coord:node": "n"}, "#!", "n-1")
    assert request["Placement"] == {"AvailabilityZone": "eu-west-1b", "GroupName": "pg"}
    assert "SubnetId" not in request and request["SecurityGroupIds"] == ["sg-01234567"]
    assert request["InstanceMarketOptions"]["MarketType"] == "spot"
    assert request["IamInstanceProfile"] == {"Arn": "arn:aws:iam::1:instance-profile/p"}
    assert "InstanceMarketOptions" not in ec2.run_request(template, on_demand, {}, "#!", "n-3")


def test_bad_aws_keys_are_refused_naming_the_key():
    cases = [({"fallbacks": [{}]}, "'resources.aws.fallbacks.0'"),
             ({"ami": "ubuntu"}, "'resources.aws.ami'"),
             ({"tags": {"coord:job": "x"}}, "reserved"),
             ({"subnet_id": "subnet-01234567", "availability_zone": "us-east-1a"}, "not both"),
             ({"colour": "red"}, "unknown key 'resources.aws.colour'")]
    for aws, expected in cases:
        with pytest.raises(InvalidSpec, match=expected):
            aws_spec(aws)
    with pytest.raises(InvalidSpec, match="resources.aws.ami"):  # nowhere: not in the defaults
        ec2.launch_template(aws_spec({"instance_type": "c5.large"}), AwsResources())


def test_the_user_data_carries_the_agent_environment_exactly():
    pem = "-----BEGIN CERTIFICATE-----\nMIIB'$x\n-----END CERTIFICATE-----\n"
    env = {"COORD_ADDR": "10.0.0.5:7070", "COORD_NODE_ID": "n-1", "COORD_TOKEN": "t'ok",
           "COORD_CA_PEM": pem}
    script = ec2.user_data(AwsSettings(agent_install="pip install coord"), env)
    assert agent_env_of(script) == env
    start = heredoc(script, ec2.START_MARK)  # where coordd is, which node: the environment's
    assert "10.0.0.5" not in start and "n-1" not in start and "/etc/coord/agent.env" in start
    assert "pip install coord" in script and "systemctl enable --now coord-agent" in script


def test_ec2_errors_are_sorted_by_what_can_be_done_about_them():
    def error(code: str, status: int) -> ClientError:
        return ClientError({"Error": {"Code": code, "Message": "m"},
                            "ResponseMetadata": {"HTTPStatusCode": status}}, "RunInstances")
    assert ec2.is_capacity(error("InsufficientInstanceCapacity", 500))
    assert not ec2.is_transient(error("InsufficientInstanceCapacity", 500))
    assert ec2.is_transient(error("RequestLimitExceeded", 503))
    assert isinstance(ec2.refusal(error("UnauthorizedOperation", 403), "x"), PermissionDenied)
    assert isinstance(ec2.refusal(error("InvalidAMIID.NotFound", 400), "x"), InvalidSpec)
    assert isinstance(ec2.refusal(error("SpotMaxPriceTooLow", 400), "x"), ProviderError)


def test_a_place_is_one_unit_and_a_request_never_names_subnet_and_zone():
    defaults = AwsResources(ami="ami-0123456789abcdef0", subnet_id="subnet-0123456789abcdef0")
    template = ec2.launch_template(aws_spec({"availability_zone": "us-east-1a"},
                                            instance_type="c5.large"), defaults)
    assert (template.subnet_id, template.availability_zone) == (None, "us-east-1a")
    placed = ec2.Choice("c5.large", False, "subnet-0aaaaaaaaaaaaaaaa", "us-east-1a")
    request = ec2.run_request(template, placed, {}, "#!", "n-1")
    assert request["SubnetId"] == "subnet-0aaaaaaaaaaaaaaaa" and "Placement" not in request


def test_only_loopback_and_unspecified_addresses_are_unreachable_from_ec2():
    for address in ("127.0.0.1:7070", "localhost:7070", "0.0.0.0:7070", "[::]:7070",
                    "[::1]:7070", "127.3.2.1:1"):
        assert ec2.unreachable_from_ec2(address), address
    for address in ("10.0.0.5:7070", "coordd.internal:7070", "[fd00::5]:7070"):
        assert not ec2.unreachable_from_ec2(address), address


# the provider called directly, against the stand-in EC2 ----------------------------------
class Recorder:
    def __init__(self):
        self.events: list[tuple[str, str]] = []

    async def __call__(self, job_id: str, kind: str, message: str, payload: ev.Payload) -> None:
        ev.encode(kind, payload)  # what the store would refuse, this refuses too
        self.events.append((kind, message))

    def kinds(self, kind: str) -> list[str]:
        return [message for k, message in self.events if k == kind]


def provider(tmp_path, settings: AwsSettings, address: str = "10.0.0.5:7070"):
    events = Recorder()
    return AwsProvider(settings, AgentAccess(lambda: address, "agent-token"), tmp_path,
                       events), events


def settings_for(cloud, **changes) -> AwsSettings:
    return AwsSettings(**{"region": REGION, "endpoint_url": cloud.proxy.endpoint,
                          "fallback_backoff_s": 0.01, "fallback_backoff_max_s": 0.05,
                          "defaults": AwsResources(ami=cloud.ami)} | changes)


def nodes(*ids: str) -> list[NodeRecord]:
    return [NodeRecord(id=i, provider="aws") for i in ids]


JOB = JobRecord(id="job-1", name="j", spec_json="{}")


def readme_example(first_line: str) -> dict:
    """A TOML example from the "AWS provider" section of docs/providers.md."""
    text = (ROOT / "docs" / "providers.md").read_text().split("## AWS provider", 1)[1]
    blocks = re.findall(r"```toml\n(.*?)```", text, re.S)
    return tomllib.loads(next(b for b in blocks if b.startswith(first_line)))


@pytest.mark.timeout(60)
async def test_the_readme_example_launches_in_the_configured_vpc_zone_by_zone(bare_cloud,
                                                                              tmp_path):
    """docs/providers.md: [aws.defaults] names a subnet, the job a zone, its fallback another zone. Each
    zone resolves to its subnet in the defaults' VPC (not the default VPC, not both)."""
    ec2c = bare_cloud.client
    vpc = ec2c.create_vpc(CidrBlock="10.9.0.0/16")["Vpc"]["VpcId"]
    subnets = {zone: ec2c.create_subnet(VpcId=vpc, CidrBlock=f"10.9.{n}.0/24",
                                        AvailabilityZone=zone)["Subnet"]["SubnetId"]
               for n, zone in enumerate(("us-east-1a", "us-east-1b", "us-east-1c"))}
    group = ec2c.create_security_group(GroupName="coord", Description="d", VpcId=vpc)["GroupId"]
    ec2c.create_key_pair(KeyName="ops")
    boto3.client("iam", endpoint_url=ec2c.meta.endpoint_url, region_name=REGION
                 ).create_instance_profile(InstanceProfileName="coord-node")
    config = readme_example("# coordd.toml")["aws"]
    config["defaults"] |= {"ami": bare_cloud.ami, "subnet_id": subnets["us-east-1c"],
                           "security_group_ids": [group]}
    config |= {"region": REGION, "endpoint_url": bare_cloud.proxy.endpoint,
               "fallback_backoff_s": 0.01}
    spec = parse_spec({"name": "j", "run": "x", **readme_example("# job.toml")}, "job.toml")
    bare_cloud.proxy.faults[subnets["us-east-1a"]] = "InsufficientInstanceCapacity"
    aws, events = provider(tmp_path, AwsSettings.model_validate(config))
    records = nodes("n-1", "n-2")
    try:
        await aws.launch(records, JOB, spec)
    finally:
        await aws.close()
    assert aws.join_timeout_s == 600  # instances boot for minutes: the registry waits longer
    for launch in bare_cloud.proxy.launches:
        assert not (launch[2] and launch[3]), launch  # never a zone and a subnet together
    for record in records:
        instance = bare_cloud.client.describe_instances(
            InstanceIds=[record.provider_data["instance_id"]])["Reservations"][0]["Instances"][0]
        assert (instance["SubnetId"], instance["VpcId"]) == (subnets["us-east-1b"], vpc)
        assert instance["Placement"]["AvailabilityZone"] == "us-east-1b"
    assert len(events.kinds("provider.capacity")) == 2


@pytest.mark.timeout(60)
async def test_a_failed_node_is_named_and_the_launched_one_kept(bare_cloud, tmp_path):
    bare_cloud.proxy.faults["n-2-1"] = "InvalidParameterValue"  # node n-2's first try only
    aws, _ = provider(tmp_path, settings_for(bare_cloud))
    records = nodes("n-1", "n-2")
    spec = aws_spec({"instance_type": "c5.large"})
    try:
        with pytest.raises(PartialLaunch, match="1 of 2 .*n-2.*InvalidParameterValue") as err:
            await aws.launch(records, JOB, spec)
    finally:
        await aws.close()
    assert err.value.failed == ["n-2"]
    assert "instance_id" in records[0].provider_data and records[1].provider_data == {}
    assert len(bare_cloud.instances()) == 1


@pytest.mark.timeout(60)
async def test_a_choice_ec2_refuses_moves_on_but_an_auth_error_stops(bare_cloud, tmp_path):
    bare_cloud.proxy.faults["c5.large"] = "InvalidParameterValue"  # e.g. not offered there
    spec = aws_spec({"instance_type": "c5.large", "fallbacks": [{"instance_type": "c5.xlarge"}]})
    aws, events = provider(tmp_path, settings_for(bare_cloud))
    try:
        await aws.launch(nodes("n-1"), JOB, spec)
        assert [i["InstanceType"] for i in bare_cloud.instances()] == ["c5.xlarge"]
        assert "refused (InvalidParameterValue" in events.kinds("provider.choice_refused")[0]
        bare_cloud.proxy.faults["c5.large"] = "UnauthorizedOperation"
        with pytest.raises(PermissionDenied, match="UnauthorizedOperation"):
            await aws.launch(nodes("n-2"), JobRecord(id="job-2", name="j", spec_json=""), spec)
    finally:
        await aws.close()
    assert bare_cloud.proxy.calls("c5.xlarge") == 1  # the auth error ended the walk


@pytest.mark.timeout(60)
async def test_a_refused_job_is_held_then_asked_again_and_the_hold_forgotten(bare_cloud,
                                                                             tmp_path):
    bare_cloud.proxy.faults[bare_cloud.ami] = "InvalidAMIID.NotFound"
    aws, _ = provider(tmp_path, settings_for(bare_cloud, permanent_error_hold_s=0.3))
    spec = aws_spec({"instance_type": "c5.large"})
    try:
        for _ in range(2):
            with pytest.raises(InvalidSpec, match="InvalidAMIID"):
                await aws.launch(nodes("n-1"), JOB, spec)
        assert bare_cloud.proxy.calls(bare_cloud.ami) == 1  # held: AWS not asked again
        await asyncio.sleep(0.4)
        del bare_cloud.proxy.faults[bare_cloud.ami]
        await aws.launch(nodes("n-2"), JOB, spec)
        assert aws._refused == {}  # expired holds are dropped, not kept forever
    finally:
        await aws.close()


async def test_no_region_blames_coordds_config_and_loopback_is_warned(bare_cloud, tmp_path,
                                                                      monkeypatch):
    for key in ("AWS_DEFAULT_REGION", "AWS_REGION"):
        monkeypatch.delenv(key, raising=False)
    aws, events = provider(tmp_path, AwsSettings(defaults=AwsResources(ami=bare_cloud.ami)),
                           address="0.0.0.0:7070")
    try:
        with pytest.raises(ProviderError, match="aws.region.*AWS_REGION"):
            await aws.launch(nodes("n-1"), JOB, aws_spec({"instance_type": "c5.large"}))
    finally:
        await aws.close()
    [warning] = events.kinds("provider.warning")  # agents on EC2 could never dial 0.0.0.0
    assert "0.0.0.0:7070" in warning and "`advertise`" in warning
