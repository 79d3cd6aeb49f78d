"""fastlayernorm inside Hugging Face models: patch_model, patch_transformers, PEFT, compile, DDP.

Every model is built from a tiny config with random weights (nothing is downloaded).
Numerical checks compare a patched deep copy against the untouched model on the
same inputs, so any difference comes from the LayerNorm kernels alone.
"""
from __future__ import annotations

import copy
import functools
import subprocess
import sys
from dataclasses import dataclass
from typing import Callable, Dict

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

transformers = pytest.importorskip("transformers")

import fastlayernorm  # noqa: E402
from fastlayernorm import patch_model, patch_transformers, unpatch_model  # noqa: E402

FastLN = fastlayernorm.LayerNorm
TorchLN = torch.nn.LayerNorm  # captured once: patch_transformers must never rebind it

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available")
DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.cuda, requires_cuda])]

# float32: relative L2 error of the patched model against the unpatched one (observed
# on CPU: outputs ~2e-7, gradients <=1e-6). bfloat16 rounds differently in any two
# LayerNorm implementations, so there both are compared with a float32 computation of
# the same bfloat16 weights instead: the patched model must be about as accurate.
FP32_RTOL = dict(out=1e-5, grad=5e-5, step=1e-5)
BF16_ERROR_RATIO = 4.0  # observed <= 2 on mathematically-zero gradients (pure noise), ~1 elsewhere
BF16_EPS = 2.0**-8

# Token ids inside the tiny vocabulary, so configs do not warn about defaults like 50256.
TOKENS = dict(pad_token_id=0, bos_token_id=1, eos_token_id=2)
VOCAB = 99


# --------------------------------------------------------------------------------------
# Tiny architectures
# --------------------------------------------------------------------------------------


@dataclass
class Arch:
    """A tiny model and matching random inputs. ``output`` names the tensor compared."""

    build: Callable[[], torch.nn.Module]
    inputs: Callable[[torch.Generator], Dict[str, torch.Tensor]]
    output: str = "logits"


def _ids(gen: torch.Generator, batch: int = 2, seq: int = 8) -> torch.Tensor:
    return torch.randint(3, VOCAB, (batch, seq), generator=gen)


def _text(gen):
    return dict(input_ids=_ids(gen))


def _seq2seq(gen):
    return dict(input_ids=_ids(gen), decoder_input_ids=_ids(gen))


def _image(gen):
    return dict(pixel_values=torch.randn(2, 3, 32, 32, generator=gen))


def _text_image(gen):
    return dict(input_ids=_ids(gen), pixel_values=torch.randn(2, 3, 32, 32, generator=gen))


def _whisper(gen):
    return dict(input_features=torch.randn(2, 8, 32, generator=gen), decoder_input_ids=_ids(gen))


def _audio(gen):
    return dict(input_values=torch.randn(2, 400, generator=gen))


T = transformers
BERT_LIKE = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                 intermediate_size=37, max_position_embeddings=64, **TOKENS)
ENC_DEC = dict(vocab_size=VOCAB, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=2,
               decoder_attention_heads=2, encoder_ffn_dim=37, decoder_ffn_dim=37, decoder_start_token_id=1,
               **TOKENS)
TEXT_TOWER = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                  intermediate_size=37, max_position_embeddings=64, **TOKENS)
VISION_TOWER = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
                    image_size=32, patch_size=8)

