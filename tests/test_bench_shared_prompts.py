"""bench/shared_prompts.py runs both arms on grouped rows and reports the same log-probs from fewer tokens."""

from __future__ import annotations

import re

from bench_module import load_bench


def test_shared_prompts_bench_feeds_fewer_tokens_for_the_same_logprobs(capsys):
    bench = load_bench("shared_prompts")
    assert bench.main(["--layers", "1", "--prompts", "2", "--group", "3", "--prompt-len", "12", "20",
                       "--repeats", "1", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    fed = {name: int(n) for name, n in re.findall(r"(separate|shared): \d+ micro-batches, (\d+) tokens fed", out)}
    assert fed["shared"] < fed["separate"]
    # 2 prompts of 12-20 tokens, each fed 3 times separately and once shared
    assert fed["separate"] - fed["shared"] >= 2 * 2 * 12
    assert re.search(r"update: shared [\d.]+s .* shared/separate [\d.]+", out)
    diff = float(re.search(r"max \|log-prob difference\| between the arms: ([\d.e+-]+)", out).group(1))
    assert diff < 1e-4
