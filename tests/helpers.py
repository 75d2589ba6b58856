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