ARCHS: Dict[str, Arch] = {
    "bert": Arch(lambda: T.BertForMaskedLM(T.BertConfig(**BERT_LIKE)), _text),
    "roberta": Arch(lambda: T.RobertaForMaskedLM(T.RobertaConfig(**BERT_LIKE)), _text),
    "distilbert": Arch(lambda: T.DistilBertForMaskedLM(T.DistilBertConfig(
        vocab_size=VOCAB, dim=32, n_layers=2, n_heads=2, hidden_dim=37, max_position_embeddings=64,
        pad_token_id=0)), _text),
    "electra": Arch(lambda: T.ElectraForMaskedLM(T.ElectraConfig(embedding_size=16, **BERT_LIKE)), _text),
    "gpt2": Arch(lambda: T.GPT2LMHeadModel(T.GPT2Config(
        vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=2, n_positions=64, **TOKENS)), _text),
    "gpt_neox": Arch(lambda: T.GPTNeoXForCausalLM(T.GPTNeoXConfig(**BERT_LIKE)), _text),
    "opt": Arch(lambda: T.OPTForCausalLM(T.OPTConfig(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, ffn_dim=37,
        max_position_embeddings=64, word_embed_proj_dim=32, **TOKENS)), _text),
    "bloom": Arch(lambda: T.BloomForCausalLM(T.BloomConfig(
        vocab_size=VOCAB, hidden_size=32, n_layer=2, n_head=2, **TOKENS)), _text),
    "falcon": Arch(lambda: T.FalconForCausalLM(T.FalconConfig(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, **TOKENS)), _text),
    "phi": Arch(lambda: T.PhiForCausalLM(T.PhiConfig(**BERT_LIKE)), _text),
    # LayerNorm(bias=False): the op gets bias=None.
    "mpt": Arch(lambda: T.MptForCausalLM(T.MptConfig(
        vocab_size=VOCAB, d_model=32, n_layers=2, n_heads=2, max_seq_len=64, **TOKENS)), _text),
    "bart": Arch(lambda: T.BartForConditionalGeneration(T.BartConfig(
        max_position_embeddings=64, **ENC_DEC)), _seq2seq),
    "whisper": Arch(lambda: T.WhisperForConditionalGeneration(T.WhisperConfig(
        num_mel_bins=8, max_source_positions=16, max_target_positions=32, **ENC_DEC)), _whisper),
    "vit": Arch(lambda: T.ViTForImageClassification(T.ViTConfig(num_labels=3, **VISION_TOWER)), _image),
    "clip": Arch(lambda: T.CLIPModel(T.CLIPConfig(
        text_config=TEXT_TOWER, vision_config=VISION_TOWER, projection_dim=16)), _text_image, "logits_per_image"),
    "siglip": Arch(lambda: T.SiglipModel(T.SiglipConfig(
        text_config=TEXT_TOWER, vision_config=VISION_TOWER)), _text_image, "logits_per_image"),
    # feat_extract_norm="layer": the conv feature extractor uses LayerNorm too.
    "wav2vec2": Arch(lambda: T.Wav2Vec2ForCTC(T.Wav2Vec2Config(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
        conv_dim=(16, 16), conv_stride=(4, 4), conv_kernel=(8, 8), num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2, feat_extract_norm="layer", do_stable_layer_norm=True, **TOKENS)), _audio),
    # ConvNextLayerNorm subclasses nn.LayerNorm with its own forward: it must be skipped.
    "convnext": Arch(lambda: T.ConvNextForImageClassification(T.ConvNextConfig(
        hidden_sizes=[8, 16], depths=[1, 1], num_stages=2, image_size=32, num_labels=3)), _image),
}


def build(name: str, device="cpu", dtype=torch.float32) -> torch.nn.Module:
    """The same random weights for a given architecture on every call."""
    torch.manual_seed(0)
    return ARCHS[name].build().eval().to(device=device, dtype=dtype)


def make_inputs(name: str, device="cpu", dtype=torch.float32) -> Dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    inputs = ARCHS[name].inputs(gen)
    return {k: v.to(device) if v.dtype == torch.long else v.to(device, dtype) for k, v in inputs.items()}


# --------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------


def exact_torch_ln(model: torch.nn.Module):
    return [n for n, m in model.named_modules() if type(m) is TorchLN]


def count_fast(model: torch.nn.Module) -> int:
    return sum(isinstance(m, FastLN) for m in model.modules())


def module_types(model: torch.nn.Module):
    return [(n, type(m)) for n, m in model.named_modules()]


def rel_l2(actual: torch.Tensor, expected: torch.Tensor) -> float:
    actual, expected = actual.detach().double().cpu(), expected.detach().double().cpu()
    return ((actual - expected).norm() / expected.norm().clamp_min(1e-30)).item()


def assert_close_l2(actual, expected, rtol: float, what: str, floor: float = 0.0) -> None:
    """Relative L2 error check; ``floor`` is an absolute norm below which both count as zero."""
    err = (actual.detach().double() - expected.detach().double()).norm().item()
    ref = expected.detach().double().norm().item()
    assert err <= rtol * ref + floor, f"{what}: |diff|={err:.3g} |ref|={ref:.3g} rel={err / max(ref, 1e-30):.3g}"


