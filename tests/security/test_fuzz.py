"""Bad input, generated: job.toml files and every RPC's request fields (from the descriptors,
so new RPCs and fields are covered), plus bytes that are no message at all. Each gets a clear
status (never UNKNOWN or INTERNAL, which would mean a bug in coordd), coordd keeps answering,
and a job that was running before is untouched."""

from __future__ import annotations

import json
import string

import grpc
import pytest
from google.protobuf import descriptor as D
from google.protobuf import message_factory
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from contract.errors import InvalidSpec
from contract.spec import load_job_file
from contract.states import JobState, NodeState
from coord.v1 import agent_pb2, jobs_pb2
from tests.integration.harness import job_pids, start_coordd, wait_for
from tests.security.test_auth import call

MAX_MESSAGE = 4 * 2**20
FUZZ = settings(max_examples=25, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
CLEAR = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
         grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.RESOURCE_EXHAUSTED,
         grpc.StatusCode.OUT_OF_RANGE}
JOB_SERVICE = jobs_pb2.DESCRIPTOR.services_by_name["JobService"]
AGENT_SERVICE = agent_pb2.DESCRIPTOR.services_by_name["AgentService"]
METHODS = [(s, m) for s in (JOB_SERVICE, AGENT_SERVICE) for m in s.methods]

# Inputs that have broken other programs: traversal, shell, odd unicode, control characters.
NASTY = ["", ".", "..", "../../etc/passwd", "/etc/shadow", "a/../../b", "~root", "C:\\x",
         "$(reboot)", "`id`", "; rm -rf / #", "a|b&&c>d<e", "${IFS}$HOME", "'\"\\", "%s%n%x",
         "\u202eevil", "\ufeffbom", "e\u0301\u0308", "\U0001d54f" * 50, "\x00", "\x1b[31m",
         "\r\n\t", "null", "NaN", "-1", "9" * 5000, "名前", "Ω≈ç√", "\U0010ffff"]


def nasty_texts(longest: int) -> st.SearchStrategy[str]:
    return st.one_of(st.sampled_from(NASTY), st.text(max_size=60),
                     st.builds(lambda c, n: c * n, st.sampled_from(["x", "é", "../", "$("]),
                               st.sampled_from([n for n in (1000, 70_000, 1_000_000)
                                                if n <= longest])))


texts = nasty_texts(1_000_000)


# Values a shell would expand if coord ever interpolated them: the worker must see them as is.
NASTY_ENV = {f"NASTY_{i}": v for i, v in enumerate(NASTY) if "\x00" not in v and len(v) < 4000}
BYSTANDER = """import json, os, time
print("env " + json.dumps({k: v for k, v in os.environ.items() if k.startswith("NASTY_")}),
      flush=True)
while True:
    print("alive", flush=True)
    time.sleep(0.5)
"""


