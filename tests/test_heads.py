"""Tests of the head-type scores, the probe, the in-context learning score and the logit lens (gpt/inspection.py),
and of their figures (gpt/figures/)."""

from __future__ import annotations

import json
import math

import numpy as np
import plotly.graph_objects as go
import pytest
import torch
import torch.nn.functional as F

from gpt import figures, inspection
from gpt.errors import UserInputError
from gpt.model import GPT, GPTConfig
from gpt.tokenizer import gpt2_tokenizer

EOT = 47  # the <|endoftext|> id of the small vocabularies below


def tiny_model(seed: int = 0, **overrides) -> GPT:
    torch.manual_seed(seed)
    options = {"vocab_size": 48, "context_length": 32, "n_layer": 2, "n_head": 2, "n_embd": 32, "bias": False,
               **overrides}
    return GPT(GPTConfig(**options)).eval()


# -- detection patterns, as TransformerLens builds them ---------------------------------------------------------
def transformer_lens_patterns(ids: list[int]) -> dict[str, np.ndarray]:
    """TransformerLens' head_detector construction, transcribed (torch.roll of the duplicate pattern, first
    column zeroed, tril), as an independent oracle."""
    tokens = torch.tensor([ids])
    T = len(ids)
    previous = torch.zeros(T, T)
    previous[1:, :-1] = torch.eye(T - 1)
    token_pattern = tokens.repeat(T, 1).numpy()
    eq_mask = np.equal(token_pattern, token_pattern.T).astype(int)
    np.fill_diagonal(eq_mask, 0)
    duplicate = torch.tril(torch.as_tensor(eq_mask).float())
    shifted = torch.roll(duplicate, shifts=1, dims=1)
    induction = torch.tril(torch.cat((torch.zeros(T, 1), shifted[:, 1:]), dim=1))
    return {"previous_token": torch.tril(previous).numpy() > 0, "duplicate_token": duplicate.numpy() > 0,
            "induction": induction.numpy() > 0}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_patterns_are_transformer_lens_detection_patterns(seed):
    ids = list(np.random.default_rng(seed).integers(0, 5, 20))  # small alphabet: many repeats
    oracle = transformer_lens_patterns(ids)
    np.testing.assert_array_equal(inspection.previous_token_pattern(ids), oracle["previous_token"])
    np.testing.assert_array_equal(inspection.duplicate_token_pattern(ids), oracle["duplicate_token"])
    np.testing.assert_array_equal(inspection.induction_pattern(ids), oracle["induction"])


def test_patterns_by_hand():
    ids = [9, 5, 7, 5, 7]
    assert np.argwhere(inspection.duplicate_token_pattern(ids)).tolist() == [[3, 1], [4, 2]]
    # query 3 (a 5) -> key 2 (the 7 that followed the earlier 5); query 4 (a 7) -> key 3 (the 5 after the 7)
    assert np.argwhere(inspection.induction_pattern(ids)).tolist() == [[3, 2], [4, 3]]
    assert np.argwhere(inspection.first_token_pattern(ids)).tolist() == [[1, 0], [2, 0], [3, 0], [4, 0]]


def repeated(n: int) -> list[int]:
    half = list(range(n))
    return [EOT, *half, *half]


def hand_made_heads(n: int) -> np.ndarray:
    """(4 heads, T, T) attention on `repeated(n)`: a perfect previous-token head, a perfect induction head
    (uniform where the pattern covers nothing), a uniform head and an attention sink."""
    T = 2 * n + 1
    uniform = np.tril(np.ones((T, T))) / np.arange(1, T + 1)[:, None]
    previous = np.eye(T, k=-1)
    previous[0, 0] = 1.0
    induction = uniform.copy()
    for i in range(n + 1, T):
        induction[i] = 0.0
        induction[i, i - n + 1] = 1.0
    sink = np.zeros((T, T))
    sink[:, 0] = 1.0
    return np.stack([previous, induction, uniform, sink])


