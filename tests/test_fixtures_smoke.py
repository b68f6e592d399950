"""The shared fixtures load (other tests depend on them)."""


def test_tiny_model_loads(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    ids = tok("Mira:", return_tensors="pt").input_ids
    assert model(ids).logits.shape == (1, ids.shape[1], 49152)
    assert tok.eos_token_id == 2


def test_tiny_mistral_loads_and_its_tokenizer_adds_bos(tiny_mistral_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_mistral_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_mistral_dir)
    assert type(model).__name__ == "MistralForCausalLM"
    assert (len(tok), tok.bos_token_id, tok.eos_token_id) == (32000, 1, 2)
    # The facts DESIGN.md states: BOS first, and `▁` before a piece encoded on its own.
    assert tok("Hello world.\n\n### Response:")["input_ids"] == [
        1, 22557, 1526, 28723, 13, 13, 27332, 12107, 28747]
    assert tok.convert_ids_to_tokens(tok("\n\n###", add_special_tokens=False)["input_ids"]) \
        == ["▁", "<0x0A>", "<0x0A>", "###"]
    ids = tok("Mira:", return_tensors="pt").input_ids
    assert model(ids).logits.shape == (1, ids.shape[1], 32000)
