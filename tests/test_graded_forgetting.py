"""Graded forgetting measures (per-character accuracy, answer cross-entropy), evaluation in shared batches, and
evaluations during training (``train.eval_at``) kept out of training's measurements and recorded as a trajectory."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from lorabench import records, runner
from lorabench.evaluation.exact_match import char_accuracy, scores
from lorabench.evaluation.perplexity import answer_cross_entropy
from lorabench.models import build_embedded, character_tokenizer
from lorabench.report.measures import choose, names, saturation
from lorabench.tasks.algorithmic import AlgorithmicTask
from lorabench.train import TrainSettings, encode_batch, train
from tests.jobs import TINY_LLAMA, tiny_checkpoint, tiny_job
from tests.variants_fixtures import one_torch_thread  # noqa: F401  (autouse)

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def copier() -> tuple[torch.nn.Module, object, dict[str, AlgorithmicTask]]:
    """A tiny Llama that half-learnt to copy: its answers are partly right, so every measure is graded."""
    tokenizer = character_tokenizer()
    model = build_embedded(TINY_LLAMA, tokenizer, seed=0)
    tasks = {name: AlgorithmicTask(name, seed=0, sizes=(200, 8, 12), min_len=3, max_len=5) for name in ("copy", "sort")}
    train(model, tokenizer, tasks["copy"].split("train"), TrainSettings(steps=40, batch_size=32, lr=3e-3), 0, CPU)
    return model, tokenizer, tasks


def test_char_accuracy_grades_what_exact_match_turns_into_zero() -> None:
    assert char_accuracy(" abcde\n", "abcde") == 1.0
    assert char_accuracy("abcdf", "abcde") == pytest.approx(0.8)
    assert char_accuracy("abcdef", "abcde") == pytest.approx(5 / 6)  # an extra character counts as wrong
    assert char_accuracy("abc", "abcde") == pytest.approx(3 / 5)
    assert char_accuracy("", "abc") == 0.0


@given(st.text(alphabet="abcd ", max_size=8), st.text(alphabet="abcd", min_size=1, max_size=8))
def test_char_accuracy_is_a_share_that_is_one_only_for_an_exact_match(generated: str, answer: str) -> None:
    value = char_accuracy(generated, answer)
    assert 0.0 <= value <= 1.0
    assert (value == 1.0) == (generated.strip() == answer)


def test_answer_cross_entropy_is_the_training_loss_and_does_not_depend_on_batches(copier) -> None:
    model, tokenizer, tasks = copier
    examples = tasks["copy"].split("test")
    with torch.no_grad():
        expected = [float(model(**encode_batch(tokenizer, [example], CPU)).loss) for example in examples[:1]]
    assert answer_cross_entropy(model, tokenizer, {"one": examples[:1]}, 4, CPU)["one"] == pytest.approx(expected[0])
    together = answer_cross_entropy(model, tokenizer, {"copy": examples, "sort": tasks["sort"].split("test")}, 5, CPU)
    alone = {
        name: answer_cross_entropy(model, tokenizer, {name: tasks[name].split("test")}, 64, CPU)[name]
        for name in ("copy", "sort")
    }
    assert together == pytest.approx(alone, rel=1e-5)
    assert together["copy"] < together["sort"]  # it learnt to copy, not to sort


def test_scores_of_tasks_in_shared_batches_are_those_of_each_alone(copier) -> None:
    model, tokenizer, tasks = copier
    sets = {
        (name, split): (tasks[name], tasks[name].split(split)) for name in tasks for split in ("test", "validation")
    }
    together = scores(model, tokenizer, sets, 64, CPU)
    for key, one in sets.items():
        assert scores(model, tokenizer, {key: one}, 64, CPU)[key] == together[key]
    copy = together["copy", "test"]
    assert 0 <= copy.accuracy <= copy.char_accuracy <= 1 and copy.char_accuracy > 0


def test_evaluations_during_training_come_at_eval_at_and_stay_out_of_the_step_times(copier) -> None:
    model, tokenizer, tasks = copier
    called: list[int] = []
    settings = TrainSettings(steps=6, batch_size=8, lr=1e-3, eval_at=(2, 4, 6))
    outcome = train(
        model,
        tokenizer,
        tasks["sort"].split("train"),
        settings,
        0,
        CPU,
        evaluate=lambda steps: (called.append(steps), time.sleep(0.3)),
    )
    assert called == [2, 4]  # the last (6 = steps) is the caller's final evaluation
    assert outcome.eval_seconds >= 0.6
    assert max(outcome.clock.step_seconds) < 0.3 and outcome.train_seconds < sum(outcome.clock.step_seconds) + 0.3


def _run(tmp_path: Path, eval_at: list[int], dropout: float = 0.0) -> dict:
    checkpoint = tiny_checkpoint(tmp_path / "model")
    job = tiny_job(
        checkpoint,
        [("lora", 2, "sort", 0.01, 0)],
        dropout=dropout,
        target_modules=["q_proj", "v_proj"],
        train={"eval_at": eval_at},
    )
    with contextlib.chdir(tmp_path):
        runner.run_job(job)
        return json.loads(Path(job.points[0].record).read_text())


def test_evaluating_during_training_leaves_the_training_as_it_was(tmp_path: Path) -> None:
    """Same losses, and same final scores, with dropout on: the evaluations neither draw from the random state
    training uses nor leave the model in eval mode."""
    observed, plain = _run(tmp_path, [1, 2], dropout=0.2), _run(tmp_path, [], dropout=0.2)
    assert observed["loss_curve"] == plain["loss_curve"]
    assert observed["forgetting"] == plain["forgetting"] and observed["target"] == plain["target"]
    assert plain["trajectory"]["step"] == [3]


def test_a_run_records_graded_forgetting_and_its_trajectory(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    tokenizer = character_tokenizer()
    with caplog.at_level(logging.INFO, logger="lorabench.runner"):
        record = _run(tmp_path, [1, 2])
    records.validate(record)
    logged = [r.getMessage() for r in caplog.records if "evaluation" in r.getMessage()]  # the job log shows each
    assert logged[:2] == ["base model: evaluation started", logged[1]] and logged[1].startswith(
        "base model: evaluation done in "
    )
    assert [line.split(": ", 1)[1].split(" in ")[0] for line in logged[2:]] == [
        f"evaluation after step {step} {when}" for step in (1, 2, 3) for when in ("started", "done")
    ]
    assert all(line.startswith(record["run_id"]) for line in logged[2:])
    assert record["status"] == "ok"
    trajectory, forgetting = record["trajectory"], record["forgetting"]
    assert trajectory["step"] == [1, 2, 3]
    assert trajectory["target_test"][-1] == record["target"]["accuracy_after"]
    assert trajectory["target_validation"][-1] == record["extra"]["validation_accuracy"]
    assert trajectory["forgetting"][-1] == forgetting["mean"]
    assert trajectory["forgetting_ce"][-1] == forgetting["graded"]["ce_increase"]["mean"]
    for name, source in record["source"].items():
        assert forgetting["graded"]["ce_increase"]["per_task"][name] == pytest.approx(
            source["ce_after"] - source["ce_before"]
        )
        assert forgetting["graded"]["char_accuracy_drop"]["per_task"][name] == pytest.approx(
            source["char_accuracy_before"] - source["char_accuracy_after"]
        )
    ce = forgetting["graded"]["ce_increase"]
    before = [source["ce_before"] for source in record["source"].values()]
    assert ce["ceiling"] == pytest.approx(math.log(len(tokenizer)) - sum(before) / len(before))
    assert forgetting["ceiling"] == pytest.approx(
        sum(source["accuracy_before"] for source in record["source"].values()) / 2
    )
    assert record["timing"]["eval_seconds"] > 0


def _runs(exact: list[float], char: list[float], ce: list[float]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "forgetting": exact,
            "forgetting_ceiling": 1.0,
            "forgetting_char": char,
            "forgetting_char_ceiling": 0.9,
            "forgetting_ce": ce,
            "forgetting_ce_ceiling": 4.0,
        }
    )


def test_a_verdict_uses_the_first_measure_not_saturated_and_says_which_were_passed_by() -> None:
    assert saturation(_runs([0.95, 1.0], [0.3, 0.8], [1, 2]), "forgetting") == "ceiling"
    assert saturation(_runs([0.0, 0.05], [0.3, 0.8], [1, 2]), "forgetting") == "floor"
    assert saturation(_runs([0.94, 1.0], [0.3, 0.8], [1, 2]), "forgetting") is None
    assert saturation(_runs([1.0], [0.9], [1]).drop(columns="forgetting_ce_ceiling"), "forgetting_ce") == "unmeasured"
    assert saturation(_runs([0.0], [0.9], [1]).assign(forgetting_ceiling=0.0), "forgetting") == "no range"
    choice = choose(_runs([0.97, 1.0], [0.3, 0.8], [1, 2]))
    assert choice.measure == "forgetting_char"
    assert choice.text() == (
        "by per-character accuracy drop (exact-match accuracy drop saturated at its ceiling (every run ≥ 0.95 of it))"
    )
    assert choose(_runs([0.97, 1.0], [0.89, 0.9], [1, 2])).measure == "forgetting_ce"
    every = choose(_runs([0.97, 1.0], [0.89, 0.9], [3.9, 5.0]))
    assert every.measure is None and every.text().startswith("every forgetting measure is saturated in these runs")


def _swept(variant: str, accuracy: list[float], exact: list[float], ce: list[float]) -> pd.DataFrame:
    return _runs(exact, [0.89] * len(exact), ce).assign(
        variant=variant,
        model="m",
        seed=0,
        lr=range(len(exact)),
        run_id=[f"{variant}{i}" for i in range(len(exact))],
        target_acc_after=accuracy,
    )


def _sentence(part: list) -> str:
    """A sentence in pieces read at each comparison's own (unadjusted) p-value: a family of one."""
    from lorabench.report.summary import rendered

    return rendered(part, {id(piece): piece.p for piece in part if not isinstance(piece, str)})


