"""favorkern.integrations.transformers on tiny random models (no weights, no network)."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from favorkern import FavorAttention  # noqa: E402
from favorkern.integrations.transformers import LADDER, linearize, setting_cost  # noqa: E402

VOCAB = 61


def _llama(dtype=torch.float32, seed=0):
    config = transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )  # fmt: skip
    torch.manual_seed(seed)
    return transformers.LlamaForCausalLM(config).to(dtype).eval()


def _bert(seed=0):
    config = transformers.BertConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=128,
    )  # fmt: skip
    torch.manual_seed(seed)
    return transformers.BertModel(config).eval()


def _ids(batch, length, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, VOCAB, (batch, length), generator=g)


def _cache(model, cache):
    """The keyword for a user cache: ``cache`` in transformers 5, ``past_key_values`` before."""
    import inspect

    name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    return {name: cache}


def _template(m=64, **kw):
    return FavorAttention(n_components=m, random_state=0, **kw)


@pytest.fixture(scope="module")
def llama64():
    return _llama(torch.float64)


def test_restores_the_model_own_attention():
    model = _llama()
    ids = _ids(1, 20)
    implementation = model.config._attn_implementation
    with torch.no_grad():
        before = model(ids).logits
        registered = set(transformers.AttentionInterface._global_mapping)
        with linearize(model, _template()) as handle:
            assert model.config._attn_implementation != implementation
            inside = model(ids).logits
        after = model(ids).logits
    assert model.config._attn_implementation == implementation
    assert set(transformers.AttentionInterface._global_mapping) == registered
    assert not torch.allclose(inside, before, atol=1e-4)  # favorkern ran inside
    torch.testing.assert_close(after, before, rtol=0, atol=0)
    handle.restore()  # idempotent
    with handle:  # and active again
        with torch.no_grad():
            again = model(ids).logits
    torch.testing.assert_close(again, inside, rtol=1e-5, atol=1e-5)


def test_only_the_given_layers_change():
    model = _llama()
    ids = _ids(1, 24)
    with torch.no_grad():
        exact = model(ids, output_hidden_states=True).hidden_states
        with linearize(model, _template(), layers=[1]):
            mixed = model(ids, output_hidden_states=True).hidden_states
    # hidden_states[i + 1] is the output of layer i: layer 0 stays exact
    torch.testing.assert_close(mixed[1], exact[1], rtol=1e-5, atol=1e-5)
    assert (mixed[2] - exact[2]).abs().max() > 1e-4


@pytest.mark.parametrize("kind", ["llama", "bert"])
def test_padded_batch_equals_each_sequence_alone(kind):
    """The attention mask becomes key_padding_mask: padding changes no real token."""
    model = _llama() if kind == "llama" else _bert()
    ids = _ids(2, 18, seed=1)
    lengths = (18, 11)
    mask = torch.ones_like(ids)
    if kind == "llama":  # left padding, as for generation
        mask[1, : 18 - lengths[1]] = 0
    else:
        mask[1, lengths[1] :] = 0
    with torch.no_grad(), linearize(model, _template()):
        kwargs = {}
        if kind == "llama":  # rotary positions from the first real token, as generate does
            kwargs["position_ids"] = (mask.cumsum(-1) - 1).clamp(min=0)
        batch = model(input_ids=ids, attention_mask=mask, **kwargs)
        batch = batch.logits if kind == "llama" else batch.last_hidden_state
        for row, n in enumerate(lengths):
            real = mask[row].bool()
            alone = model(input_ids=ids[row : row + 1, real])
            alone = alone.logits if kind == "llama" else alone.last_hidden_state
            assert alone.shape[1] == n
            got = batch[row, real]
            torch.testing.assert_close(got, alone[0], rtol=2e-4, atol=2e-4)


def test_bert_is_bidirectional_and_close_to_exact_with_many_features():
    model = _bert()
    ids = _ids(2, 30, seed=2)
    with torch.no_grad():
        exact = model(ids).last_hidden_state
        with linearize(model, _template(m=512), calibration=ids) as handle:
            approx = model(ids).last_hidden_state
    report = handle.report()
    assert len(report) == 2 * 4
    # a bidirectional template: changing the last token changes the first output
    changed = ids.clone()
    changed[:, -1] = (changed[:, -1] + 1) % VOCAB
    with torch.no_grad(), linearize(model, _template(m=512)):
        first = model(ids).last_hidden_state[:, 0]
        first_changed = model(changed).last_hidden_state[:, 0]
    assert (first - first_changed).abs().max() > 1e-5
    relative = (approx - exact).norm() / exact.norm()
    assert relative < 0.2


def test_a_target_below_any_estimate_keeps_the_model_exact(llama64):
    """Only settings exact on the text qualify (the ladder ends with exact attention)."""
    ids = _ids(2, 20, seed=3)
    with torch.no_grad():
        exact = llama64(ids).logits
        with linearize(llama64, _template(), calibration=ids, target_error=1e-12,
                       sequence_length=8192) as handle:  # fmt: skip
            routed = llama64(ids).logits
            generated = llama64.generate(
                ids[:1, :6], max_new_tokens=6, do_sample=False, **_cache(llama64, handle.cache())
            )
        reference = llama64.generate(ids[:1, :6], max_new_tokens=6, do_sample=False)
    torch.testing.assert_close(routed, exact, rtol=1e-10, atol=1e-10)
    # only settings exact on 20 tokens qualify: exact attention, or windows of 64 and more
    for row in handle.report().rows:
        assert row["error_high"] <= 1e-12
        assert row["setting"] not in ("favor", "window 16"), row
    assert torch.equal(generated, reference)


def test_routing_report_and_plot():
    model = _llama()
    ids = _ids(1, 40, seed=4)
    with linearize(model, _template(), calibration=ids, target_error=0.05,
                   sequence_length=8192) as handle:  # fmt: skip
        report = handle.report()
    names = [name for name, _ in LADDER]
    assert len(report) == 8
    for row in report.rows:
        assert row["setting"] in names
        if row["setting"] != "exact":  # accepted: the interval's upper end is under 0.05
            assert row["error_low"] <= row["error"] <= row["error_high"] <= 0.05
        assert 0.0 <= row["exact_share"] <= 1.0
        assert 0.0 < row["cost"] <= 1.0
    assert sum(report.settings().values()) == 8
    assert 0.0 < report.relative_cost() <= 1.0
    # every head the router did not send to exact attention runs its setting
    for layer, parts in handle.attentions.items():
        heads = np.concatenate([np.arange(4) if h is None else h for _, h, _ in parts])
        assert sorted(heads.tolist()) == [0, 1, 2, 3], layer
    assert "setting" in str(report).splitlines()[0]
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    ax = handle.plot()
    assert ax.get_xlabel() == "head"
    matplotlib.pyplot.close("all")


def _greedy_by_whole_forwards(model, prompt, n_new, mask=None):
    ids = prompt
    for _ in range(n_new):
        kwargs = {}
        if mask is not None:
            kwargs["attention_mask"] = torch.cat(
                [mask, torch.ones(mask.shape[0], ids.shape[1] - mask.shape[1], dtype=mask.dtype)],
                dim=1,
            )
            position = (kwargs["attention_mask"].cumsum(-1) - 1).clamp(min=0)
            kwargs["position_ids"] = position
        logits = model(ids, use_cache=False, **kwargs).logits
        ids = torch.cat([ids, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return ids


def test_greedy_generation_with_states_equals_whole_sequence_argmax(llama64):
    prompt = _ids(1, 12, seed=5)
    with torch.no_grad(), linearize(llama64, _template(), calibration=_ids(1, 32, 6)) as handle:
        cache = handle.cache()
        generated = llama64.generate(
            prompt, max_new_tokens=10, do_sample=False, **_cache(llama64, cache)
        )
        whole = _greedy_by_whole_forwards(llama64, prompt, 10)
        # a plain dynamic cache recomputes the prefix, with the same outputs
        dynamic = llama64.generate(prompt, max_new_tokens=10, do_sample=False)
    assert torch.equal(generated, whole)
    assert torch.equal(dynamic, whole)


def test_generation_with_left_padding(llama64):
    prompt = _ids(2, 10, seed=7)
    mask = torch.ones_like(prompt)
    mask[1, :4] = 0
    with torch.no_grad(), linearize(llama64, _template()) as handle:
        generated = llama64.generate(
            prompt, attention_mask=mask, max_new_tokens=6, do_sample=False,
            **_cache(llama64, handle.cache()), pad_token_id=0,
        )  # fmt: skip
        whole = _greedy_by_whole_forwards(llama64, prompt, 6, mask=mask)
    assert torch.equal(generated, whole)


def test_cache_memory_is_flat_in_the_prefix(llama64):
    sizes = []
    with torch.no_grad(), linearize(llama64, _template()) as handle:
        for length in (8, 64):
            cache = handle.cache()
            llama64(_ids(1, length, seed=8), **_cache(llama64, cache))
            assert cache.get_seq_length() == length
            sizes.append(cache.nbytes())
    assert sizes[0] == sizes[1] > 0


def test_setting_cost_falls_with_the_length_and_exact_is_one():
    for causal in (True, False):
        for _, params in LADDER:
            costs = [setting_cost(params, n, causal) for n in (64, 1024, 8192, 2**16)]
            if params is None:
                assert costs == [1.0] * 4
            else:  # a constant per query against exact attention's O(L)
                pairs = zip(costs, costs[1:], strict=False)
                assert all(a > b > 0 for a, b in pairs), (params, costs)
    # bidirectional exact attention visits every key: the same setting is cheaper beside it
    assert setting_cost({"window": 64}, 4096, False) < setting_cost({"window": 64}, 4096, True)


def test_routing_at_a_length_where_nothing_pays_warns():
    """Costed at a short calibration text, every head stays exact: the user is told to
    give the length the model will run at."""
    model = _llama()
    ids = _ids(1, 40, seed=5)
    with pytest.warns(UserWarning, match="sequence_length"):
        handle = linearize(model, _template(), calibration=ids, target_error=10.0)
    handle.restore()
    assert {row["setting"] for row in handle.report().rows} == {"exact"}


@pytest.mark.parametrize("length", [40, 2**20])
def test_routing_never_takes_a_setting_dearer_than_exact(length):
    """Short: every approximation costs more than exact attention, so every head is exact;
    very long with a loose target: the cheapest setting, plain random features."""
    model = _llama()
    ids = _ids(1, 40, seed=5)
    with linearize(model, _template(), calibration=ids, target_error=10.0,
                   sequence_length=length) as handle:  # fmt: skip
        report = handle.report()
    expected = "exact" if length == 40 else "favor"
    for row in report.rows:
        assert row["setting"] == expected, row
        params = dict(LADDER)[row["setting"]]
        assert row["cost"] == pytest.approx(setting_cost(params, length, True))
        assert row["cost"] <= 1.0
    if length == 40:
        assert report.relative_cost() == 1.0
    else:
        assert report.relative_cost() < 0.01


def test_clear_errors():
    model = _llama()
    ids = _ids(1, 8)
    with pytest.raises(TypeError, match="FavorAttention"):
        linearize(model, "favor")
    with pytest.raises(ValueError, match="calibration"):
        linearize(model, _template(), target_error=0.1)
    with pytest.raises(ValueError, match="target_error"):
        linearize(model, _template(), calibration=ids, target_error=-1.0)
    with pytest.raises(ValueError, match="layers"):
        linearize(model, _template(), layers=[5])
    with pytest.raises(ValueError, match="sequence_length"):
        linearize(model, _template(), calibration=ids, target_error=0.1, sequence_length=0)
    with pytest.raises(TypeError, match="sequence_length"):
        linearize(model, _template(), sequence_length=2048.0)
    with pytest.raises(ValueError, match="input_ids"):
        linearize(model, _template(), calibration={"ids": ids})
    implementation = model.config._attn_implementation
    model.train()
    with pytest.raises(ValueError, match="eval"):
        linearize(model, _template())
    model.eval()
    assert model.config._attn_implementation == implementation
    with linearize(model, _template()), torch.no_grad():
        four_d = torch.zeros(1, 1, 8, 8)
        with pytest.raises(ValueError, match="2-D attention masks"):
            model(ids, attention_mask=four_d)
        model.train()
        try:
            with pytest.raises(RuntimeError, match="eval mode"):
                model(ids)
        finally:
            model.eval()
    bert = _bert()
    with linearize(bert, _template()) as handle:
        with pytest.raises(ValueError, match="causal"):
            handle.cache()


def test_generation_with_heads_split_between_exact_and_random_features(llama64):
    """Exact heads of part of a key/value group keep their keys; the rest decode states."""
    from favorkern.integrations._hf_layers import _Part

    prompt = _ids(1, 9, seed=9)
    with torch.no_grad(), linearize(llama64, _template()) as handle:
        for index, layer in handle._by_index.items():
            # heads 0 and 2 read different key/value heads (2 query heads per group)
            favor = FavorAttention(n_components=64, causal=True, random_state=index)
            layer.parts = [
                _Part("exact", np.array([0, 2]), None),
                _Part("favor", np.array([1, 3]), favor),
            ]
        generated = llama64.generate(
            prompt, max_new_tokens=8, do_sample=False, **_cache(llama64, handle.cache())
        )
        whole = _greedy_by_whole_forwards(llama64, prompt, 8)
    handle.restore()
    with torch.no_grad():
        exact_logits = llama64(whole).logits
    assert torch.equal(generated, whole)
    with torch.no_grad(), handle:
        mixed_logits = llama64(whole).logits
    assert not torch.allclose(mixed_logits, exact_logits, atol=1e-6)


HybridAttention = getattr(__import__("favorkern"), "HybridAttention", None)
needs_hybrid = pytest.mark.skipif(HybridAttention is None, reason="no HybridAttention")


@needs_hybrid
def test_hybrid_template_with_a_window_over_the_sequence_is_exact():
    model = _bert()
    ids = _ids(2, 20, seed=10)
    mask = torch.ones_like(ids)
    mask[1, 14:] = 0
    template = HybridAttention(window=32, n_components=32, random_state=0)
    with torch.no_grad():
        exact = model(ids, attention_mask=mask).last_hidden_state
        with linearize(model, template):
            hybrid = model(ids, attention_mask=mask).last_hidden_state
    real = mask.bool()
    torch.testing.assert_close(hybrid[real], exact[real], rtol=1e-4, atol=1e-4)


@needs_hybrid
@pytest.mark.parametrize("n_top", [0, 2])
def test_hybrid_greedy_generation_with_states_equals_whole_sequence_argmax(llama64, n_top):
    template = HybridAttention(
        window=4, n_global=1, n_top=n_top, n_candidates=4 if n_top else None,
        n_components=32, random_state=0,
    )  # fmt: skip
    prompt = _ids(1, 12, seed=11)
    with torch.no_grad(), linearize(llama64, template, calibration=_ids(1, 32, 12)) as handle:
        cache = handle.cache()
        generated = llama64.generate(
            prompt, max_new_tokens=10, do_sample=False, **_cache(llama64, cache)
        )
        whole = _greedy_by_whole_forwards(llama64, prompt, 10)
    assert torch.equal(generated, whole)
