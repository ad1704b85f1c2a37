"""The model's contract: masks, attention weights, and step-by-step decoding that agrees
with the teacher-forced pass."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import translate.gru
from translate.attention import SCORES, make_attention
from translate.batching import make_batch, token_batches
from translate.config import ConfigError, ModelConfig
from translate.loss import label_smoothed_loss, output_layer_loss
from translate.model import Seq2Seq
from translate.tokenizer import BOS, EOS, PAD

ATTENTIONS = [k for k in SCORES if k != "additive"]  # additive is bahdanau's other name


def build(decoder: str, attention: str, **overrides) -> Seq2Seq:
    torch.manual_seed(0)
    dims = dict(emb_dim=12, enc_hidden=8, dec_hidden=16, attn_dim=16, heads=4, dropout=0.0)
    dims.update(overrides)
    return Seq2Seq(ModelConfig(decoder=decoder, attention=attention, **dims), 25).eval()


@pytest.mark.parametrize("kind", ATTENTIONS)
def test_attention_weights_sum_to_one_and_ignore_padding(kind):
    torch.manual_seed(1)
    attn = make_attention(kind, query_dim=16, key_dim=16, attn_dim=16, heads=4)
    keys = torch.randn(3, 5, 16)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 0, 0, 0, 0]], dtype=torch.bool)
    memory = attn.precompute(keys, mask)
    query = torch.randn(3, 4, 16)
    context, weights = attn(query, memory)
    assert context.shape == (3, 4, attn.context_dim)
    assert weights.shape == (3, 4 if kind == "multihead" else 1, 4, 5)  # (B, H, T, S): each head's
    torch.testing.assert_close(weights.sum(-1), torch.ones(weights.shape[:3]))
    assert torch.all(weights.masked_select(~mask[:, None, None, :].expand_as(weights)) == 0)
    # whatever sits under the padding changes nothing
    noisy = keys.clone()
    noisy[~mask] = torch.randn(int((~mask).sum()), 16) * 100
    context1, _ = attn(query, memory)
    context2, _ = attn(query, attn.precompute(noisy, mask))
    torch.testing.assert_close(context1, context2)


def test_dot_attention_rejects_mismatched_sizes_with_advice():
    with pytest.raises(ValueError, match="dec_hidden=32"):
        make_attention("dot", query_dim=16, key_dim=32, attn_dim=16)


@pytest.mark.parametrize("decoder", ["fused", "input_feed"])
@pytest.mark.parametrize("attention", ATTENTIONS)
def test_step_by_step_decoding_equals_teacher_forcing(decoder, attention):
    model = build(decoder, attention, encoder_self_attention=attention == "general")
    src = [[5, 6, 7, 8], [9, 10], [11, 12, 13]]
    tgt = [[14, 15, 16], [17], [18, 19, 20, 21, 22]]
    batch = make_batch(src, tgt)
    with torch.no_grad():
        forced = torch.log_softmax(model(batch), dim=-1)  # (B, T, V)
        memory, state = model.encode(batch.src, batch.src_lengths)
        for t in range(batch.tgt_in.size(1)):
            log_probs, state = model.decode_step(batch.tgt_in[:, t], state, memory)
            real = batch.tgt_in[:, t] != PAD
            torch.testing.assert_close(log_probs[real], forced[real, t], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("decoder", ["fused", "input_feed"])
@pytest.mark.parametrize("attention", ATTENTIONS)
def test_beams_sharing_one_memory_row_decode_as_with_a_copy_each(decoder, attention):
    # beam search keeps one memory row per sentence for its k adjacent state rows
    model = build(decoder, attention)
    batch = make_batch([[5, 6, 7, 8], [9, 10], [11, 12, 13]])
    k = 3
    tile = torch.arange(3).repeat_interleave(k)
    tokens = torch.tensor([14, 15, 16, 17, 18, 19, 20, 21, 22])
    with torch.no_grad():
        memory, state = model.encode(batch.src, batch.src_lengths)
        state = model.reorder(state, tile)
        shared = model.decode_step(tokens, state, memory, need_attention=True)
        copied = model.decode_step(tokens, state, model.reorder(memory, tile), need_attention=True)
    torch.testing.assert_close(shared[0], copied[0], atol=1e-5, rtol=1e-4)  # log-probabilities
    torch.testing.assert_close(shared[1].hidden, copied[1].hidden, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(shared[2], copied[2], atol=1e-6, rtol=1e-4)  # each row's attention (9, H, S)


@pytest.mark.parametrize("self_attention", [False, True])
def test_encoder_output_does_not_depend_on_batch_padding(self_attention):
    model = build("fused", "general", encoder_self_attention=self_attention)
    short = [4, 5, 6]
    alone = make_batch([short])
    padded = make_batch([short, list(range(4, 20))])
    with torch.no_grad():
        a, _ = model.encoder(alone.src, alone.src_lengths)
        b, _ = model.encoder(padded.src, padded.src_lengths)
    torch.testing.assert_close(a[0], b[0, : a.size(1)], atol=1e-6, rtol=1e-5)
    assert torch.all(b[0, a.size(1) :] == 0)


def test_annotation_dropout_drops_what_the_decoder_reads_in_training_only():
    plain = build("fused", "general")
    dropped = build("fused", "general", annotation_dropout=0.5)  # same seed: the same weights
    batch = make_batch([[4, 5, 6, 7, 8], [9, 10, 11]])
    with torch.no_grad():
        reference = plain.encoder(batch.src, batch.src_lengths)
        evaluated = dropped.encoder(batch.src, batch.src_lengths)
        for want, got in zip(reference, evaluated):
            torch.testing.assert_close(got, want)  # inference: no dropout, the same encoder
        torch.manual_seed(3)
        annotations, final = dropped.train().encoder(batch.src, batch.src_lengths)
    for want, got in zip(reference, (annotations, final)):
        kept = got != 0
        assert 0 < kept[want != 0].float().mean() < 1  # some, not all, entries dropped
        torch.testing.assert_close(got[kept], 2 * want[kept])  # survivors scaled by 1 / (1 - p)
    with pytest.raises(ConfigError, match="annotation_dropout"):
        ModelConfig(annotation_dropout=1.0)


def test_batch_shifts_the_target_and_counts_real_tokens():
    batch = make_batch([[7, 8]], [[9, 10, 11], [12]])
    assert batch.tgt_in.tolist() == [[BOS, 9, 10, 11], [BOS, 12, PAD, PAD]]
    assert batch.tgt_out.tolist() == [[9, 10, 11, EOS], [12, EOS, PAD, PAD]]
    assert batch.src.tolist() == [[7, 8, EOS]]
    assert batch.ntokens == 6


def test_token_batches_cover_every_example_once_within_budget():
    g = torch.Generator().manual_seed(0)
    src = torch.randint(1, 40, (500,), generator=g).tolist()
    tgt = torch.randint(1, 40, (500,), generator=g).tolist()
    batches = token_batches(src, tgt, batch_tokens=300, generator=torch.Generator().manual_seed(1))
    assert sorted(i for b in batches for i in b) == list(range(500))
    for b in batches:
        assert len(b) * (max(max(src[i], tgt[i]) for i in b) + 1) <= 300 or len(b) == 1
    again = token_batches(src, tgt, batch_tokens=300, generator=torch.Generator().manual_seed(1))
    assert [b.tolist() for b in again] == [b.tolist() for b in batches]  # the same seed gives the same order


def test_label_smoothing_reduces_to_nll_at_zero_and_ignores_padding():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 10)
    target = torch.tensor([[4, 5, PAD], [6, PAD, PAD]])
    loss, nll = label_smoothed_loss(logits, target, 0.0)
    expected = torch.nn.functional.cross_entropy(
        logits.view(-1, 10), target.view(-1), ignore_index=PAD, reduction="sum"
    )
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(nll, expected)
    smoothed, nll2 = label_smoothed_loss(logits, target, 0.1)
    ref = torch.nn.functional.cross_entropy(
        logits.view(-1, 10), target.view(-1), ignore_index=PAD, reduction="sum", label_smoothing=0.1
    )
    torch.testing.assert_close(smoothed, ref)
    torch.testing.assert_close(nll2, expected)


def test_tied_output_shares_the_embedding():
    model = build("fused", "general", tie_output=True, share_embeddings=True)
    assert model.decoder.output.weight is model.decoder.embed.weight
    assert model.encoder.embed is model.decoder.embed
    untied = build("fused", "general", tie_output=False, share_embeddings=False)
    assert untied.decoder.output.weight is not untied.decoder.embed.weight


@pytest.mark.parametrize("epsilon", [0.0, 0.1])
def test_fused_output_loss_matches_the_plain_loss_and_its_gradients(epsilon, monkeypatch):
    import translate.loss

    monkeypatch.setattr(translate.loss, "CHUNK_TOKENS", 4)  # several chunks, one ragged
    torch.manual_seed(0)
    hidden = torch.randn(2, 7, 6, requires_grad=True)
    weight = torch.randn(11, 6, requires_grad=True)
    target = torch.randint(4, 11, (2, 7))
    target[1, 4:] = PAD
    loss, nll = output_layer_loss(hidden, weight, target, epsilon)
    ref_loss, ref_nll = label_smoothed_loss(hidden @ weight.t(), target, epsilon)
    torch.testing.assert_close(loss, ref_loss)
    torch.testing.assert_close(nll, ref_nll)
    grads = torch.autograd.grad(loss * 0.5, (hidden, weight))
    ref_grads = torch.autograd.grad(ref_loss * 0.5, (hidden, weight))
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r)
    assert torch.all(grads[0][1, 4:] == 0)  # padding positions get no gradient


def test_bf16_output_products_give_the_loss_and_gradients_of_autocast(monkeypatch):
    """With bf16 products the fused loss equals the plain loss on bf16-rounded operands, as
    autocast's nn.Linear would compute the logits, and its gradients point the same way."""
    import translate.loss

    monkeypatch.setattr(translate.loss, "CHUNK_TOKENS", 16)
    torch.manual_seed(0)
    hidden = torch.randn(3, 20, 32, requires_grad=True)
    weight = (0.3 * torch.randn(50, 32)).requires_grad_()
    target = torch.randint(4, 50, (3, 20))
    target[2, 12:] = PAD
    loss, nll = output_layer_loss(hidden, weight, target, 0.1, products=torch.bfloat16)
    rounded = hidden.bfloat16().float() @ weight.bfloat16().float().t()
    ref_loss, ref_nll = label_smoothed_loss(rounded.bfloat16().float(), target, 0.1)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(nll, ref_nll, rtol=1e-5, atol=1e-3)
    exact = output_layer_loss(hidden, weight, target, 0.1)[0]
    assert 0 < abs(float((loss - exact).detach())) < 1e-2 * float(exact.detach())  # rounded, and only a little
    grads = torch.autograd.grad(loss, (hidden, weight))
    exact_grads = torch.autograd.grad(exact, (hidden, weight))
    for g, r in zip(grads, exact_grads):
        assert g.dtype == torch.float32
        assert F.cosine_similarity(g.flatten(), r.flatten(), dim=0) > 0.999
    assert torch.all(grads[0][2, 12:] == 0)