def forward_backward(model, name: str, inputs) -> torch.Tensor:
    """Returns the compared output; the loss projects it on fixed random weights so every element matters.

    SDPA is pinned to its math backend: CUDA's fused attention backward may be
    nondeterministic, which would blur the comparison of two runs.
    """
    with sdpa_kernel(SDPBackend.MATH):
        out = getattr(model(**inputs), ARCHS[name].output)
    gen = torch.Generator().manual_seed(2)
    proj = torch.randn(out.shape, generator=gen).to(out.device)
    (out.float() * proj).sum().backward()
    return out


def assert_grads_close(model, ref, rtol: float) -> None:
    """Per-parameter relative L2. Gradients that are mathematically zero (attention key
    biases) hold only rounding noise, so tensors tiny next to the largest are held to an
    absolute floor instead."""
    grads = dict(model.named_parameters())
    scale = max((p.grad.double().norm().item() for p in ref.parameters() if p.grad is not None), default=0.0)
    for name, p_ref in ref.named_parameters():
        g, g_ref = grads[name].grad, p_ref.grad
        assert (g is None) == (g_ref is None), name
        if g is not None:
            assert_close_l2(g, g_ref, rtol, f"grad {name}", floor=rtol * 1e-3 * scale)


def assert_as_accurate(actual, baseline, exact, what: str) -> None:
    """``actual`` is at most BF16_ERROR_RATIO times further from ``exact`` than ``baseline``, plus bf16 epsilon."""
    exact = exact.detach().double()
    err = (actual.detach().double() - exact).norm().item()
    err_baseline = (baseline.detach().double() - exact).norm().item()
    bound = BF16_ERROR_RATIO * err_baseline + BF16_EPS * exact.norm().item()
    assert err <= bound, f"{what}: error {err:.3g} vs torch's {err_baseline:.3g} (|exact|={exact.norm().item():.3g})"


def patched_copy(model):
    clone = copy.deepcopy(model)
    return clone, patch_model(clone)


# --------------------------------------------------------------------------------------
# patch_model on every architecture
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(ARCHS))
def test_patch_counts_and_unpatch(name):
    model = build(name)
    expected = exact_torch_ln(model)
    assert expected, f"{name} has no torch.nn.LayerNorm in this transformers version"
    types_before = module_types(model)
    params_before = {n: p for n, p in model.named_parameters()}
    keys_before = list(model.state_dict())

    report = patch_model(model)

    assert sorted(report.patched) == sorted(expected)
    assert count_fast(model) == len(expected)
    assert exact_torch_ln(model) == []
    assert all(type(model.get_submodule(n)) is FastLN for n in expected)
    # Same parameter objects and state_dict keys: optimizers and checkpoints are unaffected.
    assert all(p is params_before[n] for n, p in model.named_parameters())
    assert list(model.state_dict()) == keys_before
    again = patch_model(model)
    assert again.patched == [] and sorted(again.already_patched) == sorted(expected)

    assert sorted(unpatch_model(model)) == sorted(expected)
    assert module_types(model) == types_before


def test_subclass_is_skipped():
    model = build("convnext")
    subclasses = [n for n, m in model.named_modules() if isinstance(m, TorchLN) and type(m) is not TorchLN]
    assert subclasses
    report = patch_model(model)
    assert sorted(report.skipped) == sorted(subclasses)
    assert all(type(model.get_submodule(n)) is not FastLN for n in subclasses)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", list(ARCHS))
def test_float32_outputs_and_grads_match(name, device):
    ref = build(name, device)
    model, report = patched_copy(ref)
    assert len(report.patched) == len(exact_torch_ln(ref))
    inputs = make_inputs(name, device)

    out_ref = forward_backward(ref, name, inputs)
    out = forward_backward(model, name, inputs)

    assert out.dtype == out_ref.dtype and out.shape == out_ref.shape
    assert_close_l2(out, out_ref, FP32_RTOL["out"], "output")
    assert_grads_close(model, ref, FP32_RTOL["grad"])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", list(ARCHS))
