"""Both engines show the one `Backend` face: every member, with the protocol's signature."""

from __future__ import annotations

import inspect

import pytest

from generation.backend import Backend, ReadyModel
from generation.engine.local_engine import Engine
from generation.model.loading import LoadedModel
from generation.remote.backend import OpenAIBackend, RemoteConfig, RemoteModel

NOWHERE = "http://127.0.0.1:9/v1"  # the discard port: the structural checks never connect


def protocol_members(protocol: type) -> dict[str, object]:
    """The protocol's own members: its methods and properties, by name."""
    return {
        name: member
        for name, member in vars(protocol).items()
        if not name.startswith("_") and (callable(member) or isinstance(member, property))
    }


def mismatches(cls: type, protocol: type = Backend) -> list[str]:
    """How `cls` falls short of `protocol`: missing members, other parameters or defaults, a
    coroutine where a plain method is expected (or the other way round), a method for a
    property."""
    problems = []
    for name, wanted in protocol_members(protocol).items():
        got = inspect.getattr_static(cls, name, None)
        if got is None:
            problems.append(f"{name}: missing")
        elif isinstance(wanted, property):
            if not isinstance(got, property):
                problems.append(f"{name}: not a property")
        elif not callable(got) or isinstance(got, property):
            problems.append(f"{name}: not a method")
        else:
            want_sig, got_sig = inspect.signature(wanted), inspect.signature(got)
            want = [(p.name, p.kind, p.default) for p in want_sig.parameters.values()]
            have = [(p.name, p.kind, p.default) for p in got_sig.parameters.values()]
            if have != want:
                problems.append(f"{name}: parameters {have} instead of {want}")
            if inspect.iscoroutinefunction(got) != inspect.iscoroutinefunction(wanted):
                problems.append(f"{name}: async where the protocol is not, or not where it is")
    return problems


def test_the_protocol_lists_what_every_backend_must_have():
    assert set(protocol_members(Backend)) == {
        "model_id",
        "context_tokens",
        "stream",
        "generate",
        "abort",
        "queue_position",
        "models",
        "add_adapter",
        "remove_adapter",
        "wait_ready",
        "close",
        "aclose",
    }


@pytest.mark.parametrize("cls", [Engine, OpenAIBackend])
def test_each_engine_has_every_member_with_the_protocols_signature(cls):
    assert mismatches(cls) == []


def test_the_signature_check_notices_a_missing_or_different_member():
    class Partial:
        model_id = "x"  # an attribute, not a property

        def stream(self, request): ...

        def generate(self, request): ...  # not async

        def abort(self, request_id, extra): ...

    problems = mismatches(Partial)
    assert "model_id: not a property" in problems
    assert "models: missing" in problems and "aclose: missing" in problems
    assert any(p.startswith("generate: async") for p in problems)
    assert any(p.startswith("abort: parameters") for p in problems)
    assert not any(p.startswith("stream") for p in problems)


async def test_a_ready_engine_is_a_backend_serving_its_model(make_engine, loaded: LoadedModel):
    engine = make_engine()
    ready = await engine.wait_ready()
    assert isinstance(engine, Backend)
    assert isinstance(ready, ReadyModel) and ready.model_id == loaded.model_id
    assert engine.models() == [loaded.model_id]
    context = engine.context_tokens
    assert isinstance(context, int) and context > 0
    assert context == loaded.model.config.max_position_embeddings


def test_an_engine_not_yet_loaded_knows_no_model_and_no_context(loaded: LoadedModel):
    engine = Engine(lambda: loaded)  # never started: nothing loads
    assert isinstance(engine, Backend)
    assert engine.model_id == "" and engine.models() == []
    assert engine.context_tokens is None


def test_the_remote_engine_is_a_backend_without_a_server():
    engine = OpenAIBackend(RemoteConfig(base_url=NOWHERE))
    assert isinstance(engine, Backend)
    assert engine.models() == [] and engine.context_tokens is None
    named = OpenAIBackend(RemoteConfig(base_url=NOWHERE, model="served-model"))
    assert named.models() == ["served-model"] and named.model_id == "served-model"
    assert isinstance(RemoteModel("served-model", NOWHERE), ReadyModel)