def test_the_summary_names_the_measure_and_says_when_ranges_do_not_overlap_or_all_measures_saturate() -> None:
    from lorabench.report.summary import ModelRuns

    saturated_exact = pd.concat(
        [_swept("a", [0.5, 0.9], [1.0, 1.0], [1.0, 2.0]), _swept("b", [0.6, 1.0], [0.98, 1.0], [1.5, 3.0])]
    )
    text = _sentence(ModelRuns("m", saturated_exact, saturated_exact).forgetting_at_matched_learning("a", "b"))
    assert text.startswith("vs b by answer cross-entropy increase (nats/token) (exact-match accuracy drop saturated")
    assert "per-character accuracy drop saturated at its ceiling" in text and "at accuracy 0.900" in text
    apart = pd.concat([_swept("a", [0.1, 0.3], [0.2, 0.4], [1, 2]), _swept("b", [0.8, 1.0], [0.5, 0.6], [1, 2])])
    text = _sentence(ModelRuns("m", apart, apart).forgetting_at_matched_learning("a", "b"))
    assert "cannot be compared; in 1 seed(s) their measured target accuracies do not overlap" in text
    assert "a 0.10–0.30, b 0.80–1.00" in text
    everything = pd.concat(
        [_swept("a", [0.5, 0.9], [1.0, 1.0], [3.9, 4.0]), _swept("b", [0.6, 1.0], [1.0, 1.0], [4, 5])]
    )
    text = _sentence(ModelRuns("m", everything, everything).forgetting_at_matched_learning("a", "b"))
    assert text.startswith("vs b: no verdict, every forgetting measure is saturated in these runs")