def test_bfloat16_as_accurate_as_torch(name, device):
    """bfloat16 weights and inputs; the reference is the same model computed in float32."""
    ref = build(name, device, torch.bfloat16)
    model, _ = patched_copy(ref)
    exact = copy.deepcopy(ref).float()
    inputs = make_inputs(name, device, torch.bfloat16)
    inputs32 = {k: v.float() if v.is_floating_point() else v for k, v in inputs.items()}

    out_exact = forward_backward(exact, name, inputs32)
    out_ref = forward_backward(ref, name, inputs)
    out = forward_backward(model, name, inputs)

    assert out.dtype == torch.bfloat16
    assert_as_accurate(out, out_ref, out_exact, "output")
    grads, grads_ref = dict(model.named_parameters()), dict(ref.named_parameters())
    for pname, p_exact in exact.named_parameters():
        if p_exact.grad is not None:
            assert_as_accurate(grads[pname].grad, grads_ref[pname].grad, p_exact.grad, f"grad {pname}")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", list(ARCHS))
def test_optimizer_step(name, device):
    """One AdamW step on the patched and unpatched copies leads to the same model.

    The weights are compared through the outputs after the step: Adam turns the pure
    rounding noise of mathematically-zero gradients (attention key biases) into
    +-lr steps, which differ between any two LayerNorm implementations but do not
    change the outputs.
    """
    ref = build(name, device)
    model, _ = patched_copy(ref)
    inputs = make_inputs(name, device)
    outputs = []
    for m in (ref, model):
        opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
        before = forward_backward(m, name, inputs).detach()
        opt.step()
        assert all(torch.isfinite(p).all() for p in m.parameters())
        with torch.no_grad():
            outputs.append(getattr(m(**inputs), ARCHS[name].output))
        assert not torch.equal(outputs[-1], before)  # the step did something
    assert_close_l2(outputs[1], outputs[0], FP32_RTOL["step"], "output after one step")


@pytest.mark.parametrize("name", list(ARCHS))
def test_save_pretrained_round_trip(name, tmp_path):
    model = build(name)
    patch_model(model)
    model.save_pretrained(tmp_path)

    loaded = type(model).from_pretrained(tmp_path).eval()
    assert count_fast(loaded) == 0  # no patch active: a plain transformers model
    state, loaded_state = model.state_dict(), loaded.state_dict()
    assert list(loaded_state) == list(state)
    assert all(torch.equal(loaded_state[k], state[k]) for k in state)

    assert len(patch_model(loaded).patched) == count_fast(model)
    inputs = make_inputs(name)
    with torch.no_grad():
        out, out_loaded = (getattr(m(**inputs), ARCHS[name].output) for m in (model, loaded))
    torch.testing.assert_close(out_loaded, out, rtol=0, atol=0)


# --------------------------------------------------------------------------------------
# patch_transformers
# --------------------------------------------------------------------------------------


def _post_init():
    return transformers.PreTrainedModel.__dict__["post_init"]


@pytest.fixture(autouse=True)
def no_leaked_patch():
    """A failing test must not leave transformers patched for the tests after it."""
    from fastlayernorm.integrations import transformers as integration

    original = _post_init()
    yield
    leaked = list(integration._active)
    for patch in leaked:
        patch.undo()
    transformers.PreTrainedModel.post_init = original
    assert not leaked, "the test left patch_transformers() active"


def test_import_does_not_import_transformers():
    code = "import sys, fastlayernorm; assert 'transformers' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_patch_transformers_context():
    post_init = _post_init()
    n_ln = len(exact_torch_ln(build("bert")))
    with patch_transformers() as patch:
        assert torch.nn.LayerNorm is TorchLN
        assert torch.nn.modules.normalization.LayerNorm is TorchLN
        assert patch.active
        inside = build("bert")
        plain = torch.nn.LayerNorm(8)  # torch modules built outside transformers are untouched
    after = build("bert")

    assert torch.nn.LayerNorm is TorchLN
    assert _post_init() is post_init
    assert not patch.active
    assert count_fast(inside) == n_ln and exact_torch_ln(inside) == []
    assert count_fast(after) == 0 and len(exact_torch_ln(after)) == n_ln
    assert type(plain) is TorchLN


