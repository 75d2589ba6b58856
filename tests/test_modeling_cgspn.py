"""Model tests in the style of transformers' ModelTesterMixin (which is not shipped in the wheel)."""

import copy
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from huggingface_hub.errors import StrictDataclassClassValidationError
from transformers import AutoConfig, AutoModel, AutoModelForImageClassification

from cgspn import (
    CGSPNBackbone,
    CGSPNConfig,
    CGSPNForImageClassification,
    CGSPNForSemanticSegmentation,
    CGSPNModel,
    CGSPNVisionConfig,
    CGSPNVisionModel,
    propagate_ref,
)


class CGSPNVisionModelTester:
    """Tiny configs and inputs, as transformers' `*ModelTester` classes."""

    def __init__(self, batch_size=2, image_size=16, patch_size=4, hidden_size=36, num_hidden_layers=3, **overrides):
        self.batch_size = batch_size
        self.image_size = image_size
        self.config_kwargs = dict(
            hidden_size=hidden_size,
            intermediate_size=48,
            num_hidden_layers=num_hidden_layers,
            num_attention_heads=4,
            patch_size=patch_size,
            image_size=image_size,
            propagation_channels=5,
            attention_layer_indices=[1],
            num_prefix_tokens=1,
            hidden_act="gelu",
        )
        self.config_kwargs.update(overrides)

    def get_config(self, **overrides) -> CGSPNVisionConfig:
        return CGSPNVisionConfig(**{**self.config_kwargs, **overrides})

    def pixel_values(self, height=None, width=None, seed=0):
        generator = torch.Generator().manual_seed(seed)
        return torch.randn(self.batch_size, 3, height or self.image_size, width or self.image_size, generator=generator)


@pytest.fixture
def tester():
    return CGSPNVisionModelTester()


def make_model(model_class, config, seed=0):
    torch.manual_seed(seed)
    return model_class(config).eval()


# --- configuration ---------------------------------------------------------------------------


def test_config_defaults_and_round_trip(tmp_path, tester):
    config = CGSPNVisionConfig(hidden_size=1152, num_attention_heads=16)
    assert config.propagation_channels == 64  # C / 18 (SPEC §2)
    assert config.attention_layer_indices == []
    assert config.propagation_layer_indices == list(range(12))
    config = tester.get_config()
    config.save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(loaded, CGSPNVisionConfig)
    assert loaded.to_diff_dict() == config.to_diff_dict()


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(attention_layer_indices=[3]), "out of range"),
        (dict(attention_layer_indices=[-1]), "out of range"),
        (dict(propagation_channels=0), "propagation_channels must be >= 1"),
        (dict(pooling="max"), "pooling must be one of"),
        (dict(pooling="cls", num_prefix_tokens=0), "needs num_prefix_tokens"),
        (dict(num_attention_heads=5), "divisible by num_attention_heads"),
        (dict(propagation_backend="fast"), "propagation_backend must be one of"),
        (dict(num_hidden_layers=0), "num_hidden_layers must be >= 1"),
        (dict(layer_norm_eps=-1.0), r"layer_norm_eps must be > 0, got -1.0"),
        (dict(attention_dropout=1.5), r"attention_dropout must be in \[0, 1\], got 1.5"),
        (dict(image_size=2), r"image_size \(2\) must be >= patch_size \(4\)"),
        (dict(num_labels=0), "num_labels must be >= 1, got 0"),
        (dict(num_channels=0), "num_channels must be >= 1, got 0"),
        (dict(hidden_act="nope"), "hidden_act must be one of .*'gelu'.*got 'nope'"),
        (dict(initializer_range=-0.1), "initializer_range must be >= 0"),
    ],
)
def test_invalid_config_raises_clear_error(tester, overrides, message):
    with pytest.raises(StrictDataclassClassValidationError, match=message):
        tester.get_config(**overrides)