def test_the_forgetting_measure_is_named_by_what_it_averages() -> None:
    """``forgetting`` is the exact-match drop only where its parts are source tasks; an encoder's, a paraphrase
    retrieval drop, must not be called exact match in a verdict, a table or an axis."""
    sources = pd.DataFrame(
        {"forgetting": [0.3], "forgetting_ceiling": [1.0], "forgetting__copy": [0.3], "source_acc_before__copy": [1.0]}
    )
    assert names(sources)["forgetting"] == "exact-match accuracy drop"
    encoder = pd.DataFrame(
        {"forgetting": [0.3, 0.1], "forgetting_ceiling": [0.98, 0.98], "forgetting__paraphrase_retrieval": [0.3, 0.1]}
    )
    assert names(encoder)["forgetting"] == "paraphrase-retrieval drop"
    assert choose(encoder).text() == "by paraphrase-retrieval drop"
    both = sources.assign(**{"forgetting__lm_eval__arc_easy": [0.1]})
    assert names(both)["forgetting"] == "mean of arc_easy (lm-eval) score drop, source tasks' exact-match accuracy drop"
    assert names(sources)["forgetting_ce"] == "answer cross-entropy increase (nats/token)"


def test_held_out_text_alone_is_the_cross_entropy_measure_and_named_so() -> None:
    """A real-model config whose only probe is held-out text (``forgetting.heldout_ce``) gets verdicts on
    forgetting from it, named as what it is, not "answer cross-entropy" nor "unmeasured"."""
    heldout = pd.DataFrame(
        {"forgetting_ce": [0.3, 2.8], "forgetting_ce_ceiling": [3.0, 3.0], "forgetting_ce__heldout_ce": [0.3, 2.8]}
    )
    assert names(heldout)["forgetting_ce"] == "held-out text's cross-entropy increase (nats/token)"
    assert choose(heldout).text() == "by held-out text's cross-entropy increase (nats/token)"
    both = heldout.assign(**{"forgetting_ce__copy": [0.1, 0.2]})
    assert names(both)["forgetting_ce"].startswith("mean of held-out text's and source answers'")
    assert saturation(heldout.assign(forgetting_ce=[2.9, 2.95]), "forgetting_ce") == "ceiling"