def test_patch_transformers_plain_call_and_undo():
    post_init = _post_init()
    n_ln = len(exact_torch_ln(build("gpt2")))
    patch = patch_transformers(memory_efficient=True)
    try:
        model = T.AutoModelForCausalLM.from_config(T.GPT2Config(
            vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=2, n_positions=64, **TOKENS))
        assert torch.nn.LayerNorm is TorchLN
    finally:
        patch.undo()
    patch.undo()  # idempotent
    assert _post_init() is post_init
    fast = [m for m in model.modules() if isinstance(m, FastLN)]
    assert len(fast) == n_ln and all(m.memory_efficient for m in fast)
    assert count_fast(build("gpt2")) == 0


def test_patch_transformers_nested_and_exception():
    post_init = _post_init()
    with pytest.raises(RuntimeError, match="boom"):
        with patch_transformers():
            with patch_transformers():
                pass
            assert count_fast(build("vit")) > 0  # the outer patch is still active
            raise RuntimeError("boom")
    assert _post_init() is post_init
    assert count_fast(build("vit")) == 0


def test_patch_transformers_under_a_foreign_wrapper():
    """A wrapper installed on top of ours must survive undo: ours then stays, inert, and is reused."""
    cls = transformers.PreTrainedModel
    original = _post_init()
    n_ln = len(exact_torch_ln(build("gpt2")))
    patch = patch_transformers()
    ours = _post_init()

    @functools.wraps(ours)
    def foreign(self, *args, **kwargs):
        return ours(self, *args, **kwargs)

    cls.post_init = foreign
    try:
        patch.undo()
        assert _post_init() is foreign
        assert count_fast(build("gpt2")) == 0  # inert
        with patch_transformers():
            assert _post_init() is foreign  # not wrapped twice
            assert count_fast(build("gpt2")) == n_ln
    finally:
        cls.post_init = original
    assert count_fast(build("gpt2")) == 0


def test_patch_transformers_from_pretrained(tmp_path):
    build("opt").save_pretrained(tmp_path)
    with patch_transformers():
        loaded = T.AutoModelForCausalLM.from_pretrained(tmp_path)
    reference = T.AutoModelForCausalLM.from_pretrained(tmp_path)
    assert count_fast(loaded) == len(exact_torch_ln(reference)) > 0
    inputs = make_inputs("opt")
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs).logits, reference(**inputs).logits, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------------------
# Wrappers: PEFT, torch.compile, DDP, Trainer
# --------------------------------------------------------------------------------------


def _bert_classifier():
    torch.manual_seed(0)
    return T.BertForSequenceClassification(T.BertConfig(num_labels=3, **BERT_LIKE)).eval()


def _lora(model):
    peft = pytest.importorskip("peft")
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"],
                             modules_to_save=["classifier", "LayerNorm"])
    return peft.get_peft_model(model, config)


def _classifier_grad_check(model, ref):
    inputs = dict(input_ids=_ids(torch.Generator().manual_seed(1)))
    outs = []
    for m in (ref, model):
        out = m(**inputs).logits
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        outs.append(out)
    assert_close_l2(outs[1], outs[0], FP32_RTOL["out"], "logits")
    assert_grads_close(model, ref, FP32_RTOL["grad"])


def test_peft_lora_modules_to_save():
    peft = pytest.importorskip("peft")
    ref = _lora(_bert_classifier())
    wrappers = [m for m in ref.modules() if isinstance(m, peft.utils.other.ModulesToSaveWrapper)]
    ln_wrappers = [w for w in wrappers if type(w.original_module) is TorchLN]
    assert ln_wrappers and len(wrappers) > len(ln_wrappers)  # LayerNorms and the classifier

    model, report = patched_copy(ref)

    assert len(report.patched) == len(exact_torch_ln(ref))
    for w in (m for m in model.modules() if isinstance(m, peft.utils.other.ModulesToSaveWrapper)):
        if isinstance(w.original_module, TorchLN):
            assert type(w.original_module) is FastLN
            assert all(type(copy_) is FastLN for copy_ in w.modules_to_save.values())
    _classifier_grad_check(model, ref)
    unpatch_model(model)
    assert module_types(model) == module_types(ref)


