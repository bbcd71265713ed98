"""Hugging Face causal LMs built from a config (nothing downloaded) under ``flipes.flipout``: every
parameter evolved, each member exact against the plain model with its explicit parameters (attention
masks included), the ES gradient along the backprop gradient, and bf16 models."""

from __future__ import annotations

import copy
import fnmatch
import inspect
import io
import re
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from reference import member_parameters, member_perturbations
from test_readme import readme_blocks
from torch import Tensor, nn
from torch.func import functional_call

import flipes
from flipes.es.shaping import raw
from flipes.nn.embedding import one_row_fix

transformers = pytest.importorskip("transformers")

VOCAB, T = 48, 7


def llama(dtype: torch.dtype = torch.float64, attn: str = "eager", seed: int = 0) -> nn.Module:
    """A 2-layer Llama: grouped-query attention, RMSNorm, SwiGLU; untied head."""
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=32, attn_implementation=attn,
    )  # fmt: skip
    return transformers.LlamaForCausalLM(cfg).to(dtype).eval()


def qwen2(dtype: torch.dtype = torch.float64, seed: int = 0) -> nn.Module:
    """A 2-layer Qwen2: q/k/v biases, and the head tied to the token embedding (with a padding row)."""
    torch.manual_seed(seed)
    cfg = transformers.Qwen2Config(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=32, tie_word_embeddings=True, pad_token_id=0,
        attn_implementation="sdpa",
    )  # fmt: skip
    return transformers.Qwen2ForCausalLM(cfg).to(dtype).eval()


def gpt2(dtype: torch.dtype = torch.float64, seed: int = 0) -> nn.Module:
    """A 2-layer GPT-2: transformers' Conv1D projections (weights stored (in, out)), LayerNorms,
    learned positions, the head tied to the token embedding."""
    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=32, attn_implementation="eager")
    return transformers.GPT2LMHeadModel(cfg).to(dtype).eval()


def bert(dtype: torch.dtype = torch.float64, seed: int = 0) -> nn.Module:
    """A 2-layer BERT masked LM: bidirectional, its decoder tied to the token embedding with a bias of its own."""
    torch.manual_seed(seed)
    cfg = transformers.BertConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=32, attn_implementation="eager",
    )  # fmt: skip
    return transformers.BertForMaskedLM(cfg).to(dtype).eval()


def gemma(dtype: torch.dtype = torch.float64, seed: int = 0) -> nn.Module:
    """A 2-layer Gemma: its scaled word embedding (an nn.Embedding subclass with a forward of its own, evolved
    densely) tied to the head (a Flipout layer), with a padding row."""
    torch.manual_seed(seed)
    cfg = transformers.GemmaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=8, max_position_embeddings=32, tie_word_embeddings=True, pad_token_id=0,
        attn_implementation="eager",
    )  # fmt: skip
    return transformers.GemmaForCausalLM(cfg).to(dtype).eval()


