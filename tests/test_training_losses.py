"""Unit tests of the distillation losses, taps and stage modules (no training loop)."""

import contextlib
import math

import pytest
import torch
import torch.nn.functional as F

from cgspn.training.losses import (
    FeatureDistillationLoss,
    TapAdaptor,
    feature_loss,
    output_loss,
    relative_mse,
    sublayer_mse,
)
from cgspn.training.stages import FeatureTask, SublayerTask, distill_layers, upsample_tokens
from tests.test_training_utils import single_thread, tiny_pair

pytestmark = pytest.mark.usefixtures(single_thread.__name__)
PAPER_LOSS = {"tap_weight": 1.0, "output_weight": 0.0}


def test_feature_loss_matches_its_definition():
    torch.manual_seed(0)
    student, teacher = torch.randn(2, 5, 8), torch.randn(2, 5, 8)
    p_teacher, p_student = teacher.softmax(-1), student.softmax(-1)
    kl_per_token = (p_teacher * (p_teacher.log() - p_student.log())).sum(-1)
    expected = ((student - teacher) ** 2).mean() + 7 / 3 * kl_per_token.mean()
    torch.testing.assert_close(feature_loss(student, teacher), expected)
    assert feature_loss(teacher, teacher).item() == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="shape"):
        feature_loss(student, teacher[:, :4])


def test_sublayer_mse_and_adaptor_shapes():
    x = torch.randn(3, 4, 16)
    assert sublayer_mse(x, x + 1).item() == pytest.approx(1.0)
    adaptor = TapAdaptor(16)
    assert [type(m).__name__ for m in adaptor.children()] == ["Linear", "GELU", "Linear"]
    assert adaptor(x).shape == x.shape


def test_total_loss_weights_pp_and_pb():
    criterion = FeatureDistillationLoss(8, [1, 3], alpha=0.25, beta=0.75)
    assert sorted(criterion.adaptors) == ["pb_1", "pb_3", "pp_1", "pp_3"]
    records = {i: {k: torch.randn(2, 4, 8) for k in ("pp", "pb")} for i in (1, 3)}
    teacher = {i: {k: torch.randn(2, 4, 8) for k in ("pp", "pb")} for i in (1, 3)}
    total, parts = criterion(records, teacher)
    expected = sum(0.25 * parts[f"pp_{i}"] + 0.75 * parts[f"pb_{i}"] for i in (1, 3))
    torch.testing.assert_close(total, expected)


def test_distill_layers_follow_the_paper():
    assert distill_layers(27, 9) == [8, 17, 26]
    assert distill_layers(4, 2) == [1, 3]
    assert distill_layers(4, 3) == [2]
    with pytest.raises(ValueError):
        distill_layers(4, 0)
    with pytest.raises(ValueError):
        distill_layers(4, 5)


def test_upsample_tokens_keeps_prefix_and_resamples_patches():
    tokens = torch.randn(2, 1 + 3 * 3, 4)
    out = upsample_tokens(tokens, 1, (3, 3), (6, 6))
    assert out.shape == (2, 1 + 36, 4)
    torch.testing.assert_close(out[:, :1], tokens[:, :1])
    grid = tokens[:, 1:].reshape(2, 3, 3, 4).permute(0, 3, 1, 2)
    expected = F.interpolate(grid, size=(6, 6), mode="bilinear", align_corners=False).flatten(2).transpose(1, 2)
    torch.testing.assert_close(out[:, 1:], expected)
    assert upsample_tokens(tokens, 1, (3, 3), (3, 3)) is tokens


def test_stage2_taps_are_at_the_right_blocks():
    teacher, student = tiny_pair(num_layers=27, hidden=16)
    task = FeatureTask(teacher, student, distill_every=9, **PAPER_LOSS)
    assert task.layers == [8, 17, 26]
    assert sorted(task.module.criterion.adaptors) == sorted(f"{k}_{i}" for i in (8, 17, 26) for k in ("pp", "pb"))
    pixels = torch.randn(2, 3, 16, 16)
    targets = task.teacher_targets(pixels, (4, 4))["taps"]
    assert sorted(targets) == [8, 17, 26]
    hidden = teacher(pixels, output_hidden_states=True).hidden_states
    for index in task.layers:
        torch.testing.assert_close(targets[index]["pb"], hidden[index + 1])
        block = teacher.encoder.layers[index]
        mixed = block.mixer(block.layer_norm1(hidden[index]), 4, 4)[0]
        torch.testing.assert_close(targets[index]["pp"], hidden[index] + mixed)
    # parameters after the last tap cannot get gradients from the taps: they are frozen
    assert not any(p.requires_grad for p in task.module.student.head.parameters()) if task.module.student.head else True
    assert not any(p.requires_grad for p in task.module.student.post_layernorm.parameters())


def test_stage2_frozen_tail_when_last_tap_is_not_the_last_block():
    teacher, student = tiny_pair(num_layers=4)
    task = FeatureTask(teacher, student, distill_every=3, **PAPER_LOSS)
    assert task.layers == [2]
    blocks = task.module.student.encoder.layers
    assert all(p.requires_grad for p in blocks[2].parameters())
    assert not any(p.requires_grad for p in blocks[3].parameters())
    loss, _ = task.loss(task.module, torch.randn(2, 3, 32, 32), 0, contextlib.nullcontext)
    loss.backward()
    assert all(p.grad is not None for p in task.module.parameters() if p.requires_grad)