def test_shallower_config_copied_from_a_deeper_one_explains_backbone_outputs(tester):
    deep = tester.get_config(num_hidden_layers=3).to_dict()
    assert deep["out_features"] == ["stage3"]  # the default: the last block
    with pytest.raises(ValueError, match=r"\['stage3', 3\] name blocks beyond num_hidden_layers=2"):
        CGSPNVisionConfig.from_dict({**deep, "num_hidden_layers": 2, "attention_layer_indices": []})


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(hidden_size="32"), "hidden_size must be an integer, got '32'"),
        (dict(attention_layer_indices=[0.5]), r"attention_layer_indices must be a list of block indices"),
        (dict(num_prefix_tokens=1.5), "num_prefix_tokens must be an integer, got 1.5"),
        (dict(layer_norm_eps="small"), "layer_norm_eps must be a number"),
        (dict(propagation_channels=8.0), "propagation_channels must be an integer or None"),
    ],
)
def test_config_field_of_the_wrong_type_raises(tester, overrides, message):
    with pytest.raises(TypeError, match=message):
        tester.get_config(**overrides)


def test_clip_config_checks_embedding_widths():
    with pytest.raises(StrictDataclassClassValidationError, match="text embedding width"):
        CGSPNConfig(vision_config={"hidden_size": 64, "num_attention_heads": 4})
    config = CGSPNConfig(
        vision_config={"hidden_size": 64, "num_attention_heads": 4},
        text_config={"model_type": "clip_text_model", "hidden_size": 32, "vocab_size": 100},
        projection_dim=16,
        loss_type="softmax",
        logit_bias_init_value=None,
    )
    assert config.text_config.model_type == "clip_text_model"
    assert config.auto_map["AutoModelForZeroShotImageClassification"] == "modeling_cgspn.CGSPNModel"


# --- vision model ------------------------------------------------------------------------------