def batch(n: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Token ids ``(n, T)`` and an attention mask with right padding of 0-3 tokens per row (left padding
    makes rows that attend to nothing, which HF turns into NaN in float64, also without flipes)."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (n, T), generator=gen)
    pad = torch.randint(0, 4, (n,), generator=gen)
    mask = (torch.arange(T) < T - pad[:, None]).long()
    return ids.masked_fill(mask == 0, 0), mask


def plain_outputs(original: nn.Module, params: list[dict[str, Tensor]], inputs: dict[str, Tensor], field: str) -> Tensor:
    """The plain model's output ``field`` of each member's rows of ``inputs`` (member-major, k = rows / members) with
    that member's explicit ``params``, stacked as the population's output is."""
    k = len(next(iter(inputs.values()))) // len(params)
    with torch.no_grad():
        return torch.cat(
            [
                getattr(functional_call(original, p, (), {key: v[m * k : (m + 1) * k] for key, v in inputs.items()}), field)
                for m, p in enumerate(params)
            ]
        )


@pytest.mark.parametrize(
    "make",
    [lambda: llama(attn="eager"), lambda: llama(attn="sdpa"), qwen2, gpt2, bert, gemma],
    ids=["llama-eager", "llama-sdpa", "qwen2-tied", "gpt2-conv1d", "bert-tied-with-bias", "gemma-tied-scaled-embedding"],
)
@pytest.mark.parametrize("rank", [None, 2])
def test_every_member_of_a_language_model_is_the_plain_model_with_its_parameters(make: object, rank: int | None) -> None:
    """Llama (eager and SDPA attention), Qwen2 with a tied head, GPT-2's Conv1D, BERT with a tied decoder and Gemma
    with its scaled embedding (dense) tied to the head (Flipout), full or rank-2 noise: every parameter is evolved, a
    tied head is the embedding's tensor and one slot, and each member's logits at unpadded positions equal the
    original model under ``functional_call`` with that member's parameters and the attention mask, to 1e-10
    absolute (float64)."""
    original = make()
    model = flipes.flipout(copy.deepcopy(original))
    n = 8
    es = flipes.FlipES(model, popsize=n, sigma=0.05, groups=2, noise_rank=rank)
    report = es.report()
    assert report.evolved == sum(p.numel() for p in model.parameters()) > 0  # nothing frozen, nothing left out
    ids, mask = batch(n)
    with es.population():
        logits = model(input_ids=ids, attention_mask=mask).logits
        params = member_parameters(es, model)
    if getattr(original.config, "tie_word_embeddings", False):
        assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
        assert len(es.slots) == len({id(pw.weight) for pw in es.slots})  # the tied table is ONE perturbation
    for m in range(n):
        with torch.no_grad():
            expect = functional_call(
                original, params[m], (), {"input_ids": ids[m : m + 1], "attention_mask": mask[m : m + 1]}
            ).logits
        seen = mask[m].bool()  # padded positions attend to nothing: their logits are not compared
        torch.testing.assert_close(logits[m, seen], expect[0, seen], atol=1e-10, rtol=0)


@pytest.mark.parametrize("make", [llama, qwen2, gemma], ids=["llama", "qwen2", "gemma-one-plus-weight"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rmsnorms_run_as_one_forward_times_each_members_weight_bit_for_bit_as_per_member(make: object, dtype: object) -> None:
    """After their first call, Llama's and Qwen2's RMSNorms (``weight * normalized x``) run all members as one forward
    with a unit weight, times each member's weight; Gemma's (``normalized x * (1 + weight)``) stays per member (vmap).
    Either way the members' logits of a second call equal those with every norm run per member, bit for bit
    (float32 and bfloat16, 2 rows per member)."""
    model = flipes.flipout(make(dtype))
    es = flipes.FlipES(model, popsize=4, sigma=0.05, groups=2, seed=0)
    norms = [m for m in model.modules() if type(m).__name__.endswith("RMSNorm")]
    ids, mask = batch(8)
    with es.population():
        first = model(input_ids=ids, attention_mask=mask).logits
        again = model(input_ids=ids, attention_mask=mask).logits
        assert len(norms) == 5 and all(m._flipes_scaled is (make is not gemma) for m in norms)
        for m in norms:
            m._flipes_scaled = False  # per member, under vmap
        per_member = model(input_ids=ids, attention_mask=mask).logits
    assert torch.equal(first, per_member) and torch.equal(again, per_member)


@pytest.mark.parametrize("make", [gpt2, bert])
def test_several_sequences_per_member_need_position_ids_for_every_row_and_the_error_names_them(make: object) -> None:
    """GPT-2 and BERT make their own position ids ``(1, T)``, which a population looks up once per member: with
    k = 3 sequences per member the model fails on the shapes, and the error names the ids to pass; with them
    every member's 3 rows equal the plain model with its explicit parameters (1e-10, float64)."""
    original = make()
    model = flipes.flipout(copy.deepcopy(original))
    n, k = 8, 3
    es = flipes.FlipES(model, popsize=n, sigma=0.05, groups=2)
    ids, mask = batch(n * k)
    with pytest.raises(RuntimeError, match=re.escape(f"position_ids=torch.arange({T}).expand({n * k}, {T})")):
        with es.population():
            model(input_ids=ids, attention_mask=mask)
    positions = torch.arange(T).expand(n * k, T)
    with es.population():
        logits = model(input_ids=ids, attention_mask=mask, position_ids=positions).logits
        params = member_parameters(es, model)
    expect = plain_outputs(original, params, {"input_ids": ids, "attention_mask": mask}, "logits")
    torch.testing.assert_close(logits[mask.bool()], expect[mask.bool()], atol=1e-10, rtol=0)


def test_a_t5_relative_position_table_is_refused_naming_the_freeze_and_frozen_the_members_are_exact() -> None:
    """T5 looks up its relative-position bias with (T, T) buckets every member shares, which a population would read as
    members (silently where T is a multiple of N): flipout refuses it naming the frozen=[...] list that fixes it;
    with it, at T = 8 and N = 8, each member of the encoder equals the plain model with its explicit parameters."""
    torch.manual_seed(0)
    cfg = transformers.T5Config(vocab_size=VOCAB, d_model=16, d_kv=4, d_ff=32, num_layers=2, num_heads=4)
    original = transformers.T5EncoderModel(cfg).to(torch.float64).eval()
    name = "encoder.block.0.layer.0.SelfAttention.relative_attention_bias"
    with pytest.raises(ValueError, match=re.escape(f"freeze them: flipes.flipout(model, frozen=[{name!r}])")):
        flipes.flipout(copy.deepcopy(original))
    model = flipes.flipout(copy.deepcopy(original), frozen=[name])
    n = 8
    es = flipes.FlipES(model, popsize=n, sigma=0.05, groups=2)
    ids = torch.randint(VOCAB, (n, 8))
    with es.population():
        out = model(input_ids=ids).last_hidden_state
        params = member_parameters(es, model)
    torch.testing.assert_close(out, plain_outputs(original, params, {"input_ids": ids}, "last_hidden_state"), atol=1e-10, rtol=0)


def bart(seed: int = 0) -> nn.Module:
    """A 1+1-layer BART: learned positions, an nn.Embedding subclass with a forward of its own (evolved densely),
    which the decoder calls with 1-D positions ``(T,)`` every row shares."""
    torch.manual_seed(seed)
    cfg = transformers.BartConfig(
        vocab_size=VOCAB, d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, max_position_embeddings=32,
    )  # fmt: skip
    return transformers.BartForConditionalGeneration(cfg).to(torch.float64).eval()


def seq2seq_members(original: nn.Module, model: nn.Module, es: flipes.FlipES, n: int, k: int, decoder_len: int) -> None:
    """Each member's k rows of decoder logits equal the plain model with its explicit parameters (1e-10, float64)."""
    ids, mask = batch(n * k)
    dec = torch.randint(1, VOCAB, (n * k, decoder_len), generator=torch.Generator().manual_seed(1))
    dec_mask = torch.ones_like(dec)
    dec_mask[::3, -1] = 0  # every third row one token shorter (right padding)
    kwargs = {"input_ids": ids, "attention_mask": mask, "decoder_input_ids": dec, "decoder_attention_mask": dec_mask}
    with es.population():
        logits = model(**kwargs).logits
        params = member_parameters(es, model)
    expect, seen = plain_outputs(original, params, kwargs, "logits"), dec_mask.bool()
    torch.testing.assert_close(logits[seen], expect[seen], atol=1e-10, rtol=0)


@pytest.mark.parametrize("k", [1, 2])
def test_a_dense_position_embedding_given_positions_every_row_shares_gives_each_member_its_own(k: int) -> None:
    """BART's decoder looks up its learned positions (a dense module) with 1-D positions (T,) and adds the (1, T, E)
    result to its (B, T, E) rows: each member's positions come from its own table, a batch of one broadcast over its
    k rows, and every member's logits equal the plain model with its explicit parameters (T = 6 with N = 8)."""
    original = bart()
    model = flipes.flipout(copy.deepcopy(original))
    n = 8
    es = flipes.FlipES(model, popsize=n, sigma=0.2, groups=2, mirrored=True)
    assert es.report().evolved == sum(p.numel() for p in model.parameters())
    seq2seq_members(original, model, es, n, k, decoder_len=6)


def test_1d_positions_as_long_as_the_rows_are_refused_naming_the_freeze_and_frozen_the_members_are_exact() -> None:
    """Where the decoder's 1-D positions (T,) are as many as its rows (T = N = 8) they read as positions every member
    shares or as one id per row (each member's position n: silently wrong); the population refuses them naming the
    frozen=[...] that fixes it, and with the positions frozen every member equals the plain model with its parameters."""
    original = bart()
    n = 8
    model = flipes.flipout(copy.deepcopy(original))
    fix = re.escape("flipes.flipout(model, frozen=['model.decoder.embed_positions'])")
    with pytest.raises(ValueError, match=rf"1-D tensor of length 8 beside rows of shapes \(8, 8\).*{fix}"):
        seq2seq_members(original, model, flipes.FlipES(model, popsize=n, sigma=0.2), n, 1, decoder_len=8)
    model = flipes.flipout(copy.deepcopy(original), frozen=["model.decoder.embed_positions"])
    seq2seq_members(original, model, flipes.FlipES(model, popsize=n, sigma=0.2), n, 1, decoder_len=8)


def test_mamba_reading_its_conv_and_time_step_weights_directly_is_refused_and_exact_with_them_frozen() -> None:
    """Mamba's mixer reads its conv1d and dt_proj weights as plain tensors and never calls those layers, so every member
    would run their mean weights (silently wrong logits): with its A_log and D frozen (which flipout asks for) the
    population refuses naming the layers to freeze; with them frozen too each member equals the plain model with its
    explicit parameters (1e-10, float64)."""
    torch.manual_seed(0)
    cfg = transformers.MambaConfig(vocab_size=VOCAB, hidden_size=16, num_hidden_layers=1, state_size=4, expand=2, conv_kernel=4)
    original = transformers.MambaForCausalLM(cfg).to(torch.float64).eval()
    mixer = "backbone.layers.0.mixer"
    n = 8
    ids, _ = batch(n)
    model = flipes.flipout(copy.deepcopy(original), frozen=[f"{mixer}.A_log", f"{mixer}.D"])
    es = flipes.FlipES(model, popsize=n, sigma=0.2, groups=2, mirrored=True)
    with pytest.raises(ValueError, match=re.escape(f"frozen={[f'{mixer}.conv1d', f'{mixer}.dt_proj']!r}")):
        with es.population():
            model(input_ids=ids)
    frozen = [f"{mixer}.{name}" for name in ("A_log", "D", "conv1d", "dt_proj")]
    model = flipes.flipout(copy.deepcopy(original), frozen=frozen)
    es = flipes.FlipES(model, popsize=n, sigma=0.2, groups=2, mirrored=True)
    with es.population():
        logits = model(input_ids=ids).logits
        params = member_parameters(es, model)
    torch.testing.assert_close(logits, plain_outputs(original, params, {"input_ids": ids}, "logits"), atol=1e-10, rtol=0)


def test_mixture_of_experts_refuses_eager_experts_naming_batched_mm_and_is_exact_with_it() -> None:
    """Mixtral's experts (3-D expert tensors, evolved densely) with the eager implementation loop over the experts their
    tokens hit, which cannot run per member: the error names set_experts_implementation("batched_mm"); with it each
    member's routing and experts are its own and its logits equal the plain model with its explicit parameters."""
    torch.manual_seed(0)
    cfg = transformers.MixtralConfig(
        vocab_size=VOCAB, hidden_size=16, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, num_local_experts=4, num_experts_per_tok=2, attn_implementation="eager",
    )  # fmt: skip
    original = transformers.MixtralForCausalLM(cfg).to(torch.float64).eval()
    original.set_experts_implementation("eager")
    n = 8
    ids, mask = batch(n)
    model = flipes.flipout(copy.deepcopy(original))
    es = flipes.FlipES(model, popsize=n, sigma=0.2, groups=2, mirrored=True)
    with pytest.raises(RuntimeError, match=re.escape('model.set_experts_implementation("batched_mm")')):
        with es.population():
            model(input_ids=ids, attention_mask=mask)
    model.set_experts_implementation("batched_mm")
    with es.population():
        logits = model(input_ids=ids, attention_mask=mask).logits
        params = member_parameters(es, model)
    expect = plain_outputs(original, params, {"input_ids": ids, "attention_mask": mask}, "logits")
    torch.testing.assert_close(logits[mask.bool()], expect[mask.bool()], atol=1e-10, rtol=0)


def test_a_vision_model_with_several_images_per_member_names_the_position_embedding_to_freeze() -> None:
    """CLIP's vision tower looks its patch positions up with a (1, P) buffer, one lookup per member, and takes no
    position ids: with k = 2 images per member the error names that embedding to freeze (beside its class embedding,
    which flipout asks for), and frozen each member's 2 images equal the plain model with its parameters (1e-10)."""
    torch.manual_seed(0)
    cfg = transformers.CLIPVisionConfig(
        hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=8, patch_size=4
    )
    original = transformers.CLIPVisionModel(cfg).to(torch.float64).eval()
    n, k = 8, 2
    pixels = torch.randn(n * k, 3, 8, 8, dtype=torch.float64)
    model = flipes.flipout(copy.deepcopy(original), frozen=["embeddings.class_embedding"])
    es = flipes.FlipES(model, popsize=n, sigma=0.2)
    fix = re.escape("freeze the embedding: flipes.flipout(model, frozen=['embeddings.position_embedding'])")
    with pytest.raises(RuntimeError, match=fix):
        with es.population():
            model(pixel_values=pixels)
    frozen = ["embeddings.class_embedding", "embeddings.position_embedding"]
    model = flipes.flipout(copy.deepcopy(original), frozen=frozen)
    es = flipes.FlipES(model, popsize=n, sigma=0.2)
    with es.population():
        out = model(pixel_values=pixels).last_hidden_state
        params = member_parameters(es, model)
    expect = plain_outputs(original, params, {"pixel_values": pixels}, "last_hidden_state")
    torch.testing.assert_close(out, expect, atol=1e-10, rtol=0)


def lm_fitness(model: nn.Module, ids: Tensor, members: int) -> Tensor:
    """Minus each member's next-token cross-entropy on the same batch ``ids`` (B, T)."""
    b = ids.shape[0]
    logits = model(input_ids=ids.repeat(members, 1)).logits[:, :-1]  # (members·B, T-1, V), member-major
    loss = F.cross_entropy(logits.flatten(0, 1), ids[:, 1:].repeat(members, 1).flatten(), reduction="none")
    return -loss.view(members, b * (T - 1)).mean(1)


@pytest.mark.parametrize("only", [None, "embed_tokens", "norm", "self_attn", "mlp", "lm_head"])
def test_the_es_gradient_points_along_the_backprop_gradient(only: str | None) -> None:
    """ES with antithetic pairs and raw fitness estimates the gradient of the smoothed fitness, which for
    small σ is the backprop gradient. For P evolved parameters and N/2 pairs the cosine between the two
    is about sqrt(N/2 / (N/2 + P)) (0.21 for all 21.7 k parameters at N = 2,048; 0.28 to 0.93 for each kind
    alone); a sign or layout mistake in any kind would make it ~0 (sd 1/sqrt(P)): the bound, half the
    expected cosine, is at least 5.9 such sd (norm, P = 160; 12 to 16 for the others). Each kind is also
    checked alone, the rest frozen, so a broken kind cannot hide behind the others."""
    model = llama(torch.float64)
    if only is not None:
        for name, p in model.named_parameters():
            p.requires_grad_(only in name)
    ids, _ = batch(4, seed=1)
    ids = ids.clamp(min=1)
    loss = -lm_fitness(model, ids, 1)[0]
    model.zero_grad()
    loss.backward()
    evolved = [p for p in model.parameters() if p.requires_grad]
    backprop = torch.cat([-p.grad.flatten() for p in evolved])  # gradient of the fitness
    flipes.flipout(model)
    n = 2048
    es = flipes.FlipES(model, popsize=n, sigma=1e-4, groups=8, shaping=raw, optimizer=lambda p: torch.optim.SGD(p, lr=0.0))
    assert es.report().evolved == sum(p.numel() for p in evolved)
    with es.population() as pop:
        fitness = lm_fitness(model, ids, pop.size)
    es.tell(fitness)
    es_grad = torch.cat([-p.grad.flatten() for p in evolved])  # ĝ (tell writes -ĝ)
    cos = F.cosine_similarity(es_grad, backprop, dim=0).item()
    expected = (n / 2 / (n / 2 + len(backprop))) ** 0.5
    assert cos > 0.5 * expected, (only, cos, expected)


def test_a_bf16_model_runs_a_population_and_its_gradient_is_the_estimator_to_bf16_rounding() -> None:
    """A bfloat16 Llama population gives finite bfloat16 logits; every parameter's ``.grad`` is bfloat16 and within
    1e-2 relative (in norm) of -Σ F̂_n δ_n / (Nσ²) computed in float64 from the sampled perturbations: the final
    rounding to bfloat16 is 2^-8 relative."""
    model = flipes.flipout(llama(torch.bfloat16))
    n, sigma = 64, 0.02
    es = flipes.FlipES(model, popsize=n, sigma=sigma, groups=2, optimizer=lambda p: torch.optim.SGD(p, lr=0.0))
    ids, mask = batch(n)
    with es.population():
        logits = model(input_ids=ids, attention_mask=mask).logits
        deltas = member_perturbations(es, model)
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits).all()
    fitness = torch.randn(n)
    es.tell(fitness)
    f_hat = flipes.shaping.centered_ranks(fitness.double())
    for name, p in model.named_parameters():
        delta = deltas[name].double()  # σu_n as sampled (θ + σu_n itself is rounded to bf16 in the forward)
        expect = -(f_hat.view(-1, *(1,) * p.dim()) * delta).sum(0) / (n * sigma**2)
        assert p.grad.dtype == torch.bfloat16
        err = (p.grad.double() - expect).norm() / expect.norm()
        assert err < 1e-2, (name, err.item())  # bf16 rounding of the result only (2^-8 relative)


def paper_step(dtype: torch.dtype, autocast: bool, optimizer: object = None) -> tuple[float, list[str]]:
    """One generation of Qiu et al.'s settings (σ = 1e-3, z-scores, SGD at lr = α·σ = 5e-7 unless ``optimizer``) on a
    Qwen2 of ``dtype``, its population under bfloat16 autocast if ``autocast``: the share of entries with a non-zero
    gradient that the step left unchanged, and the messages of the RoundedStepWarnings."""
    model = flipes.flipout(qwen2(dtype))
    n, sigma = 16, 1e-3
    optimizer = optimizer or (lambda params: torch.optim.SGD(params, lr=5e-4 * sigma))
    z_score = flipes.shaping.z_score
    es = flipes.FlipES(model, popsize=n, sigma=sigma, groups=4, mirrored=False, shaping=z_score, optimizer=optimizer)
    before = [p.detach().clone() for p in model.parameters()]
    ids, mask = batch(n)
    with es.population(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        fitness = model(input_ids=ids, attention_mask=mask).logits[:, -1, 5].float()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        es.tell(fitness)
    moved = [(p.grad != 0) for p in model.parameters()]
    kept = sum(((p == b) & m).sum().item() for p, b, m in zip(model.parameters(), before, moved, strict=True))
    share = kept / sum(m.sum().item() for m in moved)
    return share, [str(w.message) for w in caught if issubclass(w.category, flipes.RoundedStepWarning)]


def test_a_step_that_bfloat16_rounds_away_warns_and_float32_under_autocast_moves_every_entry() -> None:
    """Qiu et al.'s step on a bfloat16 Qwen2 leaves more than 5% of the entries it moves unchanged (their change is
    below half a bfloat16 spacing): ``tell`` warns ``RoundedStepWarning`` with that share and the autocast fix. The same
    step on float32 parameters with the population under bfloat16 autocast moves every such entry, and Adam at lr=0.03
    in bfloat16 leaves under 5% unchanged: neither warns."""
    share, messages = paper_step(torch.bfloat16, autocast=False)
    assert share > 0.05 and len(messages) == 1, (share, messages)
    assert f"{share:.0%} of the bfloat16 parameters' entries" in messages[0]
    assert "torch.autocast('cpu', dtype=torch.bfloat16)" in messages[0]
    share, messages = paper_step(torch.float32, autocast=True)
    assert share == 0 and not messages, (share, messages)
    share, messages = paper_step(torch.bfloat16, autocast=False, optimizer=lambda params: torch.optim.Adam(params, lr=0.03))
    assert share <= 0.05 and not messages, (share, messages)


@pytest.mark.parametrize("make", [llama, qwen2, gpt2], ids=["llama", "qwen2-tied", "gpt2"])
@pytest.mark.parametrize("cache", ["dynamic", "static"])
def test_generate_with_kv_cache_decodes_each_members_rows_as_the_plain_model_with_its_weights(make: object, cache: str) -> None:
    """``model.generate`` inside a population (greedy, the KV cache on, dynamic or static) with k = 2 left-padded
    prompts per member, member-major: each member's generated tokens equal the plain model's ``generate`` of its own
    2 rows after loading ``es.member_state_dict(i)`` (float64; σ large enough that the members decode differently)."""
    original = make()
    model = flipes.flipout(copy.deepcopy(original))
    n, k = 4, 2
    es = flipes.FlipES(model, popsize=n, sigma=0.5, groups=2, seed=1)
    gen = torch.Generator().manual_seed(2)
    ids = torch.randint(1, VOCAB, (n * k, 5), generator=gen)
    mask = (torch.arange(5) >= torch.tensor([0, 2, 1, 0, 0, 0, 3, 0])[:, None]).long()  # left padding, as generate wants
    ids = ids.masked_fill(mask == 0, 0)
    # eos_token_id=None: a plain model given one member's rows stops when they end, where the population goes on
    settings = {"max_new_tokens": 4, "do_sample": False, "pad_token_id": 0, "eos_token_id": None}
    if cache == "static":
        settings["cache_implementation"] = "static"
    with es.population():
        tokens = model.generate(ids, attention_mask=mask, **settings)
        states = [es.member_state_dict(m) for m in range(n)]
    assert len({tuple(tokens[m * k : (m + 1) * k, 5:].flatten().tolist()) for m in range(n)}) == n  # members differ
    for m, state in enumerate(states):
        plain = copy.deepcopy(original)
        plain.load_state_dict(state)
        rows = slice(m * k, (m + 1) * k)
        assert torch.equal(tokens[rows], plain.generate(ids[rows], attention_mask=mask[rows], **settings)), m


@pytest.mark.parametrize("make", [llama, gpt2], ids=["llama", "gpt2"])
def test_generate_given_one_prompt_row_for_the_whole_population_names_the_repeat_that_fixes_it(make: object) -> None:
    """``generate`` given one prompt row ``(1, T)`` inside a population of 4 (the embedding reads it as ids every
    member shares, one row each, which ``generate`` cannot append to the one-row prompt) raises torch's size error
    with a line naming ``input_ids.repeat(pop.size, 1)``; with that repeat it decodes 4 rows. ``one_row_fix`` gives no
    such line for other sizes, ids of 2 rows or a population of 1."""
    model = flipes.flipout(make())
    es = flipes.FlipES(model, popsize=4, sigma=0.05, seed=0)
    prompt = torch.randint(1, VOCAB, (1, 5), generator=torch.Generator().manual_seed(0))
    settings = {"max_new_tokens": 2, "do_sample": False, "pad_token_id": 0}
    with pytest.raises(RuntimeError, match=r"(?s)Expected size.*\nflipes: ids of one row, shape \(1, 5\).*"
                       r"input_ids\.repeat\(pop\.size, 1\) \(4 here\)"):  # fmt: skip
        with es.population():
            model.generate(prompt, attention_mask=torch.ones_like(prompt), **settings)
    with es.population() as pop:
        ids = prompt.repeat(pop.size, 1)
        assert model.generate(ids, attention_mask=torch.ones_like(ids), **settings).shape == (4, 7)
    # the line is for that clash alone: another pair of sizes, ids of 2 rows or a population of 1 get none
    clash = "Sizes of tensors must match except in dimension 1. Expected size 4 but got size 1 for tensor number 1 in the list."
    assert one_row_fix((1, 5), 4, clash) is not None
    for shape, members, error in [
        ((1, 5), 4, clash.replace("size 4", "size 3")),
        ((2, 5), 4, clash),
        ((1, 5), 1, clash.replace("size 4", "size 1")),
    ]:
        assert one_row_fix(shape, members, error) is None, (shape, members, error)


def test_a_frozen_pattern_is_refused_naming_the_list_of_its_matches_which_freezes_exactly_them() -> None:
    """``frozen=["model.layers.*.mlp"]`` (a pattern; names are exact) is a ValueError naming the 2 modules it matches
    and the ``fnmatch`` list that freezes them. That list freezes exactly the MLPs' 6 weights: a step leaves them bit for
    bit and moves every other parameter, attention included."""
    pattern = "model.layers.*.mlp"
    with pytest.raises(ValueError, match=r"names are exact, not patterns: list the 2 modules it matches, frozen=\[n for"):
        flipes.flipout(llama(), frozen=[pattern])
    plain = llama()
    frozen = [n for n, _ in plain.named_modules() if fnmatch.fnmatch(n, pattern)]
    model = flipes.flipout(plain, frozen=frozen)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    es = flipes.FlipES(model, popsize=4, sigma=0.05, seed=0)
    ids, mask = batch(4)
    with es.population():
        fitness = model(input_ids=ids, attention_mask=mask).logits[:, -1, 3]
    es.tell(fitness)
    kept = {n for n, p in model.named_parameters() if torch.equal(p, before[n])}
    assert kept == {n for n in before if ".mlp." in n} and len(kept) == 6


def test_save_pretrained_of_the_converted_model_writes_the_mean_network_for_the_plain_model(tmp_path: Path) -> None:
    """After a step, ``save_pretrained`` of the converted (tied-head) Qwen2 writes a checkpoint that ``from_pretrained``
    loads into plain torch layers, the head tied to the embedding again, whose parameters and logits equal the mean
    network's bit for bit; a member's state dict saved through the plain model loads as that member."""
    original = qwen2()
    model = flipes.flipout(copy.deepcopy(original))
    es = flipes.FlipES(model, popsize=4, sigma=0.05, groups=2, seed=0)
    ids, mask = batch(4)
    with es.population():
        fitness = model(input_ids=ids, attention_mask=mask).logits[:, -1, 3]
        member = es.member_state_dict(1)
    es.tell(fitness)
    model.save_pretrained(tmp_path / "mean")
    loaded = type(original).from_pretrained(tmp_path / "mean", dtype=torch.float64).eval()
    assert all(type(m).__module__.startswith(("torch.", "transformers.")) for m in loaded.modules())
    assert loaded.lm_head.weight is loaded.model.embed_tokens.weight
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in model.state_dict().items())
    assert torch.equal(loaded(input_ids=ids, attention_mask=mask).logits, model(input_ids=ids, attention_mask=mask).logits)
    plain = copy.deepcopy(original)
    plain.load_state_dict(member)
    plain.save_pretrained(tmp_path / "member")
    loaded = type(original).from_pretrained(tmp_path / "member", dtype=torch.float64)
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in member.items())


def readme_member_sampling() -> type:
    """README's ``MemberSampling`` (Fine-tuning a Hugging Face language model), run as written."""
    (source,) = [block for _, block in readme_blocks() if block.startswith("class MemberSampling(")]
    names = {"transformers": transformers, "torch": torch}
    exec(compile(source, "README.md:MemberSampling", "exec"), names)
    return names["MemberSampling"]


def test_readmes_member_sampling_draws_each_members_tokens_alike_in_parts_and_in_its_plain_copy() -> None:
    """``generate`` with README's ``MemberSampling`` (Gumbel noise from each member's stream of ``pop.generator()``,
    greedy decoding) gives every member the same sampled tokens in one pass and in parts of 2 members (as another
    process count would split them), and each member's plain copy (``es.member_state_dict(i)``) given
    ``members=[i]`` decodes its 2 rows to exactly those tokens; the members' tokens differ."""
    sampling = readme_member_sampling()
    original = llama()
    model = flipes.flipout(copy.deepcopy(original))
    n, k, prompt = 8, 2, 5
    es = flipes.FlipES(model, popsize=n, sigma=0.05, groups=4, seed=1)
    prompts = torch.randint(1, VOCAB, (k, prompt), generator=torch.Generator().manual_seed(2))
    settings = {"max_new_tokens": 5, "do_sample": False, "pad_token_id": 0, "eos_token_id": None}

    def sample(m: nn.Module, pop: flipes.Population, members: list[int] | None = None) -> Tensor:
        ids = prompts.repeat(pop.size if members is None else 1, 1)
        processor = sampling(pop, k, prompt, members=members)
        return m.generate(ids, attention_mask=torch.ones_like(ids), logits_processor=[processor], **settings)

    with es.population() as pop:
        whole = sample(model, pop)
        parts = torch.cat([sample(model, part) for part in pop.split(2)])
        states = [es.member_state_dict(m) for m in range(n)]
        assert torch.equal(whole, parts)
        assert len({tuple(whole[m * k : (m + 1) * k, prompt:].flatten().tolist()) for m in range(n)}) == n
        for m, state in enumerate(states):
            plain = copy.deepcopy(original)
            plain.load_state_dict(state)
            assert torch.equal(sample(plain, pop, members=[m]), whole[m * k : (m + 1) * k]), m


def roberta(seed: int = 0) -> nn.Module:
    """A 1-layer RoBERTa masked LM: its head holds its decoder's bias (a watched parameter it never reads)."""
    torch.manual_seed(seed)
    cfg = transformers.RobertaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
        max_position_embeddings=32, pad_token_id=1, attn_implementation="eager",
    )  # fmt: skip
    return transformers.RobertaForMaskedLM(cfg).double().eval()