def test_stage1_trains_only_propagation_and_never_the_teacher():
    teacher, student = tiny_pair(num_layers=4, keep_attention=(1,))
    task = SublayerTask(teacher, student)
    assert task.module.layers == [0, 2, 3]
    trainable = {name for name, p in task.module.named_parameters() if p.requires_grad}
    assert trainable and all(".mixer." in name for name in trainable)
    assert not any(".layers.1." in name for name in trainable)
    loss, parts = task.loss(task.module, torch.randn(2, 3, 32, 32), 0, contextlib.nullcontext)
    assert sorted(parts) == ["mse_0", "mse_2", "mse_3"]
    loss.backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert all(not p.requires_grad for p in teacher.parameters())
    assert not teacher.training
    grads = {name for name, p in task.module.named_parameters() if p.grad is not None}
    assert grads == trainable


def test_stage1_target_is_the_teacher_attention_on_its_own_block_input():
    teacher, student = tiny_pair(num_layers=3)
    task = SublayerTask(teacher, student)
    pixels = torch.randn(2, 3, 32, 32)
    inputs, targets = task.teacher_targets(pixels)
    hidden = teacher(pixels, output_hidden_states=True).hidden_states
    for index in range(3):
        torch.testing.assert_close(inputs[index], hidden[index])
        block = teacher.encoder.layers[index]
        torch.testing.assert_close(targets[index], block.mixer(block.layer_norm1(hidden[index]), 8, 8)[0])


def test_stage2_gradient_checkpointing_gives_the_same_gradients():
    from cgspn.training.trainer import enable_gradient_checkpointing

    grads = []
    for checkpointing in (False, True):
        teacher, student = tiny_pair(num_layers=4)
        task = FeatureTask(teacher, student, distill_every=2, tap_weight=1.0, output_weight=1.0)
        if checkpointing:
            enable_gradient_checkpointing(task.module.student)
        task.module.train()
        torch.manual_seed(3)
        loss, _ = task.loss(task.module, torch.randn(2, 3, 32, 32), 0, contextlib.nullcontext)
        loss.backward()
        grads.append({n: p.grad.clone() for n, p in task.module.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 10
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-5, atol=1e-6)


def test_multi_resolution_draw_is_seeded_by_step():
    teacher, student = tiny_pair(num_layers=2)
    task = FeatureTask(teacher, student, distill_every=1, resolutions=[16, 24, 32], seed=5, **PAPER_LOSS)
    draws = [task.resolution_for_step(step) for step in range(20)]
    assert set(draws) == {16, 24, 32}
    assert draws == [task.resolution_for_step(step) for step in range(20)]
    assert math.isclose(task.module.criterion.kl_weights["pp"], 7 / 3)


def test_output_loss_matches_its_definition():
    torch.manual_seed(0)
    tokens_s, tokens_t = torch.randn(2, 5, 8), torch.randn(2, 5, 8)
    pooled_s, pooled_t = torch.randn(2, 6), torch.randn(2, 6)
    total, parts = output_loss(tokens_s, tokens_t, pooled_s, pooled_t)
    relative = (((tokens_s - tokens_t) ** 2).mean((1, 2)) / (tokens_t**2).mean((1, 2))).mean()
    relative_pooled = (((pooled_s - pooled_t) ** 2).mean(1) / (pooled_t**2).mean(1)).mean()
    cosine = 1 - F.cosine_similarity(pooled_s, pooled_t, dim=-1).mean()
    torch.testing.assert_close(total, relative + relative_pooled + 10 * cosine)
    torch.testing.assert_close(parts["output_pooled_cosine"], cosine)
    zero, _ = output_loss(tokens_t, tokens_t, pooled_t, 3 * pooled_t)
    torch.testing.assert_close(zero, torch.tensor(4.0 / 9.0))  # same direction: only the pooled scale error
    assert relative_mse(tokens_t, tokens_t).item() == 0.0
    assert relative_mse(torch.zeros_like(tokens_t), tokens_t).item() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="shape"):
        relative_mse(tokens_s, tokens_t[:, :4])


@pytest.mark.parametrize("pooling", ["cls", "map", "mean"])
def test_default_stage2_trains_the_whole_tower_and_the_class_token_path(pooling):
    prefix = 0 if pooling == "mean" else 1
    teacher, student = tiny_pair(num_layers=3, pooling=pooling, num_prefix_tokens=prefix)
    task = FeatureTask(teacher, student)
    assert task.module.criterion is None and task.layers == []  # the "cgspn" recipe: output loss only
    loss, parts = task.loss(task.module, torch.randn(2, 3, 32, 32), 0, contextlib.nullcontext)
    assert sorted(parts) == ["output_pooled", "output_pooled_cosine", "output_tokens"]
    loss.backward()
    named = dict(task.module.named_parameters())
    assert all(p.requires_grad for p in named.values())
    missing = [name for name, p in named.items() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []  # final norm, pooling head, class token and every propagation layer learn
    if prefix:
        assert named["student.embeddings.prefix_tokens"].grad.abs().sum() > 0


def test_stage2_loss_weights_are_checked():
    teacher, student = tiny_pair(num_layers=2)
    for weights in ({"tap_weight": 0.0, "output_weight": 0.0}, {"tap_weight": -1.0, "output_weight": 1.0}):
        with pytest.raises(ValueError, match="tap_weight and output_weight"):
            FeatureTask(teacher, student, distill_every=1, **weights)
