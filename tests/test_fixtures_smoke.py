"""The shared fixtures load (other tests depend on them)."""


def test_tiny_model_loads(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    ids = tok("Mira:", return_tensors="pt").input_ids
    assert model(ids).logits.shape == (1, ids.shape[1], 49152)
    assert tok.eos_token_id == 2