@pytest.mark.parametrize("height, width", [(16, 16), (8, 20), (4, 4), (28, 12)])
@pytest.mark.parametrize("pooling, prefix", [("map", 0), ("cls", 1), ("mean", 2)])
def test_vision_model_output_shapes(tester, height, width, pooling, prefix):
    config = tester.get_config(pooling=pooling, num_prefix_tokens=prefix)
    model = make_model(CGSPNVisionModel, config)
    outputs = model(tester.pixel_values(height, width), output_hidden_states=True)
    tokens = prefix + (height // 4) * (width // 4)
    assert outputs.last_hidden_state.shape == (2, tokens, 36)
    assert outputs.pooler_output.shape == (2, 36)
    assert len(outputs.hidden_states) == config.num_hidden_layers + 1
    assert all(state.shape == (2, tokens, 36) for state in outputs.hidden_states)
    torch.testing.assert_close(model.post_layernorm(outputs.hidden_states[-1]), outputs.last_hidden_state)
    assert outputs.attentions is None


def test_pooling_modes_read_the_right_tokens(tester):
    pixel_values = tester.pixel_values()
    cls_model = make_model(CGSPNVisionModel, tester.get_config(pooling="cls"))
    outputs = cls_model(pixel_values)
    torch.testing.assert_close(outputs.pooler_output, outputs.last_hidden_state[:, 0])
    mean_model = make_model(CGSPNVisionModel, tester.get_config(pooling="mean"))
    outputs = mean_model(pixel_values)
    torch.testing.assert_close(outputs.pooler_output, outputs.last_hidden_state[:, 1:].mean(1))


def test_return_dict_false_gives_tuple(tester):
    model = make_model(CGSPNVisionModel, tester.get_config())
    pixel_values = tester.pixel_values()
    as_tuple = model(pixel_values, return_dict=False)
    as_output = model(pixel_values)
    assert isinstance(as_tuple, tuple)
    torch.testing.assert_close(as_tuple[0], as_output.last_hidden_state)
    torch.testing.assert_close(as_tuple[1], as_output.pooler_output)


def test_output_attentions_for_hybrid_layers(tester):
    config = tester.get_config(attention_layer_indices=[0, 2])
    config._attn_implementation = "eager"
    model = make_model(CGSPNVisionModel, config)
    outputs = model(tester.pixel_values(), output_attentions=True)
    assert len(outputs.attentions) == 2
    for weights in outputs.attentions:
        assert weights.shape == (2, 4, 17, 17)
        torch.testing.assert_close(weights.sum(-1), torch.ones(2, 4, 17))


def test_sdpa_and_eager_attention_agree(tester):
    config = tester.get_config(attention_layer_indices=[0, 1, 2])
    eager_config = copy.deepcopy(config)
    eager_config._attn_implementation = "eager"
    sdpa_config = copy.deepcopy(config)
    sdpa_config._attn_implementation = "sdpa"
    pixel_values = tester.pixel_values()
    eager = make_model(CGSPNVisionModel, eager_config)(pixel_values).last_hidden_state
    sdpa = make_model(CGSPNVisionModel, sdpa_config)(pixel_values).last_hidden_state
    torch.testing.assert_close(eager, sdpa, atol=1e-5, rtol=1e-5)


def test_position_embeddings_are_resampled_to_other_grids(tester):
    model = make_model(CGSPNVisionModel, tester.get_config(use_position_embeddings=True))
    assert model.embeddings.position_embedding.shape == (1, 1 + 16, 36)
    assert model(tester.pixel_values(24, 8)).last_hidden_state.shape == (2, 1 + 12, 36)


def test_batching_equivalence(tester):
    model = make_model(CGSPNVisionModel, tester.get_config())
    pixel_values = tester.pixel_values()
    batched = model(pixel_values)
    for index in range(pixel_values.shape[0]):
        single = model(pixel_values[index : index + 1])
        torch.testing.assert_close(single.last_hidden_state[0], batched.last_hidden_state[index], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(single.pooler_output[0], batched.pooler_output[index], atol=1e-5, rtol=1e-5)


def test_determinism(tester):
    model = make_model(CGSPNVisionModel, tester.get_config())
    pixel_values = tester.pixel_values()
    assert torch.equal(model(pixel_values).last_hidden_state, model(pixel_values).last_hidden_state)


def test_every_parameter_gets_a_gradient(tester):
    model = make_model(CGSPNVisionModel, tester.get_config()).train()
    outputs = model(tester.pixel_values())
    (outputs.pooler_output.square().sum() + outputs.last_hidden_state.square().mean()).backward()
    missing = [name for name, parameter in model.named_parameters() if parameter.grad is None]
    assert not missing
    # the propagation layers really learn: their heads get non-zero gradients
    assert model.encoder.layers[0].mixer.heads.weight.grad.abs().sum() > 0


def test_gradient_checkpointing_gives_the_same_gradients(tester):
    config = tester.get_config()
    pixel_values = tester.pixel_values()
    gradients = []
    for checkpointing in (False, True):
        model = make_model(CGSPNVisionModel, config).train()
        if checkpointing:
            model.gradient_checkpointing_enable()
            assert model.is_gradient_checkpointing
        model(pixel_values).pooler_output.sum().backward()
        gradients.append({name: p.grad.clone() for name, p in model.named_parameters()})
    for name, gradient in gradients[0].items():
        torch.testing.assert_close(gradients[1][name], gradient, msg=name)


@pytest.mark.parametrize(
    "shape, message",
    [
        ((2, 4, 16, 16), "has 4 channels but the model expects 3"),
        ((2, 3, 15, 16), "multiple of the patch size 4"),
        ((3, 16, 16), "must have shape"),
    ],
)
def test_bad_pixel_values_raise(tester, shape, message):
    model = make_model(CGSPNVisionModel, tester.get_config())
    with pytest.raises(ValueError, match=message):
        model(torch.randn(shape))


def test_integer_pixel_values_are_rejected(tester):
    model = make_model(CGSPNVisionModel, tester.get_config())
    raw = torch.randint(0, 256, (1, 3, 16, 16), dtype=torch.uint8)
    with pytest.raises(TypeError, match=r"floating-point tensor .* got torch.uint8"):
        model(raw)


def test_bf16_forward_runs_and_stays_close(tester):
    model = make_model(CGSPNVisionModel, tester.get_config(attention_layer_indices=[]))
    pixel_values = tester.pixel_values()
    reference = model(pixel_values).pooler_output
    low = model.to(torch.bfloat16)(pixel_values.bfloat16()).pooler_output
    assert low.dtype == torch.bfloat16
    assert (low.float() - reference).norm() / reference.norm() < 0.05


# --- save / load -----------------------------------------------------------------------------


def test_save_load_round_trip_is_exact(tmp_path, tester):
    model = make_model(CGSPNVisionModel, tester.get_config())
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    assert not list(tmp_path.glob("*.bin"))
    loaded = AutoModel.from_pretrained(tmp_path).eval()
    assert type(loaded) is CGSPNVisionModel
    for (name, expected), (_, actual) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(expected, actual), name
    pixel_values = tester.pixel_values()
    assert torch.equal(model(pixel_values).pooler_output, loaded(pixel_values).pooler_output)


def test_image_classification_head_and_loss(tmp_path, tester):
    config = tester.get_config(num_labels=5)
    model = make_model(CGSPNForImageClassification, config)
    outputs = model(tester.pixel_values(), labels=torch.tensor([1, 4]))
    assert outputs.logits.shape == (2, 5)
    expected = torch.nn.functional.cross_entropy(outputs.logits, torch.tensor([1, 4]))
    torch.testing.assert_close(outputs.loss, expected)
    model.save_pretrained(tmp_path)
    loaded = AutoModelForImageClassification.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(loaded(tester.pixel_values()).logits, outputs.logits)


REMOTE_CODE_SCRIPT = textwrap.dedent(
    """
    import importlib.abc, json, sys

    class BlockCGSPN(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "cgspn" or name.startswith("cgspn."):
                raise ImportError("cgspn is blocked in this interpreter")

    sys.meta_path.insert(0, BlockCGSPN())
    try:
        import cgspn  # noqa: F401
        raise SystemExit("cgspn should not be importable here")
    except ImportError:
        pass
    import torch
    from transformers import AutoModel, {auto_class}

    folder, inputs_file = sys.argv[1], sys.argv[2]
    model = {auto_class}.from_pretrained(folder, trust_remote_code=True).eval()
    assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
    inputs = torch.load(inputs_file)
    with torch.no_grad():
        outputs = model(**inputs["kwargs"])
    max_diff = (outputs[inputs["key"]] - inputs["expected"]).abs().max().item()
    print(json.dumps({{"class": type(model).__name__, "max_diff": max_diff}}))
    """
)


def run_remote_code(tmp_path, folder, auto_class, kwargs, key, expected) -> dict:
    inputs_file = tmp_path / "inputs.pt"
    torch.save({"kwargs": kwargs, "key": key, "expected": expected}, inputs_file)
    script = tmp_path / "load_remote.py"
    script.write_text(REMOTE_CODE_SCRIPT.format(auto_class=auto_class))
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, str(script), str(folder), str(inputs_file)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_saved_folder_loads_as_remote_code_without_cgspn(tmp_path, tester):
    model = make_model(CGSPNVisionModel, tester.get_config())
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    for file in ("modeling_cgspn.py", "configuration_cgspn.py", "propagation.py", "propagation_reference.py"):
        assert (folder / file).exists(), file
    auto_map = json.loads((folder / "config.json").read_text())["auto_map"]
    assert auto_map["AutoModel"] == "modeling_cgspn.CGSPNVisionModel"
    pixel_values = tester.pixel_values()
    with torch.no_grad():
        expected = model(pixel_values).pooler_output
    report = run_remote_code(tmp_path, folder, "AutoModel", {"pixel_values": pixel_values}, "pooler_output", expected)
    assert report["class"] == "CGSPNVisionModel"
    assert report["max_diff"] == 0.0


def tiny_clip_config(**overrides) -> CGSPNConfig:
    text = dict(
        model_type="siglip_text_model",
        hidden_size=36,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        vocab_size=99,
        max_position_embeddings=16,
        pad_token_id=0,
        bos_token_id=None,
        eos_token_id=1,
    )
    vision = CGSPNVisionModelTester().config_kwargs
    return CGSPNConfig(vision_config=vision, text_config=text, **overrides)


def test_clip_model_logits_and_sigmoid_loss():
    model = make_model(CGSPNModel, tiny_clip_config())
    input_ids = torch.randint(2, 99, (2, 7), generator=torch.Generator().manual_seed(0))
    pixel_values = CGSPNVisionModelTester().pixel_values()
    outputs = model(input_ids=input_ids, pixel_values=pixel_values, return_loss=True)
    assert outputs.logits_per_image.shape == (2, 2)
    torch.testing.assert_close(outputs.logits_per_text, outputs.logits_per_image.t())
    expected_logits = outputs.text_embeds @ outputs.image_embeds.t() * 10.0 - 10.0
    torch.testing.assert_close(outputs.logits_per_text, expected_logits)
    signs = 2 * torch.eye(2) - 1
    expected_loss = -torch.nn.functional.logsigmoid(signs * expected_logits).sum(-1).mean()
    torch.testing.assert_close(outputs.loss, expected_loss)
    image_features = model.get_image_features(pixel_values).pooler_output
    torch.testing.assert_close(torch.nn.functional.normalize(image_features, dim=-1), outputs.image_embeds)


def test_clip_model_with_projections_and_softmax_loss(tmp_path):
    config = tiny_clip_config(projection_dim=8, loss_type="softmax", logit_bias_init_value=None)
    model = make_model(CGSPNModel, config)
    assert model.logit_bias is None
    input_ids = torch.randint(2, 99, (3, 5))
    pixel_values = CGSPNVisionModelTester(batch_size=3).pixel_values()
    outputs = model(input_ids=input_ids, pixel_values=pixel_values, return_loss=True)
    assert outputs.image_embeds.shape == (3, 8)
    targets = torch.arange(3)
    logits = outputs.logits_per_text
    expected = (
        torch.nn.functional.cross_entropy(logits, targets) + torch.nn.functional.cross_entropy(logits.t(), targets)
    ) / 2
    torch.testing.assert_close(outputs.loss, expected)
    model.save_pretrained(tmp_path)
    loaded = AutoModel.from_pretrained(tmp_path).eval()
    assert type(loaded) is CGSPNModel
    torch.testing.assert_close(
        loaded(input_ids=input_ids, pixel_values=pixel_values).logits_per_image, outputs.logits_per_image
    )


def test_clip_model_needs_both_inputs():
    model = make_model(CGSPNModel, tiny_clip_config())
    with pytest.raises(ValueError, match="needs both input_ids and pixel_values"):
        model(pixel_values=CGSPNVisionModelTester().pixel_values())


def test_propagation_sublayer_matches_spec_by_hand(tester):
    """SPEC §2: down -> heads -> propagate -> up on the patches; prefix tokens get up(mean of Y over the grid)."""
    config = tester.get_config(num_prefix_tokens=2)
    mixer = make_model(CGSPNVisionModel, config).encoder.layers[0].mixer.double()
    hidden = torch.randn(3, 2 + 4 * 5, 36, dtype=torch.float64)
    patches = hidden[:, 2:].reshape(3, 4, 5, 36)
    z = patches @ mixer.down.weight.T + mixer.down.bias
    g = z @ mixer.heads.weight.T + mixer.heads.bias
    y = propagate_ref(z, g)
    expected_patches = (y @ mixer.up.weight.T + mixer.up.bias).reshape(3, 20, 36)
    expected_prefix = y.mean(dim=(1, 2)) @ mixer.up.weight.T + mixer.up.bias
    out = mixer(hidden, 4, 5)
    torch.testing.assert_close(out[:, 2:], expected_patches)
    torch.testing.assert_close(out[:, 0], expected_prefix, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(out[:, 1], expected_prefix, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("task_class", [CGSPNForImageClassification, CGSPNForSemanticSegmentation, CGSPNBackbone])
def test_saved_tower_loads_into_task_models(tmp_path, tester, task_class):
    tower = make_model(CGSPNVisionModel, tester.get_config())
    tower.save_pretrained(tmp_path)
    task_model = task_class.from_pretrained(tmp_path, num_labels=3)
    loaded = task_model.state_dict()
    prefix = "" if task_class is CGSPNBackbone else "vision_model."
    for name, tensor in tower.state_dict().items():
        if task_class is CGSPNBackbone and name.startswith("head."):
            continue  # a backbone has no pooling head
        assert torch.equal(loaded[prefix + name], tensor), name