def ints(bits: int, signed: bool = True) -> st.SearchStrategy[int]:
    low, high = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    return st.one_of(st.sampled_from(sorted({low, high, 0, 1, -1 if signed else 2, high // 2})),
                     st.integers(low, high))


SCALARS = {
    D.FieldDescriptor.TYPE_STRING: texts,
    D.FieldDescriptor.TYPE_BYTES: st.one_of(st.binary(max_size=200),
                                            st.sampled_from([b"\x1f\x8b" + b"\0" * 50,
                                                             b"\xff" * 100_000])),
    D.FieldDescriptor.TYPE_BOOL: st.booleans(),
    D.FieldDescriptor.TYPE_INT32: ints(32), D.FieldDescriptor.TYPE_INT64: ints(64),
    D.FieldDescriptor.TYPE_UINT64: ints(64, signed=False),
    D.FieldDescriptor.TYPE_UINT32: ints(32, signed=False),
    D.FieldDescriptor.TYPE_DOUBLE: st.floats(), D.FieldDescriptor.TYPE_FLOAT: st.floats(width=32),
    D.FieldDescriptor.TYPE_ENUM: ints(32),
}


@st.composite
def messages(draw, descriptor: D.Descriptor, depth: int = 0):
    """Any value of `descriptor`'s message: each field absent or drawn from its nasty values."""
    message = message_factory.GetMessageClass(descriptor)()
    for field in descriptor.fields:
        if not draw(st.booleans()):
            continue
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            entries = draw(st.dictionaries(texts, texts, max_size=3))
            getattr(message, field.name).update(entries)
        elif field.message_type is not None:
            if depth >= 3:
                continue
            values = draw(st.lists(messages(field.message_type, depth + 1),
                                   min_size=1, max_size=3 if _repeated(field) else 1))
            target = getattr(message, field.name)
            if _repeated(field):
                target.extend(values)
            else:
                target.CopyFrom(values[0])
        elif _repeated(field):
            getattr(message, field.name).extend(draw(st.lists(SCALARS[field.type], max_size=3)))
        else:
            setattr(message, field.name, draw(SCALARS[field.type]))
    return message


def _repeated(field: D.FieldDescriptor) -> bool:
    return field.is_repeated


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """coordd with a small message limit, and a job already running that must stay so."""
    root = tmp_path_factory.mktemp("fuzz")
    server = start_coordd(root / "state", env={"COORDD_MAX_MESSAGE_BYTES": str(MAX_MESSAGE)})
    work = root / "bystander"
    work.mkdir()
    (work / "bystander.py").write_text(BYSTANDER)
    (work / "job.toml").write_text(to_toml({"name": "bystander", "run": "python bystander.py",
                                            "env": NASTY_ENV}))
    with server.client() as client:
        job = client.submit(work / "job.toml")
        wait_for(lambda: client.get(job.id).state == JobState.RUNNING and
                 job_pids(job.id), 60, what="the bystander to run")
        # Every rank up: a warm-started worker shows as the job's only once it runs.
        lines = wait_for(lambda: (found := {l.rank: l.text for l in client.logs(job.id)
                                            if l.text.startswith("env ")}) and len(found) == 3
                         and found, 60, what="every rank's env line")
        printed = list(lines.values())
    assert all(json.loads(line[4:]) == NASTY_ENV for line in printed)  # exactly as written
    pids = sorted(job_pids(job.id))
    yield server, job.id
    with server.client() as client:  # the bystander never noticed
        record = client.get(job.id)
        assert record.state == JobState.RUNNING and record.generation == 1
        assert sorted(job_pids(job.id)) == pids
        assert {l.job_id for l in client.logs(job.id)} == {job.id}
        assert {l.text for l in client.logs(job.id)} - set(printed) == {"alive"}
    server.stop()


def token_for(server, service) -> str:
    return server.token if service is JOB_SERVICE else server.agent_token


def send(server, service, method, payload: bytes) -> grpc.StatusCode:
    try:
        call(server.channel(), service, method, token_for(server, service), payload,
             timeout=20)
    except grpc.RpcError as exc:
        assert exc.code() in CLEAR, (method.full_name, exc.code(), exc.details()[:300])
        return exc.code()
    return grpc.StatusCode.OK


def still_answers(server) -> None:
    assert server.process.poll() is None, "coordd died"
    with server.client() as client:
        client.jobs()


def safe(method: D.MethodDescriptor, request):
    """Never let a fuzzed submit run: a valid spec would start real nodes."""
    if method.input_type.name == "SubmitJobRequest":
        request.dry_run = True
    return request


@pytest.mark.timeout(300)
@pytest.mark.parametrize("service,method", METHODS, ids=lambda v: getattr(v, "name", ""))
def test_every_rpc_gives_a_clear_error_for_any_field_values(cluster, service, method):
    server, _ = cluster

    @FUZZ
    @given(st.data())
    def check(data):
        payload = [safe(method, data.draw(messages(method.input_type))).SerializeToString()]
        if method.input_type.name == "AgentMessage" and data.draw(st.booleans()):
            register = data.draw(messages(agent_pb2.Register.DESCRIPTOR))  # as agents begin
            payload.insert(0, agent_pb2.AgentMessage(register=register).SerializeToString())
        if sum(map(len, payload)) < MAX_MESSAGE:
            send(server, service, method, payload if method.client_streaming else payload[0])

    check()
    still_answers(server)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("service,method", METHODS, ids=lambda v: getattr(v, "name", ""))
def test_bytes_that_are_no_message_get_invalid_argument(cluster, service, method):
    server, _ = cluster
    truncated = (messages(method.input_type)
                 .map(lambda m: safe(method, m).SerializeToString())
                 .filter(lambda raw: 1 < len(raw) < MAX_MESSAGE)
                 .flatmap(lambda raw: st.integers(1, len(raw) - 1).map(lambda n: raw[:n])))

    @FUZZ
    @given(st.one_of(st.binary(min_size=1, max_size=300), truncated,
                     st.sampled_from([b"\xff" * 20, b"\x0a\xff\xff\xff\xff\x0f",
                                      b"\x12\x03\xc3\x28\x00"])))
    def check(noise):
        send(server, service, method, noise)

    check()
    code = send(server, service, method, b"\x0a\x05ab")  # a string field cut short
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    still_answers(server)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("register", [agent_pb2.Register(node_id="../../etc/passwd"),
                                      agent_pb2.Register(node_id="a b"),
                                      agent_pb2.Register(host="h; reboot"),
                                      agent_pb2.Register(host="h" * 300)])
def test_a_node_cannot_register_with_a_nasty_id_or_host(cluster, register):
    server, _ = cluster
    connect = AGENT_SERVICE.methods_by_name["Connect"]
    message = agent_pb2.AgentMessage(register=register).SerializeToString()
    assert send(server, AGENT_SERVICE, connect, [message]) == grpc.StatusCode.INVALID_ARGUMENT
    with server.client() as client:
        assert all(n.id != register.node_id for n in client.nodes(include_gone=True))


@pytest.mark.timeout(120)
def test_a_message_over_the_limit_is_refused(cluster):
    server, _ = cluster
    submit = JOB_SERVICE.methods_by_name["SubmitJob"]
    request = jobs_pb2.SubmitJobRequest(spec_json="{}", bundle=b"\0" * (MAX_MESSAGE + 1024),
                                        dry_run=True)
    assert send(server, JOB_SERVICE, submit, request.SerializeToString()) == \
        grpc.StatusCode.RESOURCE_EXHAUSTED
    still_answers(server)


# job.toml ---------------------------------------------------------------------------------
KEYS = ["name", "run", "setup", "workdir", "files", "nproc_per_node", "max_restarts",
        "checkpoint_dir", "nodes", "env", "resources", "count", "min", "wait_for_min_s",
        "provider", "instance_type", "spot", "colour", "RANK", "PATH", "a.b", "名前", "../x"]
short_texts = nasty_texts(1000)  # tomllib is slow on long strings: the bounds test has those
toml_scalars = st.one_of(short_texts, st.integers(-(2**63), 2**63 - 1), st.booleans(),
                         st.floats(allow_nan=True), st.sampled_from(["__bigint__"]))
toml_values = st.recursive(toml_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.sampled_from(KEYS) | short_texts, inner,
                                                 max_size=4)), max_leaves=12)
toml_tables = st.dictionaries(st.sampled_from(KEYS) | short_texts, toml_values, max_size=8)


def to_toml(table: dict) -> str:
    """A small TOML writer (inline tables), so generated files are mostly well-formed and
    reach the validator rather than stopping at the parser."""
    def key(k: str) -> str:
        return json.dumps(k, ensure_ascii=False)

    def value(v) -> str:
        if v == "__bigint__":
            return "9" * 5000
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return {"nan": "nan", "inf": "inf", "-inf": "-inf"}.get(str(v), repr(v))
        if isinstance(v, str):
            return json.dumps(v, ensure_ascii=False)
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return "{" + ", ".join(f"{key(k)} = {value(x)}" for k, x in v.items()) + "}"
    return "\n".join(f"{key(k)} = {value(v)}" for k, v in table.items()) + "\n"


def assert_clear(path) -> None:
    try:
        load_job_file(path)
    except InvalidSpec as exc:
        assert str(path) in str(exc)


@pytest.fixture(scope="module")
def job_file(tmp_path_factory):
    return tmp_path_factory.mktemp("toml") / "job.toml"


@settings(max_examples=100, deadline=None, database=None)
@given(toml_tables)
def test_generated_job_files_load_or_fail_naming_the_file(job_file, table):
    job_file.write_text(to_toml(table), encoding="utf-8")
    assert_clear(job_file)


@settings(max_examples=100, deadline=None, database=None)
@given(st.one_of(st.text(max_size=300),
                 st.text(alphabet=string.printable + "[]{}=\"'.", max_size=300),
                 st.binary(max_size=300).map(lambda b: b.decode("latin-1"))))
def test_any_text_as_a_job_file_loads_or_fails_naming_the_file(job_file, text):
    job_file.write_bytes(text.encode("utf-8", errors="surrogatepass"))
    assert_clear(job_file)


def test_values_over_the_bounds_are_refused_naming_the_key(tmp_path):
    path = tmp_path / "job.toml"
    path.write_text(to_toml({"name": "n" * 64, "run": "x" * 70_000,
                             "env": {"A": "é" * 40_000}, "nodes": {"count": 10**9}}))
    with pytest.raises(InvalidSpec) as info:
        load_job_file(path)
    for key in ("'name'", "'run'", "'env.A'", "'nodes.count'"):
        assert key in str(info.value), key
    path.write_text(to_toml({"name": "n", "run": "r", "env": {"B\n": "1"}}))
    with pytest.raises(InvalidSpec, match="not a valid variable name"):
        load_job_file(path)


def test_deep_nesting_and_odd_files_are_refused_clearly(tmp_path):
    deep = tmp_path / "deep.toml"
    deep.write_text("x = " + "[" * 100_000 + "]" * 100_000 + "\n")
    assert_clear(deep)
    assert_clear(tmp_path)  # a directory
    binary = tmp_path / "bin.toml"
    binary.write_bytes(b"\xff\xfe\x00name")
    assert_clear(binary)


@pytest.mark.timeout(120)
def test_generated_specs_sent_to_coordd_get_a_clear_answer(cluster):
    server, _ = cluster
    submit = JOB_SERVICE.methods_by_name["SubmitJob"]

    @FUZZ
    @given(toml_tables, texts)
    def check(table, source):
        spec = json.dumps(table, ensure_ascii=False).replace('"__bigint__"', "9" * 5000)
        request = jobs_pb2.SubmitJobRequest(spec_json=spec, source=source, dry_run=True)
        send(server, JOB_SERVICE, submit, request.SerializeToString())

    check()
    still_answers(server)


@pytest.mark.timeout(120)
def test_log_lines_and_per_job_log_volume_are_bounded(tmp_path):
    server = start_coordd(tmp_path / "state", env={"COORDD_MAX_LOG_LINE_BYTES": "1000",
                                                    "COORDD_MAX_LOG_BYTES_PER_JOB": str(2**20)})
    (tmp_path / "job.toml").write_text(to_toml({
        "name": "chatty", "nodes": {"count": 1},
        "run": "python -c \"print('L' * 100000); [print('x' * 999) for _ in range(3000)]\""}))
    try:
        with server.client() as client:
            job = client.submit(tmp_path / "job.toml")
            assert client.wait(job.id, timeout=90).state == JobState.SUCCEEDED
            lines = [l.text for l in client.logs(job.id)]
    finally:
        server.stop()
    assert lines[0].startswith("L" * 1000) and lines[0].endswith("[line cut at 1000 bytes]")
    assert all(len(l.encode()) < 1100 for l in lines)
    assert sum(len(l.encode()) for l in lines) <= 2**20
    assert "reached 1048576 bytes" in lines[-1] and len(lines) < 1100  # 3,001 were printed


@pytest.mark.timeout(60)
def test_a_sequence_number_past_sqlite_integers_is_refused_and_harms_nothing(cluster):
    server, _ = cluster
    connect = AGENT_SERVICE.methods_by_name["Connect"]
    stream = [agent_pb2.AgentMessage(register=agent_pb2.Register(node_id="seq-probe")),
              agent_pb2.AgentMessage(seq=2**64 - 1, heartbeat=agent_pb2.Heartbeat())]
    code = send(server, AGENT_SERVICE, connect, [m.SerializeToString() for m in stream])
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    with server.client() as client:  # the node's record still saves: its state moves on
        wait_for(lambda: any(n.id == "seq-probe" and n.state == NodeState.LOST
                             for n in client.nodes(include_gone=True)), 30,
                 what="the probe node to be marked lost")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("data_json", ["{not json", "[1, 2]", "\"text\"", "{\"rank\": \"0\"}"])
def test_an_agent_event_with_bad_data_is_ignored_and_keeps_the_stream(cluster, data_json):
    """A control line's event (worker.inprocess) whose data is no JSON object, for a running
    job: coordd drops it and goes on reading the node's stream; the job is untouched (checked
    at the end of the module)."""
    server, job_id = cluster
    connect = AGENT_SERVICE.methods_by_name["Connect"]
    stream = [agent_pb2.AgentMessage(register=agent_pb2.Register(node_id="event-probe")),
              agent_pb2.AgentMessage(seq=1, event=agent_pb2.AgentEvent(
                  job_id=job_id, generation=1, kind="worker.inprocess", data_json=data_json)),
              agent_pb2.AgentMessage(seq=2, heartbeat=agent_pb2.Heartbeat())]
    replies = call(server.channel(), AGENT_SERVICE, connect, server.agent_token,
                   [m.SerializeToString() for m in stream], timeout=20)
    acked = [agent_pb2.CoordinatorMessage.FromString(r).ack.upto for r in replies]
    assert 2 in acked  # the heartbeat after the bad event was still applied
    still_answers(server)