def test_pattern_scores_of_hand_built_heads():
    n = 6
    ids = repeated(n)
    T = len(ids)
    probs = torch.as_tensor(hand_made_heads(n))
    score = {name: inspection.pattern_score(probs, torch.as_tensor(make(ids))).numpy()
             for name, make in inspection.PATTERNS.items()}
    previous, induction, uniform, sink = range(4)
    assert score["previous_token"][previous] == pytest.approx(1.0)
    assert score["induction"][induction] == pytest.approx(1.0)
    assert score["first_token"][sink] == pytest.approx(1.0)
    assert score["induction"][previous] == 0.0 and score["duplicate_token"][induction] == 0.0
    # the uniform head: row i spreads 1/(i+1) over its keys; each score is that share, averaged over the rows
    # the pattern covers (previous: rows 1..T-1; duplicate and induction: the second copy, rows n+1..2n)
    rows, second = np.arange(1, T), np.arange(n + 1, T)
    assert score["previous_token"][uniform] == pytest.approx(np.mean(1 / (rows + 1)))
    assert score["first_token"][uniform] == pytest.approx(np.mean(1 / (rows + 1)))
    assert score["duplicate_token"][uniform] == pytest.approx(np.mean(1 / (second + 1)))
    assert score["induction"][uniform] == pytest.approx(np.mean(1 / (second + 1)))
    # TransformerLens' own number divides by every row: ours x covered rows / T (n / (2n + 1) for induction)
    pattern = inspection.induction_pattern(ids)
    transformer_lens = float((probs[induction].numpy() * pattern).sum() / probs[induction].numpy().sum())
    assert transformer_lens == pytest.approx(score["induction"][induction] * n / T)


def test_icl_positions_scale_with_the_context():
    assert inspection.icl_positions(128) == (list(range(11, 16)), list(range(123, 128)))
    assert inspection.icl_positions(256) == (list(range(21, 30)), list(range(246, 255)))
    assert inspection.icl_positions(512) == (list(range(42, 59)), list(range(492, 509)))
    assert inspection.icl_positions(1024) == (list(range(42, 59)), list(range(492, 509)))
    early, late = inspection.icl_positions(16)
    assert early[0] >= 1 and late[-1] <= 16 and early[-1] < late[0]


# -- the probe -----------------------------------------------------------------------------------------------
def test_make_probe_draws_once_from_the_seed():
    probe = inspection.make_probe(32, range(47), EOT, text_tokens=np.arange(600) % 47, seed=3)
    again = inspection.make_probe(32, range(47), EOT, text_tokens=np.arange(600) % 47, seed=3)
    other = inspection.make_probe(32, range(47), EOT, seed=4)
    np.testing.assert_array_equal(probe.repeated, again.repeated)
    assert not np.array_equal(probe.repeated, other.repeated) and other.text is None
    n = probe.repeat_length
    assert probe.repeated.shape == (inspection.PROBE_SEQUENCES, 2 * n + 1) and n == 15
    assert (probe.repeated[:, 0] == EOT).all()
    np.testing.assert_array_equal(probe.repeated[:, 1 : n + 1], probe.repeated[:, n + 1 :])
    assert all(len(set(half)) == n for half in probe.repeated[:, 1 : n + 1])  # no repeats inside a half
    assert EOT not in probe.repeated[:, 1:]
    assert probe.text.shape == (inspection.PROBE_WINDOWS, 33)
    assert probe.text[0, 0] == 0 and probe.text[-1, -1] == 599 % 47  # evenly spaced, first to last token
    long = inspection.make_probe(1024, range(47), EOT)
    assert long.repeat_length == inspection.PROBE_MAX_REPEAT


def test_probe_bad_input():
    with pytest.raises(UserInputError, match="at least 33"):
        inspection.make_probe(32, range(47), EOT, text_tokens=np.arange(20))
    with pytest.raises(UserInputError, match="context of at least 16"):
        inspection.make_probe(8, range(47), EOT)
    with pytest.raises(UserInputError, match="2 distinct tokens"):
        inspection.make_probe(32, [EOT, 3], EOT)


def test_run_probe_uses_the_runs_data(data_dir):
    from gpt.data import load_split, split_token_counts

    tokenizer = gpt2_tokenizer()
    probe = inspection.run_probe(data_dir, tokenizer, 64, seed=1337)
    seen = set(np.flatnonzero(split_token_counts(data_dir, "train")).tolist())
    assert set(probe.repeated[:, 1:].ravel().tolist()) <= seen
    val = np.asarray(load_split(data_dir, "val"))
    np.testing.assert_array_equal(probe.text[0], val[:65])
    np.testing.assert_array_equal(probe.repeated, inspection.run_probe(data_dir, tokenizer, 64, seed=1337).repeated)
    assert probe.notes == []
    missing = inspection.run_probe(data_dir.parent / "gone", tokenizer, 64, seed=1337)
    assert missing.text is None and "not on this machine" in missing.notes[0]


# -- scoring a model ------------------------------------------------------------------------------------------
STEPS = 120  # enough for the induction score to pass 0.8 here (it is below 0.1 before training)