def test_peft_patch_base_then_lora_and_reload(tmp_path):
    peft = pytest.importorskip("peft")
    base = _bert_classifier()
    patch_model(base)
    model = _lora(base)
    assert exact_torch_ln(model) == []  # modules_to_save copies are deep copies of patched modules
    model.save_pretrained(tmp_path)

    reloaded = peft.PeftModel.from_pretrained(_bert_classifier(), tmp_path)
    assert len(patch_model(reloaded).patched) > 0
    inputs = dict(input_ids=_ids(torch.Generator().manual_seed(1)))
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**inputs).logits, model(**inputs).logits, rtol=0, atol=0)


class _GraphRecorder:
    """A torch.compile backend that runs graphs eagerly and remembers which functions they call."""

    def __init__(self):
        self.targets = []

    def __call__(self, gm, example_inputs):
        self.targets.extend(str(n.target) for n in gm.graph.nodes if n.op == "call_function")
        return gm.forward

    def calls_fastlayernorm(self) -> bool:
        return any("fastlayernorm" in t for t in self.targets)


@pytest.fixture
def dynamo_reset():
    torch.compiler.reset()
    yield
    torch.compiler.reset()


@pytest.mark.parametrize("device", DEVICES)
def test_torch_compile_patch_before_and_after(device, dynamo_reset):
    ref = build("gpt2", device)
    inputs = make_inputs("gpt2", device)
    with torch.no_grad():
        expected = ref(**inputs).logits

    # Patched, then compiled: the traced graph calls our operator.
    recorder = _GraphRecorder()
    model, _ = patched_copy(ref)
    compiled = torch.compile(model, backend=recorder)
    with torch.no_grad():
        torch.testing.assert_close(compiled(**inputs).logits, expected, rtol=1e-5, atol=1e-5)
    assert recorder.calls_fastlayernorm()

    # Compiled and run, then patched: patch through OptimizedModule, warn, retrace after reset.
    torch.compiler.reset()
    recorder = _GraphRecorder()
    compiled = torch.compile(copy.deepcopy(ref), backend=recorder)
    with torch.no_grad():
        compiled(**inputs)
    assert not recorder.calls_fastlayernorm()
    with pytest.warns(UserWarning, match="torch.compiler.reset"):
        report = patch_model(compiled)
    assert len(report.patched) == len(exact_torch_ln(ref))
    assert all(n.startswith("_orig_mod.") for n in report.patched)
    torch.compiler.reset()
    with torch.no_grad():
        torch.testing.assert_close(compiled(**inputs).logits, expected, rtol=1e-5, atol=1e-5)
    assert recorder.calls_fastlayernorm()


def test_ddp_wrapper(tmp_path):
    dist = torch.distributed
    if not dist.is_available():
        pytest.skip("torch.distributed is not available")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        ref = build("distilbert")
        ddp = torch.nn.parallel.DistributedDataParallel(copy.deepcopy(ref))
        report = patch_model(ddp)
        assert len(report.patched) == len(exact_torch_ln(ref))
        assert all(n.startswith("module.") for n in report.patched)
        inputs = make_inputs("distilbert")
        forward_backward(ref, "distilbert", inputs)
        forward_backward(ddp, "distilbert", inputs)
        assert_grads_close(ddp.module, ref, FP32_RTOL["grad"])
    finally:
        dist.destroy_process_group()


def test_trainer_keeps_patch_and_weight_decay_groups(tmp_path):
    pytest.importorskip("accelerate")
    model = _bert_classifier()
    trainer_args = T.TrainingArguments(
        output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=4, use_cpu=True,
        report_to=[], save_strategy="no", logging_strategy="no", disable_tqdm=True)
    gen = torch.Generator().manual_seed(3)
    data = [dict(input_ids=_ids(gen, 1, 8)[0], labels=torch.tensor(i % 3)) for i in range(8)]
    trainer = T.Trainer(model=model, args=trainer_args, train_dataset=data)
    decay_before = trainer.get_decay_parameter_names(model)

    patch_model(model)
    # LayerNorm weights stay excluded from weight decay: fastlayernorm.LayerNorm is an nn.LayerNorm.
    assert trainer.get_decay_parameter_names(model) == decay_before
    result = trainer.train()
    assert torch.isfinite(torch.tensor(result.training_loss))
    assert count_fast(model) == len(exact_torch_ln(_bert_classifier()))