@pytest.mark.parametrize("make", [roberta, gpt2], ids=["roberta-held-bias", "gpt2-tied"])
@pytest.mark.parametrize("how", ["deepcopy", "torch.save"])
def test_a_converted_model_copied_or_saved_whole_trains_as_the_original(make: object, how: str) -> None:
    """A converted model copied whole (``copy.deepcopy``, or ``torch.save`` + ``torch.load(weights_only=False)``) after a
    generation, its head holding a watched bias or tied to the embedding: a new FlipES on the copy runs two
    generations with no refusal, and its first generation's logits equal those of the original's next generation
    (same seed, same state), exactly."""
    model = flipes.flipout(make())
    es = flipes.FlipES(model, popsize=4, sigma=0.05, seed=3)
    ids, mask = batch(4)
    with es.population():
        es.tell(model(input_ids=ids, attention_mask=mask).logits.mean((1, 2)))
    if how == "deepcopy":
        copied = copy.deepcopy(model)
    else:
        buffer = io.BytesIO()
        torch.save(model, buffer)
        buffer.seek(0)
        copied = torch.load(buffer, weights_only=False)
    outs = []
    for m in (model, copied):
        es = flipes.FlipES(m, popsize=4, sigma=0.05, seed=5)
        for _ in range(2):
            with es.population():
                logits = m(input_ids=ids, attention_mask=mask).logits
            es.tell(logits.mean((1, 2)))
            outs.append(logits)
    assert torch.equal(outs[0], outs[2]) and torch.equal(outs[1], outs[3])


