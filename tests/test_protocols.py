"""Every implementation the training loop talks to matches its Protocol member by member (signatures included), and
the names that live in two layers agree."""

from __future__ import annotations

import typing

import pytest
from protocol_check import protocol_problems

from sdar.rollout.generator import Generator
from sdar.rollout.hf import HFGenerator
from sdar.rollout.vllm_engine import VLLMGenerator
from sdar.skills.retrieval import (FullRetriever, KeywordRetriever, RandomRetriever, SkillRetriever,
                                   UCBRetriever)


@pytest.mark.parametrize("impl", [HFGenerator, VLLMGenerator], ids=lambda c: c.__name__)
def test_generators_match_the_generator_protocol(impl):
    assert protocol_problems(Generator, impl) == []


@pytest.mark.parametrize("impl", [KeywordRetriever, FullRetriever, RandomRetriever, UCBRetriever],
                         ids=lambda c: c.__name__)
def test_retrievers_match_the_retriever_protocol(impl):
    assert protocol_problems(SkillRetriever, impl) == []


def test_a_generator_without_sleep_is_caught():
    class NoSleep:
        def generate(self, prompts, params):
            return []

        def load_weights(self, named_tensors):
            return None

    assert any("sleep" in p for p in protocol_problems(Generator, NoSleep))


def test_method_names_have_one_source():
    # sdar.names spells the names once; the configuration and the method table both read it, and the table has one
    # entry per name, in the same order
    from sdar.algo.methods import METHODS
    from sdar.algo.methods import MethodName as AlgoNames
    from sdar.config import MethodName as ConfigNames
    from sdar.names import MethodName

    assert ConfigNames is MethodName and AlgoNames is MethodName
    assert typing.get_args(MethodName) == tuple(METHODS)


def test_the_configs_teacher_methods_are_those_whose_loss_reads_the_teacher():
    from sdar.algo.methods import METHODS
    from sdar.config import TEACHER_METHODS

    assert TEACHER_METHODS == tuple(name for name, spec in METHODS.items() if spec.loss.needs_teacher)
