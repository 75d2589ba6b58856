"""The model as users run it fast: contiguous residual stream, sdpa attention, ``torch.compile(fullgraph=True)``."""

import pytest
import torch
import torch.nn.functional as F

from cgspn import CGSPNVisionModel, propagation
from cgspn.propagation import use_backend

from .test_modeling_cgspn import CGSPNVisionModelTester, make_model


@pytest.mark.parametrize(("prefix", "position_embeddings"), [(0, False), (0, True), (1, False)])
def test_residual_stream_is_contiguous(prefix, position_embeddings):
    """The patch convolution's output is a transposed view; every block must see contiguous memory."""
    tester = CGSPNVisionModelTester(num_prefix_tokens=prefix, use_position_embeddings=position_embeddings)
    model = make_model(CGSPNVisionModel, tester.get_config())
    outputs = model(tester.pixel_values(16, 12), output_hidden_states=True)
    assert [state.is_contiguous() for state in outputs.hidden_states] == [True] * 4


def test_hybrid_attention_layers_use_sdpa_by_default(monkeypatch):
    calls = []

    def counting_sdpa(*args, **kwargs):
        calls.append(args[0].shape)
        return scaled_dot_product_attention(*args, **kwargs)

    scaled_dot_product_attention = F.scaled_dot_product_attention
    monkeypatch.setattr(F, "scaled_dot_product_attention", counting_sdpa)
    tester = CGSPNVisionModelTester(attention_layer_indices=[0, 2], pooling="cls")
    model = make_model(CGSPNVisionModel, tester.get_config())
    assert model.config._attn_implementation == "sdpa"
    model(tester.pixel_values())
    assert calls == [torch.Size([2, 4, 17, 9])] * 2  # (batch, heads, tokens, head_dim), one per hybrid layer


@pytest.fixture
def unresolved_backend(monkeypatch):
    """No backend resolved yet, so the compiled graph does the first resolution itself."""
    monkeypatch.setattr(propagation, "_auto_choice", {})
    monkeypatch.delenv(propagation.ENV_VAR, raising=False)
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.usefixtures("unresolved_backend")
def test_fullgraph_compile_inference_and_training():
    """No graph break (fullgraph=True raises on one) and the eager numbers, forward and backward.

    aot_eager traces exactly what inductor would compile, without a C++ compile, to stay fast on CPU.
    """
    tester = CGSPNVisionModelTester(num_prefix_tokens=0)  # MAP pooling, one hybrid attention layer
    model = make_model(CGSPNVisionModel, tester.get_config())
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    pixel_values = tester.pixel_values(16, 12)
    with torch.no_grad():
        torch.testing.assert_close(compiled(pixel_values).pooler_output, model(pixel_values).pooler_output)

    model.train()
    with use_backend("torch"):  # the context is read while tracing, not in the graph
        compiled(pixel_values).pooler_output.square().sum().backward()
    compiled_grads = {name: parameter.grad.clone() for name, parameter in model.named_parameters()}
    model.zero_grad()
    model(pixel_values).pooler_output.square().sum().backward()
    for name, parameter in model.named_parameters():
        torch.testing.assert_close(compiled_grads[name], parameter.grad, msg=name)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.usefixtures("unresolved_backend")
def test_gpu_fullgraph_compile_with_fast_backends(backend):
    """inductor, bf16, inference and training, against the eager model on the same backend."""
    if not propagation._loads(backend):
        pytest.skip(f"backend {backend!r} not available")
    tester = CGSPNVisionModelTester(num_prefix_tokens=0, hidden_size=64, propagation_backend=backend)
    model = make_model(CGSPNVisionModel, tester.get_config()).to("cuda", torch.bfloat16)
    compiled = torch.compile(model, fullgraph=True)
    pixel_values = tester.pixel_values(32, 24).to("cuda", torch.bfloat16)
    with torch.no_grad():
        expected = model(pixel_values).pooler_output.float()
        torch.testing.assert_close(compiled(pixel_values).pooler_output.float(), expected, atol=3e-2, rtol=3e-2)
    model.train()
    compiled(pixel_values).pooler_output.float().square().sum().backward()
    assert all(parameter.grad is not None for parameter in model.parameters())