def test_the_parameter_report_names_a_tied_head_beside_the_embedding_it_shares() -> None:
    """Qwen2 with ``tie_word_embeddings``: ``named_parameters()`` lists the tied table once, so the report had no word of
    ``lm_head.weight``; its row now carries the other name (``tied``, and "(also lm_head.weight)" in the table), the
    totals count the table once, and an untied Llama's rows name nothing."""
    report = flipes.nn.parameter_report(flipes.flipout(qwen2()))
    rows = {row.name: row for row in report.rows}
    assert rows["model.embed_tokens.weight"].tied == ("lm_head.weight",) and "lm_head.weight" not in rows
    assert "(also lm_head.weight)" in str(report).splitlines()[1 + list(rows).index("model.embed_tokens.weight")]
    assert report.evolved == sum(row.numel for row in report.rows)
    assert not any(row.tied for row in flipes.nn.parameter_report(flipes.flipout(llama())).rows)


def greedy_with_cache(model: nn.Module, ids: Tensor, steps: int, positions: bool = False) -> Tensor:
    """``steps`` greedy tokens after ``ids``, a hand-written loop over the KV cache; ``positions``: pass every row's
    position ids, the cache's length on (what a population with several rows per member needs for GPT-2)."""
    rows, t = ids.shape
    # transformers 5.25 names it `cache` and warns at `past_key_values`, which earlier versions take
    key = "cache" if "cache" in inspect.signature(type(model).forward).parameters else "past_key_values"
    out = model(input_ids=ids, use_cache=True, **({"position_ids": torch.arange(t).expand(rows, t)} if positions else {}))
    tokens = [out.logits[:, -1].argmax(-1, keepdim=True)]
    for _ in range(steps - 1):
        cache = out[key]
        past = cache.get_seq_length()
        step = {"position_ids": torch.arange(past, past + 1).expand(rows, 1)} if positions else {}
        out = model(input_ids=tokens[-1], use_cache=True, **{key: cache}, **step)
        tokens.append(out.logits[:, -1].argmax(-1, keepdim=True))
    return torch.cat(tokens, 1)