def train_on_repeats(model: GPT, n: int, steps: int) -> None:
    """Teach the model to continue <|endoftext|> + n random tokens + the same n tokens (the probe's format;
    only the second copy is predictable, so only it is scored)."""
    generator = torch.Generator().manual_seed(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0, betas=(0.9, 0.98))
    model.train()
    for _ in range(steps):
        half = torch.randint(0, EOT, (16, n), generator=generator)
        sequence = torch.cat([torch.full((16, 1), EOT), half, half], dim=1)
        targets = sequence[:, 1:].clone()
        targets[:, :n] = -1  # the first copy is random: nothing to learn there
        _, loss = model(sequence[:, :-1], targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()


def repeated_windows(count: int, n: int, seed: int) -> np.ndarray:
    """(count, 2n + 2) windows of <|endoftext|>, n random tokens, the same again and the first one once
    more: a text whose late tokens are predictable from the context and early ones are not."""
    rng = np.random.default_rng(seed)
    halves = [rng.choice(EOT, size=n, replace=False) for _ in range(count)]
    return np.stack([np.concatenate([[EOT], half, half, half[:1]]) for half in halves])


def test_an_induction_head_appears_in_a_model_trained_on_repeats():
    model = tiny_model(context_length=31)
    probe = inspection.make_probe(31, range(EOT), EOT, seed=1)
    assert probe.repeat_length == 15
    probe.text = repeated_windows(8, 15, seed=2)  # 32 tokens = context + 1
    before = inspection.score_probe(model, probe)
    assert before["induction_max"] < 0.1  # random weights: about 1/position on the induction key
    train_on_repeats(model, probe.repeat_length, steps=STEPS)
    model.train()  # score_probe runs in eval mode and puts the mode back
    after = inspection.score_probe(model, probe)
    print(f"induction {before['induction_max']} -> {after['induction_max']}, icl {after['icl_score']}")
    assert model.training
    assert after["induction_max"] > inspection.INDUCTION_THRESHOLD
    layer, head = after["induction_head"]
    assert after["induction"][layer][head] == after["induction_max"]
    # the late positions (29..31 of 31, in the repeat) are far better predicted than the early ones (2..4)
    assert after["icl_positions"] == {"early": [2, 4], "late": [29, 31]}
    assert after["icl_score"] < -1.0 < before["icl_score"]
    assert inspection.first_induction_step([{"step": 0, **before}, {"step": 50, **after}]) == 50
    json.dumps(after)  # the row goes to metrics.jsonl as it is


def test_score_probe_matches_a_direct_computation():
    model = tiny_model(seed=3)
    text = np.random.default_rng(0).integers(0, 47, 400)
    probe = inspection.make_probe(32, range(EOT), EOT, seed=5, text_tokens=text)
    row = inspection.score_probe(model, probe)
    with torch.no_grad():
        _, attentions = model.forward_with_attention(torch.as_tensor(probe.repeated))
        logits, _ = model(torch.as_tensor(probe.text[:, :-1]))
    for name, make in inspection.PATTERNS.items():
        for layer, probs in enumerate(attentions):  # (B, H, T, T)
            for head in range(2):
                expected = np.mean([
                    float((probs[b, head].numpy() * make(seq)).sum() / probs[b, head].numpy()[make(seq).any(1)].sum())
                    for b, seq in enumerate(probe.repeated)])
                assert row[name][layer][head] == pytest.approx(expected, abs=1e-4)
    losses = F.cross_entropy(logits.transpose(1, 2), torch.as_tensor(probe.text[:, 1:]), reduction="none")  # (W, C)
    early, late = inspection.icl_positions(32)
    early_loss = losses[:, [p - 1 for p in early]].mean().item()
    late_loss = losses[:, [p - 1 for p in late]].mean().item()
    assert row["icl_early_loss"] == pytest.approx(early_loss, abs=1e-3)
    assert row["icl_score"] == pytest.approx(late_loss - early_loss, abs=1e-3)
    assert row["probe"] == {"seed": 5, "sequences": 4, "repeat_length": 15, "text_windows": 12}
    table = inspection.head_scores_table(row)
    assert list(table.columns) == ["layer", "head", *inspection.HEAD_SCORES] and len(table) == 4
    assert table.iloc[3]["induction"] == row["induction"][1][1]


@pytest.mark.parametrize("options", [{"position": "rope"}, {"n_head": 1, "n_embd": 16}])
def test_score_probe_on_other_shapes(options):
    model = tiny_model(**options)
    row = inspection.score_probe(model, inspection.make_probe(32, range(EOT), EOT))
    assert np.asarray(row["induction"]).shape == (2, model.config.n_head)
    assert row["icl_score"] is None


# -- the logit lens -------------------------------------------------------------------------------------------
def test_logit_lens_unembeds_the_residual_stream():
    tokenizer = gpt2_tokenizer()
    model = tiny_model(vocab_size=tokenizer.vocab_size, context_length=64)
    text = "to be or not to be, that is the question"
    lens = inspection.logit_lens(model, tokenizer, text)
    ids = tokenizer.encode(text)
    assert lens.ids == ids and lens.true_probs.shape == (2, len(ids))
    idx = torch.tensor([[tokenizer.eot_id] + ids[:-1]])
    with torch.no_grad():  # the residual stream by hand: embeddings, then each block
        x = model.token_embedding(idx) + model.position_embedding(torch.arange(idx.size(1)))
        for layer, block in enumerate(model.blocks):
            x, _ = block(x)
            logits = model.lm_head(model.final_norm(x))[0]  # (T, V)
            probs = torch.softmax(logits, dim=-1)
            true = probs[torch.arange(len(ids)), torch.tensor(ids)]
            np.testing.assert_allclose(lens.true_probs[layer], true.numpy(), rtol=1e-4)
            np.testing.assert_array_equal(lens.top_ids[layer], probs.argmax(-1).numpy())
            true_logit = logits[torch.arange(len(ids)), torch.tensor(ids)]
            ranks = (logits > true_logit[:, None]).sum(-1) + 1
            np.testing.assert_array_equal(lens.true_ranks[layer], ranks.numpy())
    losses = inspection.token_losses(model, tokenizer, text)  # the last layer is the model's own output
    np.testing.assert_allclose(lens.true_probs[-1], np.exp(-losses.losses), rtol=1e-4)
    np.testing.assert_array_equal(lens.true_ranks[-1], losses.ranks)
    fig = figures.logit_lens_figure(lens)
    np.testing.assert_allclose(np.asarray(fig.data[0].z), np.log10(np.clip(lens.true_probs, 1e-5, 1)), rtol=1e-5)
    assert f"rank {int(lens.true_ranks[1, 3]):,}" in fig.data[0].customdata[1][3]


def test_token_ranks_and_top_k():
    tokenizer = gpt2_tokenizer()
    model = tiny_model(vocab_size=tokenizer.vocab_size, context_length=64)
    result = inspection.token_losses(model, tokenizer, "the cat sat on the mat", top_k=10)
    assert result.top_ids.shape == (len(result.ids), 10)
    hit = result.top_ids == np.asarray(result.ids)[:, None]
    for t in range(len(result.ids)):  # a token among the top 10 has its place there as rank
        if hit[t].any():
            assert result.ranks[t] == int(np.argmax(hit[t])) + 1
        else:
            assert result.ranks[t] > 10
    page = figures.token_loss_html(result, tokenizer)
    assert f"rank {int(result.ranks[0]):,} of 50,257" in page and "top-10" in page


# -- every language -------------------------------------------------------------------------------------------
KOREAN = "안녕하세요, 세계! 한국어 텍스트입니다."


def test_split_characters_are_shown_whole_in_every_view():
    tokenizer = gpt2_tokenizer()
    model = tiny_model(vocab_size=tokenizer.vocab_size, context_length=64)
    ids = tokenizer.encode(KOREAN)
    labels = tokenizer.display_labels(ids)
    assert labels[:3] == ["안[1/3]", "안[2/3]", "안[3/3]"] and labels[14] == ","
    assert "␣세[1/3]" in labels and not any("<0x" in label for label in labels)
    maps = inspection.compute_attention(model, tokenizer, KOREAN)
    losses = inspection.token_losses(model, tokenizer, KOREAN)
    lens = inspection.logit_lens(model, tokenizer, KOREAN)
    assert maps.labels == losses.labels == lens.labels == labels
    assert "split across several byte tokens" in maps.notes[-1]
    assert "<0x" not in figures.token_loss_html(losses, tokenizer)
    assert "안[1/3]" in figures.attention_head_figure(maps, 0, 0).layout.xaxis.ticktext
    # a candidate that would complete the character the text is inside shows that character
    assert inspection.candidate_labels(tokenizer, ids[:3], np.array([[ids[0]], [ids[1]], [ids[2]]]))[2] == ["안[3/3]"]
    cut = tokenizer.display_labels(tokenizer.encode("한국")[:-1])  # a character cut off keeps its bytes
    assert cut[:2] == ["한[1/2]", "한[2/2]"] and cut[2].startswith("<0x")


# -- figures --------------------------------------------------------------------------------------------------
def grid(value: float) -> list[list[float]]:
    return [[value, 0.01], [0.02, value / 2]]  # 2 layers x 2 heads


def heads_rows() -> list[dict]:
    return [{"kind": "heads", "step": step, "previous_token": grid(0.5), "duplicate_token": grid(0.3),
             "induction": grid(induction), "first_token": grid(0.6), "induction_max": induction,
             "icl_score": icl}
            for step, induction, icl in ((0, 0.05, -0.01), (100, 0.3, -0.2), (200, 0.7, -0.9), (300, 0.8, -1.0))]


def test_head_scores_over_steps_marks_the_first_induction_head():
    rows = [{"kind": "train", "step": 5}, *heads_rows()]
    fig = figures.head_scores_over_steps(rows)
    by_name = {trace.name: trace for trace in fig.data}
    assert list(by_name["induction"].y) == [0.05, 0.3, 0.7, 0.8] and list(by_name["induction"].x) == [0, 100, 200, 300]
    assert list(by_name["in-context learning"].y) == [-0.01, -0.2, -0.9, -1.0]
    assert by_name["induction"].mode == "lines+markers"  # few points: each one visible
    star = by_name["induction head forms (step 200)"]
    assert list(star.x) == [200] and list(star.y) == [0.7]
    assert "step 0 (before training)" in by_name["induction"].text[0]
    assert "layer 0, head 0" in by_name["induction"].text[2]
    empty = figures.head_scores_over_steps([])
    assert "no head scores yet" in empty.layout.annotations[-1].text


def test_head_scores_html_and_replay():
    row = heads_rows()[2] | {"icl_positions": {"early": [10, 14], "late": [123, 127]}, "icl_late_loss": 2.0,
                             "icl_early_loss": 2.9}
    page = figures.head_scores_html(row, selected=(1, 0))
    assert page.count('class="hs-cell') == 4 * 4 and page.count("hs-cell selected") == 4
    assert 'data-layer="1" data-head="1"' in page and "induction 0.350" in page
    assert "≥ threshold" in page and "-0.900 nats" in page
    replay = figures.head_scores_replay_figure([(row["step"], row) for row in heads_rows()])
    assert [frame.name for frame in replay.frames] == ["0", "100", "200", "300"]
    np.testing.assert_allclose(np.asarray(replay.frames[2].data[2].z), np.asarray(heads_rows()[2]["induction"]))
    assert isinstance(replay.data[0], go.Heatmap) and len(replay.data) == 4


def test_attention_grid_html_is_small_and_faithful():
    import base64
    import io
    import re

    from PIL import Image

    maps = inspection.AttentionMaps(list(range(5)), list("abcde"), hand_made_heads(2)[None].astype(np.float32))
    page = figures.attention_grid_html(maps, selected=(0, 1))
    assert page.count('class="ag-cell') == 4 and 'ag-cell selected" data-layer="0" data-head="1"' in page
    images = re.findall(r"base64,([A-Za-z0-9+/=]+)", page)
    assert len(images) == 4
    pixels = np.asarray(Image.open(io.BytesIO(base64.b64decode(images[2]))))  # palette indexes
    expected = np.where(np.tri(5, dtype=bool), np.rint(maps.probs[0, 2] * 254), 255)
    np.testing.assert_array_equal(pixels, expected)
    assert math.isclose(figures.attention_levels(np.array([[0.5]]))[0, 0] / 254, 0.5, abs_tol=0.5 / 254)


# -- the command line -----------------------------------------------------------------------------------------
def test_heads_command(tmp_path, data_dir, capsys):
    from gpt.cli import main
    from gpt.run import LAST_FILE, DataRef, RunConfig, create_run, save_weights

    tokenizer = gpt2_tokenizer()
    model = tiny_model(vocab_size=tokenizer.vocab_size, context_length=64)
    run_dir = tmp_path / "run"
    create_run(run_dir, RunConfig(model=model.config, train=None, data=DataRef(str(data_dir)), tokenizer=tokenizer))
    save_weights(model, run_dir / LAST_FILE, step=3)
    assert main(["heads", str(run_dir), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    expected = inspection.score_probe(model, inspection.run_probe(data_dir, tokenizer, 64, seed=0))
    assert [(head["layer"], head["head"]) for head in result["heads"]] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert set(result["heads"][0]) == {"layer", "head", "previous_token", "duplicate_token", "induction", "first_token"}
    assert result["heads"][3]["induction"] == expected["induction"][1][1]
    assert result["icl_score"] == expected["icl_score"] and result["step"] == 3
    assert main(["heads", str(run_dir)]) == 0
    table = capsys.readouterr().out
    assert "previous_token" in table and "in-context learning score" in table and "strongest induction head" in table
    assert main(["heads", str(run_dir), "--checkpoint", "snapshot:5"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "no snapshot at step 5" in error
