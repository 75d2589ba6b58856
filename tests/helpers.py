"""Small builders shared by the model-level tests."""


def tiny_text_config(tokenizer, model_type: str = "clip_text_model", num_hidden_layers: int = 1, **overrides) -> dict:
    """A 32-wide transformers text-tower config whose vocabulary and special ids match ``tokenizer``."""
    config = dict(
        model_type=model_type,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=4,
        vocab_size=len(tokenizer),
        max_position_embeddings=tokenizer.model_max_length,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return {**config, **overrides}


TINY_CORPUS = ["a photo of a red circle.", "a photo of a blue square.", "a green triangle", "a cat", "two dogs"]


def save_tiny_transformers_teacher(folder, family: str, image_size: int = 32, patch_size: int = 8, seed: int = 0):
    """A tiny random transformers ``SiglipModel`` (``family="siglip"``) or ``CLIPModel`` (``"clip"``) teacher, saved
    the way transformers users save one: ``model.save_pretrained`` + ``processor.save_pretrained`` (a `CLIPProcessor`
    with an offline CLIP-format tokenizer that returns attention masks). Returns (model, processor)."""
    import torch
    from transformers import CLIPConfig, CLIPModel, SiglipConfig, SiglipModel

    from cgspn.tokenization import build_processor, small_clip_tokenizer

    tokenizer = small_clip_tokenizer(TINY_CORPUS, vocab_size=600, model_max_length=64)
    vision = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4)
    vision.update(image_size=image_size, patch_size=patch_size)
    torch.manual_seed(seed)
    if family == "siglip":
        text = tiny_text_config(tokenizer, "siglip_text_model", projection_size=32)
        model = SiglipModel(SiglipConfig(text_config=text, vision_config=vision))
        processor = build_processor(tokenizer, image_size, mean=(0.5,) * 3, std=(0.5,) * 3, resize_mode="squash")
    elif family == "clip":
        text = tiny_text_config(tokenizer, "clip_text_model")
        model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=24))
        processor = build_processor(tokenizer, image_size)
    else:
        raise ValueError(f"family must be 'siglip' or 'clip', got {family!r}")
    model.eval().save_pretrained(folder)
    processor.save_pretrained(folder)
    return model, processor