def test_a_cached_decoding_step_without_positions_is_refused_with_the_positions_it_needs_not_zero() -> None:
    """GPT-2, 2 prompts of 5 tokens per member, a hand-written greedy loop over the KV cache: at the first cached step
    the model makes position ids ``(1, 1)`` holding 5, which a population cannot give 8 rows. The error used to say
    ``torch.arange(1).expand(8, 1)``, position 0, which runs and decodes wrongly; it now names ``arange(5, 6)`` and the
    cache's length, and the loop that passes those positions decodes each member's rows as the plain model with its
    weights (float64)."""
    original = gpt2()
    model = flipes.flipout(copy.deepcopy(original))
    n, k = 4, 2
    es = flipes.FlipES(model, popsize=n, sigma=0.5, groups=2, seed=1)
    ids = torch.randint(1, VOCAB, (n * k, 5), generator=torch.Generator().manual_seed(2))
    key = "cache" if "cache" in inspect.signature(type(model).forward).parameters else "past_key_values"
    with pytest.raises(RuntimeError, match=r"position_ids=torch\.arange\(5, 6\)\.expand\(8, 1\).*cache.s get_seq_length\(\)"):
        with torch.no_grad(), es.population():
            out = model(input_ids=ids, use_cache=True, position_ids=torch.arange(5).expand(n * k, 5))  # the prompt's given
            model(input_ids=out.logits[:, -1:].argmax(-1), **{key: out[key]}, use_cache=True)  # not
    with torch.no_grad():
        with es.population():
            tokens = greedy_with_cache(model, ids, 4, positions=True)
            states = [es.member_state_dict(m) for m in range(n)]
        for m, state in enumerate(states):
            plain = copy.deepcopy(original)
            plain.load_state_dict(state)
            assert torch.equal(tokens[m * k : (m + 1) * k], greedy_with_cache(plain, ids[m * k : (m + 1) * k], 4)), m