def test_cosine_attention_reads_directions_not_lengths():
    torch.manual_seed(2)
    attn = make_attention("cosine", query_dim=16, key_dim=16, attn_dim=16)
    keys, query = torch.randn(2, 5, 16), torch.randn(2, 3, 16)
    mask = torch.ones(2, 5, dtype=torch.bool)
    _, weights = attn(query, attn.precompute(keys, mask))
    longer = keys * (torch.rand(2, 5, 1) * 10 + 0.1)  # each annotation stretched by its own factor
    _, stretched = attn(query * 7, attn.precompute(longer, mask))
    torch.testing.assert_close(stretched, weights)
    scores = attn.scores(query, attn.keys(keys))
    assert scores.abs().max() <= 16**0.5 + 1e-4  # |cos| <= 1, times g sqrt(d) with g = 1 at the start
    general = make_attention("general", query_dim=16, key_dim=16, attn_dim=16)
    _, a = general(query, general.precompute(keys, mask))
    _, b = general(query * 7, general.precompute(longer, mask))
    assert not torch.allclose(a, b, atol=1e-3)  # the control: a dot-product score does read lengths


@pytest.mark.parametrize("backward", [False, True])
@pytest.mark.parametrize("decoder", ["fused", "input_feed"])
def test_the_warm_up_runs_the_kernels_and_leaves_model_gradients_and_random_state_alone(decoder, backward, monkeypatch):
    model = Seq2Seq(ModelConfig(emb_dim=16, enc_hidden=16, dec_hidden=16, attn_dim=16, decoder=decoder), 12).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    calls: list[int] = []
    forward = torch.nn.GRU.forward
    monkeypatch.setattr(torch.nn.GRU, "forward", lambda self, *a, **k: calls.append(1) or forward(self, *a, **k))
    trained: list[int] = []
    layer = translate.gru._GRULayer.apply
    monkeypatch.setattr(translate.gru._GRULayer, "apply", lambda *a: trained.append(1) or layer(*a))
    model.warm_up(backward=backward)
    assert len(calls) >= 2  # inference's recurrences ran: the encoder's and the decoder's
    assert len(trained) == (0 if not backward else 3 if decoder == "fused" else 2)  # and training's, on a copy
    ran = len(calls)
    model.warm_up(backward=backward)
    model.warm_up()  # a forward warm-up after either is nothing new either
    assert len(calls) == ran and len(trained) == (3 if decoder == "fused" else 2) * backward  # once per model
    assert torch.equal(torch.get_rng_state(), rng)  # dropout drew from a forked generator
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters()) and not model.training