def test_held_out_cross_entropy_is_a_part_of_the_graded_cross_entropy_measure() -> None:
    """Its increase joins the source answers' (``ce_increase``), its ceiling a uniform guess's (ln |V| − before)."""
    before = runner.Evaluation({}, {}, {"copy": 1.0}, {"heldout_ce": 4.0, "lm_eval__x": 0.5})
    after = runner.Evaluation({}, {}, {"copy": 1.5}, {"heldout_ce": 4.75, "lm_eval__x": 0.25})
    base = runner.BaseMeasures(before, math.log(100), {}, {}, [])
    measured = runner.forgetting_of(base, after)["graded"]["ce_increase"]
    assert measured["per_task"] == {"copy": 0.5, "heldout_ce": 0.75}
    assert measured["mean"] == pytest.approx(0.625)
    assert measured["ceiling"] == pytest.approx(((math.log(100) - 1.0) + (math.log(100) - 4.0)) / 2)


def test_runs_without_any_forgetting_measure_read_unmeasured_not_saturated() -> None:
    """Runs that took none of the three measures (no source task, benchmark, probe or held-out text): the verdicts
    and the section must say so, after the table, not call the measures saturated."""
    from lorabench.report.measures import UNMEASURED
    from lorabench.report.summary import section_forgetting_measures

    unmeasured = _swept("a", [0.1, 0.2], [1.0, 1.0], [1.0, 2.0]).assign(
        forgetting=float("nan"), forgetting_char=float("nan"), forgetting_ce=float("nan")
    )
    assert choose(unmeasured).text() == UNMEASURED
    lines = section_forgetting_measures(unmeasured, unmeasured)
    table = [index for index, line in enumerate(lines) if line.startswith("| m |")]
    assert len(table) == 2 and table[1] == table[0] + 1  # the table's rows stay together
    assert lines[-1] == f"**m: {UNMEASURED}; no verdict on forgetting.**"
    saturated = _swept("a", [0.1, 0.2], [1.0, 1.0], [3.9, 4.0]).assign(forgetting_char=1.0)
    assert "saturated (or unmeasured)" in section_forgetting_measures(saturated, saturated)[-1]