def test_a_fitness_runs_hugging_face_model_leaves_by_save_pretrained_of_load_policy(tmp_path: Path) -> None:
    """What ``flipes export`` of a custom-fitness run names for a Hugging Face model: ``flipes.load_policy(run,
    model=...)``'s ``save_pretrained`` writes a plain checkpoint whose parameters equal the run's center bit for bit."""
    ids, mask = batch(4)

    def fitness(model: nn.Module, pop: flipes.Population) -> Tensor:
        return model(input_ids=ids, attention_mask=mask).logits[:, -1, 3]

    result = flipes.train(env="none", model=lambda env: flipes.flipout(gpt2()), fitness=fitness, popsize=4, generations=2,
                          out=str(tmp_path / "run"), progress=False, tensorboard=False, plot=False)  # fmt: skip
    with pytest.raises(flipes.UsageError, match=re.escape("flipes.load_policy(...).save_pretrained(dir)")):
        flipes.export_policy(tmp_path / "run")
    flipes.load_policy(tmp_path / "run", model=lambda env: flipes.flipout(gpt2())).save_pretrained(tmp_path / "hf")
    loaded = type(gpt2()).from_pretrained(tmp_path / "hf", dtype=torch.float64)
    center = dict(result.model.named_parameters())
    assert center and all(torch.equal(loaded.state_dict()[k], v) for k, v in center.items())
    assert not torch.equal(center["transformer.h.0.mlp.c_fc.weight"], gpt2().transformer.h[0].mlp.c_fc.weight)
