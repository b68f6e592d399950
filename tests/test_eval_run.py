"""The evaluation run and report on a scripted engine (replies) over a tiny model (loss)."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest

from limamono.engine.protocol import Completion
from limamono.evaluate.report import write_report
from limamono.evaluate.run import EvalConfig, held_out, make_prompts, run, token_budget

DATA = Path(__file__).parent / "assets" / "eval_data"


class ScriptedEngine:
    """Replies by requested length; loss comes from the real tiny model."""

    def __init__(self, model, tokenizer, replies):
        self.model, self.tokenizer, self.replies = model, tokenizer, replies
        self.prompts: list[tuple[str, int, int | None]] = []

    def generate(self, prompt, settings, max_new_tokens, stop=(), cancel=None,
                 truncation="left"):
        self.prompts.append((prompt, max_new_tokens, settings.seed))
        length = prompt.rsplit("(length = ", 1)[1].split(")")[0]
        text, stop_string = self.replies[length]
        return Completion(text, "stop", 10, 5, stop_string)


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return (AutoModelForCausalLM.from_pretrained(tiny_model_dir),
            AutoTokenizer.from_pretrained(tiny_model_dir))


def test_held_out_uses_the_marked_split():
    convs = held_out(DATA)
    assert [c.user.name for c in convs] == ["Tom"]


def test_prompts_cover_char_turns_after_the_greeting():
    config = EvalConfig(data=DATA, lengths=("short", "huge"), samples=5, seed=7)
    prompts = make_prompts(held_out(DATA), config)
    assert sorted({p.turn for p in prompts}) == [2, 4]
    assert [p.requested_length for p in prompts] == ["short", "huge"] * 5
    # Two turns for five prompts: turns are reused, each prompt with its own seed, and the
    # seed is paired across the lengths.
    assert [p.seed for p in prompts] == [7, 7, 8, 8, 9, 9, 10, 10, 11, 11]
    assert [p.turn for p in prompts][::2] == [prompts[0].turn, prompts[2].turn] * 2 + [
        prompts[0].turn]
    # The history is the conversation as written; the policy labels it when it renders.
    [source] = held_out(DATA)
    assert all(p.conversation.messages == source.messages[:p.turn] for p in prompts)


def test_token_budget():
    assert token_budget("short", 320) == 96      # 60 words * 1.6
    assert token_budget("huge", 320) == 320      # capped
    assert token_budget("micro", 10) == 10


def test_run_and_report(tiny, tmp_path):
    replies = {"short": (" Mira nodded. _Fine._", "###"),
               "long": (' Mira smiled and poured the tea. "Drink this, traveler, it '
                        'will warm you through."', "###"),
               "massive": (" Mira talked about the light, the ships, the storms and the "
                           "keepers before her for a long while.\nTom: Thanks.", "\nTom:")}
    engines = []

    def load(model, adapter):
        engines.append(ScriptedEngine(*tiny, replies))
        return engines[-1]

    config = EvalConfig(data=DATA, adapters=("none", "other"), samples=2)
    calls = []
    results = run(config, progress=lambda v, d, t: calls.append((v, d, t)), load=load)
    assert [r.adapter for r in results] == ["none", "other"]
    r = results[0]
    assert r.supervised_tokens > 20 and r.perplexity == pytest.approx(math.exp(r.eval_loss))
    b = r.behaviour
    assert b.samples == 6
    assert b.impersonation_rate == pytest.approx(2 / 6)
    assert b.thought_rate == pytest.approx(2 / 6)
    assert b.median_words == {"short": 3.0, "long": 14.0, "massive": 20.0}
    assert b.length_spearman == pytest.approx(1.0)
    assert calls == [(v, d, 6) for v in ("none", "other") for d in range(7)]
    assert engines[0].prompts[0][0].endswith("### Response: (length = short)\nMira:")

    written = write_report(config, results, tmp_path / "report")
    assert sorted(p.name for p in written) == ["lengths.png", "metrics.png", "report.json",
                                               "report.md"]
    data = json.loads((tmp_path / "report" / "report.json").read_text())
    assert data["variants"][1]["behaviour"]["impersonation_rate"] == pytest.approx(2 / 6)
    md = (tmp_path / "report" / "report.md").read_text()
    # 2 of 6: Wilson 9.7-70.0 %, all above the 5 % ceiling; thoughts straddle 20 %.
    assert ("| impersonation rate | 33.3 % [9.7, 70.0] **misses** | "
            "33.3 % [9.7, 70.0] **misses** |") in md
    assert ("| thought rate | 33.3 % [9.7, 70.0] **cannot tell** | "
            "33.3 % [9.7, 70.0] **cannot tell** |") in md
    assert "| speaks for the user | 0.0 % [0.0, 39.0] |" in md
    assert "preset each adapter's own (its card, else `limamono`)" in md
    assert data["variants"][0]["verdicts"]["format_integrity"] == "cannot tell"
    assert data["variants"][0]["behaviour"]["intervals"]["impersonation_rate"] == \
        pytest.approx([0.0967714, 0.7000067], abs=1e-6)


def test_an_earlier_report_joins_without_generating_again(tiny, tmp_path):
    """--with-report: the base evaluated once, read back beside a new adapter with the same
    figures; a report of other prompts or settings is refused naming the difference."""
    import dataclasses
    import shutil

    from limamono.evaluate.report import ReportError, read_variants, to_markdown

    replies = {"short": (" Mira nodded. _Fine._", "###"),
               "long": (' Mira smiled. "Drink this."', "###"),
               "massive": (" Mira talked for a long while.\nTom: Thanks.", "\nTom:")}

    def load(model, adapter):
        return ScriptedEngine(*tiny, replies)

    base_config = EvalConfig(data=DATA, adapters=("none",), samples=2)
    base = run(base_config, load=load)
    write_report(base_config, base, tmp_path / "base")
    config = dataclasses.replace(base_config, adapters=("other",))
    (earlier,) = read_variants(tmp_path / "base", config)
    assert earlier.adapter == "none" and earlier.source == str(tmp_path / "base" / "report.json")
    assert earlier.eval_loss == base[0].eval_loss
    assert earlier.behaviour == base[0].behaviour
    assert [s.check for s in earlier.samples] == [s.check for s in base[0].samples]
    md = to_markdown(config, [*run(config, load=load), earlier])
    assert f"Variant `none` is read from `{tmp_path / 'base' / 'report.json'}`" in md
    assert "| impersonation rate | 33.3 % [9.7, 70.0] **misses** | " \
        "33.3 % [9.7, 70.0] **misses** |" in md

    with pytest.raises(ReportError, match=r"samples is 2 there and 3 here"):
        read_variants(tmp_path / "base", dataclasses.replace(config, samples=3))
    with pytest.raises(ReportError, match=r"soft_landing is True there and False here"):
        read_variants(tmp_path / "base", dataclasses.replace(config, soft_landing=False))
    # A report from before the soft landing existed ran without it.
    legacy = json.loads((tmp_path / "base" / "report.json").read_text())
    del legacy["config"]["soft_landing"]
    (tmp_path / "legacy").mkdir()
    (tmp_path / "legacy" / "report.json").write_text(json.dumps(legacy))
    assert read_variants(tmp_path / "legacy", dataclasses.replace(config, soft_landing=False))
    with pytest.raises(ReportError, match=r"soft_landing is False there and True here"):
        read_variants(tmp_path / "legacy", config)
    changed = tmp_path / "data"
    shutil.copytree(DATA, changed)
    first = sorted(changed.glob("*.yaml"))[0]
    first.write_text(first.read_text().replace("Mira", "Mirabel"))
    with pytest.raises(ReportError, match="its prompts differ from this run's"):
        read_variants(tmp_path / "base", dataclasses.replace(config, data=changed))
    data = json.loads((tmp_path / "base" / "report.json").read_text())
    del data["prompts_sha256"]
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "report.json").write_text(json.dumps(data))
    with pytest.raises(ReportError, match="no prompts_sha256"):
        read_variants(tmp_path / "old", config)
    with pytest.raises(ReportError, match="cannot read it"):
        read_variants(tmp_path / "missing", config)


def test_bad_config_lists_every_problem():
    with pytest.raises(ValueError) as info:
        EvalConfig(data=DATA, lengths=("long", "vast"), samples=0, policy="chat",
                   backend="vllm")
    assert "vast" in str(info.value) and "samples" in str(info.value)
    assert "policy 'chat' is not one of training, sillytavern" in str(info.value)
    assert "backend 'vllm' is not one of torch, llamacpp" in str(info.value)


def test_llamacpp_generates_and_torch_scores(tiny, tmp_path):
    """--backend llamacpp: the replies come from the generating engine, the loss from a
    torch engine of the same variant (the same loss as a torch run); reports of the two
    backends are not paired, and an older report counts as torch."""
    from limamono.evaluate.report import ReportError, read_variants

    replies = {k: (" Mira nodded.", "###") for k in ("short", "long", "massive")}
    torch_config = EvalConfig(data=DATA, adapters=("none",), samples=2)
    [on_torch] = run(torch_config, load=lambda m, a: ScriptedEngine(*tiny, replies))
    generators, scorers = [], []

    def load(model, adapter):
        generators.append(ScriptedEngine(None, None, replies))  # no torch model to score
        return generators[-1]

    def load_loss(model, adapter):
        scorers.append((model, adapter))
        return ScriptedEngine(*tiny, {})

    config = dataclasses.replace(torch_config, adapters=("none", "x"), backend="llamacpp")
    results = run(config, load=load, load_loss=load_loss)
    assert scorers == [("smollm2-135m", "none"), ("smollm2-135m", "x")]
    assert [len(g.prompts) for g in generators] == [6, 6]
    assert results[0].eval_loss == on_torch.eval_loss
    assert results[0].supervised_tokens == on_torch.supervised_tokens
    write_report(torch_config, [on_torch], tmp_path / "torch")
    with pytest.raises(ReportError, match=r"backend is 'torch' there and 'llamacpp' here"):
        read_variants(tmp_path / "torch", dataclasses.replace(config, adapters=("x",)))
    legacy = json.loads((tmp_path / "torch" / "report.json").read_text())
    del legacy["config"]["backend"]
    (tmp_path / "legacy").mkdir()
    (tmp_path / "legacy" / "report.json").write_text(json.dumps(legacy))
    assert read_variants(tmp_path / "legacy", dataclasses.replace(torch_config,
                                                                  adapters=("x",)))
    write_report(config, results, tmp_path / "llama")
    assert "generated on llamacpp; loss on torch." in (tmp_path / "llama" /
                                                       "report.md").read_text()


@pytest.mark.parametrize(("args", "samples", "max_tokens"), [
    ([], 28, 320),                                     # ceil(83 replies / 3 lengths)
    (["--lengths", "short,long"], 42, 320),            # ceil(83 / 2)
    (["--quick"], 2, 64),
    (["--quick", "--samples", "5", "--max-tokens", "100"], 5, 100),
])
def test_cli_sample_defaults(monkeypatch, tmp_path, args, samples, max_tokens):
    from typer.testing import CliRunner

    import limamono.cli.engine_cmd as engine_cmd
    import limamono.evaluate.report as report
    import limamono.evaluate.run as run_mod
    from limamono.cli import app

    seen = []
    monkeypatch.setattr(engine_cmd, "prepare_model_for_cli", lambda model: None)
    monkeypatch.setattr(run_mod, "run", lambda config, progress, load, **kw: seen.append(config)
                        or [])
    monkeypatch.setattr(report, "write_report", lambda config, results, out: [])
    result = CliRunner().invoke(app, ["eval", "--data", str(DATA), "-o", str(tmp_path), *args])
    assert result.exit_code == 0, result.output
    assert (seen[0].samples, seen[0].max_new_tokens) == (samples, max_tokens)
    assert seen[0].backend == "torch"


def test_cli_backend(monkeypatch, tmp_path):
    from typer.testing import CliRunner

    import limamono.cli.engine_cmd as engine_cmd
    import limamono.evaluate.report as report
    import limamono.evaluate.run as run_mod
    from limamono.cli import app

    seen = []
    monkeypatch.setattr(engine_cmd, "prepare_model_for_cli", lambda model: None)
    monkeypatch.setattr(run_mod, "run", lambda config, progress, load, load_loss:
                        seen.append((config.backend, load_loss is not None)) or [])
    monkeypatch.setattr(report, "write_report", lambda config, results, out: [])
    args = ["eval", "--data", str(DATA), "-o", str(tmp_path), "--quick"]
    assert CliRunner().invoke(app, [*args, "--backend", "llamacpp"]).exit_code == 0
    assert CliRunner().invoke(app, args).exit_code == 0
    assert seen == [("llamacpp", True), ("torch", False)]
    result = CliRunner().invoke(app, [*args, "--backend", "gpu"])
    assert result.exit_code != 0 and "backend 'gpu' is not one of torch, llamacpp" in \
        result.output


def test_cli_with_report_generates_only_what_it_lacks(tiny, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    import limamono.cli.engine_cmd as engine_cmd
    import limamono.evaluate.run as run_mod
    from limamono.cli import app
    from limamono.evaluate.report import ReportError, merge_variants

    replies = {k: (" Mira nodded.", "###") for k in ("short", "long", "massive")}
    config = EvalConfig(data=DATA, adapters=("none",), samples=2, max_new_tokens=320)
    write_report(config, run(config, load=lambda m, a: ScriptedEngine(*tiny, replies)),
                 tmp_path / "base")
    monkeypatch.setattr(engine_cmd, "prepare_model_for_cli", lambda model: None)
    seen = []
    monkeypatch.setattr(run_mod, "run", lambda config, progress, load, **kw: seen.append(config)
                        or [])
    args = ["eval", "--data", str(DATA), "--samples", "2", "--with-report",
            str(tmp_path / "base")]
    # Everything asked for is in the earlier report: nothing is generated.
    result = CliRunner().invoke(app, [*args, "-o", str(tmp_path / "a"), "--adapter", "none"])
    assert result.exit_code == 0, result.output
    assert not seen
    md = (tmp_path / "a" / "report.md").read_text()
    assert "Variant `none` is read from" in md and "| metric | none |" in md
    result = CliRunner().invoke(app, [*args, "-o", str(tmp_path / "b"), "--adapter", "x",
                                      "--adapter", "none"])
    assert result.exit_code == 0, result.output
    assert [c.adapters for c in seen] == [("x",)]
    # Order: as asked, then what only the earlier reports hold; a name in two is refused.
    a, b, c = (run_mod.VariantResult(n, 1.0, 2.7, 5, None, source=s)
               for n, s in (("a", ""), ("b", "r1"), ("c", "r2")))
    assert [r.adapter for r in merge_variants(["b", "a"], [a], [c, b])] == ["b", "a", "c"]
    with pytest.raises(ReportError, match="variant 'b' is in both r1 and r2"):
        merge_variants(["a"], [a], [b, dataclasses.replace(b, source="r2")])
